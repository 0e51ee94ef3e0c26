//! Key hierarchy against real regional clusters: data keys created on first
//! write in the tenant's own region only, wrapped by the region's root key,
//! shared by several proxies (keyrings), race-safe creation, refused key
//! files, wrong root keys, shredded keys, an unreachable region, and TLS on
//! the control connection.

mod support;

use base64::Engine as _;
use regionguard::config::{BackendTlsMode, Config, KeySource, Protection};
use regionguard::crypto::{data_key, envelope, Aad, CryptoError, KeyState, Keyring};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::{within, TestRegions, DATABASE, REGIONS};

const RND: Protection = Protection::Randomized;
const DET: Protection = Protection::Deterministic;

/// Writes a root key file (mode 0600) for each region into `dir`, each
/// region's key made of `seed` and the region's name.
fn write_key_files(dir: &Path, seed: u8) -> Vec<(String, PathBuf)> {
    REGIONS
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let path = dir.join(format!("{region}-{seed}.key"));
            let key = [seed.wrapping_add(i as u8); 32];
            let b64 = base64::engine::general_purpose::STANDARD.encode(key);
            std::fs::write(&path, format!("1:{b64}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            (region.to_string(), path)
        })
        .collect()
}

/// The harness's proxy config with a root key file per region.
fn keyed_config(regions: &TestRegions, keys: &[(String, PathBuf)]) -> Config {
    let mut config = regions.proxy_config();
    for (region, path) in keys {
        config.regions.get_mut(region).unwrap().key = Some(KeySource::File { path: path.clone() });
    }
    config
}

