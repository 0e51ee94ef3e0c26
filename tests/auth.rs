//! Client authentication at the proxy: SCRAM-SHA-256 with users from the
//! config, and trust mode.

mod support;

use regionguard::config::AuthMethod;
use support::{connect, proxy_pg_config, start_proxy, within, TestRegions, PROXY_USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_28p01() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let mut config = proxy_pg_config(&proxy, None);
    config.password("not-the-password");
    let err = within(10, "wrong password", connect(&config))
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("28P01"), "{err:?}");
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.severity(), "FATAL");
    assert!(db.message().contains(PROXY_USER), "{}", db.message());
    // The right password still works afterwards.
    let client = within(
        10,
        "right password",
        connect(&proxy_pg_config(&proxy, None)),
    )
    .await
    .expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_looks_like_a_wrong_password() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let mut config = proxy_pg_config(&proxy, None);
    config.user("mallory");
    let err = within(10, "unknown user", connect(&config))
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("28P01"), "{err:?}");
    assert!(err.as_db_error().unwrap().message().contains("mallory"));
    // Same answer with the correct proxy password for someone else.
    config.user("regionguard");
    let err = within(10, "backend role name", connect(&config))
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("28P01"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_password_is_refused_under_scram() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let addr = proxy.local_addr();
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(PROXY_USER)
        .dbname(support::DATABASE);
    let err = within(10, "no password", connect(&config))
        .await
        .map(|_| ())
        .expect_err("refused");
    // tokio-postgres gives up itself when asked for a password it has not got.
    assert!(format!("{err:?}").contains("password"), "{err:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_mode_needs_no_password() {
    let regions = TestRegions::start().await;
    let mut config = regions.proxy_config();
    config.auth.method = AuthMethod::Trust;
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let mut pg = tokio_postgres::Config::new();
    pg.host(addr.ip().to_string())
        .port(addr.port())
        .user("anyone")
        .dbname(support::DATABASE)
        .options("-c regionguard.region=apac");
    let client = within(10, "trust connect", connect(&pg))
        .await
        .expect("trust mode connects");
    let port: String = client
        .query_one("SELECT current_setting('port')", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(port, regions.port("apac").to_string());
    // A password offered anyway is not needed (never asked for).
    let client = within(
        10,
        "trust with password",
        connect(&proxy_pg_config(&proxy, None)),
    )
    .await
    .expect("connect with an unneeded password");
    client.simple_query("SELECT 1").await.expect("query");
    proxy.shutdown().await;
}
