//! TLS between the proxy and the regional Postgres servers
//! (`regions.<name>.tls` and `regions.<name>.ca_file`).
//!
//! The `eu` cluster is switched to SSL at run time with a server
//! certificate for `localhost` issued by a CA made for the test (rcgen);
//! `us` stays plaintext. Whether a session really is encrypted is read from
//! `pg_stat_ssl` on the backend, through the proxy.

mod support;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use regionguard::config::{BackendTlsMode, Config};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use support::{connect, proxy_client, proxy_pg_config, start_proxy, within, TestRegions, DATABASE};

/// Whether the backend session serving `client` runs over SSL.
const SSL_OF_SESSION: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// A throwaway CA: its PEM certificate on disk (for `ca_file`) and the
/// issuer to sign server certificates with.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn make_ca(name: &str) -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("RegionGuard test CA {name}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");
    let dir = tempfile::tempdir().expect("temp dir for the CA");
    let pem_file = dir.path().join(format!("{name}-ca.pem"));
    std::fs::write(&pem_file, issuer.pem()).expect("write the CA certificate");
    TestCa {
        issuer,
        pem_file,
        _dir: dir,
    }
}

/// Turns SSL on in `region`'s server with a certificate for `localhost`
/// (DNS name only, no IP SAN) signed by `ca`, by `ALTER SYSTEM` and a
/// configuration reload.
async fn enable_ssl(regions: &TestRegions, region: &str, ca: &TestCa) {
    let cluster = regions.cluster(region);
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params
        .signed_by(&key, &ca.issuer)
        .expect("sign the server certificate");

    let data = cluster.data_dir();
    let cert_file = data.join("server.crt");
    let key_file = data.join("server.key");
    std::fs::write(&cert_file, cert.pem()).expect("write server.crt");
    std::fs::write(&key_file, key.serialize_pem()).expect("write server.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod server.key");
    // Postgres wants the key owned by the user it runs as (`postgres` when
    // the tests run as root).
    let uid = regionguard::localpg::RunAs::detect()
        .expect("detect the PostgreSQL OS user")
        .uid();
    for f in [&cert_file, &key_file] {
        std::os::unix::fs::chown(f, Some(uid), None)
            .unwrap_or_else(|e| panic!("chown {}: {e}", f.display()));
    }

    // One statement per query: ALTER SYSTEM refuses to run inside the
    // implicit transaction of a multi-statement query.
    let admin = cluster
        .connect_superuser("postgres")
        .await
        .unwrap_or_else(|e| panic!("connect to region `{region}` as superuser: {e:?}"));
    let literal = |p: &PathBuf| regionguard::localpg::quote_literal(&p.display().to_string());
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = {}", literal(&cert_file)),
        format!("ALTER SYSTEM SET ssl_key_file = {}", literal(&key_file)),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("enable SSL in region `{region}`: {sql}: {e:?}"));
    }

    // The reload is asynchronous: wait until new sessions see `ssl = on`.
    let on = support::wait_until(10, || async {
        let client = cluster.connect_superuser(DATABASE).await.expect("connect");
        let row = client.query_one("SHOW ssl", &[]).await.expect("SHOW ssl");
        row.get::<_, String>(0) == "on"
    })
    .await;
    assert!(
        on,
        "SSL did not come on in region `{region}`; see {}",
        cluster.log_file().display()
    );
}

/// The proxy config with `region`'s TLS settings replaced.
fn config_with_tls(
    regions: &TestRegions,
    region: &str,
    mode: BackendTlsMode,
    ca_file: Option<PathBuf>,
    host: Option<&str>,
) -> Config {
    let mut config = regions.proxy_config();
    let r = config
        .regions
        .get_mut(region)
        .expect("region in the config");
    r.tls = mode;
    r.ca_file = ca_file;
    if let Some(host) = host {
        for h in &mut r.hosts {
            h.host = host.to_string();
        }
    }
    config
}

/// Whether the backend session of a proxy client of `region` uses SSL.
async fn session_ssl(proxy: &regionguard::server::Proxy, region: &str) -> bool {
    let client = proxy_client(proxy, region).await;
    let row = client
        .query_one(SSL_OF_SESSION, &[])
        .await
        .unwrap_or_else(|e| panic!("{SSL_OF_SESSION} through the proxy: {e}"));
    row.get(0)
}

