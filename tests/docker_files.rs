//! docker/ cannot run here (no Docker on our machines), so this checks what
//! can be checked without it: the compose file, Prometheus and Grafana
//! provisioning are valid YAML, the dashboard is valid JSON, every file they
//! mount exists, the RegionGuard config passes `check-config` and matches
//! the compose services, the regional init SQL is the demo's, and every
//! metric the dashboard queries is documented in docs/metrics.md.
//!
//! `REGEN_DOCKER_INIT=1 cargo nextest run --test docker_files` rewrites
//! docker/init/*.sql from the demo after the demo's data changed.

mod metrics_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

const REGIONS: [&str; 3] = ["eu", "us", "apac"];

fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker")
}

fn read(rel: &str) -> String {
    let path = docker_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Yaml {
    let docs = YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("docker/{rel} is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "docker/{rel}: one YAML document");
    docs.into_iter().next().unwrap_or(Yaml::Null)
}

/// A compose service with YAML merge keys (`<<: *anchor`) applied.
fn service(compose: &Yaml, name: &str) -> Yaml {
    let s = &compose["services"][name];
    assert!(!s.is_badvalue(), "compose.yml has no service {name}");
    let mut merged = yaml_rust2::yaml::Hash::new();
    if let Some(base) = s["<<"].as_hash() {
        merged.extend(base.clone());
    }
    if let Some(own) = s.as_hash() {
        for (k, v) in own {
            if k.as_str() != Some("<<") {
                merged.insert(k.clone(), v.clone());
            }
        }
    }
    Yaml::Hash(merged)
}

/// Bind mounts of a service: (host path relative to docker/, container path).
fn mounts(svc: &Yaml) -> Vec<(String, String)> {
    svc["volumes"]
        .as_vec()
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.as_str())
        .filter(|m| m.starts_with('.') || m.starts_with('/'))
        .map(|m| {
            let mut parts = m.split(':');
            let host = parts.next().unwrap_or_default().to_string();
            let container = parts.next().unwrap_or_default().to_string();
            (host, container)
        })
        .collect()
}

#[test]
fn compose_services_and_mounted_files_exist() {
    let compose = yaml("compose.yml");
    for name in [
        "pg-eu",
        "pg-us",
        "pg-apac",
        "regionguard",
        "prometheus",
        "grafana",
    ] {
        let svc = service(&compose, name);
        assert!(
            svc["image"].as_str().is_some() || !svc["build"].is_badvalue(),
            "{name}: no image or build"
        );
        for (host, container) in mounts(&svc) {
            let path = docker_dir().join(&host);
            assert!(path.exists(), "{name} mounts {host}, which does not exist");
            assert!(
                container.starts_with('/'),
                "{name}: container path {container}"
            );
        }
    }
    let rg = service(&compose, "regionguard");
    let context = rg["build"]["context"].as_str().expect("build context");
    let dockerfile = rg["build"]["dockerfile"].as_str().expect("dockerfile");
    assert!(docker_dir().join(context).join(dockerfile).is_file());
    let command: Vec<&str> = rg["command"]
        .as_vec()
        .expect("regionguard command")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let config_path = command
        .iter()
        .skip_while(|a| **a != "--config")
        .nth(1)
        .expect("--config in the command");
    assert!(
        mounts(&rg)
            .iter()
            .any(|(h, c)| h == "./regionguard.toml" && c == config_path),
        "docker/regionguard.toml is not mounted at {config_path}"
    );
}

#[test]
fn regional_init_sql_is_the_demos() {
    let compose = yaml("compose.yml");
    for region in REGIONS {
        let svc = service(&compose, &format!("pg-{region}"));
        let init = format!("./init/{region}.sql");
        assert!(
            mounts(&svc)
                .iter()
                .any(|(h, c)| *h == init && c.starts_with("/docker-entrypoint-initdb.d/")),
            "pg-{region} does not load {init}"
        );
        let expected = format!(
            "-- The demo's schema and tenant data for region {region}; generated from\n\
             -- src/demo/schema.rs (REGEN_DOCKER_INIT=1 cargo nextest run --test docker_files).\n\n\
             -- The role is named like RegionGuard's own schema: without this, what the\n\
             -- application creates through the proxy would land in that schema.\n\
             ALTER ROLE regionguard SET search_path = public;\n{}",
            regionguard::demo::region_sql(region)
        );
        check_generated(&format!("{region}.sql"), &expected);
    }
    let seed = service(&compose, "seed");
    assert!(
        mounts(&seed)
            .iter()
            .any(|(h, _)| h == "./init/customers.sql"),
        "the seed service does not load init/customers.sql"
    );
    assert_eq!(seed["environment"]["PGHOST"].as_str(), Some("regionguard"));
    let expected = format!(
        "-- The demo's customers, inserted through RegionGuard (which encrypts email and\n\
         -- full_name); generated from src/demo/schema.rs.\n{}",
        regionguard::demo::customer_sql()
    );
    check_generated("customers.sql", &expected);
}

/// docker/init/`name` holds `expected` (rewritten with REGEN_DOCKER_INIT=1).
fn check_generated(name: &str, expected: &str) {
    let path = docker_dir().join("init").join(name);
    if std::env::var_os("REGEN_DOCKER_INIT").is_some() {
        std::fs::write(&path, expected).expect("write init SQL");
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} differs from the demo's SQL",
        path.display()
    );
}

