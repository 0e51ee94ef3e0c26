//! `COPY … FROM STDIN` into a tenant-scoped table: every row's tenant is
//! checked before the row reaches the region (DESIGN.md promise 1), and
//! its classified fields are encrypted with that tenant's key (promise 3).
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
//! fields that were checked. [`CopyIn::process_row`] checks the row's
//! tenant, then replaces every non-NULL classified field with its
//! ciphertext: the field is converted to the logical type's canonical
//! (binary) form — from text with the session's settings in text and CSV
//! COPY, checked as it is in binary COPY — sealed with the row's tenant's
//! key (created on the tenant's first write, cached for the COPY), and
//! written in the column's storage form for the COPY format (bytea: the
//! envelope's bytes in binary COPY, `\x…` hex in text and CSV, escaped by
//! the encoder; text storage: `rg1:` base64).
//!
//! The same [`CopyPlan`] (columns, classified positions, tenant position)
//! serves `COPY … TO STDOUT` of a table with classified columns, whose rows
//! [`super::copy_out`] decrypts on the way back.

use super::encrypt::{self, crypto_error, type_error};
use super::tenant_value::{self, oid};
use crate::backend;
use crate::catalog::Storage;
use crate::copy::{
    parse_copy, CopyError, CopyFormat, CopyInFilter, CopyRow, Direction, FormatKind,
};
use crate::crypto::{Aad, TenantKeys};
use crate::metrics::crypto::Op;
use crate::protocol::error::{sqlstate, PgError};
use crate::server::state::Shared;
use crate::sql::{
    ColumnClass, CryptoPlan, CryptoTarget, Purpose, StatementKind, StatementPlan,
    TenantRequirement, ValueSource,
};
use crate::types::SessionFormat;
use bytes::{Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::collections::{HashMap, HashSet};
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

/// A classified column among a COPY's columns.
#[derive(Debug, Clone)]
pub struct ClassifiedField {
    /// Its position in each row.
    pub index: usize,
    pub class: Arc<ColumnClass>,
    /// How the region stores its ciphertext.
    pub storage: Storage,
}

/// Everything about one COPY statement that does not change per execution.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    /// The table, as written in the statement (for messages).
    pub table: String,
    /// The COPY's columns in data order: the statement's list, or the
    /// table's columns (without dropped and generated ones).
    pub columns: Vec<String>,
    /// Type OIDs of `columns` when they were read from the catalog.
    pub types: Option<Vec<u32>>,
    /// Position of the tenant column in each row (always known for COPY
    /// FROM; COPY TO may leave it out).
    pub tenant_index: Option<usize>,
    /// The tenant column's name (for messages and hints).
    pub tenant_column: String,
    /// Format and options, FORCE_* columns bound to positions.
    pub format: CopyFormat,
    /// The statement text to send instead of the client's (column list
    /// written out), when it had none.
    pub rewritten: Option<String>,
    /// The classified columns among `columns`, in row order.
    pub classified: Vec<ClassifiedField>,
}

impl CopyPlan {
    /// The tenant column's type, when known.
    fn tenant_type(&self) -> Option<u32> {
        self.types.as_ref()?.get(self.tenant_index?).copied()
    }

    /// `COPY into t` / `COPY of t`, for messages.
    pub fn what(&self) -> String {
        what(self.format.direction, &self.table)
    }
}

fn what(direction: Direction, table: &str) -> String {
    match direction {
        Direction::From => format!("COPY into {table}"),
        Direction::To => format!("COPY of {table}"),
    }
}

/// Whether `plan` is a `COPY … FROM STDIN` whose rows need checking.
pub fn is_per_row(plan: &StatementPlan) -> bool {
    matches!(plan.tenant, TenantRequirement::PerRow { .. })
}

/// Whether `plan` is a COPY whose rows the proxy must see: a `COPY … FROM
/// STDIN` into a tenant-scoped table (rows checked, classified fields
/// encrypted), or a `COPY table … TO` of a table with classified columns
/// (classified fields decrypted).
pub fn needs_plan(plan: &StatementPlan) -> bool {
    match &plan.kind {
        StatementKind::Copy {
            table: Some(_),
            from_stdin,
            ..
        } => is_per_row(plan) || (!from_stdin && plan.crypto.touches_classified),
        _ => false,
    }
}

fn refusal(message: String, hint: impl Into<String>) -> PgError {
    super::route::refusal(message, hint)
}

