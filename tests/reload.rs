//! Config reload (`ctl reload`, SIGHUP) and rotation by age, against real
//! regional clusters: a good file is applied online, a bad one is refused
//! with its reason and the old config keeps serving; classified columns
//! added by a reload get their storage checked; the proxy rotates data keys
//! older than `key_rotation.max_age` on its own and reports key age.

mod metrics_support;
mod support;

use regionguard::config::Config;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::*;

/// One admin request (the blocking client on a blocking thread).
async fn ctl(socket: &Path, command: &str) -> Value {
    let socket = socket.to_path_buf();
    let command = command.to_string();
    tokio::task::spawn_blocking(move || {
        regionguard::admin::client::request(
            &socket,
            &command,
            json!({}),
            std::time::Duration::from_secs(15),
        )
    })
    .await
    .unwrap()
    .expect("admin socket reachable")
}

struct Files {
    _dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    audit: PathBuf,
    dir: PathBuf,
    /// The harness config, made once: each call salts the user's SCRAM
    /// verifier anew, which a reload would count as a change.
    base: String,
}

fn files(regions: &TestRegions) -> Files {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.path().to_path_buf();
    Files {
        config: path.join("regionguard.toml"),
        socket: path.join("admin.sock"),
        audit: path.join("audit.jsonl"),
        dir: path,
        _dir: dir,
        base: regions.proxy_config_toml(),
    }
}

