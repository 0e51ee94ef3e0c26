//! Re-encryption jobs against real regional clusters: after a rotation
//! under a write-heavy workload a job drives the rows under old key
//! versions to zero and retires those versions; a job interrupted by a
//! proxy restart resumes; concurrent application updates are never lost
//! (compare-and-set); `jobs cancel` stops a job. Rows are checked by
//! reading the regional database directly and parsing envelope headers.

mod support;

use regionguard::config::{Config, KeySource};
use regionguard::crypto::envelope;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

/// `email` is deterministic and stored as bytea; `full_name` randomized
/// and stored as text (the `rg1:` base64 form): both storage forms.
const SCHEMA: &str = "\
    CREATE TABLE customers (tenant_id text NOT NULL, id bigint NOT NULL, email bytea, \
        full_name text, PRIMARY KEY (tenant_id, id));\n";

struct Setup {
    regions: TestRegions,
    dir: tempfile::TempDir,
    keys: BTreeMap<String, PathBuf>,
}

impl Setup {
    async fn start() -> Setup {
        let regions = TestRegions::start().await;
        regions.batch_everywhere(SCHEMA).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut keys = BTreeMap::new();
        for (i, region) in REGIONS.iter().enumerate() {
            use base64::Engine;
            let key: Vec<u8> = (0..32u8)
                .map(|b| b.wrapping_mul(7).wrapping_add(i as u8))
                .collect();
            let path = dir.path().join(format!("{region}.key"));
            std::fs::write(
                &path,
                format!(
                    "1:{}\n",
                    base64::engine::general_purpose::STANDARD.encode(key)
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            keys.insert(region.to_string(), path);
        }
        Setup { regions, dir, keys }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    fn audit(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// A proxy config; `admin` gives it the socket and the audit log.
    fn config(&self, admin: bool) -> Config {
        let mut config = self.regions.routing_config(&ROUTING_TENANTS);
        for (name, region) in config.regions.iter_mut() {
            region.key = Some(KeySource::File {
                path: self.keys[name].clone(),
            });
        }
        classify_customers(&mut config, true);
        if admin {
            config.admin.socket = Some(self.socket());
            config.admin.audit_log = Some(self.audit());
        }
        config.admin.rotation_grace_ms = 300;
        config.admin.key_recheck_secs = 1;
        config.metrics.address = Some("127.0.0.1:0".into());
        config
    }

    async fn direct(&self) -> tokio_postgres::Client {
        self.regions.client("eu").await
    }
}

async fn ctl(socket: &Path, command: &str, args: Value) -> Value {
    let socket = socket.to_path_buf();
    let command = command.to_string();
    tokio::task::spawn_blocking(move || {
        regionguard::admin::client::request(&socket, &command, args, Duration::from_secs(30))
    })
    .await
    .unwrap()
    .expect("admin socket reachable")
}

/// Rotates eu's data keys (of `tenant`, else of every tenant), as
/// `regionguard ctl keys rotate` does; the reply's result.
async fn rotate(socket: &Path, tenant: Option<&str>) -> Value {
    let mut args = json!({"region": "eu"});
    if let Some(t) = tenant {
        args["tenant"] = json!(t);
    }
    ok(ctl(socket, "keys.rotate", args).await)
}

/// `regionguard ctl --json reencrypt --region eu --rate RATE --wait`, run
/// as a script would run it (no terminal): its exit status and output.
async fn ctl_reencrypt_wait(socket: &Path, rate: u32) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_regionguard");
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["ctl", "--json", "--socket"])
            .arg(&socket)
            .args([
                "reencrypt",
                "--region",
                "eu",
                "--rate",
                &rate.to_string(),
                "--wait",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn ok(reply: Value) -> Value {
    assert_eq!(reply["ok"], json!(true), "{reply}");
    reply["result"].clone()
}

fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["ok"], json!(false), "{reply}");
    reply["error"]["code"].as_str().unwrap()
}

/// The job as the database holds it (read directly).
async fn job(socket: &Path, id: &str) -> Value {
    ok(ctl(socket, "jobs.list", json!({ "id": id })).await)["jobs"][0].clone()
}

async fn wait_state(socket: &Path, id: &str, state: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let j = job(socket, id).await;
        if j["state"] == json!(state) {
            return j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} not {state} after {secs}s: {j}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The key version of a stored value of either storage form.
fn version(bytes: &[u8]) -> u32 {
    let env = if envelope::is_text_form(bytes) {
        envelope::from_text(bytes).unwrap()
    } else {
        bytes.to_vec()
    };
    envelope::decode_header(&env).unwrap().key_version
}

/// Per column, rows of region eu whose value is under a version older
/// than the tenant's active one, read directly and parsed here.
async fn old_rows(client: &tokio_postgres::Client) -> (usize, usize) {
    let active: HashMap<String, i32> = client
        .query(
            "SELECT tenant, version FROM regionguard.data_keys WHERE state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let rows = client
        .query("SELECT tenant_id, email, full_name FROM customers", &[])
        .await
        .unwrap();
    let (mut email, mut name) = (0, 0);
    for r in &rows {
        let tenant: String = r.get(0);
        let current = active[&tenant] as u32;
        if let Some(e) = r.get::<_, Option<Vec<u8>>>(1) {
            email += usize::from(version(&e) < current);
        }
        if let Some(n) = r.get::<_, Option<String>>(2) {
            name += usize::from(version(n.as_bytes()) < current);
        }
    }
    (email, name)
}

async fn job_owner(client: &tokio_postgres::Client, number: i64) -> String {
    client
        .query_one(
            "SELECT owner FROM regionguard.reencrypt_jobs WHERE id = $1",
            &[&number],
        )
        .await
        .unwrap()
        .get(0)
}

async fn key_states(client: &tokio_postgres::Client, tenant: &str) -> Vec<(i32, String)> {
    client
        .query(
            "SELECT version, state FROM regionguard.data_keys WHERE tenant = $1 ORDER BY version",
            &[&tenant],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Inserts `n` rows per tenant through `proxy` (ids from `first`).
async fn populate(proxy: &regionguard::server::Proxy, tenants: &[&str], first: i64, n: i64) {
    let client = tenant_client(proxy, None).await;
    let stmt = client
        .prepare("INSERT INTO customers (tenant_id, id, email, full_name) VALUES ($1, $2, $3, $4)")
        .await
        .unwrap();
    for tenant in tenants {
        for id in first..first + n {
            client
                .execute(
                    &stmt,
                    &[
                        tenant,
                        &id,
                        &format!("u{id}@{tenant}.example"),
                        &format!("Name {id}"),
                    ],
                )
                .await
                .unwrap();
        }
    }
}

/// Every row of the tenants, read through the proxy: (id, email, name).
async fn read_all(
    client: &tokio_postgres::Client,
    tenant: &str,
) -> Vec<(i64, Option<String>, Option<String>)> {
    client
        .query(
            "SELECT id, email, full_name FROM customers WHERE tenant_id = $1 ORDER BY id",
            &[&tenant],
        )
        .await
        .unwrap_or_else(|e| panic!("read {tenant} through the proxy: {e:?}"))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_then_reencryption_retires_the_old_version() {
    let setup = Setup::start().await;
    let proxy = start_proxy(setup.config(true)).await;
    let socket = setup.socket();
    // Rows written before the rotation: under version 1 for sure.
    populate(&proxy, &["acme", "umbrella"], 100_000, 150).await;

    // Four writers, 2000 statements in all (inserts, updates, reads), while
    // the region's data keys rotate. Each writer owns its ids and remembers
    // the last value it wrote.
    let expected = within(60, "rotation under a write workload", async {
        let mut writers = Vec::new();
        for w in 0..4i64 {
            let client = tenant_client(&proxy, None).await;
            writers.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut mine: BTreeMap<(String, i64), (String, String)> = BTreeMap::new();
                for i in 0..500i64 {
                    let tenant = if i % 2 == 0 { "acme" } else { "umbrella" };
                    let id = w * 10_000 + i / 3;
                    let email = format!("w{w}-{id}@example.com");
                    let name = format!("Name {w}/{i}");
                    let r = match i % 3 {
                        0 => client
                            .execute(
                                "INSERT INTO customers (tenant_id, id, email, full_name) \
                                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, id) DO UPDATE \
                                 SET email = excluded.email, full_name = excluded.full_name",
                                &[&tenant, &id, &email, &name],
                            )
                            .await
                            .map(|_| {
                                mine.insert((tenant.to_string(), id), (email, name));
                            }),
                        1 => {
                            let prev = mine
                                .keys()
                                .rfind(|(t, _)| t == tenant)
                                .cloned();
                            match prev {
                                Some((t, id)) => client
                                    .execute(
                                        "UPDATE customers SET full_name = $3 WHERE tenant_id = $1 AND id = $2",
                                        &[&t, &id, &name],
                                    )
                                    .await
                                    .map(|_| {
                                        if let Some(v) = mine.get_mut(&(t.clone(), id)) {
                                            v.1 = name;
                                        }
                                    }),
                                None => Ok(()),
                            }
                        }
                        _ => client
                            .query(
                                "SELECT full_name FROM customers WHERE tenant_id = $1 AND id < $2",
                                &[&tenant, &(w * 10_000 + 20)],
                            )
                            .await
                            .map(|_| ()),
                    };
                    if let Err(e) = r {
                        failures.push(format!("{e:?}"));
                    }
                }
                (failures, mine)
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rotated = rotate(&socket, None).await;
        assert!(!rotated["rotated"].as_array().unwrap().is_empty(), "{rotated}");
        let mut expected = BTreeMap::new();
        for w in writers {
            let (failures, mine) = w.await.unwrap();
            assert!(failures.is_empty(), "failed statements: {failures:?}");
            expected.extend(mine);
        }
        expected
    })
    .await;
    let direct = setup.direct().await;
    let (old_email, old_name) = old_rows(&direct).await;
    assert!(
        old_email >= 300 && old_name >= 300,
        "{old_email} {old_name}"
    );

    // The job, started and followed by the CLI (no terminal: plain lines,
    // --json at the end), at a high rate.
    let out = ctl_reencrypt_wait(&socket, 20000).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let done = &reply["result"]["job"];
    assert_eq!(done["state"], json!("done"), "{reply}");
    assert!(
        done["rows_done"].as_i64().unwrap() >= (old_email + old_name) as i64,
        "{done}"
    );
    assert_eq!(done["rows_remaining"], json!(0), "{done}");

    assert_eq!(
        old_rows(&direct).await,
        (0, 0),
        "rows still under the old version"
    );
    for tenant in ["acme", "umbrella"] {
        let states = key_states(&direct, tenant).await;
        assert_eq!(
            states,
            vec![(1, "retired".to_string()), (2, "active".to_string())],
            "{tenant}"
        );
    }

    // Every row readable through the proxy with its value; deterministic
    // lookups find re-encrypted rows.
    let client = tenant_client(&proxy, None).await;
    for tenant in ["acme", "umbrella"] {
        let rows = read_all(&client, tenant).await;
        let mine: Vec<_> = expected.iter().filter(|((t, _), _)| t == tenant).collect();
        assert_eq!(rows.len(), mine.len() + 150, "{tenant}");
        let by_id: HashMap<i64, (Option<String>, Option<String>)> =
            rows.into_iter().map(|(id, e, n)| (id, (e, n))).collect();
        for ((_, id), (email, name)) in mine {
            assert_eq!(
                by_id[id],
                (Some(email.clone()), Some(name.clone())),
                "{tenant}/{id}"
            );
        }
        // Written under version 1 before the rotation, now under 2.
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM customers WHERE tenant_id = $1 AND email = $2",
                &[&tenant, &format!("u100000@{tenant}.example")],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            n, 1,
            "deterministic lookup of a re-encrypted row ({tenant})"
        );
    }

    // Audit: the job's start, run, retirements and end, chain intact, no
    // row data.
    let text = std::fs::read_to_string(setup.audit()).unwrap();
    for event in [
        "reencrypt.start",
        "reencrypt.run",
        "reencrypt.retire",
        "reencrypt.finish",
    ] {
        assert!(
            text.contains(&format!("\"{event}\"")),
            "{event} missing:\n{text}"
        );
    }
    assert!(!text.contains("Name "), "row data in the audit log");
    ok(ctl(&socket, "audit.verify", json!({})).await);
    let metrics = proxy.metrics().render().unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("regionguard_crypto_reencrypted_rows_total{region=\"eu\"}"))
        .unwrap();
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{line}");
    assert!(metrics.contains("regionguard_crypto_reencrypt_jobs_running{region=\"eu\"} 0"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_interrupted_by_a_proxy_restart_resumes_and_finishes() {
    let setup = Setup::start().await;
    let socket = setup.socket();
    let a = start_proxy(setup.config(true)).await;
    populate(&a, &["acme"], 1, 300).await;
    rotate(&socket, Some("acme")).await;
    // 600 values (two columns) at 60 rows/s: ten seconds of work.
    let started = ok(ctl(
        &socket,
        "reencrypt.start",
        json!({"region": "eu", "tenant": "acme", "rate": 60}),
    )
    .await);
    let id = started["job"]["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while job(&socket, &id).await["rows_done"].as_i64().unwrap() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "the job makes no progress"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second proxy serving the region looks for jobs at start: the job's
    // lock is held by A, so B does not run it too.
    let b = start_proxy(setup.config(false)).await;
    let direct = setup.direct().await;
    let number: i64 = id.rsplit('/').next().unwrap().parse().unwrap();
    let first = job_owner(&direct, number).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        job_owner(&direct, number).await,
        first,
        "two proxies ran one job"
    );
    a.shutdown().await;

    let row = direct
        .query_one(
            "SELECT state, rows_done, owner FROM regionguard.reencrypt_jobs WHERE id = $1",
            &[&id.rsplit('/').next().unwrap().parse::<i64>().unwrap()],
        )
        .await
        .unwrap();
    let (state, done_at_stop, owner_a): (String, i64, String) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(state, "running");
    assert!(
        done_at_stop < 600,
        "finished before the restart: {done_at_stop}"
    );
    let (e, n) = old_rows(&direct).await;
    assert!(e + n > 0);

    // A new proxy serving the region takes the job over at start (or B
    // does, at its next check: the lock lets only one of them run it).
    let c = start_proxy(setup.config(true)).await;
    let done = wait_state(&socket, &id, "done", 40).await;
    assert_ne!(done["owner"].as_str().unwrap(), owner_a, "{done}");
    assert!(done["rows_done"].as_i64().unwrap() >= 600, "{done}");
    assert!(
        done["passes"].as_i64().unwrap() >= 2,
        "resumed, not restarted: {done}"
    );
    assert_eq!(old_rows(&direct).await, (0, 0));
    assert_eq!(
        key_states(&direct, "acme").await,
        vec![(1, "retired".to_string()), (2, "active".to_string())]
    );
    let client = tenant_client(&c, None).await;
    let rows = read_all(&client, "acme").await;
    assert_eq!(rows.len(), 300);
    for (id, email, name) in rows {
        assert_eq!(email, Some(format!("u{id}@acme.example")));
        assert_eq!(name, Some(format!("Name {id}")));
    }
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_application_updates_are_not_lost() {
    let setup = Setup::start().await;
    let socket = setup.socket();
    let proxy = start_proxy(setup.config(true)).await;
    populate(&proxy, &["acme"], 1, 200).await;
    rotate(&socket, Some("acme")).await;

    // An application transaction holds row 1 (updated, not committed):
    // the job's compare-and-set on it waits, then finds the row changed
    // and leaves it alone.
    let app = tenant_client(&proxy, None).await;
    app.batch_execute("BEGIN").await.unwrap();
    app.execute(
        "UPDATE customers SET full_name = $3 WHERE tenant_id = $1 AND id = $2",
        &[&"acme", &1i64, &"Held by the app"],
    )
    .await
    .unwrap();
    let started = ok(ctl(
        &socket,
        "reencrypt.start",
        json!({"region": "eu", "tenant": "acme", "rate": 2000}),
    )
    .await);
    let id = started["job"]["id"].as_str().unwrap().to_string();

    // Meanwhile another client keeps updating rows (some of which the
    // job's blocked batch holds until the app commits).
    let other = tenant_client(&proxy, None).await;
    let updater = tokio::spawn(async move {
        let mut last: HashMap<i64, String> = HashMap::new();
        for k in 0..150i64 {
            let row = 2 + (k * 37) % 199;
            let name = format!("Updated {row} #{k}");
            other
                .execute(
                    "UPDATE customers SET full_name = $3 WHERE tenant_id = $1 AND id = $2",
                    &[&"acme", &row, &name],
                )
                .await
                .unwrap();
            last.insert(row, name);
        }
        last
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.batch_execute("COMMIT").await.unwrap();
    let last = within(30, "the updates", updater).await.unwrap();
    let done = wait_state(&socket, &id, "done", 40).await;
    assert!(done["rows_skipped"].as_i64().unwrap() >= 1, "{done}");

    let direct = setup.direct().await;
    assert_eq!(old_rows(&direct).await, (0, 0));
    let rows = read_all(&tenant_client(&proxy, None).await, "acme").await;
    assert_eq!(rows.len(), 200);
    for (id, email, name) in rows {
        let want = match id {
            1 => "Held by the app".to_string(),
            _ => last
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("Name {id}")),
        };
        assert_eq!(name, Some(want), "row {id}");
        assert_eq!(email, Some(format!("u{id}@acme.example")));
    }

    // The compare-and-set statement itself: a stale old value matches
    // nothing.
    let col = regionguard::reencrypt::sql::ColumnSql {
        table: "public.customers".into(),
        column: "full_name".into(),
        tenant: "tenant_id".into(),
        storage: regionguard::catalog::Storage::Text,
    };
    let r = direct
        .query_one(
            "SELECT ctid::text, full_name FROM customers WHERE tenant_id = 'acme' AND id = 5",
            &[],
        )
        .await
        .unwrap();
    let (ctid, current): (String, String) = (r.get(0), r.get(1));
    let n = direct
        .execute(
            &col.update_batch(),
            &[
                &vec![ctid.clone()],
                &vec!["rg1:stale".to_string()],
                &vec!["rg1:new".to_string()],
                &vec!["acme".to_string()],
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    let n = direct
        .execute(
            &col.update_batch(),
            &[
                &vec![ctid],
                &vec![current.clone()],
                &vec![current],
                &vec!["umbrella".to_string()],
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 0, "another tenant's compare-and-set matched");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_cancel_stops_a_job_and_refusals_have_stable_codes() {
    let setup = Setup::start().await;
    let socket = setup.socket();
    let proxy = start_proxy(setup.config(true)).await;
    populate(&proxy, &["acme", "umbrella"], 1, 150).await;
    rotate(&socket, None).await;

    // Refusals, each naming what was refused.
    let r = ctl(&socket, "reencrypt.start", json!({"region": "mars"})).await;
    assert_eq!(error_code(&r), "not_found");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("mars"),
        "{r}"
    );
    let r = ctl(
        &socket,
        "reencrypt.start",
        json!({"region": "eu", "rate": 0}),
    )
    .await;
    assert_eq!(error_code(&r), "bad_args");
    let r = ctl(
        &socket,
        "reencrypt.start",
        json!({"region": "eu", "table": "orders"}),
    )
    .await;
    assert_eq!(error_code(&r), "not_found");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("orders"),
        "{r}"
    );
    let r = ctl(
        &socket,
        "reencrypt.start",
        json!({"region": "eu", "tenant": "nobody"}),
    )
    .await;
    assert_eq!(error_code(&r), "not_found");

    let started = ok(ctl(
        &socket,
        "reencrypt.start",
        json!({"region": "eu", "table": "customers", "rate": 20}),
    )
    .await);
    let id = started["job"]["id"].as_str().unwrap().to_string();
    // An overlapping job is refused while this one runs.
    let r = ctl(
        &socket,
        "reencrypt.start",
        json!({"region": "eu", "tenant": "acme"}),
    )
    .await;
    assert_eq!(error_code(&r), "conflict");
    assert!(r["error"]["message"].as_str().unwrap().contains(&id), "{r}");

    assert!(
        wait_until(20, || async {
            job(&socket, &id).await["rows_done"].as_i64().unwrap() > 0
        })
        .await
    );
    let cancelled = ok(ctl(&socket, "jobs.cancel", json!({ "id": id })).await);
    assert_eq!(cancelled["job"]["state"], json!("cancelled"));
    // The runner stops: the count no longer moves.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let a = job(&socket, &id).await["rows_done"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = job(&socket, &id).await;
    assert_eq!(b["rows_done"].as_i64().unwrap(), a, "{b}");
    assert_eq!(b["state"], json!("cancelled"));
    assert!(a < 600, "the job finished before the cancel: {b}");
    let direct = setup.direct().await;
    let (e, n) = old_rows(&direct).await;
    assert!(e + n > 0);
    // Nothing retired by a cancelled job.
    assert_eq!(key_states(&direct, "acme").await[0].1, "decrypt-only");

    let r = ctl(&socket, "jobs.cancel", json!({ "id": id })).await;
    assert_eq!(error_code(&r), "conflict");
    let r = ctl(&socket, "jobs.cancel", json!({"id": "eu/999"})).await;
    assert_eq!(error_code(&r), "not_found");
    let r = ctl(&socket, "jobs.cancel", json!({"id": "three"})).await;
    assert_eq!(error_code(&r), "bad_args");

    // The CLI: human table, JSON, exit codes.
    let bin = env!("CARGO_BIN_EXE_regionguard");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .arg("ctl")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["jobs"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("STATE") && text.contains(&id) && text.contains("cancelled"),
        "{text}"
    );
    let out = run(&["--json", "jobs", "--region", "eu"]);
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reply["result"]["jobs"][0]["state"],
        json!("cancelled"),
        "{reply}"
    );
    let out = run(&["jobs", "cancel", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conflict"),
        "{out:?}"
    );

    // A value that cannot be opened (acme's ciphertext copied into an
    // umbrella row: bound to another tenant) is left as it is and counted;
    // its version is not retired, while acme's is.
    let copied = direct
        .execute(
            "UPDATE customers SET email = (SELECT email FROM customers c \
                 WHERE c.tenant_id = 'acme' AND substring(c.email FROM 3 FOR 4) = int4send(1) \
                 ORDER BY id DESC LIMIT 1) \
             WHERE tenant_id = 'umbrella' AND id = 1 \
               AND substring(email FROM 3 FOR 4) = int4send(1)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(copied, 1, "umbrella's row 1 was already re-encrypted");
    let again = ok(ctl(
        &socket,
        "reencrypt.start",
        json!({"region": "eu", "rate": 5000}),
    )
    .await);
    let again = again["job"]["id"].as_str().unwrap().to_string();
    let finished = wait_state(&socket, &again, "done", 40).await;
    assert!(finished["rows_failed"].as_i64().unwrap() >= 1, "{finished}");
    assert_eq!(finished["rows_remaining"], json!(1), "{finished}");
    assert!(
        finished["error"].as_str().unwrap().contains("not retired"),
        "{finished}"
    );
    assert_eq!(old_rows(&direct).await, (1, 0));
    // A script following such a job with --wait gets exit code 1.
    let out = ctl_reencrypt_wait(&socket, 5000).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["ok"], json!(false), "{reply}");
    assert_eq!(reply["result"]["job"]["state"], json!("done"), "{reply}");
    assert!(
        reply["result"]["job"]["rows_failed"].as_i64().unwrap() >= 1,
        "{reply}"
    );
    assert_eq!(key_states(&direct, "umbrella").await[0].1, "decrypt-only");
    assert_eq!(key_states(&direct, "acme").await[0].1, "retired");
    proxy.shutdown().await;
}