/// Works out where the tenant and the classified columns sit in the rows
/// of the COPY `sql` (whose analysis is `plan`) when it runs in `region`.
pub async fn plan(
    shared: &Shared,
    plan: &StatementPlan,
    sql: &str,
    region: &Arc<str>,
) -> Result<CopyPlan, PgError> {
    let StatementKind::Copy {
        table: Some(display),
        columns: listed,
        from_stdin,
        ..
    } = &plan.kind
    else {
        return Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "expected a COPY of a table",
        ));
    };
    let direction = if *from_stdin {
        Direction::From
    } else {
        Direction::To
    };
    let what = what(direction, display);
    let statement = parse_copy(sql).map_err(|e| PgError::from(e.context(&what)))?;
    if statement.format.direction != direction
        || (direction == Direction::To && !statement.to_stdout)
    {
        // Refused by the crypto plan already; never decrypt elsewhere.
        return Err(PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "{what}: only COPY … TO STDOUT of a table with classified columns is supported"
            ),
        ));
    }
    let table = statement.table.clone().unwrap_or_else(|| display.clone());
    let tenancy = shared.tenancy();
    let tenant_column = tenancy
        .column_of(display)
        .map_or_else(|| tenancy.default_column().to_string(), |c| c.into_owned());
    let needs_catalog = listed.is_empty() || statement.format.kind == FormatKind::Binary;
    let catalog = if needs_catalog {
        Some(table_columns(shared, region, &table, &what).await?)
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
    let tenant_index = columns.iter().position(|c| *c == tenant_column);
    if tenant_index.is_none() && direction == Direction::From {
        return Err(refusal(
            format!("COPY into tenant-scoped table {display} must include its tenant column {tenant_column}"),
            format!("add {tenant_column} to the COPY column list, so RegionGuard can check each row's tenant"),
        ));
    }
    let format = statement
        .format
        .bind_columns(&columns)
        .map_err(|e| PgError::from(e.context(&what)))?;
    let rewritten = if listed.is_empty() {
        Some(with_column_list(sql, &table, &columns).ok_or_else(|| {
            refusal(
                format!("cannot add the column list to the {what}"),
                format!("name the columns: COPY {display} ({tenant_column}, …) …"),
            )
        })?)
    } else {
        None
    };
    let classified = classified_fields(shared, region, display, &columns).await?;
    Ok(CopyPlan {
        table: display.clone(),
        columns,
        types,
        tenant_index,
        tenant_column,
        format,
        rewritten,
        classified,
    })
}

/// `plan` for running in `region`: the classified columns' storage read
/// from that region's catalog (a statement prepared in one region may be
/// executed in another, whose columns may store ciphertext differently).
pub async fn for_region(
    shared: &Shared,
    plan: Arc<CopyPlan>,
    region: &Arc<str>,
) -> Result<Arc<CopyPlan>, PgError> {
    if plan.classified.is_empty() {
        return Ok(plan);
    }
    let classified = classified_fields(shared, region, &plan.table, &plan.columns).await?;
    let same = classified.len() == plan.classified.len()
        && classified
            .iter()
            .zip(&plan.classified)
            .all(|(a, b)| a.index == b.index && a.storage == b.storage);
    if same {
        return Ok(plan);
    }
    Ok(Arc::new(CopyPlan {
        classified,
        ..(*plan).clone()
    }))
}

/// The classified columns among a COPY's `columns`, with their storage in
/// `region` (the region's catalog is read first if it does not know the
/// table yet; a wrong storage type refuses the COPY).
async fn classified_fields(
    shared: &Shared,
    region: &Arc<str>,
    table: &str,
    columns: &[String],
) -> Result<Vec<ClassifiedField>, PgError> {
    let tenancy = shared.tenancy();
    let Some(classes) = tenancy.classification().table(table) else {
        return Ok(Vec::new());
    };
    let found: Vec<(usize, Arc<ColumnClass>)> = columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| classes.get(c).map(|class| (i, Arc::clone(class))))
        .collect();
    if found.is_empty() {
        return Ok(Vec::new());
    }
    // The catalog is refreshed when it lacks a target's table.
    let probe = CryptoPlan {
        touches_classified: true,
        targets: found
            .iter()
            .map(|(_, class)| CryptoTarget {
                value: ValueSource::Param(0),
                column: Arc::clone(class),
                row_tenant: None,
                purpose: Purpose::Store,
            })
            .collect(),
        comparisons: Vec::new(),
        refusal: None,
    };
    let catalog = shared.ensure_catalog(region, &[&probe]).await?;
    Ok(found
        .into_iter()
        .map(|(index, class)| ClassifiedField {
            index,
            storage: catalog.storage(&class),
            class,
        })
        .collect())
}

