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
use crate::sql::{
    ColumnClass, Comparison, CryptoPlan, CryptoTarget, Purpose, Shape, StatementPlan, TenantSource,
    ValueSource,
};
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

    /// Each tenant's [`TenantKeys::lookup_versions`], in `tenants` order:
    /// which envelopes a compared literal was sealed into.
    pub fn lookup_versions(&self) -> Vec<Vec<u32>> {
        self.tenants
            .iter()
            .map(|(_, k)| k.lookup_versions())
            .collect()
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

/// The deterministic envelopes of one canonical value under every live key
/// version of the tenant, active first: what a compared value must match.
fn seal_lookup(
    keys: &TenantKeys,
    region: &str,
    tenant: &str,
    class: &ColumnClass,
    canonical: &[u8],
) -> Result<Vec<Vec<u8>>, PgError> {
    keys.seal_for_lookup(&aad(region, tenant, class), canonical)
        .map_err(|e| crypto_error(&e))
}

/// Encrypts one canonical value for `class` under the active key version.
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

/// A value that does not convert to its column's logical type: the type's
/// SQLSTATE, naming the column, never the value.
pub(super) fn type_error(class: &ColumnClass, e: crate::types::TypeError) -> PgError {
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
/// literal (`E'\\x…'` for bytea storage, `'rg1:…'` for text storage) and
/// every comparison with a parameter rewritten to match an array of
/// envelopes ([`rewrite_params`]). A literal compared with a deterministic
/// column while its tenant has several live key versions becomes one
/// literal per version: `col = 'x'` → `(col IN (e_v2, e_v1))`,
/// `col <> 'x'` → `(col NOT IN (…))`, `col IN ('x', 'y')` →
/// `col IN (x_v2, x_v1, y_v2, y_v1)`. With one live version the text is
/// what it always was: one literal in place of the other.
pub fn rewrite_text(
    sql: &str,
    plans: &[&CryptoPlan],
    keys: &[Option<Arc<StatementKeys>>],
    sealer: &Sealer<'_>,
) -> Result<String, PgError> {
    let (catalog, format, metrics) = (sealer.catalog, sealer.format, sealer.metrics);
    let region = keys.iter().flatten().next().map(|k| k.region.clone());
    let mut edits = Vec::new();
    let mut sealed = 0;
    let result: Result<(), PgError> = plans.iter().zip(keys).try_for_each(|(plan, keys)| {
        let literals = keys.as_deref().map(|keys| Literals {
            keys,
            catalog,
            format,
        });
        sealed += plan_edits(sql, plan, literals.as_ref(), &mut edits)?;
        Ok(())
    });
    if let Some(region) = region {
        match &result {
            Ok(()) => metrics.record_n(&region, Op::Encrypt, true, sealed),
            Err(_) => metrics.record_encrypt(&region, false),
        }
    }
    result?;
    apply_edits(sql, edits)
}

/// The text of a Parse whose classified comparisons use parameters, with
/// those comparisons rewritten to compare the column with an array the
/// Bind supplies (one envelope per live key version): `col = $1` →
/// `(col = ANY($1))`, `col <> $1` → `(col <> ALL($1))`, `col IN ($1, $2)`
/// → `(col = ANY($1) OR col = ANY($2))`. The server infers the array of
/// the storage type for the parameter. Done whatever the key versions are
/// at Parse time: a prepared statement outlives rotations. `None` when the
/// text needs no change. Literal targets need [`rewrite_text`] instead.
pub fn rewrite_params(sql: &str, plan: &CryptoPlan) -> Result<Option<String>, PgError> {
    let mut edits = Vec::new();
    plan_edits(sql, plan, None, &mut edits)?;
    if edits.is_empty() {
        return Ok(None);
    }
    apply_edits(sql, edits).map(Some)
}

/// What sealing a statement's literals needs.
struct Literals<'a> {
    keys: &'a StatementKeys,
    catalog: &'a RegionCatalog,
    format: &'a SessionFormat,
}

/// One text edit: a byte range and its replacement.
type Edit = (usize, usize, String);

/// The edits of one statement's plan; returns how many envelopes were sealed.
fn plan_edits(
    sql: &str,
    plan: &CryptoPlan,
    literals: Option<&Literals<'_>>,
    edits: &mut Vec<Edit>,
) -> Result<u64, PgError> {
    let mut sealed = 0u64;
    let mut whole = vec![false; plan.comparisons.len()];
    for (index, cmp) in plan.comparisons.iter().enumerate() {
        let has_param = plan
            .compared_in(index)
            .any(|t| matches!(t.value, ValueSource::Param(_)));
        if !has_param {
            continue;
        }
        whole[index] = true;
        let (edit, n) = param_comparison(sql, plan, index, cmp, literals)?;
        edits.push(edit);
        sealed += n;
    }
    for target in &plan.targets {
        let ValueSource::Literal { start, end, .. } = &target.value else {
            continue;
        };
        let comparison = match target.purpose {
            Purpose::Compare { comparison, .. } if whole.get(comparison) == Some(&true) => {
                continue;
            }
            Purpose::Compare {
                comparison,
                operand,
            } => Some((comparison, operand)),
            Purpose::Store => None,
        };
        let (envelopes, storage) = seal_literal(target, literals)?;
        sealed += envelopes.len() as u64;
        match (comparison, envelopes.as_slice()) {
            // A stored value, or a compared one while the tenant has one
            // live key version: the text stays as it always was.
            (_, [one]) => edits.push((*start, *end, literal(one, storage))),
            (Some((index, operand)), [_, _, ..]) => {
                let cmp = &plan.comparisons[index];
                let list = literal_list(&envelopes, storage);
                let spans = cmp.spans.ok_or_else(|| unlocated(&target.column))?;
                match cmp.shape {
                    Shape::Eq | Shape::NotEq => {
                        let column = column_text(sql, spans.column)?;
                        let not = if cmp.shape.negated() { "NOT " } else { "" };
                        edits.push((
                            spans.whole.0,
                            spans.whole.1,
                            format!("({column} {not}IN ({list}))"),
                        ));
                    }
                    Shape::In | Shape::NotIn => {
                        let (s, e) = operand.ok_or_else(|| unlocated(&target.column))?;
                        edits.push((s, e, list));
                    }
                }
            }
            _ => {
                return Err(PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    "unexpected number of envelopes",
                ))
            }
        }
    }
    Ok(sealed)
}