/// A client of `region` through the proxy that the proxy must refuse with
/// 08006 naming the region; returns the error message.
async fn expect_connection_failure(proxy: &regionguard::server::Proxy, region: &str) -> String {
    let err = match connect(&proxy_pg_config(proxy, Some(region))).await {
        Ok(client) => match client.simple_query("SELECT 1").await {
            Ok(_) => panic!("region `{region}`: the session worked; expected 08006"),
            Err(e) => e,
        },
        Err(e) => e,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("region `{region}`: not a server error: {err:?}"));
    assert_eq!(db.code().code(), "08006", "region `{region}`: {db:?}");
    assert!(
        db.message().contains(region),
        "the error does not name region `{region}`: {:?}",
        db.message()
    );
    eprintln!("region `{region}` refused as expected: {}", db.message());
    db.message().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_the_backend_session() {
    within(120, "require", async {
        let regions = TestRegions::start().await;
        let ca = make_ca("eu");
        enable_ssl(&regions, "eu", &ca).await;
        let proxy = start_proxy(config_with_tls(
            &regions,
            "eu",
            BackendTlsMode::Require,
            None,
            None,
        ))
        .await;

        let client = proxy_client(&proxy, "eu").await;
        let rows = client
            .query("SELECT 1 + 1", &[])
            .await
            .expect("a query over a TLS backend");
        assert_eq!(rows[0].get::<_, i32>(0), 2);
        let row = client
            .query_one(SSL_OF_SESSION, &[])
            .await
            .expect("pg_stat_ssl");
        assert!(
            row.get::<_, bool>(0),
            "the backend session is not encrypted"
        );

        // The TLS backend goes to the idle pool (ADR 21) and serves the
        // next client, still encrypted.
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let mut watching = proxy_pg_config(&proxy, Some("eu"));
        watching.application_name("watching");
        let observer = connect(&watching).await.expect("observer");
        drop(client);
        let pooled = support::wait_until(10, || support::is_pooled(&observer, pid)).await;
        assert!(pooled, "the TLS backend was not pooled");
        let next = proxy_client(&proxy, "eu").await;
        let row = next
            .query_one(
                "SELECT pg_backend_pid(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("reused session");
        assert_eq!(
            row.get::<_, i32>(0),
            pid,
            "the pooled TLS backend was reused"
        );
        assert!(row.get::<_, bool>(1), "still encrypted");
        drop((next, observer));
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_and_host_name() {
    within(120, "verify-full, right CA", async {
        let regions = TestRegions::start().await;
        let ca = make_ca("eu");
        enable_ssl(&regions, "eu", &ca).await;
        let config = config_with_tls(
            &regions,
            "eu",
            BackendTlsMode::VerifyFull,
            Some(ca.pem_file.clone()),
            Some("localhost"),
        );
        let proxy = start_proxy(config).await;

        assert!(session_ssl(&proxy, "eu").await, "verify-full: ssl = false");
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_rejects_a_certificate_from_another_ca() {
    within(120, "verify-full, wrong CA", async {
        let regions = TestRegions::start().await;
        let server_ca = make_ca("eu");
        let other_ca = make_ca("other");
        enable_ssl(&regions, "eu", &server_ca).await;
        let config = config_with_tls(
            &regions,
            "eu",
            BackendTlsMode::VerifyFull,
            Some(other_ca.pem_file.clone()),
            Some("localhost"),
        );
        let proxy = start_proxy(config).await;

        let message = expect_connection_failure(&proxy, "eu").await;
        assert!(
            message.contains("invalid peer certificate"),
            "the error does not say why: {message:?}"
        );
        // Other regions are unaffected.
        assert!(!session_ssl(&proxy, "us").await);
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_host_name() {
    within(120, "verify-full, wrong host name", async {
        let regions = TestRegions::start().await;
        let ca = make_ca("eu");
        // The certificate names only `localhost`; the proxy dials 127.0.0.1.
        enable_ssl(&regions, "eu", &ca).await;
        let config = config_with_tls(
            &regions,
            "eu",
            BackendTlsMode::VerifyFull,
            Some(ca.pem_file.clone()),
            Some("127.0.0.1"),
        );
        let proxy = start_proxy(config).await;

        let message = expect_connection_failure(&proxy, "eu").await;
        assert!(
            message.contains("not valid for name"),
            "the error does not say why: {message:?}"
        );
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_falls_back_to_plaintext_and_require_refuses() {
    within(120, "prefer/require without server SSL", async {
        let regions = TestRegions::start().await;
        // `us` has no SSL.
        let proxy = start_proxy(config_with_tls(
            &regions,
            "us",
            BackendTlsMode::Prefer,
            None,
            None,
        ))
        .await;
        assert!(
            !session_ssl(&proxy, "us").await,
            "prefer without server SSL: ssl = true"
        );
        proxy.shutdown().await;

        let proxy = start_proxy(config_with_tls(
            &regions,
            "us",
            BackendTlsMode::Require,
            None,
            None,
        ))
        .await;
        let message = expect_connection_failure(&proxy, "us").await;
        assert!(
            message.contains("TLS"),
            "the error does not say why: {message:?}"
        );
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_uses_tls_when_offered_and_disable_does_not() {
    within(120, "prefer/disable with server SSL", async {
        let regions = TestRegions::start().await;
        let ca = make_ca("eu");
        enable_ssl(&regions, "eu", &ca).await;

        let proxy = start_proxy(config_with_tls(
            &regions,
            "eu",
            BackendTlsMode::Prefer,
            None,
            None,
        ))
        .await;
        assert!(
            session_ssl(&proxy, "eu").await,
            "prefer with server SSL: ssl = false"
        );
        proxy.shutdown().await;

        let proxy = start_proxy(config_with_tls(
            &regions,
            "eu",
            BackendTlsMode::Disable,
            None,
            None,
        ))
        .await;
        assert!(
            !session_ssl(&proxy, "eu").await,
            "disable: the backend session is encrypted"
        );
        proxy.shutdown().await;
    })
    .await;
}
