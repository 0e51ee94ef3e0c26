//! `COPY … FROM STDIN` into tenant-scoped tables, row by row: every row's
//! tenant must live in the region the COPY runs in. Rows are read back
//! directly from the regional databases to see where they landed.

mod support;

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt};
use std::process::Output;
use support::{
    expect_refusal, proxy_pg_config, raw, start_proxy, tenant_client, within, TestRegions,
    PROXY_PASSWORD, PROXY_USER, REGIONS, ROUTING_TENANTS,
};
use tokio::io::AsyncWriteExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// An extra tenant-scoped table keyed by a uuid tenant, and one by bigint.
const EXTRA_SCHEMA: &str = "\
    CREATE TABLE events (tenant_id uuid NOT NULL, id bigint NOT NULL, body text);\n\
    CREATE TABLE ledger (id bigint NOT NULL, tenant_id bigint NOT NULL, amount numeric);\n";
const UUID_TENANT: &str = "6f1c2a3e-0000-4000-8000-00000000abcd";

async fn setup() -> (TestRegions, regionguard::server::Proxy) {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    regions.batch_everywhere(EXTRA_SCHEMA).await;
    let mut tenants = ROUTING_TENANTS.to_vec();
    tenants.push((UUID_TENANT, "apac"));
    tenants.push(("7", "us"));
    let mut config = regions.routing_config(&tenants);
    config.tenancy.tables.push("events".into());
    config.tenancy.tables.push("ledger".into());
    config.auth.method = regionguard::config::AuthMethod::Trust;
    let proxy = start_proxy(config).await;
    (regions, proxy)
}

/// A client with `regionguard.region` set (and no tenant).
async fn region_client(proxy: &regionguard::server::Proxy, region: &str) -> Client {
    support::connect(&proxy_pg_config(proxy, Some(region)))
        .await
        .expect("connect through the proxy")
}

/// Cuts data into uneven pieces (1, 4, 13, 40, … bytes) so CopyData
/// boundaries fall inside rows, fields and escape sequences.
fn odd_chunks(data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let (mut pos, mut size) = (0, 1);
    while pos < data.len() {
        let end = (pos + size).min(data.len());
        out.push(Bytes::copy_from_slice(&data[pos..end]));
        pos = end;
        size = size * 3 % 997 + 1;
    }
    out
}

/// COPY FROM STDIN with `chunks` through tokio-postgres (extended protocol).
async fn copy_in(
    client: &Client,
    sql: &str,
    chunks: Vec<Bytes>,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    pin_mut!(sink);
    for c in chunks {
        sink.send(c).await?;
    }
    sink.finish().await
}

/// `(tenant_id, id)` of `customers` in each region, read directly.
async fn placement(regions: &TestRegions) -> Vec<(&'static str, Vec<(String, i64)>)> {
    let mut out = Vec::new();
    for r in REGIONS {
        out.push((r, regions.rows_in(r, "customers").await));
    }
    out
}

