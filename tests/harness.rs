//! Tests of the test harness itself: the regional clusters, without the
//! proxy.

mod support;

use std::time::{Duration, Instant};
use support::{TestRegions, REGIONS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_start_and_are_reachable() {
    let regions = TestRegions::start().await;
    let mut ports = Vec::new();
    for region in REGIONS {
        let client = regions.client(region).await;
        let row = client
            .query_one("SELECT current_user::text, current_database()::text", &[])
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), support::ROLE);
        assert_eq!(row.get::<_, String>(1), support::DATABASE);
        ports.push(regions.port(region));
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "each region has its own server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_allow_prepared_transactions() {
    let regions = TestRegions::start().await;
    for region in REGIONS {
        let client = regions.client(region).await;
        let row = client
            .query_one("SHOW max_prepared_transactions", &[])
            .await
            .expect("show");
        assert_eq!(row.get::<_, String>(0), "64", "region {region}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_do_not_share_data() {
    let regions = TestRegions::start().await;
    let eu = regions.client("eu").await;
    let us = regions.client("us").await;
    let ddl =
        "CREATE TABLE customers (tenant_id text NOT NULL, id bigint, PRIMARY KEY (tenant_id, id))";
    eu.batch_execute(ddl).await.expect("create in eu");
    us.batch_execute(ddl).await.expect("create in us");
    eu.execute("INSERT INTO customers VALUES ('acme', 1)", &[])
        .await
        .expect("insert in eu");

    let count = |client: tokio_postgres::Client| async move {
        client
            .query_one(
                "SELECT count(*) FROM customers WHERE tenant_id = 'acme'",
                &[],
            )
            .await
            .expect("count")
            .get::<_, i64>(0)
    };
    assert_eq!(count(eu).await, 1);
    assert_eq!(count(us).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_connection_string_works() {
    let regions = TestRegions::start().await;
    let url = regions.connection_string("apac");
    let config: tokio_postgres::Config = url.parse().expect("valid URL");
    let client = support::connect(&config).await.expect("connect by URL");
    let row = client.query_one("SHOW port", &[]).await.expect("show port");
    assert_eq!(row.get::<_, String>(0), regions.port("apac").to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_config_points_at_the_regions() {
    let regions = TestRegions::start().await;
    let config = regions.proxy_config();
    assert_eq!(config.default_region, "eu");
    for region in REGIONS {
        let r = &config.regions[region];
        assert_eq!(r.zone, region);
        assert_eq!(r.hosts[0].port, regions.port(region));
    }
}

/// Three clusters per test must stay cheap: nextest runs every test in its
/// own process. The bound is loose for slow CI machines; the first run on a
/// machine also pays for creating the template with initdb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_is_fast() {
    // Warm the template cache so only per-test work is measured.
    drop(TestRegions::start().await);
    let started = Instant::now();
    let regions = TestRegions::start().await;
    let elapsed = started.elapsed();
    eprintln!("three regions started in {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "starting three regions took {elapsed:?}"
    );
    drop(regions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_stop_when_dropped_after_a_panic() {
    let regions = TestRegions::start().await;
    let port = regions.port("eu");
    let outcome = tokio::spawn(async move {
        let _regions = regions;
        panic!("test failure inside the harness");
    })
    .await;
    assert!(outcome.is_err(), "the task panicked");
    let config: tokio_postgres::Config = format!(
        "host=127.0.0.1 port={port} user=regionguard password=x dbname=app connect_timeout=2"
    )
    .parse()
    .expect("valid config");
    assert!(
        support::connect(&config).await.is_err(),
        "the eu server is gone after the panic"
    );
}
