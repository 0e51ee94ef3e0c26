//! Statement analysis: what a statement is, which tenant-scoped tables it
//! touches and where their tenant value comes from.
//!
//! Pure code, no I/O. The proxy asks [`analyze`] (through [`AnalysisCache`], so
//! a prepared statement is parsed once) and then resolves the tenant values
//! (literals, or `$n` bind parameters at execute time) to regions. Everything
//! here errs on the side of refusing: a tenant-scoped table access that is
//! not understood becomes [`TenantRequirement::Refuse`] or
//! [`TenantRequirement::Unconstrained`], never a guess (DESIGN.md promise 2).
//!
//! Messages produced here (refusal reasons, hints, parser messages) name
//! tables, columns and clauses only, never a value from the statement: they
//! end up in ErrorResponses and logs.

mod analysis;
mod cache;
mod classification;
mod comment;
mod crypto_plan;
mod ddl;
mod lexer;
pub mod normalize;
mod pooling;
mod predicates;
mod session;
mod standby;
mod tenancy;

#[cfg(test)]
mod crypto_tests;
#[cfg(test)]
mod tests;

pub use cache::{is_plain, AnalysisCache};
pub use classification::{Classification, ColumnClass};
pub use comment::TENANT_KEY;
pub use crypto_plan::{
    Comparison, ComparisonSpans, CryptoPlan, CryptoRefusal, CryptoTarget, Purpose, Shape,
    ValueSource,
};
pub use ddl::{ddl_forms, DdlForm};
pub use pooling::keeps_session_state;
pub use standby::{sets_config, standby_safe};
pub use tenancy::{Discovered, Tenancy, ViewInfo};

use comment::CommentTenant;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Where a tenant value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantSource {
    /// A literal in the statement text (numbers in canonical text form: `007` → `7`).
    Literal(String),
    /// Bind parameter `$n` (1-based), read at execute time in text or binary format.
    Param(usize),
}

/// What a statement needs to be placed in a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRequirement {
    /// Touches no tenant-scoped table.
    None,
    /// Every tenant-scoped table access is constrained; these are all the
    /// tenant values found (they must all resolve to one region at run time).
    Values(Vec<TenantSource>),
    /// A tenant-scoped table is read or written without a tenant predicate:
    /// only a session or comment tenant can place it, and `values` found
    /// elsewhere in the statement must agree with that tenant.
    Unconstrained {
        table: String,
        values: Vec<TenantSource>,
    },
    /// Rows carry their own tenant (`COPY … FROM STDIN` into a tenant-scoped
    /// table): the proxy must check the tenant column of every row; see
    /// [`StatementKind::Copy`] for its position.
    PerRow { table: String },
    /// Provably unsafe or not understood: refuse. `reason` and `hint` name
    /// tables/columns/clauses only.
    Refuse {
        table: Option<String>,
        reason: String,
        hint: String,
    },
}

impl TenantRequirement {
    pub(crate) fn refuse(
        table: Option<&str>,
        reason: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        TenantRequirement::Refuse {
            table: table.map(str::to_string),
            reason: reason.into(),
            hint: hint.into(),
        }
    }
}

