//! `COPY … FROM STDIN` into a tenant-scoped table: every row's tenant is
//! checked before the row reaches the region (DESIGN.md promise 1).
//!
//! A COPY cannot span regions. It runs in the region the session would run
//! any statement without tenant data in: the pinned transaction's region,
//! else the region of the session's (or the statement comment's)
//! `regionguard.tenant`, else the `regionguard.region` startup option, else
//! the default region. Each row's tenant must live in that region; a row of
//! another region's tenant, an unknown tenant or a NULL tenant fails the
//! whole COPY (the backend's COPY is failed with CopyFail, so no row of it
//! is committed) with an ErrorResponse naming the table and the row number,
//! never the tenant.
//!
//! Where the tenant field is: the COPY's column list names it; without a
//! list the proxy reads the table's columns from `pg_attribute` in the
//! target region, over a short-lived connection of its own (the session's
//! backend is busy relaying, and its answers belong to the client), and
//! sends the COPY with that column list written out. Writing the list out
//! makes the data layout the proxy checked the layout the server uses, even
//! if the session's `search_path` resolved the name to another table than
//! the lookup did (that table then needs the same column names, or the COPY
//! fails). Binary COPY also needs the tenant column's type, read the same
//! way.
//!
//! Rows pass through [`CopyInFilter`], which re-encodes every row from the
//! fields that were checked: [`CopyIn::process_row`] is where a later
//! change encrypts classified fields.

use crate::backend;
use crate::copy::{parse_copy, CopyError, CopyFormat, CopyInFilter, CopyRow, FormatKind};
use crate::protocol::error::{sqlstate, PgError};
use crate::server::state::Shared;
use crate::sql::{StatementKind, StatementPlan, TenantRequirement};
use bytes::{Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest incomplete row the proxy holds while it waits for the rest.
pub const MAX_ROW: usize = crate::copy::DEFAULT_MAX_ROW;
/// Rows are forwarded in CopyData messages of at most this size.
const OUT_CHUNK: usize = 256 * 1024;
/// What the proxy writes in the CopyFail it sends the backend for a
/// refused row; the client sees the proxy's own error instead of the
/// backend's answer to it.
pub const REFUSED_ROW: &str = "RegionGuard refused a row of this COPY";
/// The CopyFail message when the client sent another message in the
/// middle of a COPY.
pub const INTERRUPTED: &str = "the COPY data was interrupted by another message";

/// Type OIDs a tenant column may have in binary COPY data.
mod oid {
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const TEXT: u32 = 25;
    pub const VARCHAR: u32 = 1043;
    pub const BPCHAR: u32 = 1042;
    pub const NAME: u32 = 19;
    pub const UUID: u32 = 2950;
}

/// Everything about one COPY statement that does not change per execution.
#[derive(Debug)]
pub struct CopyPlan {
    /// The table, as written in the statement (for messages).
    pub table: String,
    /// The COPY's columns in data order: the statement's list, or the
    /// table's columns (without dropped and generated ones).
    pub columns: Vec<String>,
    /// Type OIDs of `columns` when they were read from the catalog.
    pub types: Option<Vec<u32>>,
    /// Position of the tenant column in each row.
    pub tenant_index: usize,
    /// The tenant column's name (for messages and hints).
    pub tenant_column: String,
    /// Format and options, FORCE_* columns bound to positions.
    pub format: CopyFormat,
    /// The statement text to send instead of the client's (column list
    /// written out), when it had none.
    pub rewritten: Option<String>,
}

impl CopyPlan {
    /// The tenant column's type, when known.
    fn tenant_type(&self) -> Option<u32> {
        self.types.as_ref()?.get(self.tenant_index).copied()
    }
}

/// Whether `plan` is a `COPY … FROM STDIN` whose rows need checking.
pub fn is_per_row(plan: &StatementPlan) -> bool {
    matches!(plan.tenant, TenantRequirement::PerRow { .. })
}

fn refusal(message: String, hint: impl Into<String>) -> PgError {
    super::route::refusal(message, hint)
}

/// Works out where the tenant sits in the rows of the COPY `sql` (whose
/// analysis is `plan`) when it runs in `region`.
pub async fn plan(
    shared: &Shared,
    plan: &StatementPlan,
    sql: &str,
    region: &Arc<str>,
) -> Result<CopyPlan, PgError> {
    let StatementKind::Copy {
        table: Some(display),
        columns: listed,
        ..
    } = &plan.kind
    else {
        return Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "expected a COPY into a table",
        ));
    };
    let statement = parse_copy(sql)
        .map_err(|e| PgError::from(e.context(format_args!("COPY into {display}"))))?;
    let table = statement.table.clone().unwrap_or_else(|| display.clone());
    let tenant_column = shared
        .tenancy
        .column_of(display)
        .unwrap_or(shared.tenancy.default_column())
        .to_string();
    let needs_catalog = listed.is_empty() || statement.format.kind == FormatKind::Binary;
    let catalog = if needs_catalog {
        Some(table_columns(shared, region, &table, display).await?)
    } else {
        None
    };
    let (columns, types) = match (&catalog, listed.is_empty()) {
        (Some(cat), true) => (
            cat.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            Some(cat.iter().map(|(_, t)| *t).collect::<Vec<_>>()),
        ),
        (Some(cat), false) => {
            let types = statement
                .columns
                .iter()
                .map(|c| cat.iter().find(|(n, _)| n == c).map_or(0, |(_, t)| *t))
                .collect();
            (statement.columns.clone(), Some(types))
        }
        (None, _) => (statement.columns.clone(), None),
    };
    let Some(tenant_index) = columns.iter().position(|c| *c == tenant_column) else {
        return Err(refusal(
            format!("COPY into tenant-scoped table {display} must include its tenant column {tenant_column}"),
            format!("add {tenant_column} to the COPY column list, so RegionGuard can check each row's tenant"),
        ));
    };
    let format = statement
        .format
        .bind_columns(&columns)
        .map_err(|e| PgError::from(e.context(format_args!("COPY into {display}"))))?;
    let rewritten = if listed.is_empty() {
        Some(with_column_list(sql, &table, &columns).ok_or_else(|| {
            refusal(
                format!("cannot add the column list to the COPY into {display}"),
                format!("name the columns: COPY {display} ({tenant_column}, …) FROM STDIN"),
            )
        })?)
    } else {
        None
    };
    Ok(CopyPlan {
        table: display.clone(),
        columns,
        types,
        tenant_index,
        tenant_column,
        format,
        rewritten,
    })
}

