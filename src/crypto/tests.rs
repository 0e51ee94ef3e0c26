//! Seal/open properties of a tenant's key set, without a database: key
//! rows are built in memory as the key table would hold them.

use super::data_key::{self, WRAPPED_LEN};
use super::envelope::{self, PREFIX_LEN};
use super::store::{KeyState, StoredKey};
use super::{Aad, CryptoError, KekRing, TenantKeys};
use crate::config::Protection;
use base64::Engine as _;
use proptest::prelude::*;
use std::time::SystemTime;

const DET: Protection = Protection::Deterministic;
const RND: Protection = Protection::Randomized;

fn ring(region: &str) -> KekRing {
    let b64 = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    KekRing::parse(region, &format!("1:{}\n2:{}", b64(11), b64(22))).unwrap()
}

fn row(ring: &KekRing, region: &str, tenant: &str, version: u32, state: KeyState) -> StoredKey {
    let kek = ring.active();
    let wrapped = (state != KeyState::Destroyed).then(|| {
        let raw = data_key::generate().unwrap();
        data_key::wrap(kek, region, tenant, version, &raw).unwrap()
    });
    StoredKey {
        version,
        wrapped_key: wrapped,
        kek_version: kek.version(),
        created_at: SystemTime::now(),
        state,
    }
}

/// A tenant with one active version.
fn keys(region: &str, tenant: &str) -> TenantKeys {
    let ring = ring(region);
    let rows = [row(&ring, region, tenant, 1, KeyState::Active)];
    TenantKeys::from_rows(&ring, region, tenant, &rows).unwrap()
}

fn protection() -> impl Strategy<Value = Protection> {
    prop_oneof![Just(DET), Just(RND)]
}

fn name() -> impl Strategy<Value = String> {
    "[a-z_]{1,12}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn seal_open_round_trip(
        p in protection(),
        tenant in name(),
        table in name(),
        column in name(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let k = keys("eu", &tenant);
        let aad = Aad::column("eu", &tenant, &table, &column);
        let env = k.seal(p, &aad, &plaintext).unwrap();
        prop_assert_eq!(env.len(), PREFIX_LEN + plaintext.len() + 16);
        let header = envelope::decode_header(&env).unwrap();
        prop_assert_eq!(header.key_version, 1);
        prop_assert_eq!(header.mode, p.into());
        prop_assert_eq!(&*k.open(&aad, &env).unwrap(), &plaintext[..]);
        // The text form round-trips too.
        let text = envelope::to_text(&env);
        let back = envelope::from_text(text.as_bytes()).unwrap();
        prop_assert_eq!(&*k.open(&aad, &back).unwrap(), &plaintext[..]);
    }

    /// Flipping any bit of any byte (header, nonce, ciphertext or tag), or
    /// truncating, makes opening fail with an error, never wrong plaintext.
    #[test]
    fn tampering_is_detected(
        p in protection(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..100),
        bit in 0u8..8,
    ) {
        let k = keys("eu", "acme");
        let aad = Aad::column("eu", "acme", "customers", "email");
        let env = k.seal(p, &aad, &plaintext).unwrap();
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 1 << bit;
            let err = k.open(&aad, &bad).unwrap_err();
            prop_assert_eq!(err.sqlstate(), "XX001");
        }
        for len in 0..env.len() {
            prop_assert!(k.open(&aad, &env[..len]).is_err());
        }
    }

    /// A ciphertext moved to another tenant, table, column or region does
    /// not open.
    #[test]
    fn aad_mismatch_is_detected(
        p in protection(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let k = keys("eu", "acme");
        let aad = Aad::column("eu", "acme", "customers", "email");
        let env = k.seal(p, &aad, &plaintext).unwrap();
        for other in [
            Aad::column("eu", "umbrella", "customers", "email"),
            Aad::column("eu", "acme", "orders", "email"),
            Aad::column("eu", "acme", "customers", "full_name"),
            Aad::column("us", "acme", "customers", "email"),
            Aad::group("eu", "acme", "email"),
        ] {
            let err = k.open(&other, &env).unwrap_err();
            prop_assert!(matches!(err, CryptoError::Integrity { .. }), "{err:?}");
        }
    }

    #[test]
    fn deterministic_is_equal_randomized_is_not(
        a in proptest::collection::vec(any::<u8>(), 0..64),
        b in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let k = keys("eu", "acme");
        let aad = Aad::column("eu", "acme", "customers", "email");
        prop_assert_eq!(k.seal(DET, &aad, &a).unwrap(), k.seal(DET, &aad, &a).unwrap());
        prop_assert_eq!(
            k.seal(DET, &aad, &a).unwrap() == k.seal(DET, &aad, &b).unwrap(),
            a == b
        );
        prop_assert_ne!(k.seal(RND, &aad, &a).unwrap(), k.seal(RND, &aad, &a).unwrap());
    }
}

