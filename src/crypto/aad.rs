//! Associated data: what a ciphertext is bound to.
//!
//! The *binding* is a fixed label followed by length-prefixed fields (u32
//! big-endian length, then the UTF-8 bytes), so no two different
//! (region, tenant, table, column) tuples serialise to the same bytes —
//! `("ab", "c")` and `("a", "bc")` differ:
//!
//! ```text
//! lp("regionguard.aad.v1") lp(region) lp(tenant) 'c' lp(table) lp(column)
//! lp("regionguard.aad.v1") lp(region) lp(tenant) 'g' lp(equality group)
//! ```
//!
//! The AEAD associated data of a value is `binding || envelope header`, so
//! the header (format, mode, key version) is authenticated too.
//!
//! A deterministic column with an `equality_group` is bound to the group
//! instead of its table and column: equal values then encrypt equally in
//! every column of the group, which is what makes an equality join between
//! them work. The scope byte keeps a group from ever colliding with a
//! table/column pair.
//!
//! Table and column names are the ones of the `[classified]` config
//! (`classified.<table>.<column>`), exactly as written there: they are the
//! stable identity of a column, whatever the query called it.

use super::envelope::HEADER_LEN;
use super::error::Place;
use crate::config::Protection;
use std::borrow::Cow;

const LABEL: &[u8] = b"regionguard.aad.v1";
const SCOPE_COLUMN: u8 = b'c';
const SCOPE_GROUP: u8 = b'g';
/// Bindings up to this size are joined with the header on the stack.
const STACK_AAD: usize = 256;

/// The associated data of one (region, tenant, column or group).
///
/// Build it once per column and tenant and reuse it: sealing only appends
/// the 6-byte header. Its `Debug` shows region and column, not the tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct Aad {
    binding: Box<[u8]>,
    place: Place,
}

impl Aad {
    /// Binds to `table.column` of `tenant` in `region`.
    pub fn column(region: &str, tenant: &str, table: &str, column: &str) -> Aad {
        let mut b = start(region, tenant, 2 * 4 + table.len() + column.len() + 1);
        b.push(SCOPE_COLUMN);
        push_field(&mut b, table.as_bytes());
        push_field(&mut b, column.as_bytes());
        Aad {
            binding: b.into_boxed_slice(),
            place: Place {
                region: region.to_string(),
                target: format!("column {table}.{column}"),
            },
        }
    }

    /// Binds to the equality group `group` of `tenant` in `region`.
    pub fn group(region: &str, tenant: &str, group: &str) -> Aad {
        let mut b = start(region, tenant, 4 + group.len() + 1);
        b.push(SCOPE_GROUP);
        push_field(&mut b, group.as_bytes());
        Aad {
            binding: b.into_boxed_slice(),
            place: Place {
                region: region.to_string(),
                target: format!("equality group {group}"),
            },
        }
    }

    /// The binding of a classified column: its equality group when it is
    /// deterministic and has one, else its table and column.
    pub fn classified(
        region: &str,
        tenant: &str,
        table: &str,
        column: &str,
        protection: Protection,
        equality_group: Option<&str>,
    ) -> Aad {
        match (protection, equality_group) {
            (Protection::Deterministic, Some(group)) => Aad::group(region, tenant, group),
            _ => Aad::column(region, tenant, table, column),
        }
    }

    /// The binding bytes (without the header).
    pub fn binding(&self) -> &[u8] {
        &self.binding
    }

    /// The region this binds to.
    pub fn region(&self) -> &str {
        &self.place.region
    }

    /// Region and column (or group), for error messages.
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// Calls `f` with `binding || header`, on the stack when it fits: this
    /// runs for every value sealed or opened.
    pub(crate) fn with_header<R>(
        &self,
        header: &[u8; HEADER_LEN],
        f: impl FnOnce(&[u8]) -> R,
    ) -> R {
        let len = self.binding.len() + HEADER_LEN;
        if len <= STACK_AAD {
            let mut buf = [0u8; STACK_AAD];
            buf[..self.binding.len()].copy_from_slice(&self.binding);
            buf[self.binding.len()..len].copy_from_slice(header);
            f(&buf[..len])
        } else {
            let mut buf = Vec::with_capacity(len);
            buf.extend_from_slice(&self.binding);
            buf.extend_from_slice(header);
            f(&buf)
        }
    }
}