/// The harness config plus routing, the admin socket, metrics and `extra`.
fn config_text(f: &Files, tenants: &[(&str, &str)], extra: &str) -> String {
    let mut text = f.base.clone();
    text.push_str(&format!(
        "[admin]\nsocket = \"{}\"\naudit_log = \"{}\"\nrotation_grace_ms = 200\n\
         [metrics]\naddress = \"127.0.0.1:0\"\n\
         [tenancy]\ncolumn = \"tenant_id\"\ntables = [\"customers\", \"orders\"]\n\
         [tenants]\n",
        f.socket.display(),
        f.audit.display()
    ));
    for (t, r) in tenants {
        text.push_str(&format!("{t} = \"{r}\"\n"));
    }
    text.push_str(extra);
    text
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_good_file_and_refuses_a_bad_one() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let f = files(&regions);
    write(&f.config, &config_text(&f, &[("acme", "eu")], ""));
    let proxy = start_proxy(Config::load(&f.config).unwrap()).await;
    let metrics = proxy.metrics_addr().unwrap();
    within(60, "reload", async {
        let client = tenant_client(&proxy, None).await;
        let insert = "INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, 'x')";
        client.execute(insert, &[&"acme", &1i64]).await.unwrap();
        let err = client.execute(insert, &[&"globex", &2i64]).await;
        expect_refusal(
            err,
            "42501",
            &["globex"],
            "globex is not in the directory yet",
        );
        let before = ctl(&f.socket, "status").await;
        let sha_before = before["result"]["config"]["sha256"].clone();

        // A good file: a new tenant mapping takes effect for the session
        // that is already open. Work in flight during the reload is
        // unaffected: a running statement, and an open transaction of acme
        // that goes on writing after the swap and commits.
        let busy = tenant_client(&proxy, None).await;
        let running = tokio::spawn(async move {
            busy.query_one("SELECT pg_sleep(1.5)::text, 7", &[])
                .await
                .map(|row| row.get::<_, i32>(1))
        });
        let mut in_txn = tenant_client(&proxy, None).await;
        let txn = in_txn.transaction().await.unwrap();
        txn.execute(insert, &[&"acme", &10i64]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        write(
            &f.config,
            &config_text(&f, &[("acme", "eu"), ("globex", "us")], ""),
        );
        let r = ctl(&f.socket, "reload").await;
        assert_eq!(r["ok"], json!(true), "{r}");
        assert_eq!(r["result"]["changed"], json!(["tenants"]), "{r}");
        txn.execute(insert, &[&"acme", &11i64]).await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(running.await.unwrap().unwrap(), 7, "the running statement");
        assert_eq!(
            regions.regions_holding("customers", "acme", 11).await,
            ["eu"]
        );
        client.execute(insert, &[&"globex", &2i64]).await.unwrap();
        assert_eq!(
            regions.regions_holding("customers", "globex", 2).await,
            ["us"]
        );
        let status = ctl(&f.socket, "status").await;
        assert_ne!(status["result"]["config"]["sha256"], sha_before);
        assert_eq!(status["result"]["config"]["file_changed"], json!(false));

        // A file that does not parse: refused with the reason; the old
        // config keeps serving, and status says the file is not what runs.
        write(&f.config, "this is not = = toml");
        let r = ctl(&f.socket, "reload").await;
        assert_eq!(r["ok"], json!(false), "{r}");
        assert_eq!(r["error"]["code"], json!("reload_refused"), "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("not valid"), "{message}");
        assert!(message.contains("unchanged"), "{message}");
        client.execute(insert, &[&"globex", &3i64]).await.unwrap();
        let status = ctl(&f.socket, "status").await;
        assert_eq!(status["result"]["config"]["file_changed"], json!(true));

        // A valid file that changes a restart-only setting: refused, named.
        let moved = config_text(&f, &[("acme", "eu")], "").replace(
            "address = \"127.0.0.1:0\"\nshutdown",
            "address = \"127.0.0.1:1\"\nshutdown",
        );
        write(&f.config, &moved);
        let r = ctl(&f.socket, "reload").await;
        assert_eq!(r["error"]["code"], json!("reload_refused"), "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("listen"),
            "{r}"
        );
        // Nothing of the refused file was applied: globex still routes.
        client.execute(insert, &[&"globex", &4i64]).await.unwrap();

        // A semantically invalid file (unknown region for a tenant).
        write(&f.config, &config_text(&f, &[("acme", "mars")], ""));
        let r = ctl(&f.socket, "reload").await;
        assert_eq!(r["error"]["code"], json!("reload_refused"), "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("mars"),
            "{r}"
        );
        client.execute(insert, &[&"acme", &5i64]).await.unwrap();

        let (_, text) = metrics_support::get(metrics, "/metrics").await;
        let ok = metrics_support::must(
            &text,
            "regionguard_config_reloads_total",
            &[("outcome", "success")],
        );
        let failed = metrics_support::must(
            &text,
            "regionguard_config_reloads_total",
            &[("outcome", "failure")],
        );
        assert_eq!((ok, failed), (1.0, 3.0));

        // Every reload is in the audit chain.
        let audit = std::fs::read_to_string(&f.audit).unwrap();
        assert_eq!(
            audit.matches("\"command\":\"reload\"").count(),
            4,
            "{audit}"
        );
        regionguard::admin::audit::verify(&f.audit).unwrap();
    })
    .await;
    proxy.shutdown().await;
}

fn key_file(dir: &Path, region: &str, seed: u8) -> PathBuf {
    use base64::Engine;
    let key: Vec<u8> = (0..32u8)
        .map(|b| b.wrapping_mul(7).wrapping_add(seed))
        .collect();
    let path = dir.join(format!("{region}.key"));
    std::fs::write(
        &path,
        format!(
            "1:{}\n",
            base64::engine::general_purpose::STANDARD.encode(key)
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `[regions.<r>] key = …` lines can only be added inside each region's
/// table, so the harness text gets them spliced in after `zone = …`.
fn with_keys(text: &str, f: &Files) -> String {
    let mut out = text.to_string();
    for (i, region) in REGIONS.iter().enumerate() {
        let path = key_file(&f.dir, region, i as u8);
        out = out.replace(
            &format!("zone = \"{region}\"\n"),
            &format!(
                "zone = \"{region}\"\nkey = {{ source = \"file\", path = \"{}\" }}\n",
                path.display()
            ),
        );
    }
    out
}

const CLASSES: &str = "[classes.contact]\nencrypt = \"deterministic\"\n\
    [classified.customers.email]\nclass = \"contact\"\ntype = \"text\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_checks_the_storage_of_newly_classified_columns() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let f = files(&regions);
    let tenants = [("acme", "eu"), ("globex", "us")];
    write(
        &f.config,
        &with_keys(&config_text(&f, &tenants, CLASSES), &f),
    );
    let proxy = start_proxy(Config::load(&f.config).unwrap()).await;
    within(60, "reload classified", async {
        let client = tenant_client(&proxy, None).await;
        client
            .execute(
                "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('acme', 1, 'a@x', 'Ann')",
                &[],
            )
            .await
            .unwrap();
        // Prepared now, while full_name is still plaintext.
        let insert = "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('acme', $1, 'c@x', $2)";
        let early = client.prepare(insert).await.unwrap();
        // orders.amount is numeric: it cannot hold ciphertext.
        let wrong = format!(
            "{CLASSES}[classified.orders.amount]\nclass = \"contact\"\ntype = \"numeric\"\n"
        );
        write(&f.config, &with_keys(&config_text(&f, &tenants, &wrong), &f));
        let r = ctl(&f.socket, "reload").await;
        assert_eq!(r["error"]["code"], json!("reload_refused"), "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("orders.amount"), "{message}");
        // customers.full_name is text: it can. After the reload, new
        // writes to it are encrypted and reads through the proxy decrypt.
        let good = format!(
            "{CLASSES}[classified.customers.full_name]\nclass = \"contact\"\ntype = \"text\"\n"
        );
        write(&f.config, &with_keys(&config_text(&f, &tenants, &good), &f));
        let r = ctl(&f.socket, "reload").await;
        assert_eq!(r["ok"], json!(true), "{r}");
        assert_eq!(r["result"]["changed"], json!(["classified"]), "{r}");
        // The statement prepared before the reload would store full_name
        // in plaintext: refused until prepared again, then encrypted.
        let err = client.execute(&early, &[&3i64, &"Early Canary"]).await;
        assert_eq!(expect_sqlstate(err, "stale prepared statement"), "0A000");
        let again = client.prepare(insert).await.unwrap();
        client.execute(&again, &[&3i64, &"Early Canary"]).await.unwrap();
        let stored: String = regions
            .client("eu")
            .await
            .query_one("SELECT full_name FROM customers WHERE id = 3", &[])
            .await
            .unwrap()
            .get(0);
        assert!(stored.starts_with("rg1:"), "stored in plaintext: {stored}");
        client
            .execute(
                "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('acme', 2, 'b@x', 'Bob Canary')",
                &[],
            )
            .await
            .unwrap();
        let stored: String = regions
            .client("eu")
            .await
            .query_one("SELECT full_name FROM customers WHERE id = 2", &[])
            .await
            .unwrap()
            .get(0);
        assert!(stored.starts_with("rg1:"), "stored in plaintext: {stored}");
        let row = client
            .query_one(
                "SELECT full_name FROM customers WHERE tenant_id = 'acme' AND id = 2",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "Bob Canary");
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_older_than_the_maximum_age_are_rotated_and_their_age_reported() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let f = files(&regions);
    let tenants = [("acme", "eu"), ("globex", "us")];
    // eu rotates keys older than 3 s; us never (per-region override).
    let policy = format!(
        "{CLASSES}[key_rotation]\nmax_age = \"3s\"\ncheck_interval = \"1s\"\n\
         [key_rotation.regions]\nus = \"0s\"\n"
    );
    write(
        &f.config,
        &with_keys(&config_text(&f, &tenants, &policy), &f),
    );
    let proxy = start_proxy(Config::load(&f.config).unwrap()).await;
    let metrics = proxy.metrics_addr().unwrap();
    within(90, "rotation by age", async {
        let client = tenant_client(&proxy, None).await;
        let insert = "INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, $3)";
        for (tenant, id) in [("acme", 1i64), ("globex", 2)] {
            client
                .execute(insert, &[&tenant, &id, &format!("{tenant}@x")])
                .await
                .unwrap();
        }
        let active = |region: &'static str, tenant: &'static str| {
            let regions = &regions;
            async move {
                regions
                    .client(region)
                    .await
                    .query_one(
                        "SELECT version FROM regionguard.data_keys WHERE tenant = $1 AND state = 'active'",
                        &[&tenant],
                    )
                    .await
                    .unwrap()
                    .get::<_, i32>(0)
            }
        };
        assert!(
            wait_until(30, || async { active("eu", "acme").await >= 2 }).await,
            "acme's key was not rotated by age"
        );
        assert_eq!(active("us", "globex").await, 1, "us has rotation by age off");
        // Rows under the old version still read, and lookups still find
        // new writes.
        client
            .execute(insert, &[&"acme", &3i64, &"acme3@x"])
            .await
            .unwrap();
        let rows = client
            .query(
                "SELECT id, email FROM customers WHERE tenant_id = 'acme' ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(got, [(1, "acme@x".to_string()), (3, "acme3@x".to_string())]);
        // Key age and versions are reported per region.
        // (the round after the rotation counts both versions).
        let two_versions = wait_until(10, || async {
            let (_, text) = metrics_support::get(metrics, "/metrics").await;
            metrics_support::value(&text, "regionguard_crypto_key_versions", &[("region", "eu")])
                .is_some_and(|v| v >= 2.0)
        })
        .await;
        assert!(two_versions, "key versions in eu not reported");
        let (_, text) = metrics_support::get(metrics, "/metrics").await;
        let age = metrics_support::must(&text, "regionguard_crypto_key_age_seconds", &[("region", "us")]);
        assert!(age >= 1.0, "us key age {age}");
        // The automatic rotations are in the audit chain.
        let audit = std::fs::read_to_string(&f.audit).unwrap();
        assert!(audit.contains("\"by\":\"key-policy\""), "{audit}");
        regionguard::admin::audit::verify(&f.audit).unwrap();
    })
    .await;
    proxy.shutdown().await;
}

/// The binary itself, with `listen.threads = 1` (tokio's single-threaded
/// scheduler: sessions, the admin socket and signals share one thread):
/// it serves SQL and its admin socket, reloads on SIGHUP, and stops cleanly
/// on SIGTERM.
#[test]
fn sighup_reloads_the_running_binary() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let regions = rt.block_on(TestRegions::start());
    rt.block_on(regions.create_routing_schema());
    let f = files(&regions);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = |tenants: &[(&str, &str)]| {
        config_text(&f, tenants, "").replace(
            "address = \"127.0.0.1:0\"\nshutdown",
            &format!("address = \"127.0.0.1:{port}\"\nthreads = 1\nshutdown"),
        )
    };
    write(&f.config, &text(&[("acme", "eu")]));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_regionguard"))
        .args(["serve", "--config"])
        .arg(&f.config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut stop = Stop(Some(child));
    rt.block_on(within(60, "SIGHUP", async {
        assert!(
            wait_until(20, || async { f.socket.exists() }).await,
            "the binary did not start"
        );
        let sha_before = ctl(&f.socket, "status").await["result"]["config"]["sha256"].clone();
        write(&f.config, &text(&[("acme", "eu"), ("globex", "us")]));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        let reloaded = wait_until(20, || async {
            ctl(&f.socket, "status").await["result"]["config"]["sha256"] != sha_before
        })
        .await;
        assert!(reloaded, "SIGHUP did not reload");
        let audit = std::fs::read_to_string(&f.audit).unwrap();
        assert!(audit.contains("\"by\":\"SIGHUP\""), "{audit}");
        assert!(audit.contains("\"outcome\":\"ok\""), "{audit}");
        // A bad file on SIGHUP: the process keeps running on the old one.
        write(&f.config, "nonsense [");
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        let refused = wait_until(20, || async {
            std::fs::read_to_string(&f.audit)
                .unwrap()
                .contains("\"error\":\"invalid_config\"")
        })
        .await;
        assert!(refused, "the refused SIGHUP reload is not in the audit log");
        let status = ctl(&f.socket, "status").await;
        assert_eq!(status["ok"], json!(true), "{status}");
        // SQL through the binary, on its one thread, in both protocols.
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(PROXY_USER)
            .password(PROXY_PASSWORD)
            .dbname(DATABASE)
            .options("-c regionguard.tenant=globex");
        let client = connect(&config).await.unwrap();
        let row = client
            .query_one(
                "SELECT count(*) FROM customers WHERE tenant_id = $1",
                &[&"globex"],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 0);
        let rows = client.simple_query("SELECT 1").await.unwrap();
        assert!(!rows.is_empty());
    }));
    // SIGTERM: the process drains and exits by itself, successfully.
    let mut child = stop.0.take().unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop the binary"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// Stops the binary when the test ends, passed or not (unless the test
/// took it to stop it itself).
struct Stop(Option<std::process::Child>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}
