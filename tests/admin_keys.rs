//! The admin socket and key administration against real regional clusters
//! and two proxies: rotation under a concurrent write workload, root key
//! rotation (no user row changes), crypto-shredding seen by the other
//! proxy, the socket's access checks and the audit chain.

mod support;

use regionguard::config::{Config, KeySource};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::*;

const SCHEMA: &str = "\
    CREATE TABLE customers (tenant_id text NOT NULL, id bigint NOT NULL, email bytea, \
        full_name text, PRIMARY KEY (tenant_id, id));\n";

fn key_line(version: u32, seed: u8) -> String {
    use base64::Engine;
    let key: Vec<u8> = (0..32u8)
        .map(|b| b.wrapping_mul(13).wrapping_add(seed))
        .collect();
    format!(
        "{version}:{}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

fn write_keys(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for (i, region) in REGIONS.iter().enumerate() {
        let path = dir.join(format!("{region}.key"));
        std::fs::write(&path, key_line(1, i as u8)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        out.insert(region.to_string(), path);
    }
    out
}

fn config(
    regions: &TestRegions,
    keys: &BTreeMap<String, PathBuf>,
    socket: Option<PathBuf>,
    audit: Option<PathBuf>,
) -> Config {
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    for (name, region) in config.regions.iter_mut() {
        region.key = Some(KeySource::File {
            path: keys[name].clone(),
        });
    }
    classify_customers(&mut config, true);
    config.admin.socket = socket;
    config.admin.audit_log = audit;
    config.admin.rotation_grace_ms = 300;
    config.admin.key_recheck_secs = 2;
    config
}

/// One admin request (the blocking client on a blocking thread).
async fn ctl(socket: &Path, command: &str, args: Value) -> Value {
    let socket = socket.to_path_buf();
    let command = command.to_string();
    tokio::task::spawn_blocking(move || {
        regionguard::admin::client::request(
            &socket,
            &command,
            args,
            std::time::Duration::from_secs(15),
        )
    })
    .await
    .unwrap()
    .expect("admin socket reachable")
}

fn ok(reply: Value) -> Value {
    assert_eq!(reply["ok"], json!(true), "{reply}");
    reply["result"].clone()
}

async fn names(
    client: &tokio_postgres::Client,
    tenant: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT full_name FROM customers WHERE tenant_id = $1 ORDER BY id",
            &[&tenant],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn raw_rows(regions: &TestRegions) -> Vec<(String, i64, Vec<u8>, String)> {
    regions
        .client("eu")
        .await
        .query(
            "SELECT tenant_id, id, email, full_name FROM customers ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_rotate_root_and_shred_across_two_proxies() {
    let regions = TestRegions::start().await;
    regions.batch_everywhere(SCHEMA).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let keys = write_keys(dir.path());
    let socket = dir.path().join("admin.sock");
    let audit = dir.path().join("audit.jsonl");
    let a = start_proxy(config(
        &regions,
        &keys,
        Some(socket.clone()),
        Some(audit.clone()),
    ))
    .await;
    let b = start_proxy(config(&regions, &keys, None, None)).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    within(60, "rotation under load", async {
        // Writers through proxy A, while the region's keys rotate.
        let mut writers = Vec::new();
        for w in 0..4i64 {
            let client = tenant_client(&a, None).await;
            writers.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..60i64 {
                    let tenant = if i % 2 == 0 { "acme" } else { "umbrella" };
                    let id = w * 1000 + i;
                    if let Err(e) = client
                        .execute(
                            "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ($1, $2, $3, $4)",
                            &[&tenant, &id, &format!("u{id}@example.com"), &format!("Name {id}")],
                        )
                        .await
                    {
                        failures.push(e.to_string());
                    }
                    if i % 10 == 0 {
                        if let Err(e) = names(&client, tenant).await {
                            failures.push(e.to_string());
                        }
                    }
                }
                failures
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let rotated = ok(ctl(&socket, "keys.rotate", json!({"region": "eu"})).await);
        let rotated = rotated["rotated"].as_array().unwrap().clone();
        assert!(!rotated.is_empty(), "{rotated:?}");
        // Rotate once more for acme alone, still under load.
        let again = ok(ctl(&socket, "keys.rotate", json!({"region": "eu", "tenant": "acme"})).await);
        assert_eq!(again["rotated"][0]["tenant"], json!("acme"));
        for w in writers {
            let failures = w.await.unwrap();
            assert!(failures.is_empty(), "failed statements: {failures:?}");
        }
    })
    .await;

    // Every row readable through both proxies.
    let ca = tenant_client(&a, None).await;
    let cb = tenant_client(&b, None).await;
    for tenant in ["acme", "umbrella"] {
        assert_eq!(names(&ca, tenant).await.unwrap().len(), 120);
        assert_eq!(names(&cb, tenant).await.unwrap().len(), 120);
    }
    // Equality on the deterministic column finds rows under every live
    // key version (ADR 13): the first rows, written before the rotations,
    // and one written under the newest key.
    for id in [0i64, 2, 1000] {
        let n: i64 = ca
            .query_one(
                "SELECT count(*) FROM customers WHERE tenant_id = $1 AND email = $2",
                &[&"acme", &format!("u{id}@example.com")],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "row {id}");
    }
    ca.execute(
        "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ($1, $2, $3, $4)",
        &[&"acme", &50_000i64, &"after@example.com", &"After"],
    )
    .await
    .unwrap();
    let n: i64 = ca
        .query_one(
            "SELECT count(*) FROM customers WHERE tenant_id = $1 AND email = $2",
            &[&"acme", &"after@example.com"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    let listed = ok(ctl(
        &socket,
        "keys.list",
        json!({"region": "eu", "tenant": "acme"}),
    )
    .await);
    let states: Vec<(u64, String)> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["version"].as_u64().unwrap(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            (1, "decrypt-only".to_string()),
            (2, "decrypt-only".to_string()),
            (3, "active".to_string())
        ]
    );
    assert!(!listed.to_string().contains("wrapped"), "{listed}");

    // Root key rotation: a second root key version in the source; every
    // data key re-wrapped, no user row changed, everything readable.
    let before = raw_rows(&regions).await;
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&keys["eu"])
            .unwrap();
        f.write_all(key_line(2, 99).as_bytes()).unwrap();
    }
    let root = ok(ctl(&socket, "keys.rotate-root", json!({"region": "eu"})).await);
    assert_eq!(root["kek_version"], json!(2));
    assert!(root["rewrapped"].as_u64().unwrap() >= 5, "{root}");
    assert_eq!(raw_rows(&regions).await, before, "a user row changed");
    let old_kek: i64 = regions
        .client("eu")
        .await
        .query_one(
            "SELECT count(*) FROM regionguard.data_keys WHERE kek_version <> 2 AND wrapped_key IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old_kek, 0);
    let ca = tenant_client(&a, None).await;
    let cb = tenant_client(&b, None).await;
    assert_eq!(names(&ca, "acme").await.unwrap().len(), 121);
    assert_eq!(names(&cb, "umbrella").await.unwrap().len(), 120);

    // Shredding needs the confirmation.
    let refused = ctl(
        &socket,
        "tenant.shred",
        json!({"tenant": "umbrella", "confirm": "acme"}),
    )
    .await;
    assert_eq!(
        refused["error"]["code"],
        json!("confirmation_required"),
        "{refused}"
    );
    let shred = ok(ctl(
        &socket,
        "tenant.shred",
        json!({"tenant": "umbrella", "confirm": "umbrella"}),
    )
    .await);
    assert!(shred["destroyed"].as_u64().unwrap() >= 1, "{shred}");
    let e = names(&ca, "umbrella").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("XX001"), "{e:?}");
    assert!(format!("{e:?}").contains("destroyed"), "{e:?}");
    // Proxy B had umbrella's keys cached: it hears of the shred.
    assert!(
        wait_until(5, || async { names(&cb, "umbrella").await.is_err() }).await,
        "proxy B still decrypts a shredded tenant"
    );
    let e = names(&cb, "umbrella").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("XX001"), "{e:?}");
    // Others untouched, on both.
    assert_eq!(names(&ca, "acme").await.unwrap().len(), 121);
    assert_eq!(names(&cb, "acme").await.unwrap().len(), 121);
    // A write for the shredded tenant fails rather than creating a key.
    let w = cb
        .execute(
            "INSERT INTO customers (tenant_id, id, full_name) VALUES ($1, $2, $3)",
            &[&"umbrella", &99999i64, &"New"],
        )
        .await;
    assert!(w.is_err());

    let place = ok(ctl(&socket, "tenant.where", json!({"tenant": "acme"})).await);
    assert_eq!(place["region"], json!("eu"));
    assert_eq!(place["keys"].as_array().unwrap().len(), 3);
    let status = ok(ctl(&socket, "status", json!({})).await);
    assert_eq!(status["regions"].as_array().unwrap().len(), 3);
    assert!(status["clients"]["connected"].as_u64().unwrap() >= 2);
    for region in status["regions"].as_array().unwrap() {
        assert_eq!(region["health"], json!("up"), "{region}");
        assert_eq!(region["host_health"][0]["state"], json!("up"), "{region}");
    }
    let human = regionguard::admin::client::render("status", &status);
    assert!(
        human.contains("region eu (zone eu): up; 127.0.0.1:"),
        "{human}"
    );

    // The audit log recorded every command; its chain verifies, and an
    // edited line is detected.
    let verified = ok(ctl(&socket, "audit.verify", json!({})).await);
    assert!(verified["lines"].as_u64().unwrap() >= 8, "{verified}");
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.contains("\"tenant.shred\""));
    assert!(!text.contains("Name "), "tenant data in the audit log");
    let edited = text.replacen("\"confirmation_required\"", "\"ok\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&audit, edited).unwrap();
    let broken = ctl(&socket, "audit.verify", json!({})).await;
    assert_eq!(
        broken["error"]["code"],
        json!("audit_chain_broken"),
        "{broken}"
    );

    a.shutdown().await;
    b.shutdown().await;
    assert!(!socket.exists(), "socket left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_refuses_unsafe_directories_other_users_and_replaces_stale_files() {
    let regions = TestRegions::start().await;
    // A directory others can write: refused.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut config = regions.proxy_config();
    config.admin.socket = Some(open.path().join("admin.sock"));
    let err = regionguard::server::Proxy::start(config.clone())
        .await
        .err()
        .expect("an other-writable socket directory is refused");
    assert!(err.to_string().contains("writable"), "{err}");
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
    let err = regionguard::server::Proxy::start(config.clone())
        .await
        .err()
        .expect("group-writable refused");
    assert!(err.to_string().contains("group"), "{err}");

    // A stale socket (its process gone) is replaced.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = dir.path().join("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    config.admin.socket = Some(socket.clone());
    let proxy = start_proxy(config.clone()).await;
    let status = ok(ctl(&socket, "status", json!({})).await);
    assert!(status["version"].is_string());
    // A second proxy on the same live socket is refused.
    assert!(regionguard::server::Proxy::start(config.clone())
        .await
        .is_err());

    // Protocol errors have stable codes.
    let bad = ctl(&socket, "no.such", json!({})).await;
    assert_eq!(bad["error"]["code"], json!("unknown_command"));

    // Another user: the mode alone keeps them out; with the mode opened
    // up, the peer uid check still refuses (root only: needs setuid).
    if nix::unistd::geteuid().is_root() {
        let bin = env!("CARGO_BIN_EXE_regionguard");
        let run = |socket: &Path| {
            std::process::Command::new(bin)
                .args(["ctl", "--json", "--socket"])
                .arg(socket)
                .arg("status")
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap()
        };
        use std::os::unix::process::CommandExt;
        let out = run(&socket);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = run(&socket);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            reply["error"]["code"],
            json!("permission_denied"),
            "{reply}"
        );
    }
    proxy.shutdown().await;
}
