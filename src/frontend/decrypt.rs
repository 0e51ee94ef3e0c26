//! The read side of column encryption: RowDescription fields that come
//! from a classified column (by table OID and column number, see
//! [`crate::catalog`]) are shown with the column's logical type, and their
//! values in DataRows are decrypted and re-encoded in the format the client
//! asked for. ParameterDescription shows classified parameters' logical
//! types. A value that does not decrypt is an error (XX001), never garbage
//! and never a silent NULL.

use super::encrypt::{aad, crypto_error, StatementKeys};
use crate::catalog::{RegionCatalog, Storage};
use crate::protocol::error::PgError;
use crate::sql::ColumnClass;
use crate::types::SessionFormat;
use std::sync::Arc;

/// SQLSTATE of a value that cannot be decrypted: data corrupted.
const DATA_CORRUPTED: &str = "XX001";

/// A classified field of the current result.
#[derive(Debug, Clone)]
struct FieldPlan {
    class: Arc<ColumnClass>,
    storage: Storage,
    binary: bool,
    /// Index of the same table's tenant column in the row, if selected.
    tenant_field: Option<usize>,
}

/// How to decrypt the rows of the current result.
pub struct RowPlan {
    fields: Vec<Option<FieldPlan>>,
    /// Format and type of every field (for reading a tenant column).
    columns: Vec<(u32, bool)>,
    keys: Option<Arc<StatementKeys>>,
}

fn read_i16(b: &[u8], pos: &mut usize) -> Option<i16> {
    let v = b.get(*pos..*pos + 2)?;
    *pos += 2;
    Some(i16::from_be_bytes([v[0], v[1]]))
}

fn read_i32(b: &[u8], pos: &mut usize) -> Option<i32> {
    let v = b.get(*pos..*pos + 4)?;
    *pos += 4;
    Some(i32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

/// Rewrites a RowDescription whose fields include classified columns: the
/// new message, and the plan for the rows that follow. `Ok(None)` when no
/// field is classified (forward the message as it came).
///
/// A field that is a view column computed from a classified column (say
/// `upper(email)`) was computed over ciphertext: it can never be
/// decrypted, and showing it would hand the client bytes that look like a
/// result. The result is refused (0A000) naming the view column instead.
pub fn row_description(
    body: &[u8],
    catalog: &RegionCatalog,
    keys: Option<Arc<StatementKeys>>,
) -> Result<Option<(Vec<u8>, RowPlan)>, PgError> {
    let Some(raw) = raw_fields(body) else {
        return Ok(None);
    };
    if let Some(why) = raw.iter().find_map(|f| catalog.computed(f.table, f.attnum)) {
        return Err(PgError::error(
            crate::protocol::error::sqlstate::FEATURE_NOT_SUPPORTED,
            format!("cannot return {why}: it was computed over ciphertext"),
        )
        .with_hint("select the encrypted column itself and compute in the application, or redefine the view without the expression"));
    }
    Ok(rewrite(body.len(), &raw, catalog, keys))
}

/// One field of a RowDescription.
struct Raw<'a> {
    name: &'a [u8],
    table: u32,
    attnum: i16,
    type_oid: u32,
    typlen: i16,
    typmod: i32,
    format: i16,
}

/// The fields of a RowDescription body (`None`: malformed, forwarded as it
/// came for the client to judge).
fn raw_fields(body: &[u8]) -> Option<Vec<Raw<'_>>> {
    let mut pos = 0;
    let n = usize::try_from(read_i16(body, &mut pos)?).ok()?;
    let mut raw = Vec::with_capacity(n);
    for _ in 0..n {
        let name = crate::protocol::framing::read_cstr(body, &mut pos)?;
        raw.push(Raw {
            name,
            table: read_i32(body, &mut pos)? as u32,
            attnum: read_i16(body, &mut pos)?,
            type_oid: read_i32(body, &mut pos)? as u32,
            typlen: read_i16(body, &mut pos)?,
            typmod: read_i32(body, &mut pos)?,
            format: read_i16(body, &mut pos)?,
        });
    }
    if pos != body.len() {
        return None;
    }
    Some(raw)
}