/// One running `COPY … FROM STDIN`: CopyData payloads in, checked rows out.
pub struct CopyIn {
    plan: Arc<CopyPlan>,
    region: Arc<str>,
    filter: CopyInFilter,
    /// Tenants already found to live in `region`.
    allowed: HashSet<String>,
}

impl CopyIn {
    /// A COPY of `plan` running in `region`.
    pub fn new(plan: Arc<CopyPlan>, region: Arc<str>) -> Self {
        let filter = CopyInFilter::new(plan.format.clone(), Some(plan.columns.len()), MAX_ROW);
        CopyIn {
            plan,
            region,
            filter,
            allowed: HashSet::new(),
        }
    }

    pub fn region(&self) -> &Arc<str> {
        &self.region
    }

    /// Takes one CopyData payload; returns the CopyData messages to forward.
    pub async fn data(&mut self, shared: &Shared, payload: &[u8]) -> Result<BytesMut, PgError> {
        self.filter.push(payload);
        self.drain(shared).await
    }

    /// The client sent CopyDone: the last row may end without a newline.
    /// Returns the CopyData messages to forward before CopyDone.
    pub async fn done(&mut self, shared: &Shared) -> Result<BytesMut, PgError> {
        self.filter.end_of_input();
        self.drain(shared).await
    }

