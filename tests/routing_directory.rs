//! The directory table in a control database: a tenant moved there (and
//! announced with NOTIFY) is routed to its new region without a restart;
//! a tenant added there is found at once.

mod support;

use support::{
    served_by, start_proxy, tenant_client, wait_until, within, TestRegions, DATABASE, ROLE,
    ROLE_PASSWORD, ROUTING_TENANTS,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_change_is_picked_up_through_notify() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    // The control database: eu's `app` database.
    let control = regions.client("eu").await;
    control
        .batch_execute(
            "CREATE SCHEMA regionguard;\n\
             CREATE TABLE regionguard.tenant_directory (tenant_id text PRIMARY KEY, region text NOT NULL);\n\
             INSERT INTO regionguard.tenant_directory VALUES ('nomad', 'us');",
        )
        .await
        .expect("create the directory table");
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    config.directory = Some(regionguard::config::Directory {
        host: "127.0.0.1".into(),
        port: regions.port("eu"),
        dbname: DATABASE.into(),
        user: ROLE.into(),
        password: Some(ROLE_PASSWORD.into()),
        table: "regionguard.tenant_directory".into(),
        channel: "regionguard_directory".into(),
        // Only NOTIFY can make the changes visible within the test.
        refresh_secs: 3600,
    });
    let proxy = start_proxy(config).await;
    within(40, "directory NOTIFY", async {
        let client = tenant_client(&proxy, None).await;
        let insert = "INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, 'x')";
        client
            .execute(insert, &[&"nomad", &1i64])
            .await
            .expect("insert for a directory-table tenant");
        // Static tenants still work next to the table.
        client
            .execute(insert, &[&"acme", &1i64])
            .await
            .expect("static tenant");

        // Move the tenant, announce it.
        control
            .batch_execute(
                "UPDATE regionguard.tenant_directory SET region = 'apac' WHERE tenant_id = 'nomad';\n\
                 NOTIFY regionguard_directory, 'nomad';",
            )
            .await
            .unwrap();
        let probe = "/* regionguard.tenant = 'nomad' */ SELECT current_setting('port')";
        assert!(
            wait_until(5, || async { served_by(&regions, &client, probe).await == "apac" }).await,
            "the move reached the proxy within 5 s"
        );
        client
            .execute(insert, &[&"nomad", &2i64])
            .await
            .expect("insert after the move");

        // A full reload (empty payload) moves it again.
        control
            .batch_execute(
                "UPDATE regionguard.tenant_directory SET region = 'eu' WHERE tenant_id = 'nomad';\n\
                 NOTIFY regionguard_directory;",
            )
            .await
            .unwrap();
        assert!(
            wait_until(5, || async { served_by(&regions, &client, probe).await == "eu" }).await,
            "the full reload reached the proxy within 5 s"
        );
        client
            .simple_query("INSERT INTO customers (tenant_id, id, email) VALUES ('nomad', 3, 'x')")
            .await
            .expect("insert after the reload");

        // A tenant added to the table is found without any NOTIFY.
        control
            .batch_execute("INSERT INTO regionguard.tenant_directory VALUES ('newcomer', 'us')")
            .await
            .unwrap();
        client
            .execute(insert, &[&"newcomer", &1i64])
            .await
            .expect("insert for a brand-new tenant");

        // A tenant removed from the table (and announced) is refused.
        control
            .batch_execute(
                "DELETE FROM regionguard.tenant_directory WHERE tenant_id = 'newcomer';\n\
                 NOTIFY regionguard_directory, 'newcomer';",
            )
            .await
            .unwrap();
        // Probe with a read: an insert that succeeds before the change
        // arrives would leave a row behind.
        let refused = wait_until(5, || async {
            client
                .query("SELECT 1 FROM customers WHERE tenant_id = $1", &[&"newcomer"])
                .await
                .is_err()
        })
        .await;
        assert!(refused, "a removed tenant is refused within 5 s");
        let err = client.execute(insert, &[&"newcomer", &3i64]).await;
        support::expect_refusal(err, "42501", &["newcomer"], "removed tenant");
    })
    .await;
    assert_eq!(
        regions.regions_holding("customers", "nomad", 1).await,
        ["us"]
    );
    assert_eq!(
        regions.regions_holding("customers", "nomad", 2).await,
        ["apac"]
    );
    assert_eq!(
        regions.regions_holding("customers", "nomad", 3).await,
        ["eu"]
    );
    assert_eq!(
        regions.regions_holding("customers", "newcomer", 1).await,
        ["us"]
    );
    assert!(regions
        .regions_holding("customers", "newcomer", 2)
        .await
        .is_empty());
    assert_eq!(
        regions.regions_holding("customers", "acme", 1).await,
        ["eu"]
    );
    proxy.shutdown().await;
}