/// The RowDescription with classified fields shown as their logical types,
/// and the row plan; `None` when no field is classified.
fn rewrite(
    body_len: usize,
    raw: &[Raw<'_>],
    catalog: &RegionCatalog,
    keys: Option<Arc<StatementKeys>>,
) -> Option<(Vec<u8>, RowPlan)> {
    let n = raw.len();
    if !raw
        .iter()
        .any(|f| catalog.field(f.table, f.attnum).is_some())
    {
        return None;
    }
    let mut fields = Vec::with_capacity(n);
    let mut out = Vec::with_capacity(body_len + 5);
    out.push(b'T');
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(n as i16).to_be_bytes());
    for f in raw {
        let classified = catalog.field(f.table, f.attnum);
        let (type_oid, typlen, typmod) = match classified {
            Some(c) => (c.class.logical.oid(), c.class.logical.typlen(), -1),
            None => (f.type_oid, f.typlen, f.typmod),
        };
        out.extend_from_slice(f.name);
        out.push(0);
        out.extend_from_slice(&f.table.to_be_bytes());
        out.extend_from_slice(&f.attnum.to_be_bytes());
        out.extend_from_slice(&type_oid.to_be_bytes());
        out.extend_from_slice(&typlen.to_be_bytes());
        out.extend_from_slice(&typmod.to_be_bytes());
        out.extend_from_slice(&f.format.to_be_bytes());
        fields.push(classified.map(|c| FieldPlan {
            class: Arc::clone(&c.class),
            storage: c.storage,
            binary: f.format == 1,
            tenant_field: c.tenant.and_then(|att| {
                raw.iter()
                    .position(|g| g.table == f.table && g.attnum == att)
            }),
        }));
    }
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    let columns = raw.iter().map(|f| (f.type_oid, f.format == 1)).collect();
    Some((
        out,
        RowPlan {
            fields,
            columns,
            keys,
        },
    ))
}

