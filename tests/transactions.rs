//! Transactions through the proxy: commit, rollback, errors inside a
//! transaction, and SQLSTATEs identical to Postgres's own.

mod support;

use support::{expect_sqlstate, proxy_client, start_proxy, within, TestRegions};
use tokio_postgres::{Client, SimpleQueryMessage};

const DDL: &str = "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance int CHECK (balance >= 0))";

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect("count").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_rollback() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let mut via = proxy_client(&proxy, "eu").await;
    let direct = regions.client("eu").await;
    direct.batch_execute(DDL).await.expect("create");
    within(30, "transactions", async {
        // Driver-managed transaction, committed.
        let tx = via.transaction().await.expect("begin");
        tx.execute("INSERT INTO accounts VALUES (1, 'a', 10)", &[])
            .await
            .expect("insert");
        // Not visible from outside before commit.
        assert_eq!(count(&direct, "SELECT count(*) FROM accounts").await, 0);
        tx.commit().await.expect("commit");
        assert_eq!(count(&direct, "SELECT count(*) FROM accounts").await, 1);

        // Driver-managed transaction, rolled back.
        let tx = via.transaction().await.expect("begin");
        tx.execute("INSERT INTO accounts VALUES (2, 'b', 10)", &[])
            .await
            .expect("insert");
        tx.rollback().await.expect("rollback");
        assert_eq!(count(&direct, "SELECT count(*) FROM accounts").await, 1);

        // SQL-level BEGIN/COMMIT with savepoints in one simple query string.
        via.batch_execute(
            "BEGIN; INSERT INTO accounts VALUES (3, 'c', 1); SAVEPOINT s; \
             INSERT INTO accounts VALUES (4, 'd', 1); ROLLBACK TO SAVEPOINT s; \
             INSERT INTO accounts VALUES (5, 'e', 1); COMMIT",
        )
        .await
        .expect("savepoints");
        let ids: Vec<i32> = direct
            .query("SELECT id FROM accounts ORDER BY id", &[])
            .await
            .expect("ids")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, vec![1, 3, 5]);

        // Nested transaction via the driver's savepoints.
        let mut tx = via.transaction().await.expect("begin");
        tx.execute("UPDATE accounts SET balance = 100 WHERE id = 1", &[])
            .await
            .expect("update");
        let sp = tx.transaction().await.expect("savepoint");
        sp.execute("DELETE FROM accounts", &[])
            .await
            .expect("delete");
        sp.rollback().await.expect("rollback to savepoint");
        tx.commit().await.expect("commit");
        assert_eq!(count(&direct, "SELECT count(*) FROM accounts").await, 3);
        assert_eq!(
            count(&direct, "SELECT balance::int8 FROM accounts WHERE id = 1").await,
            100
        );
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_inside_a_transaction_then_rollback() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let via = proxy_client(&proxy, "us").await;
    let direct = regions.client("us").await;
    direct.batch_execute(DDL).await.expect("create");
    let other = regions.client("us").await;
    for (client, base) in [(&via, 10), (&other, 20)] {
        within(30, "error in transaction", async {
            client.batch_execute("BEGIN").await.expect("begin");
            client
                .execute(
                    &format!("INSERT INTO accounts VALUES ({base}, 'x', 1)"),
                    &[],
                )
                .await
                .expect("insert");
            let dup = client
                .execute(
                    &format!("INSERT INTO accounts VALUES ({base}, 'y', 1)"),
                    &[],
                )
                .await;
            assert_eq!(expect_sqlstate(dup, "duplicate"), "23505");
            // Everything else fails until the transaction ends.
            let aborted = client.query("SELECT 1", &[]).await;
            assert_eq!(expect_sqlstate(aborted, "in failed transaction"), "25P02");
            let aborted = client.simple_query("SELECT 1").await;
            assert_eq!(expect_sqlstate(aborted, "in failed transaction"), "25P02");
            // COMMIT of an aborted transaction reports ROLLBACK.
            let messages = client.simple_query("COMMIT").await.expect("commit");
            assert!(matches!(
                messages.last(),
                Some(SimpleQueryMessage::CommandComplete(0))
            ));
            let n = count(client, "SELECT count(*) FROM accounts").await;
            assert_eq!(n, 0, "nothing of the aborted transaction remains");
            client
                .batch_execute("BEGIN; SELECT 1/0")
                .await
                .expect_err("division by zero");
            client.batch_execute("ROLLBACK").await.expect("rollback");
            assert_eq!(count(client, "SELECT 7::int8").await, 7);
        })
        .await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlstates_and_error_fields_equal_direct() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let via = proxy_client(&proxy, "apac").await;
    let direct = regions.client("apac").await;
    direct.batch_execute(DDL).await.expect("create");
    direct
        .batch_execute("INSERT INTO accounts VALUES (1, 'a', 5)")
        .await
        .expect("seed");
    let statements = [
        ("INSERT INTO accounts VALUES (1, 'dup', 1)", "23505"),
        ("INSERT INTO accounts VALUES (2, NULL, 1)", "23502"),
        ("UPDATE accounts SET balance = -1", "23514"),
        ("SELECT * FROM missing_table", "42P01"),
        ("SELECT missing_column FROM accounts", "42703"),
        ("SELEKT 1", "42601"),
        ("SELECT 1/0", "22012"),
        ("SELECT 'abc'::int", "22P02"),
        ("SELECT repeat('x', -1)::int", "22P02"),
        ("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'custom', DETAIL = 'd', HINT = 'h'; END $$", "P0001"),
    ];
    for (sql, code) in statements {
        for extended in [false, true] {
            let a = if extended {
                via.execute(sql, &[]).await.map(|_| ())
            } else {
                via.batch_execute(sql).await
            };
            let b = if extended {
                direct.execute(sql, &[]).await.map(|_| ())
            } else {
                direct.batch_execute(sql).await
            };
            let a = a.expect_err(sql);
            let b = b.expect_err(sql);
            let (a, b) = (
                a.as_db_error().expect("db error"),
                b.as_db_error().expect("db error"),
            );
            assert_eq!(a.code().code(), code, "{sql}");
            assert_eq!(a.code(), b.code(), "{sql}");
            assert_eq!(a.severity(), b.severity(), "{sql}");
            assert_eq!(a.message(), b.message(), "{sql}");
            assert_eq!(a.detail(), b.detail(), "{sql}");
            assert_eq!(a.hint(), b.hint(), "{sql}");
            assert_eq!(a.constraint(), b.constraint(), "{sql}");
            assert_eq!(a.table(), b.table(), "{sql}");
            assert_eq!(a.position(), b.position(), "{sql}");
        }
    }
    // Notices pass through too (RAISE NOTICE arrives before the result).
    let messages = via
        .simple_query("DO $$ BEGIN RAISE NOTICE 'hello'; END $$; SELECT 1")
        .await
        .expect("notice then select");
    assert!(support::row_count(&messages) > 0);
    proxy.shutdown().await;
}