/// What kind of statement it is, as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// SELECT, TABLE, VALUES, EXPLAIN (not ANALYZE), DECLARE … CURSOR FOR SELECT.
    Read,
    /// INSERT/UPDATE/DELETE/TRUNCATE/MERGE, or a query with a data-modifying CTE.
    Write,
    /// CREATE/ALTER/DROP/COMMENT/GRANT/REVOKE/… : goes to every region.
    Ddl,
    /// BEGIN / START TRANSACTION (with its modes, which the proxy replays).
    Begin,
    /// COMMIT / END.
    Commit,
    /// ROLLBACK / ABORT.
    Rollback,
    Savepoint,
    Release,
    RollbackToSavepoint,
    /// PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED: the proxy
    /// owns two-phase commit and refuses these from clients.
    TwoPhase,
    /// `SET [LOCAL|SESSION] regionguard.tenant = 'x'`, `RESET regionguard.tenant`
    /// (`value: None`), `SET … TO DEFAULT`, `SELECT set_config('regionguard.tenant', 'x', is_local)`.
    SetTenant {
        local: bool,
        value: Option<TenantSource>,
    },
    /// `SHOW regionguard.tenant`, `SELECT current_setting('regionguard.tenant')`.
    ShowTenant,
    /// Other SET/RESET/DISCARD/PREPARE/DEALLOCATE/LISTEN/UNLISTEN/NOTIFY: must
    /// hold on every regional backend of the session. `resets_tenant`:
    /// `RESET ALL` / `DISCARD ALL` also clear `regionguard.tenant`.
    SessionState {
        resets_tenant: bool,
    },
    /// COPY. `table: None` for `COPY (query) TO …`. `tenant_column`: position
    /// of the tenant column in the COPY data when the table is tenant-scoped
    /// and the column list names it (without a column list the proxy must
    /// take the table's column order from the catalog).
    Copy {
        table: Option<String>,
        from_stdin: bool,
        columns: Vec<String>,
        tenant_column: Option<usize>,
    },
    /// The parser could not read the statement. `message` is safe to show
    /// (literal tokens removed); `mentions_scoped`/`mentions_global`: a word
    /// of the raw text names such a table.
    Unparsed {
        message: String,
        mentions_scoped: bool,
        mentions_global: bool,
    },
    /// `SELECT 1`, SHOW, VACUUM, CALL, FETCH, …
    Other,
}

/// The analysis of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementPlan {
    pub kind: StatementKind,
    pub tenant: TenantRequirement,
    /// `/* regionguard.tenant = 'acme' */` (or `--` form) in this statement's comments.
    pub comment_tenant: Option<String>,
    /// Writes a global table (INSERT/UPDATE/DELETE/TRUNCATE/COPY FROM): all regions.
    pub writes_global: bool,
    /// Reads a global table (any region can answer).
    pub reads_global: bool,
    /// `UPDATE … SET tenant_id = <value>`: each value must equal the
    /// statement's (single) resolved tenant, so rows never move between tenants.
    pub tenant_assignments: Vec<TenantSource>,
    /// Tenant-scoped tables referenced (lowercased, as written), for messages.
    pub scoped_tables: Vec<String>,
    /// Values to encrypt and refusals for classified columns.
    pub crypto: CryptoPlan,
    /// What the statement does to a cursor (DECLARE, FETCH, CLOSE).
    pub cursor: Option<CursorOp>,
}

/// A statement on a cursor. A FETCH names no table nor tenant, so its rows
/// are decrypted with the keys of the cursor's DECLARE, which the session
/// remembers by cursor name (names lowercased, as Postgres folds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorOp {
    /// `DECLARE name … CURSOR [WITH HOLD] FOR query`.
    Declare { name: String, hold: bool },
    /// `FETCH … FROM name`: its rows come from the cursor's query.
    Fetch { name: String },
    /// `CLOSE name`, or `CLOSE ALL` (`None`).
    Close { name: Option<String> },
}

impl StatementPlan {
    pub(crate) fn new(kind: StatementKind) -> Self {
        StatementPlan {
            kind,
            tenant: TenantRequirement::None,
            comment_tenant: None,
            writes_global: false,
            reads_global: false,
            tenant_assignments: Vec::new(),
            scoped_tables: Vec::new(),
            crypto: CryptoPlan::default(),
            cursor: None,
        }
    }

    /// A query or DML statement that touches no tenant-scoped or global
    /// table, names no tenant, reads or writes no classified column and
    /// opens or moves no cursor: it runs wherever the session's statements
    /// without tenant data run, and nothing else about it needs deciding.
    pub fn is_neutral(&self) -> bool {
        matches!(self.kind, StatementKind::Read | StatementKind::Write)
            && matches!(self.tenant, TenantRequirement::None)
            && self.comment_tenant.is_none()
            && !self.writes_global
            && !self.reads_global
            && self.tenant_assignments.is_empty()
            && self.scoped_tables.is_empty()
            && self.crypto.is_empty()
            && self.cursor.is_none()
    }
}

/// The analysis of one statement text (a simple Query may hold several statements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub statements: Vec<StatementPlan>,
    /// Highest `$n` in the text (0 when none).
    pub param_count: usize,
}

