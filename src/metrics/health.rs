//! Region reachability: a periodic check of every configured host (TCP
//! connect, TLS as configured, login, first ReadyForQuery, Terminate) that
//! feeds `/readyz` and the `regionguard_region_up` / `_backend_host_up`
//! gauges.
//!
//! A host that logs in as a hot standby is up (it serves standby reads and
//! is a failover target) but does not make its region up: a region is up
//! when one of its hosts accepts writes.
//!
//! A full login rather than a bare TCP connect, because a server that
//! accepts connections but refuses logins (starting up, out of slots,
//! wrong password) cannot serve sessions either. It costs one SCRAM
//! exchange per host per interval.

use super::series::Series;
use crate::backend;
use crate::server::state::{RegionRuntime, Shared};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

const UNKNOWN: u8 = 0;
/// Up, accepting writes.
const UP: u8 = 1;
const DOWN: u8 = 2;
/// Up as a hot standby.
const STANDBY: u8 = 3;

/// The last check's result for every host of every region.
pub struct Health {
    regions: Vec<RegionHealth>,
}

struct RegionHealth {
    name: Arc<str>,
    hosts: Vec<HostHealth>,
}

struct HostHealth {
    label: String,
    state: AtomicU8,
}

impl Health {
    pub fn new(config: &crate::config::Config) -> Health {
        Health {
            regions: config
                .regions
                .iter()
                .map(|(name, r)| RegionHealth {
                    name: Arc::from(name.as_str()),
                    hosts: r
                        .hosts
                        .iter()
                        .map(|h| HostHealth {
                            label: format!("{}:{}", h.host, h.port),
                            state: AtomicU8::new(UNKNOWN),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Whether every region has a host that passed its last check. False
    /// until the first check finished.
    pub fn all_regions_up(&self) -> bool {
        self.regions.iter().all(RegionHealth::up)
    }

    /// Per region and host: `"up"`, `"standby"` (up as a hot standby),
    /// `"down"` or `"unknown"` (not checked yet).
    pub fn to_json(&self) -> serde_json::Value {
        let mut regions = serde_json::Map::new();
        for r in &self.regions {
            let hosts: serde_json::Map<String, serde_json::Value> = r
                .hosts
                .iter()
                .map(|h| {
                    (
                        h.label.clone(),
                        state_name(h.state.load(Ordering::Relaxed)).into(),
                    )
                })
                .collect();
            let status = if r.up() {
                "up"
            } else if r.unknown() {
                "unknown"
            } else {
                "down"
            };
            regions.insert(
                r.name.to_string(),
                serde_json::json!({ "status": status, "hosts": hosts }),
            );
        }
        serde_json::Value::Object(regions)
    }
}

impl RegionHealth {
    fn up(&self) -> bool {
        self.hosts
            .iter()
            .any(|h| h.state.load(Ordering::Relaxed) == UP)
    }

    fn unknown(&self) -> bool {
        self.hosts
            .iter()
            .all(|h| h.state.load(Ordering::Relaxed) == UNKNOWN)
    }
}

fn state_name(s: u8) -> &'static str {
    match s {
        UP => "up",
        STANDBY => "standby",
        DOWN => "down",
        _ => "unknown",
    }
}

/// Checks every host now and then every `interval`, until the proxy is
/// gone. The first round runs at once, so `/readyz` turns ready quickly.
pub fn spawn_checker(
    health: Arc<Health>,
    shared: Weak<Shared>,
    series: Option<Arc<Series>>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            check_all(&health, &shared, series.as_deref()).await;
        }
    })
}

async fn check_all(health: &Health, shared: &Shared, series: Option<&Series>) {
    let checks = health.regions.iter().map(|r| async move {
        let Some(rt) = shared.region(&r.name) else {
            return;
        };
        let was_up = r.up();
        let was_unknown = r.unknown();
        let results = futures_util::future::join_all(
            (0..r.hosts.len()).map(|i| check_host(&r.name, rt, i)),
        )
        .await;
        let mut reasons = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            let state = match result {
                Ok(backend::HostRole::Primary) => UP,
                Ok(backend::HostRole::Standby) => STANDBY,
                Err(_) => DOWN,
            };
            r.hosts[i].state.store(state, Ordering::Relaxed);
            if let Some(h) = series.and_then(|s| s.region(&r.name)?.hosts.get(i)) {
                h.up.set(i64::from(state != DOWN));
            }
            if let Err(reason) = result {
                reasons.push(format!("{}: {reason}", r.hosts[i].label));
            }
        }
        let up = r.up();
        if let Some(s) = series.and_then(|s| s.region(&r.name)) {
            s.up.set(i64::from(up));
        }
        if up && !was_up {
            tracing::info!(region = %r.name, "region is up");
        } else if !up && (was_up || was_unknown) {
            tracing::warn!(region = %r.name, reasons = %reasons.join("; "), "region is down: no host passed the health check");
        }
    });
    futures_util::future::join_all(checks).await;
}

/// Checks every host of `rt` now (concurrently, a login each): for
/// `ctl status`, which must show health whether or not the metrics
/// endpoint (and its periodic checker) is on. Per host what it serves as,
/// or the reason it failed.
pub async fn probe_region(
    region: &str,
    rt: &RegionRuntime,
) -> Vec<Result<backend::HostRole, String>> {
    futures_util::future::join_all((0..rt.config.hosts.len()).map(|i| check_host(region, rt, i)))
        .await
}

/// One login on host `index` of the region, then Terminate.
async fn check_host(
    region: &str,
    rt: &RegionRuntime,
    index: usize,
) -> Result<backend::HostRole, String> {
    let Some(host) = rt.config.hosts.get(index) else {
        return Err("no such host".into());
    };
    let params = [(
        "application_name".to_string(),
        "regionguard-health".to_string(),
    )];
    backend::probe_host(region, &rt.config, host, &rt.tls, &params).await
}