#[test]
fn deterministic_differs_across_tenants_columns_and_versions() {
    let ring = ring("eu");
    let rows = [
        row(&ring, "eu", "acme", 1, KeyState::DecryptOnly),
        row(&ring, "eu", "acme", 2, KeyState::Active),
    ];
    let acme = TenantKeys::from_rows(&ring, "eu", "acme", &rows).unwrap();
    let v = b"alice@example.com";
    let email = Aad::column("eu", "acme", "customers", "email");
    let base = acme.seal(DET, &email, v).unwrap();
    assert_eq!(envelope::decode_header(&base).unwrap().key_version, 2);
    let other_col = acme
        .seal(DET, &Aad::column("eu", "acme", "customers", "alt"), v)
        .unwrap();
    assert_ne!(base[PREFIX_LEN..], other_col[PREFIX_LEN..]);
    let umbrella = keys("eu", "umbrella");
    let other_tenant = umbrella
        .seal(DET, &Aad::column("eu", "umbrella", "customers", "email"), v)
        .unwrap();
    assert_ne!(base[PREFIX_LEN..], other_tenant[PREFIX_LEN..]);

    // Lookups during rotation: one envelope per live version, active first,
    // each equal to what that version seals and each opening.
    let lookups = acme.seal_for_lookup(&email, v).unwrap();
    assert_eq!(lookups.len(), 2);
    assert_eq!(lookups[0], base);
    assert_eq!(envelope::decode_header(&lookups[1]).unwrap().key_version, 1);
    for env in &lookups {
        assert_eq!(&*acme.open(&email, env).unwrap(), v);
    }
}

#[test]
fn lookups_skip_retired_and_destroyed_versions() {
    let ring = ring("eu");
    let rows = [
        row(&ring, "eu", "acme", 1, KeyState::Destroyed),
        row(&ring, "eu", "acme", 2, KeyState::Retired),
        row(&ring, "eu", "acme", 3, KeyState::DecryptOnly),
        row(&ring, "eu", "acme", 4, KeyState::DecryptOnly),
        row(&ring, "eu", "acme", 5, KeyState::Active),
    ];
    let acme = TenantKeys::from_rows(&ring, "eu", "acme", &rows).unwrap();
    assert_eq!(acme.lookup_versions(), vec![5, 4, 3]);
    let email = Aad::column("eu", "acme", "customers", "email");
    let versions: Vec<u32> = acme
        .seal_for_lookup(&email, b"x")
        .unwrap()
        .iter()
        .map(|e| envelope::decode_header(e).unwrap().key_version)
        .collect();
    assert_eq!(versions, vec![5, 4, 3]);
}