impl Analysis {
    /// Whether every statement can be forwarded without a tenant: a quick path
    /// for the proxy.
    pub fn needs_no_tenant(&self) -> bool {
        self.statements
            .iter()
            .all(|s| s.tenant == TenantRequirement::None && s.comment_tenant.is_none())
    }
}

/// Analyses a statement text.
pub fn analyze(sql: &str, tenancy: &Tenancy) -> Analysis {
    let lexed = match lexer::lex(sql) {
        Ok(lexed) => lexed,
        Err(message) => {
            return Analysis {
                statements: vec![unparsed(sql, message, tenancy)],
                param_count: 0,
            }
        }
    };
    let statements = lexed
        .segments
        .iter()
        .map(|segment| {
            let mut plan = plan_segment(segment, tenancy);
            // Literal offsets are relative to the segment; make them
            // relative to the whole text the client sent.
            let offset = segment.text.as_ptr() as usize - sql.as_ptr() as usize;
            plan.crypto.shift(offset);
            match comment::combine(segment.comments.iter().map(String::as_str)) {
                CommentTenant::Absent => {}
                CommentTenant::Tenant(t) => plan.comment_tenant = Some(t),
                CommentTenant::Invalid => {
                    plan.tenant = TenantRequirement::refuse(
                        None,
                        "the statement's regionguard.tenant comments disagree or have no value",
                        "write one comment: /* regionguard.tenant = '<tenant>' */",
                    )
                }
            }
            plan
        })
        .collect();
    Analysis {
        statements,
        param_count: lexed.param_count,
    }
}

fn plan_segment(segment: &lexer::Segment<'_>, tenancy: &Tenancy) -> StatementPlan {
    if let Some(plan) = session::plan_from_head(&segment.head) {
        return plan;
    }
    if let Some(plan) = plain_statement(segment, tenancy) {
        return plan;
    }
    let dialect = PostgreSqlDialect {};
    let mut parsed = Parser::parse_sql(&dialect, segment.text);
    if parsed.is_err() && segment.head.first().map(String::as_str) == Some("COPY") {
        // sqlparser wants the inline data of `COPY … FROM STDIN` after the
        // statement; on the wire it comes in CopyData messages instead.
        let with_data = format!("{};\n\\.\n", segment.text);
        if let Ok(statements) = Parser::parse_sql(&dialect, &with_data) {
            parsed = Ok(statements);
        }
    }
    let mut text = std::borrow::Cow::Borrowed(segment.text);
    if parsed.is_err() && segment.head.first().map(String::as_str) == Some("TABLE") {
        // `TABLE name` means `SELECT * FROM name`, which sqlparser reads
        // (it does not read the short form as a statement of its own). The
        // rewritten text has no literals, so no offset of the crypto plan
        // points into it.
        if let Some(select) = table_as_select(segment.text) {
            if let Ok(statements) = Parser::parse_sql(&dialect, &select) {
                parsed = Ok(statements);
                text = std::borrow::Cow::Owned(select);
            }
        }
    }
    match parsed {
        Ok(parsed) => match parsed.as_slice() {
            [statement] => {
                let mut plan = analysis::plan_statement(statement, tenancy);
                plan.crypto = crypto_plan::plan(statement, &text, tenancy);
                plan
            }
            _ => unparsed(
                segment.text,
                "expected exactly one statement".to_string(),
                tenancy,
            ),
        },
        Err(e) => unparsed(
            segment.text,
            lexer::sanitize_message(&e.to_string()),
            tenancy,
        ),
    }
}

/// `SELECT * FROM name` for a statement `TABLE name` (no comment before
/// it; anything else is left to the parser, which then refuses it).
fn table_as_select(text: &str) -> Option<String> {
    let text = text.trim_start();
    let keyword = text.get(..5)?;
    let rest = text.get(5..)?;
    (keyword.eq_ignore_ascii_case("table") && rest.starts_with(|c: char| c.is_whitespace()))
        .then(|| format!("SELECT * FROM{rest}"))
}

/// The analysis of a single plain query or DML statement without
/// comments, parameters or names that matter to routing, found by a scan of
/// the text without tokenizing it. Simple-protocol clients send literals, so
/// such texts rarely repeat: this keeps them out of the parser and the cache.
pub fn analyze_plain(sql: &str, tenancy: &Tenancy) -> Option<Analysis> {
    plain_kind(sql, tenancy).map(|kind| Analysis {
        statements: vec![StatementPlan::new(kind)],
        param_count: 0,
    })
}