impl RowPlan {
    /// Decrypts the classified fields of one DataRow body into a new
    /// message; also returns how many values were decrypted.
    pub fn data_row(&self, body: &[u8], format: &SessionFormat) -> Result<(Vec<u8>, u64), PgError> {
        let malformed = || PgError::error(DATA_CORRUPTED, "malformed DataRow from the database");
        let mut pos = 0;
        let n = usize::try_from(read_i16(body, &mut pos).ok_or_else(malformed)?)
            .map_err(|_| malformed())?;
        let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(n);
        for _ in 0..n {
            let len = read_i32(body, &mut pos).ok_or_else(malformed)?;
            if len < 0 {
                values.push(None);
                continue;
            }
            let len = len as usize;
            values.push(Some(body.get(pos..pos + len).ok_or_else(malformed)?));
            pos += len;
        }
        let mut out = Vec::with_capacity(body.len() + 5);
        out.push(b'D');
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(n as i16).to_be_bytes());
        let mut decrypted = 0;
        for (i, value) in values.iter().enumerate() {
            let plan = self.fields.get(i).and_then(Option::as_ref);
            match (plan, value) {
                (Some(plan), Some(stored)) => {
                    let plain = self.decrypt(plan, stored, &values, format)?;
                    decrypted += 1;
                    out.extend_from_slice(&(plain.len() as i32).to_be_bytes());
                    out.extend_from_slice(&plain);
                }
                (_, None) => out.extend_from_slice(&(-1i32).to_be_bytes()),
                (None, Some(v)) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        let len = (out.len() - 1) as i32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        Ok((out, decrypted))
    }

    fn decrypt(
        &self,
        plan: &FieldPlan,
        stored: &[u8],
        row: &[Option<&[u8]>],
        format: &SessionFormat,
    ) -> Result<Vec<u8>, PgError> {
        let class = &plan.class;
        let Some(keys) = &self.keys else {
            return Err(no_tenant(class));
        };
        let (tenant, tenant_keys) = match keys.single() {
            Some((t, k)) => (t.to_string(), k),
            None => {
                let tenant = plan
                    .tenant_field
                    .and_then(|i| Some((i, row.get(i).copied().flatten()?)))
                    .and_then(|(i, v)| tenant_text(v, self.columns.get(i).copied()));
                let Some(tenant) = tenant else {
                    return Err(no_tenant(class));
                };
                match keys.get(&tenant) {
                    Some(k) => (tenant, k),
                    None => return Err(no_tenant(class)),
                }
            }
        };
        let envelope = stored_envelope(stored, plan.storage, plan.binary).map_err(|reason| {
            PgError::error(
                DATA_CORRUPTED,
                format!(
                    "cannot decrypt a value of column {} in region {}: it is not a RegionGuard ciphertext ({reason})",
                    class.qualified(),
                    keys.region
                ),
            )
        })?;
        let canonical = tenant_keys
            .open(&aad(&keys.region, &tenant, class), &envelope)
            .map_err(|e| crypto_error(&e))?;
        if plan.binary {
            return Ok(canonical.to_vec());
        }
        class
            .logical
            .binary_to_text(&canonical, format)
            .map_err(|e| {
                PgError::error(
                    DATA_CORRUPTED,
                    format!(
                        "decrypted value of column {} does not decode as {}: {}",
                        class.qualified(),
                        class.logical.name(),
                        e.message()
                    ),
                )
            })
    }
}

fn no_tenant(class: &ColumnClass) -> PgError {
    PgError::error(
        DATA_CORRUPTED,
        format!(
            "cannot decrypt column {}: RegionGuard cannot tell which tenant's key the row uses",
            class.qualified()
        ),
    )
    .with_hint("query one tenant at a time (a tenant predicate or SET regionguard.tenant), or select the tenant column too")
}

/// A tenant column's value as text, from the text or binary format.
fn tenant_text(value: &[u8], column: Option<(u32, bool)>) -> Option<String> {
    let (type_oid, binary) = column?;
    if !binary {
        return std::str::from_utf8(value)
            .ok()
            .map(|s| s.trim_end().to_string());
    }
    match type_oid {
        25 | 1043 | 1042 | 19 => std::str::from_utf8(value)
            .ok()
            .map(|s| s.trim_end().to_string()),
        21 => Some(i16::from_be_bytes(value.try_into().ok()?).to_string()),
        23 => Some(i32::from_be_bytes(value.try_into().ok()?).to_string()),
        20 => Some(i64::from_be_bytes(value.try_into().ok()?).to_string()),
        2950 if value.len() == 16 => {
            let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
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

/// The binary envelope from a stored value as the database sent it.
pub(crate) fn stored_envelope(
    stored: &[u8],
    storage: Storage,
    binary: bool,
) -> Result<Vec<u8>, String> {
    match (storage, binary) {
        (Storage::Bytea, true) => Ok(stored.to_vec()),
        (Storage::Bytea, false) => bytea_text(stored),
        (Storage::Text, _) => crate::crypto::envelope::from_text(stored).map_err(|e| e.to_string()),
    }
}

/// Decodes bytea's text output (hex `\x…`, or the escape format).
fn bytea_text(text: &[u8]) -> Result<Vec<u8>, String> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err("odd hex length".into());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        return hex
            .chunks(2)
            .map(|pair| match (nibble(pair[0]), nibble(pair[1])) {
                (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
                _ => Err("bad hex digit".to_string()),
            })
            .collect();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            out.push(text[i]);
            i += 1;
        } else if text.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = text.get(i + 1..i + 4).ok_or("bad escape")?;
            let s = std::str::from_utf8(octal).map_err(|_| "bad escape")?;
            out.push(u8::from_str_radix(s, 8).map_err(|_| "bad escape")?);
            i += 4;
        }
    }
    Ok(out)
}

/// A ParameterDescription with classified parameters shown as their
/// logical types (`overrides`: 1-based parameter number → type OID).
pub fn parameter_description(body: &[u8], overrides: &[(usize, u32)]) -> Option<Vec<u8>> {
    let mut pos = 0;
    let n = usize::try_from(read_i16(body, &mut pos)?).ok()?;
    if body.len() != 2 + 4 * n {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b't');
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&body[..2]);
    for i in 0..n {
        let oid = match overrides.iter().find(|(p, _)| *p == i + 1) {
            Some((_, oid)) => *oid,
            None => read_i32(body, &mut pos)? as u32,
        };
        if overrides.iter().any(|(p, _)| *p == i + 1) {
            pos += 4;
        }
        out.extend_from_slice(&oid.to_be_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytea_text_forms_decode() {
        assert_eq!(bytea_text(b"\\x00ff10").unwrap(), vec![0, 255, 16]);
        assert_eq!(bytea_text(b"a\\\\b\\001").unwrap(), b"a\\b\x01".to_vec());
        assert!(bytea_text(b"\\x0").is_err());
        assert!(bytea_text(b"\\9").is_err());
    }

    #[test]
    fn parameter_descriptions_show_logical_types() {
        let mut body = 3i16.to_be_bytes().to_vec();
        for oid in [25u32, 17, 17] {
            body.extend_from_slice(&oid.to_be_bytes());
        }
        let out = parameter_description(&body, &[(2, 23), (3, 1082)]).unwrap();
        assert_eq!(&out[..1], b"t");
        let oids: Vec<u32> = out[7..]
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(oids, vec![25, 23, 1082]);
    }
}
