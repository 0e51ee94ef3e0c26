//! Transactions are pinned to one region: BEGIN is held until the first
//! statement that names a region, a statement for another region fails the
//! transaction (42501, then 25P02 until ROLLBACK), ROLLBACK recovers.

mod support;

use support::{
    expect_sqlstate, served_by, start_proxy, tenant_client, within, TestRegions, REGIONS,
    ROUTING_TENANTS,
};
use tokio_postgres::SimpleQueryMessage;

async fn setup() -> (TestRegions, regionguard::server::Proxy) {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let proxy = start_proxy(regions.routing_config(&ROUTING_TENANTS)).await;
    (regions, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_begin_with_set_local_commits_in_the_tenants_region() {
    let (regions, proxy) = setup().await;
    within(30, "lazy BEGIN", async {
        let client = tenant_client(&proxy, None).await;
        // Simple protocol, statement by statement.
        client
            .simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .expect("BEGIN");
        client
            .simple_query("SET LOCAL regionguard.tenant = 'initech'")
            .await
            .expect("SET LOCAL");
        client
            .simple_query("INSERT INTO customers (tenant_id, id, email) VALUES ('initech', 1, 'a')")
            .await
            .expect("INSERT");
        let iso = client
            .simple_query("SHOW transaction_isolation")
            .await
            .expect("SHOW");
        let iso = iso.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(
            iso.as_deref(),
            Some("repeatable read"),
            "BEGIN's options kept"
        );
        assert_eq!(
            served_by(&regions, &client, "SELECT current_setting('port')").await,
            "apac",
            "neutral statements follow the pinned transaction"
        );
        client.simple_query("COMMIT").await.expect("COMMIT");
        // After COMMIT, the session has no tenant again.
        assert_eq!(
            served_by(&regions, &client, "SELECT current_setting('port')").await,
            "eu"
        );

        // Extended protocol through tokio-postgres' transaction API, with
        // statements prepared before BEGIN (preparing inside the transaction
        // is `prepare_inside_a_held_transaction_does_not_pin_it`).
        let mut client = client;
        let insert_customer = client
            .prepare("INSERT INTO customers (tenant_id, id, email) VALUES ($1, 2, 'b')")
            .await
            .unwrap();
        let insert_order = client
            .prepare("INSERT INTO orders (tenant_id, id, customer_id, amount) VALUES ($1, 1, 2, 5)")
            .await
            .unwrap();
        let tx = client.transaction().await.expect("BEGIN");
        tx.execute(&insert_customer, &[&"hooli"])
            .await
            .expect("INSERT in tx");
        tx.execute(&insert_order, &[&"globex"])
            .await
            .expect("second us tenant in the same tx");
        tx.commit().await.expect("COMMIT");

        // A whole transaction in one simple query string.
        client
            .simple_query(
                "BEGIN; INSERT INTO customers (tenant_id, id, email) VALUES ('acme', 3, 'c'); \
                 UPDATE customers SET email = 'cc' WHERE tenant_id = 'acme' AND id = 3; COMMIT",
            )
            .await
            .expect("one-string transaction");

        // A transaction rolled back leaves nothing.
        client.simple_query("BEGIN").await.unwrap();
        client
            .simple_query("INSERT INTO customers (tenant_id, id, email) VALUES ('wayne', 4, 'd')")
            .await
            .unwrap();
        client.simple_query("ROLLBACK").await.unwrap();

        // A transaction touching no tenant runs in the session's region.
        client.simple_query("BEGIN").await.unwrap();
        assert_eq!(
            served_by(&regions, &client, "SELECT current_setting('port')").await,
            "eu"
        );
        client.simple_query("COMMIT").await.unwrap();
    })
    .await;
    assert_eq!(
        regions.rows_in("apac", "customers").await,
        [("initech".into(), 1)]
    );
    assert_eq!(
        regions.rows_in("us", "customers").await,
        [("hooli".into(), 2)]
    );
    assert_eq!(
        regions.rows_in("us", "orders").await,
        [("globex".into(), 1)]
    );
    assert_eq!(
        regions.rows_in("eu", "customers").await,
        [("acme".into(), 3)]
    );
    assert!(regions
        .regions_holding("customers", "wayne", 4)
        .await
        .is_empty());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_for_another_region_fails_the_transaction() {
    let (regions, proxy) = setup().await;
    within(30, "pinned transaction", async {
        let client = tenant_client(&proxy, None).await;
        client.simple_query("BEGIN").await.unwrap();
        client
            .simple_query("INSERT INTO customers (tenant_id, id, email) VALUES ('globex', 1, 'a')")
            .await
            .expect("pins to us");
        // Another region's tenant: refused, transaction failed.
        let err = client
            .simple_query("INSERT INTO customers (tenant_id, id, email) VALUES ('acme', 1, 'b')")
            .await;
        support::expect_refusal(err, "42501", &["acme", "globex"], "other region in tx");
        // Everything else now gets 25P02, in both protocols, even a
        // statement for the pinned region.
        let err = client
            .simple_query("INSERT INTO customers (tenant_id, id, email) VALUES ('hooli', 1, 'c')")
            .await;
        assert_eq!(expect_sqlstate(err, "after failure"), "25P02");
        let err = client.query("SELECT 1", &[]).await;
        assert_eq!(expect_sqlstate(err, "after failure, extended"), "25P02");
        // ROLLBACK recovers; nothing of the transaction was committed.
        client.simple_query("ROLLBACK").await.expect("ROLLBACK");
        client
            .simple_query("INSERT INTO customers (tenant_id, id, email) VALUES ('acme', 2, 'd')")
            .await
            .expect("usable after ROLLBACK");

        // COMMIT of a failed transaction rolls back, as in Postgres.
        client.simple_query("BEGIN").await.unwrap();
        client
            .simple_query("DELETE FROM customers WHERE tenant_id = 'acme' AND id = 2")
            .await
            .expect("pins to eu");
        let err = client
            .simple_query("DELETE FROM customers WHERE tenant_id = 'initech'")
            .await;
        support::expect_refusal(err, "42501", &["initech", "acme"], "other region");
        client.simple_query("COMMIT").await.expect("COMMIT answers");
        // The DELETE was rolled back.
        assert_eq!(
            regions.regions_holding("customers", "acme", 2).await,
            ["eu"]
        );

        // A refusal before any statement pinned the transaction (held BEGIN).
        client.simple_query("BEGIN").await.unwrap();
        let err = client.simple_query("DELETE FROM customers").await;
        support::expect_refusal(err, "42501", &[], "no tenant in held tx");
        let err = client.simple_query("SELECT 1").await;
        assert_eq!(expect_sqlstate(err, "held tx failed"), "25P02");
        client.simple_query("ROLLBACK").await.expect("ROLLBACK");
        client.simple_query("SELECT 1").await.expect("usable");

        // The transaction API: the other region's statement fails, the
        // rollback recovers.
        let mut client = client;
        let insert = client
            .prepare("INSERT INTO orders (tenant_id, id, amount) VALUES ($1, $2, 1)")
            .await
            .unwrap();
        let tx = client.transaction().await.unwrap();
        tx.execute(&insert, &[&"wayne", &1i64])
            .await
            .expect("pins to apac");
        let err = tx.execute(&insert, &[&"umbrella", &2i64]).await;
        support::expect_refusal(
            err,
            "42501",
            &["umbrella", "wayne"],
            "extended other region",
        );
        tx.rollback().await.expect("ROLLBACK");
        client.simple_query("SELECT 1").await.expect("usable");
    })
    .await;
    for region in REGIONS {
        let rows = regions.rows_in(region, "customers").await;
        let want: Vec<(String, i64)> = if region == "eu" {
            vec![("acme".into(), 2)]
        } else {
            vec![]
        };
        assert_eq!(rows, want, "customers in {region}");
        assert!(
            regions.rows_in(region, "orders").await.is_empty(),
            "orders in {region}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_pass_inside_a_pinned_transaction() {
    let (regions, proxy) = setup().await;
    within(30, "savepoints", async {
        let client = tenant_client(&proxy, Some("hooli")).await;
        client
            .simple_query(
                "BEGIN; INSERT INTO customers (tenant_id, id) VALUES ('hooli', 1); SAVEPOINT s1; \
                 INSERT INTO customers (tenant_id, id) VALUES ('hooli', 2); ROLLBACK TO SAVEPOINT s1; \
                 INSERT INTO customers (tenant_id, id) VALUES ('hooli', 3); RELEASE s1; COMMIT",
            )
            .await
            .expect("savepoints");
    })
    .await;
    assert_eq!(
        regions.rows_in("us", "customers").await,
        [("hooli".into(), 1), ("hooli".into(), 3)]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_set_local_fails_the_transaction() {
    let (regions, proxy) = setup().await;
    within(30, "refused SET LOCAL in tx", async {
        let client = tenant_client(&proxy, None).await;
        client
            .simple_query("INSERT INTO customers (tenant_id, id) VALUES ('acme', 2)")
            .await
            .unwrap();
        client.simple_query("BEGIN").await.unwrap();
        client
            .simple_query("DELETE FROM customers WHERE tenant_id = 'acme' AND id = 2")
            .await
            .expect("pins to eu");
        let err = client
            .simple_query("SET LOCAL regionguard.tenant = 'initech'")
            .await;
        support::expect_refusal(err, "42501", &["initech", "acme"], "SET LOCAL other region");
        let err = client.simple_query("SELECT 1").await;
        assert_eq!(expect_sqlstate(err, "after the refused SET LOCAL"), "25P02");
        client.simple_query("COMMIT").await.expect("COMMIT answers");
    })
    .await;
    assert_eq!(
        regions.regions_holding("customers", "acme", 2).await,
        ["eu"],
        "the DELETE of the failed transaction must not be committed"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_inside_a_held_transaction_does_not_pin_it() {
    let (regions, proxy) = setup().await;
    within(30, "prepare in a held tx", async {
        let mut client = tenant_client(&proxy, None).await;
        let tx = client.transaction().await.expect("BEGIN");
        tx.execute(
            "INSERT INTO customers (tenant_id, id, email) VALUES ($1, 2, 'b')",
            &[&"hooli"],
        )
        .await
        .expect("INSERT for a us tenant, prepared inside the transaction");
        tx.commit().await.expect("COMMIT");
    })
    .await;
    assert_eq!(
        regions.rows_in("us", "customers").await,
        [("hooli".into(), 2)]
    );
    proxy.shutdown().await;
}

/// The region of the server that runs a statement without tenant data
/// sent with the extended protocol (a parameter keeps its text out of the
/// simple-query shortcut for plain statements).
async fn extended_served_by(
    regions: &TestRegions,
    client: &tokio_postgres::Client,
) -> &'static str {
    let row = client
        .query_one("SELECT current_setting($1)", &[&"port"])
        .await
        .expect("SELECT current_setting($1)");
    let port: u16 = row.get::<_, String>(0).parse().expect("a port number");
    regions
        .region_at_port(port)
        .unwrap_or_else(|| panic!("port {port} is no region's"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_neutral_statements_follow_the_tenant_and_the_pinned_transaction() {
    let (regions, proxy) = setup().await;
    within(30, "extended neutral statements", async {
        let client = tenant_client(&proxy, None).await;
        assert_eq!(
            extended_served_by(&regions, &client).await,
            "eu",
            "no tenant: the session's home region"
        );
        client
            .simple_query("SET regionguard.tenant = 'globex'")
            .await
            .expect("SET");
        assert_eq!(
            extended_served_by(&regions, &client).await,
            "us",
            "the session tenant's region"
        );
        client
            .simple_query("RESET regionguard.tenant")
            .await
            .expect("RESET");
        client.simple_query("BEGIN").await.expect("BEGIN");
        client
            .execute(
                "INSERT INTO customers (tenant_id, id, email) VALUES ($1, 7, 'n')",
                &[&"initech"],
            )
            .await
            .expect("INSERT pins the transaction to apac");
        assert_eq!(
            extended_served_by(&regions, &client).await,
            "apac",
            "the pinned transaction's region"
        );
        client.simple_query("ROLLBACK").await.expect("ROLLBACK");
        assert_eq!(
            extended_served_by(&regions, &client).await,
            "eu",
            "after the transaction, the home region again"
        );
    })
    .await;
}
