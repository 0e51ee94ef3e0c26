//! The proxy under hostile or unlucky conditions: malformed input, clients
//! vanishing mid-transaction, backends killed, too many clients, shutdown.

mod support;

use regionguard::config::AuthMethod;
use std::time::Duration;
use support::raw::{self, fields, message, read_message, startup_packet};
use support::{
    connect, proxy_client, proxy_pg_config, start_proxy, wait_until, within, TestRegions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

/// Reads everything the proxy sends until it closes (bounded).
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = within(15, "proxy closes the connection", s.read_to_end(&mut out)).await;
    out
}

/// Checks the bytes are one ErrorResponse (and nothing else usable) and
/// returns its SQLSTATE.
fn error_code(bytes: &[u8], what: &str) -> String {
    assert!(!bytes.is_empty(), "{what}: no answer before close");
    assert_eq!(bytes[0], b'E', "{what}: first byte {:?}", bytes[0] as char);
    let len = i32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    let f = fields(&bytes[5..1 + len]);
    assert_eq!(
        f.get(&b'S').map(String::as_str),
        Some("FATAL"),
        "{what}: {f:?}"
    );
    f.get(&b'C').cloned().unwrap_or_default()
}

async fn still_serves(proxy: &regionguard::server::Proxy) {
    let client = within(10, "a normal client after abuse", proxy_client(proxy, "eu")).await;
    let n: i32 = client
        .query_one("SELECT 11", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(n, 11);
}

fn trust_config(regions: &TestRegions) -> regionguard::config::Config {
    let mut config = regions.proxy_config();
    config.auth.method = AuthMethod::Trust;
    config
}

/// A tokio-postgres client through `proxy` in trust mode whose connection
/// result (the error that ended it) can be awaited.
async fn watched_client(
    proxy: &regionguard::server::Proxy,
    app: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let mut config = proxy_pg_config(proxy, Some("eu"));
    config.application_name(app);
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    (client, tokio::spawn(connection))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_startup_gets_an_error_or_a_close() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let addr = proxy.local_addr();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad startup length 2", vec![0, 0, 0, 2, 0, 3, 0, 0]),
        (
            "negative startup length",
            vec![0xff, 0xff, 0xff, 0xf0, 1, 2, 3, 4],
        ),
        ("startup length over 10000", vec![0, 1, 0, 0, 0, 3, 0, 0]),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("protocol 9.9", {
            let mut p = startup_packet(&[("user", "app")]);
            p[4..8].copy_from_slice(&[0, 9, 0, 9]);
            p
        }),
        ("unterminated parameters", {
            let mut p = startup_packet(&[("user", "app")]);
            let n = p.len();
            p[n - 1] = b'x';
            p
        }),
        ("non-UTF-8 parameters", {
            let mut p = startup_packet(&[("user", "app")]);
            p[9] = 0xff;
            p
        }),
        ("malformed SSLRequest", {
            let mut p = 12i32.to_be_bytes().to_vec();
            p.extend_from_slice(&80877103i32.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0]);
            p
        }),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&bytes).await.expect("send garbage");
        let answer = read_to_close(&mut s).await;
        let code = error_code(&answer, what);
        assert!(
            ["08P01", "0A000", "22021"].contains(&code.as_str()),
            "{what}: SQLSTATE {code}"
        );
    }
    // Pseudo-random byte strings, half-closed after sending: an error
    // response or a plain close, never a hang or a crash.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..40 {
        let len = 1 + (i * 37) % 300;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let answer = read_to_close(&mut s).await;
        if !answer.is_empty() {
            assert!(
                answer[0] == b'E' || (answer[0] == b'N' && bytes.len() >= 8),
                "random case {i}: answer starts with {:?}",
                answer[0] as char
            );
        }
    }
    still_serves(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_after_startup_get_an_error() {
    let regions = TestRegions::start().await;
    let mut config = trust_config(&regions);
    config.listen.max_message_bytes = 1 << 20;
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();

    // A regular message with length 2.
    let mut s = raw::trusted_session(addr).await;
    s.write_all(&[b'Q', 0, 0, 0, 2]).await.expect("send");
    let answer = read_to_close(&mut s).await;
    assert_eq!(error_code(&answer, "length 2"), "08P01");

    // A message larger than listen.max_message_bytes (only its header sent).
    let mut s = raw::trusted_session(addr).await;
    let mut big = vec![b'Q'];
    big.extend_from_slice(&(2i32 << 20).to_be_bytes());
    big.extend_from_slice(b"SELECT ");
    s.write_all(&big).await.expect("send");
    let answer = read_to_close(&mut s).await;
    assert_eq!(error_code(&answer, "oversized"), "54000");

    // The same, fully sent by a driver: a 2 MiB parameter.
    let client = connect(&proxy_pg_config(&proxy, None))
        .await
        .expect("connect");
    let err = within(
        20,
        "oversized Bind",
        client.query("SELECT length($1)", &[&"x".repeat(2 << 20)]),
    )
    .await
    .expect_err("oversized message refused");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("54000"), "{err:?}");

    // An unknown message type.
    let mut s = raw::trusted_session(addr).await;
    s.write_all(&message(b'y', b"hello")).await.expect("send");
    let answer = read_to_close(&mut s).await;
    assert_eq!(error_code(&answer, "unknown type"), "08P01");

    // A message under the limit works.
    let mut s = raw::trusted_session(addr).await;
    let sql = format!("SELECT length('{}')", "y".repeat(500_000));
    let reply = raw::simple_query(&mut s, &sql).await;
    assert!(reply.iter().any(|(t, _)| *t == b'D'));
    still_serves_trust(&proxy).await;
    proxy.shutdown().await;
}

