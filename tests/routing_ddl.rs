//! DDL and writes to global tables reach every region with two-phase
//! commit, or none (issue 3 item 7, ADR 8). Every check reads the regional
//! databases directly.

mod support;

use support::*;
use tokio_postgres::SimpleQueryMessage;

const PROXY_ID: &str = "test-proxy";

fn ddl_config(regions: &TestRegions) -> regionguard::config::Config {
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    config.tenancy.global_tables = vec!["schema_migrations".into(), "countries".into()];
    config.two_phase.proxy_id = PROXY_ID.into();
    config
}

/// Whether `relation` exists in `region`, read directly.
async fn exists_in(regions: &TestRegions, region: &str, relation: &str) -> bool {
    regions
        .client(region)
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&relation])
        .await
        .expect("to_regclass")
        .get(0)
}

/// The regions where `relation` exists.
async fn where_is(regions: &TestRegions, relation: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    for region in REGIONS {
        if exists_in(regions, region, relation).await {
            out.push(region);
        }
    }
    out
}

/// Prepared transactions left in any region.
async fn prepared_anywhere(regions: &TestRegions) -> Vec<String> {
    let mut out = Vec::new();
    for region in REGIONS {
        for row in regions
            .client(region)
            .await
            .query("SELECT gid FROM pg_prepared_xacts", &[])
            .await
            .expect("read pg_prepared_xacts")
        {
            out.push(format!("{region}: {}", row.get::<_, String>(0)));
        }
    }
    out
}

/// `SELECT <sql>` read directly in every region, as text.
async fn values_everywhere(regions: &TestRegions, sql: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for region in REGIONS {
        let rows = regions
            .client(region)
            .await
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql} in {region}: {e}"));
        out.push(rows.iter().map(|r| r.get::<_, String>(0)).collect());
    }
    out
}

fn command_tags(msgs: &[SimpleQueryMessage]) -> usize {
    msgs.iter()
        .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .count()
}

fn db_error(e: &tokio_postgres::Error) -> &tokio_postgres::error::DbError {
    e.as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"))
}

