//! Repeated pipeline batches (ADR 19) and repeated simple queries (ADR 20).
//! A batch that repeats the one before it (same Parse, Bind of the same
//! statement and portal, same Describe, Execute and Sync; only the
//! parameter values differ), or a simple query that repeats the one before
//! it but for its numbers, is sent in one step. These tests drive repeats
//! through the proxy and check that the answers are what Postgres gives
//! directly, that the step is really taken (the proxy logs each one at
//! TRACE), and that whatever the session does in between sends its next
//! batch or query where the general path would: after the session's tenant
//! or transaction, or a reload of the routing rules.

mod support;

use regionguard::config::{AuthMethod, LogFormat};
use std::sync::OnceLock;
use support::raw::{direct_session, message, read_to_ready, trusted_session};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Reads the proxy logged as sent in one step so far (in this process):
/// `"repeated batch"` or `"repeated query"`.
fn repeats(what: &str) -> usize {
    static LOGS: OnceLock<LogCapture> = OnceLock::new();
    let logs = LOGS.get_or_init(|| {
        let capture = LogCapture::default();
        let _ = tracing_subscriber::registry()
            .with(regionguard::logging::filter("trace"))
            .with(regionguard::logging::layer(
                LogFormat::Text,
                capture.clone(),
                false,
            ))
            .try_init();
        capture
    });
    logs.text().matches(what).count()
}

const BATCH: &str = "repeated batch";
const QUERY: &str = "repeated query";

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &body)
}

/// A Bind of `statement` to the unnamed portal, text parameters and results.
fn bind(statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    cstr(&mut body, statement);
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &body)
}

fn describe_portal() -> Vec<u8> {
    message(b'D', b"P\0")
}

fn execute(max_rows: i32) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &body)
}

fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// What libpq sends for `PQexecParams`: Parse of the unnamed statement,
/// Bind, Describe of the portal, Execute, Sync.
fn unnamed_batch(sql: &str, params: &[&str]) -> Vec<u8> {
    [
        parse("", sql),
        bind("", params),
        describe_portal(),
        execute(0),
        sync(),
    ]
    .concat()
}

/// A proxy session and a direct one to the same region, fed the same bytes.
struct Pair {
    proxy: TcpStream,
    direct: TcpStream,
}

impl Pair {
    /// A proxy trusting its clients in front of fresh test regions, a
    /// session through it and a direct one to `eu`; the regions and the
    /// proxy are returned to live as long as the pair.
    async fn start() -> (TestRegions, regionguard::server::Proxy, Pair) {
        let regions = TestRegions::start().await;
        let mut config = regions.proxy_config();
        config.auth.method = AuthMethod::Trust;
        let proxy = start_proxy(config).await;
        let pair = Pair {
            proxy: trusted_session(proxy.local_addr()).await,
            direct: direct_session(regions.port("eu")).await,
        };
        (regions, proxy, pair)
    }