/// `(version, state, kek_version, wrapped_key)` of `tenant`'s key rows in
/// `region`, read directly; empty when the key table does not exist there.
async fn key_rows(
    regions: &TestRegions,
    region: &str,
    tenant: &str,
) -> Vec<(i32, String, i32, Option<Vec<u8>>)> {
    let client = regions.client(region).await;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('regionguard.data_keys') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if !exists {
        return Vec::new();
    }
    client
        .query(
            "SELECT version, state, kek_version, wrapped_key FROM regionguard.data_keys \
             WHERE tenant = $1 ORDER BY version",
            &[&tenant],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Every key row in `region` (any tenant); 0 when there is no key table.
async fn all_key_rows(regions: &TestRegions, region: &str) -> i64 {
    let client = regions.client(region).await;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('regionguard.data_keys') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if !exists {
        return 0;
    }
    client
        .query_one("SELECT count(*) FROM regionguard.data_keys", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("count key rows in {region}: {e}"))
}

fn email(region: &str, tenant: &str) -> Aad {
    Aad::column(region, tenant, "customers", "email")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_write_creates_one_wrapped_key_in_the_tenants_region_only() {
    let regions = TestRegions::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_files = write_key_files(dir.path(), 10);
    let keyring = Keyring::load(&keyed_config(&regions, &key_files)).unwrap();
    assert_eq!(keyring.regions(), vec!["apac", "eu", "us"]);

    within(15, "first write", async {
        // Reading a tenant with no keys creates nothing and says so.
        let none = keyring.for_read("eu", "acme").await.unwrap();
        assert!(!none.has_keys());
        assert_eq!(none.active_version(), None);
        assert!(key_rows(&regions, "eu", "acme").await.is_empty());
        assert!(keyring.cached("eu", "acme").is_none());

        let keys = keyring.for_write("eu", "acme").await.unwrap();
        assert_eq!(keys.active_version(), Some(1));
        assert_eq!(keys.versions(), vec![(1, KeyState::Active)]);
        let aad = email("eu", "acme");
        let sealed = keys.seal(RND, &aad, b"alice@example.com").unwrap();

        // One row, active, version 1, wrapped by root key version 1.
        let rows = key_rows(&regions, "eu", "acme").await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        let (version, state, kek_version, wrapped) = rows[0].clone();
        assert_eq!((version, state.as_str(), kek_version), (1, "active", 1));
        let wrapped = wrapped.expect("a live key has its wrapped bytes");
        assert_eq!(wrapped.len(), data_key::WRAPPED_LEN);

        // The stored bytes are the key wrapped, not the key: unwrapping
        // with the region's root key gives a key that opens the value, and
        // those raw bytes appear nowhere in the row.
        let ring = keyring.kek("eu").unwrap();
        let kek = ring.get(1).unwrap();
        let raw = data_key::unwrap(kek, "eu", "acme", 1, &wrapped).unwrap();
        assert!(!wrapped.windows(32).any(|w| w == &raw[..]));
        let derived = data_key::DataKey::derive(1, &raw).unwrap();
        let env = envelope::decode(&sealed).unwrap();
        assert_eq!(&*derived.open(&aad, &env).unwrap(), b"alice@example.com");

        // No key in any other region.
        for region in ["us", "apac"] {
            assert_eq!(all_key_rows(&regions, region).await, 0, "{region}");
        }

        // Cached now: the sync fast path answers, and writing again creates
        // nothing more.
        let cached = keyring
            .cached("eu", "acme")
            .expect("cached after the write");
        assert_eq!(cached.active_version(), Some(1));
        keyring.for_write("eu", "acme").await.unwrap();
        keyring.invalidate("eu", "acme");
        assert!(keyring.cached("eu", "acme").is_none());
        keyring.for_write("eu", "acme").await.unwrap();
        assert_eq!(key_rows(&regions, "eu", "acme").await.len(), 1);

        // A second tenant in another region gets its key there.
        keyring.for_write("us", "globex").await.unwrap();
        assert_eq!(key_rows(&regions, "us", "globex").await.len(), 1);
        assert!(key_rows(&regions, "eu", "globex").await.is_empty());
        assert_eq!(all_key_rows(&regions, "apac").await, 0);

        // prepare() ensures the key table everywhere without creating keys.
        for (region, outcome) in keyring.prepare().await {
            outcome.unwrap_or_else(|e| panic!("prepare {region}: {e}"));
        }
        assert_eq!(all_key_rows(&regions, "apac").await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_keys_and_create_exactly_one_under_a_race() {
    let regions = TestRegions::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = keyed_config(&regions, &write_key_files(dir.path(), 20));
    let a = Keyring::load(&config).unwrap();
    let b = Keyring::load(&config).unwrap();

    within(20, "shared keys", async {
        // A writes first; B reads A's value and A reads B's.
        let ka = a.for_write("eu", "acme").await.unwrap();
        let aad = email("eu", "acme");
        let from_a = ka.seal(RND, &aad, b"from proxy a").unwrap();
        let kb = b.for_read("eu", "acme").await.unwrap();
        assert_eq!(&*kb.open(&aad, &from_a).unwrap(), b"from proxy a");
        let kb = b.for_write("eu", "acme").await.unwrap();
        let from_b = kb.seal(DET, &aad, b"from proxy b").unwrap();
        assert_eq!(&*ka.open(&aad, &from_b).unwrap(), b"from proxy b");
        // Deterministic: both proxies encrypt a value identically.
        assert_eq!(from_b, ka.seal(DET, &aad, b"from proxy b").unwrap());
        // Through the keyring facade too.
        assert_eq!(
            &*a.open("eu", "acme", &aad, &from_b).await.unwrap(),
            b"from proxy b"
        );

        // Concurrent first writes of several tenants from both proxies.
        let tenants: Vec<String> = (0..8).map(|i| format!("race-{i}")).collect();
        let mut tasks = Vec::new();
        for t in &tenants {
            for keyring in [&a, &b] {
                for _ in 0..3 {
                    tasks.push(async move {
                        let keys = keyring.for_write("us", t).await.unwrap();
                        let aad = email("us", t);
                        (
                            t.clone(),
                            aad.clone(),
                            keys.seal(RND, &aad, t.as_bytes()).unwrap(),
                        )
                    });
                }
            }
        }
        let sealed = futures_util::future::join_all(tasks).await;
        for t in &tenants {
            let rows = key_rows(&regions, "us", t).await;
            assert_eq!(rows.len(), 1, "{t}: {rows:?}");
            assert_eq!(rows[0].1, "active");
        }
        // Every value opens with either proxy's keys.
        for (t, aad, env) in &sealed {
            for keyring in [&a, &b] {
                let plain = keyring.open("us", t, aad, env).await.unwrap();
                assert_eq!(&*plain, t.as_bytes());
            }
        }
        assert_eq!(all_key_rows(&regions, "eu").await, 1);
        assert_eq!(all_key_rows(&regions, "apac").await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_readable_by_others_is_refused() {
    let regions = TestRegions::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_files = write_key_files(dir.path(), 30);
    let (_, us_key) = &key_files[1];
    std::fs::set_permissions(us_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Keyring::load(&keyed_config(&regions, &key_files)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CryptoError::KeySource { .. }), "{err:?}");
    assert!(msg.contains(&us_key.display().to_string()), "{msg}");
    assert!(
        msg.contains("0644") && msg.contains("regions.us.key"),
        "{msg}"
    );
    // Group-readable is refused too; 0600 loads.
    std::fs::set_permissions(us_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(Keyring::load(&keyed_config(&regions, &key_files)).is_err());
    std::fs::set_permissions(us_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    Keyring::load(&keyed_config(&regions, &key_files)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_root_key_fails_to_unwrap_with_a_clear_error() {
    let regions = TestRegions::start().await;
    let dir = tempfile::tempdir().unwrap();
    let right = Keyring::load(&keyed_config(&regions, &write_key_files(dir.path(), 40))).unwrap();
    let wrong = Keyring::load(&keyed_config(&regions, &write_key_files(dir.path(), 41))).unwrap();

    within(15, "wrong root key", async {
        let keys = right.for_write("eu", "acme").await.unwrap();
        let aad = email("eu", "acme");
        let sealed = keys.seal(RND, &aad, b"secret").unwrap();

        let err = wrong.for_read("eu", "acme").await.unwrap_err();
        assert!(
            matches!(
                err,
                CryptoError::Unwrap {
                    version: 1,
                    kek_version: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.sqlstate(), "XX001");
        let msg = err.to_string();
        assert!(
            msg.contains("region eu") && msg.contains("wrong root key"),
            "{msg}"
        );
        assert!(!msg.contains("acme"), "{msg}");
        assert!(wrong.open("eu", "acme", &aad, &sealed).await.is_err());
        // Writing through the wrong key fails the same way: no second key.
        assert!(wrong.for_write("eu", "acme").await.is_err());
        assert_eq!(key_rows(&regions, "eu", "acme").await.len(), 1);

        // A key source that lacks the wrapping root key version.
        let v2_only = dir.path().join("eu-v2.key");
        let b64 = base64::engine::general_purpose::STANDARD.encode([40u8; 32]);
        std::fs::write(&v2_only, format!("2:{b64}\n")).unwrap();
        std::fs::set_permissions(&v2_only, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut config = regions.proxy_config();
        config.regions.get_mut("eu").unwrap().key = Some(KeySource::File { path: v2_only });
        let v2 = Keyring::load(&config).unwrap();
        let err = v2.for_read("eu", "acme").await.unwrap_err();
        assert!(
            matches!(err, CryptoError::MissingKek { kek_version: 1, .. }),
            "{err:?}"
        );
        // Regions without a key source are not loaded at all.
        assert_eq!(v2.regions(), vec!["eu"]);
        let err = v2.for_write("us", "globex").await.unwrap_err();
        assert!(matches!(err, CryptoError::NoRegionKey { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_keys_fail_reads_and_writes_clearly() {
    let regions = TestRegions::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = keyed_config(&regions, &write_key_files(dir.path(), 50));
    let a = Keyring::load(&config).unwrap();

    within(15, "destroyed keys", async {
        let aad = email("eu", "acme");
        let sealed = a
            .for_write("eu", "acme")
            .await
            .unwrap()
            .seal(DET, &aad, b"gone")
            .unwrap();
        let other = a
            .for_write("eu", "umbrella")
            .await
            .unwrap()
            .seal(DET, &email("eu", "umbrella"), b"kept")
            .unwrap();
        // Shred acme directly in the key table, as `tenant shred` will.
        regions
            .client("eu")
            .await
            .execute(
                "UPDATE regionguard.data_keys SET state = 'destroyed', wrapped_key = NULL \
                 WHERE tenant = 'acme'",
                &[],
            )
            .await
            .unwrap();
        a.invalidate("eu", "acme");
        let keys = a.for_read("eu", "acme").await.unwrap();
        assert_eq!(keys.versions(), vec![(1, KeyState::Destroyed)]);
        let err = keys.open(&aad, &sealed).unwrap_err();
        assert!(matches!(err, CryptoError::Destroyed { .. }), "{err:?}");
        assert_eq!(err.sqlstate(), "XX001");
        assert!(err.to_string().contains("destroyed"), "{err}");
        let err = a.for_write("eu", "acme").await.unwrap_err();
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
        // No new key was created for the shredded tenant; others untouched.
        assert_eq!(key_rows(&regions, "eu", "acme").await.len(), 1);
        let b = Keyring::load(&config).unwrap();
        let plain = b
            .open("eu", "umbrella", &email("eu", "umbrella"), &other)
            .await
            .unwrap();
        assert_eq!(&*plain, b"kept");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_created_elsewhere_is_found_on_a_cache_miss() {
    let regions = TestRegions::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = keyed_config(&regions, &write_key_files(dir.path(), 60));
    let a = Keyring::load(&config).unwrap();
    let b = Keyring::load(&config).unwrap();

    within(15, "new version", async {
        let aad = email("eu", "acme");
        let v1 = a.for_write("eu", "acme").await.unwrap();
        let old = v1.seal(RND, &aad, b"old").unwrap();
        // Another proxy rotates: v1 decrypt-only, v2 active (done here
        // directly in the table, as key rotation will).
        let ring = a.kek("eu").unwrap();
        let kek = ring.active();
        let raw = data_key::generate().unwrap();
        let wrapped = data_key::wrap(kek, "eu", "acme", 2, &raw).unwrap();
        regions
            .client("eu")
            .await
            .batch_execute("UPDATE regionguard.data_keys SET state = 'decrypt-only' WHERE tenant = 'acme'")
            .await
            .unwrap();
        regions
            .client("eu")
            .await
            .execute(
                "INSERT INTO regionguard.data_keys (tenant, version, wrapped_key, kek_version, state) \
                 VALUES ('acme', 2, $1, 1, 'active')",
                &[&wrapped],
            )
            .await
            .unwrap();
        let v2 = b.for_write("eu", "acme").await.unwrap();
        assert_eq!(v2.active_version(), Some(2));
        let new = v2.seal(RND, &aad, b"new").unwrap();
        // A's cached set lacks v2; the facade reloads and opens it.
        assert!(!a.cached("eu", "acme").unwrap().knows(2));
        assert_eq!(&*a.open("eu", "acme", &aad, &new).await.unwrap(), b"new");
        assert!(a.cached("eu", "acme").unwrap().knows(2));
        assert_eq!(&*a.open("eu", "acme", &aad, &old).await.unwrap(), b"old");
        // A lookup matches both versions.
        assert_eq!(v2.seal_for_lookup(&aad, b"x").unwrap().len(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_key_store_is_08006_and_recovers() {
    let mut regions = TestRegions::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_files = write_key_files(dir.path(), 70);
    let mut config = keyed_config(&regions, &key_files);
    // apac points at a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    config.regions.get_mut("apac").unwrap().hosts[0].port = closed_port;
    config.regions.get_mut("apac").unwrap().connect_timeout_secs = 2;
    let keyring = Keyring::load(&config).unwrap();

    within(20, "unreachable region", async {
        let err = keyring.for_write("apac", "initech").await.unwrap_err();
        assert!(
            matches!(err, CryptoError::StoreUnavailable { .. }),
            "{err:?}"
        );
        assert_eq!(err.sqlstate(), "08006");
        assert!(err.to_string().contains("region apac"), "{err}");
        assert!(!err.to_string().contains("initech"), "{err}");
        let outcomes = keyring.prepare().await;
        assert!(outcomes.iter().any(|(r, o)| r == "apac" && o.is_err()));
        assert!(outcomes.iter().any(|(r, o)| r == "eu" && o.is_ok()));

        // eu goes down after its connection was made, then comes back: the
        // dead connection is replaced.
        keyring.for_write("eu", "acme").await.unwrap();
        keyring.invalidate("eu", "acme");
        let old_port = regions.port("eu");
        regions.stop_region("eu").await;
        let err = keyring.for_read("eu", "acme").await.unwrap_err();
        assert_eq!(err.sqlstate(), "08006", "{err:?}");
        regions.restart_region("eu").await;
        // The restarted server may have a new port; a fresh keyring follows
        // it, the old one reconnects when the port is the same.
        let config = keyed_config(&regions, &key_files);
        let fresh = Keyring::load(&config).unwrap();
        assert_eq!(
            fresh.for_read("eu", "acme").await.unwrap().active_version(),
            Some(1)
        );
        if regions.port("eu") == old_port {
            let keys = keyring.for_read("eu", "acme").await.unwrap();
            assert_eq!(keys.active_version(), Some(1));
        }
    })
    .await;
}

/// Turns SSL on in `region` with a certificate for `localhost` signed by a
/// CA made for the test; returns the CA's PEM file. (As in
/// tests/backend_tls.rs, kept short.)
async fn enable_ssl(regions: &TestRegions, region: &str, dir: &Path) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, issuer.pem()).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();

    let cluster = regions.cluster(region);
    let cert_file = cluster.data_dir().join("server.crt");
    let key_file = cluster.data_dir().join("server.key");
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let uid = regionguard::localpg::RunAs::detect().unwrap().uid();
    for f in [&cert_file, &key_file] {
        std::os::unix::fs::chown(f, Some(uid), None).unwrap();
    }
    let admin = cluster.connect_superuser("postgres").await.unwrap();
    let literal = |p: &PathBuf| regionguard::localpg::quote_literal(&p.display().to_string());
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = {}", literal(&cert_file)),
        format!("ALTER SYSTEM SET ssl_key_file = {}", literal(&key_file)),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let on = support::wait_until(10, || async {
        let client = cluster.connect_superuser(DATABASE).await.unwrap();
        let row = client.query_one("SHOW ssl", &[]).await.unwrap();
        row.get::<_, String>(0) == "on"
    })
    .await;
    assert!(on, "SSL did not come on in region {region}");
    ca_file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_store_connection_honours_the_regions_tls_mode() {
    let regions = TestRegions::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_files = write_key_files(dir.path(), 80);

    within(20, "control TLS", async {
        let ca_file = enable_ssl(&regions, "eu", dir.path()).await;
        let other_dir = tempfile::tempdir().unwrap();
        // A CA that did not sign the server's certificate.
        let wrong_ca = {
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let issuer =
                rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap())
                    .unwrap();
            let path = other_dir.path().join("wrong-ca.pem");
            std::fs::write(&path, issuer.pem()).unwrap();
            path
        };
        let with_tls = |mode, ca: Option<PathBuf>| {
            let mut config = keyed_config(&regions, &key_files);
            let eu = config.regions.get_mut("eu").unwrap();
            eu.tls = mode;
            eu.ca_file = ca;
            eu.hosts[0].host = "localhost".into();
            config
        };

        // verify-full with the right CA: the control session is encrypted.
        let keyring =
            Keyring::load(&with_tls(BackendTlsMode::VerifyFull, Some(ca_file.clone()))).unwrap();
        keyring.for_write("eu", "acme").await.unwrap();
        let client = keyring.store_client("eu").await.unwrap();
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "the control session is not encrypted");
        let app: String = client
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(app, regionguard::backend::control::APPLICATION_NAME);

        // verify-full with a CA that did not sign it: refused, 08006.
        let keyring = Keyring::load(&with_tls(BackendTlsMode::VerifyFull, Some(wrong_ca))).unwrap();
        let err = keyring.for_read("eu", "acme").await.unwrap_err();
        assert_eq!(err.sqlstate(), "08006", "{err:?}");

        // require: encrypted without verification.
        let keyring = Keyring::load(&with_tls(BackendTlsMode::Require, None)).unwrap();
        assert_eq!(
            keyring
                .for_read("eu", "acme")
                .await
                .unwrap()
                .active_version(),
            Some(1)
        );
        // require against a plaintext region: refused.
        let mut config = keyed_config(&regions, &key_files);
        config.regions.get_mut("us").unwrap().tls = BackendTlsMode::Require;
        let keyring = Keyring::load(&config).unwrap();
        let err = keyring.for_read("us", "globex").await.unwrap_err();
        assert_eq!(err.sqlstate(), "08006", "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_table_made_by_an_administrator_needs_no_create_privilege() {
    let regions = TestRegions::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_files = write_key_files(dir.path(), 90);

    within(15, "provisioned key table", async {
        // The DBA creates the table and a role that may only use it.
        regions
            .client("us")
            .await
            .batch_execute(regionguard::crypto::store::SCHEMA_SQL)
            .await
            .unwrap();
        let admin = regions
            .cluster("us")
            .connect_superuser(DATABASE)
            .await
            .unwrap();
        admin
            .batch_execute(
                "CREATE ROLE keyuser LOGIN PASSWORD 'keyuser-pw'; \
                 REVOKE CREATE ON DATABASE app FROM PUBLIC; \
                 REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
                 GRANT USAGE ON SCHEMA regionguard TO keyuser; \
                 GRANT SELECT, INSERT ON regionguard.data_keys TO keyuser;",
            )
            .await
            .unwrap();
        // The role really cannot run the schema's DDL.
        let direct = regions
            .cluster("us")
            .connect("keyuser", "keyuser-pw", DATABASE)
            .await
            .unwrap();
        let err = direct
            .batch_execute("CREATE SCHEMA IF NOT EXISTS regionguard")
            .await
            .unwrap_err();
        assert_eq!(support::sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
        let mut config = keyed_config(&regions, &key_files);
        let host = &mut config.regions.get_mut("us").unwrap().hosts[0];
        host.user = "keyuser".into();
        host.password = Some("keyuser-pw".into());
        let keyring = Keyring::load(&config).unwrap();
        let keys = keyring.for_write("us", "globex").await.unwrap();
        assert_eq!(keys.active_version(), Some(1));
        assert_eq!(key_rows(&regions, "us", "globex").await.len(), 1);
    })
    .await;
}