fn text_rows(tenants: &[&str], from: i64) -> Vec<u8> {
    let mut out = String::new();
    for (i, t) in tenants.iter().enumerate() {
        let id = from + i as i64;
        out.push_str(&format!(
            "{t}\t{id}\tuser{id}@example.com\tName\\t{id} ☃\\\\\n"
        ));
    }
    out.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_copy_lands_in_the_sessions_region_only() {
    let (regions, proxy) = setup().await;
    within(20, "text COPY", async {
        let client = tenant_client(&proxy, Some("globex")).await;
        let tenants: Vec<&str> = (0..300)
            .map(|i| if i % 3 == 0 { "hooli" } else { "globex" })
            .collect();
        let n = copy_in(
            &client,
            "COPY customers (tenant_id, id, email, full_name) FROM STDIN",
            odd_chunks(&text_rows(&tenants, 1)),
        )
        .await
        .expect("COPY of us tenants in a globex session");
        assert_eq!(n, 300);
        // Without a column list: the proxy reads the columns from the catalog.
        let n = copy_in(
            &client,
            "COPY customers FROM STDIN",
            odd_chunks(&text_rows(&["globex", "hooli"], 1000)),
        )
        .await
        .expect("COPY without a column list");
        assert_eq!(n, 2);
        // A statement comment places the COPY too (apac), in a session without a tenant.
        let other = tenant_client(&proxy, None).await;
        let n = copy_in(
            &other,
            "/* regionguard.tenant = 'wayne' */ COPY customers (tenant_id, id) FROM STDIN",
            vec![Bytes::from_static(b"wayne\t1\ninitech\t2\n\\.\n")],
        )
        .await
        .expect("COPY placed by a comment");
        assert_eq!(n, 2);
    })
    .await;
    let got = placement(&regions).await;
    assert!(got[0].1.is_empty(), "eu: {:?}", got[0].1.len());
    assert_eq!(got[1].1.len(), 302);
    assert!(got[1].1.iter().all(|(t, _)| t == "globex" || t == "hooli"));
    assert_eq!(
        got[2].1,
        vec![("initech".to_string(), 2), ("wayne".to_string(), 1)]
    );
    // Values survive the proxy's re-encoding exactly.
    let row = regions
        .client("us")
        .await
        .query_one("SELECT full_name FROM customers WHERE id = 1001", &[])
        .await
        .expect("read back");
    assert_eq!(row.get::<_, &str>(0), "Name\t1001 ☃\\");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_with_header_and_quoted_newlines() {
    let (regions, proxy) = setup().await;
    let mut csv = String::from("tenant_id,id,email,full_name\n");
    for i in 0..200 {
        let t = if i % 2 == 0 { "initech" } else { "wayne" };
        csv.push_str(&format!(
            "{t},{i},\"a,{i}@x\",\"line one\nline \"\"two\"\", ☃\"\n"
        ));
    }
    csv.push_str("initech,999,,\"\"\n");
    within(20, "CSV COPY", async {
        let client = region_client(&proxy, "apac").await;
        let n = copy_in(
            &client,
            "COPY customers FROM STDIN WITH (FORMAT csv, HEADER true)",
            odd_chunks(csv.as_bytes()),
        )
        .await
        .expect("CSV COPY with header");
        assert_eq!(n, 201);
        // Legacy syntax, CRLF line endings.
        let n = copy_in(
            &client,
            "COPY customers (id, tenant_id) FROM STDIN WITH CSV HEADER",
            odd_chunks(b"id,tenant_id\r\n5000,wayne\r\n5001,initech\r\n"),
        )
        .await
        .expect("legacy CSV HEADER");
        assert_eq!(n, 2);
    })
    .await;
    let got = placement(&regions).await;
    assert!(got[0].1.is_empty() && got[1].1.is_empty());
    assert_eq!(got[2].1.len(), 203);
    let direct = regions.client("apac").await;
    let row = direct
        .query_one("SELECT email, full_name FROM customers WHERE id = 3", &[])
        .await
        .expect("read back");
    assert_eq!(row.get::<_, Option<&str>>(0), Some("a,3@x"));
    assert_eq!(
        row.get::<_, Option<&str>>(1),
        Some("line one\nline \"two\", ☃")
    );
    let row = direct
        .query_one("SELECT email, full_name FROM customers WHERE id = 999", &[])
        .await
        .expect("read back");
    assert_eq!(
        row.get::<_, Option<&str>>(0),
        None,
        "unquoted empty is NULL"
    );
    assert_eq!(
        row.get::<_, Option<&str>>(1),
        Some(""),
        "quoted empty is ''"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_copy_reads_text_uuid_and_bigint_tenants() {
    let (regions, proxy) = setup().await;
    within(20, "binary COPY", async {
        let client = region_client(&proxy, "eu").await;
        let sink = client
            .copy_in("COPY customers FROM STDIN (FORMAT binary)")
            .await
            .expect("binary COPY");
        let writer =
            BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT]);
        pin_mut!(writer);
        for i in 0..500i64 {
            let t = if i % 2 == 0 { "acme" } else { "umbrella" };
            let email = (i % 5 != 0).then(|| format!("{i}@eu"));
            let row: [&(dyn ToSql + Sync); 4] = [&t, &i, &email, &"x\ty\n"];
            writer.as_mut().write(&row).await.expect("write row");
        }
        assert_eq!(writer.finish().await.expect("finish"), 500);

        let apac = region_client(&proxy, "apac").await;
        let sink = apac
            .copy_in("COPY events (tenant_id, id, body) FROM STDIN WITH (FORMAT binary)")
            .await
            .expect("binary COPY, uuid tenant");
        let writer = BinaryCopyInWriter::new(sink, &[Type::UUID, Type::INT8, Type::TEXT]);
        pin_mut!(writer);
        let id = uuid::Uuid::parse_str(UUID_TENANT).expect("uuid");
        writer
            .as_mut()
            .write(&[&id, &1i64, &"hello"])
            .await
            .expect("write");
        assert_eq!(writer.finish().await.expect("finish"), 1);

        let us = region_client(&proxy, "us").await;
        // An unknown tenant in a bigint table refuses the whole COPY.
        let sink = us
            .copy_in("COPY ledger (id, tenant_id) FROM STDIN WITH (FORMAT binary)")
            .await
            .expect("binary COPY, bigint tenant");
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8]);
        pin_mut!(writer);
        writer
            .as_mut()
            .write(&[&1i64, &7i64])
            .await
            .expect("row of tenant 7 (us)");
        writer.as_mut().write(&[&2i64, &8i64]).await.ok();
        let r = writer.finish().await;
        expect_refusal(r, "42501", &[], "unknown bigint tenant");
    })
    .await;
    let got = placement(&regions).await;
    assert_eq!(got[0].1.len(), 500);
    assert!(got[1].1.is_empty() && got[2].1.is_empty());
    let n: i64 = regions
        .client("apac")
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE tenant_id = $1",
            &[&uuid::Uuid::parse_str(UUID_TENANT).unwrap()],
        )
        .await
        .expect("count events")
        .get(0);
    assert_eq!(n, 1);
    for r in REGIONS {
        let n: i64 = regions
            .client(r)
            .await
            .query_one("SELECT count(*) FROM ledger", &[])
            .await
            .expect("count ledger")
            .get(0);
        assert_eq!(n, 0, "ledger in {r}: the failed COPYs left nothing");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_row_aborts_the_whole_copy() {
    let (regions, proxy) = setup().await;
    within(20, "foreign row", async {
        let client = tenant_client(&proxy, Some("acme")).await;
        let mut tenants = vec!["acme"; 2000];
        tenants[1500] = "globex";
        let r = copy_in(
            &client,
            "COPY customers (tenant_id, id, email, full_name) FROM STDIN",
            odd_chunks(&text_rows(&tenants, 1)),
        )
        .await;
        let message = expect_refusal(r, "42501", &["globex", "acme"], "globex row in an eu COPY");
        assert!(
            message.contains("customers") && message.contains("row 1501"),
            "{message}"
        );
        assert!(
            message.contains("region us") && message.contains("region eu"),
            "{message}"
        );
        // The session goes on, and the same COPY without the row works.
        tenants[1500] = "umbrella";
        let n = copy_in(
            &client,
            "COPY customers (tenant_id, id, email, full_name) FROM STDIN",
            odd_chunks(&text_rows(&tenants, 1)),
        )
        .await
        .expect("COPY of eu rows");
        assert_eq!(n, 2000);
        // In a transaction, the refusal fails the transaction as Postgres would.
        client.batch_execute("BEGIN").await.expect("begin");
        let r = copy_in(
            &client,
            "COPY customers (tenant_id, id) FROM STDIN WITH (FORMAT csv)",
            vec![Bytes::from_static(b"acme,90001\ninitech,90002\n")],
        )
        .await;
        expect_refusal(r, "42501", &["initech"], "apac row in a transaction");
        let r = client.simple_query("SELECT 1").await;
        assert_eq!(support::expect_sqlstate(r, "aborted transaction"), "25P02");
        client.batch_execute("ROLLBACK").await.expect("rollback");
    })
    .await;
    let got = placement(&regions).await;
    assert_eq!(got[0].1.len(), 2000, "only the second COPY was committed");
    assert!(got[0].1.iter().all(|(t, _)| t == "acme" || t == "umbrella"));
    assert!(got[1].1.is_empty() && got[2].1.is_empty());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_unknown_and_missing_tenants_are_refused() {
    let (regions, proxy) = setup().await;
    within(20, "refusals", async {
        let client = region_client(&proxy, "us").await;
        let cases: [(&str, &[u8], &[&str]); 4] = [
            (
                "COPY customers (tenant_id, id) FROM STDIN",
                b"globex\t1\n\\N\t2\n",
                &[],
            ),
            (
                "COPY customers (tenant_id, id) FROM STDIN",
                b"globex\t1\nnobody-co\t2\n",
                &["nobody-co"],
            ),
            (
                "COPY customers (tenant_id, id) FROM STDIN WITH (FORMAT csv)",
                b"globex,1\n,2\n",
                &[],
            ),
            (
                "COPY customers (tenant_id, id) FROM STDIN",
                b"globex\t1\textra\n",
                &["globex"],
            ),
        ];
        for (sql, data, secrets) in cases {
            let r = copy_in(&client, sql, odd_chunks(data)).await;
            let e = r.expect_err(sql);
            let db = e.as_db_error().expect("server error");
            assert!(
                ["42501", "22P04"].contains(&db.code().code()),
                "{sql}: {db:?}"
            );
            assert!(
                db.message().contains("customers") && db.message().contains("row 2")
                    || db.code().code() == "22P04",
                "{db:?}"
            );
            for s in secrets {
                assert!(!db.message().contains(s), "{db:?}");
            }
        }
        // A column list without the tenant column cannot be checked.
        let r = client
            .copy_in::<_, Bytes>("COPY customers (id, email) FROM STDIN")
            .await
            .map(|_| ());
        let message = expect_refusal(r, "42501", &[], "no tenant column");
        assert!(message.contains("tenant_id"), "{message}");
        // Unsupported options are refused before any data.
        let r = client
            .copy_in::<_, Bytes>("COPY customers FROM STDIN WITH (FORMAT csv, ENCODING 'LATIN1')")
            .await
            .map(|_| ());
        assert_eq!(support::expect_sqlstate(r, "encoding"), "0A000");
        let one: i64 = client
            .query_one("SELECT 1::int8", &[])
            .await
            .expect("session works")
            .get(0);
        assert_eq!(one, 1);
    })
    .await;
    for r in REGIONS {
        assert!(regions.rows_in(r, "customers").await.is_empty(), "{r}");
    }
    proxy.shutdown().await;
}

/// Runs a COPY FROM STDIN over the simple protocol with raw messages:
/// Query, then each chunk as one CopyData, then CopyDone. Returns the
/// messages after CopyInResponse up to ReadyForQuery.
async fn raw_copy(
    s: &mut tokio::net::TcpStream,
    sql: &str,
    chunks: &[Bytes],
) -> Vec<(u8, Vec<u8>)> {
    let mut q = sql.as_bytes().to_vec();
    q.push(0);
    s.write_all(&raw::message(b'Q', &q))
        .await
        .expect("send COPY");
    loop {
        match raw::read_message(s).await.expect("answer to COPY") {
            (b'G', _) => break,
            (b'E', body) => return vec![(b'E', body)],
            _ => {}
        }
    }
    let mut out = Vec::new();
    for c in chunks {
        out.extend(raw::message(b'd', c));
    }
    out.extend(raw::message(b'c', b""));
    s.write_all(&out).await.expect("send data");
    raw::read_to_ready(s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_copy_with_odd_message_boundaries() {
    let (regions, proxy) = setup().await;
    within(20, "raw COPY", async {
        let mut s = raw::trusted_session_with(
            proxy.local_addr(),
            &[("options", "-c regionguard.tenant=initech")],
        )
        .await;
        // Rows split inside escapes and quoted newlines, several rows per message.
        let data = b"initech,1,\"multi\nline\"\nwayne,2,\"x\"\"y\"\r\n".to_vec();
        let chunks: Vec<Bytes> = data.chunks(3).map(Bytes::copy_from_slice).collect();
        // (CRLF after LF is an error in Postgres: send LF only.)
        let data = String::from_utf8(data).expect("utf8").replace("\r\n", "\n");
        let chunks_ok: Vec<Bytes> = data
            .as_bytes()
            .chunks(3)
            .map(Bytes::copy_from_slice)
            .collect();
        let msgs = raw_copy(
            &mut s,
            "COPY customers (tenant_id, id, full_name) FROM STDIN CSV",
            &chunks,
        )
        .await;
        let e = raw::first_error(&msgs).expect("mixed newline styles refused");
        assert_eq!(e.get(&b'C').map(String::as_str), Some("22P04"), "{e:?}");
        let msgs = raw_copy(
            &mut s,
            "COPY customers (tenant_id, id, full_name) FROM STDIN CSV",
            &chunks_ok,
        )
        .await;
        assert!(raw::first_error(&msgs).is_none(), "{msgs:?}");
        assert!(
            msgs.iter()
                .any(|(t, b)| *t == b'C' && b.starts_with(b"COPY 2")),
            "{msgs:?}"
        );
        // A foreign row over the simple protocol: the proxy's error, then ReadyForQuery.
        let msgs = raw_copy(
            &mut s,
            "COPY customers (tenant_id, id) FROM STDIN",
            &[
                Bytes::from_static(b"wayne\t3\n"),
                Bytes::from_static(b"acme\t4\nwayne\t5\n"),
            ],
        )
        .await;
        let e = raw::first_error(&msgs).expect("foreign row refused");
        assert_eq!(e.get(&b'C').map(String::as_str), Some("42501"), "{e:?}");
        assert!(e.contains_key(&b'H'));
        assert!(
            !e.values()
                .any(|v| v.contains("acme") || v.contains("wayne")),
            "{e:?}"
        );
        assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'));
        let msgs = raw::simple_query(&mut s, "SELECT 1").await;
        assert_eq!(raw::first_column(&msgs), [Some("1".to_string())]);
    })
    .await;
    let rows = regions.rows_in("apac", "customers").await;
    assert_eq!(
        rows,
        vec![("initech".to_string(), 1), ("wayne".to_string(), 2)]
    );
    proxy.shutdown().await;
}

fn psql_command(proxy: &regionguard::server::Proxy, tenant: &str) -> tokio::process::Command {
    let addr = proxy.local_addr();
    let mut cmd = tokio::process::Command::new("/usr/bin/psql");
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PGHOST", addr.ip().to_string())
        .env("PGPORT", addr.port().to_string())
        .env("PGUSER", PROXY_USER)
        .env("PGPASSWORD", PROXY_PASSWORD)
        .env("PGDATABASE", support::DATABASE)
        .env("PGOPTIONS", format!("-c regionguard.tenant={tenant}"))
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: tokio::process::Command) -> Output {
    within(20, "psql", cmd.output()).await.expect("run psql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_round_trip() {
    let (regions, proxy) = setup().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let mut csv = String::from("tenant_id,id,email,full_name\n");
    for i in 0..1000 {
        csv.push_str(&format!(
            "hooli,{i},\"h{i}@x, y\",\"quote \"\" ☃\nsecond line\"\n"
        ));
    }
    std::fs::write(&input, &csv).expect("write csv");
    let mut cmd = psql_command(&proxy, "hooli");
    cmd.arg("-c").arg(format!(
        "\\copy customers from '{}' with (format csv, header true)",
        input.display()
    ));
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = psql_command(&proxy, "hooli");
    cmd.arg("-c").arg(format!(
        "\\copy (SELECT * FROM customers WHERE tenant_id = 'hooli' ORDER BY id) to '{}' with (format csv, header true)",
        output.display()
    ));
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&output).expect("read out"), csv);
    // A file with a tenant of another region is refused whole.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "hooli,5000,,\nacme,5001,,\n").expect("write");
    let mut cmd = psql_command(&proxy, "hooli");
    cmd.arg("-c").arg(format!(
        "\\copy customers from '{}' with (format csv)",
        bad.display()
    ));
    let out = run(cmd).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("42501") || stderr.contains("region eu"),
        "{stderr}"
    );
    let got = placement(&regions).await;
    assert!(got[0].1.is_empty() && got[2].1.is_empty());
    assert_eq!(got[1].1.len(), 1000);
    proxy.shutdown().await;
}

/// A client that sends another message in the middle of a checked COPY
/// (here a Parse the proxy holds back) cannot then slip unchecked rows into
/// the backend's still-open COPY: the proxy fails that COPY first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_data_after_an_interruption_never_reaches_the_region() {
    let (regions, proxy) = setup().await;
    within(20, "interrupted COPY", async {
        let mut s = raw::trusted_session_with(
            proxy.local_addr(),
            &[("options", "-c regionguard.tenant=initech")],
        )
        .await;
        let mut out = Vec::new();
        out.extend(raw::message(
            b'P',
            b"\0COPY customers (tenant_id, id) FROM STDIN\0\0\0",
        ));
        out.extend(raw::message(b'B', b"\0\0\0\0\0\0\0\0"));
        out.extend(raw::message(b'E', b"\0\0\0\0\0"));
        out.extend(raw::message(b'S', b""));
        s.write_all(&out).await.expect("send COPY");
        raw::read_until(&mut s, b'G').await.expect("CopyInResponse");
        let mut out = Vec::new();
        out.extend(raw::message(b'd', b"initech\t1\n"));
        out.extend(raw::message(b'P', b"\0SELECT 1\0\0\0"));
        out.extend(raw::message(b'd', b"acme\t2\n"));
        out.extend(raw::message(b'c', b""));
        out.extend(raw::message(b'S', b""));
        s.write_all(&out).await.expect("send the rest");
        let msgs = raw::read_to_ready(&mut s).await;
        assert!(
            raw::first_error(&msgs).is_some(),
            "the COPY failed: {msgs:?}"
        );
        let msgs = raw::simple_query(&mut s, "SELECT 1").await;
        assert_eq!(raw::first_column(&msgs), [Some("1".to_string())]);
    })
    .await;
    for r in REGIONS {
        assert!(regions.rows_in(r, "customers").await.is_empty(), "{r}");
    }
    proxy.shutdown().await;
}
