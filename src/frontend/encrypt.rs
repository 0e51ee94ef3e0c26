//! The write side of column encryption: literals in statement texts and
//! Bind parameters headed for classified columns are replaced by their
//! ciphertext before anything reaches the database (DESIGN.md promise 3).
//!
//! Each value is encrypted with the key of the tenant whose row it lands
//! in (or whose rows it is compared with) and bound to region, tenant and
//! column. Values are first turned into their canonical form (the logical
//! type's binary encoding), so text and binary inputs of one value
//! encrypt alike. A value that cannot be encrypted refuses the statement.

use super::route::{self, Params};
use crate::catalog::{RegionCatalog, Storage};
use crate::crypto::{Aad, CryptoError, TenantKeys};
use crate::metrics::crypto::{CryptoMetrics, Op};
use crate::protocol::error::{sqlstate, PgError};
use crate::server::state::Shared;
use crate::sql::{ColumnClass, CryptoPlan, CryptoTarget, StatementPlan, TenantSource, ValueSource};
use crate::types::{LogicalType, SessionFormat};
use std::collections::HashMap;
use std::sync::Arc;

/// The keys a statement's values and answers use: every tenant it names,
/// in the region it runs in.
#[derive(Clone)]
pub struct StatementKeys {
    pub region: Arc<str>,
    pub tenants: Vec<(String, Arc<TenantKeys>)>,
}

impl StatementKeys {
    pub fn get(&self, tenant: &str) -> Option<&Arc<TenantKeys>> {
        self.tenants
            .iter()
            .find(|(t, _)| t == tenant)
            .map(|(_, k)| k)
    }

    /// The statement's one tenant, when it has exactly one.
    pub fn single(&self) -> Option<(&str, &Arc<TenantKeys>)> {
        match self.tenants.as_slice() {
            [(t, k)] => Some((t.as_str(), k)),
            _ => None,
        }
    }
}

/// The associated data binding a value of `class` for `tenant` in `region`.
pub fn aad(region: &str, tenant: &str, class: &ColumnClass) -> Aad {
    match class.binding.strip_prefix("group:") {
        Some(group) => Aad::group(region, tenant, group),
        None => Aad::column(region, tenant, &class.table, &class.column),
    }
}

/// A crypto failure as the client sees it.
pub fn crypto_error(e: &CryptoError) -> PgError {
    let err = PgError::error(e.sqlstate(), e.to_string());
    match e.hint() {
        Some(h) => err.with_hint(h),
        None => err,
    }
}

/// Refusal of a statement the crypto plan cannot serve.
pub fn refusal(plan: &CryptoPlan) -> Option<PgError> {
    let r = plan.refusal.as_ref()?;
    Some(
        PgError::error(sqlstate::FEATURE_NOT_SUPPORTED, r.reason.clone()).with_hint(r.hint.clone()),
    )
}

/// Loads the keys `plan` needs in `region`: write keys (created on a
/// tenant's first write) when it encrypts values, read keys otherwise.
/// `tenants` are the statement's resolved tenants; per-row tenants of
/// INSERT … VALUES are added.
pub async fn load_keys(
    shared: &Shared,
    region: &Arc<str>,
    plan: &StatementPlan,
    tenants: &[String],
    params: Option<&Params<'_>>,
) -> Result<Option<Arc<StatementKeys>>, PgError> {
    let crypto = &plan.crypto;
    if !crypto.touches_classified {
        return Ok(None);
    }
    let Some(keyring) = shared.keyring.as_ref() else {
        return Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "classified columns are configured but no region key is loaded",
        ));
    };
    let mut names: Vec<String> = tenants.to_vec();
    for t in &crypto.targets {
        if let Some(src) = &t.row_tenant {
            let tenant = row_tenant(src, params)?;
            if !names.contains(&tenant) {
                names.push(tenant);
            }
        }
    }
    let write = !crypto.targets.is_empty();
    let mut keys = Vec::with_capacity(names.len());
    for tenant in names {
        let k = if write {
            keyring.for_write(region, &tenant).await
        } else {
            keyring.for_read(region, &tenant).await
        }
        .map_err(|e| crypto_error(&e))?;
        keys.push((tenant, k));
    }
    Ok(Some(Arc::new(StatementKeys {
        region: region.clone(),
        tenants: keys,
    })))
}