/// A tenant's data key and the associated data of each classified field
/// of a COPY, for that tenant.
pub(crate) struct FieldKeys {
    pub keys: Arc<TenantKeys>,
    /// In the order of [`CopyPlan::classified`].
    pub aads: Vec<Aad>,
}

impl FieldKeys {
    pub(crate) fn new(plan: &CopyPlan, region: &str, tenant: &str, keys: Arc<TenantKeys>) -> Self {
        FieldKeys {
            keys,
            aads: plan
                .classified
                .iter()
                .map(|f| encrypt::aad(region, tenant, &f.class))
                .collect(),
        }
    }
}

/// One running `COPY … FROM STDIN`: CopyData payloads in, checked (and
/// encrypted) rows out.
pub struct CopyIn {
    plan: Arc<CopyPlan>,
    region: Arc<str>,
    filter: CopyInFilter,
    /// Tenants already found to live in `region`.
    allowed: HashSet<String>,
    /// Write keys of the tenants whose rows were encrypted so far.
    sealing: HashMap<String, FieldKeys>,
    /// The session's text I/O settings when the COPY started (for reading
    /// classified fields in text and CSV format).
    session: SessionFormat,
}

impl CopyIn {
    /// A COPY of `plan` running in `region`; `session` are the session's
    /// text I/O settings.
    pub fn new(plan: Arc<CopyPlan>, region: Arc<str>, session: SessionFormat) -> Self {
        let filter = CopyInFilter::new(plan.format.clone(), Some(plan.columns.len()), MAX_ROW);
        CopyIn {
            plan,
            region,
            filter,
            allowed: HashSet::new(),
            sealing: HashMap::new(),
            session,
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
        Ok(copy_data_messages(self.filter.take_output()))
    }

    fn codec_error(&self, e: CopyError) -> PgError {
        e.context(self.plan.what()).into()
    }

    /// Everything the proxy does to one row before it goes to the region:
    /// the residency check, then the encryption of its classified fields
    /// with the row's tenant's key. `row.fields[i]` holds the text
    /// (text/CSV) or binary (binary format) representation of column
    /// `self.plan.columns[i]`.
    pub async fn process_row(&mut self, shared: &Shared, row: &mut CopyRow) -> Result<(), PgError> {
        let tenant = row_tenant(&self.plan, row)?;
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
            self.allowed.insert(tenant.clone());
        }
        if !self.plan.classified.is_empty() {
            self.encrypt(shared, &tenant, row).await?;
        }
        Ok(())
    }

    /// Replaces the row's non-NULL classified fields with their ciphertext
    /// in the column's storage form.
    async fn encrypt(
        &mut self,
        shared: &Shared,
        tenant: &str,
        row: &mut CopyRow,
    ) -> Result<(), PgError> {
        let plan = &self.plan;
        let number = row.number;
        let at = |e: PgError| PgError {
            message: format!("{}, data row {number}: {}", plan.what(), e.message),
            ..e
        };
        if !self.sealing.contains_key(tenant) {
            let Some(keyring) = shared.keyring.as_ref() else {
                return Err(PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    "classified columns are configured but no region key is loaded",
                ));
            };
            let keys = keyring
                .for_write(&self.region, tenant)
                .await
                .map_err(|e| at(crypto_error(&e)))?;
            let field_keys = FieldKeys::new(plan, &self.region, tenant, keys);
            self.sealing.insert(tenant.to_string(), field_keys);
        }
        let Some(keys) = self.sealing.get(tenant) else {
            return Ok(());
        };
        let metrics = shared.metrics.crypto();
        let sealed = seal_row(plan, keys, &self.session, row).map_err(|e| {
            metrics.record_encrypt(&self.region, false);
            at(e)
        })?;
        metrics.record_n(&self.region, Op::Encrypt, true, sealed);
        Ok(())
    }
}

/// Replaces the row's non-NULL classified fields with their ciphertext;
/// returns how many were sealed.
fn seal_row(
    plan: &CopyPlan,
    keys: &FieldKeys,
    session: &SessionFormat,
    row: &mut CopyRow,
) -> Result<u64, PgError> {
    let mut sealed = 0;
    let binary = plan.format.kind == FormatKind::Binary;
    for (field, aad) in plan.classified.iter().zip(&keys.aads) {
        let Some(slot) = row.fields.get_mut(field.index) else {
            continue;
        };
        // NULL stays NULL.
        let Some(value) = slot.as_deref() else {
            continue;
        };
        let class = &field.class;
        let converted;
        let canonical = if binary {
            class
                .logical
                .check_binary(value)
                .map_err(|e| type_error(class, e))?;
            value
        } else {
            converted = class
                .logical
                .text_to_binary(value, session)
                .map_err(|e| type_error(class, e))?;
            converted.as_slice()
        };
        let envelope = keys
            .keys
            .seal(class.protection, aad, canonical)
            .map_err(|e| crypto_error(&e))?;
        *slot = Some(stored_form(envelope, field.storage, binary));
        sealed += 1;
    }
    Ok(sealed)
}