/// Postgres reads messages one at a time: a query sent before a malformed
/// message is executed and answered, then the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn messages_before_a_malformed_one_are_still_answered() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(trust_config(&regions)).await;
    let addr = proxy.local_addr();
    // A valid query right before garbage: Postgres answers it, then FATAL.
    let direct = raw::direct_session(regions.port("eu")).await;
    let via = raw::trusted_session(addr).await;
    let mut tags = Vec::new();
    for mut s in [direct, via] {
        let mut bytes = message(b'Q', b"SELECT 1\0");
        bytes.extend_from_slice(&[b'Q', 0, 0, 0, 1]);
        s.write_all(&bytes).await.expect("send");
        let mut seen = Vec::new();
        while let Some((tag, body)) = within(10, "read", read_message(&mut s)).await {
            seen.push(tag as char);
            if tag == b'E' {
                assert_eq!(fields(&body).get(&b'C').map(String::as_str), Some("08P01"));
            }
        }
        tags.push(seen);
    }
    // Postgres answers the query, then closes; its "invalid message length"
    // is a COMMERROR (server log only), so no ErrorResponse reaches the client.
    assert_eq!(tags[0], vec!['T', 'D', 'C', 'Z'], "direct");
    // The proxy may add its own FATAL, but must not lose the answer.
    assert!(
        tags[1].starts_with(&tags[0]) && tags[1].len() <= tags[0].len() + 1,
        "through the proxy: {:?}, direct: {:?}",
        tags[1],
        tags[0]
    );
    proxy.shutdown().await;
}

