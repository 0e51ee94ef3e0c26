//! Idle backend sessions outlive their client session (ADR 21): a client
//! that says goodbye outside a transaction leaves its backend, reset with
//! `DISCARD ALL`, to the next client with the same startup parameters.
//! Checked from the outside: Postgres's own `pg_stat_activity` shows which
//! backend process served whom, and every piece of session state the first
//! client left is gone for the second.

mod support;

use std::time::Duration;
use support::{connect, proxy_client, proxy_pg_config, start_proxy, within, TestRegions};
use tokio_postgres::{Client, NoTls};

async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid")
        .get(0)
}

async fn gone(direct: &Client, pid: i32) -> bool {
    direct
        .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .expect("pg_stat_activity")
        .is_none()
}

async fn wait_pooled(direct: &Client, pid: i32) {
    assert!(
        support::wait_until(10, || support::is_pooled(direct, pid)).await,
        "backend {pid} was not pooled"
    );
}

async fn wait_gone(direct: &Client, pid: i32, what: &str) {
    assert!(
        support::wait_until(10, || gone(direct, pid)).await,
        "backend {pid} still open: {what}"
    );
}

async fn show(client: &Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .expect("show")
        .get(0)
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_client_gets_the_backend_reset_to_a_fresh_login() {
    let regions = TestRegions::start().await;
    let mut config = regions.proxy_config();
    config.metrics.address = Some("127.0.0.1:0".into());
    let proxy = start_proxy(config).await;
    let direct = regions.client("eu").await;
    let (default_zone, default_path) = (
        show(&direct, "TimeZone").await,
        show(&direct, "search_path").await,
    );

    let first = proxy_client(&proxy, "eu").await;
    let pid = backend_pid(&first).await;
    first
        .batch_execute(
            "SET TimeZone = 'Pacific/Chatham'; SET search_path = pg_catalog; \
             SET statement_timeout = '1234s'; \
             CREATE TEMP TABLE scratch (x int); PREPARE p AS SELECT 1; LISTEN pool_test; \
             SELECT pg_advisory_lock(4242); \
             BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT 1; COMMIT",
        )
        .await
        .expect("leave state behind");
    drop(first);
    wait_pooled(&direct, pid).await;

    let second = proxy_client(&proxy, "eu").await;
    assert_eq!(
        backend_pid(&second).await,
        pid,
        "the idle backend served the next client"
    );
    assert_eq!(show(&second, "TimeZone").await, default_zone);
    assert_eq!(show(&second, "statement_timeout").await, "0");
    assert_eq!(show(&second, "search_path").await, default_path);
    for (what, sql) in [
        (
            "temp tables",
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch'",
        ),
        (
            "prepared statements",
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'p'",
        ),
        (
            "listened channels",
            "SELECT count(*) FROM pg_listening_channels()",
        ),
        (
            "advisory locks",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ),
        (
            "cursors",
            "SELECT count(*) FROM pg_cursors WHERE name = 'held'",
        ),
    ] {
        assert_eq!(count(&second, sql).await, 0, "{what} survived the reset");
    }

    // The proxy's cancel key reaches the reused backend.
    let token = second.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    let err = within(
        10,
        "cancelled sleep",
        second.simple_query("SELECT pg_sleep(30)"),
    )
    .await
    .expect_err("cancelled");
    canceller.await.expect("join").expect("cancel");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("57014"), "{err:?}");

    let text = proxy.metrics().render().expect("metrics are on");
    assert!(
        text.lines()
            .any(|l| l.starts_with("regionguard_backend_reuses_total{")
                && l.contains("region=\"eu\"")
                && l.ends_with(" 1")),
        "reuse counted:\n{text}"
    );
    proxy.shutdown().await;
    wait_gone(&direct, pid, "closed at shutdown").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_with_unfinished_business_or_other_parameters_are_not_shared() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let direct = regions.client("eu").await;
    direct
        .batch_execute("CREATE TABLE pool_rows (id int)")
        .await
        .expect("table");

    // Left inside a transaction: rolled back and closed, never reused.
    let open_txn = proxy_client(&proxy, "eu").await;
    let pid = backend_pid(&open_txn).await;
    open_txn
        .batch_execute("BEGIN; INSERT INTO pool_rows VALUES (1)")
        .await
        .expect("begin");
    drop(open_txn);
    wait_gone(&direct, pid, "left in a transaction").await;
    assert_eq!(count(&direct, "SELECT count(*) FROM pool_rows").await, 0);

    // Left in a failed transaction: the same.
    let failed = proxy_client(&proxy, "eu").await;
    let pid = backend_pid(&failed).await;
    let _ = failed.batch_execute("BEGIN; SELECT 1/0").await;
    drop(failed);
    wait_gone(&direct, pid, "left in a failed transaction").await;

    // Another application_name is another login: its own backend.
    let with_name = |name: &str| {
        let mut c = proxy_pg_config(&proxy, Some("eu"));
        c.application_name(name);
        c
    };
    let one = connect(&with_name("one")).await.expect("connect one");
    let pid_one = backend_pid(&one).await;
    drop(one);
    wait_pooled(&direct, pid_one).await;
    let two = connect(&with_name("two")).await.expect("connect two");
    assert_ne!(backend_pid(&two).await, pid_one, "other startup parameters");
    let name: String = two
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .expect("name")
        .get(0);
    assert_eq!(name, "two");
    let one_again = connect(&with_name("one")).await.expect("connect one again");
    assert_eq!(backend_pid(&one_again).await, pid_one, "same parameters");

    // A pooled backend the server closed is skipped, not handed out.
    drop(one_again);
    wait_pooled(&direct, pid_one).await;
    direct
        .execute("SELECT pg_terminate_backend($1)", &[&pid_one])
        .await
        .expect("terminate");
    wait_gone(&direct, pid_one, "terminated").await;
    let fresh = connect(&with_name("one"))
        .await
        .expect("connect after kill");
    assert_ne!(backend_pid(&fresh).await, pid_one);
    assert_eq!(count(&fresh, "SELECT 7::bigint").await, 7);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backends_are_bounded_and_time_out_and_pooling_can_be_off() {
    let regions = TestRegions::start().await;
    let direct = regions.client("us").await;

    let mut config = regions.proxy_config();
    config.backend_pool.max_idle_per_region = 1;
    config.backend_pool.idle_timeout_secs = 2;
    let proxy = start_proxy(config).await;
    let a = proxy_client(&proxy, "us").await;
    let b = proxy_client(&proxy, "us").await;
    let (pid_a, pid_b) = (backend_pid(&a).await, backend_pid(&b).await);
    drop(a);
    wait_pooled(&direct, pid_a).await;
    drop(b);
    // One idle backend per region at most: the newer stays.
    wait_pooled(&direct, pid_b).await;
    wait_gone(&direct, pid_a, "beyond max_idle_per_region").await;
    // Unused for idle_timeout_secs: closed.
    within(10, "idle timeout", async {
        while !gone(&direct, pid_b).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    proxy.shutdown().await;

    let mut config = regions.proxy_config();
    config.backend_pool.max_idle_per_region = 0;
    let proxy = start_proxy(config).await;
    let c = proxy_client(&proxy, "us").await;
    let pid_c = backend_pid(&c).await;
    drop(c);
    wait_gone(&direct, pid_c, "pooling off").await;
    let d = proxy_client(&proxy, "us").await;
    assert_ne!(backend_pid(&d).await, pid_c);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backends_give_way_when_the_server_is_out_of_slots() {
    let regions = TestRegions::start().await;
    let direct = regions.client("apac").await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let named = |name: &str| {
        let mut c = proxy_pg_config(&proxy, Some("apac"));
        c.application_name(name);
        c
    };
    let a = connect(&named("x")).await.expect("a");
    let b = connect(&named("x")).await.expect("b");
    let (pid_a, pid_b) = (backend_pid(&a).await, backend_pid(&b).await);
    drop((a, b));
    wait_pooled(&direct, pid_a).await;
    wait_pooled(&direct, pid_b).await;
    // The role may hold three sessions: the direct one and the two idle.
    regions
        .cluster("apac")
        .batch_execute("postgres", "ALTER ROLE regionguard CONNECTION LIMIT 3")
        .await
        .expect("limit the role");
    let other = within(10, "connect past the limit", connect(&named("y")))
        .await
        .expect("the idle backends made room");
    assert_eq!(count(&other, "SELECT 3::bigint").await, 3);
    wait_gone(&direct, pid_a, "gave way").await;
    wait_gone(&direct, pid_b, "gave way").await;
    proxy.shutdown().await;
}
