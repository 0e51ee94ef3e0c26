//! `/healthz`, `/readyz` and the region health gauges: a stopped region
//! turns the proxy unready and shows as down; it is ready again once the
//! region returns.

mod metrics_support;
mod support;

use metrics_support::{get, must, readyz};
use regionguard::config::Config;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_region_going_down_and_coming_back() {
    within(30, "readiness follows region health", async {
        let mut regions = TestRegions::start().await;
        let mut config = regions.proxy_config();
        config.metrics.address = Some("127.0.0.1:0".into());
        config.metrics.health_interval_secs = 1;
        let proxy = start_proxy(config).await;
        let addr = proxy.metrics_addr().expect("metrics endpoint on");

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
        let ready = wait_until(10, || async { readyz(addr).await.0 == 200 }).await;
        assert!(
            ready,
            "never ready with every region up: {:?}",
            readyz(addr).await
        );
        let (_, body) = readyz(addr).await;
        assert_eq!(body["status"], "ready");
        assert_eq!(body["listening"], true);
        for region in REGIONS {
            assert_eq!(body["regions"][region]["status"], "up", "{body}");
        }

        regions.stop_region("us").await;
        let down = wait_until(10, || async { readyz(addr).await.0 == 503 }).await;
        assert!(down, "still ready with region us stopped");
        let (_, body) = readyz(addr).await;
        assert_eq!(body["status"], "not ready");
        assert_eq!(body["regions"]["us"]["status"], "down", "{body}");
        assert_eq!(body["regions"]["eu"]["status"], "up", "{body}");
        let host = format!("127.0.0.1:{}", regions.port("us"));
        assert_eq!(body["regions"]["us"]["hosts"][&host], "down", "{body}");
        let (_, text) = get(addr, "/metrics").await;
        assert_eq!(
            must(&text, "regionguard_region_up", &[("region", "us")]),
            0.0
        );
        assert_eq!(
            must(&text, "regionguard_region_up", &[("region", "eu")]),
            1.0
        );
        assert_eq!(
            must(
                &text,
                "regionguard_backend_host_up",
                &[("region", "us"), ("host", &host)]
            ),
            0.0
        );
        // The process is still alive.
        assert_eq!(get(addr, "/healthz").await.0, 200);

        regions.restart_region("us").await;
        let back = wait_until(10, || async { readyz(addr).await.0 == 200 }).await;
        assert!(
            back,
            "not ready after region us returned: {:?}",
            readyz(addr).await
        );
        let (_, text) = get(addr, "/metrics").await;
        assert_eq!(
            must(&text, "regionguard_region_up", &[("region", "us")]),
            1.0
        );
        proxy.shutdown().await;
    })
    .await;
}

/// A config whose one region listens nowhere: no clusters needed.
fn unreachable_region_config(metrics: bool) -> Config {
    let metrics = if metrics {
        "[metrics]\naddress = \"127.0.0.1:0\"\nhealth_interval_secs = 1\n"
    } else {
        ""
    };
    let toml = format!(
        "default_region = \"eu\"\n\
         [listen]\naddress = \"127.0.0.1:0\"\nshutdown_timeout_secs = 1\n\
         [auth]\nmethod = \"trust\"\n\
         [regions.eu]\nzone = \"eu\"\nconnect_timeout_secs = 1\n\
         [[regions.eu.hosts]]\nhost = \"127.0.0.1\"\nport = 1\ndbname = \"app\"\nuser = \"x\"\n\
         {metrics}"
    );
    Config::from_toml_str(&toml, "test").expect("valid config")
}

#[tokio::test]
async fn an_unreachable_region_is_reported_down_and_unknown_paths_are_404() {
    within(20, "unreachable region", async {
        let proxy = start_proxy(unreachable_region_config(true)).await;
        let addr = proxy.metrics_addr().expect("metrics endpoint on");
        let down = wait_until(10, || async {
            let (status, body) = readyz(addr).await;
            status == 503 && body["regions"]["eu"]["status"] == "down"
        })
        .await;
        assert!(down, "{:?}", readyz(addr).await);
        assert_eq!(get(addr, "/nowhere").await.0, 404);
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            must(&text, "regionguard_region_up", &[("region", "eu")]),
            0.0
        );

        // A client of the region that is down is refused and counted.
        let refused = tokio::net::TcpStream::connect(proxy.local_addr()).await;
        if let Ok(mut s) = refused {
            use tokio::io::AsyncWriteExt;
            let _ = s
                .write_all(&raw::startup_packet(&[
                    ("user", "app"),
                    ("database", "app"),
                ]))
                .await;
            let body = raw::read_until(&mut s, b'E').await.expect("an error");
            assert_eq!(
                raw::fields(&body).get(&b'C').map(String::as_str),
                Some("08006")
            );
        }
        let counted = wait_until(5, || async {
            let (_, text) = get(addr, "/metrics").await;
            metrics_support::value(
                &text,
                "regionguard_client_connections_refused_total",
                &[("reason", "region_unavailable")],
            ) == Some(1.0)
        })
        .await;
        assert!(counted, "refusal not counted");
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn without_an_address_there_is_no_endpoint_and_no_series() {
    let proxy = start_proxy(unreachable_region_config(false)).await;
    assert!(proxy.metrics_addr().is_none());
    assert!(proxy.metrics().render().is_none());
    proxy.shutdown().await;
}