    async fn drain(&mut self, shared: &Shared) -> Result<BytesMut, PgError> {
        loop {
            let row = self.filter.next_row().map_err(|e| self.codec_error(e))?;
            let Some(mut row) = row else { break };
            self.process_row(shared, &mut row).await?;
            self.filter
                .write_row(&row)
                .map_err(|e| self.codec_error(e))?;
        }
        let mut out = BytesMut::new();
        if let Some(bytes) = self.filter.take_output() {
            for chunk in bytes.chunks(OUT_CHUNK) {
                out.extend_from_slice(b"d");
                out.extend_from_slice(&((chunk.len() + 4) as i32).to_be_bytes());
                out.extend_from_slice(chunk);
            }
        }
        Ok(out)
    }

    fn codec_error(&self, e: CopyError) -> PgError {
        e.context(format_args!("COPY into {}", self.plan.table))
            .into()
    }

    /// Everything the proxy does to one row before it goes to the region:
    /// the residency check. Encrypting classified fields (issue 4) belongs
    /// here too, after the check: `row.fields[i]` holds the text (text/CSV)
    /// or binary (binary format) representation of column
    /// `self.plan.columns[i]`, and the row's tenant and region are known.
    pub async fn process_row(&mut self, shared: &Shared, row: &mut CopyRow) -> Result<(), PgError> {
        let tenant = self.tenant_of(row)?;
        if !self.allowed.contains(&tenant) {
            let at = || format!("COPY into {}, data row {}", self.plan.table, row.number);
            let region = super::route::region_of(shared, &tenant)
                .await
                .map_err(|e| PgError {
                    message: format!("{}: {}", at(), e.message),
                    ..e
                })?;
            if region != self.region {
                return Err(refusal(
                    format!(
                        "{}: the row's tenant lives in region {region}, but this COPY runs in region {}",
                        at(),
                        self.region
                    ),
                    format!(
                        "a COPY may only hold one region's rows: send region {region}'s rows in their own COPY, in a session placed there (SET regionguard.tenant to one of its tenants, or connect with options=-c regionguard.region={region})"
                    ),
                ));
            }
            self.allowed.insert(tenant);
        }
        Ok(())
    }

    /// The tenant id in `row`, as the directory knows it.
    fn tenant_of(&self, row: &CopyRow) -> Result<String, PgError> {
        let plan = &self.plan;
        let unreadable = |why: &str| {
            refusal(
                format!(
                    "COPY into {}, data row {}: cannot read the tenant column {}: {why}",
                    plan.table, row.number, plan.tenant_column
                ),
                "tenant ids must be text, varchar, int2/4/8 or uuid",
            )
        };
        let Some(Some(value)) = row.fields.get(plan.tenant_index) else {
            return Err(refusal(
                format!(
                    "COPY into {}, data row {}: the tenant column {} is NULL",
                    plan.table, row.number, plan.tenant_column
                ),
                format!("give every row a tenant id in {}", plan.tenant_column),
            ));
        };
        if plan.format.kind == FormatKind::Binary {
            return binary_tenant(value, plan.tenant_type().unwrap_or(0))
                .ok_or_else(|| unreadable("unsupported type or malformed value"));
        }
        let text = std::str::from_utf8(value)
            .map_err(|_| unreadable("not valid UTF-8"))?
            .trim_end();
        match plan.tenant_type() {
            // Postgres reads " 007" into an integer column as 7.
            Some(oid::INT2 | oid::INT4 | oid::INT8) => text
                .trim()
                .parse::<i64>()
                .map(|v| v.to_string())
                .map_err(|_| unreadable("not an integer")),
            _ => Ok(text.to_string()),
        }
    }
}

/// A tenant id from its binary representation.
fn binary_tenant(bytes: &[u8], type_oid: u32) -> Option<String> {
    match type_oid {
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => std::str::from_utf8(bytes)
            .ok()
            .map(|s| s.trim_end().to_string()),
        oid::INT2 => Some(i16::from_be_bytes(bytes.try_into().ok()?).to_string()),
        oid::INT4 => Some(i32::from_be_bytes(bytes.try_into().ok()?).to_string()),
        oid::INT8 => Some(i64::from_be_bytes(bytes.try_into().ok()?).to_string()),
        oid::UUID if bytes.len() == 16 => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Some(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            ))
        }
        _ => None,
    }
}