    /// Sends `bytes` (holding `batches` Syncs) to both and checks that the
    /// answers match message for message.
    async fn same(&mut self, bytes: &[u8], batches: usize, what: &str) -> Vec<(u8, Vec<u8>)> {
        self.proxy.write_all(bytes).await.expect("write to proxy");
        self.direct
            .write_all(bytes)
            .await
            .expect("write to Postgres");
        let mut got = Vec::new();
        for _ in 0..batches {
            let through = read_to_ready(&mut self.proxy).await;
            let direct = read_to_ready(&mut self.direct).await;
            assert_eq!(through, direct, "{what}: proxy and Postgres answer alike");
            got.extend(through);
        }
        got
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_batches_answer_as_postgres_does() {
    let before = repeats(BATCH);
    within(60, "repeated batches", async {
        let (_regions, _proxy, mut pair) = Pair::start().await;

        // The unnamed statement prepared anew for every execution, values
        // of every length.
        let sql = "SELECT $1::int * 2 AS doubled, $2::text AS label";
        for i in 0..30 {
            let n = (7i64.pow(i % 10)).to_string();
            let label = "x".repeat(i as usize);
            let got = pair
                .same(&unnamed_batch(sql, &[&n, &label]), 1, "unnamed batch")
                .await;
            let rows = raw::first_column(&got);
            assert_eq!(rows, vec![Some((7i64.pow(i % 10) * 2).to_string())]);
        }

        // Three repeats in one write.
        let three: Vec<u8> = ["1", "22", "333"]
            .iter()
            .flat_map(|n| unnamed_batch(sql, &[n, "pipelined"]))
            .collect();
        let got = pair.same(&three, 3, "pipelined repeats").await;
        let values = raw::first_column(&got);
        assert_eq!(values, ["2", "44", "666"].map(|v| Some(v.to_string())));

        // A repeat that fails in Postgres, and the repeats after it.
        let div = "SELECT 100 / $1::int";
        for n in ["5", "0", "4", "0", "0", "2"] {
            let got = pair.same(&unnamed_batch(div, &[n]), 1, "division").await;
            assert_eq!(
                raw::first_error(&got).map(|e| e[&b'C'].clone()),
                (n == "0").then(|| "22012".to_string()),
                "100 / {n}"
            );
        }

        // A named statement: Bind, Describe, Execute, Sync, as libpq's
        // PQexecPrepared sends them; then without the Describe.
        let prepare = [
            parse("doubler", "SELECT $1::bigint * 2"),
            message(b'D', b"Sdoubler\0"),
            sync(),
        ]
        .concat();
        pair.same(&prepare, 1, "prepare").await;
        for n in 0..10 {
            let n = n.to_string();
            let batch = [
                bind("doubler", &[&n]),
                describe_portal(),
                execute(0),
                sync(),
            ]
            .concat();
            pair.same(&batch, 1, "named with Describe").await;
        }
        for n in 0..10 {
            let n = (n * 1000).to_string();
            let batch = [bind("doubler", &[&n]), execute(0), sync()].concat();
            pair.same(&batch, 1, "named without Describe").await;
        }

        // A repeat with a row limit, and one that is not a repeat (another
        // limit) after it.
        let rows = "SELECT generate_series(1, $1::int)";
        for limit in [2, 2, 2, 5] {
            let batch = [
                parse("", rows),
                bind("", &["4"]),
                describe_portal(),
                execute(limit),
                sync(),
            ]
            .concat();
            pair.same(&batch, 1, "row limit").await;
        }

        // The statement closed, then bound again: no repeat, but the
        // proxy's refusal of a statement it does not know.
        let close = [message(b'C', b"Sdoubler\0"), sync()].concat();
        pair.same(&close, 1, "close").await;
        let batch = [bind("doubler", &["1"]), execute(0), sync()].concat();
        pair.proxy.write_all(&batch).await.expect("write to proxy");
        let got = read_to_ready(&mut pair.proxy).await;
        let error = raw::first_error(&got).expect("the Bind fails");
        assert!(error[&b'M'].contains("\"doubler\""), "{error:?}");
    })
    .await;
    // Every batch but the first of each kind is a repeat: 29 unnamed, one
    // read of three, 5 divisions, 9 + 9 named, 2 with the row limit.
    let sent = repeats(BATCH) - before;
    assert!(
        sent >= 55,
        "the repeats were sent in one step ({sent} logged)"
    );
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    message(b'Q', &body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_queries_answer_as_postgres_does() {
    let before = repeats(QUERY);
    within(60, "repeated queries", async {
        let (_regions, _proxy, mut pair) = Pair::start().await;

        // Numbers of every length, as pgbench -M simple sends them.
        for i in 0..30u32 {
            let n = 7i64.pow(i % 10);
            let sql = format!("SELECT {n} * 2 AS doubled, {i} AS i;");
            let got = pair.same(&query(&sql), 1, "query").await;
            assert_eq!(raw::first_column(&got), vec![Some((n * 2).to_string())]);
        }

        // Three repeats in one write.
        let three: Vec<u8> = [1, 22, 333]
            .iter()
            .flat_map(|n| query(&format!("SELECT {n} * 2 AS doubled, 0 AS i;")))
            .collect();
        let got = pair.same(&three, 3, "pipelined queries").await;
        let values = raw::first_column(&got);
        assert_eq!(values, ["2", "44", "666"].map(|v| Some(v.to_string())));

        // Repeats that fail in Postgres, and the repeats after them.
        for n in [5, 0, 4, 0, 0, 2] {
            let got = pair
                .same(&query(&format!("SELECT 100 / {n}")), 1, "division")
                .await;
            assert_eq!(
                raw::first_error(&got).map(|e| e[&b'C'].clone()),
                (n == 0).then(|| "22012".to_string()),
                "100 / {n}"
            );
        }

        // Inside a transaction; a failed one, where Postgres refuses what
        // follows until the ROLLBACK.
        for last in ["COMMIT", "ROLLBACK"] {
            pair.same(&query("BEGIN"), 1, "begin").await;
            for n in [1, 2, 3] {
                pair.same(&query(&format!("SELECT 10 / {n}")), 1, "in a transaction")
                    .await;
            }
            pair.same(&query("SELECT 10 / 0"), 1, "fails").await;
            pair.same(&query("SELECT 10 / 5"), 1, "after the failure")
                .await;
            pair.same(&query(last), 1, "end").await;
        }

        // Other than numbers: decimals, names, strings are not repeats of
        // a number but are answered alike all the same.
        for sql in [
            "SELECT 1.5 * 2",
            "SELECT 2.5 * 2",
            "SELECT 3e1 * 2",
            "SELECT '4' * 2",
            "SELECT -5 * 2",
        ] {
            pair.same(&query(sql), 1, sql).await;
        }
    })
    .await;
    // Every query but the first of each shape is a repeat: 29, one read
    // of three, 5 divisions, 2 + 1 in each transaction, one negation.
    let sent = repeats(QUERY) - before;
    assert!(
        sent >= 40,
        "the repeats were sent in one step ({sent} logged)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_go_where_the_session_state_sends_them() {
    let (batches, queries) = (repeats(BATCH), repeats(QUERY));
    within(90, "repeats after session changes", async {
        let regions = TestRegions::start().await;
        regions.create_routing_schema().await;
        let proxy = start_proxy(regions.routing_config(&ROUTING_TENANTS)).await;
        let client = tenant_client(&proxy, None).await;
        let port = client
            .prepare("SELECT current_setting('port')")
            .await
            .expect("prepare");
        // The region that serves each of `n` executions: of a prepared
        // statement (repeated batches), or of simple queries that differ
        // only in a number (repeated queries).
        let served = |n: usize, simple: bool| {
            let client = &client;
            let port = &port;
            let regions = &regions;
            async move {
                let mut seen = Vec::new();
                for i in 0..n {
                    let p: u16 = if simple {
                        let sql = format!("SELECT inet_server_port() + {i}");
                        let rows = client.simple_query(&sql).await.expect("port");
                        let value = rows.iter().find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => {
                                r.get(0).map(str::to_string)
                            }
                            _ => None,
                        });
                        let shifted: usize = value.expect("a row").parse().expect("a number");
                        u16::try_from(shifted - i).expect("a port")
                    } else {
                        let row = client.query_one(port, &[]).await.expect("port");
                        let p: String = row.get(0);
                        p.parse().expect("a port")
                    };
                    seen.push(regions.region_at_port(p).expect("a region's port"));
                }
                seen
            }
        };
        for simple in [false, true] {
            let how = if simple { "simple" } else { "extended" };
            assert_eq!(served(5, simple).await, ["eu"; 5], "{how}: the home region");

            client
                .batch_execute("SET regionguard.tenant = 'globex'")
                .await
                .expect("set tenant");
            assert_eq!(
                served(3, simple).await,
                ["us"; 3],
                "{how}: the session tenant's region"
            );
            client
                .batch_execute("RESET regionguard.tenant")
                .await
                .expect("reset tenant");
            assert_eq!(served(3, simple).await, ["eu"; 3], "{how}: home again");

            // In a transaction pinned to apac by a tenant's statement,
            // repeats stay there; after it, they go home.
            client.batch_execute("BEGIN").await.expect("begin");
            client
                .query(
                    "SELECT count(*) FROM customers WHERE tenant_id = 'initech'",
                    &[],
                )
                .await
                .expect("pin to apac");
            assert_eq!(
                served(4, simple).await,
                ["apac"; 4],
                "{how}: the pinned transaction"
            );
            client.batch_execute("COMMIT").await.expect("commit");
            assert_eq!(
                served(3, simple).await,
                ["eu"; 3],
                "{how}: home after the transaction"
            );

            // A refused statement between repeats.
            let refused = client.query("SELECT count(*) FROM customers", &[]).await;
            expect_refusal(refused, "42501", &[], "no tenant");
            assert_eq!(served(3, simple).await, ["eu"; 3], "{how}: after a refusal");
        }
    })
    .await;
    let sent = repeats(BATCH) - batches;
    assert!(sent >= 8, "batches were sent in one step ({sent} logged)");
    let sent = repeats(QUERY) - queries;
    assert!(sent >= 8, "queries were sent in one step ({sent} logged)");
}

/// A proxy over the routing schema plus a table `notes (tenant_id, body,
/// n)` that its config file leaves unscoped until [`Notes::scope`].
struct Notes {
    proxy: regionguard::server::Proxy,
    dir: tempfile::TempDir,
}

impl Notes {
    fn config(regions: &TestRegions, tables: &str) -> String {
        format!(
            "{}[tenancy]\ncolumn = \"tenant_id\"\ntables = [{tables}]\n[tenants]\nacme = \"eu\"\n",
            regions.proxy_config_toml()
        )
    }

    async fn start(regions: &TestRegions) -> Notes {
        regions.create_routing_schema().await;
        regions
            .batch_everywhere("CREATE TABLE notes (tenant_id text, body text, n int);")
            .await;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("regionguard.toml");
        std::fs::write(&path, Self::config(regions, "\"customers\", \"orders\""))
            .expect("write config");
        let loaded = regionguard::config::Config::load(&path).expect("config");
        let proxy = start_proxy(loaded).await;
        Notes { proxy, dir }
    }

    /// Makes `notes` tenant-scoped: rewrites the config file and reloads.
    async fn scope(&self, regions: &TestRegions) {
        let tables = "\"customers\", \"orders\", \"notes\"";
        std::fs::write(
            self.dir.path().join("regionguard.toml"),
            Self::config(regions, tables),
        )
        .expect("rewrite config");
        self.proxy.reload().await.expect("reload");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_scopes_the_table_stops_its_repeats() {
    let before = repeats(BATCH);
    within(60, "repeats across a reload", async {
        let regions = TestRegions::start().await;
        let notes = Notes::start(&regions).await;
        let client = tenant_client(&notes.proxy, None).await;
        let count = client
            .prepare("SELECT count(*) FROM notes")
            .await
            .expect("prepare");
        for _ in 0..4 {
            client
                .query_one(&count, &[])
                .await
                .expect("no tenant data yet");
        }
        let sent = repeats(BATCH) - before;
        assert!(sent >= 3, "the reads were sent in one step ({sent} logged)");

        // `notes` becomes tenant-scoped: the statement planned before must
        // not run again unplaced, repeat or not.
        notes.scope(&regions).await;
        let refused = client.query_one(&count, &[]).await;
        let message = expect_refusal(refused, "0A000", &[], "planned before the reload");
        assert!(message.contains("reload"), "{message}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_scopes_the_table_stops_repeated_queries() {
    let before = repeats(QUERY);
    within(60, "repeated queries across a reload", async {
        let regions = TestRegions::start().await;
        let notes = Notes::start(&regions).await;
        let client = tenant_client(&notes.proxy, None).await;
        for n in 0..4 {
            client
                .simple_query(&format!("SELECT count(*) FROM notes WHERE n > {n}"))
                .await
                .expect("no tenant data yet");
        }
        let sent = repeats(QUERY) - before;
        assert!(
            sent >= 3,
            "the queries were sent in one step ({sent} logged)"
        );

        // `notes` becomes tenant-scoped: the next query of the same shape
        // needs a tenant, repeat or not.
        notes.scope(&regions).await;
        let refused = client
            .simple_query("SELECT count(*) FROM notes WHERE n > 9")
            .await;
        expect_refusal(refused, "42501", &[], "scoped by the reload");
    })
    .await;
}