impl std::fmt::Debug for Aad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aad({})", self.place)
    }
}

/// The canonical form of a tenant id in keys and associated data, the same
/// as the directory's (a UUID in any case is one tenant). Borrowed in the
/// common case so the hot path does not allocate.
pub fn canonical_tenant(tenant: &str) -> Cow<'_, str> {
    if tenant.len() == 36 || tenant.trim().len() != tenant.len() {
        let n = crate::routing::directory::normalize(tenant);
        if n == tenant {
            Cow::Borrowed(tenant)
        } else {
            Cow::Owned(n)
        }
    } else {
        Cow::Borrowed(tenant)
    }
}

fn start(region: &str, tenant: &str, extra: usize) -> Vec<u8> {
    let tenant = canonical_tenant(tenant);
    let mut b = Vec::with_capacity(3 * 4 + LABEL.len() + region.len() + tenant.len() + extra);
    push_field(&mut b, LABEL);
    push_field(&mut b, region.as_bytes());
    push_field(&mut b, tenant.as_bytes());
    b
}

/// Appends a u32 big-endian length and the bytes. Names longer than 4 GiB
/// cannot occur (config strings and protocol identifiers are far smaller);
/// the length saturates rather than wraps, should one ever appear.
pub(crate) fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_unambiguous() {
        let a = Aad::column("eu", "acme", "ab", "c");
        let b = Aad::column("eu", "acme", "a", "bc");
        assert_ne!(a.binding(), b.binding());
        let a = Aad::column("eu", "ac", "me", "c");
        let b = Aad::column("eu", "acme", "", "c");
        assert_ne!(a.binding(), b.binding());
        let a = Aad::column("eu1", "acme", "t", "c");
        let b = Aad::column("eu", "1acme", "t", "c");
        assert_ne!(a.binding(), b.binding());
    }

    #[test]
    fn groups_replace_table_and_column_for_deterministic_only() {
        let det = Protection::Deterministic;
        let rnd = Protection::Randomized;
        let a = Aad::classified("eu", "acme", "customers", "email", det, Some("email"));
        let b = Aad::classified("eu", "acme", "orders", "email", det, Some("email"));
        assert_eq!(a, b);
        assert_eq!(a, Aad::group("eu", "acme", "email"));
        let c = Aad::classified("eu", "acme", "customers", "email", rnd, Some("email"));
        assert_eq!(c, Aad::column("eu", "acme", "customers", "email"));
        // A group never equals a column binding.
        assert_ne!(
            Aad::group("eu", "acme", "x").binding(),
            Aad::column("eu", "acme", "x", "").binding()
        );
        assert!(format!("{a:?}").contains("equality group email"));
    }

    #[test]
    fn uuid_tenants_are_case_insensitive() {
        let upper = "0E6B2C8A-1D2F-4B5C-9A0B-7C6D5E4F3A2B";
        let lower = upper.to_ascii_lowercase();
        assert_eq!(
            Aad::column("eu", upper, "t", "c"),
            Aad::column("eu", &lower, "t", "c")
        );
        assert!(matches!(canonical_tenant("acme"), Cow::Borrowed(_)));
        assert!(matches!(canonical_tenant(&lower), Cow::Borrowed(_)));
    }

    #[test]
    fn debug_hides_the_tenant() {
        let a = Aad::column("eu", "secret-tenant", "customers", "email");
        let s = format!("{a:?}");
        assert!(!s.contains("secret-tenant"), "{s}");
        assert!(s.contains("customers.email") && s.contains("eu"), "{s}");
    }

    #[test]
    fn long_bindings_use_the_heap_path() {
        let long = "x".repeat(400);
        let a = Aad::column("eu", "acme", &long, "c");
        let header = [1, 1, 0, 0, 0, 1];
        let joined = a.with_header(&header, |b| b.to_vec());
        assert_eq!(&joined[..a.binding().len()], a.binding());
        assert_eq!(&joined[a.binding().len()..], &header);
        let short = Aad::column("eu", "acme", "t", "c");
        let joined = short.with_header(&header, |b| b.to_vec());
        assert_eq!(joined.len(), short.binding().len() + 6);
    }
}