/// `(name, type oid)` of the columns a COPY without a column list uses, in
/// order: not dropped, not generated. Read in `region` over a connection of
/// the proxy's own.
async fn table_columns(
    shared: &Shared,
    region: &Arc<str>,
    table: &str,
    display: &str,
) -> Result<Vec<(String, u32)>, PgError> {
    let Some(rt) = shared.region(region) else {
        return Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            format!("region {region} is not configured"),
        ));
    };
    let limit = Duration::from_secs(rt.config.connect_timeout_secs.saturating_add(10));
    let lookup = async {
        let params = [(
            "application_name".to_string(),
            "regionguard catalog lookup".to_string(),
        )];
        let conn = backend::connect(region, &rt.config, &rt.tls, &rt.primary, &params)
            .await
            .map_err(|e| {
                PgError::error(sqlstate::CONNECTION_FAILURE, e.to_string()).with_hint(
                    "RegionGuard reads the table's columns there; name the columns in the COPY statement to skip this",
                )
            })?;
        let mut stream = conn.stream;
        // An E'' literal reads the same whatever standard_conforming_strings is.
        let literal = format!("E'{}'", table.replace('\\', "\\\\").replace('\'', "''"));
        let sql = format!(
            "SELECT a.attname::text, a.atttypid::int8::text FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = {literal}::pg_catalog.regclass AND a.attnum > 0 \
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum"
        );
        let mut out = BytesMut::new();
        let io = |e: std::io::Error| {
            PgError::error(
                sqlstate::CONNECTION_FAILURE,
                format!("catalog lookup in region {region} failed: {e}"),
            )
        };
        frontend::query(&sql, &mut out).map_err(io)?;
        stream.write_all(&out).await.map_err(io)?;
        let mut buf = BytesMut::with_capacity(4096);
        let mut columns = Vec::new();
        let mut failure: Option<String> = None;
        loop {
            match Message::parse(&mut buf).map_err(io)? {
                Some(Message::DataRow(row)) => {
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Ok(Some(range)) =
                        fallible_iterator::FallibleIterator::next(&mut ranges)
                    {
                        values.push(range.map(|r| row.buffer()[r].to_vec()));
                    }
                    if let [Some(name), Some(ty)] = values.as_slice() {
                        let name = String::from_utf8_lossy(name).into_owned();
                        let ty = std::str::from_utf8(ty)
                            .ok()
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(0);
                        columns.push((name, ty));
                    }
                }
                Some(Message::ErrorResponse(body)) => {
                    let mut fields = body.fields();
                    while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
                        if f.type_() == b'C' {
                            failure = Some(String::from_utf8_lossy(f.value_bytes()).into_owned());
                        }
                    }
                    failure.get_or_insert_with(String::new);
                }
                Some(Message::ReadyForQuery(_)) => break,
                Some(_) => {}
                None => {
                    if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
        }
        let mut bye = BytesMut::new();
        frontend::terminate(&mut bye);
        let _ = stream.write_all(&bye).await;
        let _ = stream.shutdown().await;
        match failure {
            Some(code) if code == "42P01" || code == "3F000" || code == "42602" => Err(PgError::error(
                "42P01",
                format!("COPY into {display}: the table does not exist in region {region}"),
            )
            .with_hint("create the table in that region first (a table created in the open transaction cannot be looked up: name the COPY's columns instead)")),
            Some(code) => Err(PgError::error(
                sqlstate::INTERNAL_ERROR,
                format!("COPY into {display}: reading the table's columns in region {region} failed (SQLSTATE {code})"),
            )
            .with_hint("name the columns in the COPY statement")),
            None if columns.is_empty() => Err(refusal(
                format!("COPY into {display}: the table has no columns in region {region}"),
                "check the table's definition",
            )),
            None => Ok(columns),
        }
    };
    match tokio::time::timeout(limit, lookup).await {
        Ok(r) => r,
        Err(_) => Err(PgError::error(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "COPY into {display}: reading the table's columns in region {region} timed out"
            ),
        )
        .with_hint("name the columns in the COPY statement, or retry")),
    }
}

