//! The data format of a COPY statement, from its options.
//!
//! Both the modern `WITH (FORMAT csv, HEADER true, …)` and the legacy
//! `WITH CSV HEADER QUOTE AS '"'` / `BINARY` / `DELIMITER AS ','` forms are
//! read. Options are validated as Postgres validates them (so the proxy
//! never parses data under rules the server would not use), plus a few
//! restrictions of the proxy's own where a setting would make rows
//! ambiguous to re-encode; anything unknown is refused with 0A000 rather
//! than guessed.

use super::error::{CopyError, SYNTAX_ERROR};
use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// The three COPY data formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatKind {
    Text,
    Csv,
    Binary,
}

impl FormatKind {
    pub fn name(self) -> &'static str {
        match self {
            FormatKind::Text => "text",
            FormatKind::Csv => "csv",
            FormatKind::Binary => "binary",
        }
    }
}

/// `COPY … FROM` (data flows to the server) or `COPY … TO` (from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    From,
    To,
}

/// Columns named by FORCE_QUOTE / FORCE_NOT_NULL / FORCE_NULL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ColumnSet {
    #[default]
    None,
    /// `*` (FORCE_QUOTE only).
    All,
    /// Column names, folded as Postgres folds identifiers.
    Named(Vec<String>),
}

impl ColumnSet {
    fn is_none(&self) -> bool {
        matches!(self, ColumnSet::None)
    }
}

/// Per-column CSV behaviour, resolved from the FORCE_* options by
/// [`CopyFormat::bind_columns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ColumnFlags {
    /// FORCE_QUOTE: always quote non-NULL values (COPY TO).
    pub force_quote: bool,
    /// FORCE_NOT_NULL: an unquoted null marker is the string, not NULL (COPY FROM).
    pub force_not_null: bool,
    /// FORCE_NULL: a quoted value equal to the null marker is NULL (COPY FROM).
    pub force_null: bool,
}

/// How rows of one COPY are written: format, delimiter, null marker,
/// quoting, header and the per-column CSV options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    pub kind: FormatKind,
    pub direction: Direction,
    /// Field delimiter (text: tab, CSV: comma). Unused in binary.
    pub delimiter: u8,
    /// The null marker as it appears in the data (text: `\N`, CSV: empty).
    pub null: Vec<u8>,
    /// CSV quote character (`"`).
    pub quote: u8,
    /// CSV escape character inside quotes (defaults to the quote).
    pub escape: u8,
    /// The first line is a header (text and CSV).
    pub header: bool,
    pub force_quote: ColumnSet,
    pub force_not_null: ColumnSet,
    pub force_null: ColumnSet,
    /// Per-position flags once the column list is known; empty before.
    flags: Vec<ColumnFlags>,
}

/// What the codec needs to know of a COPY statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStatement {
    /// The table as written, quoting kept (`public."Orders"`), usable as
    /// `regclass` input; `None` for `COPY (query) TO`.
    pub table: Option<String>,
    /// The column list, folded as Postgres folds identifiers; empty when
    /// the statement has none.
    pub columns: Vec<String>,
    /// `COPY … FROM STDIN`.
    pub from_stdin: bool,
    /// `COPY … TO STDOUT`.
    pub to_stdout: bool,
    pub format: CopyFormat,
}

impl CopyFormat {
    /// Postgres' defaults for `kind` in `direction`.
    pub fn new(kind: FormatKind, direction: Direction) -> Self {
        let csv = kind == FormatKind::Csv;
        CopyFormat {
            kind,
            direction,
            delimiter: if csv { b',' } else { b'\t' },
            null: if csv { Vec::new() } else { b"\\N".to_vec() },
            quote: b'"',
            escape: b'"',
            header: false,
            force_quote: ColumnSet::None,
            force_not_null: ColumnSet::None,
            force_null: ColumnSet::None,
            flags: Vec::new(),
        }
    }

    /// Text format with default options, for `COPY … FROM`.
    pub fn text() -> Self {
        Self::new(FormatKind::Text, Direction::From)
    }

    /// CSV with default options, for `COPY … FROM`.
    pub fn csv() -> Self {
        Self::new(FormatKind::Csv, Direction::From)
    }

    /// Binary, for `COPY … FROM`.
    pub fn binary() -> Self {
        Self::new(FormatKind::Binary, Direction::From)
    }