/// CopyData messages carrying `bytes`, at most [`OUT_CHUNK`] each.
pub(crate) fn copy_data_messages(bytes: Option<Bytes>) -> BytesMut {
    let mut out = BytesMut::new();
    if let Some(bytes) = bytes {
        for chunk in bytes.chunks(OUT_CHUNK) {
            out.extend_from_slice(b"d");
            out.extend_from_slice(&((chunk.len() + 4) as i32).to_be_bytes());
            out.extend_from_slice(chunk);
        }
    }
    out
}

/// A sealed envelope as a COPY field of a column with `storage`: bytea's
/// binary form is the envelope itself and its text form `\x` and hex
/// (the COPY encoder escapes the backslash); text storage holds the
/// base64 text form in both formats.
pub(crate) fn stored_form(envelope: Vec<u8>, storage: Storage, binary: bool) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match (storage, binary) {
        (Storage::Bytea, true) => envelope,
        (Storage::Bytea, false) => {
            let mut out = Vec::with_capacity(2 + envelope.len() * 2);
            out.extend_from_slice(b"\\x");
            for b in &envelope {
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            out
        }
        (Storage::Text, _) => crate::crypto::envelope::to_text(&envelope).into_bytes(),
    }
}

/// The tenant id in `row`, as the directory knows it: read from the
/// tenant column in the row's format (42501 when it is NULL or unreadable).
pub(crate) fn row_tenant(plan: &CopyPlan, row: &CopyRow) -> Result<String, PgError> {
    let unreadable = |why: &str| {
        refusal(
            format!(
                "{}, data row {}: cannot read the tenant column {}: {why}",
                plan.what(),
                row.number,
                plan.tenant_column
            ),
            "tenant ids must be text, varchar, int2/4/8 or uuid",
        )
    };
    let Some(Some(value)) = plan.tenant_index.and_then(|i| row.fields.get(i)) else {
        return Err(refusal(
            format!(
                "{}, data row {}: the tenant column {} is NULL",
                plan.what(),
                row.number,
                plan.tenant_column
            ),
            format!("give every row a tenant id in {}", plan.tenant_column),
        ));
    };
    if plan.format.kind == FormatKind::Binary {
        return tenant_value::from_binary(value, plan.tenant_type().unwrap_or(0))
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

/// `(name, type oid)` of the columns a COPY without a column list uses, in
/// order: not dropped, not generated. Read in `region` over a connection of
/// the proxy's own.
async fn table_columns(
    shared: &Shared,
    region: &Arc<str>,
    table: &str,
    what: &str,
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
                format!("{what}: the table does not exist in region {region}"),
            )
            .with_hint("create the table in that region first (a table created in the open transaction cannot be looked up: name the COPY's columns instead)")),
            Some(code) => Err(PgError::error(
                sqlstate::INTERNAL_ERROR,
                format!("{what}: reading the table's columns in region {region} failed (SQLSTATE {code})"),
            )
            .with_hint("name the columns in the COPY statement")),
            None if columns.is_empty() => Err(refusal(
                format!("{what}: the table has no columns in region {region}"),
                "check the table's definition",
            )),
            None => Ok(columns),
        }
    };
    match tokio::time::timeout(limit, lookup).await {
        Ok(r) => r,
        Err(_) => Err(PgError::error(
            sqlstate::CONNECTION_FAILURE,
            format!("{what}: reading the table's columns in region {region} timed out"),
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
    fn ciphertext_fields_in_each_storage_form() {
        let env = vec![0x01, 0xab, 0x5c];
        assert_eq!(stored_form(env.clone(), Storage::Bytea, true), env);
        // The unescaped field; the text encoder doubles the backslash.
        assert_eq!(
            stored_form(env.clone(), Storage::Bytea, false),
            b"\\x01ab5c"
        );
        let mut out = BytesMut::new();
        CopyFormat::text()
            .encode_row(
                &[Some(stored_form(env.clone(), Storage::Bytea, false))],
                &mut out,
            )
            .unwrap();
        assert_eq!(&out[..], b"\\\\x01ab5c\n");
        let text = stored_form(env.clone(), Storage::Text, false);
        assert!(text.starts_with(b"rg1:"));
        assert_eq!(stored_form(env, Storage::Text, true), text);
    }
}
