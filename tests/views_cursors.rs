//! Views and cursors over encrypted columns (ADR 14), against three real
//! regional clusters: a view column that passes an encrypted column through
//! decrypts like the base column (views created through the proxy and
//! directly in a region, nested, renamed), a view column computed from an
//! encrypted column is refused, a view over tenant data is tenant-scoped,
//! and FETCH from a cursor decrypts with the keys of its DECLARE.

mod support;

use regionguard::config::KeySource;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use support::*;
use tokio_postgres::SimpleQueryMessage;

const SCHEMA: &str = "\
    CREATE TABLE customers (tenant_id text NOT NULL, id bigint NOT NULL, email bytea, \
        full_name text, note text, PRIMARY KEY (tenant_id, id));\n\
    CREATE TABLE orders (tenant_id text NOT NULL, id bigint NOT NULL, customer_id bigint, \
        amount numeric, PRIMARY KEY (tenant_id, id));\n";

/// Views created directly in region eu, before the proxy starts.
const DIRECT_VIEWS: &str = "\
    CREATE VIEW direct_v AS SELECT c.tenant_id, c.id, c.email AS mail FROM customers c;\n\
    CREATE VIEW computed_v AS SELECT tenant_id, id, upper(full_name) AS shout FROM customers;\n";

struct Setup {
    regions: TestRegions,
    _keys: tempfile::TempDir,
    proxy: regionguard::server::Proxy,
}