/// The envelopes of a literal target: one under the active key version
/// for a stored value, one per live version (active first) for a compared
/// one. Also how the column stores them.
fn seal_literal(
    target: &CryptoTarget,
    literals: Option<&Literals<'_>>,
) -> Result<(Vec<Vec<u8>>, Storage), PgError> {
    let (ValueSource::Literal { text, .. }, Some(l)) = (&target.value, literals) else {
        return Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "statement keys missing",
        ));
    };
    let (tenant, tenant_keys) = target_keys(l.keys, target, None)?;
    let class = &target.column;
    let canonical = class
        .logical
        .text_to_binary(text.as_bytes(), l.format)
        .map_err(|e| type_error(class, e))?;
    let envelopes = match target.purpose {
        Purpose::Store => vec![seal(
            tenant_keys,
            &l.keys.region,
            &tenant,
            class,
            &canonical,
        )?],
        Purpose::Compare { .. } => {
            seal_lookup(tenant_keys, &l.keys.region, &tenant, class, &canonical)?
        }
    };
    Ok((envelopes, l.catalog.storage(class)))
}

/// The rewrite of a comparison with at least one parameter (and maybe
/// literals and NULL in an IN list), and how many envelopes it sealed.
fn param_comparison(
    sql: &str,
    plan: &CryptoPlan,
    index: usize,
    cmp: &Comparison,
    literals: Option<&Literals<'_>>,
) -> Result<(Edit, u64), PgError> {
    let mut targets = plan.compared_in(index).peekable();
    let Some(first) = targets.peek() else {
        return Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "comparison without values",
        ));
    };
    let spans = cmp.spans.ok_or_else(|| unlocated(&first.column))?;
    let column = column_text(sql, spans.column)?;
    let (any, join, not) = if cmp.shape.negated() {
        ("<> ALL", " AND ", "NOT ")
    } else {
        ("= ANY", " OR ", "")
    };
    let mut arrays = Vec::new();
    let mut items = Vec::new();
    let mut sealed = 0u64;
    for t in targets {
        match &t.value {
            ValueSource::Param(n) => arrays.push(format!("{column} {any}(${n})")),
            ValueSource::Literal { .. } => {
                let (envelopes, storage) = seal_literal(t, literals)?;
                sealed += envelopes.len() as u64;
                items.push(literal_list(&envelopes, storage));
            }
        }
    }
    if cmp.null_item {
        items.push("NULL".to_string());
    }
    let mut parts = Vec::with_capacity(arrays.len() + 1);
    if !items.is_empty() {
        parts.push(format!("{column} {not}IN ({})", items.join(", ")));
    }
    parts.extend(arrays);
    Ok((
        (
            spans.whole.0,
            spans.whole.1,
            format!("({})", parts.join(join)),
        ),
        sealed,
    ))
}

/// The text of a column reference the plan located in `sql`.
fn column_text(sql: &str, (start, end): (usize, usize)) -> Result<&str, PgError> {
    sql.get(start..end).ok_or_else(|| {
        PgError::error(
            sqlstate::INTERNAL_ERROR,
            "column reference outside the statement text",
        )
    })
}

