//! The session's `regionguard.region` startup option picks the region that
//! serves it.

mod support;

use support::{proxy_client, start_proxy, TestRegions, REGIONS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_option_routes_the_session_to_that_region() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    for region in REGIONS {
        let client = proxy_client(&proxy, region).await;
        let port: String = client
            .query_one("SELECT current_setting('port')", &[])
            .await
            .expect("query through the proxy")
            .get(0);
        assert_eq!(port, regions.port(region).to_string(), "region {region}");
    }
    proxy.shutdown().await;
}
