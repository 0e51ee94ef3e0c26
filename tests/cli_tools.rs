//! libpq's own tools end to end through the proxy: psql (including \copy)
//! and pgbench in simple, extended and prepared modes.

mod support;

use std::process::Output;
use std::time::Duration;
use support::{start_proxy, TestRegions, PROXY_PASSWORD, PROXY_USER};
use tokio::process::Command;

/// A libpq tool pointed at the proxy, region chosen with PGOPTIONS.
fn tool(program: &str, proxy: &regionguard::server::Proxy, region: &str) -> Command {
    let addr = proxy.local_addr();
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PGHOST", addr.ip().to_string())
        .env("PGPORT", addr.port().to_string())
        .env("PGUSER", PROXY_USER)
        .env("PGPASSWORD", PROXY_PASSWORD)
        .env("PGDATABASE", support::DATABASE)
        .env("PGOPTIONS", format!("-c regionguard.region={region}"))
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", "regionguard-cli-test")
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command, secs: u64, what: &str) -> Output {
    let out = tokio::time::timeout(Duration::from_secs(secs), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} timed out after {secs}s"))
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    out
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn psql(proxy: &regionguard::server::Proxy, region: &str, args: &[&str]) -> Output {
    let mut cmd = tool("/usr/bin/psql", proxy, region);
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(args);
    run(cmd, 60, "psql").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_queries_and_copy_files() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let out = psql(&proxy, "us", &["-c", "SELECT current_setting('port')"]).await;
    assert_eq!(ok(&out, "psql -c").trim(), regions.port("us").to_string());

    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let mut csv = String::from("id,name,note\n");
    for i in 0..2000 {
        csv.push_str(&format!("{i},\"name, {i}\",\"quote \"\" ☃\"\n"));
    }
    std::fs::write(&input, &csv).expect("write csv");
    let script = format!(
        "CREATE TABLE people (id int PRIMARY KEY, name text, note text);\n\
         \\copy people from '{}' with (format csv, header true)\n\
         BEGIN;\n\
         UPDATE people SET note = 'changed' WHERE id = 0;\n\
         COMMIT;\n\
         SELECT count(*) AS n FROM people \\gset\n\
         \\echo rows :n\n\
         \\copy (SELECT * FROM people ORDER BY id) to '{}' with (format csv, header true)\n",
        input.display(),
        output.display()
    );
    let script_path = dir.path().join("script.sql");
    std::fs::write(&script_path, script).expect("write script");
    let out = psql(&proxy, "apac", &["-f", script_path.to_str().unwrap()]).await;
    let stdout = ok(&out, "psql script");
    assert!(stdout.contains("rows 2000"), "{stdout}");
    let back = std::fs::read_to_string(&output).expect("read copied-out file");
    let expected = csv.replacen("\"quote \"\" ☃\"", "changed", 1);
    assert_eq!(
        back, expected,
        "\\copy out equals what went in (with the update)"
    );
    // The table (DDL) is in every region; its rows, written in a session
    // placed in apac, are in apac only.
    for region in ["eu", "us", "apac"] {
        let n: i64 = regions
            .client(region)
            .await
            .query_one("SELECT count(*) FROM people", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, if region == "apac" { 2000 } else { 0 }, "{region}");
    }

    // Errors reach psql with their message; ON_ERROR_STOP makes it exit 3.
    let out = psql(
        &proxy,
        "apac",
        &["-c", "INSERT INTO people VALUES (1, 'dup', '')"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "psql -c exits 1 on error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("duplicate key value violates unique constraint"),
        "{stderr}"
    );
    // Multi-statement string, a cancelled-free \watch-free session with
    // \set, variables and a failing statement inside a transaction.
    let out = psql(
        &proxy,
        "eu",
        &[
            "-c",
            "SELECT 1; SELECT 'two'",
            "-c",
            "SELECT version() LIKE 'PostgreSQL 15%'",
        ],
    )
    .await;
    assert_eq!(
        ok(&out, "psql multi")
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec!["1", "two", "t"]
    );
    // A wrong password.
    let mut cmd = tool("/usr/bin/psql", &proxy, "eu");
    cmd.env("PGPASSWORD", "wrong")
        .args(["-X", "-c", "SELECT 1"]);
    let out = run(cmd, 30, "psql wrong password").await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    proxy.shutdown().await;
}

/// pgbench's summary: (processed, expected, failed).
fn pgbench_summary(stdout: &str) -> (u64, u64, u64) {
    let mut processed = None;
    let mut failed = None;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("number of transactions actually processed: ") {
            let (done, want) = rest.split_once('/').expect("processed/expected");
            processed = Some((done.trim().parse().unwrap(), want.trim().parse().unwrap()));
        }
        if let Some(rest) = line.strip_prefix("number of failed transactions: ") {
            failed = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    let (done, want) = processed.unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    (
        done,
        want,
        failed.unwrap_or_else(|| panic!("no failure count in:\n{stdout}")),
    )
}

/// Transaction-mode pooling (ADR 22) under pgbench: six clients share two
/// backends; simple and extended queries hand the backend back after each
/// transaction, prepared (named) statements keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_through_transaction_pooling_without_failures() {
    let regions = TestRegions::start().await;
    let mut config = regions.proxy_config();
    config.backend_pool.mode = regionguard::config::PoolMode::Transaction;
    config.backend_pool.max_active_per_region = 2;
    let proxy = start_proxy(config).await;
    let mut init = tool("/usr/bin/pgbench", &proxy, "eu");
    init.args(["-i", "-s", "1", "-q"]);
    ok(&run(init, 180, "pgbench -i").await, "pgbench -i");
    for (mode, clients, script) in [
        ("simple", "6", "-S"),
        ("extended", "6", "-S"),
        ("simple", "6", "-N"),
        ("prepared", "2", "-S"),
    ] {
        let mut cmd = tool("/usr/bin/pgbench", &proxy, "eu");
        cmd.args([
            "-n", "-M", mode, "-c", clients, "-j", "2", "-t", "100", script,
        ]);
        let out = run(cmd, 180, "pgbench").await;
        let stdout = ok(&out, &format!("pgbench {script} -M {mode}"));
        let want = 100 * clients.parse::<u64>().expect("count");
        assert_eq!(
            pgbench_summary(&stdout),
            (want, want, 0),
            "{script} -M {mode}:\n{stdout}"
        );
    }
    let direct = regions.client("eu").await;
    let history: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .expect("history")
        .get(0);
    assert_eq!(history, 600, "every -N transaction committed once");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_all_query_modes_without_failures() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let mut init = tool("/usr/bin/pgbench", &proxy, "us");
    init.args(["-i", "-s", "1", "-q"]);
    let out = run(init, 180, "pgbench -i").await;
    ok(&out, "pgbench -i");
    let direct = regions.client("us").await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .expect("pgbench tables in us")
        .get(0);
    assert_eq!(n, 100_000);

    for mode in ["simple", "extended", "prepared"] {
        let mut cmd = tool("/usr/bin/pgbench", &proxy, "us");
        cmd.args(["-n", "-M", mode, "-c", "4", "-j", "2", "-t", "200", "-S"]);
        let out = run(cmd, 180, "pgbench -S").await;
        let stdout = ok(&out, &format!("pgbench -S -M {mode}"));
        assert_eq!(
            pgbench_summary(&stdout),
            (800, 800, 0),
            "-S -M {mode}:\n{stdout}"
        );
    }
    let history_before: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .expect("history")
        .get(0);
    for mode in ["simple", "prepared"] {
        let mut cmd = tool("/usr/bin/pgbench", &proxy, "us");
        cmd.args(["-n", "-M", mode, "-c", "4", "-j", "2", "-t", "50"]);
        let out = run(cmd, 180, "pgbench TPC-B").await;
        let stdout = ok(&out, &format!("pgbench TPC-B -M {mode}"));
        assert_eq!(
            pgbench_summary(&stdout),
            (200, 200, 0),
            "TPC-B -M {mode}:\n{stdout}"
        );
    }
    // libpq pipeline mode through the proxy (a custom script).
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("pipeline.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 100000)\n\
         \\startpipeline\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 0;\n\
         SELECT count(*) FROM pgbench_branches;\n\
         \\endpipeline\n",
    )
    .expect("write pipeline script");
    let mut cmd = tool("/usr/bin/pgbench", &proxy, "us");
    cmd.args([
        "-n", "-M", "extended", "-c", "2", "-j", "2", "-t", "200", "-f",
    ])
    .arg(&script);
    let out = run(cmd, 180, "pgbench pipeline").await;
    let stdout = ok(&out, "pgbench pipeline");
    assert_eq!(
        pgbench_summary(&stdout),
        (400, 400, 0),
        "pipeline:\n{stdout}"
    );
    let history_after: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .expect("history")
        .get(0);
    assert_eq!(
        history_after - history_before,
        400,
        "every TPC-B transaction committed"
    );
    // Balances stay consistent: the sum of deltas equals each table's sum.
    let row = direct
        .query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches), \
             (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(delta) FROM pgbench_history)",
            &[],
        )
        .await
        .expect("sums");
    let sums: Vec<i64> = (0..4).map(|i| row.get(i)).collect();
    assert!(sums.iter().all(|s| *s == sums[0]), "balances {sums:?}");
    proxy.shutdown().await;
}
