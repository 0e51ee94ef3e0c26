//! After a known workload through the proxy, `/metrics` shows it: statements
//! by region and kind, latency samples, refusals by reason, errors by class,
//! connections, bytes, directory lookups and health.

mod metrics_support;
mod support;

use metrics_support::{get, must, value};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_shows_up_in_the_scrape() {
    within(30, "metrics workload", async {
        let regions = TestRegions::start().await;
        regions.create_routing_schema().await;
        let mut config = regions.routing_config(&ROUTING_TENANTS);
        config.metrics.address = Some("127.0.0.1:0".into());
        config.metrics.health_interval_secs = 1;
        let proxy = start_proxy(config).await;
        let addr = proxy.metrics_addr().expect("metrics endpoint on");
        let eu_host = format!("127.0.0.1:{}", regions.port("eu"));

        let acme = tenant_client(&proxy, Some("acme")).await;
        for id in 0..5 {
            acme.simple_query(&format!(
                "INSERT INTO customers (tenant_id, id, email) VALUES ('acme', {id}, 'a{id}@x')"
            ))
            .await
            .expect("insert");
        }
        for _ in 0..7 {
            acme.simple_query("SELECT count(*) FROM customers WHERE tenant_id = 'acme'")
                .await
                .expect("simple select");
        }
        for id in 0..3i64 {
            acme.query(
                "SELECT email FROM customers WHERE tenant_id = $1 AND id = $2",
                &[&"acme", &id],
            )
            .await
            .expect("extended select");
        }
        acme.simple_query("CREATE TEMP TABLE scratch (a int)")
            .await
            .expect("ddl");
        let err = acme
            .simple_query("SELECT 1/0")
            .await
            .expect_err("division by zero");
        assert_eq!(sqlstate(&err).as_deref(), Some("22012"));

        let globex = tenant_client(&proxy, Some("globex")).await;
        for _ in 0..2 {
            globex
                .simple_query("SELECT * FROM orders WHERE tenant_id = 'globex'")
                .await
                .expect("us select");
        }

        let anonymous = tenant_client(&proxy, None).await;
        let refused = anonymous.simple_query("SELECT * FROM customers").await;
        expect_refusal(refused, "42501", &[], "no tenant");

        let mut wrong = proxy_pg_config(&proxy, None);
        wrong.password("not-the-password");
        assert!(connect(&wrong).await.is_err(), "wrong password accepted");

        let ready = wait_until(10, || async {
            let (_, text) = get(addr, "/metrics").await;
            value(&text, "regionguard_region_up", &[("region", "apac")]) == Some(1.0)
                // The refused login's connection has closed.
                && value(&text, "regionguard_client_connections", &[]) == Some(3.0)
        })
        .await;
        assert!(
            ready,
            "regions never up, or the refused connection never closed"
        );

        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let eu = |kind| {
            must(
                &text,
                "regionguard_statements_total",
                &[("region", "eu"), ("kind", kind)],
            )
        };
        assert_eq!(eu("write"), 5.0, "INSERTs");
        assert_eq!(eu("read"), 10.0, "SELECTs (7 simple, 3 extended)");
        assert_eq!(eu("ddl"), 1.0, "CREATE TEMP TABLE");
        let us_read = must(
            &text,
            "regionguard_statements_total",
            &[("region", "us"), ("kind", "read")],
        );
        assert_eq!(us_read, 2.0);
        assert_eq!(
            must(
                &text,
                "regionguard_statements_total",
                &[("region", "apac"), ("kind", "read")]
            ),
            0.0
        );
        // One latency sample per request: 5 + 7 + 1 + 1 simple queries, 3
        // prepares and 3 executions in eu.
        let samples = must(
            &text,
            "regionguard_statement_duration_seconds_count",
            &[("region", "eu")],
        );
        assert!(samples >= 20.0, "eu latency samples: {samples}");
        let fastest = must(
            &text,
            "regionguard_statement_duration_seconds_bucket",
            &[("region", "eu"), ("le", "10")],
        );
        assert_eq!(fastest, samples, "every sample is under 10 s");

        assert_eq!(
            must(
                &text,
                "regionguard_routing_refusals_total",
                &[("reason", "no_tenant")]
            ),
            1.0
        );
        assert_eq!(
            must(
                &text,
                "regionguard_routing_refusals_total",
                &[("reason", "cross_region")]
            ),
            0.0
        );
        assert_eq!(
            must(
                &text,
                "regionguard_errors_total",
                &[("class", "42"), ("source", "proxy")]
            ),
            1.0
        );
        assert_eq!(
            must(
                &text,
                "regionguard_errors_total",
                &[("class", "22"), ("source", "backend")]
            ),
            1.0
        );
        assert_eq!(
            must(
                &text,
                "regionguard_client_connections_refused_total",
                &[("reason", "auth_failed")]
            ),
            1.0
        );
        assert_eq!(must(&text, "regionguard_client_connections", &[]), 3.0);
        assert_eq!(
            must(&text, "regionguard_client_connections_total", &[]),
            4.0
        );
        assert!(must(&text, "regionguard_client_received_bytes_total", &[]) > 0.0);
        assert!(must(&text, "regionguard_client_sent_bytes_total", &[]) > 0.0);
        assert!(
            must(
                &text,
                "regionguard_backend_received_bytes_total",
                &[("region", "eu")]
            ) > 0.0
        );
        let open = must(
            &text,
            "regionguard_backend_connections",
            &[("region", "eu"), ("host", &eu_host)],
        );
        assert!(open >= 2.0, "eu backend sessions open: {open}");
        assert_eq!(
            must(
                &text,
                "regionguard_backend_connections_busy",
                &[("region", "eu"), ("host", &eu_host)]
            ),
            0.0
        );
        assert_eq!(
            must(
                &text,
                "regionguard_backend_connect_failures_total",
                &[("region", "eu"), ("host", &eu_host)]
            ),
            0.0
        );
        assert!(
            must(
                &text,
                "regionguard_directory_lookups_total",
                &[("source", "static")]
            ) >= 8.0
        );
        assert_eq!(
            must(&text, "regionguard_region_up", &[("region", "eu")]),
            1.0
        );
        assert_eq!(
            must(
                &text,
                "regionguard_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
        assert_eq!(
            must(
                &text,
                "regionguard_crypto_operations_total",
                &[("region", "eu"), ("op", "encrypt"), ("outcome", "ok")]
            ),
            0.0,
            "crypto series exist before encryption lands"
        );
        for forbidden in ["acme", "globex", "customers", "a1@x"] {
            assert!(!text.contains(forbidden), "{forbidden} in the scrape");
        }

        drop(globex);
        let closed = wait_until(5, || async {
            let (_, text) = get(addr, "/metrics").await;
            value(&text, "regionguard_client_connections", &[]) == Some(2.0)
        })
        .await;
        assert!(closed, "a closed client still counted as open");
        proxy.shutdown().await;
    })
    .await;
}
