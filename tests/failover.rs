//! Failover inside a residency zone: a region with a primary and a
//! streaming standby. Sessions always land on the host that accepts writes
//! (whatever the order of the hosts), a region whose primary is down refuses
//! its tenants with 08006 while other regions serve, and once the standby
//! is promoted the region's tenants are served by it — never by another
//! region.

mod support;

use support::*;

async fn is_in_recovery(client: &tokio_postgres::Client) -> bool {
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_follow_the_primary_and_never_leave_the_region() {
    let mut regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut standby, standby_client) = regions.start_standby("eu", dir.path()).await;
    assert!(
        is_in_recovery(&standby_client).await,
        "the standby is in recovery"
    );

    // The standby is listed first: the proxy must still write to the primary.
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    list_standby_first(&mut config, "eu", standby.port());
    let proxy = start_proxy(config).await;

    let client = tenant_client(&proxy, Some("acme")).await;
    client
        .execute(
            "INSERT INTO customers (tenant_id, id) VALUES ('acme', 1)",
            &[],
        )
        .await
        .expect("a write lands on the primary");
    assert_eq!(regions.rows_in("eu", "customers").await.len(), 1);
    drop(client);

    // The primary goes down: eu's tenants get 08006 naming the region, the
    // other regions keep working.
    regions.stop_region("eu").await;
    let err = match support::connect(&{
        let mut c = proxy_pg_config(&proxy, None);
        c.options("-c regionguard.tenant=acme");
        c
    })
    .await
    {
        Ok(c) => c
            .execute(
                "INSERT INTO customers (tenant_id, id) VALUES ('acme', 2)",
                &[],
            )
            .await
            .expect_err("no primary in eu"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("region eu"), "names the region: {message}");
    let us = tenant_client(&proxy, Some("globex")).await;
    us.execute(
        "INSERT INTO customers (tenant_id, id) VALUES ('globex', 1)",
        &[],
    )
    .await
    .expect("us still serves");

    // Promote the standby: eu's tenants are served again, by it.
    standby.promote().await.expect("promote the standby");
    let promoted = wait_until(20, || async { !is_in_recovery(&standby_client).await }).await;
    assert!(promoted, "the standby was promoted");
    let client = within(30, "reconnect to eu after the promotion", async {
        loop {
            if let Ok(c) = support::connect(&{
                let mut c = proxy_pg_config(&proxy, None);
                c.options("-c regionguard.tenant=acme");
                c
            })
            .await
            {
                if c.execute(
                    "INSERT INTO customers (tenant_id, id) VALUES ('acme', 3)",
                    &[],
                )
                .await
                .is_ok()
                {
                    return c;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    let rows: Vec<i64> = client
        .query(
            "SELECT id FROM customers WHERE tenant_id = 'acme' ORDER BY id",
            &[],
        )
        .await
        .expect("read through the proxy")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        vec![1, 3],
        "the promoted standby has the replicated row and the new one"
    );
    let on_standby: i64 = standby_client
        .query_one(
            "SELECT count(*) FROM customers WHERE tenant_id = 'acme'",
            &[],
        )
        .await
        .expect("direct read of the promoted host")
        .get(0);
    assert_eq!(on_standby, 2);
    // Nothing of acme's ever reached another region.
    for region in ["us", "apac"] {
        assert!(
            regions
                .rows_in(region, "customers")
                .await
                .iter()
                .all(|(t, _)| t != "acme"),
            "acme rows in {region}"
        );
    }
    proxy.shutdown().await;
    standby.stop().await.expect("stop the standby");
}
