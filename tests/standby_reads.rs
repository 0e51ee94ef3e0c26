//! Reads from standbys (`regions.<name>.read_from_standbys = true`), on a
//! region with a real primary and a streaming hot standby: reads outside
//! transactions land on the standby (and still decrypt), everything that
//! writes, locks, runs in a transaction or follows the session's DDL lands
//! on the primary, a dead standby sends reads to the primary, and with the
//! setting off nothing reaches the standby.

mod metrics_support;
mod support;

use regionguard::config::{AuthMethod, Config};
use regionguard::localpg::Cluster;
use support::raw;
use support::*;

const IN_RECOVERY: &str = "SELECT pg_is_in_recovery()";

/// The routing config with `customers.email` encrypted, trust auth (for
/// the raw-protocol session), and eu served by `primary` and `standby`
/// (the standby listed first), reading from standbys when `on`.
fn config(regions: &TestRegions, keys: &RootKeys, standby: &Cluster, on: bool) -> Config {
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    config.auth.method = AuthMethod::Trust;
    keys.apply(&mut config);
    classify_customers(&mut config, false);
    list_standby_first(&mut config, "eu", standby.port());
    if let Some(eu) = config.regions.get_mut("eu") {
        eu.read_from_standbys = on;
    }
    config
}

/// Whether `sql` (one boolean column) answered true, in the simple protocol.
async fn simple_bool(client: &tokio_postgres::Client, sql: &str) -> bool {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"));
    row.as_deref() == Some("t")
}

