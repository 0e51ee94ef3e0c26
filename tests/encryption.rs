//! Column encryption end to end, against three real regional clusters:
//! values written through the proxy are ciphertext in the regional
//! databases (read directly), come back as the application wrote them in
//! text and binary format, equality works on deterministic columns, and
//! everything that would compute over ciphertext or store plaintext is
//! refused.

mod support;

use regionguard::config::{ClassifiedColumn, DataClass, Protection};
use std::collections::BTreeMap;
use support::*;

/// The encrypted tables: customers' email (searchable) and full name
/// (randomized), and a table with one column of every scalar logical type.
const SCHEMA: &str = "\
    CREATE TABLE customers (tenant_id text NOT NULL, id bigint NOT NULL, email bytea, \
        full_name text, note text, PRIMARY KEY (tenant_id, id));\n\
    CREATE TABLE orders (tenant_id text NOT NULL, id bigint NOT NULL, customer_id bigint, \
        amount numeric, PRIMARY KEY (tenant_id, id));\n\
    CREATE TABLE leads (tenant_id text NOT NULL, id bigint NOT NULL, email bytea, \
        PRIMARY KEY (tenant_id, id));\n\
    CREATE TABLE typed (tenant_id text NOT NULL, id bigint NOT NULL, \
        t bytea, i2 bytea, i4 bytea, i8 bytea, f4 bytea, f8 bytea, n bytea, b bytea, \
        d bytea, tm bytea, ts bytea, tz bytea, u bytea, j bytea, jb bytea, by bytea, \
        arr bytea, PRIMARY KEY (tenant_id, id));\n";

fn column(class: &str, ty: &str, searchable: bool, group: Option<&str>) -> ClassifiedColumn {
    ClassifiedColumn {
        class: class.into(),
        logical_type: ty.into(),
        searchable,
        equality_group: group.map(str::to_string),
    }
}

fn encrypted_config(regions: &TestRegions, keys: &RootKeys) -> regionguard::config::Config {
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    config.tenancy.tables.push("leads".into());
    config.tenancy.tables.push("typed".into());
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
    customers.insert(
        "email".into(),
        column("contact", "text", true, Some("email")),
    );
    customers.insert("full_name".into(), column("pii", "text", false, None));
    config.classified.insert("customers".into(), customers);
    let mut leads = BTreeMap::new();
    leads.insert(
        "email".into(),
        column("contact", "text", true, Some("email")),
    );
    config.classified.insert("leads".into(), leads);
    let mut typed = BTreeMap::new();
    for (col, ty) in [
        ("t", "text"),
        ("i2", "int2"),
        ("i4", "int4"),
        ("i8", "int8"),
        ("f4", "float4"),
        ("f8", "float8"),
        ("n", "numeric"),
        ("b", "bool"),
        ("d", "date"),
        ("tm", "time"),
        ("ts", "timestamp"),
        ("tz", "timestamptz"),
        ("u", "uuid"),
        ("j", "json"),
        ("jb", "jsonb"),
        ("by", "bytea"),
        ("arr", "int4[]"),
    ] {
        typed.insert(col.to_string(), column("contact", ty, true, None));
    }
    config.classified.insert("typed".into(), typed);
    config
}

