//! Transaction-mode pooling (ADR 22): between transactions, a client
//! session that keeps no session state in Postgres hands its backend back
//! to the region's pool, and at most `max_active_per_region` backends
//! serve clients at once. Checked from the outside: `pg_backend_pid()` and
//! Postgres's own `pg_stat_activity` show which backend served whom, and
//! state one client left never reaches another.

mod support;

use regionguard::config::{Config, PoolMode};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::{proxy_client, start_proxy, within, TestRegions};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

fn transaction_mode(regions: &TestRegions, max_active: usize, acquire_timeout: u64) -> Config {
    let mut config = regions.proxy_config();
    config.backend_pool.mode = PoolMode::Transaction;
    config.backend_pool.max_active_per_region = max_active;
    config.backend_pool.max_idle_per_region = 8;
    config.backend_pool.acquire_timeout_secs = acquire_timeout;
    config
}

/// The first column of the first row of a simple query.
async fn one(client: &Client, sql: &str) -> String {
    let messages = client.simple_query(sql).await.expect(sql);
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row from {sql}"))
}

async fn pid(client: &Client) -> i32 {
    one(client, "SELECT pg_backend_pid()")
        .await
        .parse()
        .expect("a pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_a_bounded_number_of_backends_between_transactions() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(transaction_mode(&regions, 2, 30)).await;
    let direct = regions.client("eu").await;
    direct
        .batch_execute("CREATE TABLE tx_pool (client int, n int)")
        .await
        .expect("table");

    let mut tasks = Vec::new();
    for c in 0..6 {
        let client = proxy_client(&proxy, "eu").await;
        tasks.push(tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            for n in 0..25 {
                seen.insert(pid(&client).await);
                // A transaction runs on one backend from BEGIN to COMMIT.
                let rows = client
                    .simple_query(&format!(
                        "BEGIN; SELECT pg_backend_pid(); \
                         INSERT INTO tx_pool VALUES ({c}, {n}); \
                         SELECT pg_sleep(0.002), pg_backend_pid(); COMMIT"
                    ))
                    .await
                    .expect("transaction");
                let pids: Vec<String> = rows
                    .iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(r) => r.get(r.len() - 1).map(str::to_string),
                        _ => None,
                    })
                    .collect();
                assert_eq!(pids.len(), 2);
                assert_eq!(pids[0], pids[1], "one backend for the whole transaction");
                seen.insert(pids[0].parse::<i32>().expect("pid"));
            }
            (c, seen)
        }));
    }
    let mut by_pid: BTreeMap<i32, usize> = BTreeMap::new();
    for t in tasks {
        let (_, seen) = within(120, "clients", t).await.expect("client task");
        for p in seen {
            *by_pid.entry(p).or_default() += 1;
        }
    }
    assert!(
        by_pid.len() <= 2,
        "at most max_active_per_region backends: {by_pid:?}"
    );
    assert!(
        by_pid.values().any(|&clients| clients > 1),
        "a backend served several clients: {by_pid:?}"
    );
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM tx_pool", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 6 * 25, "every transaction committed once");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_keep_state_keep_their_backend_and_others_never_see_it() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(transaction_mode(&regions, 5, 30)).await;

    // Session settings.
    let setter = proxy_client(&proxy, "eu").await;
    setter
        .batch_execute("SET statement_timeout = '99s'")
        .await
        .expect("set");
    // A named prepared statement (tokio-postgres names its statements).
    let preparer = proxy_client(&proxy, "eu").await;
    let stmt = preparer
        .prepare("SELECT pg_backend_pid()")
        .await
        .expect("prepare");
    // A session-level advisory lock.
    let locker = proxy_client(&proxy, "eu").await;
    one(&locker, "SELECT pg_advisory_lock(7)").await;
    // A temporary table (DDL).
    let temp = proxy_client(&proxy, "eu").await;
    temp.batch_execute("CREATE TEMP TABLE mine (x int); INSERT INTO mine VALUES (1)")
        .await
        .expect("temp table");

    let (setter_pid, preparer_pid, locker_pid, temp_pid) = (
        pid(&setter).await,
        preparer.query_one(&stmt, &[]).await.expect("run").get(0),
        pid(&locker).await,
        pid(&temp).await,
    );
    let pinned = BTreeSet::from([setter_pid, preparer_pid, locker_pid, temp_pid]);
    assert_eq!(pinned.len(), 4, "each kept a backend of its own");

    // A session that keeps nothing never gets one of theirs, nor their
    // state; theirs stay where they are.
    let plain = proxy_client(&proxy, "eu").await;
    for _ in 0..20 {
        assert!(!pinned.contains(&pid(&plain).await));
        assert_eq!(one(&plain, "SHOW statement_timeout").await, "0");
        assert_eq!(pid(&setter).await, setter_pid);
        assert_eq!(one(&setter, "SHOW statement_timeout").await, "99s");
        let p: i32 = preparer.query_one(&stmt, &[]).await.expect("run").get(0);
        assert_eq!(p, preparer_pid);
        assert_eq!(pid(&locker).await, locker_pid);
        assert_eq!(one(&temp, "SELECT count(*) FROM mine").await, "1");
    }

    // When the locker leaves, its backend is reset (DISCARD ALL) before
    // anyone else gets it: the lock goes with the session.
    drop(locker);
    let direct = regions.client("eu").await;
    assert!(
        support::wait_until(10, || support::is_pooled(&direct, locker_pid)).await,
        "the locker's backend was pooled"
    );
    let locks: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .expect("pg_locks")
        .get(0);
    assert_eq!(locks, 0, "the advisory lock went with its session");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_region_makes_statements_wait_and_then_refuses_them() {
    let regions = TestRegions::start().await;
    let mut config = transaction_mode(&regions, 1, 1);
    config.metrics.address = Some("127.0.0.1:0".into());
    let proxy = start_proxy(config).await;
    let holder = proxy_client(&proxy, "eu").await;
    let waiter = proxy_client(&proxy, "eu").await;
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("open a transaction");

    // The only backend is in the holder's transaction: a statement waits
    // for it, then is refused, and the session goes on.
    let started = std::time::Instant::now();
    let err = within(10, "refused", waiter.simple_query("SELECT 1"))
        .await
        .expect_err("no backend free");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert!(db.message().contains("region eu"), "{}", db.message());
    assert!(db
        .hint()
        .is_some_and(|h| h.contains("max_active_per_region")));

    // A waiting statement goes ahead as soon as the backend comes back.
    let queued = tokio::spawn(async move {
        let p = pid(&waiter).await;
        (waiter, p)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let holder_pid = pid(&holder).await;
    holder.batch_execute("COMMIT").await.expect("commit");
    let (waiter, waiter_pid) = within(10, "queued statement", queued).await.expect("join");
    assert_eq!(waiter_pid, holder_pid, "the one backend, handed over");
    assert_eq!(one(&waiter, "SELECT 2").await, "2");

    let text = proxy.metrics().render().expect("metrics are on");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{region=\"eu\"}} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .to_string()
    };
    assert_eq!(value("regionguard_backend_acquire_timeouts_total"), "1");
    // The refused statement and the queued one waited; so did each
    // client's first use of the region while the other kept its backend
    // between transactions (nobody waited then).
    let waits: u64 = value("regionguard_backend_acquire_waits_total")
        .parse()
        .expect("a count");
    assert!(waits >= 2, "{waits}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_only_the_statement_its_client_runs() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(transaction_mode(&regions, 1, 30)).await;
    let first = proxy_client(&proxy, "eu").await;
    let second = proxy_client(&proxy, "eu").await;

    // The first client's cancel key reaches its running statement.
    let token = first.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    let err = within(10, "cancelled", first.simple_query("SELECT pg_sleep(30)"))
        .await
        .expect_err("cancelled");
    canceller.await.expect("join").expect("cancel");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    let first_pid = pid(&first).await;

    // Between its transactions the first client holds no backend: its
    // cancel must not reach the second client's statement on that backend.
    let token = first.cancel_token();
    let running = tokio::spawn(async move {
        let rows = second
            .simple_query("SELECT pg_sleep(1), pg_backend_pid()")
            .await;
        (second, rows)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.expect("send cancel");
    let (second, rows) = within(10, "second client", running).await.expect("join");
    let rows = rows.expect("not cancelled by another client's key");
    let second_pid = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
            _ => None,
        })
        .expect("a row");
    assert_eq!(second_pid, first_pid.to_string(), "the same backend");
    assert_eq!(one(&second, "SELECT 3").await, "3");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeps_its_backend_until_another_waits_for_one() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(transaction_mode(&regions, 2, 30)).await;
    let a = proxy_client(&proxy, "eu").await;
    let b = proxy_client(&proxy, "eu").await;
    let (a_pid, b_pid) = (pid(&a).await, pid(&b).await);
    assert_ne!(a_pid, b_pid);
    // Nobody waits: each client's transactions stay on its backend, with
    // no trip through the pool.
    for _ in 0..10 {
        assert_eq!(pid(&a).await, a_pid);
        assert_eq!(pid(&b).await, b_pid);
    }
    // A third client has to wait for one of the two: the idle clients are
    // asked, and one hands its backend over between its transactions.
    let c = within(10, "third client", proxy_client(&proxy, "eu")).await;
    let c_pid = within(10, "third client's statement", pid(&c)).await;
    assert!(c_pid == a_pid || c_pid == b_pid, "{c_pid}: one of theirs");
    // Everyone goes on, taking turns on the two backends.
    for _ in 0..5 {
        for client in [&a, &b, &c] {
            let p = within(10, "a turn", pid(client)).await;
            assert!(p == a_pid || p == b_pid, "{p}: no third backend");
        }
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_lost_between_transactions_is_replaced_without_an_error() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(transaction_mode(&regions, 2, 30)).await;
    let client = proxy_client(&proxy, "eu").await;
    let first = pid(&client).await;
    let direct = regions.client("eu").await;
    direct
        .query_one("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .expect("terminate the kept backend");
    assert!(
        support::wait_until(10, || async {
            direct
                .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&first])
                .await
                .expect("pg_stat_activity")
                .is_none()
        })
        .await,
        "backend {first} ended"
    );
    // The proxy sees the end while the client is idle (a statement sent in
    // the same instant would find the connection broken, as in session
    // mode).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The session kept no state there: its next statement runs on another
    // backend instead of failing.
    let second = within(10, "next statement", pid(&client)).await;
    assert_ne!(second, first);
    assert_eq!(one(&client, "SELECT 5").await, "5");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_rows_stay_in_their_regions_while_backends_are_shared() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let mut config =
        regions.routing_config(&[("acme", "eu"), ("globex", "us"), ("initech", "apac")]);
    config.backend_pool.mode = PoolMode::Transaction;
    config.backend_pool.max_active_per_region = 1;
    let proxy = start_proxy(config).await;

    // Four clients, each writing for every tenant in turn, one backend per
    // region: the backends change hands between transactions.
    let tenants = ["acme", "globex", "initech"];
    let mut tasks = Vec::new();
    for c in 0..4i64 {
        let client = support::tenant_client(&proxy, None).await;
        tasks.push(tokio::spawn(async move {
            for n in 0..9i64 {
                let tenant = tenants[(n as usize + c as usize) % 3];
                let id = c * 100 + n;
                client
                    .batch_execute(&format!(
                        "SET regionguard.tenant = '{tenant}'; \
                         INSERT INTO customers (tenant_id, id, email) VALUES ('{tenant}', {id}, 'x@y')"
                    ))
                    .await
                    .expect("insert");
                let rows = client
                    .simple_query(&format!(
                        "SELECT id FROM customers WHERE tenant_id = '{tenant}' AND id = {id}"
                    ))
                    .await
                    .expect("read back");
                assert_eq!(support::row_count(&rows), 1, "{tenant} {id} read back");
            }
        }));
    }
    for t in tasks {
        within(120, "tenant clients", t).await.expect("client task");
    }
    for (tenant, region) in [("acme", "eu"), ("globex", "us"), ("initech", "apac")] {
        let rows = regions.rows_in(region, "customers").await;
        assert_eq!(rows.len(), 12, "{region}: {rows:?}");
        assert!(rows.iter().all(|(t, _)| t == tenant), "{region}: {rows:?}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_statement_takes_a_backend_again_or_is_refused_like_any_other() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(transaction_mode(&regions, 1, 1)).await;
    let repeater = proxy_client(&proxy, "eu").await;
    // The same statement again and again: the proxy sends its repeats in
    // one step (ADR 20).
    for _ in 0..3 {
        assert_eq!(one(&repeater, "SELECT 41 + 1").await, "42");
    }
    // Another client needs the only backend and keeps it in a transaction.
    let holder = proxy_client(&proxy, "eu").await;
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("open a transaction");
    let err = within(10, "refused", repeater.simple_query("SELECT 41 + 1"))
        .await
        .expect_err("no backend free");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    holder.batch_execute("COMMIT").await.expect("commit");
    // The backend came back: the repeat takes it and runs.
    for _ in 0..3 {
        assert_eq!(
            within(10, "repeat", one(&repeater, "SELECT 41 + 1")).await,
            "42"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_state_loses_its_connection_with_its_backend() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(transaction_mode(&regions, 2, 30)).await;
    let client = proxy_client(&proxy, "eu").await;
    // Kept between transactions first, then given state it relies on.
    assert_eq!(one(&client, "SELECT 1").await, "1");
    client
        .batch_execute("CREATE TEMP TABLE mine (x int)")
        .await
        .expect("temp table");
    let backend = pid(&client).await;
    let direct = regions.client("eu").await;
    direct
        .query_one("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .expect("terminate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Not a silent new backend without the temp table: the session ends
    // as its backend did.
    let err = within(
        10,
        "after the loss",
        client.simple_query("SELECT * FROM mine"),
    )
    .await
    .expect_err("the session's backend is gone");
    let code = support::sqlstate(&err);
    assert!(
        code.as_deref() == Some("08006") || err.is_closed(),
        "a connection error, not {err:?}"
    );
    proxy.shutdown().await;
}
