//! Fail closed: every statement the proxy cannot place is refused with an
//! ErrorResponse (SQLSTATE 42501, a hint, no tenant id in the text), reaches
//! no region, and leaves the session usable.

mod support;

use support::{
    expect_refusal, raw, start_proxy, tenant_client, within, TestRegions, REGIONS, ROUTING_TENANTS,
};
use tokio::io::AsyncWriteExt;
use tokio_postgres::Client;

/// Every tenant id the tests use: none may appear in a refusal.
const SECRETS: [&str; 7] = [
    "acme", "umbrella", "globex", "hooli", "initech", "wayne", "nobody",
];

async fn setup() -> (TestRegions, regionguard::server::Proxy) {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    // One row per tenant in its home region.
    for (tenant, region) in ROUTING_TENANTS {
        regions
            .client(region)
            .await
            .execute(
                "INSERT INTO customers (tenant_id, id, email) VALUES ($1, 1, 'seed')",
                &[&tenant],
            )
            .await
            .unwrap();
    }
    let proxy = start_proxy(regions.routing_config(&ROUTING_TENANTS)).await;
    (regions, proxy)
}

/// Refused in both protocols: the simple query and the extended one.
async fn refused_both_ways(client: &Client, sql: &str, secrets: &[&str]) -> String {
    let simple = expect_refusal(client.simple_query(sql).await, "42501", secrets, sql);
    let extended = expect_refusal(client.execute(sql, &[]).await, "42501", secrets, sql);
    assert_eq!(simple, extended, "same refusal in both protocols: {sql}");
    simple
}

/// The session still works after refusals.
async fn still_usable(client: &Client) {
    client
        .simple_query("SELECT 1")
        .await
        .expect("session usable after a refusal");
    client
        .query("SELECT 1", &[])
        .await
        .expect("session usable after a refusal (extended)");
}