fn row_tenant(src: &TenantSource, params: Option<&Params<'_>>) -> Result<String, PgError> {
    match src {
        TenantSource::Literal(t) => Ok(t.clone()),
        TenantSource::Param(n) => match params {
            Some(p) => {
                let ty = p.types.get(n.saturating_sub(1)).copied().unwrap_or(0);
                super::tenant_value::from_param(p.bind, *n, ty)
            }
            None => Err(route::refusal(
                format!(
                    "the row's tenant comes from parameter ${n}, which a simple query cannot bind"
                ),
                "use the extended protocol or a literal tenant id",
            )),
        },
    }
}

/// The keys a target is encrypted with: its row's tenant, else the
/// statement's only tenant.
fn target_keys<'k>(
    keys: &'k StatementKeys,
    target: &CryptoTarget,
    params: Option<&Params<'_>>,
) -> Result<(String, &'k Arc<TenantKeys>), PgError> {
    if let Some(src) = &target.row_tenant {
        let tenant = row_tenant(src, params)?;
        return match keys.get(&tenant) {
            Some(k) => Ok((tenant, k)),
            None => Err(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "row tenant keys missing",
            )),
        };
    }
    match keys.single() {
        Some((t, k)) => Ok((t.to_string(), k)),
        None => Err(route::refusal(
            format!(
                "cannot tell which tenant's key encrypts the value for {}: the statement names several tenants",
                target.column.qualified()
            ),
            "send one statement per tenant",
        )),
    }
}

/// Encrypts one canonical value for `class` and renders it in `storage`'s form.
fn seal(
    keys: &TenantKeys,
    region: &str,
    tenant: &str,
    class: &ColumnClass,
    canonical: &[u8],
) -> Result<Vec<u8>, PgError> {
    keys.seal(class.protection, &aad(region, tenant, class), canonical)
        .map_err(|e| crypto_error(&e))
}

fn type_error(class: &ColumnClass, e: crate::types::TypeError) -> PgError {
    PgError::error(
        e.sqlstate(),
        format!(
            "invalid value for encrypted column {}: {}",
            class.qualified(),
            e.message()
        ),
    )
    .with_hint(format!(
        "the column's logical type is {}",
        class.logical.name()
    ))
}

/// What sealing a statement's values needs besides the keys.
pub struct Sealer<'a> {
    /// Where the statement runs: how each classified column stores ciphertext.
    pub catalog: &'a RegionCatalog,
    /// The session's text I/O settings, for parsing text values.
    pub format: &'a SessionFormat,
    pub metrics: &'a CryptoMetrics,
}

/// Encrypted Bind parameters by index: the value (None for NULL) and its format.
type Replaced = HashMap<usize, (Option<Vec<u8>>, i16)>;

/// The statement text with every literal target replaced by its ciphertext
/// literal (`E'\\x…'` for bytea storage, `'rg1:…'` for text storage).
pub fn rewrite_text(
    sql: &str,
    plans: &[&CryptoPlan],
    keys: &[Option<Arc<StatementKeys>>],
    sealer: &Sealer<'_>,
) -> Result<String, PgError> {
    let (catalog, format, metrics) = (sealer.catalog, sealer.format, sealer.metrics);
    let region = keys.iter().flatten().next().map(|k| k.region.clone());
    let result = literal_edits(plans, keys, catalog, format);
    if let Some(region) = region {
        match &result {
            Ok(edits) => metrics.record_n(&region, Op::Encrypt, true, edits.len() as u64),
            Err(_) => metrics.record_encrypt(&region, false),
        }
    }
    apply_edits(sql, result?)
}

/// The ciphertext literals replacing the text's literal targets.
fn literal_edits(
    plans: &[&CryptoPlan],
    keys: &[Option<Arc<StatementKeys>>],
    catalog: &RegionCatalog,
    format: &SessionFormat,
) -> Result<Vec<(usize, usize, String)>, PgError> {
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for (plan, keys) in plans.iter().zip(keys) {
        for target in &plan.targets {
            let ValueSource::Literal { start, end, text } = &target.value else {
                continue;
            };
            let Some(keys) = keys else {
                return Err(PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    "statement keys missing",
                ));
            };
            let (tenant, tenant_keys) = target_keys(keys, target, None)?;
            let class = &target.column;
            let canonical = class
                .logical
                .text_to_binary(text.as_bytes(), format)
                .map_err(|e| type_error(class, e))?;
            let sealed = seal(tenant_keys, &keys.region, &tenant, class, &canonical)?;
            edits.push((*start, *end, literal(&sealed, catalog.storage(class))));
        }
    }
    Ok(edits)
}

