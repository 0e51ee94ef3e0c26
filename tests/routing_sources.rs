//! Tenant resolution, one test per source: each source alone places the
//! statement in its tenant's region. Sessions connect without a region
//! option (default region `eu`), and the tenants used live in `us` or
//! `apac` wherever possible, so a statement that fell back to the default
//! region would be seen.
//!
//! Reads are checked with *decoys*: the same `(tenant, id)` row is seeded
//! directly in every region with `email` = that region's name, so the email
//! a read returns names the region that served it.

mod support;

use support::{raw, served_by, start_proxy, tenant_client, within, TestRegions, ROUTING_TENANTS};
use tokio_postgres::SimpleQueryMessage;

/// Seeds `customers(tenant, id, email = <region>)` directly in every region.
async fn seed_decoys(regions: &TestRegions, tenant: &str, id: i64) {
    for region in support::REGIONS {
        regions
            .client(region)
            .await
            .execute(
                "INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, $3)",
                &[&tenant, &id, &region],
            )
            .await
            .expect("seed decoy");
    }
}

/// The first value of the first row of a simple query.
async fn simple_value(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
        _ => None,
    })?
}

async fn setup() -> (TestRegions, regionguard::server::Proxy) {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let proxy = start_proxy(regions.routing_config(&ROUTING_TENANTS)).await;
    (regions, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_names_the_tenant() {
    let (regions, proxy) = setup().await;
    seed_decoys(&regions, "initech", 5).await;
    within(30, "comment routing", async {
        let client = tenant_client(&proxy, None).await;
        // A statement with no tenant data of its own runs in the comment's region.
        let probe = "/* regionguard.tenant = 'globex' */ SELECT current_setting('port')";
        assert_eq!(served_by(&regions, &client, probe).await, "us");
        // A tenant-scoped statement with no tenant predicate: the comment places it.
        let email = simple_value(
            &client,
            "/* regionguard.tenant = 'initech' */ SELECT email FROM customers WHERE id = 5",
        )
        .await;
        assert_eq!(email.as_deref(), Some("apac"));
        // The comment may also sit at the end, and in the extended protocol.
        let row = client
            .query_one(
                "SELECT email FROM customers WHERE id = $1 /* regionguard.tenant = 'initech' */",
                &[&5i64],
            )
            .await
            .expect("extended query with a trailing comment");
        assert_eq!(row.get::<_, &str>(0), "apac");
        let n = client
            .execute(
                "/* regionguard.tenant = 'initech' */ DELETE FROM customers WHERE id = 5",
                &[],
            )
            .await
            .expect("delete placed by the comment");
        assert_eq!(n, 1);
        // The comment is per statement: the next one without it has no tenant.
        assert_eq!(
            served_by(&regions, &client, "SELECT current_setting('port')").await,
            "eu"
        );
    })
    .await;
    assert_eq!(
        regions.regions_holding("customers", "initech", 5).await,
        ["eu", "us"]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_set_local_reset_and_show_name_the_tenant() {
    let (regions, proxy) = setup().await;
    seed_decoys(&regions, "globex", 1).await;
    seed_decoys(&regions, "hooli", 1).await;
    seed_decoys(&regions, "initech", 1).await;
    within(30, "SET routing", async {
        let client = tenant_client(&proxy, None).await;
        assert_eq!(
            simple_value(&client, "SHOW regionguard.tenant")
                .await
                .as_deref(),
            Some("")
        );
        client
            .simple_query("SET regionguard.tenant = 'globex'")
            .await
            .expect("SET");
        assert_eq!(
            simple_value(&client, "SHOW regionguard.tenant")
                .await
                .as_deref(),
            Some("globex")
        );
        let email = simple_value(&client, "SELECT email FROM customers WHERE id = 1").await;
        assert_eq!(
            email.as_deref(),
            Some("us"),
            "SET places unconstrained statements"
        );
        // Statements without tenant data follow the tenant's region too.
        assert_eq!(
            served_by(&regions, &client, "SELECT current_setting('port')").await,
            "us"
        );
        // The extended protocol sees the same setting.
        // (Routing does not filter rows: every tenant's decoy row 1 in us
        // is seen, all with email "us".)
        let rows = client
            .query("SELECT email FROM customers WHERE id = $1", &[&1i64])
            .await
            .expect("extended read under SET");
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|r| r.get::<_, &str>(0) == "us"));

        // SET LOCAL overrides inside a transaction, and ends with it.
        client.simple_query("BEGIN").await.expect("BEGIN");
        client
            .simple_query("SET LOCAL regionguard.tenant = 'hooli'")
            .await
            .expect("SET LOCAL");
        assert_eq!(
            simple_value(&client, "SHOW regionguard.tenant")
                .await
                .as_deref(),
            Some("hooli")
        );
        client
            .simple_query("UPDATE customers SET full_name = 'local' WHERE id = 1")
            .await
            .expect("update under SET LOCAL");
        client.simple_query("COMMIT").await.expect("COMMIT");
        assert_eq!(
            simple_value(&client, "SHOW regionguard.tenant")
                .await
                .as_deref(),
            Some("globex"),
            "SET LOCAL ends with the transaction"
        );

        // SET to a tenant of another region moves the session.
        client
            .simple_query("SET regionguard.tenant TO initech")
            .await
            .expect("SET TO");
        let email = simple_value(&client, "SELECT email FROM customers WHERE id = 1").await;
        assert_eq!(email.as_deref(), Some("apac"));

        // RESET: no tenant any more; the session's region (default eu) serves.
        client
            .simple_query("RESET regionguard.tenant")
            .await
            .expect("RESET");
        assert_eq!(
            simple_value(&client, "SHOW regionguard.tenant")
                .await
                .as_deref(),
            Some("")
        );
        assert_eq!(
            served_by(&regions, &client, "SELECT current_setting('port')").await,
            "eu"
        );
        let err = client
            .simple_query("SELECT email FROM customers WHERE id = 1")
            .await;
        support::expect_refusal(
            err,
            "42501",
            &["globex", "initech"],
            "no tenant after RESET",
        );
    })
    .await;
    // The SET LOCAL UPDATE ran in us only.
    for region in support::REGIONS {
        let n: i64 = regions
            .client(region)
            .await
            .query_one(
                "SELECT count(*) FROM customers WHERE full_name = 'local'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        // The UPDATE ran in us, where it met the three decoy rows with id 1.
        let want = if region == "us" { 3 } else { 0 };
        assert_eq!(n, want, "updated rows in {region}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_option_names_the_tenant() {
    let (regions, proxy) = setup().await;
    seed_decoys(&regions, "wayne", 3).await;
    within(30, "startup option routing", async {
        let client = tenant_client(&proxy, Some("wayne")).await;
        assert_eq!(
            simple_value(&client, "SHOW regionguard.tenant")
                .await
                .as_deref(),
            Some("wayne")
        );
        let email = simple_value(&client, "SELECT email FROM customers WHERE id = 3").await;
        assert_eq!(email.as_deref(), Some("apac"));
        client
            .execute(
                "INSERT INTO orders (tenant_id, id, amount) VALUES ('wayne', 30, 1.5)",
                &[],
            )
            .await
            .expect("insert under the startup tenant");
        // SET overrides the startup option; RESET returns to it.
        client
            .simple_query("SET regionguard.tenant = 'acme'")
            .await
            .expect("SET");
        assert_eq!(
            served_by(&regions, &client, "SELECT current_setting('port')").await,
            "eu"
        );
        client
            .simple_query("RESET regionguard.tenant")
            .await
            .expect("RESET");
        assert_eq!(
            simple_value(&client, "SHOW regionguard.tenant")
                .await
                .as_deref(),
            Some("wayne")
        );
        assert_eq!(
            served_by(&regions, &client, "SELECT current_setting('port')").await,
            "apac"
        );
    })
    .await;
    assert_eq!(
        regions.regions_holding("orders", "wayne", 30).await,
        ["apac"]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_literal_names_the_tenant() {
    let (regions, proxy) = setup().await;
    seed_decoys(&regions, "globex", 1).await;
    seed_decoys(&regions, "initech", 1).await;
    for region in support::REGIONS {
        regions
            .client(region)
            .await
            .batch_execute(
                "INSERT INTO orders VALUES ('initech', 100, 1, 9.5), ('globex', 100, 1, 7)",
            )
            .await
            .unwrap();
    }
    within(30, "WHERE routing", async {
        let client = tenant_client(&proxy, None).await;
        let cases = [
            (
                "SELECT email FROM customers WHERE tenant_id = 'globex' AND id = 1",
                "us",
            ),
            (
                "SELECT email FROM customers WHERE id = 1 AND 'initech' = tenant_id",
                "apac",
            ),
            (
                "SELECT c.email FROM customers c WHERE c.tenant_id = 'globex' AND c.id = 1",
                "us",
            ),
            (
                "SELECT email FROM customers WHERE tenant_id = 'initech'::text AND id = 1",
                "apac",
            ),
            (
                "SELECT c.email FROM customers c JOIN orders o \
                 ON o.tenant_id = c.tenant_id AND o.customer_id = c.id \
                 WHERE c.tenant_id = 'initech' AND o.id = 100",
                "apac",
            ),
            (
                "SELECT email FROM customers WHERE tenant_id = 'globex' AND id IN \
                 (SELECT customer_id FROM orders WHERE tenant_id = 'globex')",
                "us",
            ),
            (
                "WITH c AS (SELECT * FROM customers WHERE tenant_id = 'initech') \
                 SELECT email FROM c WHERE id = 1",
                "apac",
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(
                simple_value(&client, sql).await.as_deref(),
                Some(want),
                "{sql}"
            );
            let row = client
                .query_one(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(row.get::<_, &str>(0), want, "extended: {sql}");
        }
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_format_parameter_names_the_tenant() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    config.auth.method = regionguard::config::AuthMethod::Trust;
    let proxy = start_proxy(config).await;
    seed_decoys(&regions, "hooli", 2).await;
    within(30, "text parameter routing", async {
        let mut s = raw::trusted_session(proxy.local_addr()).await;
        let msgs = raw::extended_text_query(
            &mut s,
            "SELECT email FROM customers WHERE tenant_id = $1 AND id = $2",
            &[Some("hooli"), Some("2")],
        )
        .await;
        assert!(
            raw::first_error(&msgs).is_none(),
            "{:?}",
            raw::first_error(&msgs)
        );
        assert_eq!(raw::first_column(&msgs), [Some("us".to_string())]);
        // A typed cast of the parameter, and an INSERT.
        let msgs = raw::extended_text_query(
            &mut s,
            "INSERT INTO customers (tenant_id, id, email) VALUES ($1::text, $2, $3)",
            &[Some("initech"), Some("20"), Some("x@example.com")],
        )
        .await;
        assert!(
            raw::first_error(&msgs).is_none(),
            "{:?}",
            raw::first_error(&msgs)
        );
        // A NULL tenant parameter is refused.
        let msgs = raw::extended_text_query(
            &mut s,
            "SELECT email FROM customers WHERE tenant_id = $1",
            &[None],
        )
        .await;
        let e = raw::first_error(&msgs).expect("NULL tenant refused");
        assert_eq!(e.get(&b'C').map(String::as_str), Some("42501"), "{e:?}");
        assert!(e.contains_key(&b'H'), "hint: {e:?}");
    })
    .await;
    assert_eq!(
        regions.regions_holding("customers", "initech", 20).await,
        ["apac"]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_text_parameter_names_the_tenant() {
    let (regions, proxy) = setup().await;
    seed_decoys(&regions, "globex", 4).await;
    within(30, "binary text parameter routing", async {
        let client = tenant_client(&proxy, None).await;
        let row = client
            .query_one(
                "SELECT email FROM customers WHERE tenant_id = $1 AND id = $2",
                &[&"globex", &4i64],
            )
            .await
            .expect("binary text parameter");
        assert_eq!(row.get::<_, &str>(0), "us");
        // varchar-typed parameter.
        let stmt = client
            .prepare_typed(
                "INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, $3)",
                &[
                    tokio_postgres::types::Type::VARCHAR,
                    tokio_postgres::types::Type::INT8,
                    tokio_postgres::types::Type::TEXT,
                ],
            )
            .await
            .expect("prepare with varchar");
        client
            .execute(&stmt, &[&"wayne", &40i64, &"v@example.com"])
            .await
            .expect("insert with a varchar tenant parameter");
        client
            .execute(
                "UPDATE customers SET full_name = $3 WHERE tenant_id = $1 AND id = $2",
                &[&"wayne", &40i64, &"Bruce"],
            )
            .await
            .expect("update with a binary tenant parameter");
    })
    .await;
    assert_eq!(
        regions.regions_holding("customers", "wayne", 40).await,
        ["apac"]
    );
    proxy.shutdown().await;
}

const UUID_TENANT: &str = "6f1c2b3a-0d4e-4f5a-9b8c-7d6e5f4a3b2c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_int_and_uuid_parameters_name_the_tenant() {
    let regions = TestRegions::start().await;
    regions
        .batch_everywhere(
            "CREATE TABLE ledger8 (tenant_id bigint, id bigint, note text);\n\
             CREATE TABLE ledger4 (tenant_id int, id bigint, note text);\n\
             CREATE TABLE ledger2 (tenant_id smallint, id bigint, note text);\n\
             CREATE TABLE ledgeru (tenant_id uuid, id bigint, note text);",
        )
        .await;
    let mut config = regions.routing_config(&[("42", "us"), ("7", "apac"), (UUID_TENANT, "apac")]);
    config.tenancy.tables = ["ledger8", "ledger4", "ledger2", "ledgeru"]
        .map(String::from)
        .to_vec();
    let proxy = start_proxy(config).await;
    let uuid: uuid::Uuid = UUID_TENANT.to_uppercase().parse().unwrap();
    within(30, "int/uuid parameter routing", async {
        let client = tenant_client(&proxy, None).await;
        client
            .execute(
                "INSERT INTO ledger8 (tenant_id, id, note) VALUES ($1, 1, 'int8')",
                &[&42i64],
            )
            .await
            .expect("bigint tenant");
        client
            .execute(
                "INSERT INTO ledger4 (tenant_id, id, note) VALUES ($1, 1, 'int4')",
                &[&7i32],
            )
            .await
            .expect("int tenant");
        client
            .execute(
                "INSERT INTO ledger2 (tenant_id, id, note) VALUES ($1, 1, 'int2')",
                &[&42i16],
            )
            .await
            .expect("smallint tenant");
        client
            .execute(
                "INSERT INTO ledgeru (tenant_id, id, note) VALUES ($1, 1, 'uuid')",
                &[&uuid],
            )
            .await
            .expect("uuid tenant");
        // Reads with the same kinds of parameters find them.
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM ledger8 WHERE tenant_id = $1",
                &[&42i64],
            )
            .await
            .expect("bigint read")
            .get(0);
        assert_eq!(n, 1);
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM ledgeru WHERE tenant_id = $1",
                &[&uuid],
            )
            .await
            .expect("uuid read")
            .get(0);
        assert_eq!(n, 1);
        // Literals of those types too.
        let n: i64 = client
            .query_one("SELECT count(*) FROM ledger4 WHERE tenant_id = 7", &[])
            .await
            .expect("int literal read")
            .get(0);
        assert_eq!(n, 1);
    })
    .await;
    assert_eq!(regions.regions_holding("ledger8", "42", 1).await, ["us"]);
    assert_eq!(regions.regions_holding("ledger4", "7", 1).await, ["apac"]);
    assert_eq!(regions.regions_holding("ledger2", "42", 1).await, ["us"]);
    assert_eq!(
        regions.regions_holding("ledgeru", UUID_TENANT, 1).await,
        ["apac"]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_list_of_one_region_names_it() {
    let (regions, proxy) = setup().await;
    seed_decoys(&regions, "globex", 1).await;
    seed_decoys(&regions, "hooli", 1).await;
    within(30, "IN routing", async {
        let client = tenant_client(&proxy, None).await;
        let sql =
            "SELECT email FROM customers WHERE tenant_id IN ('globex', 'hooli') ORDER BY tenant_id";
        let rows = client.query(sql, &[]).await.expect("IN list");
        let emails: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(emails, ["us", "us"]);
        let rows = client
            .query(
                "SELECT email FROM customers WHERE tenant_id IN ($1, $2) AND id = 1",
                &[&"hooli", &"globex"],
            )
            .await
            .expect("IN list of parameters");
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.get::<_, &str>(0) == "us"));
        let n = client
            .execute(
                "DELETE FROM customers WHERE tenant_id = ANY (ARRAY['globex', 'hooli'])",
                &[],
            )
            .await;
        // `= ANY(ARRAY[…])` is another spelling of IN: either placed in us
        // or refused, never run elsewhere.
        match n {
            Ok(n) => assert_eq!(n, 2),
            Err(e) => assert_eq!(support::sqlstate(&e).as_deref(), Some("42501"), "{e:?}"),
        }
    })
    .await;
    // Whatever the ANY(...) DELETE did, it did not touch eu's or apac's rows.
    let holding = regions.regions_holding("customers", "globex", 1).await;
    assert!(
        holding.contains(&"eu") && holding.contains(&"apac"),
        "{holding:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_row_insert_of_one_region_goes_there() {
    let (regions, proxy) = setup().await;
    within(30, "multi-row INSERT routing", async {
        let client = tenant_client(&proxy, None).await;
        client
            .simple_query(
                "INSERT INTO customers (tenant_id, id, email) VALUES \
                 ('initech', 1, 'a'), ('wayne', 1, 'b'), ('initech', 2, 'c')",
            )
            .await
            .expect("multi-row insert, simple");
        client
            .execute(
                "INSERT INTO customers (tenant_id, id, email) VALUES ($1, 3, 'd'), ($2, 3, 'e')",
                &[&"globex", &"hooli"],
            )
            .await
            .expect("multi-row insert, extended");
    })
    .await;
    assert_eq!(
        regions.rows_in("apac", "customers").await,
        [
            ("initech".into(), 1),
            ("initech".into(), 2),
            ("wayne".into(), 1)
        ]
    );
    assert_eq!(
        regions.rows_in("us", "customers").await,
        [("globex".into(), 3), ("hooli".into(), 3)]
    );
    assert!(regions.rows_in("eu", "customers").await.is_empty());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_and_on_conflict_go_to_the_tenants_region() {
    let (regions, proxy) = setup().await;
    within(30, "INSERT … SELECT routing", async {
        let client = tenant_client(&proxy, None).await;
        client
            .simple_query("INSERT INTO customers (tenant_id, id, email) VALUES ('hooli', 1, 'a'), ('hooli', 2, 'b')")
            .await
            .expect("seed through the proxy");
        let n = client
            .execute(
                "INSERT INTO orders (tenant_id, id, customer_id, amount) \
                 SELECT tenant_id, id + 100, id, 10 FROM customers WHERE tenant_id = 'hooli'",
                &[],
            )
            .await
            .expect("INSERT … SELECT");
        assert_eq!(n, 2);
        let n = client
            .execute(
                "INSERT INTO customers (tenant_id, id, email) VALUES ('hooli', 1, 'new') \
                 ON CONFLICT (tenant_id, id) DO UPDATE SET email = excluded.email",
                &[],
            )
            .await
            .expect("INSERT … ON CONFLICT");
        assert_eq!(n, 1);
    })
    .await;
    assert_eq!(
        regions.rows_in("us", "orders").await,
        [("hooli".into(), 101), ("hooli".into(), 102)]
    );
    for region in ["eu", "apac"] {
        assert!(
            regions.rows_in(region, "orders").await.is_empty(),
            "{region}"
        );
        assert!(
            regions.rows_in(region, "customers").await.is_empty(),
            "{region}"
        );
    }
    let email: String = regions
        .client("us")
        .await
        .query_one(
            "SELECT email FROM customers WHERE tenant_id = 'hooli' AND id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(email, "new");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_delete_go_to_the_tenants_region() {
    let (regions, proxy) = setup().await;
    seed_decoys(&regions, "globex", 1).await;
    seed_decoys(&regions, "globex", 2).await;
    seed_decoys(&regions, "wayne", 1).await;
    within(30, "UPDATE/DELETE routing", async {
        let client = tenant_client(&proxy, None).await;
        let n = client
            .execute(
                "UPDATE customers SET full_name = 'updated' WHERE tenant_id = 'globex' AND id = 1",
                &[],
            )
            .await
            .expect("UPDATE");
        assert_eq!(n, 1);
        let n = client
            .execute(
                "UPDATE customers c SET full_name = 'updated' WHERE c.id = $2 AND c.tenant_id = $1",
                &[&"wayne", &1i64],
            )
            .await
            .expect("UPDATE with parameters and alias");
        assert_eq!(n, 1);
        let msgs = client
            .simple_query("DELETE FROM customers WHERE tenant_id = 'globex' AND id = 2")
            .await
            .expect("DELETE");
        assert!(msgs
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(1))));
    })
    .await;
    for region in support::REGIONS {
        let direct = regions.client(region).await;
        let updated: Vec<String> = direct
            .query(
                "SELECT tenant_id FROM customers WHERE full_name = 'updated' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let want: Vec<&str> = match region {
            "us" => vec!["globex"],
            "apac" => vec!["wayne"],
            _ => vec![],
        };
        assert_eq!(updated, want, "updated rows in {region}");
    }
    assert_eq!(
        regions.regions_holding("customers", "globex", 2).await,
        ["eu", "apac"]
    );
    proxy.shutdown().await;
}