/// Every region still holds exactly its seeded rows.
async fn untouched(regions: &TestRegions) {
    for region in REGIONS {
        let mut want: Vec<(String, i64)> = ROUTING_TENANTS
            .iter()
            .filter(|(_, r)| *r == region)
            .map(|(t, _)| (t.to_string(), 1))
            .collect();
        want.sort();
        assert_eq!(
            regions.rows_in(region, "customers").await,
            want,
            "customers in {region}"
        );
        assert!(
            regions.rows_in(region, "orders").await.is_empty(),
            "orders in {region}"
        );
        let changed: i64 = regions
            .client(region)
            .await
            .query_one("SELECT count(*) FROM customers WHERE email <> 'seed'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(changed, 0, "changed rows in {region}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_scoped_statement_without_tenant_is_refused() {
    let (regions, proxy) = setup().await;
    within(30, "no tenant", async {
        let client = tenant_client(&proxy, None).await;
        for sql in [
            "SELECT * FROM customers",
            "SELECT * FROM customers WHERE id = 1",
            "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id",
            "UPDATE customers SET email = 'x' WHERE id = 1",
            "DELETE FROM customers",
            "DELETE FROM orders WHERE amount > 0",
            "INSERT INTO orders (id, amount) VALUES (1, 2)",
            "SELECT * FROM customers WHERE tenant_id = tenant_id",
            "SELECT * FROM customers WHERE tenant_id LIKE 'a%'",
            "SELECT * FROM customers WHERE tenant_id = 'acme' OR id = 1",
        ] {
            let message = refused_both_ways(&client, sql, &SECRETS).await;
            assert!(
                message.contains("customers") || message.contains("orders"),
                "the refusal names the table: {message:?} ({sql})"
            );
        }
        // Parameterised, with the tenant parameter missing from the predicate.
        let err = client
            .query("SELECT * FROM customers WHERE id = $1", &[&1i64])
            .await;
        expect_refusal(err, "42501", &SECRETS, "no tenant, with a parameter");
        still_usable(&client).await;
    })
    .await;
    untouched(&regions).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_sources_are_refused() {
    let (regions, proxy) = setup().await;
    within(30, "conflicts", async {
        // comment vs WHERE
        let client = tenant_client(&proxy, None).await;
        refused_both_ways(
            &client,
            "/* regionguard.tenant = 'acme' */ DELETE FROM customers WHERE tenant_id = 'globex'",
            &SECRETS,
        )
        .await;
        // Same region, still a different tenant: refused too.
        refused_both_ways(
            &client,
            "/* regionguard.tenant = 'acme' */ UPDATE customers SET email = 'x' WHERE tenant_id = 'umbrella'",
            &SECRETS,
        )
        .await;
        // SET vs WHERE, SET vs a binary parameter, SET vs comment.
        client
            .simple_query("SET regionguard.tenant = 'globex'")
            .await
            .unwrap();
        refused_both_ways(
            &client,
            "UPDATE customers SET email = 'x' WHERE tenant_id = 'initech'",
            &SECRETS,
        )
        .await;
        refused_both_ways(
            &client,
            "INSERT INTO orders (tenant_id, id, amount) VALUES ('hooli', 9, 1)",
            &SECRETS,
        )
        .await;
        let err = client
            .execute("DELETE FROM customers WHERE tenant_id = $1", &[&"acme"])
            .await;
        expect_refusal(err, "42501", &SECRETS, "SET vs parameter");
        refused_both_ways(
            &client,
            "/* regionguard.tenant = 'wayne' */ DELETE FROM customers",
            &SECRETS,
        )
        .await;
        still_usable(&client).await;

        // SET LOCAL vs WHERE (inside a transaction: the refusal fails it).
        client.simple_query("RESET regionguard.tenant").await.unwrap();
        client.simple_query("BEGIN").await.unwrap();
        client
            .simple_query("SET LOCAL regionguard.tenant = 'globex'")
            .await
            .unwrap();
        let err = client
            .simple_query("DELETE FROM customers WHERE tenant_id = 'hooli'")
            .await;
        expect_refusal(err, "42501", &SECRETS, "SET LOCAL vs WHERE");
        client.simple_query("ROLLBACK").await.unwrap();

        // startup option vs WHERE
        let client = tenant_client(&proxy, Some("wayne")).await;
        refused_both_ways(
            &client,
            "DELETE FROM customers WHERE tenant_id = 'initech'",
            &SECRETS,
        )
        .await;
        still_usable(&client).await;
    })
    .await;
    untouched(&regions).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenant_is_refused() {
    let (regions, proxy) = setup().await;
    within(30, "unknown tenant", async {
        let client = tenant_client(&proxy, None).await;
        for sql in [
            "SELECT * FROM customers WHERE tenant_id = 'nobody'",
            "INSERT INTO customers (tenant_id, id, email) VALUES ('nobody', 1, 'x')",
            "UPDATE customers SET email = 'x' WHERE tenant_id = 'nobody'",
            "DELETE FROM customers WHERE tenant_id = 'nobody'",
            "/* regionguard.tenant = 'nobody' */ SELECT 1",
            // Tenant ids are case-sensitive text: ACME is not acme.
            "DELETE FROM customers WHERE tenant_id = 'ACME'",
        ] {
            let message = refused_both_ways(&client, sql, &SECRETS).await;
            assert!(!message.contains("ACME"), "{message}");
        }
        let err = client
            .execute("DELETE FROM customers WHERE tenant_id = $1", &[&"nobody"])
            .await;
        expect_refusal(err, "42501", &SECRETS, "unknown tenant parameter");
        // SET to an unknown tenant is refused and changes nothing.
        let err = client
            .simple_query("SET regionguard.tenant = 'nobody'")
            .await;
        expect_refusal(err, "42501", &SECRETS, "SET unknown tenant");
        let rows = client
            .simple_query("SHOW regionguard.tenant")
            .await
            .unwrap();
        let shown = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(shown.as_deref(), Some(""));
        // An unknown tenant in the startup option: refused at connect or at
        // the first tenant-scoped statement, never served.
        let mut config = support::proxy_pg_config(&proxy, None);
        config.options("-c regionguard.tenant=nobody");
        match support::connect(&config).await {
            Err(e) => assert_eq!(support::sqlstate(&e).as_deref(), Some("42501"), "{e:?}"),
            Ok(c) => {
                let err = c.simple_query("DELETE FROM customers").await;
                expect_refusal(err, "42501", &SECRETS, "unknown startup tenant");
            }
        }
        still_usable(&client).await;
    })
    .await;
    untouched(&regions).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_of_an_unserved_region_is_refused_naming_the_region() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let mut tenants = ROUTING_TENANTS.to_vec();
    tenants.push(("marvin", "mars"));
    let proxy = start_proxy(regions.routing_config(&tenants)).await;
    within(30, "unserved region", async {
        let client = tenant_client(&proxy, None).await;
        let message = refused_both_ways(
            &client,
            "INSERT INTO customers (tenant_id, id, email) VALUES ('marvin', 1, 'x')",
            &["marvin"],
        )
        .await;
        assert!(message.contains("mars"), "names the region: {message}");
        still_usable(&client).await;
    })
    .await;
    for region in REGIONS {
        assert!(regions.rows_in(region, "customers").await.is_empty());
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_region_in_list_is_refused() {
    let (regions, proxy) = setup().await;
    within(30, "cross-region IN", async {
        let client = tenant_client(&proxy, None).await;
        for sql in [
            "SELECT * FROM customers WHERE tenant_id IN ('acme', 'globex')",
            "UPDATE customers SET email = 'x' WHERE tenant_id IN ('acme', 'umbrella', 'initech')",
            "DELETE FROM customers WHERE tenant_id IN ('wayne', 'hooli')",
            // A join of tenants of two regions.
            "SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id \
             WHERE c.tenant_id = 'acme' AND o.tenant_id = 'globex'",
            // A subquery for another region's tenant.
            "DELETE FROM customers WHERE tenant_id = 'acme' AND id IN \
             (SELECT customer_id FROM orders WHERE tenant_id = 'initech')",
        ] {
            refused_both_ways(&client, sql, &SECRETS).await;
        }
        let err = client
            .execute(
                "DELETE FROM customers WHERE tenant_id IN ($1, $2)",
                &[&"acme", &"initech"],
            )
            .await;
        expect_refusal(err, "42501", &SECRETS, "cross-region IN of parameters");
        still_usable(&client).await;
    })
    .await;
    untouched(&regions).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_region_multi_row_insert_is_refused() {
    let (regions, proxy) = setup().await;
    within(30, "cross-region multi-row INSERT", async {
        let client = tenant_client(&proxy, None).await;
        refused_both_ways(
            &client,
            "INSERT INTO orders (tenant_id, id, amount) VALUES ('acme', 1, 1), ('umbrella', 1, 2), ('globex', 1, 3)",
            &SECRETS,
        )
        .await;
        let err = client
            .execute(
                "INSERT INTO orders (tenant_id, id, amount) VALUES ($1, 1, 1), ($2, 1, 2)",
                &[&"initech", &"hooli"],
            )
            .await;
        expect_refusal(err, "42501", &SECRETS, "cross-region multi-row INSERT, parameters");
        // INSERT … SELECT reading another region's tenant.
        refused_both_ways(
            &client,
            "INSERT INTO orders (tenant_id, id, amount) SELECT 'acme', id, 1 FROM customers WHERE tenant_id = 'globex'",
            &SECRETS,
        )
        .await;
        still_usable(&client).await;
    })
    .await;
    untouched(&regions).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_moving_a_row_to_another_tenant_is_refused() {
    let (regions, proxy) = setup().await;
    within(30, "tenant move", async {
        let client = tenant_client(&proxy, None).await;
        for sql in [
            "UPDATE customers SET tenant_id = 'globex' WHERE tenant_id = 'acme'",
            "UPDATE customers SET tenant_id = 'umbrella', email = 'x' WHERE tenant_id = 'acme'",
        ] {
            refused_both_ways(&client, sql, &SECRETS).await;
        }
        let err = client
            .execute(
                "UPDATE customers SET tenant_id = $2 WHERE tenant_id = $1",
                &[&"acme", &"initech"],
            )
            .await;
        expect_refusal(err, "42501", &SECRETS, "tenant move with parameters");
        // Setting it to the same tenant is fine.
        client
            .execute(
                "UPDATE customers SET tenant_id = 'acme' WHERE tenant_id = 'acme' AND id = 2",
                &[],
            )
            .await
            .expect("tenant unchanged");
    })
    .await;
    untouched(&regions).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_without_the_tenant_column_is_refused() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    config.auth.method = regionguard::config::AuthMethod::Trust;
    let proxy = start_proxy(config).await;
    within(30, "COPY FROM refused", async {
        let mut s = raw::trusted_session_with(
            proxy.local_addr(),
            &[("options", "-c regionguard.tenant=globex")],
        )
        .await;
        // Rows of a COPY are checked one by one (tests/copy_rows.rs); one
        // that leaves out the tenant column cannot be checked.
        let sql = "COPY customers (id, email) FROM STDIN";
        for msgs in [
            raw::simple_query(&mut s, sql).await,
            raw::extended_text_query(&mut s, sql, &[]).await,
        ] {
            let e = raw::first_error(&msgs).expect("COPY FROM refused");
            assert_eq!(e.get(&b'C').map(String::as_str), Some("42501"), "{e:?}");
            assert!(e.contains_key(&b'H'), "hint: {e:?}");
            assert!(!e.values().any(|v| v.contains("globex")), "{e:?}");
            assert!(!msgs.iter().any(|(t, _)| *t == b'G'), "no CopyInResponse");
            assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'));
        }
        let msgs = raw::simple_query(&mut s, "SELECT 1").await;
        assert_eq!(raw::first_column(&msgs), [Some("1".to_string())]);
    })
    .await;
    for region in REGIONS {
        assert!(regions.rows_in(region, "customers").await.is_empty());
    }
    proxy.shutdown().await;
}

/// A statement prepared with SQL `PREPARE` is invisible to the proxy's
/// analysis at Bind time: binding it through the protocol must not run it
/// unplaced (here: a tenant-scoped statement after the tenant was reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_of_a_statement_the_proxy_did_not_prepare_is_refused() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    config.auth.method = regionguard::config::AuthMethod::Trust;
    let proxy = start_proxy(config).await;
    within(30, "bind of SQL-prepared statement", async {
        let mut s = raw::trusted_session(proxy.local_addr()).await;
        let msgs = raw::simple_query(
            &mut s,
            "SET regionguard.tenant = 'acme'; PREPARE p AS SELECT count(*) FROM customers",
        )
        .await;
        assert!(
            raw::first_error(&msgs).is_none(),
            "PREPARE placed by the session tenant"
        );
        raw::simple_query(&mut s, "RESET regionguard.tenant").await;
        // Bind "p" to the unnamed portal, Execute, Sync.
        let mut out = raw::message(b'B', b"\0p\0\0\0\0\0\0\0");
        out.extend(raw::message(b'E', b"\0\0\0\0\0"));
        out.extend(raw::message(b'S', b""));
        s.write_all(&out).await.expect("send bind");
        let msgs = raw::read_to_ready(&mut s).await;
        let e = raw::first_error(&msgs).expect("bind refused");
        assert_eq!(e.get(&b'C').map(String::as_str), Some("42501"), "{e:?}");
        assert!(e.contains_key(&b'H'), "hint: {e:?}");
        assert!(!msgs.iter().any(|(t, _)| *t == b'D'), "no rows: {msgs:?}");
        let msgs = raw::simple_query(&mut s, "SELECT 1").await;
        assert_eq!(raw::first_column(&msgs), [Some("1".to_string())]);
    })
    .await;
    proxy.shutdown().await;
}
