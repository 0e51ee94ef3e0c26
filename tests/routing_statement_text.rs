//! The text of a statement is tenant data too (literal values): it must only
//! reach its tenant's region, and a refused statement must reach no region.
//! Checked from the outside by logging every parse/bind/execute in every
//! region (`log_min_duration_statement = 0`, `log_statement = 'all'`) and
//! grepping the server logs for canary values.

mod support;

use support::{start_proxy, tenant_client, within, TestRegions, REGIONS, ROUTING_TENANTS};

async fn log_everything(regions: &TestRegions) {
    for region in REGIONS {
        let su = regions
            .cluster(region)
            .connect_superuser("postgres")
            .await
            .expect("superuser");
        for sql in [
            "ALTER SYSTEM SET log_statement = 'all'",
            "ALTER SYSTEM SET log_min_duration_statement = 0",
            "SELECT pg_reload_conf()",
        ] {
            su.simple_query(sql).await.expect(sql);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
}

/// The regions whose server log mentions `canary`.
fn regions_logging(regions: &TestRegions, canary: &str) -> Vec<&'static str> {
    REGIONS
        .into_iter()
        .filter(|r| {
            std::fs::read_to_string(regions.cluster(r).log_file())
                .expect("read the server log")
                .contains(canary)
        })
        .collect()
}

const REFUSED: [&str; 5] = [
    "SELECT * FROM customers WHERE email = 'canary-{p}-1'",
    "SELECT * FROM customers WHERE tenant_id IN ('acme', 'globex') AND email = 'canary-{p}-2'",
    "INSERT INTO customers (tenant_id, id, email) VALUES ('acme', 1, 'canary-{p}-3'), ('globex', 1, 'x')",
    "SELECT * FROM customers WHERE tenant_id = 'nobody' AND email = 'canary-{p}-4'",
    "UPDATE customers SET tenant_id = 'globex' WHERE tenant_id = 'acme' AND email = 'canary-{p}-5'",
];

async fn setup() -> (TestRegions, regionguard::server::Proxy) {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    log_everything(&regions).await;
    let proxy = start_proxy(regions.routing_config(&ROUTING_TENANTS)).await;
    (regions, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_simple_queries_reach_no_region() {
    let (regions, proxy) = setup().await;
    within(30, "refused simple queries", async {
        let client = tenant_client(&proxy, None).await;
        for sql in REFUSED {
            let sql = sql.replace("{p}", "simple");
            let err = client.simple_query(&sql).await;
            support::expect_refusal(err, "42501", &["canary"], &sql);
        }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        regions_logging(&regions, "canary-simple"),
        Vec::<&str>::new()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_prepared_statements_reach_no_region() {
    let (regions, proxy) = setup().await;
    within(30, "refused prepared statements", async {
        let client = tenant_client(&proxy, None).await;
        for sql in REFUSED {
            let sql = sql.replace("{p}", "extended");
            let err = client.query(&sql, &[]).await;
            support::expect_refusal(err, "42501", &["canary"], &sql);
        }
        // A refusal, not Postgres's "relation does not exist" from a region.
        let err = client
            .query("SELECT 1 FROM missing_table, customers", &[])
            .await;
        support::expect_refusal(err, "42501", &[], "tenant-less join with a missing table");
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        regions_logging(&regions, "canary-extended"),
        Vec::<&str>::new()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_values_reach_only_the_tenants_region() {
    let (regions, proxy) = setup().await;
    within(30, "literal values", async {
        // Session region: default (eu); the tenant lives in us.
        let client = tenant_client(&proxy, None).await;
        client
            .execute(
                "INSERT INTO customers (tenant_id, id, email) VALUES ('globex', 1, 'canary-literal-1')",
                &[],
            )
            .await
            .expect("insert");
        client
            .simple_query(
                "INSERT INTO customers (tenant_id, id, email) VALUES ('globex', 2, 'canary-literal-2')",
            )
            .await
            .expect("insert");
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        regions_logging(&regions, "canary-literal-2"),
        ["us"],
        "simple protocol"
    );
    assert_eq!(
        regions_logging(&regions, "canary-literal-1"),
        ["us"],
        "extended protocol"
    );
    proxy.shutdown().await;
}