#[test]
fn equality_groups_match_across_columns() {
    let k = keys("eu", "acme");
    let a = Aad::classified("eu", "acme", "customers", "email", DET, Some("email"));
    let b = Aad::classified(
        "eu",
        "acme",
        "invoices",
        "billing_email",
        DET,
        Some("email"),
    );
    let x = k.seal(DET, &a, b"bob@example.com").unwrap();
    assert_eq!(x, k.seal(DET, &b, b"bob@example.com").unwrap());
    assert_eq!(&*k.open(&b, &x).unwrap(), b"bob@example.com");
    // The column's own binding does not open a group ciphertext.
    let own = Aad::column("eu", "acme", "customers", "email");
    assert!(k.open(&own, &x).is_err());
}

#[test]
fn versions_and_destroyed_keys() {
    let ring = ring("eu");
    let v1 = row(&ring, "eu", "acme", 1, KeyState::Active);
    let keys1 = TenantKeys::from_rows(&ring, "eu", "acme", std::slice::from_ref(&v1)).unwrap();
    let aad = Aad::column("eu", "acme", "customers", "email");
    let old = keys1.seal(RND, &aad, b"old").unwrap();

    // Rotated: v1 decrypt-only, v2 active. Old values still open.
    let mut v1_do = v1.clone();
    v1_do.state = KeyState::DecryptOnly;
    let v2 = row(&ring, "eu", "acme", 2, KeyState::Active);
    let rotated = TenantKeys::from_rows(&ring, "eu", "acme", &[v2.clone(), v1_do]).unwrap();
    assert_eq!(rotated.active_version(), Some(2));
    assert_eq!(
        rotated.versions(),
        vec![(1, KeyState::DecryptOnly), (2, KeyState::Active)]
    );
    assert_eq!(&*rotated.open(&aad, &old).unwrap(), b"old");
    let new = rotated.seal(RND, &aad, b"new").unwrap();
    assert_eq!(envelope::decode_header(&new).unwrap().key_version, 2);
    // The old key set does not know v2.
    let err = keys1.open(&aad, &new).unwrap_err();
    assert!(
        matches!(err, CryptoError::UnknownKeyVersion { version: 2, .. }),
        "{err:?}"
    );
    assert!(!keys1.knows(2) && rotated.knows(2));

    // Shredded: every version destroyed.
    let shredded_rows: Vec<StoredKey> = [v1, v2]
        .into_iter()
        .map(|mut r| {
            r.state = KeyState::Destroyed;
            r.wrapped_key = None;
            r
        })
        .collect();
    let shredded = TenantKeys::from_rows(&ring, "eu", "acme", &shredded_rows).unwrap();
    for env in [&old, &new] {
        let err = shredded.open(&aad, env).unwrap_err();
        assert_eq!(err.sqlstate(), "XX001");
        let msg = err.to_string();
        assert!(msg.contains("destroyed"), "{msg}");
        assert!(
            msg.contains("customers.email") && msg.contains("region eu"),
            "{msg}"
        );
        assert!(!msg.contains("acme"), "{msg}");
    }
    let err = shredded.seal(RND, &aad, b"x").unwrap_err();
    assert!(
        matches!(
            err,
            CryptoError::NoActiveKey {
                destroyed: true,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_tenant_without_keys_decrypts_nothing_and_says_so() {
    let ring = ring("eu");
    let empty = TenantKeys::from_rows(&ring, "eu", "acme", &[]).unwrap();
    assert!(!empty.has_keys());
    assert_eq!(empty.active_version(), None);
    let aad = Aad::column("eu", "acme", "customers", "email");
    let env = keys("eu", "acme").seal(RND, &aad, b"x").unwrap();
    let err = empty.open(&aad, &env).unwrap_err();
    assert!(
        matches!(err, CryptoError::UnknownKeyVersion { .. }),
        "{err:?}"
    );
    assert_eq!(err.sqlstate(), "XX001");
    assert!(empty.seal(RND, &aad, b"x").is_err());
}

#[test]
fn malformed_values_and_messages_never_show_the_value() {
    let k = keys("eu", "acme");
    let aad = Aad::column("eu", "acme", "customers", "email");
    let plaintext = b"plain-value-stored-directly-by-someone";
    let err = k.open(&aad, plaintext).unwrap_err();
    assert!(matches!(err, CryptoError::Malformed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(!msg.contains("plain-value"), "{msg}");
    assert!(
        msg.contains("column customers.email") && msg.contains("region eu"),
        "{msg}"
    );
    assert_eq!(err.sqlstate(), "XX001");
    assert!(err.hint().is_some());

    let env = k.seal(DET, &aad, b"secret-canary").unwrap();
    let err = k
        .open(&Aad::column("eu", "umbrella", "customers", "email"), &env)
        .unwrap_err();
    let shown = format!("{err} {err:?} {:?}", err.hint());
    assert!(
        !shown.contains("secret-canary") && !shown.contains("umbrella"),
        "{shown}"
    );
}

#[test]
fn key_rows_that_do_not_unwrap_are_refused() {
    let ring = ring("eu");
    let r = row(&ring, "eu", "acme", 1, KeyState::Active);
    // Moved to another tenant.
    let err = TenantKeys::from_rows(&ring, "eu", "umbrella", std::slice::from_ref(&r)).unwrap_err();
    assert!(
        matches!(
            err,
            CryptoError::Unwrap {
                version: 1,
                kek_version: 2,
                ..
            }
        ),
        "{err:?}"
    );
    // A root key version the source does not provide.
    let mut missing = r.clone();
    missing.kek_version = 9;
    let err = TenantKeys::from_rows(&ring, "eu", "acme", &[missing]).unwrap_err();
    assert!(
        matches!(err, CryptoError::MissingKek { kek_version: 9, .. }),
        "{err:?}"
    );
    // Another root key value under the same version.
    let b64 = base64::engine::general_purpose::STANDARD.encode([99u8; 32]);
    let other = KekRing::parse("eu", &format!("2:{b64}")).unwrap();
    let err = TenantKeys::from_rows(&other, "eu", "acme", std::slice::from_ref(&r)).unwrap_err();
    assert!(err.to_string().contains("does not unwrap"), "{err}");
    assert_eq!(r.wrapped_key.as_ref().map(Vec::len), Some(WRAPPED_LEN));
}

#[test]
fn seal_into_appends_and_open_into_reuses_its_buffer() {
    let k = keys("eu", "acme");
    let aad = Aad::column("eu", "acme", "customers", "email");
    let mut msg = b"message prefix".to_vec();
    k.seal_into(DET, &aad, b"first value", &mut msg).unwrap();
    assert!(msg.starts_with(b"message prefix"));
    let env = &msg[b"message prefix".len()..];
    assert_eq!(env, &k.seal(DET, &aad, b"first value").unwrap()[..]);

    let mut scratch = zeroize::Zeroizing::new(Vec::new());
    k.open_into(&aad, env, &mut scratch).unwrap();
    assert_eq!(&scratch[..], b"first value");
    // A longer value grows the buffer, a shorter one reuses it.
    let long = vec![7u8; 5000];
    k.open_into(&aad, &k.seal(RND, &aad, &long).unwrap(), &mut scratch)
        .unwrap();
    assert_eq!(&scratch[..], &long[..]);
    let cap = scratch.capacity();
    k.open_into(&aad, &k.seal(RND, &aad, b"x").unwrap(), &mut scratch)
        .unwrap();
    assert_eq!((&scratch[..], scratch.capacity()), (&b"x"[..], cap));
    // A failure leaves it empty, never stale plaintext.
    let mut bad = k.seal(RND, &aad, b"y").unwrap();
    *bad.last_mut().unwrap() ^= 1;
    assert!(k.open_into(&aad, &bad, &mut scratch).is_err());
    assert!(scratch.is_empty());
    k.open_into(&aad, b"short", &mut scratch).unwrap_err();
    assert!(scratch.is_empty());
}