async fn setup() -> Setup {
    let regions = TestRegions::start().await;
    regions.batch_everywhere(SCHEMA).await;
    regions
        .client("eu")
        .await
        .batch_execute(DIRECT_VIEWS)
        .await
        .expect("views created in region eu");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    for (i, (name, region)) in config.regions.iter_mut().enumerate() {
        let path = dir.path().join(format!("{name}.key"));
        let mut f = std::fs::File::create(&path).expect("key file");
        let key: Vec<u8> = (0..32u8)
            .map(|b| b.wrapping_mul(11).wrapping_add(i as u8))
            .collect();
        use base64::Engine;
        writeln!(
            f,
            "1:{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
        .expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        region.key = Some(KeySource::File { path });
    }
    classify_customers(&mut config, true);
    let proxy = start_proxy(config).await;
    let client = tenant_client(&proxy, None).await;
    for (tenant, id, email, name) in [
        ("acme", 1i64, "ann@acme.example", "Ann Canaryone"),
        ("acme", 2, "bob@acme.example", "Bob Canarytwo"),
        ("umbrella", 1, "eve@umbrella.example", "Eve Canarythree"),
    ] {
        client
            .execute(
                "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ($1, $2, $3, $4)",
                &[&tenant, &id, &email, &name],
            )
            .await
            .expect("insert");
    }
    Setup {
        regions,
        _keys: dir,
        proxy,
    }
}

/// The rows of a simple query's results, fields joined with `|`.
async fn text_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL"))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_decrypt_passed_through_columns_and_refuse_computed_ones() {
    let s = setup().await;
    let client = tenant_client(&s.proxy, None).await;

    // Created through the proxy (in every region), renamed columns.
    client
        .batch_execute(
            "CREATE VIEW cust_v AS SELECT tenant_id, id, email, full_name AS name FROM customers",
        )
        .await
        .expect("CREATE VIEW over encrypted columns through the proxy");
    let rows = text_rows(
        &client,
        "SELECT * FROM cust_v WHERE tenant_id = 'acme' ORDER BY id",
    )
    .await
    .expect("select through the view (text)");
    assert_eq!(
        rows,
        vec![
            "acme|1|ann@acme.example|Ann Canaryone",
            "acme|2|bob@acme.example|Bob Canarytwo"
        ]
    );
    let rows = client
        .query(
            "SELECT name, email FROM cust_v WHERE tenant_id = $1 AND email = $2",
            &[&"acme", &"bob@acme.example"],
        )
        .await
        .expect("select through the view (binary, equality on the view column)");
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![("Bob Canarytwo".to_string(), "bob@acme.example".to_string())]
    );

    // A view over a view.
    client
        .batch_execute(
            "CREATE VIEW cust_v2 AS SELECT name AS who, email AS contact, tenant_id FROM cust_v",
        )
        .await
        .expect("nested view");
    let rows = client
        .query(
            "SELECT who, contact FROM cust_v2 WHERE tenant_id = $1 ORDER BY 1",
            &[&"umbrella"],
        )
        .await
        .expect("select through the nested view (binary)");
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![(
            "Eve Canarythree".to_string(),
            "eve@umbrella.example".to_string()
        )]
    );

    // Created directly in the region.
    let rows = text_rows(
        &client,
        "SELECT mail FROM direct_v WHERE tenant_id = 'acme' ORDER BY id",
    )
    .await
    .expect("view created in the region (text)");
    assert_eq!(rows, vec!["ann@acme.example", "bob@acme.example"]);
    let rows = client
        .query(
            "SELECT * FROM direct_v WHERE tenant_id = $1 ORDER BY id",
            &[&"acme"],
        )
        .await
        .expect("view created in the region (binary)");
    let got: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    assert_eq!(got, vec!["ann@acme.example", "bob@acme.example"]);

    // The database itself only ever holds ciphertext, also through the view.
    let direct = s.regions.client("eu").await;
    let raw = text_rows(
        &direct,
        "SELECT mail::text FROM direct_v UNION ALL SELECT full_name FROM customers",
    )
    .await
    .expect("direct read");
    assert_eq!(raw.len(), 6, "three rows in eu, read twice");
    for v in &raw {
        assert!(
            !v.contains("acme.example") && !v.contains("Canary"),
            "plaintext in the region: {v}"
        );
    }

    // A view column computed from an encrypted column: refused, never
    // shown as ciphertext; its plain columns still work.
    let e = text_rows(&client, "SELECT * FROM computed_v WHERE tenant_id = 'acme'").await;
    expect_refusal(
        e,
        "0A000",
        &["acme"],
        "SELECT * over a computed view column",
    );
    let e = client
        .query("SELECT * FROM computed_v WHERE tenant_id = $1", &[&"acme"])
        .await;
    expect_refusal(e, "0A000", &["acme"], "the same in the extended protocol");
    let e = text_rows(
        &client,
        "SELECT shout FROM computed_v WHERE tenant_id = 'acme'",
    )
    .await;
    expect_refusal(e, "0A000", &["acme"], "naming the computed view column");
    let ids = text_rows(
        &client,
        "SELECT id FROM computed_v WHERE tenant_id = 'acme' ORDER BY id",
    )
    .await
    .expect("plain columns of the view");
    assert_eq!(ids, vec!["1", "2"]);

    // CREATE VIEW that would encrypt a constant, or compute over ciphertext.
    let e = client
        .batch_execute(
            "CREATE VIEW bob_v AS SELECT id FROM customers WHERE email = 'bob@acme.example'",
        )
        .await;
    expect_refusal(
        e,
        "0A000",
        &["bob@acme.example"],
        "CREATE VIEW comparing with a constant",
    );
    let e = client
        .batch_execute(
            "CREATE VIEW lower_v AS SELECT tenant_id, lower(email::text) AS l FROM customers",
        )
        .await;
    expect_refusal(
        e,
        "0A000",
        &[],
        "CREATE VIEW computing over an encrypted column",
    );

    // A view over tenant data is tenant-scoped: no tenant, no answer.
    let e = text_rows(&client, "SELECT * FROM cust_v").await;
    expect_refusal(e, "42501", &[], "a view read without a tenant");
    let with_tenant = tenant_client(&s.proxy, Some("acme")).await;
    // As for a table, the session's tenant places the statement in its
    // region (eu: acme's two rows and umbrella's one); it filters nothing.
    let n = text_rows(&with_tenant, "SELECT count(*) FROM cust_v2")
        .await
        .expect("the session's tenant places the view");
    assert_eq!(n, vec!["3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_from_a_cursor_decrypts_with_the_keys_of_its_declare() {
    let s = setup().await;
    let client = tenant_client(&s.proxy, None).await;

    // Simple protocol.
    client
        .batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT id, email, full_name FROM customers WHERE tenant_id = 'acme' ORDER BY id")
        .await
        .expect("declare");
    let first = text_rows(&client, "FETCH 1 FROM c").await.expect("fetch 1");
    assert_eq!(first, vec!["1|ann@acme.example|Ann Canaryone"]);
    let rest = text_rows(&client, "FETCH ALL FROM c")
        .await
        .expect("fetch all");
    assert_eq!(rest, vec!["2|bob@acme.example|Bob Canarytwo"]);
    client.batch_execute("CLOSE c").await.expect("close");
    let e = text_rows(&client, "FETCH 1 FROM c").await;
    assert_eq!(expect_sqlstate(e, "FETCH after CLOSE"), "34000");
    client.batch_execute("ROLLBACK").await.expect("rollback");

    // Extended protocol, binary results.
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .execute("DECLARE c2 CURSOR FOR SELECT email, full_name FROM customers WHERE tenant_id = $1 ORDER BY id", &[&"acme"])
        .await
        .expect("declare (extended)");
    let rows = client
        .query("FETCH 2 FROM c2", &[])
        .await
        .expect("fetch (extended)");
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            ("ann@acme.example".to_string(), "Ann Canaryone".to_string()),
            ("bob@acme.example".to_string(), "Bob Canarytwo".to_string())
        ]
    );
    client.batch_execute("COMMIT").await.expect("commit");
    let e = client.query("FETCH 1 FROM c2", &[]).await;
    assert_eq!(expect_sqlstate(e, "FETCH after COMMIT"), "34000");

    // WITH HOLD survives COMMIT and is read outside the transaction.
    client
        .batch_execute("BEGIN; DECLARE h CURSOR WITH HOLD FOR SELECT email FROM customers WHERE tenant_id = 'umbrella'; COMMIT")
        .await
        .expect("declare with hold");
    let rows = text_rows(&client, "FETCH ALL FROM h")
        .await
        .expect("fetch a held cursor");
    assert_eq!(rows, vec!["eve@umbrella.example"]);
    client.batch_execute("CLOSE h").await.expect("close h");
}
