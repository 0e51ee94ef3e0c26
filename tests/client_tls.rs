//! TLS between clients and the proxy (rustls on both ends, a self-signed
//! certificate made for the test).

mod support;

use regionguard::config::ClientTlsMode;
use std::sync::Arc;
use support::{connect, proxy_pg_config, start_proxy, within, TestRegions};
use tokio_postgres::config::SslMode;

struct TestCert {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn make_cert() -> TestCert {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("generate a self-signed certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let cert_path = dir.path().join("server.crt");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, signing_key.serialize_pem()).expect("write key");
    TestCert {
        der: cert.der().clone(),
        _dir: dir,
        cert: cert_path,
        key: key_path,
    }
}

fn rustls_connector(
    trusted: &rustls::pki_types::CertificateDer<'static>,
) -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("trust the test cert");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

async fn tls_proxy(
    regions: &TestRegions,
    mode: ClientTlsMode,
    cert: &TestCert,
) -> regionguard::server::Proxy {
    let mut config = regions.proxy_config();
    config.client_tls.mode = mode;
    config.client_tls.cert = Some(cert.cert.clone());
    config.client_tls.key = Some(cert.key.clone());
    start_proxy(config).await
}

async fn tls_client(
    proxy: &regionguard::server::Proxy,
    region: &str,
    cert: &TestCert,
    mode: SslMode,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = proxy_pg_config(proxy, Some(region));
    config.ssl_mode(mode);
    let (client, connection) = config.connect(rustls_connector(&cert.der)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_and_used() {
    let regions = TestRegions::start().await;
    let cert = make_cert();
    let proxy = tls_proxy(&regions, ClientTlsMode::Require, &cert).await;
    let client = within(
        20,
        "TLS connect",
        tls_client(&proxy, "us", &cert, SslMode::Require),
    )
    .await
    .expect("TLS connection through the proxy");
    let port: String = client
        .query_one("SELECT current_setting('port')", &[])
        .await
        .expect("query over TLS")
        .get(0);
    assert_eq!(port, regions.port("us").to_string());
    // A bulkier exchange over TLS (records bigger than one TLS frame).
    let row = client
        .query_one(
            "SELECT repeat('z', 1000000), $1::bytea",
            &[&vec![7u8; 300_000]],
        )
        .await
        .expect("large values over TLS");
    assert_eq!(row.get::<_, &str>(0).len(), 1_000_000);
    assert_eq!(row.get::<_, Vec<u8>>(1), vec![7u8; 300_000]);

    // Plaintext is refused with 28000.
    let plain = within(
        10,
        "plain connect",
        connect(&proxy_pg_config(&proxy, Some("us"))),
    )
    .await;
    let err = plain
        .map(|_| ())
        .expect_err("plaintext refused when TLS is required");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("28000"), "{err:?}");
    // sslmode=disable with a TLS-capable client: refused the same way.
    let mut config = proxy_pg_config(&proxy, Some("us"));
    config.ssl_mode(SslMode::Disable);
    let err = within(
        10,
        "ssl disabled",
        config.connect(rustls_connector(&cert.der)),
    )
    .await
    .map(|_| ())
    .expect_err("refused");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("28000"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_allowed_accepts_both() {
    let regions = TestRegions::start().await;
    let cert = make_cert();
    let proxy = tls_proxy(&regions, ClientTlsMode::Allow, &cert).await;
    let tls = within(
        20,
        "TLS connect",
        tls_client(&proxy, "eu", &cert, SslMode::Require),
    )
    .await
    .expect("TLS client");
    let plain = within(
        20,
        "plain connect",
        connect(&proxy_pg_config(&proxy, Some("eu"))),
    )
    .await
    .expect("plain client");
    for c in [&tls, &plain] {
        let n: i32 = c.query_one("SELECT 3", &[]).await.expect("query").get(0);
        assert_eq!(n, 3);
    }
    // A client that does not trust the certificate fails the handshake.
    let other = make_cert();
    let untrusted = within(
        20,
        "untrusted",
        tls_client(&proxy, "eu", &other, SslMode::Require),
    )
    .await;
    assert!(
        untrusted.is_err(),
        "a certificate the client does not trust"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_disabled_answers_n_and_serves_plaintext() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let cert = make_cert();
    // sslmode=prefer falls back to plaintext after the proxy's 'N'.
    let client = within(
        20,
        "prefer",
        tls_client(&proxy, "apac", &cert, SslMode::Prefer),
    )
    .await
    .expect("prefer falls back to plaintext");
    let n: i32 = client
        .query_one("SELECT 4", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(n, 4);
    let required = within(
        20,
        "require",
        tls_client(&proxy, "apac", &cert, SslMode::Require),
    )
    .await;
    assert!(
        required.is_err(),
        "sslmode=require fails when the proxy has no TLS"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_over_tls() {
    let regions = TestRegions::start().await;
    let cert = make_cert();
    let proxy = tls_proxy(&regions, ClientTlsMode::Require, &cert).await;
    let addr = proxy.local_addr();
    let run = |sslmode: &str| {
        let mut cmd = tokio::process::Command::new("/usr/bin/psql");
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PGPASSWORD", support::PROXY_PASSWORD)
            .env("PGSSLROOTCERT", &cert.cert)
            .env("PGCONNECT_TIMEOUT", "10")
            .arg(format!(
                "host=127.0.0.1 port={} user={} dbname={} sslmode={sslmode} options='-c regionguard.region=eu'",
                addr.port(),
                support::PROXY_USER,
                support::DATABASE
            ))
            .args(["-X", "-A", "-t", "-c", "\\conninfo", "-c", "SELECT current_setting('port')"])
            .kill_on_drop(true);
        async move { within(30, "psql", cmd.output()).await.expect("run psql") }
    };
    let out = run("verify-full").await;
    assert!(
        out.status.success(),
        "psql over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("SSL connection (protocol: TLSv1."),
        "{stdout}"
    );
    assert!(
        stdout.trim().ends_with(&regions.port("eu").to_string()),
        "{stdout}"
    );
    let out = run("disable").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires TLS"), "{stderr}");
    proxy.shutdown().await;
}
