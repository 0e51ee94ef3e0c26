//! One prepared statement, executed for tenants of all three regions: each
//! execution runs in its tenant's region (re-prepared there transparently).

mod support;

use support::{start_proxy, tenant_client, within, TestRegions, REGIONS, ROUTING_TENANTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_runs_in_each_tenants_region() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let proxy = start_proxy(regions.routing_config(&ROUTING_TENANTS)).await;
    within(30, "prepared across regions", async {
        let client = tenant_client(&proxy, None).await;
        let insert = client
            .prepare("INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, $3)")
            .await
            .expect("prepare insert");
        let select = client
            .prepare("SELECT id, email, current_setting('port') FROM customers WHERE tenant_id = $1 ORDER BY id")
            .await
            .expect("prepare select");
        // Several rounds, alternating regions, so every execution after the
        // first in a region reuses the statement there.
        for round in 0..3i64 {
            for (tenant, _) in ROUTING_TENANTS {
                client
                    .execute(&insert, &[&tenant, &round, &format!("{tenant}-{round}")])
                    .await
                    .unwrap_or_else(|e| panic!("insert for {tenant}: {e}"));
            }
        }
        for (tenant, region) in ROUTING_TENANTS {
            let rows = client
                .query(&select, &[&tenant])
                .await
                .unwrap_or_else(|e| panic!("select for {tenant}: {e}"));
            let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            assert_eq!(ids, [0, 1, 2], "{tenant}");
            let port: &str = rows[0].get(2);
            assert_eq!(port, regions.port(region).to_string(), "{tenant} served by {region}");
        }
        // The same statement used in a pipeline of executions for tenants of
        // different regions, all in flight at once.
        let tenants: Vec<&str> = ROUTING_TENANTS.iter().map(|(t, _)| *t).collect();
        let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
            tenants.iter().map(|t| [t as _]).collect();
        let futures = params.iter().map(|p| client.query(&select, p));
        for (rows, (tenant, _)) in futures_util::future::join_all(futures)
            .await
            .into_iter()
            .zip(ROUTING_TENANTS)
        {
            assert_eq!(rows.expect("pipelined select").len(), 3, "{tenant}");
        }
        // Statement-level description is unchanged by re-preparing.
        assert_eq!(select.columns().len(), 3);
        assert_eq!(select.columns()[1].name(), "email");
    })
    .await;
    for region in REGIONS {
        let mut want: Vec<(String, i64)> = ROUTING_TENANTS
            .iter()
            .filter(|(_, r)| *r == region)
            .flat_map(|(t, _)| (0..3).map(move |i| (t.to_string(), i)))
            .collect();
        want.sort();
        assert_eq!(regions.rows_in(region, "customers").await, want, "{region}");
    }
    proxy.shutdown().await;
}