fn unlocated(class: &ColumnClass) -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "a comparison with encrypted column {} could not be located in the statement text to match every key version",
            class.qualified()
        ),
    )
    .with_hint("remove comments inside the parentheses around the column or the compared value")
}

/// Envelopes as a comma-separated list of SQL literals.
fn literal_list(envelopes: &[Vec<u8>], storage: Storage) -> String {
    envelopes
        .iter()
        .map(|e| literal(e, storage))
        .collect::<Vec<_>>()
        .join(", ")
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
        let before = sql.get(at..start).filter(|_| end <= sql.len());
        let Some(before) = before else {
            return Err(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "overlapping literal rewrite",
            ));
        };
        out.push_str(before);
        out.push_str(&replacement);
        at = end;
    }
    let rest = sql.get(at..).ok_or_else(|| {
        PgError::error(sqlstate::INTERNAL_ERROR, "literal rewrite outside the text")
    })?;
    out.push_str(rest);
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

/// Whether the statement compares a literal with a classified column: its
/// sealed text depends on the tenant's live key versions.
pub fn compares_literals(plan: &CryptoPlan) -> bool {
    plan.targets.iter().any(|t| {
        matches!(t.value, ValueSource::Literal { .. })
            && matches!(t.purpose, Purpose::Compare { .. })
    })
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
        let value = match target.purpose {
            Purpose::Store => {
                let sealed = seal(tenant_keys, &keys.region, &tenant, class, &canonical)?;
                match storage {
                    Storage::Bytea => sealed,
                    Storage::Text => crate::crypto::envelope::to_text(&sealed).into_bytes(),
                }
            }
            // The Parse compares the column with `ANY($n)` (rewrite_params):
            // bind the array of the value's envelopes, one per live version.
            Purpose::Compare { .. } => {
                let envelopes = seal_lookup(tenant_keys, &keys.region, &tenant, class, &canonical)?;
                envelope_array(envelopes, storage)
            }
        };
        replaced.insert(idx, (Some(value), format_code));
    }
    Ok(replaced)
}

