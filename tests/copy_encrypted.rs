//! COPY of tables with classified columns, against three real regional
//! clusters: `COPY … FROM STDIN` in text, CSV and binary format stores
//! ciphertext (each row under its own tenant's key, in its region only),
//! `COPY … TO STDOUT` gives back exactly what Postgres gives for the same
//! data stored in plaintext, psql's `\copy` round-trips, and a value that
//! does not decrypt fails the COPY with XX001.

mod support;

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, TryStreamExt};
use regionguard::config::{ClassifiedColumn, DataClass, Protection};
use std::collections::BTreeMap;
use support::*;
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// `customers`: email (deterministic, bytea storage) and full_name
/// (randomized, text storage) encrypted, note in plaintext. `typed`: one
/// encrypted column per logical type; `typed_plain` is its plaintext twin
/// (read directly only, for comparisons).
const SCHEMA: &str = "\
    CREATE TABLE customers (tenant_id text NOT NULL, id bigint NOT NULL, email bytea, \
        full_name text, note text, PRIMARY KEY (tenant_id, id));\n\
    CREATE TABLE typed (tenant_id text NOT NULL, id bigint NOT NULL, t bytea, i4 bytea, \
        i8 bytea, f8 bytea, n bytea, b bytea, d bytea, tz bytea, u bytea, jb bytea, \
        by bytea, arr bytea);\n\
    CREATE TABLE typed_plain (tenant_id text NOT NULL, id bigint NOT NULL, t text, i4 int4, \
        i8 int8, f8 float8, n numeric, b bool, d date, tz timestamptz, u uuid, jb jsonb, \
        by bytea, arr int4[]);\n";

const TYPED_COLUMNS: [(&str, &str); 12] = [
    ("t", "text"),
    ("i4", "int4"),
    ("i8", "int8"),
    ("f8", "float8"),
    ("n", "numeric"),
    ("b", "bool"),
    ("d", "date"),
    ("tz", "timestamptz"),
    ("u", "uuid"),
    ("jb", "jsonb"),
    ("by", "bytea"),
    ("arr", "int4[]"),
];

fn column(class: &str, ty: &str, searchable: bool) -> ClassifiedColumn {
    ClassifiedColumn {
        class: class.into(),
        logical_type: ty.into(),
        searchable,
        equality_group: None,
    }
}

async fn setup() -> (TestRegions, RootKeys, regionguard::server::Proxy) {
    let regions = TestRegions::start().await;
    regions.batch_everywhere(SCHEMA).await;
    let keys = RootKeys::write(13);
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    config.tenancy.tables = vec!["customers".into(), "typed".into()];
    keys.apply(&mut config);
    config.classes.insert(
        "pii".into(),
        DataClass {
            encrypt: Protection::Randomized,
        },
    );
    config.classes.insert(
        "contact".into(),
        DataClass {
            encrypt: Protection::Deterministic,
        },
    );
    let mut customers = BTreeMap::new();
    customers.insert("email".into(), column("contact", "text", true));
    customers.insert("full_name".into(), column("pii", "text", false));
    config.classified.insert("customers".into(), customers);
    let mut typed = BTreeMap::new();
    for (i, (col, ty)) in TYPED_COLUMNS.iter().enumerate() {
        // Both protections, alternately.
        let class = if i % 2 == 0 { "contact" } else { "pii" };
        typed.insert(col.to_string(), column(class, ty, i % 2 == 0));
    }
    config.classified.insert("typed".into(), typed);
    let proxy = start_proxy(config).await;
    (regions, keys, proxy)
}

/// Cuts data into uneven pieces so CopyData boundaries fall inside rows,
/// fields and escape sequences.
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

async fn copy_out(client: &Client, sql: &str) -> Result<Vec<u8>, tokio_postgres::Error> {
    let stream = client.copy_out(sql).await?;
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Every value of every row of `table`, as text, read directly in `region`.
async fn raw_dump(regions: &TestRegions, region: &str, table: &str) -> String {
    let rows = regions
        .client(region)
        .await
        .simple_query(&format!("SELECT * FROM {table}"))
        .await
        .expect("direct read");
    let mut out = String::new();
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            for i in 0..r.len() {
                out.push_str(r.get(i).unwrap_or("NULL"));
                out.push('|');
            }
            out.push('\n');
        }
    }
    out
}