/// The kind ([`StatementKind::Read`] or [`StatementKind::Write`]) of a
/// plain statement, as [`analyze_plain`] tells it.
pub(crate) fn plain_kind(sql: &str, tenancy: &Tenancy) -> Option<StatementKind> {
    let text = sql.trim_start();
    let body = text.trim_end().trim_end_matches(';');
    if has_separator_parameter_or_comment(body) {
        return None;
    }
    let first = body.split(|c: char| !c.is_ascii_alphabetic()).next()?;
    let kind = if first.eq_ignore_ascii_case("select") || first.eq_ignore_ascii_case("values") {
        StatementKind::Read
    } else if ["insert", "update", "delete"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k))
    {
        StatementKind::Write
    } else {
        return None;
    };
    let relevant = |w: &str| word_matters(w, tenancy);
    if !tenancy.names_tables()
        && body.is_ascii()
        && !contains_ignore_ascii_case(body.as_bytes(), b"regionguard")
    {
        // Only words starting with `regionguard` could matter, and there
        // is none: no need to split the text into words.
        return Some(kind);
    }
    if lexer::mentions_word(body, relevant) {
        return None;
    }
    Some(kind)
}

/// Whether a word (lowercased) of a statement makes it more than plain:
/// it may name a tenant-scoped or global table, or something of
/// `regionguard`'s.
pub(crate) fn word_matters(word: &str, tenancy: &Tenancy) -> bool {
    tenancy.mentions_scoped_word(word)
        || tenancy.mentions_global_word(word)
        || word.starts_with("regionguard")
}

/// Whether `needle` (lowercase ASCII letters) occurs in `hay`, ignoring
/// ASCII case: only the places where its first letter occurs are compared.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), hay).any(|i| {
        hay.get(i..i + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    })
}

/// Whether `body` contains `;`, `$`, `--` or `/*` (all ASCII, so no byte of
/// a multi-byte character matches), with vectorised searches: this runs
/// for every simple query.
fn has_separator_parameter_or_comment(body: &str) -> bool {
    let b = body.as_bytes();
    let next_is = |i: usize, c: u8| b.get(i + 1) == Some(&c);
    memchr::memchr3_iter(b';', b'$', b'-', b).any(|i| b[i] != b'-' || next_is(i, b'-'))
        || memchr::memchr_iter(b'/', b).any(|i| next_is(i, b'*'))
}

/// A query or DML statement whose text names no tenant-scoped or global
/// table and nothing of `regionguard`'s: it needs no tenant, whatever its
/// shape, so it is not parsed. Statements with literals (simple-protocol
/// clients) have a new text each time; parsing each would cost more than
/// the round trip it delays.
fn plain_statement(segment: &lexer::Segment<'_>, tenancy: &Tenancy) -> Option<StatementPlan> {
    let kind = match segment.head.first().map(String::as_str) {
        Some("SELECT" | "VALUES") => StatementKind::Read,
        Some("INSERT" | "UPDATE" | "DELETE") => StatementKind::Write,
        _ => return None,
    };
    if lexer::mentions_word(segment.text, |w| word_matters(w, tenancy)) {
        return None;
    }
    Some(StatementPlan::new(kind))
}

/// A statement the parser could not read: refused when it names a
/// tenant-scoped table (it could touch any tenant) or a global table (it could
/// write it, and must then reach every region or none).
fn unparsed(text: &str, message: String, tenancy: &Tenancy) -> StatementPlan {
    let mentions_scoped = lexer::mentions_word(text, |w| tenancy.mentions_scoped_word(w));
    let mentions_global = lexer::mentions_word(text, |w| tenancy.mentions_global_word(w));
    let mut plan = StatementPlan::new(StatementKind::Unparsed {
        message: message.clone(),
        mentions_scoped,
        mentions_global,
    });
    if mentions_scoped || mentions_global {
        plan.tenant = TenantRequirement::refuse(
            None,
            format!(
                "cannot parse a statement that names a tenant-scoped or global table: {message}"
            ),
            "rewrite the statement in a form RegionGuard understands",
        );
    }
    plan
}