/// Whether `sql` with `$1` bound to 1 answered true, in the extended
/// protocol (a prepared statement, then Bind/Execute/Sync).
async fn extended_bool(client: &tokio_postgres::Client, sql: &str) -> bool {
    client
        .query_one(sql, &[&1i32])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Whether the count `sql` returns reaches `n` within `secs` seconds.
async fn count_reaches(client: &tokio_postgres::Client, sql: &str, n: i64, secs: u64) -> bool {
    wait_until(secs, || async {
        client
            .query_one(sql, &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == n)
    })
    .await
}

/// Waits until the standby has replayed the update of acme's customer 1.
async fn replicated(standby: &tokio_postgres::Client) {
    let seen = count_reaches(
        standby,
        "SELECT count(*) FROM customers WHERE tenant_id = 'acme' AND id = 1 AND full_name = 'Ann'",
        1,
        20,
    )
    .await;
    assert!(seen, "the standby replays the insert and the update");
}

/// Parse, Bind and Execute of `sql`: unnamed, text format, no Sync.
fn parse_bind_execute(sql: &str) -> Vec<u8> {
    let mut parse = vec![0u8];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut out = raw::message(b'P', &parse);
    out.extend(raw::message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    out.extend(raw::message(b'E', &[0, 0, 0, 0, 0]));
    out
}

/// One extended-protocol batch (one Sync) that reads and writes: Parse,
/// Bind and Execute of each statement, unnamed, text format.
async fn pipelined_batch(s: &mut tokio::net::TcpStream, statements: &[&str]) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncWriteExt;
    let mut out: Vec<u8> = statements
        .iter()
        .flat_map(|sql| parse_bind_execute(sql))
        .collect();
    out.extend(raw::message(b'S', &[]));
    s.write_all(&out).await.expect("send the batch");
    raw::read_to_ready(s).await
}

/// Writes one extended-protocol batch per statement (Parse, Bind,
/// Execute, Sync; unnamed, text format), all in one write, reading nothing.
async fn send_batches(s: &mut tokio::net::TcpStream, statements: &[&str]) {
    use tokio::io::AsyncWriteExt;
    let mut out = Vec::new();
    for sql in statements {
        out.extend(parse_bind_execute(sql));
        out.extend(raw::message(b'S', &[]));
    }
    s.write_all(&out).await.expect("send the batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_outside_transactions_go_to_the_standby_and_everything_else_to_the_primary() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    regions
        .client("eu")
        .await
        .batch_execute("CREATE SEQUENCE ids")
        .await
        .expect("create a sequence in eu");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut standby, standby_direct) = regions.start_standby("eu", dir.path()).await;
    let keys = RootKeys::write(11);
    let mut on = config(&regions, &keys, &standby, true);
    on.metrics.address = Some("127.0.0.1:0".into());
    let proxy = start_proxy(on).await;
    let metrics = proxy.metrics_addr().expect("metrics endpoint on");
    let client = tenant_client(&proxy, Some("acme")).await;

    // Reads outside transactions: the standby, in both protocols.
    assert!(simple_bool(&client, IN_RECOVERY).await, "simple protocol");
    assert!(
        extended_bool(&client, "SELECT pg_is_in_recovery() AND $1::int = 1").await,
        "extended protocol"
    );
    let mut session = raw::trusted_session_with(
        proxy.local_addr(),
        &[("options", "-c regionguard.tenant=acme")],
    )
    .await;
    let answer = raw::extended_text_query(&mut session, IN_RECOVERY, &[]).await;
    assert_eq!(
        raw::first_column(&answer),
        vec![Some("t".to_string())],
        "unnamed Parse/Bind/Execute/Sync in one write"
    );

    // Writes go to the primary; the encrypted column is ciphertext there.
    client
        .execute(
            "INSERT INTO customers (tenant_id, id, email) VALUES ('acme', 1, 'ann@example.com')",
            &[],
        )
        .await
        .expect("insert through the proxy");
    client
        .execute(
            "UPDATE customers SET full_name = $1 WHERE tenant_id = 'acme' AND id = $2",
            &[&"Ann", &1i64],
        )
        .await
        .expect("update through the proxy");
    let on_primary = regions
        .client("eu")
        .await
        .query_one(
            "SELECT email, full_name FROM customers WHERE tenant_id = 'acme' AND id = 1",
            &[],
        )
        .await
        .expect("read the primary directly");
    let stored: String = on_primary.get(0);
    assert!(!stored.contains("ann@example.com"), "stored encrypted");
    assert_eq!(on_primary.get::<_, String>(1), "Ann");

    // A tenant-scoped read on the standby returns the rows, decrypted.
    replicated(&standby_direct).await;
    let row = client
        .query_one(
            "SELECT email, full_name, pg_is_in_recovery() FROM customers WHERE tenant_id = 'acme' AND id = $1",
            &[&1i64],
        )
        .await
        .expect("read through the proxy");
    assert_eq!(row.get::<_, String>(0), "ann@example.com");
    assert_eq!(row.get::<_, String>(1), "Ann");
    assert!(row.get::<_, bool>(2), "read on the standby");
    let found = client
        .query(
            "SELECT id FROM customers WHERE tenant_id = 'acme' AND email = $1",
            &[&"ann@example.com"],
        )
        .await
        .expect("lookup on an encrypted column");
    assert_eq!(found.len(), 1, "equality on the encrypted column");

    // Transactions, locks and writing functions: the primary.
    client.batch_execute("BEGIN").await.expect("BEGIN");
    assert!(
        !simple_bool(&client, IN_RECOVERY).await,
        "inside BEGIN … COMMIT"
    );
    assert!(
        !extended_bool(&client, "SELECT pg_is_in_recovery() AND $1::int = 1").await,
        "extended inside BEGIN … COMMIT"
    );
    client.batch_execute("COMMIT").await.expect("COMMIT");
    assert!(simple_bool(&client, IN_RECOVERY).await, "after COMMIT");
    assert!(
        !simple_bool(
            &client,
            "SELECT pg_is_in_recovery() FROM customers WHERE tenant_id = 'acme' FOR UPDATE"
        )
        .await,
        "FOR UPDATE"
    );
    let row = client
        .query_one("SELECT nextval('ids') > 0, pg_is_in_recovery()", &[])
        .await
        .expect("nextval through the proxy");
    assert!(!row.get::<_, bool>(1), "nextval");

    // A batch that reads and writes runs on the primary.
    let answer = pipelined_batch(
        &mut session,
        &[
            IN_RECOVERY,
            "INSERT INTO customers (tenant_id, id) VALUES ('acme', 2)",
        ],
    )
    .await;
    assert!(raw::first_error(&answer).is_none(), "{answer:?}");
    assert_eq!(raw::first_column(&answer), vec![Some("f".to_string())]);
    assert_eq!(
        regions.rows_in("eu", "customers").await,
        vec![("acme".to_string(), 1), ("acme".to_string(), 2)]
    );

    // After the session's DDL (a temporary table), its reads stay on the primary.
    let temp = tenant_client(&proxy, Some("acme")).await;
    temp.batch_execute("CREATE TEMP TABLE scratch (a int); INSERT INTO scratch VALUES (7)")
        .await
        .expect("temporary table through the proxy");
    let row = temp
        .query_one("SELECT a, pg_is_in_recovery() FROM scratch", &[])
        .await
        .expect("read the temporary table");
    assert_eq!(row.get::<_, i32>(0), 7);
    assert!(!row.get::<_, bool>(1), "after DDL, the primary");
    assert!(!simple_bool(&temp, IN_RECOVERY).await);

    // Session state the standby backend would not share keeps the
    // session's reads on the primary: SET through the extended protocol,
    // set_config().
    let extended_set = tenant_client(&proxy, Some("acme")).await;
    assert!(simple_bool(&extended_set, IN_RECOVERY).await);
    extended_set
        .execute("SET search_path TO public", &[])
        .await
        .expect("SET through the extended protocol");
    assert!(
        !simple_bool(&extended_set, IN_RECOVERY).await,
        "after an extended SET"
    );
    let set_config = tenant_client(&proxy, Some("acme")).await;
    assert!(
        !simple_bool(
            &set_config,
            "SELECT set_config('search_path', 'public', false) IS NULL"
        )
        .await
    );
    assert!(
        !simple_bool(&set_config, IN_RECOVERY).await,
        "after set_config"
    );

    // Each read sent to the standby was counted under its region, and
    // nothing else was.
    let (_, scrape) = metrics_support::get(metrics, "/metrics").await;
    let counted = |region| {
        metrics_support::must(
            &scrape,
            "regionguard_standby_reads_total",
            &[("region", region)],
        )
    };
    // Five reads through the driver (simple and extended), the raw batch,
    // and the first read of the session that then ran an extended SET.
    assert_eq!(counted("eu"), 7.0, "standby reads of eu");
    assert_eq!(counted("us"), 0.0);

    // Health: the standby host is up as a standby; eu is up through its
    // primary, and the proxy is ready.
    let standby_host = format!("127.0.0.1:{}", standby.port());
    let primary_host = format!("127.0.0.1:{}", regions.port("eu"));
    let checked = wait_until(10, || async {
        metrics_support::readyz(metrics).await.1["regions"]["eu"]["hosts"][&standby_host]
            == "standby"
    })
    .await;
    let (status, body) = metrics_support::readyz(metrics).await;
    assert!(checked, "standby host health: {body}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["regions"]["eu"]["status"], "up", "{body}");
    assert_eq!(
        body["regions"]["eu"]["hosts"][&primary_host], "up",
        "{body}"
    );
    let (_, scrape) = metrics_support::get(metrics, "/metrics").await;
    for host in [&standby_host, &primary_host] {
        assert_eq!(
            metrics_support::must(
                &scrape,
                "regionguard_backend_host_up",
                &[("region", "eu"), ("host", host)]
            ),
            1.0,
            "{host}"
        );
    }

    // Pipelined reads (a batch each, several batches per read) keep their
    // order and answers, wherever each batch runs.
    let pipelined = (1..=8i32).map(|i| {
        let client = &client;
        async move {
            let row = client
                .query_one("SELECT $1::int + 0", &[&i])
                .await
                .expect("pipelined read");
            (i, row.get::<_, i32>(0))
        }
    });
    for (sent, got) in futures_util::future::join_all(pipelined).await {
        assert_eq!(sent, got, "answers stay in order");
    }

    // With the setting off (the default), reads stay on the primary.
    let off = start_proxy(config(&regions, &keys, &standby, false)).await;
    let plain = tenant_client(&off, Some("acme")).await;
    assert!(!simple_bool(&plain, IN_RECOVERY).await, "off: simple");
    assert!(
        !extended_bool(&plain, "SELECT pg_is_in_recovery() AND $1::int = 1").await,
        "off: extended"
    );
    off.shutdown().await;

    // The standby stops during a read: that read fails with 08006 and a
    // hint, and so does a read pipelined behind it on the same standby
    // connection (raw session: two batches in one write); the sessions go
    // on, and their reads go to the primary.
    let (long_read, pipelined, stopped) = tokio::join!(
        client.simple_query("SELECT pg_sleep(30), pg_is_in_recovery()"),
        async {
            send_batches(&mut session, &["SELECT pg_sleep(30)", IN_RECOVERY]).await;
            (
                raw::read_to_ready(&mut session).await,
                raw::read_to_ready(&mut session).await,
            )
        },
        async {
            let running = count_reaches(
                &standby_direct,
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'",
                2,
                10,
            )
            .await;
            (running, standby.stop().await)
        }
    );
    let (running, stop) = stopped;
    assert!(running, "both long reads run on the standby");
    stop.expect("stop the standby");
    let err = long_read.expect_err("the read whose standby stopped fails");
    let db = err
        .as_db_error()
        .expect("an ErrorResponse, not a broken connection");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(db.message().contains("standby of region eu"), "{db:?}");
    assert!(db.hint().is_some_and(|h| h.contains("retry")), "{db:?}");
    for (what, batch) in [
        ("the long read", &pipelined.0),
        ("the read behind it", &pipelined.1),
    ] {
        let error = raw::first_error(batch).unwrap_or_else(|| panic!("{what} fails: {batch:?}"));
        assert_eq!(
            error.get(&b'C').map(String::as_str),
            Some("08006"),
            "{what}: {error:?}"
        );
        assert_eq!(
            batch.last().map(|m| m.1.as_slice()),
            Some(&b"I"[..]),
            "{what}: idle after it"
        );
    }
    let answer = pipelined_batch(&mut session, &[IN_RECOVERY]).await;
    assert_eq!(
        raw::first_column(&answer),
        vec![Some("f".to_string())],
        "the raw session goes on, on the primary"
    );
    assert!(
        !simple_bool(&client, IN_RECOVERY).await,
        "the same session, on the primary"
    );
    assert!(
        !extended_bool(&client, "SELECT pg_is_in_recovery() AND $1::int = 1").await,
        "the same session, extended protocol"
    );
    let after = tenant_client(&proxy, Some("acme")).await;
    for _ in 0..3 {
        assert!(
            !simple_bool(&after, IN_RECOVERY).await,
            "no standby: simple"
        );
        assert!(
            !extended_bool(&after, "SELECT pg_is_in_recovery() AND $1::int = 1").await,
            "no standby: extended"
        );
    }
    let rows = after
        .query(
            "SELECT email FROM customers WHERE tenant_id = 'acme' ORDER BY id",
            &[],
        )
        .await
        .expect("read with the standby down");
    assert_eq!(rows.len(), 2);
    proxy.shutdown().await;
}