/// Every volume of a service as `(source, target)`, named volumes included.
fn volumes(svc: &Yaml) -> Vec<(String, String)> {
    svc["volumes"]
        .as_vec()
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.as_str())
        .filter_map(|m| {
            let mut parts = m.split(':');
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

#[test]
fn every_region_gets_a_root_key_file_the_proxy_can_read() {
    let compose = yaml("compose.yml");
    let keys = service(&compose, "keys");
    let rg = service(&compose, "regionguard");
    assert_eq!(
        rg["depends_on"]["keys"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    let script = keys["command"][0].as_str().expect("key script");
    let (volume, _) = volumes(&keys)
        .into_iter()
        .find(|(_, t)| t == "/keys")
        .expect("the keys service writes /keys");
    let (_, key_dir) = volumes(&rg)
        .into_iter()
        .find(|(s, _)| *s == volume)
        .expect("regionguard mounts the key volume");
    assert!(
        !compose["volumes"][volume.as_str()].is_badvalue(),
        "volume {volume} declared"
    );
    let config = read("regionguard.toml");
    for region in REGIONS {
        assert!(script.contains(region), "the key script skips {region}");
        let path = format!("{key_dir}/{region}.key");
        assert!(
            config.contains(&format!("path = \"{path}\"")),
            "region {region} does not read {path}"
        );
    }
    // Mode 0600, owned by the image's unprivileged user.
    let uid = read("Dockerfile")
        .split("--uid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .expect("the image's uid");
    assert!(
        script.contains(&format!("chown -R {uid}:{uid} /keys")),
        "keys not owned by uid {uid}"
    );
    assert!(script.contains("chmod 600"));
}

#[test]
fn regionguard_config_passes_check_config_and_matches_compose() {
    let compose = yaml("compose.yml");
    let rg = service(&compose, "regionguard");
    let text = read("regionguard.toml");
    // Every ${VAR} the config needs is provided by the compose service.
    let mut needed = BTreeSet::new();
    for part in text.split("${").skip(1) {
        if let Some((name, _)) = part.split_once('}') {
            needed.insert(name.to_string());
        }
    }
    for var in &needed {
        let provided = &rg["environment"][var.as_str()];
        assert!(
            !provided.is_badvalue(),
            "compose does not set {var} for regionguard"
        );
    }
    // The check-config logic (parse, interpolate, validate), with the
    // variables set to stand-ins the way compose would set them.
    let interpolated = needed.iter().fold(text.clone(), |t, var| {
        t.replace(&format!("${{{var}}}"), "stand-in-password")
    });
    let config =
        regionguard::config::Config::from_toml_str(&interpolated, "docker/regionguard.toml")
            .unwrap_or_else(|e| panic!("docker/regionguard.toml fails check-config: {e}"));
    let mut region_names: Vec<&str> = config.regions.keys().map(String::as_str).collect();
    region_names.sort_unstable();
    let mut want = REGIONS.to_vec();
    want.sort_unstable();
    assert_eq!(region_names, want);
    for (name, region) in &config.regions {
        for host in &region.hosts {
            assert_eq!(
                host.host,
                format!("pg-{name}"),
                "region {name}'s host is its compose service"
            );
            let pg = service(&compose, &host.host);
            assert_eq!(
                pg["environment"]["POSTGRES_USER"].as_str(),
                Some(host.user.as_str())
            );
            assert_eq!(
                pg["environment"]["POSTGRES_DB"].as_str(),
                Some(host.dbname.as_str())
            );
        }
    }
    let demo: std::collections::BTreeMap<String, String> = regionguard::demo::tenants()
        .into_iter()
        .map(|(t, r)| (t.to_string(), r.to_string()))
        .collect();
    assert_eq!(config.tenants, demo, "the demo's tenants");
    assert_eq!(config.tenancy.tables, vec!["customers", "orders"]);
    let metrics = config.metrics.address.expect("metrics on in compose");
    let port = metrics.rsplit(':').next().expect("a port");

    let prometheus = yaml("prometheus.yml");
    let targets: Vec<&str> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_vec()
        .expect("scrape targets")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(targets, vec![format!("regionguard:{port}").as_str()]);
    assert_eq!(
        prometheus["scrape_configs"][0]["metrics_path"].as_str(),
        Some("/metrics")
    );
}

/// Every `regionguard_*` name in a PromQL expression, with histogram
/// sample suffixes mapped to their family.
fn metric_names(expr: &str, families: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("regionguard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(name);
        out.push(family.to_string());
        rest = &tail[end..];
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn grafana_is_provisioned_and_the_dashboard_queries_documented_metrics() {
    let compose = yaml("compose.yml");
    let grafana = service(&compose, "grafana");
    let datasources = yaml("grafana/provisioning/datasources/prometheus.yml");
    let ds = &datasources["datasources"][0];
    assert_eq!(ds["type"].as_str(), Some("prometheus"));
    assert_eq!(ds["url"].as_str(), Some("http://prometheus:9090"));
    let ds_uid = ds["uid"].as_str().expect("datasource uid");
    let providers = yaml("grafana/provisioning/dashboards/regionguard.yml");
    let dash_path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("dashboard provider path");
    assert!(
        mounts(&grafana)
            .iter()
            .any(|(h, c)| h == "./grafana/dashboards" && c == dash_path),
        "docker/grafana/dashboards is not mounted at {dash_path}"
    );

    let text = read("grafana/dashboards/regionguard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("dashboard JSON: {e}"));
    assert_eq!(dashboard["title"], "RegionGuard");
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], ds_uid,
                "panel {}",
                panel["title"]
            );
        }
    }
    let documented = metrics_support::documented();
    let histograms: BTreeSet<String> = documented
        .iter()
        .filter(|(_, t)| *t == "histogram")
        .map(|(n, _)| n.clone())
        .collect();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 15, "only {} queries", all.len());
    let mut used = BTreeSet::new();
    for expr in &all {
        for name in metric_names(expr, &histograms) {
            assert!(
                documented.contains_key(&name),
                "the dashboard queries {name}, which docs/metrics.md does not document ({expr})"
            );
            used.insert(name);
        }
    }
    for required in [
        "regionguard_statements_total",
        "regionguard_statement_duration_seconds",
        "regionguard_routing_refusals_total",
        "regionguard_crypto_operations_total",
        "regionguard_crypto_key_age_seconds",
        "regionguard_client_connections",
        "regionguard_backend_connections",
        "regionguard_region_up",
    ] {
        assert!(
            used.contains(required),
            "the dashboard shows nothing of {required}"
        );
    }
}

#[test]
fn dockerfile_is_multi_stage_and_runs_unprivileged() {
    let text = read("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage build");
    assert!(
        froms[froms.len() - 1].contains("slim"),
        "small runtime image"
    );
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(user.trim() != "root" && user.trim() != "0", "runs as root");
    assert!(text.contains("EXPOSE 6432"));
}
