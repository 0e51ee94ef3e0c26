//! A region that is down: its tenants' statements get SQLSTATE 08006 naming
//! the region, every other region keeps serving, and the region serves again
//! once it is back.

mod support;

use support::{start_proxy, tenant_client, wait_until, within, TestRegions, ROUTING_TENANTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_down_refuses_its_tenants_while_others_serve() {
    let mut regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let proxy = start_proxy(regions.routing_config(&ROUTING_TENANTS)).await;
    let insert = "INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, 'x')";
    // A session that has used eu and apac before the outage (a session
    // that used us is `session_that_used_the_down_region_survives`).
    let old = within(20, "before the outage", async {
        let client = tenant_client(&proxy, None).await;
        for (tenant, _) in ROUTING_TENANTS.into_iter().filter(|(_, r)| *r != "us") {
            client
                .execute(insert, &[&tenant, &1i64])
                .await
                .unwrap_or_else(|e| panic!("{tenant}: {e}"));
        }
        client
    })
    .await;

    within(30, "stop us", regions.stop_region("us")).await;

    within(60, "during the outage", async {
        let fresh = tenant_client(&proxy, None).await;
        for client in [&old, &fresh] {
            for (tenant, region) in ROUTING_TENANTS {
                let r = client.execute(insert, &[&tenant, &2i64]).await;
                if region == "us" {
                    let e = r.expect_err("us is down");
                    let db = e
                        .as_db_error()
                        .unwrap_or_else(|| panic!("server error: {e:?}"));
                    assert_eq!(db.code().code(), "08006", "{db:?}");
                    assert!(db.message().contains("us"), "names the region: {db:?}");
                    assert!(!db.message().contains(tenant), "{db:?}");
                    // Same in the simple protocol.
                    let e = client
                        .simple_query(&format!(
                            "SELECT * FROM customers WHERE tenant_id = '{tenant}'"
                        ))
                        .await
                        .expect_err("us is down");
                    assert_eq!(support::sqlstate(&e).as_deref(), Some("08006"), "{e:?}");
                } else {
                    // The second client finds id 2 taken by the first.
                    match r {
                        Ok(n) => assert_eq!(n, 1),
                        Err(e) => assert_eq!(
                            support::sqlstate(&e).as_deref(),
                            Some("23505"),
                            "{tenant} in {region}: {e:?}"
                        ),
                    }
                }
            }
            client
                .simple_query("SELECT 1")
                .await
                .expect("session still usable");
        }
        // A session whose region is the down one gets 08006 too, at connect
        // or at its first statement, never a silent fallback.
        let mut cfg = support::proxy_pg_config(&proxy, Some("us"));
        cfg.connect_timeout(std::time::Duration::from_secs(10));
        match support::connect(&cfg).await {
            Err(e) => assert_eq!(support::sqlstate(&e).as_deref(), Some("08006"), "{e:?}"),
            Ok(c) => {
                let e = c.simple_query("SELECT current_setting('port')").await;
                assert_eq!(support::expect_sqlstate(e, "us session"), "08006");
            }
        }
    })
    .await;

    let port = regions.port("us");
    within(60, "restart us", regions.restart_region("us")).await;
    if regions.port("us") == port {
        within(30, "after the outage", async {
            let client = tenant_client(&proxy, None).await;
            let back = wait_until(15, || async {
                client.execute(insert, &[&"globex", &3i64]).await.is_ok()
            })
            .await;
            assert!(back, "us serves again once it is back");
            old.execute(insert, &[&"hooli", &3i64])
                .await
                .expect("the old session reaches us");
        })
        .await;
        assert_eq!(
            regions.regions_holding("customers", "globex", 3).await,
            ["us"]
        );
    }
    for (tenant, region) in ROUTING_TENANTS {
        let want: Vec<&str> = if region == "us" { vec![] } else { vec![region] };
        assert_eq!(regions.regions_holding("customers", tenant, 1).await, want);
        let want2: Vec<&str> = if region == "us" { vec![] } else { vec![region] };
        assert_eq!(
            regions.regions_holding("customers", tenant, 2).await,
            want2,
            "{tenant}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_that_used_the_down_region_survives() {
    let mut regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let proxy = start_proxy(regions.routing_config(&ROUTING_TENANTS)).await;
    let insert = "INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, 'x')";
    let client = within(20, "before the outage", async {
        let client = tenant_client(&proxy, None).await;
        for (tenant, _) in ROUTING_TENANTS {
            client
                .execute(insert, &[&tenant, &1i64])
                .await
                .unwrap_or_else(|e| panic!("{tenant}: {e}"));
        }
        client
    })
    .await;
    within(30, "stop us", regions.stop_region("us")).await;
    within(30, "during the outage", async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !client.is_closed(),
            "the client session survives the outage of one region"
        );
        client
            .execute(insert, &[&"acme", &2i64])
            .await
            .expect("eu still serves this session");
        let e = client.execute(insert, &[&"globex", &2i64]).await;
        assert_eq!(support::expect_sqlstate(e, "us down"), "08006");
    })
    .await;
    proxy.shutdown().await;
}
