//! Every series RegionGuard exports, registered once at start.
//!
//! Label values that the hot path uses are resolved here, once: a session
//! holds `Arc`s of ready counters instead of calling `with_label_values`
//! (a hash and a lock) per statement. The names here and in
//! docs/metrics.md must stay in step (tests/metrics_docs.rs checks).

use super::labels::{ClientRefusal, RefusalReason, StatementKind};
use crate::config::Config;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::Arc;

/// Upper bounds of the statement latency buckets, in seconds: 50 µs … 10 s.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// One backend host of a region, by its `host:port` in the config.
pub struct HostSeries {
    pub open: IntGauge,
    pub busy: IntGauge,
    pub connects: IntCounter,
    /// Sessions that took an idle pooled backend session instead of opening one.
    pub reuses: IntCounter,
    pub connect_failures: IntCounter,
    pub up: IntGauge,
}

/// The series of one configured region.
pub struct RegionSeries {
    pub name: Arc<str>,
    pub statements: [IntCounter; 4],
    pub latency: Histogram,
    pub slow: IntCounter,
    pub sent_bytes: IntCounter,
    pub received_bytes: IntCounter,
    pub failovers: IntCounter,
    /// Idle backend sessions kept for the next client (`backend_pool`).
    pub idle: IntGauge,
    /// Statements and batches sent to a hot standby (`read_from_standbys`).
    pub standby_reads: IntCounter,
    /// Transaction mode: statements that waited for a backend, and those
    /// refused after `acquire_timeout_secs`.
    pub acquire_waits: IntCounter,
    pub acquire_timeouts: IntCounter,
    pub up: IntGauge,
    pub hosts: Vec<HostSeries>,
    pub crypto: CryptoSeries,
}

/// Column-encryption series of one region (see [`super::crypto`]).
pub struct CryptoSeries {
    /// `[encrypt ok, encrypt error, decrypt ok, decrypt error]`
    pub operations: [IntCounter; 4],
    pub key_versions: IntGauge,
    pub key_age_seconds: IntGauge,
    /// Unix time the current key version was created (0: unknown); the age
    /// gauge is refreshed from it at every scrape.
    pub key_created: std::sync::atomic::AtomicI64,
    pub reencrypted_rows: IntCounter,
    pub reencrypt_remaining_rows: IntGauge,
    pub reencrypt_jobs_running: IntGauge,
}

/// All series of one proxy.
pub struct Series {
    pub registry: Registry,
    pub regions: Vec<Arc<RegionSeries>>,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    pub client_refused: Vec<IntCounter>,
    pub client_received_bytes: IntCounter,
    pub client_sent_bytes: IntCounter,
    pub refusals: Vec<IntCounter>,
    pub errors: IntCounterVec,
    pub directory_static: IntCounter,
    pub directory_cache: IntCounter,
    pub directory_control: IntCounter,
    pub config_reloads_ok: IntCounter,
    pub config_reloads_failed: IntCounter,
}

type R<T> = Result<T, prometheus::Error>;

fn counter_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> R<IntCounterVec> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(v.clone()))?;
    Ok(v)
}

fn gauge_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> R<IntGaugeVec> {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(v.clone()))?;
    Ok(v)
}

