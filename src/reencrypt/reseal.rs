//! Re-sealing one stored value under the tenant's active data key version,
//! exactly as the proxy's write path would have sealed it: the same
//! associated data (`frontend::encrypt::aad`: region, tenant, column or
//! equality group), the same mode (deterministic columns stay
//! deterministic, so equality lookups keep matching), the same storage form.

use crate::catalog::Storage;
use crate::crypto::{envelope, CryptoError, TenantKeys};
use crate::sql::ColumnClass;
use zeroize::Zeroizing;

/// The stored form of `stored` (a `bytea` envelope or its `rg1:` text form)
/// re-encrypted under `keys`' active version. The plaintext only lives in
/// `scratch`, which is zeroized when it is dropped or reused.
pub fn reseal(
    keys: &TenantKeys,
    tenant: &str,
    class: &ColumnClass,
    storage: Storage,
    stored: &[u8],
    scratch: &mut Zeroizing<Vec<u8>>,
) -> Result<Vec<u8>, CryptoError> {
    let aad = crate::frontend::encrypt::aad(keys.region(), tenant, class);
    let binary;
    let env = match storage {
        Storage::Bytea => stored,
        Storage::Text => {
            binary = envelope::from_text(stored).map_err(|e| CryptoError::Malformed {
                place: aad.place().clone(),
                reason: e.to_string(),
            })?;
            &binary[..]
        }
    };
    keys.open_into(&aad, env, scratch)?;
    let sealed = keys.seal(class.protection, &aad, scratch)?;
    Ok(match storage {
        Storage::Bytea => sealed,
        Storage::Text => envelope::to_text(&sealed).into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protection;
    use crate::crypto::store::{KeyState, StoredKey};
    use crate::crypto::{data_key, KekRing};
    use crate::types::LogicalType;
    use base64::Engine as _;

    fn ring() -> KekRing {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        KekRing::parse("eu", &format!("1:{b64}")).unwrap()
    }

    fn stored(ring: &KekRing, raw: &[u8; 32], version: u32, state: KeyState) -> StoredKey {
        let kek = ring.active();
        StoredKey {
            version,
            wrapped_key: Some(data_key::wrap(kek, "eu", "acme", version, raw).unwrap()),
            kek_version: kek.version(),
            created_at: std::time::SystemTime::now(),
            state,
        }
    }

    /// The tenant before (v1 active) and after (v1 decrypt-only, v2
    /// active) a rotation.
    fn before_and_after() -> (TenantKeys, TenantKeys) {
        let ring = ring();
        let (v1, v2) = ([1u8; 32], [2u8; 32]);
        let before = [stored(&ring, &v1, 1, KeyState::Active)];
        let after = [
            stored(&ring, &v1, 1, KeyState::DecryptOnly),
            stored(&ring, &v2, 2, KeyState::Active),
        ];
        (
            TenantKeys::from_rows(&ring, "eu", "acme", &before).unwrap(),
            TenantKeys::from_rows(&ring, "eu", "acme", &after).unwrap(),
        )
    }

    fn class(protection: Protection, binding: &str) -> ColumnClass {
        ColumnClass {
            table: "customers".into(),
            column: "email".into(),
            logical: LogicalType::Text,
            protection,
            binding: binding.into(),
        }
    }

    #[test]
    fn values_move_to_the_active_version_in_their_mode_and_form() {
        let (before, after) = before_and_after();
        let mut scratch = Zeroizing::new(Vec::new());
        for protection in [Protection::Deterministic, Protection::Randomized] {
            for binding in ["customers.email", "group:email"] {
                let c = class(protection, binding);
                let aad = crate::frontend::encrypt::aad("eu", "acme", &c);
                let old = before.seal(protection, &aad, b"a@example.com").unwrap();
                assert_eq!(envelope::decode_header(&old).unwrap().key_version, 1);

                let new = reseal(&after, "acme", &c, Storage::Bytea, &old, &mut scratch).unwrap();
                let header = envelope::decode_header(&new).unwrap();
                assert_eq!(header.key_version, 2);
                assert_eq!(header.mode, crate::crypto::Mode::from(protection));
                assert_eq!(&*after.open(&aad, &new).unwrap(), b"a@example.com");
                if protection == Protection::Deterministic {
                    // What the write path seals for the same value now.
                    assert_eq!(new, after.seal(protection, &aad, b"a@example.com").unwrap());
                }

                let text = envelope::to_text(&old);
                let new = reseal(
                    &after,
                    "acme",
                    &c,
                    Storage::Text,
                    text.as_bytes(),
                    &mut scratch,
                )
                .unwrap();
                assert!(envelope::is_text_form(&new));
                let bin = envelope::from_text(&new).unwrap();
                assert_eq!(envelope::decode_header(&bin).unwrap().key_version, 2);
                assert_eq!(&*after.open(&aad, &bin).unwrap(), b"a@example.com");
            }
        }
    }

    #[test]
    fn a_value_bound_elsewhere_or_malformed_is_an_error_not_a_rewrite() {
        let (before, after) = before_and_after();
        let mut scratch = Zeroizing::new(Vec::new());
        let c = class(Protection::Randomized, "customers.email");
        // Sealed for another tenant: fails the associated data check.
        let other = crate::frontend::encrypt::aad("eu", "globex", &c);
        let foreign = before.seal(Protection::Randomized, &other, b"x").unwrap();
        let e = reseal(&after, "acme", &c, Storage::Bytea, &foreign, &mut scratch).unwrap_err();
        assert_eq!(e.sqlstate(), "XX001");
        assert!(scratch.is_empty());
        let e = reseal(&after, "acme", &c, Storage::Text, b"rg1:***", &mut scratch).unwrap_err();
        assert!(!e.to_string().contains("***"), "{e}");
    }
}