/// Text COPY rows of `customers` for `tenants`, ids from `from`, with
/// canary values that need escaping, and NULLs.
fn customer_rows(tenants: &[&str], from: i64) -> String {
    let mut out = String::new();
    for (i, t) in tenants.iter().enumerate() {
        let id = from + i as i64;
        let email = if id % 14 == 0 {
            "\\N".to_string()
        } else {
            format!("canary-mail-{id}@x.example")
        };
        out.push_str(&format!(
            "{t}\t{id}\t{email}\tCanary Name\\t{id} ☃\\\\\\n2\tnote {id}\n"
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_stores_ciphertext_per_tenant_in_all_three_formats() {
    let capture = LogCapture::default();
    let _ = tracing_subscriber::fmt()
        // The test's own clients log their statements; the proxy's control
        // connections only send catalog and key-table SQL.
        .with_env_filter("trace,tokio_postgres=off,sqlparser=off")
        .with_writer(capture.clone())
        .try_init();
    let (regions, _keys, proxy) = setup().await;
    within(20, "COPY in", async {
        let eu = tenant_client(&proxy, Some("acme")).await;
        // Text, two eu tenants, uneven CopyData boundaries.
        let tenants: Vec<&str> = (0..300)
            .map(|i| if i % 3 == 0 { "umbrella" } else { "acme" })
            .collect();
        let n = copy_in(
            &eu,
            "COPY customers (tenant_id, id, email, full_name, note) FROM STDIN",
            odd_chunks(customer_rows(&tenants, 1).as_bytes()),
        )
        .await
        .expect("text COPY");
        assert_eq!(n, 300);
        // CSV with a header and no column list (columns read from the catalog).
        let mut csv = String::from("tenant_id,id,email,full_name,note\n");
        for i in 1000..1100 {
            let t = if i % 2 == 0 { "acme" } else { "umbrella" };
            csv.push_str(&format!(
                "{t},{i},canary-csv-{i}@x,\"Canary, \"\"Csv\"\"\nline\",\n"
            ));
        }
        csv.push_str("acme,1100,,\"\",plain\n");
        let n = copy_in(
            &eu,
            "COPY customers FROM STDIN WITH (FORMAT csv, HEADER true)",
            odd_chunks(csv.as_bytes()),
        )
        .await
        .expect("CSV COPY with header");
        assert_eq!(n, 101);
        // Binary, in a US session.
        let us = tenant_client(&proxy, Some("globex")).await;
        let sink = us
            .copy_in("COPY customers (tenant_id, id, email, full_name, note) FROM STDIN (FORMAT binary)")
            .await
            .expect("binary COPY");
        let writer = BinaryCopyInWriter::new(
            sink,
            &[Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT],
        );
        pin_mut!(writer);
        for i in 2000..2200i64 {
            let t = if i % 2 == 0 { "globex" } else { "hooli" };
            let email = (i % 5 != 0).then(|| format!("canary-bin-{i}@x"));
            let name = format!("Canary Binary\t{i}\n");
            let row: [&(dyn ToSql + Sync); 5] = [&t, &i, &email, &name, &"n"];
            writer.as_mut().write(&row).await.expect("write row");
        }
        assert_eq!(writer.finish().await.expect("finish"), 200);

        // Through the proxy: the values, by tenant, and equality on the
        // deterministic column (ciphertext written by COPY matches a literal).
        let r = eu
            .query_one(
                "SELECT email, full_name, note FROM customers WHERE tenant_id = 'acme' AND id = 2",
                &[],
            )
            .await
            .expect("select");
        assert_eq!(r.get::<_, Option<String>>(0).as_deref(), Some("canary-mail-2@x.example"));
        assert_eq!(r.get::<_, Option<String>>(1).as_deref(), Some("Canary Name\t2 ☃\\\n2"));
        assert_eq!(r.get::<_, Option<String>>(2).as_deref(), Some("note 2"));
        let umbrella = tenant_client(&proxy, Some("umbrella")).await;
        let r = umbrella
            .query_one(
                "SELECT id, full_name FROM customers WHERE email = 'canary-csv-1001@x'",
                &[],
            )
            .await
            .expect("equality on a COPYed deterministic value");
        assert_eq!(r.get::<_, i64>(0), 1001);
        assert_eq!(r.get::<_, String>(1), "Canary, \"Csv\"\nline");
        // NULL stays NULL; an empty string is a value.
        let r = eu
            .query_one(
                "SELECT email, full_name, note FROM customers WHERE tenant_id = 'acme' AND id = 1100",
                &[],
            )
            .await
            .expect("select NULL row");
        assert_eq!(r.get::<_, Option<String>>(0), None);
        assert_eq!(r.get::<_, Option<String>>(1).as_deref(), Some(""));
        let r = us
            .query_one(
                "SELECT email, full_name FROM customers WHERE tenant_id = 'globex' AND id = 2010",
                &[],
            )
            .await
            .expect("select binary-COPYed row");
        assert_eq!(r.get::<_, Option<String>>(0), None);
        assert_eq!(r.get::<_, String>(1), "Canary Binary\t2010\n");
        let hooli = tenant_client(&proxy, Some("hooli")).await;
        let r = hooli
            .query_one(
                "SELECT email FROM customers WHERE tenant_id = 'hooli' AND id = 2011",
                &[],
            )
            .await
            .expect("select hooli");
        assert_eq!(r.get::<_, String>(0), "canary-bin-2011@x");
    })
    .await;
    // Directly in the databases: ciphertext only, rows in their regions.
    for region in REGIONS {
        let dump = raw_dump(&regions, region, "customers").await;
        for canary in ["canary", "Canary", "☃"] {
            assert!(
                !dump.contains(canary),
                "plaintext `{canary}` in region {region}"
            );
        }
    }
    let eu_rows = regions.rows_in("eu", "customers").await;
    assert_eq!(eu_rows.len(), 401);
    assert!(eu_rows.iter().all(|(t, _)| t == "acme" || t == "umbrella"));
    let us_rows = regions.rows_in("us", "customers").await;
    assert_eq!(us_rows.len(), 200);
    assert!(us_rows.iter().all(|(t, _)| t == "globex" || t == "hooli"));
    assert!(regions.rows_in("apac", "customers").await.is_empty());
    // Storage forms: the bytea envelope, `rg1:` base64 in the text column,
    // the plaintext column untouched, NULL still NULL.
    let direct = regions.client("eu").await;
    let r = direct
        .query_one(
            "SELECT email, full_name, note FROM customers WHERE tenant_id = 'acme' AND id = 2",
            &[],
        )
        .await
        .expect("direct read");
    assert!(r.get::<_, Vec<u8>>(0).len() > 20);
    assert!(r.get::<_, String>(1).starts_with("rg1:"));
    assert_eq!(r.get::<_, String>(2), "note 2");
    let r = direct
        .query_one(
            "SELECT email FROM customers WHERE tenant_id = 'acme' AND id = 14",
            &[],
        )
        .await
        .expect("direct read of a NULL");
    assert_eq!(r.get::<_, Option<Vec<u8>>>(0), None);
    // Each row under its own tenant's key: equal deterministic values of
    // two tenants differ as ciphertext.
    let n: i64 = direct
        .query_one(
            "SELECT count(DISTINCT email) FROM customers WHERE email IS NOT NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    let m: i64 = direct
        .query_one(
            "SELECT count(*) FROM customers WHERE email IS NOT NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, m);
    proxy.shutdown().await;
    let logs = capture.text();
    assert!(
        logs.len() > 1000,
        "expected TRACE logs, got {} bytes",
        logs.len()
    );
    for canary in ["canary", "Canary"] {
        if let Some(at) = logs.find(canary) {
            panic!(
                "`{canary}` in the proxy's logs: {}",
                &logs[at.saturating_sub(200)..(at + 100).min(logs.len())]
            );
        }
    }
}

/// Rows of `typed` as text COPY data: every logical type, NULLs, and
/// values that need escaping.
fn typed_rows() -> String {
    let rows = [
        "acme\t1\thé\\tllo\\\\ \\n x\t-12\t-9000000000\t1.5\t12345.6789\tt\t2024-02-29\t2024-01-02 03:04:05+02\ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\t{\"b\": 1, \"a\": [1, 2]}\t\\\\x00ff5c\t{1,2,NULL}",
        "umbrella\t2\t\t0\t0\t-2.25e-7\t-0.00100\tf\t1999-12-31\t2000-01-01 00:00:00+00\t00000000-0000-0000-0000-000000000000\t[]\t\\\\x\t{}",
        "acme\t3\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N",
        "acme\t4\t\"quoted\", comma\t2147483647\t9223372036854775807\tInfinity\tNaN\tf\t0001-01-01\t2024-06-30 23:59:59.999999+00\tffffffff-ffff-ffff-ffff-ffffffffffff\t{\"k\": null}\t\\\\x0a0d09\t{{1,2},{3,4}}",
    ];
    let mut out = rows.join("\n");
    out.push('\n');
    out
}

const TYPED_LIST: &str = "tenant_id, id, t, i4, i8, f8, n, b, d, tz, u, jb, by, arr";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_gives_what_postgres_gives_for_plaintext_in_all_three_formats() {
    let (regions, _keys, proxy) = setup().await;
    let data = typed_rows();
    within(20, "COPY out", async {
        let client = tenant_client(&proxy, Some("acme")).await;
        client
            .batch_execute("SET TimeZone = 'Europe/Berlin'")
            .await
            .expect("set time zone");
        let n = copy_in(
            &client,
            &format!("COPY typed ({TYPED_LIST}) FROM STDIN"),
            odd_chunks(data.as_bytes()),
        )
        .await
        .expect("COPY into typed");
        assert_eq!(n, 4);
        let direct = regions.client("eu").await;
        direct
            .batch_execute("SET TimeZone = 'Europe/Berlin'")
            .await
            .expect("set time zone");
        copy_in(
            &direct,
            &format!("COPY typed_plain ({TYPED_LIST}) FROM STDIN"),
            vec![Bytes::from(data.clone())],
        )
        .await
        .expect("COPY into the plaintext twin");
        // Nothing of the plaintext is stored in the encrypted table. (Each
        // needle has a character that hex and base64 lack, so random
        // ciphertext cannot contain it by chance.)
        let dump = raw_dump(&regions, "eu", "typed").await;
        for needle in ["hé", "12345.6789", "a0eebc99-9c0b", "2024-02-29"] {
            assert!(!dump.contains(needle), "`{needle}` stored in plaintext");
        }
        for options in [
            "",
            " WITH (FORMAT text, NULL '<null>')",
            " WITH (FORMAT csv, HEADER true)",
            " WITH (FORMAT csv, FORCE_QUOTE (tenant_id, t, n, arr), DELIMITER ';')",
            " WITH (FORMAT binary)",
        ] {
            // With a column list, and without one (the proxy reads it).
            for list in [format!(" ({TYPED_LIST})"), String::new()] {
                let through = copy_out(&client, &format!("COPY typed{list} TO STDOUT{options}"))
                    .await
                    .unwrap_or_else(|e| panic!("COPY typed{list} TO STDOUT{options}: {e:?}"));
                let expected = copy_out(
                    &direct,
                    &format!("COPY typed_plain{list} TO STDOUT{options}"),
                )
                .await
                .expect("direct COPY of the plaintext twin");
                assert_eq!(
                    String::from_utf8_lossy(&through),
                    String::from_utf8_lossy(&expected),
                    "COPY typed{list} TO STDOUT{options}"
                );
            }
        }
        // A column subset without the tenant column: the session's tenant.
        let through = copy_out(
            &client,
            "COPY typed (id, t, arr) TO STDOUT WITH (FORMAT csv)",
        )
        .await;
        // Row 2 is umbrella's: acme's key does not open it.
        assert_eq!(
            expect_sqlstate(through, "another tenant's row under the session's key"),
            "XX001"
        );
        let through = copy_out(
            &client,
            "/* regionguard.tenant = 'acme' */ COPY typed (id, t, arr) TO STDOUT WITH (FORMAT csv)",
        )
        .await;
        assert_eq!(expect_sqlstate(through, "comment tenant"), "XX001");
        // Binary rows read with the logical types.
        let stream = client
            .copy_out(&*format!(
                "COPY typed ({TYPED_LIST}) TO STDOUT (FORMAT binary)"
            ))
            .await
            .expect("binary COPY out");
        let types = [
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::INT4,
            Type::INT8,
            Type::FLOAT8,
            Type::NUMERIC,
            Type::BOOL,
            Type::DATE,
            Type::TIMESTAMPTZ,
            Type::UUID,
            Type::JSONB,
            Type::BYTEA,
            Type::INT4_ARRAY,
        ];
        let rows: Vec<_> = BinaryCopyOutStream::new(stream, &types)
            .try_collect()
            .await
            .expect("binary rows");
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].get::<String>(2), "hé\tllo\\ \n x");
        assert_eq!(rows[0].get::<i32>(3), -12);
        assert_eq!(rows[0].get::<i64>(4), -9_000_000_000);
        assert_eq!(rows[0].get::<f64>(5), 1.5);
        assert_eq!(
            rows[0].get::<uuid::Uuid>(10).to_string(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(
            rows[0].get::<serde_json::Value>(11),
            serde_json::json!({"a": [1, 2], "b": 1})
        );
        assert_eq!(rows[0].get::<Vec<u8>>(12), vec![0u8, 0xff, 0x5c]);
        assert_eq!(
            rows[0].get::<Vec<Option<i32>>>(13),
            vec![Some(1), Some(2), None]
        );
        assert_eq!(rows[2].get::<Option<String>>(2), None);
        assert_eq!(rows[2].get::<Option<i32>>(3), None);
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_copy_in_round_trips_through_copy_out() {
    let (regions, _keys, proxy) = setup().await;
    within(20, "binary round trip", async {
        let client = tenant_client(&proxy, Some("initech")).await;
        let sink = client
            .copy_in("COPY typed (tenant_id, id, t, i4, f8, u, by, arr) FROM STDIN (FORMAT binary)")
            .await
            .expect("binary COPY");
        let types = [
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::INT4,
            Type::FLOAT8,
            Type::UUID,
            Type::BYTEA,
            Type::INT4_ARRAY,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        let big = vec![7u8; 256 * 1024];
        for i in 0..50i64 {
            let t = if i % 2 == 0 { "initech" } else { "wayne" };
            let text = (i % 10 != 3).then(|| format!("value {i} \\ \t"));
            let by: &[u8] = if i == 0 { &big } else { b"\x00\x01" };
            let arr = vec![Some(i as i32), None];
            let row: [&(dyn ToSql + Sync); 8] = [
                &t,
                &i,
                &text,
                &(i as i32 * -3),
                &(i as f64 / 3.0),
                &uuid::Uuid::from_u128(i as u128),
                &by,
                &arr,
            ];
            writer.as_mut().write(&row).await.expect("write");
        }
        assert_eq!(writer.finish().await.expect("finish"), 50);
        let stream = client
            .copy_out("COPY typed (tenant_id, id, t, i4, f8, u, by, arr) TO STDOUT (FORMAT binary)")
            .await
            .expect("binary COPY out");
        let rows: Vec<_> = BinaryCopyOutStream::new(stream, &types)
            .try_collect()
            .await
            .expect("rows");
        assert_eq!(rows.len(), 50);
        for (i, r) in rows.iter().enumerate() {
            let i = i as i64;
            assert_eq!(r.get::<i64>(1), i);
            assert_eq!(
                r.get::<Option<String>>(2),
                (i % 10 != 3).then(|| format!("value {i} \\ \t"))
            );
            assert_eq!(r.get::<i32>(3), i as i32 * -3);
            assert_eq!(r.get::<f64>(4), i as f64 / 3.0);
            assert_eq!(r.get::<uuid::Uuid>(5), uuid::Uuid::from_u128(i as u128));
            assert_eq!(
                r.get::<Vec<u8>>(6).len(),
                if i == 0 { 256 * 1024 } else { 2 }
            );
            assert_eq!(r.get::<Vec<Option<i32>>>(7), vec![Some(i as i32), None]);
        }
    })
    .await;
    assert_eq!(regions.rows_in("apac", "typed").await.len(), 50);
    assert!(regions.rows_in("eu", "typed").await.is_empty());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_and_foreign_rows_fail_the_whole_copy() {
    let (regions, _keys, proxy) = setup().await;
    within(20, "refusals", async {
        let client = tenant_client(&proxy, Some("acme")).await;
        // A value that is not an int4: the type's SQLSTATE, column and row
        // named, never the value.
        let r = copy_in(
            &client,
            "COPY typed (tenant_id, id, i4) FROM STDIN",
            vec![Bytes::from_static(
                b"acme\t1\t5\nacme\t2\tcanary-not-a-number\n",
            )],
        )
        .await;
        let e = r.expect_err("bad int4");
        let db = e.as_db_error().expect("server error");
        assert_eq!(db.code().code(), "22P02", "{db:?}");
        assert!(db.message().contains("typed.i4"), "{db:?}");
        assert!(db.message().contains("row 2"), "{db:?}");
        assert!(!format!("{db:?}").contains("canary"), "{db:?}");
        // CSV, a bad date.
        let r = copy_in(
            &client,
            "COPY typed (tenant_id, id, d) FROM STDIN (FORMAT csv)",
            vec![Bytes::from_static(b"acme,1,2024-02-30\n")],
        )
        .await;
        let e = r.expect_err("bad date");
        let db = e.as_db_error().expect("server error");
        assert!(db.code().code().starts_with("22"), "{db:?}");
        assert!(db.message().contains("typed.d"), "{db:?}");
        // Binary, a malformed int4 (3 bytes).
        let sink = client
            .copy_in("COPY typed (tenant_id, id, i4) FROM STDIN (FORMAT binary)")
            .await
            .expect("binary COPY");
        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8, Type::BYTEA]);
        pin_mut!(writer);
        let bad: &[u8] = b"\x00\x00\x01";
        writer
            .as_mut()
            .write(&[&"acme", &1i64, &bad])
            .await
            .expect("write");
        let e = writer.finish().await.expect_err("bad binary int4");
        let db = e.as_db_error().expect("server error");
        assert_eq!(db.code().code(), "22P03", "{db:?}");
        // A row of a US tenant in an eu COPY.
        let r = copy_in(
            &client,
            "COPY customers (tenant_id, id, email) FROM STDIN",
            vec![Bytes::from_static(
                b"acme\t1\tcanary-a@x\nglobex\t2\tcanary-b@x\n",
            )],
        )
        .await;
        let message = expect_refusal(r, "42501", &["globex", "canary"], "foreign row");
        assert!(message.contains("row 2"), "{message}");
        // Refused up front: a server file, a query's classified output.
        for sql in [
            "COPY customers TO '/tmp/regionguard-copy-test'",
            "COPY (SELECT email FROM customers) TO STDOUT",
            "COPY (SELECT * FROM customers) TO STDOUT",
        ] {
            let r = client.simple_query(sql).await;
            assert_eq!(expect_sqlstate(r, sql), "0A000", "{sql}");
            let r = copy_out(&client, sql).await;
            assert_eq!(expect_sqlstate(r, sql), "0A000", "{sql} (extended)");
        }
        // A query without classified output is fine.
        let out = copy_out(
            &client,
            "COPY (SELECT id FROM customers WHERE tenant_id = 'acme') TO STDOUT",
        )
        .await
        .expect("COPY (query) without classified columns");
        assert!(out.is_empty());
        // The session goes on.
        let one: i64 = client
            .query_one("SELECT 1::int8", &[])
            .await
            .expect("session works")
            .get(0);
        assert_eq!(one, 1);
    })
    .await;
    for region in REGIONS {
        assert!(
            regions.rows_in(region, "typed").await.is_empty(),
            "{region}"
        );
        assert!(
            regions.rows_in(region, "customers").await.is_empty(),
            "{region}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_ciphertext_fails_copy_out_with_xx001() {
    let (regions, _keys, proxy) = setup().await;
    within(20, "moved ciphertext", async {
        let client = tenant_client(&proxy, Some("acme")).await;
        let mut data = String::new();
        for i in 1..=100 {
            let t = if i == 60 { "umbrella" } else { "acme" };
            data.push_str(&format!("{t}\t{i}\tcanary{i}@x\tName {i}\n"));
        }
        copy_in(
            &client,
            "COPY customers (tenant_id, id, email, full_name) FROM STDIN",
            vec![Bytes::from(data)],
        )
        .await
        .expect("COPY in");
        // Umbrella's ciphertext copied into acme's row 50, directly.
        regions
            .client("eu")
            .await
            .batch_execute(
                "UPDATE customers SET email = (SELECT email FROM customers WHERE id = 60) WHERE id = 50",
            )
            .await
            .expect("direct tamper");
        for options in ["", " (FORMAT csv)", " (FORMAT binary)"] {
            let sql = format!("COPY customers (tenant_id, id, email) TO STDOUT{options}");
            let r = copy_out(&client, &sql).await;
            assert_eq!(expect_sqlstate(r, &sql), "XX001", "{sql}");
        }
        // Over the simple protocol (psql's \copy) too.
        let out = psql(
            &proxy,
            "acme",
            "\\copy customers (tenant_id, id, email) to '/dev/null'".to_string(),
        )
        .await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot decrypt"), "{stderr}");
        // The rows before the bad one are plaintext; nothing after it comes.
        let stream = client
            .copy_out("COPY customers (tenant_id, id, email) TO STDOUT")
            .await
            .expect("COPY out");
        pin_mut!(stream);
        let mut got = Vec::new();
        let err = loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => got.extend_from_slice(&chunk),
                Ok(None) => panic!("the COPY ended without an error"),
                Err(e) => break e,
            }
        };
        assert_eq!(sqlstate(&err).as_deref(), Some("XX001"));
        let text = String::from_utf8(got).expect("utf8");
        assert!(text.lines().all(|l| l.contains("@x")), "{text}");
        assert!(!text.contains("\tcanary50@x") && !text.contains("\\\\x"), "{text}");
        // The untouched column still copies; the session goes on.
        let out = copy_out(&client, "COPY customers (tenant_id, id, full_name) TO STDOUT")
            .await
            .expect("full_name still decrypts");
        assert_eq!(String::from_utf8_lossy(&out).lines().count(), 100);
        // A value from another column (full_name's text envelope as email).
        regions
            .client("eu")
            .await
            .batch_execute(
                "UPDATE customers SET email = convert_to(full_name, 'UTF8') WHERE id = 50",
            )
            .await
            .expect("direct tamper 2");
        let r = copy_out(&client, "COPY customers (tenant_id, email) TO STDOUT").await;
        assert_eq!(expect_sqlstate(r, "moved column"), "XX001");
        // Plaintext written directly into the column.
        regions
            .client("eu")
            .await
            .batch_execute("UPDATE customers SET email = 'plain' WHERE id = 50")
            .await
            .expect("direct tamper 3");
        let r = copy_out(&client, "COPY customers TO STDOUT (FORMAT csv)").await;
        assert_eq!(expect_sqlstate(r, "plaintext in the column"), "XX001");
        let one: i64 = client
            .query_one("SELECT 1::int8", &[])
            .await
            .expect("session works")
            .get(0);
        assert_eq!(one, 1);
    })
    .await;
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
        .env("PGDATABASE", DATABASE)
        .env("PGOPTIONS", format!("-c regionguard.tenant={tenant}"))
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .kill_on_drop(true);
    cmd
}

async fn psql(
    proxy: &regionguard::server::Proxy,
    tenant: &str,
    command: String,
) -> std::process::Output {
    let mut cmd = psql_command(proxy, tenant);
    cmd.arg("-c").arg(command);
    within(20, "psql", cmd.output()).await.expect("run psql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_round_trip() {
    let (regions, _keys, proxy) = setup().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let mut csv = String::from("tenant_id,id,email,full_name,note\n");
    for i in 0..1000 {
        let t = if i % 4 == 0 { "globex" } else { "hooli" };
        let email = if i % 9 == 0 {
            String::new()
        } else {
            format!("canary{i}@x")
        };
        csv.push_str(&format!(
            "{t},{i},{email},\"Canary \"\" ☃\nsecond line\",note {i}\n"
        ));
    }
    std::fs::write(&input, &csv).expect("write csv");
    let out = psql(
        &proxy,
        "hooli",
        format!(
            "\\copy customers from '{}' with (format csv, header true)",
            input.display()
        ),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(
        &proxy,
        "hooli",
        format!(
            "\\copy customers to '{}' with (format csv, header true)",
            output.display()
        ),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&output).expect("read out"), csv);
    // Text format, with a column list, round trip.
    let text_out = dir.path().join("out.txt");
    let out = psql(
        &proxy,
        "globex",
        format!(
            "\\copy customers (id, tenant_id, full_name, email) to '{}'",
            text_out.display()
        ),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&text_out).expect("read text");
    assert_eq!(text.lines().count(), 1000);
    assert!(
        text.starts_with("0\tglobex\tCanary \" ☃\\nsecond line\t\\N\n"),
        "{text:.200}"
    );
    // In the database: ciphertext, in region us only.
    let dump = raw_dump(&regions, "us", "customers").await;
    assert!(!dump.contains("anary") && !dump.contains("☃"));
    assert_eq!(regions.rows_in("us", "customers").await.len(), 1000);
    assert!(regions.rows_in("eu", "customers").await.is_empty());
    // A file with a tenant of another region is refused whole.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "hooli,5000,a@x,,\nacme,5001,b@x,,\n").expect("write");
    let out = psql(
        &proxy,
        "hooli",
        format!(
            "\\copy customers from '{}' with (format csv)",
            bad.display()
        ),
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(regions.rows_in("us", "customers").await.len(), 1000);
    proxy.shutdown().await;
}