/// `sql` with the edits (byte ranges → replacements) applied.
fn apply_edits(sql: &str, mut edits: Vec<(usize, usize, String)>) -> Result<String, PgError> {
    if edits.is_empty() {
        return Ok(sql.to_string());
    }
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(sql.len() + edits.len() * 96);
    let mut at = 0;
    for (start, end, replacement) in edits {
        if start < at || end > sql.len() {
            return Err(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "overlapping literal rewrite",
            ));
        }
        out.push_str(&sql[at..start]);
        out.push_str(&replacement);
        at = end;
    }
    out.push_str(&sql[at..]);
    Ok(out)
}

/// A ciphertext as an SQL literal.
fn literal(envelope: &[u8], storage: Storage) -> String {
    match storage {
        Storage::Bytea => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut s = String::with_capacity(envelope.len() * 2 + 7);
            s.push_str("E'\\\\x");
            for b in envelope {
                s.push(HEX[usize::from(b >> 4)] as char);
                s.push(HEX[usize::from(b & 15)] as char);
            }
            s.push('\'');
            s
        }
        Storage::Text => format!("'{}'", crate::crypto::envelope::to_text(envelope)),
    }
}

/// Parameter types a Parse declares, with the classified parameters'
/// types cleared so the server infers their storage type from the column.
pub fn parse_types(declared: &[u32], plan: &CryptoPlan) -> Option<Vec<u32>> {
    let mut types = declared.to_vec();
    let mut changed = false;
    for t in &plan.targets {
        if let ValueSource::Param(n) = t.value {
            if let Some(slot) = types.get_mut(n - 1) {
                if *slot != 0 {
                    *slot = 0;
                    changed = true;
                }
            }
        }
    }
    changed.then_some(types)
}

/// The types ParameterDescription shows for a statement's classified
/// parameters (by 1-based number): the type the client declared, as
/// Postgres would show it, else the column's logical type — never the
/// storage type the server inferred.
pub fn param_overrides(plan: &CryptoPlan, declared: &[u32]) -> Vec<(usize, u32)> {
    plan.targets
        .iter()
        .filter_map(|t| match t.value {
            ValueSource::Param(n) => {
                let declared = declared.get(n - 1).copied().unwrap_or(0);
                Some((
                    n,
                    if declared != 0 {
                        declared
                    } else {
                        t.column.logical.oid()
                    },
                ))
            }
            ValueSource::Literal { .. } => None,
        })
        .collect()
}

/// Type OIDs a client may declare for a classified parameter of logical
/// type `logical` and still send the same binary encoding.
fn binary_compatible(declared: u32, logical: &LogicalType) -> bool {
    const TEXTUAL: [u32; 4] = [25, 1043, 1042, 705];
    declared == 0
        || declared == logical.oid()
        || (TEXTUAL.contains(&declared)
            && matches!(
                logical,
                LogicalType::Text | LogicalType::Varchar | LogicalType::Bpchar
            ))
}

/// A Bind message with every classified parameter encrypted: the values
/// are replaced, and their formats set to binary (bytea storage) or text
/// (text storage). `declared` are the types the client prepared with.
pub fn rewrite_bind(
    body: &[u8],
    plan: &CryptoPlan,
    keys: &StatementKeys,
    params: &Params<'_>,
    declared: &[u32],
    sealer: &Sealer<'_>,
) -> Result<Vec<u8>, PgError> {
    let metrics = sealer.metrics;
    match encrypt_params(plan, keys, params, declared, sealer.catalog, sealer.format) {
        Ok(replaced) => {
            let sealed = replaced.values().filter(|(v, _)| v.is_some()).count();
            metrics.record_n(&keys.region, Op::Encrypt, true, sealed as u64);
            encode_bind(body, params.bind, &replaced)
        }
        Err(e) => {
            metrics.record_encrypt(&keys.region, false);
            Err(e)
        }
    }
}