async fn setup() -> (TestRegions, RootKeys, regionguard::server::Proxy) {
    let regions = TestRegions::start().await;
    regions.batch_everywhere(SCHEMA).await;
    let keys = RootKeys::write(7);
    let proxy = start_proxy(encrypted_config(&regions, &keys)).await;
    (regions, keys, proxy)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_values_are_ciphertext_in_the_database_and_plaintext_through_the_proxy() {
    let (regions, _keys, proxy) = setup().await;
    let client = tenant_client(&proxy, None).await;
    // Simple protocol, literals.
    client
        .simple_query("INSERT INTO customers (tenant_id, id, email, full_name, note) VALUES ('acme', 1, 'canary.simple@acme.example', 'Canary Simplename', 'plain note')")
        .await
        .expect("insert with literals");
    // Extended protocol, parameters in binary (tokio-postgres) format.
    client
        .execute(
            "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ($1, $2, $3, $4)",
            &[
                &"acme",
                &2i64,
                &"canary.param@acme.example",
                &"Canary Paramname",
            ],
        )
        .await
        .expect("insert with parameters");
    client
        .execute(
            "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ($1, $2, $3, $4)",
            &[
                &"globex",
                &1i64,
                &"canary.us@globex.example",
                &"Canary Usname",
            ],
        )
        .await
        .expect("insert for a US tenant");

    // Directly in the databases: no plaintext, and rows only in their region.
    for region in ["eu", "us", "apac"] {
        let dump = raw_dump(&regions, region, "customers").await;
        for canary in ["canary.", "Canary", "Simplename", "Paramname", "Usname"] {
            assert!(
                !dump.contains(canary),
                "plaintext `{canary}` in region {region}:\n{dump}"
            );
        }
    }
    assert!(raw_dump(&regions, "eu", "customers")
        .await
        .contains("plain note"));
    assert_eq!(regions.rows_in("eu", "customers").await.len(), 2);
    assert_eq!(regions.rows_in("us", "customers").await.len(), 1);
    assert!(regions.rows_in("apac", "customers").await.is_empty());

    // Through the proxy: plaintext in binary format (tokio-postgres) with
    // the logical types, in text format (simple protocol), by equality.
    let rows = client
        .query(
            "SELECT id, email, full_name FROM customers WHERE tenant_id = $1 ORDER BY id",
            &[&"acme"],
        )
        .await
        .expect("select through the proxy");
    let got: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                1,
                "canary.simple@acme.example".into(),
                "Canary Simplename".into()
            ),
            (
                2,
                "canary.param@acme.example".into(),
                "Canary Paramname".into()
            ),
        ]
    );
    let text = client
        .simple_query("SELECT email, full_name FROM customers WHERE tenant_id = 'acme' AND email = 'canary.param@acme.example'")
        .await
        .expect("equality lookup with a literal");
    let found: Vec<String> = text
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(format!(
                "{}/{}",
                r.get(0).unwrap_or(""),
                r.get(1).unwrap_or("")
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        found,
        vec!["canary.param@acme.example/Canary Paramname".to_string()]
    );
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM customers WHERE tenant_id = $1 AND email IN ($2, $3)",
            &[
                &"acme",
                &"canary.simple@acme.example",
                &"nobody@acme.example",
            ],
        )
        .await
        .expect("IN with parameters")
        .get(0);
    assert_eq!(n, 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_logical_type_round_trips_in_text_and_binary_format() {
    let (regions, _keys, proxy) = setup().await;
    let client = tenant_client(&proxy, Some("acme")).await;
    client
        .simple_query(
            "INSERT INTO typed (tenant_id, id, t, i2, i4, i8, f4, f8, n, b, d, tm, ts, tz, u, j, jb, by, arr) VALUES \
             ('acme', 1, 'héllo', -12, 123456, -9000000000, 1.5, -2.25e-7, 12345.6789, true, '2024-02-29', \
              '13:14:15.5', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+02', \
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": 1, \"a\": 2}', '\\x00ff', '{1,2,NULL}')",
        )
        .await
        .expect("insert every type with literals");
    client
        .simple_query("INSERT INTO typed (tenant_id, id) VALUES ('acme', 2)")
        .await
        .expect("insert NULLs");
    // Text format through the proxy equals Postgres's own text output of
    // the same literals.
    let through = client
        .simple_query("SELECT t, i2, i4, i8, f4, f8, n, b, d, tm, ts, tz, u, j, jb, by, arr FROM typed WHERE id = 1")
        .await
        .expect("select in text format");
    let direct = regions
        .client("eu")
        .await
        .simple_query(
            "SELECT 'héllo'::text, -12::int2, 123456::int4, -9000000000::int8, 1.5::float4, -2.25e-7::float8, \
             12345.6789::numeric, true, '2024-02-29'::date, '13:14:15.5'::time, \
             '2024-01-02 03:04:05.123456'::timestamp, '2024-01-02 03:04:05+02'::timestamptz, \
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '{\"a\": [1, 2]}'::json, '{\"b\": 1, \"a\": 2}'::jsonb, \
             '\\x00ff'::bytea, '{1,2,NULL}'::int4[]",
        )
        .await
        .expect("direct select");
    let row = |msgs: &[tokio_postgres::SimpleQueryMessage]| -> Vec<Option<String>> {
        msgs.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .expect("a row")
    };
    assert_eq!(row(&through), row(&direct));
    // Binary format with the logical types (tokio-postgres checks them).
    let r = client
        .query_one(
            "SELECT t, i2, i4, i8, f8, b, u, jb, by, arr FROM typed WHERE id = $1",
            &[&1i64],
        )
        .await
        .expect("select in binary format");
    assert_eq!(r.get::<_, String>(0), "héllo");
    assert_eq!(r.get::<_, i16>(1), -12);
    assert_eq!(r.get::<_, i32>(2), 123456);
    assert_eq!(r.get::<_, i64>(3), -9_000_000_000);
    assert_eq!(r.get::<_, f64>(4), -2.25e-7);
    assert!(r.get::<_, bool>(5));
    assert_eq!(
        r.get::<_, uuid::Uuid>(6).to_string(),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert_eq!(
        r.get::<_, serde_json::Value>(7),
        serde_json::json!({"a": 2, "b": 1})
    );
    assert_eq!(r.get::<_, Vec<u8>>(8), vec![0u8, 255]);
    assert_eq!(
        r.get::<_, Vec<Option<i32>>>(9),
        vec![Some(1), Some(2), None]
    );
    // NULL stays NULL.
    let r = client
        .query_one("SELECT t, i4, arr FROM typed WHERE id = $1", &[&2i64])
        .await
        .expect("select NULLs");
    assert_eq!(r.get::<_, Option<String>>(0), None);
    assert_eq!(r.get::<_, Option<i32>>(1), None);
    // Binary parameters of the logical types, and equality on them.
    client
        .execute(
            "INSERT INTO typed (tenant_id, id, i4, f8, u, by) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &"acme",
                &3i64,
                &77i32,
                &0.5f64,
                &uuid::Uuid::nil(),
                &vec![1u8; 1 << 20],
            ],
        )
        .await
        .expect("insert binary parameters, 1 MiB bytea");
    let r = client
        .query_one(
            "SELECT id, by FROM typed WHERE tenant_id = 'acme' AND i4 = $1",
            &[&77i32],
        )
        .await
        .expect("equality on an encrypted int4");
    assert_eq!(r.get::<_, i64>(0), 3);
    assert_eq!(r.get::<_, Vec<u8>>(1).len(), 1 << 20);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_ciphertexts_fail_to_decrypt_with_xx001() {
    let (regions, _keys, proxy) = setup().await;
    let client = tenant_client(&proxy, None).await;
    for (tenant, id) in [("acme", 1i64), ("umbrella", 1)] {
        client
            .execute(
                "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ($1, $2, $3, $4)",
                &[&tenant, &id, &format!("{tenant}@x.example"), &"Name"],
            )
            .await
            .expect("insert");
    }
    let eu = regions.client("eu").await;
    // Another tenant's ciphertext copied into acme's row.
    eu.batch_execute(
        "UPDATE customers SET email = (SELECT email FROM customers WHERE tenant_id = 'umbrella') WHERE tenant_id = 'acme'",
    )
    .await
    .expect("direct tamper");
    let err = client
        .query(
            "SELECT email FROM customers WHERE tenant_id = $1",
            &[&"acme"],
        )
        .await
        .expect_err("a moved ciphertext must not decrypt");
    assert_eq!(sqlstate(&err).as_deref(), Some("XX001"), "{err:?}");
    // The session goes on.
    let ok = client
        .query(
            "SELECT full_name FROM customers WHERE tenant_id = $1",
            &[&"acme"],
        )
        .await
        .expect("other columns still read");
    assert_eq!(ok.len(), 1);
    // full_name (randomized) copied into email's column of the same row.
    eu.batch_execute(
        "UPDATE customers SET email = convert_to(full_name, 'UTF8') WHERE tenant_id = 'umbrella'",
    )
    .await
    .expect("direct tamper 2");
    let err = client
        .query(
            "SELECT email FROM customers WHERE tenant_id = $1",
            &[&"umbrella"],
        )
        .await
        .expect_err("a value from another column must not decrypt");
    assert_eq!(sqlstate(&err).as_deref(), Some("XX001"), "{err:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_over_ciphertext_are_refused() {
    let (_regions, _keys, proxy) = setup().await;
    let client = tenant_client(&proxy, Some("acme")).await;
    for (sql, needle) in [
        ("SELECT * FROM customers WHERE email LIKE 'a%'", "LIKE"),
        ("SELECT * FROM customers ORDER BY email", "ORDER BY"),
        ("SELECT max(email) FROM customers", "max"),
        ("SELECT * FROM customers WHERE full_name = 'x'", "random nonce"),
        ("UPDATE customers SET email = lower('X')", "computed value"),
        ("INSERT INTO customers (tenant_id, id, email) SELECT tenant_id, id + 100, email FROM leads", "INSERT … SELECT"),
        ("INSERT INTO orders (tenant_id, id, amount) SELECT tenant_id, id, length(email) FROM customers", "length"),
    ] {
        let err = client.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{sql}: {err:?}");
        let db = err.as_db_error().expect("an ErrorResponse");
        assert!(db.message().contains(needle), "{sql}: {}", db.message());
        assert!(db.hint().is_some(), "{sql}: no hint");
        // The extended protocol refuses it too.
        let err = client.query(sql, &[]).await.expect_err(sql);
        assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{sql} (extended)");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_grouping_on_deterministic_columns_match_plaintext_answers() {
    let (_regions, _keys, proxy) = setup().await;
    let client = tenant_client(&proxy, Some("acme")).await;
    let emails = ["a@x", "b@x", "a@x", "c@x", "b@x", "a@x"];
    for (i, e) in emails.iter().enumerate() {
        client
            .execute(
                "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('acme', $1, $2, 'n')",
                &[&(i as i64), e],
            )
            .await
            .expect("insert customer");
    }
    client
        .execute(
            "INSERT INTO leads (tenant_id, id, email) VALUES ('acme', 1, $1), ('acme', 2, $2)",
            &[&"b@x", &"z@x"],
        )
        .await
        .expect("insert leads");
    let groups = client
        .query("SELECT email, count(*) FROM customers GROUP BY email", &[])
        .await
        .expect("group by");
    let mut got: Vec<(String, i64)> = groups.iter().map(|r| (r.get(0), r.get(1))).collect();
    got.sort();
    assert_eq!(
        got,
        vec![("a@x".into(), 3), ("b@x".into(), 2), ("c@x".into(), 1)]
    );
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT email) FROM customers", &[])
        .await
        .expect("count distinct")
        .get(0);
    assert_eq!(distinct, 3);
    let joined = client
        .query(
            "SELECT c.id, l.id FROM customers c JOIN leads l ON c.email = l.email AND c.tenant_id = l.tenant_id ORDER BY c.id",
            &[],
        )
        .await
        .expect("join on an equality group");
    let pairs: Vec<(i64, i64)> = joined.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(pairs, vec![(1, 1), (4, 1)]);
    let not_equal: i64 = client
        .query_one(
            "SELECT count(*) FROM customers WHERE email <> $1",
            &[&"a@x"],
        )
        .await
        .expect("<>")
        .get(0);
    assert_eq!(not_equal, 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_storage_type_refuses_the_start_naming_the_column() {
    let regions = TestRegions::start().await;
    regions
        .batch_everywhere(
            "CREATE TABLE customers (tenant_id text, id bigint, email integer, full_name text);\
             CREATE TABLE leads (tenant_id text, id bigint, email bytea);",
        )
        .await;
    let keys = RootKeys::write(7);
    let err = regionguard::server::Proxy::start(encrypted_config(&regions, &keys))
        .await
        .err()
        .expect("start must fail");
    let message = err.to_string();
    assert!(message.contains("customers.email"), "{message}");
}

/// `pg_dump` of `region`'s database, as plain SQL.
fn pg_dump(regions: &TestRegions, region: &str) -> String {
    let bin = regionguard::localpg::PgBinaries::find().expect("Postgres binaries");
    let mut program = bin.program("pg_dump");
    if !program.is_file() {
        // Wrapper directories (initdb, pg_ctl, postgres only): the client
        // programs are on the PATH.
        program = "pg_dump".into();
    }
    let out = std::process::Command::new(&program)
        .arg("--no-owner")
        .arg(regions.connection_string(region))
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_written_through_the_proxy_are_nowhere_in_databases_dumps_or_logs() {
    let capture = LogCapture::default();
    let _ = tracing_subscriber::fmt()
        // The test's own tokio-postgres client logs its statements; the
        // proxy's control connections only send catalog and key-table SQL.
        .with_env_filter("trace,tokio_postgres=off,sqlparser=off")
        .with_writer(capture.clone())
        .try_init();
    let (regions, _keys, proxy) = setup().await;
    let client = tenant_client(&proxy, None).await;
    let canaries = [
        "canary-lit-9d1e",
        "canary-param-44ab",
        "canary-update-7c20",
        "canary-lookup-e3f1",
        "canary-upsert-5b6c",
        "canary-int-refused",
    ];
    client
        .simple_query(&format!(
            "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('acme', 1, '{}', 'x')",
            canaries[0]
        ))
        .await
        .expect("literal insert");
    client
        .execute(
            "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ($1, 2, $2, $3)",
            &[&"globex", &canaries[1], &canaries[1]],
        )
        .await
        .expect("parameter insert");
    client
        .execute(
            "UPDATE customers SET full_name = $1 WHERE tenant_id = 'acme' AND id = 1",
            &[&canaries[2]],
        )
        .await
        .expect("update");
    client
        .query(
            "SELECT id FROM customers WHERE tenant_id = 'acme' AND email = $1",
            &[&canaries[3]],
        )
        .await
        .expect("lookup");
    client
        .execute(
            "INSERT INTO customers (tenant_id, id, email) VALUES ('acme', 1, 'e') ON CONFLICT (tenant_id, id) DO UPDATE SET full_name = $1",
            &[&canaries[4]],
        )
        .await
        .expect("upsert");
    // Refused statements and invalid values carry canaries too.
    let _ = client
        .simple_query(&format!(
            "SELECT * FROM customers WHERE tenant_id = 'acme' AND email LIKE '{}'",
            canaries[5]
        ))
        .await
        .expect_err("refused");
    let _ = client
        .simple_query(&format!(
            "INSERT INTO typed (tenant_id, id, i4) VALUES ('acme', 9, '{}')",
            canaries[5]
        ))
        .await
        .expect_err("not an int4");
    let read = client
        .query(
            "SELECT email, full_name FROM customers WHERE tenant_id = 'acme' ORDER BY id",
            &[],
        )
        .await
        .expect("read back");
    assert_eq!(read[0].get::<_, String>(1), canaries[4]);
    let mut places = Vec::new();
    for region in ["eu", "us", "apac"] {
        places.push((format!("pg_dump of {region}"), pg_dump(&regions, region)));
        places.push((
            format!("customers in {region}"),
            raw_dump(&regions, region, "customers").await,
        ));
    }
    proxy.shutdown().await;
    let logs = capture.text();
    assert!(
        logs.len() > 1000,
        "expected TRACE logs, got {} bytes",
        logs.len()
    );
    places.push(("proxy logs".into(), logs));
    for (place, text) in &places {
        for canary in canaries {
            if let Some(at) = text.find(canary) {
                let start = text[..at].rfind('\n').unwrap_or(0);
                panic!(
                    "`{canary}` found in {place}: {}",
                    &text[start..(at + 200).min(text.len())]
                );
            }
        }
    }
    // The ciphertext sits in the tenants' regions only.
    assert_eq!(regions.rows_in("eu", "customers").await.len(), 1);
    assert_eq!(regions.rows_in("us", "customers").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_typed_statements_encrypt_and_decrypt() {
    use tokio_postgres::types::Type;
    let (regions, _keys, proxy) = setup().await;
    let client = tenant_client(&proxy, Some("acme")).await;
    // Parameter types declared by the client (as JDBC does): varchar for a
    // text column is the same binary encoding; int8 for an int4 column is not.
    let insert = client
        .prepare_typed(
            "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ($1, $2, $3, $4)",
            &[Type::TEXT, Type::INT8, Type::VARCHAR, Type::TEXT],
        )
        .await
        .expect("prepare with declared types");
    // Pipelined: tokio-postgres sends all four before reading any answer.
    let (a, b, c, d) = tokio::join!(
        client.execute(&insert, &[&"acme", &1i64, &"p1@x", &"P One"]),
        client.execute(&insert, &[&"acme", &2i64, &"p2@x", &"P Two"]),
        client.query(
            "SELECT email FROM customers WHERE tenant_id = 'acme' AND id = 1",
            &[]
        ),
        client.query_one(
            "SELECT count(*) FROM customers WHERE email = $1",
            &[&"p2@x"]
        ),
    );
    a.expect("pipelined insert 1");
    b.expect("pipelined insert 2");
    assert_eq!(c.expect("pipelined select")[0].get::<_, String>(0), "p1@x");
    assert_eq!(d.expect("pipelined lookup").get::<_, i64>(0), 1);
    let wrong = client
        .prepare_typed(
            "INSERT INTO typed (tenant_id, id, i4) VALUES ($1, $2, $3)",
            &[Type::TEXT, Type::INT8, Type::INT8],
        )
        .await
        .expect("prepare");
    let err = client
        .execute(&wrong, &[&"acme", &1i64, &5i64])
        .await
        .expect_err("int8 binary for an int4 column");
    assert_eq!(sqlstate(&err).as_deref(), Some("42804"), "{err:?}");
    // The statement's own description shows the logical types.
    let stmt = client
        .prepare("SELECT email, full_name, id FROM customers WHERE email = $1")
        .await
        .expect("prepare a select");
    assert_eq!(stmt.params(), &[Type::TEXT]);
    let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(types, vec![Type::TEXT, Type::TEXT, Type::INT8]);
    // A statement prepared with literals for one tenant is not run for another.
    client
        .batch_execute("SET regionguard.tenant = 'acme'")
        .await
        .expect("set tenant");
    let sealed = client
        .prepare("SELECT id FROM customers WHERE email = 'p1@x'")
        .await
        .expect("prepare with a literal");
    assert_eq!(
        client
            .query(&sealed, &[])
            .await
            .expect("run for acme")
            .len(),
        1
    );
    client
        .batch_execute("SET regionguard.tenant = 'umbrella'")
        .await
        .expect("switch tenant");
    let err = client
        .query(&sealed, &[])
        .await
        .expect_err("sealed for acme");
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
    assert_eq!(regions.rows_in("eu", "customers").await.len(), 2);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_several_tenants_use_each_rows_tenant_key() {
    let (_regions, _keys, proxy) = setup().await;
    let client = tenant_client(&proxy, None).await;
    client
        .simple_query(
            "INSERT INTO customers (tenant_id, id, email, full_name) VALUES \
             ('acme', 1, 'a@acme', 'A'), ('umbrella', 1, 'u@umbrella', 'U')",
        )
        .await
        .expect("multi-row insert, one key per row's tenant");
    let rows = client
        .query(
            "SELECT tenant_id, email FROM customers WHERE tenant_id IN ('acme', 'umbrella') ORDER BY tenant_id",
            &[],
        )
        .await
        .expect("the tenant column tells each row's key");
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            ("acme".into(), "a@acme".into()),
            ("umbrella".into(), "u@umbrella".into())
        ]
    );
    let err = client
        .query(
            "SELECT email FROM customers WHERE tenant_id IN ('acme', 'umbrella')",
            &[],
        )
        .await
        .expect_err("without the tenant column the key is unknown");
    assert_eq!(sqlstate(&err).as_deref(), Some("XX001"), "{err:?}");
    assert!(err.as_db_error().and_then(|e| e.hint()).is_some());
    proxy.shutdown().await;
}
