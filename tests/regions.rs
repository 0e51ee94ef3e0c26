//! Region selection at startup: each region's option lands in that region
//! and only there; an unknown region is refused.

mod support;

use support::{connect, proxy_client, proxy_pg_config, start_proxy, within, TestRegions, REGIONS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_region_is_refused_with_22023() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let config = proxy_pg_config(&proxy, Some("mars"));
    let err = within(10, "unknown region", connect(&config))
        .await
        .map(|_| ())
        .expect_err("refused");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("server error: {err:?}"));
    assert_eq!(db.code().code(), "22023");
    assert!(db.message().contains("mars"), "{}", db.message());
    // Other misspellings of the option.
    let mut config = proxy_pg_config(&proxy, None);
    config.options("-c regionguard.regoin=eu");
    let err = within(10, "unknown setting", connect(&config))
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("42704"), "{err:?}");
    // The proxy still serves good clients.
    proxy_client(&proxy, "eu")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("query");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_only_in_the_named_region() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    for region in REGIONS {
        regions
            .client(region)
            .await
            .batch_execute("CREATE TABLE marks (region text, note text)")
            .await
            .expect("create");
    }
    within(30, "writes per region", async {
        for region in REGIONS {
            let client = proxy_client(&proxy, region).await;
            client
                .execute("INSERT INTO marks VALUES ($1, 'via proxy')", &[&region])
                .await
                .expect("insert through the proxy");
        }
        // No option at all: the default region (eu).
        let client = connect(&proxy_pg_config(&proxy, None))
            .await
            .expect("connect");
        client
            .execute("INSERT INTO marks VALUES ('default', 'via proxy')", &[])
            .await
            .expect("insert");
    })
    .await;
    for region in REGIONS {
        let direct = regions.client(region).await;
        let mut seen: Vec<String> = direct
            .query("SELECT region FROM marks ORDER BY region", &[])
            .await
            .expect("read directly")
            .iter()
            .map(|r| r.get(0))
            .collect();
        seen.sort();
        let mut expected = vec![region.to_string()];
        if region == "eu" {
            expected.insert(0, "default".to_string());
        }
        assert_eq!(seen, expected, "rows in region {region}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_options_still_reach_postgres() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let mut config = proxy_pg_config(&proxy, None);
    config.options("-c statement_timeout=1234 -c regionguard.region=us --search_path=pg_catalog");
    config.application_name("regionguard-test-app");
    let client = within(10, "connect", connect(&config))
        .await
        .expect("connect");
    let row = client
        .query_one(
            "SELECT current_setting('statement_timeout'), current_setting('search_path'), \
             current_setting('application_name'), current_setting('port')",
            &[],
        )
        .await
        .expect("settings");
    assert_eq!(row.get::<_, &str>(0), "1234ms");
    assert_eq!(row.get::<_, &str>(1), "pg_catalog");
    assert_eq!(row.get::<_, &str>(2), "regionguard-test-app");
    assert_eq!(row.get::<_, &str>(3), regions.port("us").to_string());
    proxy.shutdown().await;
}