/// The encrypted values of a Bind's classified parameters, with their formats.
fn encrypt_params(
    plan: &CryptoPlan,
    keys: &StatementKeys,
    params: &Params<'_>,
    declared: &[u32],
    catalog: &RegionCatalog,
    format: &SessionFormat,
) -> Result<Replaced, PgError> {
    let bind = params.bind;
    let mut replaced: HashMap<usize, (Option<Vec<u8>>, i16)> = HashMap::new();
    for target in &plan.targets {
        let ValueSource::Param(n) = target.value else {
            continue;
        };
        let idx = n - 1;
        if replaced.contains_key(&idx) {
            continue;
        }
        let class = &target.column;
        let Some(value) = bind.params.get(idx) else {
            return Err(PgError::error(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "bind message supplies {} parameters, but the statement uses ${n}",
                    bind.params.len()
                ),
            ));
        };
        let storage = catalog.storage(class);
        let format_code = match storage {
            Storage::Bytea => 1,
            Storage::Text => 0,
        };
        let Some(value) = value else {
            replaced.insert(idx, (None, format_code));
            continue;
        };
        let canonical = if bind.is_binary(idx) {
            let declared = declared.get(idx).copied().unwrap_or(0);
            if !binary_compatible(declared, &class.logical) {
                return Err(PgError::error(
                    "42804",
                    format!(
                        "parameter ${n} for encrypted column {} is declared with type OID {declared} and sent in binary format",
                        class.qualified()
                    ),
                )
                .with_hint(format!(
                    "declare it as {} (or leave its type unspecified), or send it in text format",
                    class.logical.name()
                )));
            }
            // One canonical form per value (bool, numeric, jsonb and arrays
            // have several binary spellings), so deterministic mode holds.
            class
                .logical
                .canonical_binary(value)
                .map_err(|e| type_error(class, e))?
        } else {
            class
                .logical
                .text_to_binary(value, format)
                .map_err(|e| type_error(class, e))?
        };
        let (tenant, tenant_keys) = target_keys(keys, target, Some(params))?;
        let sealed = seal(tenant_keys, &keys.region, &tenant, class, &canonical)?;
        let stored = match storage {
            Storage::Bytea => sealed,
            Storage::Text => crate::crypto::envelope::to_text(&sealed).into_bytes(),
        };
        replaced.insert(idx, (Some(stored), format_code));
    }
    Ok(replaced)
}

/// Re-encodes a Bind with some parameters replaced; the result-format
/// section is copied as it came.
fn encode_bind(
    body: &[u8],
    bind: &crate::protocol::frontend_msg::Bind<'_>,
    replaced: &Replaced,
) -> Result<Vec<u8>, PgError> {
    let malformed = || PgError::error(sqlstate::PROTOCOL_VIOLATION, "malformed Bind message");
    // The result formats are the last 2 + 2n bytes: find them by walking
    // the parameter section again.
    let mut pos = bind.portal.len() + 1 + bind.statement.len() + 1;
    pos += 2 + 2 * bind.param_formats.len() + 2;
    for p in &bind.params {
        pos += 4 + p.map_or(0, <[u8]>::len);
    }
    let results = body.get(pos..).ok_or_else(malformed)?;
    let mut out = Vec::with_capacity(body.len() + replaced.len() * 64 + 5);
    out.push(b'B');
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(bind.portal.as_bytes());
    out.push(0);
    out.extend_from_slice(bind.statement.as_bytes());
    out.push(0);
    let n = bind.params.len();
    out.extend_from_slice(&(n as i16).to_be_bytes());
    for i in 0..n {
        let f = match replaced.get(&i) {
            Some((_, f)) => *f,
            None => i16::from(bind.is_binary(i)),
        };
        out.extend_from_slice(&f.to_be_bytes());
    }
    out.extend_from_slice(&(n as i16).to_be_bytes());
    for (i, p) in bind.params.iter().enumerate() {
        let value = match replaced.get(&i) {
            Some((v, _)) => v.as_deref(),
            None => *p,
        };
        match value {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                let len = i32::try_from(v.len()).map_err(|_| malformed())?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out.extend_from_slice(results);
    let len = i32::try_from(out.len() - 1).map_err(|_| malformed())?;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}