/// Envelopes as an array parameter of the storage type: binary `bytea[]`
/// (element OID 17), or text-format `text[]` — base64 envelopes need no
/// quoting, and the text form fits whichever text type the server inferred.
fn envelope_array(envelopes: Vec<Vec<u8>>, storage: Storage) -> Vec<u8> {
    match storage {
        Storage::Bytea => crate::types::binary_one_dim(17, envelopes),
        Storage::Text => {
            let mut out = Vec::with_capacity(envelopes.iter().map(|e| e.len() * 4 / 3 + 8).sum());
            out.push(b'{');
            for (i, e) in envelopes.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(crate::crypto::envelope::to_text(e).as_bytes());
            }
            out.push(b'}');
            out
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protection;
    use crate::crypto::store::{KeyState, StoredKey};
    use crate::crypto::{data_key, KekRing};
    use crate::sql::{analyze, Classification, Tenancy};

    fn tenancy() -> Tenancy {
        let mut t = Tenancy::new("tenant_id");
        t.add_scoped("customers", None);
        let mut c = Classification::default();
        c.add(
            "customers",
            "email",
            LogicalType::Text,
            Protection::Deterministic,
            None,
        );
        t.set_classification(c);
        t
    }

    fn plan(sql: &str) -> CryptoPlan {
        let a = analyze(sql, &tenancy());
        let p = a.statements[0].crypto.clone();
        assert!(p.refusal.is_none(), "{sql}: {:?}", p.refusal);
        p
    }

    /// acme's keys in eu, one version per state (version 1 first).
    fn keys(states: &[KeyState]) -> Arc<StatementKeys> {
        use base64::Engine;
        let ring = KekRing::parse(
            "eu",
            &format!(
                "1:{}",
                base64::engine::general_purpose::STANDARD.encode([7u8; 32])
            ),
        )
        .unwrap();
        let rows: Vec<StoredKey> = states
            .iter()
            .enumerate()
            .map(|(i, state)| {
                let version = i as u32 + 1;
                let raw = data_key::generate().unwrap();
                StoredKey {
                    version,
                    wrapped_key: Some(
                        data_key::wrap(ring.active(), "eu", "acme", version, &raw).unwrap(),
                    ),
                    kek_version: 1,
                    created_at: std::time::SystemTime::now(),
                    state: *state,
                }
            })
            .collect();
        let tenant = TenantKeys::from_rows(&ring, "eu", "acme", &rows).unwrap();
        Arc::new(StatementKeys {
            region: Arc::from("eu"),
            tenants: vec![("acme".into(), Arc::new(tenant))],
        })
    }

    /// The rewritten text with every ciphertext literal replaced by `E`.
    fn rewrite(sql: &str, keys: &Arc<StatementKeys>) -> String {
        let p = plan(sql);
        let catalog = RegionCatalog::default();
        let format = SessionFormat::default();
        let metrics = CryptoMetrics::default();
        let out = rewrite_text(
            sql,
            &[&p],
            &[Some(keys.clone())],
            &Sealer {
                catalog: &catalog,
                format: &format,
                metrics: &metrics,
            },
        )
        .unwrap();
        let mut masked = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find("E'\\\\x") {
            masked.push_str(&rest[..at]);
            masked.push('E');
            let end = rest[at + 5..].find('\'').unwrap();
            rest = &rest[at + 5 + end + 1..];
        }
        masked.push_str(rest);
        masked
    }

    const HEAD: &str = "SELECT id FROM customers WHERE tenant_id = 'acme' AND ";

    #[test]
    fn one_live_version_keeps_the_text_as_it_was() {
        let one = keys(&[KeyState::Active]);
        let retired = keys(&[KeyState::Retired, KeyState::Active]);
        for k in [&one, &retired] {
            for (cond, want) in [
                ("email = 'a'", "email = E"),
                ("'a' <> email", "E <> email"),
                ("email IN ('a', ('b'))", "email IN (E, (E))"),
            ] {
                assert_eq!(
                    rewrite(&format!("{HEAD}{cond}"), k),
                    format!("{HEAD}{want}")
                );
            }
        }
    }

    #[test]
    fn several_live_versions_compare_every_envelope() {
        let two = keys(&[KeyState::DecryptOnly, KeyState::Active]);
        for (cond, want) in [
            ("email = 'a'", "(email IN (E, E))"),
            ("'a' = email", "(email IN (E, E))"),
            ("(email) <> ( 'a' )", "((email) NOT IN (E, E))"),
            ("email IN ('a', ('b'))", "email IN (E, E, E, E)"),
            ("email NOT IN ('a', NULL)", "email NOT IN (E, E, NULL)"),
        ] {
            assert_eq!(
                rewrite(&format!("{HEAD}{cond}"), &two),
                format!("{HEAD}{want}"),
                "{cond}"
            );
        }
        // Stored values are sealed once, under the active version.
        let sql = "UPDATE customers SET email = 'n' WHERE tenant_id = 'acme' AND email = 'o'";
        assert_eq!(
            rewrite(sql, &two),
            "UPDATE customers SET email = E WHERE tenant_id = 'acme' AND (email IN (E, E))"
        );
        let three = keys(&[
            KeyState::DecryptOnly,
            KeyState::DecryptOnly,
            KeyState::Active,
        ]);
        assert_eq!(
            rewrite(&format!("{HEAD}email = 'a'"), &three),
            format!("{HEAD}(email IN (E, E, E))")
        );
    }

    #[test]
    fn compared_parameters_become_array_comparisons() {
        for (cond, want) in [
            ("email = $1", "(email = ANY($1))"),
            ("$1 = email", "(email = ANY($1))"),
            ("email <> ($1)", "(email <> ALL($1))"),
            (
                "c.email IN ($1, $2)",
                "(c.email = ANY($1) OR c.email = ANY($2))",
            ),
            (
                "email NOT IN ($1, NULL)",
                "(email NOT IN (NULL) AND email <> ALL($1))",
            ),
        ] {
            let sql = format!("SELECT id FROM customers c WHERE tenant_id = 'acme' AND {cond}");
            let out = rewrite_params(&sql, &plan(&sql)).unwrap();
            assert_eq!(
                out,
                Some(format!(
                    "SELECT id FROM customers c WHERE tenant_id = 'acme' AND {want}"
                )),
                "{cond}"
            );
        }
        let stored = "UPDATE customers SET email = $2 WHERE tenant_id = $1";
        assert_eq!(rewrite_params(stored, &plan(stored)).unwrap(), None);
        // A literal beside a parameter in an IN list is part of the rewrite.
        let one = keys(&[KeyState::Active]);
        assert_eq!(
            rewrite(&format!("{HEAD}email IN ('a', $1)"), &one),
            format!("{HEAD}(email IN (E) OR email = ANY($1))")
        );
    }

    #[test]
    fn compared_parameters_bind_every_envelope() {
        let envelopes = vec![vec![1u8, 2], vec![3u8]];
        let bin = envelope_array(envelopes.clone(), Storage::Bytea);
        assert_eq!(
            bin,
            [
                &[0, 0, 0, 1][..],
                &[0, 0, 0, 0],
                &[0, 0, 0, 17],
                &[0, 0, 0, 2],
                &[0, 0, 0, 1],
                &[0, 0, 0, 2, 1, 2],
                &[0, 0, 0, 1, 3],
            ]
            .concat()
        );
        let text = envelope_array(envelopes, Storage::Text);
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("{rg1:") && text.contains(",rg1:") && text.ends_with('}'));
    }
}