fn counter(reg: &Registry, name: &str, help: &str) -> R<IntCounter> {
    let c = IntCounter::new(name, help)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(reg: &Registry, name: &str, help: &str) -> R<IntGauge> {
    let g = IntGauge::new(name, help)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Series {
    /// Registers every series, with every label value known from the
    /// config, so dashboards see zeros instead of gaps.
    pub fn new(config: &Config) -> R<Series> {
        let reg = Registry::new();
        let build = gauge_vec(
            &reg,
            "regionguard_build_info",
            "Always 1; the version label says which RegionGuard runs",
            &["version"],
        )?;
        build
            .get_metric_with_label_values(&[env!("CARGO_PKG_VERSION")])?
            .set(1);
        let start = gauge(
            &reg,
            "regionguard_start_time_seconds",
            "Unix time the proxy started",
        )?;
        start.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );

        let refused = counter_vec(
            &reg,
            "regionguard_client_connections_refused_total",
            "Client connections refused before their session started, by reason",
            &["reason"],
        )?;
        let client_refused = ClientRefusal::ALL
            .iter()
            .map(|r| refused.get_metric_with_label_values(&[r.as_str()]))
            .collect::<R<Vec<_>>>()?;
        let refusals_vec = counter_vec(
            &reg,
            "regionguard_routing_refusals_total",
            "Statements the proxy refused instead of sending them to a region, by reason",
            &["reason"],
        )?;
        let refusals = RefusalReason::ALL
            .iter()
            .map(|r| refusals_vec.get_metric_with_label_values(&[r.as_str()]))
            .collect::<R<Vec<_>>>()?;
        let errors = counter_vec(
            &reg,
            "regionguard_errors_total",
            "ErrorResponses sent to clients, by SQLSTATE class and whether a region or the proxy raised them",
            &["class", "source"],
        )?;
        // The proxy's own error classes exist from the start, so the
        // family is exported (at zero) before the first error.
        for class in ["08", "0A", "22", "25", "42"] {
            errors.get_metric_with_label_values(&[class, "proxy"])?;
        }
        let lookups = counter_vec(
            &reg,
            "regionguard_directory_lookups_total",
            "Tenant directory lookups by where the answer came from: static ([tenants]), cache (hit) or control (miss: asked the control database)",
            &["source"],
        )?;
        let reloads = counter_vec(
            &reg,
            "regionguard_config_reloads_total",
            "Config reloads by outcome",
            &["outcome"],
        )?;
        let regions = region_series(&reg, config)?;
        Ok(Series {
            client_connections: gauge(
                &reg,
                "regionguard_client_connections",
                "Client connections open now",
            )?,
            client_connections_total: counter(
                &reg,
                "regionguard_client_connections_total",
                "Client connections accepted",
            )?,
            client_received_bytes: counter(
                &reg,
                "regionguard_client_received_bytes_total",
                "Bytes read from clients",
            )?,
            client_sent_bytes: counter(
                &reg,
                "regionguard_client_sent_bytes_total",
                "Bytes written to clients",
            )?,
            client_refused,
            refusals,
            errors,
            directory_static: lookups.get_metric_with_label_values(&["static"])?,
            directory_cache: lookups.get_metric_with_label_values(&["cache"])?,
            directory_control: lookups.get_metric_with_label_values(&["control"])?,
            config_reloads_ok: reloads.get_metric_with_label_values(&["success"])?,
            config_reloads_failed: reloads.get_metric_with_label_values(&["failure"])?,
            regions,
            registry: reg,
        })
    }

    /// The series of a configured region: a linear scan of a handful of
    /// names, cheaper than hashing.
    pub fn region(&self, name: &str) -> Option<&Arc<RegionSeries>> {
        self.regions.iter().find(|r| &*r.name == name)
    }
}

fn region_series(reg: &Registry, config: &Config) -> R<Vec<Arc<RegionSeries>>> {
    let statements = counter_vec(
        reg,
        "regionguard_statements_total",
        "Statements a region completed (CommandComplete), by kind: read, write, ddl, other",
        &["region", "kind"],
    )?;
    let latency = HistogramVec::new(
        HistogramOpts::new(
            "regionguard_statement_duration_seconds",
            "Time from the proxy sending a request (simple Query or extended batch up to Sync) to a region until its ReadyForQuery",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["region"],
    )?;
    reg.register(Box::new(latency.clone()))?;
    let slow = counter_vec(
        reg,
        "regionguard_slow_statements_total",
        "Requests slower than logging.slow_statement_ms (each one is logged)",
        &["region"],
    )?;
    let sent = counter_vec(
        reg,
        "regionguard_backend_sent_bytes_total",
        "Bytes written to a region's servers",
        &["region"],
    )?;
    let received = counter_vec(
        reg,
        "regionguard_backend_received_bytes_total",
        "Bytes read from a region's servers",
        &["region"],
    )?;
    let failovers = counter_vec(
        reg,
        "regionguard_region_failovers_total",
        "Times the region's primary moved to another of its hosts",
        &["region"],
    )?;
    let acquire_waits = counter_vec(
        reg,
        "regionguard_backend_acquire_waits_total",
        "Statements that waited for a busy region's backend to come back (backend_pool.mode = transaction)",
        &["region"],
    )?;
    let acquire_timeouts = counter_vec(
        reg,
        "regionguard_backend_acquire_timeouts_total",
        "Statements refused after waiting acquire_timeout_secs for a backend (backend_pool.mode = transaction)",
        &["region"],
    )?;
    let standby_reads = counter_vec(
        reg,
        "regionguard_standby_reads_total",
        "Reads (simple queries or extended-protocol batches) sent to a hot standby of the region",
        &["region"],
    )?;
    let region_up = gauge_vec(
        reg,
        "regionguard_region_up",
        "1 when at least one host of the region passed the last health check, else 0",
        &["region"],
    )?;
    let open = gauge_vec(
        reg,
        "regionguard_backend_connections",
        "Backend sessions open now",
        &["region", "host"],
    )?;
    let busy = gauge_vec(
        reg,
        "regionguard_backend_connections_busy",
        "Backend sessions running a request now",
        &["region", "host"],
    )?;
    let connects = counter_vec(
        reg,
        "regionguard_backend_connects_total",
        "Backend sessions opened",
        &["region", "host"],
    )?;
    let reuses = counter_vec(
        reg,
        "regionguard_backend_reuses_total",
        "Client sessions served by an idle pooled backend session instead of a new one",
        &["region", "host"],
    )?;
    let idle = gauge_vec(
        reg,
        "regionguard_backend_connections_idle",
        "Idle backend sessions kept for the next client session (backend_pool)",
        &["region"],
    )?;
    let failures = counter_vec(
        reg,
        "regionguard_backend_connect_failures_total",
        "Failed attempts to open a backend session (unreachable, timed out, login failed)",
        &["region", "host"],
    )?;
    let host_up = gauge_vec(
        reg,
        "regionguard_backend_host_up",
        "1 when the host passed the last health check (login and ReadyForQuery), else 0",
        &["region", "host"],
    )?;
    let crypto_ops = counter_vec(
        reg,
        "regionguard_crypto_operations_total",
        "Column encryption operations by region, op (encrypt, decrypt) and outcome (ok, error)",
        &["region", "op", "outcome"],
    )?;
    let key_versions = gauge_vec(
        reg,
        "regionguard_crypto_key_versions",
        "Key versions in use (loaded, able to decrypt) per region",
        &["region"],
    )?;
    let key_age = gauge_vec(
        reg,
        "regionguard_crypto_key_age_seconds",
        "Age of the region's current (newest) key version",
        &["region"],
    )?;
    let reencrypted = counter_vec(
        reg,
        "regionguard_crypto_reencrypted_rows_total",
        "Rows re-encrypted under a newer key version",
        &["region"],
    )?;
    let remaining = gauge_vec(
        reg,
        "regionguard_crypto_reencrypt_remaining_rows",
        "Rows still encrypted under an older key version (0 when no re-encryption runs)",
        &["region"],
    )?;
    let jobs_running = gauge_vec(
        reg,
        "regionguard_crypto_reencrypt_jobs_running",
        "Re-encryption jobs this proxy is running",
        &["region"],
    )?;

    let mut out = Vec::new();
    for (name, region) in &config.regions {
        let n = name.as_str();
        let hosts = region
            .hosts
            .iter()
            .map(|h| {
                let label = format!("{}:{}", h.host, h.port);
                let l = [n, label.as_str()];
                Ok(HostSeries {
                    open: open.get_metric_with_label_values(&l)?,
                    busy: busy.get_metric_with_label_values(&l)?,
                    connects: connects.get_metric_with_label_values(&l)?,
                    reuses: reuses.get_metric_with_label_values(&l)?,
                    connect_failures: failures.get_metric_with_label_values(&l)?,
                    up: host_up.get_metric_with_label_values(&l)?,
                })
            })
            .collect::<R<Vec<_>>>()?;
        let op = |o: &str, r: &str| crypto_ops.get_metric_with_label_values(&[n, o, r]);
        out.push(Arc::new(RegionSeries {
            name: Arc::from(n),
            statements: [
                statements.get_metric_with_label_values(&[n, StatementKind::ALL[0].as_str()])?,
                statements.get_metric_with_label_values(&[n, StatementKind::ALL[1].as_str()])?,
                statements.get_metric_with_label_values(&[n, StatementKind::ALL[2].as_str()])?,
                statements.get_metric_with_label_values(&[n, StatementKind::ALL[3].as_str()])?,
            ],
            latency: latency.get_metric_with_label_values(&[n])?,
            slow: slow.get_metric_with_label_values(&[n])?,
            sent_bytes: sent.get_metric_with_label_values(&[n])?,
            received_bytes: received.get_metric_with_label_values(&[n])?,
            failovers: failovers.get_metric_with_label_values(&[n])?,
            idle: idle.get_metric_with_label_values(&[n])?,
            standby_reads: standby_reads.get_metric_with_label_values(&[n])?,
            acquire_waits: acquire_waits.get_metric_with_label_values(&[n])?,
            acquire_timeouts: acquire_timeouts.get_metric_with_label_values(&[n])?,
            up: region_up.get_metric_with_label_values(&[n])?,
            hosts,
            crypto: CryptoSeries {
                operations: [
                    op("encrypt", "ok")?,
                    op("encrypt", "error")?,
                    op("decrypt", "ok")?,
                    op("decrypt", "error")?,
                ],
                key_versions: key_versions.get_metric_with_label_values(&[n])?,
                key_age_seconds: key_age.get_metric_with_label_values(&[n])?,
                key_created: std::sync::atomic::AtomicI64::new(0),
                reencrypted_rows: reencrypted.get_metric_with_label_values(&[n])?,
                reencrypt_remaining_rows: remaining.get_metric_with_label_values(&[n])?,
                reencrypt_jobs_running: jobs_running.get_metric_with_label_values(&[n])?,
            },
        }));
    }
    Ok(out)
}
