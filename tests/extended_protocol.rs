//! The extended query protocol through the proxy: named prepared statements
//! reused many times, pipelining, portal suspension with row limits and
//! very large fields.

mod support;

use futures_util::future::join_all;
use support::{expect_sqlstate, proxy_client, start_proxy, within, TestRegions};
use tokio_postgres::types::Type;

async fn setup() -> (TestRegions, regionguard::server::Proxy) {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    (regions, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_are_reused_many_times() {
    let (regions, proxy) = setup().await;
    let client = proxy_client(&proxy, "eu").await;
    client
        .batch_execute("CREATE TABLE kv (k int8 PRIMARY KEY, v text NOT NULL)")
        .await
        .expect("create");
    within(60, "reuse prepared statements", async {
        let insert = client
            .prepare("INSERT INTO kv VALUES ($1, $2)")
            .await
            .expect("prepare insert");
        let select = client
            .prepare_typed("SELECT v, k * 2 FROM kv WHERE k = $1", &[Type::INT8])
            .await
            .expect("prepare select");
        for k in 0..500i64 {
            let n = client
                .execute(&insert, &[&k, &format!("value {k}")])
                .await
                .expect("insert");
            assert_eq!(n, 1);
        }
        for k in (0..500i64).rev() {
            let row = client.query_one(&select, &[&k]).await.expect("select");
            assert_eq!(row.get::<_, String>(0), format!("value {k}"));
            assert_eq!(row.get::<_, i64>(1), k * 2);
        }
        // Each statement was parsed once on the backend and is still there.
        let names: Vec<String> = client
            .simple_query(
                "SELECT name FROM pg_prepared_statements WHERE NOT from_sql ORDER BY name",
            )
            .await
            .expect("pg_prepared_statements")
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        assert_eq!(
            names.len(),
            2,
            "named statements live on the backend: {names:?}"
        );
    })
    .await;
    let direct = regions.client("eu").await;
    let count: i64 = direct
        .query_one("SELECT count(*) FROM kv", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 500);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_on_one_client_all_answer_in_order() {
    let (_regions, proxy) = setup().await;
    let client = proxy_client(&proxy, "us").await;
    let stmt = client
        .prepare("SELECT $1::int4 AS n, repeat('x', $1::int4) AS pad")
        .await
        .expect("prepare");
    within(60, "pipelined queries", async {
        for _round in 0..5 {
            let futures = (0..200i32).map(|i| {
                let client = &client;
                let stmt = &stmt;
                async move {
                    let n = (i * 37) % 5000;
                    let row = client
                        .query_one(stmt, &[&n])
                        .await
                        .expect("pipelined query");
                    assert_eq!(row.get::<_, i32>(0), n);
                    assert_eq!(row.get::<_, &str>(1).len(), n as usize);
                    i
                }
            });
            let done = join_all(futures).await;
            assert_eq!(done, (0..200).collect::<Vec<_>>());
        }
        // Pipelined unnamed statements, simple queries and an error mixed.
        let mixed = join_all((0..60i64).map(|i| {
            let client = &client;
            async move {
                match i % 3 {
                    0 => client
                        .query_one("SELECT $1::int8 + 1", &[&i])
                        .await
                        .map(|r| r.get::<_, i64>(0) == i + 1),
                    1 => client.simple_query("SELECT 1").await.map(|m| m.len() == 3),
                    _ => client
                        .query_one("SELECT 1 / ($1::int8 - $1::int8)", &[&i])
                        .await
                        .map(|_| false),
                }
            }
        }))
        .await;
        for (i, r) in mixed.into_iter().enumerate() {
            match i % 3 {
                2 => assert_eq!(
                    support::sqlstate(&r.expect_err("division by zero")).as_deref(),
                    Some("22012")
                ),
                _ => assert!(r.expect("query"), "query {i}"),
            }
        }
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_suspension_with_row_limits() {
    let (_regions, proxy) = setup().await;
    let mut client = proxy_client(&proxy, "apac").await;
    within(30, "portal loop", async {
        let tx = client.transaction().await.expect("begin");
        let stmt = tx
            .prepare("SELECT g, md5(g::text) FROM generate_series(1, $1::int4) g ORDER BY g")
            .await
            .expect("prepare");
        let portal = tx.bind(&stmt, &[&11i32]).await.expect("bind");
        let mut seen = Vec::new();
        let mut batches = 0;
        loop {
            let rows = tx.query_portal(&portal, 2).await.expect("query_portal");
            if rows.is_empty() {
                break;
            }
            assert!(rows.len() <= 2, "at most max_rows rows per Execute");
            batches += 1;
            seen.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
        }
        assert_eq!(seen, (1..=11).collect::<Vec<_>>());
        assert_eq!(batches, 6);
        // Two portals interleaved in the same transaction.
        let p1 = tx.bind(&stmt, &[&5i32]).await.expect("bind p1");
        let p2 = tx.bind(&stmt, &[&5i32]).await.expect("bind p2");
        let mut order = Vec::new();
        for _ in 0..3 {
            for p in [&p1, &p2] {
                for r in tx.query_portal(p, 2).await.expect("interleaved portal") {
                    order.push(r.get::<_, i32>(0));
                }
            }
        }
        assert_eq!(order, vec![1, 2, 1, 2, 3, 4, 3, 4, 5, 5]);
        tx.commit().await.expect("commit");
    })
    .await;
    // The session is idle and usable after the transaction.
    let n: i64 = client
        .query_one("SELECT 42::int8", &[])
        .await
        .expect("after portals")
        .get(0);
    assert_eq!(n, 42);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_fields_round_trip() {
    let (regions, proxy) = setup().await;
    let client = proxy_client(&proxy, "eu").await;
    client
        .batch_execute("CREATE TABLE big (id int PRIMARY KEY, t text, b bytea)")
        .await
        .expect("create");
    const SIZE: usize = 64 << 20;
    let text: String = (0..SIZE).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let bytes: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 256) as u8).collect();
    within(120, "64 MiB round trip", async {
        // Parameters in (extended protocol) ...
        client
            .execute("INSERT INTO big VALUES (1, $1, $2)", &[&text, &bytes])
            .await
            .expect("insert 64 MiB values");
        // ... and results out, binary.
        let row = client
            .query_one(
                "SELECT t, b, length(t), length(b) FROM big WHERE id = 1",
                &[],
            )
            .await
            .expect("select 64 MiB values");
        assert_eq!(row.get::<_, i32>(2) as usize, SIZE);
        assert_eq!(row.get::<_, i32>(3) as usize, SIZE);
        assert!(row.get::<_, &str>(0) == text, "text field unchanged");
        assert!(
            row.get::<_, &[u8]>(1) == &bytes[..],
            "bytea field unchanged"
        );
        // A 64 MiB simple Query message and a text result of ~128 MiB (hex).
        let sql = format!("SELECT md5('{text}'), md5(b) FROM big WHERE id = 1");
        let messages = client
            .simple_query(&sql)
            .await
            .expect("64 MiB simple query");
        let row = messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a row");
        let direct = regions.client("eu").await;
        let expected = direct
            .query_one("SELECT md5(t), md5(b) FROM big WHERE id = 1", &[])
            .await
            .expect("direct md5");
        assert_eq!(row.get(0), Some(expected.get::<_, &str>(0)));
        assert_eq!(row.get(1), Some(expected.get::<_, &str>(1)));
        let hex = client
            .simple_query("SELECT b FROM big WHERE id = 1")
            .await
            .expect("bytea as text");
        let hex_len = hex
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::len),
                _ => None,
            })
            .expect("a row");
        assert_eq!(hex_len, 2 + 2 * SIZE);
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_in_extended_protocol_recover_at_sync() {
    let (regions, proxy) = setup().await;
    let via = proxy_client(&proxy, "eu").await;
    let direct = regions.client("eu").await;
    for client in [&via, &direct] {
        // A Parse error, a Bind error (wrong parameter text), an Execute error:
        // each followed by a statement that works.
        let parse = expect_sqlstate(client.prepare("SELEC 1").await, "syntax error");
        assert_eq!(parse, "42601");
        assert_eq!(
            client
                .query_one("SELECT 1::int4", &[])
                .await
                .expect("after parse error")
                .get::<_, i32>(0),
            1
        );
        let missing = expect_sqlstate(
            client.query("SELECT * FROM no_such_table", &[]).await,
            "undefined table",
        );
        assert_eq!(missing, "42P01");
        let exec = expect_sqlstate(
            client.query_one("SELECT 1 / $1::int4", &[&0i32]).await,
            "division by zero",
        );
        assert_eq!(exec, "22012");
        let bad_text = expect_sqlstate(
            client.query_one("SELECT $1::text::int4", &[&"abc"]).await,
            "invalid input syntax",
        );
        assert_eq!(bad_text, "22P02");
        let row = client
            .query_one("SELECT $1::text || '!'", &[&"ok"])
            .await
            .expect("after errors");
        assert_eq!(row.get::<_, &str>(0), "ok!");
    }
    proxy.shutdown().await;
}