async fn still_serves_trust(proxy: &regionguard::server::Proxy) {
    let client = within(
        10,
        "a normal client",
        connect(&proxy_pg_config(proxy, Some("us"))),
    )
    .await
    .expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_transaction_leaves_nothing() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(trust_config(&regions)).await;
    let direct = regions.client("eu").await;
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("create");
    let sessions = |app: &'static str| {
        let direct = &direct;
        move || async move {
            let n: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&app],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            n == 0
        }
    };

    // A driver that is dropped (it may send Terminate).
    let (client, conn) = watched_client(&proxy, "vanish-driver").await;
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("begin; insert");
    assert!(
        !sessions("vanish-driver")().await,
        "the backend session exists"
    );
    drop(client);
    let _ = within(10, "connection ends", conn).await;
    assert!(
        wait_until(5, sessions("vanish-driver")).await,
        "backend session left behind"
    );

    // A raw socket closed abruptly, without Terminate, mid-transaction.
    let mut s = TcpStream::connect(proxy.local_addr())
        .await
        .expect("connect");
    s.write_all(&startup_packet(&[
        ("user", "app"),
        ("database", "app"),
        ("application_name", "vanish-raw"),
    ]))
    .await
    .expect("startup");
    raw::read_until(&mut s, b'Z').await.expect("ready");
    let reply = raw::simple_query(&mut s, "BEGIN; INSERT INTO t VALUES (2)").await;
    assert_eq!(reply.last().unwrap().1, b"T", "in a transaction");
    // Also leave an extended-protocol statement half sent.
    s.write_all(&message(b'P', b"\0INSERT INTO t VALUES (3)\0\0\0"))
        .await
        .expect("parse");
    s.write_all(&[b'B', 0, 0]).await.expect("partial bind");
    drop(s);
    assert!(
        wait_until(5, sessions("vanish-raw")).await,
        "backend session left behind"
    );

    let n: i64 = direct
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "nothing committed");
    still_serves_trust(&proxy).await;
    proxy.shutdown().await;
}