    /// The format of a parsed `COPY` statement.
    pub fn from_statement(statement: &Statement) -> Result<Self, CopyError> {
        let Statement::Copy {
            to,
            options,
            legacy_options,
            ..
        } = statement
        else {
            return Err(CopyError::unsupported("not a COPY statement"));
        };
        let direction = if *to { Direction::To } else { Direction::From };
        Options::default()
            .read(options, legacy_options)?
            .build(direction)
    }

    /// The flags of column `index` (all off before [`Self::bind_columns`]).
    pub fn flags(&self, index: usize) -> ColumnFlags {
        self.flags.get(index).copied().unwrap_or_default()
    }

    /// Resolves the FORCE_* column names against the COPY's column list
    /// (the statement's, or the table's columns in order). A name that is
    /// not in the list is refused, as Postgres refuses it (42P10).
    pub fn bind_columns(mut self, columns: &[String]) -> Result<Self, CopyError> {
        let mut flags = vec![ColumnFlags::default(); columns.len()];
        let mut apply = |set: &ColumnSet,
                         option: &str,
                         set_flag: fn(&mut ColumnFlags)|
         -> Result<(), CopyError> {
            match set {
                ColumnSet::None => {}
                ColumnSet::All => flags.iter_mut().for_each(set_flag),
                ColumnSet::Named(names) => {
                    for name in names {
                        let Some(i) = columns.iter().position(|c| c == name) else {
                            return Err(CopyError {
                                code: "42P10",
                                message: format!(
                                    "{option} column \"{name}\" not referenced by COPY"
                                ),
                                hint: None,
                            });
                        };
                        if let Some(f) = flags.get_mut(i) {
                            set_flag(f);
                        }
                    }
                }
            }
            Ok(())
        };
        apply(&self.force_quote, "FORCE_QUOTE", |f| f.force_quote = true)?;
        apply(&self.force_not_null, "FORCE_NOT_NULL", |f| {
            f.force_not_null = true
        })?;
        apply(&self.force_null, "FORCE_NULL", |f| f.force_null = true)?;
        self.flags = flags;
        Ok(self)
    }

    /// Checks the combination of options as Postgres' `ProcessCopyOptions`
    /// does, plus the proxy's own limits.
    fn validate(&self) -> Result<(), CopyError> {
        let csv = self.kind == FormatKind::Csv;
        if self.kind == FormatKind::Binary && self.header {
            return Err(CopyError::unsupported(
                "cannot specify HEADER in BINARY mode",
            ));
        }
        let d = self.delimiter;
        if d == b'\n' || d == b'\r' {
            return Err(CopyError::invalid(
                "COPY delimiter cannot be newline or carriage return",
            ));
        }
        if self.null.contains(&b'\n') || self.null.contains(&b'\r') {
            return Err(CopyError::invalid(
                "COPY null representation cannot use newline or carriage return",
            ));
        }
        if self.kind == FormatKind::Text && b"\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(&d)
        {
            return Err(CopyError::invalid(format!(
                "COPY delimiter cannot be \"{}\"",
                d as char
            )));
        }
        if self.kind != FormatKind::Binary && self.null.contains(&d) {
            return Err(CopyError::invalid(
                "COPY delimiter must not appear in the NULL specification",
            ));
        }
        if csv {
            if d == self.quote {
                return Err(CopyError::invalid(
                    "COPY delimiter and quote must be different",
                ));
            }
            if self.null.contains(&self.quote) {
                return Err(CopyError::invalid(
                    "CSV quote character must not appear in the NULL specification",
                ));
            }
            // The proxy's own limit: a NULL row of one column would be the
            // end-of-data marker line.
            if self.null == b"\\." {
                return Err(CopyError::unsupported(
                    "a COPY NULL string of \\. is not supported by RegionGuard",
                ));
            }
        }
        if self.kind == FormatKind::Text {
            // The proxy's own limit: the null marker is written unescaped, so
            // it must not contain an end-of-data marker or end in half an
            // escape sequence (which would swallow the next delimiter).
            let mut i = 0;
            while i < self.null.len() {
                if self.null[i] == b'\\' {
                    match self.null.get(i + 1) {
                        None | Some(b'.') => {
                            return Err(CopyError::unsupported(
                                "a COPY NULL string with a trailing backslash or \\. is not supported by RegionGuard",
                            ))
                        }
                        Some(_) => i += 2,
                    }
                } else {
                    i += 1;
                }
            }
        }
        let forces = !(self.force_quote.is_none()
            && self.force_not_null.is_none()
            && self.force_null.is_none());
        if forces && !csv {
            return Err(CopyError::unsupported(
                "COPY FORCE_QUOTE, FORCE_NOT_NULL and FORCE_NULL are available only in CSV mode",
            ));
        }
        if self.direction == Direction::From && !self.force_quote.is_none() {
            return Err(CopyError::unsupported(
                "COPY FORCE_QUOTE cannot be used with COPY FROM",
            ));
        }
        if self.direction == Direction::To
            && !(self.force_not_null.is_none() && self.force_null.is_none())
        {
            return Err(CopyError::unsupported(
                "COPY FORCE_NOT_NULL and FORCE_NULL cannot be used with COPY TO",
            ));
        }
        Ok(())
    }
}