#[tokio::test]
async fn ddl_reaches_every_region_through_simple_and_extended_protocol() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(ddl_config(&regions)).await;
    let client = tenant_client(&proxy, Some("globex")).await;
    within(15, "DDL through the proxy", async {
        // Simple protocol: one answer for the one statement.
        let msgs = client
            .simple_query("CREATE TABLE widgets (id int PRIMARY KEY, name text)")
            .await
            .expect("CREATE TABLE");
        assert_eq!(command_tags(&msgs), 1);
        assert_eq!(where_is(&regions, "widgets").await, REGIONS);
        // Extended protocol (tokio-postgres prepares, then binds).
        let n = client
            .execute("ALTER TABLE widgets ADD COLUMN note text", &[])
            .await
            .expect("ALTER TABLE");
        assert_eq!(n, 0);
        client
            .execute("CREATE INDEX widgets_name ON widgets (name)", &[])
            .await
            .expect("CREATE INDEX");
        assert_eq!(where_is(&regions, "widgets_name").await, REGIONS);
        let columns = values_everywhere(
            &regions,
            "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute \
             WHERE attrelid = 'widgets'::regclass AND attnum > 0",
        )
        .await;
        for c in &columns {
            assert_eq!(c, &vec!["id,name,note".to_string()]);
        }
        // Several statements in one query: all or nothing, everywhere.
        client
            .batch_execute("CREATE TABLE a1 (id int); CREATE VIEW v1 AS SELECT * FROM a1")
            .await
            .expect("two statements");
        assert_eq!(where_is(&regions, "v1").await, REGIONS);
        // A form sqlparser does not read goes everywhere too.
        client
            .batch_execute("CREATE UNLOGGED TABLE scratch (id int)")
            .await
            .expect("CREATE UNLOGGED TABLE");
        assert_eq!(where_is(&regions, "scratch").await, REGIONS);
        // DROP too.
        client
            .batch_execute("DROP TABLE scratch")
            .await
            .expect("DROP TABLE");
        assert!(where_is(&regions, "scratch").await.is_empty());
        // Temporary tables stay in the session's own backend.
        client
            .batch_execute("CREATE TEMP TABLE mine (id int); INSERT INTO mine VALUES (1)")
            .await
            .expect("temp table");
        let n: i64 = client
            .query_one("SELECT count(*) FROM mine", &[])
            .await
            .expect("read temp table")
            .get(0);
        assert_eq!(n, 1);
        assert!(prepared_anywhere(&regions).await.is_empty());
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn writes_to_global_tables_reach_every_region_and_reads_one() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(ddl_config(&regions)).await;
    let client = tenant_client(&proxy, None).await;
    within(15, "global table writes", async {
        client
            .batch_execute(
                "CREATE TABLE schema_migrations (version text PRIMARY KEY); \
                 CREATE TABLE countries (code text PRIMARY KEY, name text)",
            )
            .await
            .expect("create global tables");
        // `$n` parameters, as migration tools write their bookkeeping.
        let n = client
            .execute("INSERT INTO schema_migrations VALUES ($1)", &[&"20240101"])
            .await
            .expect("INSERT with a parameter");
        assert_eq!(n, 1, "one row, reported once");
        client
            .batch_execute("INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan')")
            .await
            .expect("INSERT literals");
        let n = client
            .execute(
                "UPDATE countries SET name = $1 WHERE code = $2",
                &[&"République française", &"fr"],
            )
            .await
            .expect("UPDATE");
        assert_eq!(n, 1);
        client
            .batch_execute("DELETE FROM countries WHERE code = 'jp'")
            .await
            .expect("DELETE");
        for rows in values_everywhere(&regions, "SELECT version FROM schema_migrations").await {
            assert_eq!(rows, vec!["20240101".to_string()]);
        }
        for rows in values_everywhere(&regions, "SELECT code || '=' || name FROM countries").await {
            assert_eq!(rows, vec!["fr=République française".to_string()]);
        }
        // A read goes to one region: a row only `us` has is seen by a
        // session placed in `us` and not by one placed in `eu`.
        regions
            .client("us")
            .await
            .batch_execute("INSERT INTO countries VALUES ('us', 'only in us')")
            .await
            .expect("direct insert");
        let count = |c: tokio_postgres::Client| async move {
            c.query_one("SELECT count(*) FROM countries", &[])
                .await
                .expect("read countries")
                .get::<_, i64>(0)
        };
        assert_eq!(count(proxy_client(&proxy, "us").await).await, 2);
        assert_eq!(count(proxy_client(&proxy, "eu").await).await, 1);
        // `TABLE x` reads the same way as `SELECT * FROM x`.
        let short = proxy_client(&proxy, "us")
            .await
            .simple_query("TABLE countries")
            .await
            .expect("TABLE countries");
        let rows = support::row_count(&short);
        assert_eq!(rows, 2, "TABLE countries in us");
        // COPY into a global table cannot be checked per region: refused.
        let err = client
            .simple_query("COPY countries FROM STDIN")
            .await
            .expect_err("COPY into a global table");
        assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err:?}");
        assert!(prepared_anywhere(&regions).await.is_empty());
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_failure_in_one_region_applies_the_statement_nowhere() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(ddl_config(&regions)).await;
    // A conflicting object in one region only.
    regions
        .client("apac")
        .await
        .batch_execute("CREATE TABLE widgets (id int)")
        .await
        .expect("create directly in apac");
    let client = tenant_client(&proxy, Some("acme")).await;
    within(15, "conflicting DDL", async {
        // Simple protocol.
        let err = client
            .batch_execute("CREATE TABLE widgets (id int PRIMARY KEY)")
            .await
            .expect_err("conflict in apac");
        let db = db_error(&err);
        assert_eq!(
            db.code().code(),
            "42P07",
            "the region's own SQLSTATE: {db:?}"
        );
        assert!(db.message().starts_with("region apac: "), "{db:?}");
        assert!(
            db.detail().is_some_and(|d| d.contains("rolled back")),
            "{db:?}"
        );
        assert_eq!(where_is(&regions, "widgets").await, vec!["apac"]);
        // Earlier statements of the same query are rolled back too.
        let err = client
            .batch_execute("CREATE TABLE gizmos (id int); CREATE TABLE widgets (id int)")
            .await
            .expect_err("conflict in apac");
        assert!(db_error(&err).message().contains("region apac"), "{err:?}");
        assert!(where_is(&regions, "gizmos").await.is_empty());
        // Extended protocol.
        let err = client
            .execute("CREATE TABLE widgets (id int, x text)", &[])
            .await
            .expect_err("conflict in apac");
        assert!(
            db_error(&err).message().starts_with("region apac: "),
            "{err:?}"
        );
        assert_eq!(where_is(&regions, "widgets").await, vec!["apac"]);
        // The session goes on.
        client
            .batch_execute("CREATE TABLE gizmos (id int)")
            .await
            .expect("next DDL");
        assert_eq!(where_is(&regions, "gizmos").await, REGIONS);
        assert!(prepared_anywhere(&regions).await.is_empty());
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_region_that_is_down_refuses_ddl_and_nothing_is_applied() {
    let mut regions = TestRegions::start().await;
    let proxy = start_proxy(ddl_config(&regions)).await;
    let client = tenant_client(&proxy, Some("acme")).await;
    // Every region's backend is open (idle) when apac goes down.
    client
        .batch_execute("CREATE TABLE before_stop (id int)")
        .await
        .expect("DDL with every region up");
    regions.stop_region("apac").await;
    within(15, "DDL with a region down", async {
        for sql in [
            "CREATE TABLE during_stop (id int)",
            "CREATE TABLE during_stop (id int)",
        ] {
            let err = client.batch_execute(sql).await.expect_err("apac is down");
            let db = db_error(&err);
            assert_eq!(db.code().code(), "08006", "{db:?}");
            assert!(db.message().contains("apac"), "{db:?}");
        }
        // A fresh session learns it when opening the region.
        let fresh = tenant_client(&proxy, Some("globex")).await;
        let err = fresh
            .execute("CREATE TABLE during_stop (id int)", &[])
            .await
            .expect_err("apac is down");
        assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
        // Tenants of other regions keep working.
        fresh
            .query("SELECT count(*) FROM before_stop", &[])
            .await
            .expect("us serves its tenant");
    })
    .await;
    regions.restart_region("apac").await;
    within(15, "after the region is back", async {
        // No region has the table, and no prepared transaction is left.
        assert!(where_is(&regions, "during_stop").await.is_empty());
        assert!(prepared_anywhere(&regions).await.is_empty());
        // The region's port may have changed: a new proxy finds it.
        let proxy = start_proxy(ddl_config(&regions)).await;
        let client = tenant_client(&proxy, Some("acme")).await;
        client
            .batch_execute("CREATE TABLE during_stop (id int)")
            .await
            .expect("DDL once every region is back");
        assert_eq!(where_is(&regions, "during_stop").await, REGIONS);
        proxy.shutdown().await;
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_migration_transaction_applies_everywhere_or_nowhere() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    regions
        .batch_everywhere("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
        .await;
    let proxy = start_proxy(ddl_config(&regions)).await;
    let mut client = tenant_client(&proxy, None).await;
    within(15, "migration transactions", async {
        // As sqlx/Rails/Django run a migration: BEGIN, DDL, bookkeeping, COMMIT.
        let tx = client.transaction().await.expect("BEGIN");
        tx.batch_execute("CREATE TABLE m1 (id int PRIMARY KEY); CREATE INDEX m1_id ON m1 (id)")
            .await
            .expect("DDL in the transaction");
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&"1"],
        )
        .await
        .expect("bookkeeping");
        // Reads see the transaction's own changes.
        let n: i64 = tx
            .query_one("SELECT count(*) FROM schema_migrations", &[])
            .await
            .expect("read in the transaction")
            .get(0);
        assert_eq!(n, 1);
        // Savepoints (Django's nested atomic blocks) hold in every region.
        tx.batch_execute("SAVEPOINT s1; CREATE TABLE m1_tmp (id int)")
            .await
            .expect("savepoint");
        tx.batch_execute("ROLLBACK TO SAVEPOINT s1")
            .await
            .expect("rollback to savepoint");
        // Tenant rows in a migration stay in their tenant's region.
        tx.execute(
            "INSERT INTO customers (tenant_id, id, email) VALUES ($1, 1, 'x@example.com')",
            &[&"initech"],
        )
        .await
        .expect("tenant row in the migration");
        // Not visible anywhere before COMMIT.
        assert!(where_is(&regions, "m1").await.is_empty());
        tx.commit().await.expect("COMMIT");
        assert_eq!(where_is(&regions, "m1").await, REGIONS);
        assert_eq!(where_is(&regions, "m1_id").await, REGIONS);
        assert!(where_is(&regions, "m1_tmp").await.is_empty());
        for rows in values_everywhere(&regions, "SELECT version FROM schema_migrations").await {
            assert_eq!(rows, vec!["1".to_string()]);
        }
        assert_eq!(
            regions.regions_holding("customers", "initech", 1).await,
            vec!["apac"]
        );

        // A migration that fails in one region is rolled back in all.
        regions
            .client("us")
            .await
            .batch_execute("CREATE TABLE m2_clash (id int)")
            .await
            .expect("direct");
        let tx = client.transaction().await.expect("BEGIN");
        tx.batch_execute("CREATE TABLE m2 (id int)")
            .await
            .expect("first DDL");
        let err = tx
            .batch_execute("CREATE TABLE m2_clash (id int)")
            .await
            .expect_err("clash in us");
        assert!(
            db_error(&err).message().starts_with("region us: "),
            "{err:?}"
        );
        // Every region's share is aborted, as one server's would be.
        let err = tx
            .batch_execute("SELECT 1")
            .await
            .expect_err("aborted transaction");
        assert_eq!(sqlstate(&err).as_deref(), Some("25P02"), "{err:?}");
        tx.rollback().await.expect("ROLLBACK");
        assert!(where_is(&regions, "m2").await.is_empty());

        // COMMIT of a failed transaction rolls it back, as in Postgres.
        client.batch_execute("BEGIN").await.expect("BEGIN");
        client
            .batch_execute("INSERT INTO schema_migrations VALUES ('2')")
            .await
            .expect("write");
        client
            .batch_execute("INSERT INTO schema_migrations VALUES ('1')")
            .await
            .expect_err("duplicate version");
        let msgs = client.simple_query("COMMIT").await.expect("COMMIT");
        assert!(
            msgs.iter()
                .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))),
            "{msgs:?}"
        );
        for rows in values_everywhere(&regions, "SELECT version FROM schema_migrations").await {
            assert_eq!(rows, vec!["1".to_string()]);
        }
        assert!(prepared_anywhere(&regions).await.is_empty());
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_jdbc_style_migration_in_the_extended_protocol() {
    use support::raw::*;
    use tokio::io::AsyncWriteExt;
    let regions = TestRegions::start().await;
    regions
        .batch_everywhere("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
        .await;
    let mut config = ddl_config(&regions);
    config.auth.method = regionguard::config::AuthMethod::Trust;
    let proxy = start_proxy(config).await;
    let mut s = trusted_session(proxy.local_addr()).await;
    within(15, "extended-protocol migration", async {
        // pgjdbc with autocommit off: BEGIN in the same batch as the first statement.
        let mut batch = Vec::new();
        for sql in ["BEGIN", "CREATE TABLE j1 (id int)"] {
            let mut parse = vec![0u8];
            parse.extend_from_slice(sql.as_bytes());
            parse.extend_from_slice(&[0, 0, 0]);
            batch.extend(message(b'P', &parse));
            batch.extend(message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
            batch.extend(message(b'E', &[0, 0, 0, 0, 0]));
        }
        batch.extend(message(b'S', &[]));
        s.write_all(&batch).await.expect("send");
        let mut got = Vec::new();
        loop {
            let (tag, body) = read_message(&mut s).await.expect("answer");
            got.push((tag, body));
            if tag == b'Z' {
                break;
            }
        }
        assert!(first_error(&got).is_none(), "{got:?}");
        let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"12C12CZ", "{got:?}");
        assert_eq!(got.last().unwrap().1, b"T");
        let got = extended_text_query(
            &mut s,
            "INSERT INTO schema_migrations VALUES ($1)",
            &[Some("j1")],
        )
        .await;
        assert!(first_error(&got).is_none(), "{got:?}");
        assert!(
            where_is(&regions, "j1").await.is_empty(),
            "not before COMMIT"
        );
        let got = extended_text_query(&mut s, "COMMIT", &[]).await;
        assert!(first_error(&got).is_none(), "{got:?}");
        assert_eq!(got.last().unwrap().1, b"I");
        assert_eq!(where_is(&regions, "j1").await, REGIONS);
        for rows in values_everywhere(&regions, "SELECT version FROM schema_migrations").await {
            assert_eq!(rows, vec!["j1".to_string()]);
        }
        // Outside a transaction, an extended DDL batch is atomic on its own.
        let got = extended_text_query(&mut s, "CREATE TABLE j2 (id int)", &[]).await;
        assert!(first_error(&got).is_none(), "{got:?}");
        assert_eq!(got.last().unwrap().1, b"I");
        assert_eq!(where_is(&regions, "j2").await, REGIONS);
        assert!(prepared_anywhere(&regions).await.is_empty());
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn create_index_concurrently_runs_in_every_region_and_reports_where_it_failed() {
    let regions = TestRegions::start().await;
    regions
        .batch_everywhere("CREATE TABLE t (id int, v int)")
        .await;
    regions
        .client("us")
        .await
        .batch_execute("CREATE INDEX t_v ON t (v)")
        .await
        .expect("direct");
    let proxy = start_proxy(ddl_config(&regions)).await;
    let client = tenant_client(&proxy, None).await;
    within(15, "CREATE INDEX CONCURRENTLY", async {
        client
            .batch_execute("CREATE INDEX CONCURRENTLY t_id ON t (id)")
            .await
            .expect("CREATE INDEX CONCURRENTLY");
        assert_eq!(where_is(&regions, "t_id").await, REGIONS);
        let err = client
            .batch_execute("CREATE INDEX CONCURRENTLY t_v ON t (v)")
            .await
            .expect_err("exists in us");
        let db = db_error(&err);
        assert!(db.message().starts_with("region us: "), "{db:?}");
        let detail = db.detail().unwrap_or_default();
        assert!(
            detail.contains("applied in eu and apac") && detail.contains("failed in us"),
            "{db:?}"
        );
        // Inside a transaction block it is refused, as Postgres refuses it.
        client.batch_execute("BEGIN").await.expect("BEGIN");
        let err = client
            .batch_execute("CREATE INDEX CONCURRENTLY t_x ON t (v)")
            .await
            .expect_err("in a transaction");
        assert_eq!(sqlstate(&err).as_deref(), Some("25001"), "{err:?}");
        client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn leftover_prepared_transactions_are_resolved_at_start() {
    let regions = TestRegions::start().await;
    let committed = format!("regionguard:{PROXY_ID}:{:032x}:eu", 1u128);
    let aborted = format!("regionguard:{PROXY_ID}:{:032x}:eu", 2u128);
    let foreign = format!("regionguard:other-proxy:{:032x}:eu", 3u128);
    // A crash after the commit decision: the decision is logged, apac still
    // holds its prepared share. A crash before it: us holds one with no
    // decision. Another proxy's young transaction must be left alone.
    regions
        .client("eu")
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA regionguard; \
             CREATE TABLE regionguard.twophase_decisions (gid text PRIMARY KEY, \
                 decision text NOT NULL, decided_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO regionguard.twophase_decisions (gid, decision) VALUES ('{committed}', 'commit')"
        ))
        .await
        .expect("decision log");
    for (region, gid, table) in [
        ("apac", &committed, "left_committed"),
        ("us", &aborted, "left_aborted"),
        ("us", &foreign, "left_foreign"),
    ] {
        let c = regions.client(region).await;
        c.batch_execute(&format!(
            "BEGIN; CREATE TABLE {table} (id int); PREPARE TRANSACTION '{gid}'"
        ))
        .await
        .expect("prepare directly");
    }
    let proxy = start_proxy(ddl_config(&regions)).await;
    within(15, "recovery at start", async {
        let resolved = wait_until(10, || async {
            prepared_anywhere(&regions).await.len() == 1
        })
        .await;
        assert!(resolved, "left: {:?}", prepared_anywhere(&regions).await);
        assert_eq!(
            prepared_anywhere(&regions).await,
            vec![format!("us: {foreign}")]
        );
        assert_eq!(where_is(&regions, "left_committed").await, vec!["apac"]);
        assert!(where_is(&regions, "left_aborted").await.is_empty());
        // The decisions of finished transactions are forgotten.
        let left: i64 = regions
            .client("eu")
            .await
            .query_one("SELECT count(*) FROM regionguard.twophase_decisions", &[])
            .await
            .expect("read the decision log")
            .get(0);
        assert_eq!(left, 0);
        // Clean up the foreign one (its proxy would, or recovery after the grace period).
        regions
            .client("us")
            .await
            .batch_execute(&format!("ROLLBACK PREPARED '{foreign}'"))
            .await
            .expect("rollback");
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_region_without_prepared_transactions_refuses_ddl_with_a_hint() {
    let mut regions = TestRegions::start().await;
    regions
        .cluster("apac")
        .batch_execute("postgres", "ALTER SYSTEM SET max_prepared_transactions = 0")
        .await
        .expect("ALTER SYSTEM");
    regions.stop_region("apac").await;
    regions.restart_region("apac").await;
    let proxy = start_proxy(ddl_config(&regions)).await;
    let client = tenant_client(&proxy, None).await;
    within(15, "max_prepared_transactions = 0", async {
        for extended in [false, true] {
            let r = if extended {
                client.execute("CREATE TABLE nope (id int)", &[]).await
            } else {
                client
                    .batch_execute("CREATE TABLE nope (id int)")
                    .await
                    .map(|_| 0)
            };
            let err = r.expect_err("apac cannot prepare");
            let db = db_error(&err);
            assert_eq!(db.code().code(), "55000", "{db:?}");
            assert!(db.message().contains("region apac"), "{db:?}");
            assert!(
                db.hint()
                    .is_some_and(|h| h.contains("max_prepared_transactions")),
                "{db:?}"
            );
            assert!(where_is(&regions, "nope").await.is_empty());
            assert!(prepared_anywhere(&regions).await.is_empty());
        }
        // Also at COMMIT of a transaction that changed every region.
        client.batch_execute("BEGIN").await.expect("BEGIN");
        client
            .batch_execute("CREATE TABLE nope (id int)")
            .await
            .expect("DDL in the transaction");
        let err = client.batch_execute("COMMIT").await.expect_err("COMMIT");
        assert_eq!(sqlstate(&err).as_deref(), Some("55000"), "{err:?}");
        assert!(where_is(&regions, "nope").await.is_empty());
        assert!(prepared_anywhere(&regions).await.is_empty());
        // The session is usable afterwards.
        client.batch_execute("SELECT 1").await.expect("next query");
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_region_lost_in_the_middle_rolls_back_everywhere() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(ddl_config(&regions)).await;
    let client = tenant_client(&proxy, Some("acme")).await;
    client
        .batch_execute("CREATE TABLE warm (id int)")
        .await
        .expect("every region's backend open");
    within(15, "a backend killed mid-statement", async {
        let apac = regions.client("apac").await;
        let killer = tokio::spawn(async move {
            // Wait until the statement runs in apac, then kill that backend.
            for _ in 0..100 {
                let n: i64 = apac
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE query LIKE 'CREATE TABLE slow%' AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .expect("terminate")
                    .get(0);
                if n > 0 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("the statement never ran in apac");
        });
        let err = client
            .batch_execute("CREATE TABLE slow AS SELECT 1 AS x FROM pg_sleep(1.5)")
            .await
            .expect_err("apac's backend was killed");
        killer.await.expect("killer");
        let db = db_error(&err);
        assert_eq!(db.code().code(), "08006", "{db:?}");
        assert_eq!(db.severity(), "ERROR", "the session goes on: {db:?}");
        assert!(db.message().starts_with("region apac: "), "{db:?}");
        assert!(where_is(&regions, "slow").await.is_empty());
        let clean = wait_until(5, || async { prepared_anywhere(&regions).await.is_empty() }).await;
        assert!(clean, "left: {:?}", prepared_anywhere(&regions).await);
        // The session goes on, with a new backend in apac.
        client
            .batch_execute("CREATE TABLE after_kill (id int)")
            .await
            .expect("next DDL");
        assert_eq!(where_is(&regions, "after_kill").await, REGIONS);
    })
    .await;
    proxy.shutdown().await;
}
