//! `tenancy.discover`: tables with the tenant column are tenant-scoped as
//! the regional catalogs say, tables without it are not, and a table not
//! seen yet counts as tenant-scoped until the catalogs are read again.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_with_the_tenant_column_are_discovered_and_unknown_tables_fail_closed() {
    let regions = TestRegions::start().await;
    regions
        .batch_everywhere(
            "CREATE TABLE customers (tenant_id text NOT NULL, id bigint, PRIMARY KEY (tenant_id, id));\
             CREATE TABLE countries (code text PRIMARY KEY);\
             INSERT INTO countries VALUES ('de');",
        )
        .await;
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    config.tenancy.tables.clear();
    config.tenancy.discover = true;
    config.tenancy.discover_refresh_secs = 1;
    let proxy = start_proxy(config).await;
    let client = tenant_client(&proxy, None).await;

    // Discovered: customers has the tenant column, countries has not.
    let err = client.query("SELECT * FROM customers", &[]).await;
    let message = expect_refusal(err, "42501", &[], "a discovered tenant-scoped table");
    assert!(message.contains("customers"), "{message}");
    client
        .execute(
            "INSERT INTO customers (tenant_id, id) VALUES ($1, 1)",
            &[&"globex"],
        )
        .await
        .expect("routed by its tenant");
    assert_eq!(
        regions.regions_holding("customers", "globex", 1).await,
        ["us"]
    );
    let n = client
        .query("SELECT * FROM countries", &[])
        .await
        .expect("a table without the tenant column needs no tenant")
        .len();
    assert_eq!(n, 1);

    // Created behind the proxy's back: unknown, so tenant-scoped until the
    // catalogs are read again; then as the catalog says.
    regions
        .batch_everywhere(
            "CREATE TABLE plans (name text);\
             CREATE TABLE invoices (tenant_id text, amount int);",
        )
        .await;
    let err = client.query("SELECT * FROM plans", &[]).await;
    if err.is_err() {
        let message = expect_refusal(err, "42501", &[], "an unknown table fails closed");
        assert!(message.contains("plans"), "{message}");
    }
    let known = wait_until(10, || async {
        client.query("SELECT * FROM plans", &[]).await.is_ok()
    })
    .await;
    assert!(known, "plans is found to have no tenant column");
    let err = client.query("SELECT * FROM invoices", &[]).await;
    let message = expect_refusal(err, "42501", &[], "a new table with the tenant column");
    assert!(message.contains("invoices"), "{message}");
    let rows = client
        .query("SELECT * FROM invoices WHERE tenant_id = 'initech'", &[])
        .await
        .expect("with a tenant predicate");
    assert!(rows.is_empty());
    proxy.shutdown().await;
}