/// Options as written, before defaults are applied.
#[derive(Default)]
struct Options {
    kind: Option<FormatKind>,
    delimiter: Option<u8>,
    null: Option<Vec<u8>>,
    header: Option<bool>,
    quote: Option<u8>,
    escape: Option<u8>,
    force_quote: Option<ColumnSet>,
    force_not_null: Option<ColumnSet>,
    force_null: Option<ColumnSet>,
    freeze: Option<bool>,
    encoding: Option<String>,
}

fn redundant(option: &str) -> CopyError {
    CopyError {
        code: SYNTAX_ERROR,
        message: format!("conflicting or redundant options: {option}"),
        hint: None,
    }
}

fn set<T>(slot: &mut Option<T>, value: T, option: &str) -> Result<(), CopyError> {
    if slot.is_some() {
        return Err(redundant(option));
    }
    *slot = Some(value);
    Ok(())
}

fn one_byte(c: char, what: &str) -> Result<u8, CopyError> {
    if c.is_ascii() && c != '\0' {
        Ok(c as u8)
    } else {
        Err(CopyError::invalid(format!(
            "COPY {what} must be a single one-byte character"
        )))
    }
}

/// An identifier as Postgres folds it: unquoted names are lowercased.
pub(crate) fn ident_name(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

fn columns(idents: &[Ident]) -> ColumnSet {
    ColumnSet::Named(idents.iter().map(ident_name).collect())
}

impl Options {
    fn read(
        mut self,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<Self, CopyError> {
        for option in options {
            match option {
                CopyOption::Format(name) => {
                    let kind = match name.value.to_ascii_lowercase().as_str() {
                        "text" => FormatKind::Text,
                        "csv" => FormatKind::Csv,
                        "binary" => FormatKind::Binary,
                        _ => {
                            return Err(CopyError::invalid(format!(
                                "COPY format \"{}\" not recognized",
                                name.value
                            )))
                        }
                    };
                    set(&mut self.kind, kind, "FORMAT")?;
                }
                CopyOption::Freeze(f) => set(&mut self.freeze, *f, "FREEZE")?,
                CopyOption::Delimiter(c) => {
                    set(&mut self.delimiter, one_byte(*c, "delimiter")?, "DELIMITER")?
                }
                CopyOption::Null(s) => set(&mut self.null, s.as_bytes().to_vec(), "NULL")?,
                CopyOption::Header(h) => set(&mut self.header, *h, "HEADER")?,
                CopyOption::Quote(c) => set(&mut self.quote, one_byte(*c, "quote")?, "QUOTE")?,
                CopyOption::Escape(c) => set(&mut self.escape, one_byte(*c, "escape")?, "ESCAPE")?,
                CopyOption::ForceQuote(c) => set(&mut self.force_quote, columns(c), "FORCE_QUOTE")?,
                CopyOption::ForceNotNull(c) => {
                    set(&mut self.force_not_null, columns(c), "FORCE_NOT_NULL")?
                }
                CopyOption::ForceNull(c) => set(&mut self.force_null, columns(c), "FORCE_NULL")?,
                CopyOption::Encoding(e) => set(&mut self.encoding, e.clone(), "ENCODING")?,
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Binary => set(&mut self.kind, FormatKind::Binary, "BINARY")?,
                CopyLegacyOption::Delimiter(c) => {
                    set(&mut self.delimiter, one_byte(*c, "delimiter")?, "DELIMITER")?
                }
                CopyLegacyOption::Null(s) => set(&mut self.null, s.as_bytes().to_vec(), "NULL")?,
                CopyLegacyOption::Header => set(&mut self.header, true, "HEADER")?,
                CopyLegacyOption::Csv(csv) => {
                    set(&mut self.kind, FormatKind::Csv, "CSV")?;
                    for o in csv {
                        match o {
                            CopyLegacyCsvOption::Header => set(&mut self.header, true, "HEADER")?,
                            CopyLegacyCsvOption::Quote(c) => {
                                set(&mut self.quote, one_byte(*c, "quote")?, "QUOTE")?
                            }
                            CopyLegacyCsvOption::Escape(c) => {
                                set(&mut self.escape, one_byte(*c, "escape")?, "ESCAPE")?
                            }
                            CopyLegacyCsvOption::ForceQuote(c) => {
                                set(&mut self.force_quote, columns(c), "FORCE QUOTE")?
                            }
                            CopyLegacyCsvOption::ForceNotNull(c) => {
                                set(&mut self.force_not_null, columns(c), "FORCE NOT NULL")?
                            }
                        }
                    }
                }
                other => {
                    // Redshift/Snowflake-style options sqlparser also reads.
                    let name = other.to_string();
                    let word = name.split_whitespace().next().unwrap_or("option");
                    return Err(CopyError::unsupported(format!(
                        "COPY option {word} is not a PostgreSQL COPY option"
                    )));
                }
            }
        }
        Ok(self)
    }

    fn build(self, direction: Direction) -> Result<CopyFormat, CopyError> {
        let kind = self.kind.unwrap_or(FormatKind::Text);
        let mut f = CopyFormat::new(kind, direction);
        if let Some(e) = &self.encoding {
            let norm: String = e
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase();
            if norm != "utf8" {
                return Err(CopyError::unsupported(
                    "COPY ENCODING other than UTF8 is not supported by RegionGuard",
                )
                .with_hint("convert the data to UTF-8 and drop the ENCODING option"));
            }
        }
        let binary = kind == FormatKind::Binary;
        let csv = kind == FormatKind::Csv;
        if binary && (self.delimiter.is_some() || self.null.is_some()) {
            return Err(CopyError::unsupported(
                "cannot specify DELIMITER or NULL in BINARY mode",
            ));
        }
        if !csv && (self.quote.is_some() || self.escape.is_some()) {
            return Err(CopyError::unsupported(
                "COPY QUOTE and ESCAPE are available only in CSV mode",
            ));
        }
        if let Some(d) = self.delimiter {
            f.delimiter = d;
        }
        if let Some(n) = self.null {
            f.null = n;
        }
        if let Some(h) = self.header {
            f.header = h;
        }
        if let Some(q) = self.quote {
            f.quote = q;
            f.escape = q;
        }
        if let Some(e) = self.escape {
            f.escape = e;
        }
        f.force_quote = self.force_quote.unwrap_or_default();
        f.force_not_null = self.force_not_null.unwrap_or_default();
        f.force_null = self.force_null.unwrap_or_default();
        f.validate()?;
        Ok(f)
    }
}

/// Parses a `COPY` statement's text (one statement, as sent in a Query or
/// Parse message) and reads its options.
pub fn parse_copy(sql: &str) -> Result<CopyStatement, CopyError> {
    let dialect = PostgreSqlDialect {};
    let body = sql.trim().trim_end_matches(';');
    let parsed = Parser::parse_sql(&dialect, body).or_else(|first| {
        // sqlparser expects `COPY … FROM STDIN` to be followed by inline
        // data; on the wire it comes in CopyData messages instead.
        Parser::parse_sql(&dialect, &format!("{body};\n\\.\n")).map_err(|_| first)
    });
    let statements = parsed.map_err(|_| {
        CopyError::unsupported("RegionGuard cannot read this COPY statement's options")
            .with_hint("use COPY … FROM STDIN WITH (FORMAT text|csv|binary, …)")
    })?;
    let [statement] = statements.as_slice() else {
        return Err(CopyError::unsupported(
            "expected exactly one COPY statement",
        ));
    };
    let Statement::Copy {
        source, target, to, ..
    } = statement
    else {
        return Err(CopyError::unsupported("not a COPY statement"));
    };
    let format = CopyFormat::from_statement(statement)?;
    let (table, columns) = match source {
        CopySource::Table {
            table_name,
            columns,
        } => (
            Some(table_name.to_string()),
            columns.iter().map(ident_name).collect(),
        ),
        CopySource::Query(_) => (None, Vec::new()),
    };
    Ok(CopyStatement {
        table,
        columns,
        from_stdin: !*to && matches!(target, CopyTarget::Stdin),
        to_stdout: *to && matches!(target, CopyTarget::Stdout),
        format,
    })
}