/// The pid of the client's backend session, read with a simple query: a
/// prepared one leaves tokio-postgres closing its statement in the
/// background, and a FATAL that arrives before that Close is answered is
/// taken as the Close's (ignored) answer, so the connection would end as
/// merely closed — directly against Postgres as through the proxy.
async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .expect("pid")
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .and_then(|pid| pid.parse().ok())
        .expect("a pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_terminated_reports_an_error_and_the_proxy_recovers() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(trust_config(&regions)).await;
    let direct = regions.client("eu").await;

    // Killed while a query runs: that query fails with 57P01 (or class 08).
    let (client, conn) = watched_client(&proxy, "kill-busy").await;
    let pid = backend_pid(&client).await;
    let busy =
        tokio::spawn(async move { client.simple_query("SELECT pg_sleep(20)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed: bool = direct
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate")
        .get(0);
    assert!(killed);
    let err = within(10, "busy query fails", busy)
        .await
        .expect("join")
        .expect_err("query fails");
    let code = support::sqlstate(&err).unwrap_or_default();
    assert!(code == "57P01" || code.starts_with("08"), "busy: {err:?}");
    let _ = within(10, "connection ends", conn).await;

    // Killed while idle: the connection ends with 57P01 (or class 08), and
    // the client's next call fails.
    let (client, conn) = watched_client(&proxy, "kill-idle").await;
    let pid = backend_pid(&client).await;
    direct
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    let ended = within(10, "idle connection ends", conn)
        .await
        .expect("join");
    let err = ended.expect_err("the connection ends with an error");
    let code = support::sqlstate(&err).unwrap_or_default();
    assert!(code == "57P01" || code.starts_with("08"), "idle: {err:?}");
    assert!(client.simple_query("SELECT 1").await.is_err());

    // Raw client: the proxy relays Postgres's FATAL and closes.
    let mut s = raw::trusted_session(proxy.local_addr()).await;
    let reply = raw::simple_query(&mut s, "SELECT pg_backend_pid()").await;
    let pid: i32 = reply
        .iter()
        .find(|(t, _)| *t == b'D')
        .map(|(_, body)| std::str::from_utf8(&body[6..]).unwrap().parse().unwrap())
        .expect("a row");
    direct
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    let answer = read_to_close(&mut s).await;
    let code = error_code(&answer, "terminated backend");
    assert!(code == "57P01" || code.starts_with("08"), "raw: {code}");

    still_serves_trust(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_refuses_the_next_with_53300() {
    let regions = TestRegions::start().await;
    let mut config = regions.proxy_config();
    config.listen.max_clients = 2;
    let proxy = start_proxy(config).await;
    let a = proxy_client(&proxy, "eu").await;
    let b = proxy_client(&proxy, "us").await;
    let err = within(
        10,
        "third client",
        connect(&proxy_pg_config(&proxy, Some("apac"))),
    )
    .await
    .map(|_| ())
    .expect_err("the third client is refused");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    // The first two still work.
    a.simple_query("SELECT 1").await.expect("a");
    b.simple_query("SELECT 1").await.expect("b");
    // Once one leaves, a new client gets its place.
    drop(a);
    let ok = wait_until(5, || async {
        connect(&proxy_pg_config(&proxy, Some("apac")))
            .await
            .is_ok()
    })
    .await;
    assert!(ok, "a slot frees up when a client disconnects");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_open_transactions_commit() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let addr = proxy.local_addr();
    let direct = regions.client("eu").await;
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("create");
    let (in_tx, in_tx_conn) = {
        let (c, conn) = proxy_pg_config(&proxy, Some("eu"))
            .connect(NoTls)
            .await
            .expect("connect");
        (c, tokio::spawn(conn))
    };
    let (idle, idle_conn) = {
        let (c, conn) = proxy_pg_config(&proxy, Some("eu"))
            .connect(NoTls)
            .await
            .expect("connect");
        (c, tokio::spawn(conn))
    };
    in_tx
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("begin; insert");
    idle.simple_query("SELECT 1")
        .await
        .expect("idle client works");

    let shutdown = tokio::spawn(proxy.shutdown());
    // The idle session is closed at once, with 57P01.
    let ended = within(10, "idle session closed", idle_conn)
        .await
        .expect("join");
    let err = ended.expect_err("closed by shutdown");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    // New connections are refused.
    let refused = within(10, "connect during shutdown", async {
        let mut config = tokio_postgres::Config::new();
        config
            .host(addr.ip().to_string())
            .port(addr.port())
            .user(support::PROXY_USER)
            .password(support::PROXY_PASSWORD)
            .dbname(support::DATABASE)
            .connect_timeout(Duration::from_secs(3));
        connect(&config).await
    })
    .await;
    assert!(
        refused.is_err(),
        "new connections are refused during shutdown"
    );
    // The open transaction still runs statements and commits.
    in_tx
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .expect("statement inside the draining transaction");
    in_tx
        .batch_execute("COMMIT")
        .await
        .expect("commit during shutdown");
    let ended = within(10, "session closed after commit", in_tx_conn)
        .await
        .expect("join");
    if let Err(e) = &ended {
        assert_eq!(support::sqlstate(e).as_deref(), Some("57P01"), "{e:?}");
    }
    assert!(
        in_tx.simple_query("SELECT 1").await.is_err(),
        "closed after COMMIT"
    );
    within(10, "shutdown completes", shutdown)
        .await
        .expect("join");
    let ids: Vec<i32> = direct
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .expect("read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 2], "the transaction committed");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_closes_stuck_transactions() {
    let regions = TestRegions::start().await;
    let mut config = regions.proxy_config();
    config.listen.shutdown_timeout_secs = 1;
    let proxy = start_proxy(config).await;
    let direct = regions.client("eu").await;
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("create");
    let mut config = proxy_pg_config(&proxy, Some("eu"));
    config.application_name("stuck-tx");
    let (client, conn) = config.connect(NoTls).await.expect("connect");
    let conn = tokio::spawn(conn);
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("begin; insert");
    let started = std::time::Instant::now();
    within(15, "shutdown with a stuck transaction", proxy.shutdown()).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited for the transaction: {took:?}"
    );
    let ended = within(10, "stuck session closed", conn)
        .await
        .expect("join");
    if let Err(e) = &ended {
        let code = support::sqlstate(e).unwrap_or_default();
        assert!(code == "57P01" || code.is_empty(), "{e:?}");
    }
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the session is closed"
    );
    let gone = wait_until(5, || async {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stuck-tx'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        n == 0
    })
    .await;
    assert!(gone, "the backend session is closed");
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "the unfinished transaction was rolled back");
}