/// `sql` with `(columns)` written after the table name, which must read
/// `table` (ignoring whitespace). `None` when the text is not the simple
/// `COPY name FROM …` shape this expects.
pub fn with_column_list(sql: &str, table: &str, columns: &[String]) -> Option<String> {
    let b = sql.as_bytes();
    let mut i = skip_space(b, 0)?;
    if !b.get(i..i + 4)?.eq_ignore_ascii_case(b"copy")
        || b.get(i + 4).is_some_and(|&c| ident_byte(c))
    {
        return None;
    }
    i += 4;
    let start = skip_space(b, i)?;
    i = start;
    let end = loop {
        i = skip_space(b, i)?;
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i)? {
                    b'"' if b.get(i + 1) == Some(&b'"') => i += 2,
                    b'"' => {
                        i += 1;
                        break;
                    }
                    _ => i += 1,
                }
            }
        } else {
            let s = i;
            while b.get(i).is_some_and(|&c| ident_byte(c)) {
                i += 1;
            }
            if i == s {
                return None;
            }
        }
        let end = i;
        let next = skip_space(b, i)?;
        match b.get(next) {
            Some(b'.') => i = next + 1,
            Some(b'(') => return None,
            _ => break end,
        }
    };
    let written: String = sql.get(start..end)?.split_whitespace().collect();
    if written != table {
        return None;
    }
    let list: Vec<String> = columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect();
    Some(format!(
        "{} ({}){}",
        sql.get(..end)?,
        list.join(", "),
        sql.get(end..)?
    ))
}

fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The position after whitespace and comments from `i` (`None` inside an
/// unterminated comment).
fn skip_space(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match (b.get(i), b.get(i + 1)) {
            (Some(c), _) if c.is_ascii_whitespace() => i += 1,
            (Some(b'-'), Some(b'-')) => {
                while b.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
            }
            (Some(b'/'), Some(b'*')) => {
                let mut depth = 0usize;
                loop {
                    match (b.get(i)?, b.get(i + 1)) {
                        (b'/', Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (b'*', Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => i += 1,
                    }
                }
            }
            _ => return Some(i),
        }
    }
}

/// A CopyFail message for the backend.
pub fn copy_fail(message: &str) -> Bytes {
    let mut b = BytesMut::new();
    let _ = frontend::copy_fail(message, &mut b);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_list_goes_after_the_table_name() {
        let cols = vec!["tenant_id".to_string(), "Id".to_string()];
        assert_eq!(
            with_column_list("COPY customers FROM STDIN", "customers", &cols).as_deref(),
            Some("COPY customers (\"tenant_id\", \"Id\") FROM STDIN")
        );
        assert_eq!(
            with_column_list(
                "/* regionguard.tenant = 'x' */ copy public . \"Cu\"\"s\"\nFROM stdin WITH CSV",
                "public.\"Cu\"\"s\"",
                &cols
            )
            .as_deref(),
            Some("/* regionguard.tenant = 'x' */ copy public . \"Cu\"\"s\" (\"tenant_id\", \"Id\")\nFROM stdin WITH CSV")
        );
        assert!(with_column_list("COPY t (a) FROM STDIN", "t", &cols).is_none());
        assert!(with_column_list("COPY BINARY t FROM STDIN", "t", &cols).is_none());
        assert!(with_column_list("SELECT 1", "t", &cols).is_none());
        assert!(with_column_list("COPY /* open", "t", &cols).is_none());
    }

    #[test]
    fn binary_tenant_ids() {
        assert_eq!(binary_tenant(b"acme", oid::TEXT).as_deref(), Some("acme"));
        assert_eq!(
            binary_tenant(&42i32.to_be_bytes(), oid::INT4).as_deref(),
            Some("42")
        );
        assert_eq!(
            binary_tenant(&7i64.to_be_bytes(), oid::INT8).as_deref(),
            Some("7")
        );
        assert_eq!(binary_tenant(&7i32.to_be_bytes(), oid::INT8), None);
        assert_eq!(
            binary_tenant(
                &[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8],
                oid::UUID
            )
            .as_deref(),
            Some("12345678-9abc-def0-0102-030405060708")
        );
        assert_eq!(binary_tenant(b"x", 0), None);
    }
}
