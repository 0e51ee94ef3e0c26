//! Prometheus metrics, the `/metrics` `/healthz` `/readyz` endpoint and the
//! slow-statement log.
//!
//! [`Metrics`] is built once per proxy from the config and shared by every
//! session (through `Shared`). With no `metrics.address` it holds no series
//! and every call is a `None` check, so a proxy without metrics pays
//! nothing measurable. With one, label values are resolved at start (see
//! [`series`]) so the per-statement work is a few atomic increments.
//!
//! Labels are bounded (region, host from the config, fixed reason and kind
//! names, SQLSTATE class): never a tenant, statement text or value.
//! docs/metrics.md documents every series.

mod backend;
pub mod crypto;
pub(crate) mod health;
mod http;
pub mod labels;
mod series;
mod slow;

pub use backend::{BackendStats, BatchTimer};
pub use http::Endpoint;
pub use labels::{ClientRefusal, RefusalReason};
pub use series::LATENCY_BUCKETS;

use crate::config::Config;
use crate::protocol::error::PgError;
use prometheus::{IntCounter, IntGauge};
use series::Series;
use std::sync::Arc;
use std::time::Duration;

/// The metrics of one proxy (and the slow-statement threshold, which
/// shares the per-request timer).
#[derive(Default)]
pub struct Metrics {
    series: Option<Arc<Series>>,
    slow_threshold: Option<Duration>,
}

impl Metrics {
    /// Series are kept only when the config asks for an endpoint.
    pub fn new(config: &Config) -> Result<Metrics, prometheus::Error> {
        let series = match &config.metrics.address {
            Some(_) => Some(Arc::new(Series::new(config)?)),
            None => None,
        };
        let slow_threshold = match config.logging.slow_statement_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        Ok(Metrics {
            series,
            slow_threshold,
        })
    }

    pub(crate) fn series(&self) -> Option<Arc<Series>> {
        self.series.clone()
    }

    /// The text exposition of every series (what `/metrics` serves), for
    /// tools and tests that hold the proxy; `None` when metrics are off.
    pub fn render(&self) -> Option<String> {
        let s = self.series.as_ref()?;
        crypto::refresh_ages(s);
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&s.registry.gather(), &mut out)
            .ok()?;
        Some(out)
    }

    /// A client connection was accepted; the guard counts it as open until
    /// dropped.
    pub fn client_connected(&self) -> ClientGuard {
        ClientGuard(self.series.as_ref().map(|s| {
            s.client_connections_total.inc();
            s.client_connections.inc();
            s.client_connections.clone()
        }))
    }

    /// A client connection was refused before its session started.
    pub fn client_refused(&self, reason: ClientRefusal) {
        if let Some(s) = &self.series {
            s.client_refused[reason.index()].inc();
        }
    }

    /// Bytes read from a client.
    pub fn client_received(&self, n: usize) {
        if let Some(s) = &self.series {
            s.client_received_bytes.inc_by(n as u64);
        }
    }

    /// The counter of bytes written to clients, for the response side to
    /// hold.
    pub fn client_sent_counter(&self) -> ByteCounter {
        ByteCounter(self.series.as_ref().map(|s| s.client_sent_bytes.clone()))
    }

    /// The proxy refused a statement (and sent `err` instead of running it).
    pub fn statement_refused(&self, err: &PgError) {
        if let Some(s) = &self.series {
            s.refusals[RefusalReason::of(err).index()].inc();
            let class = err.code.get(..2).unwrap_or("XX");
            s.errors.with_label_values(&[class, "proxy"]).inc();
        }
    }

    /// A backend session opened on host `host` (index in the config) of
    /// `region`, after the hosts in `failed_hosts` failed; `failed_over`
    /// when the region's primary moved to it. The returned stats count it
    /// as open until dropped.
    pub fn backend_connected(
        &self,
        region: &str,
        host: usize,
        failed_hosts: &[usize],
        failed_over: bool,
        reused: bool,
    ) -> BackendStats {
        let slow = self
            .slow_threshold
            .map(|t| slow::SlowLog::new(t, Arc::from(region)));
        let live = self.series.as_ref().and_then(|s| {
            let r = s.region(region)?;
            for &i in failed_hosts {
                if let Some(h) = r.hosts.get(i) {
                    h.connect_failures.inc();
                }
            }
            if failed_over {
                r.failovers.inc();
            }
            if let Some(h) = r.hosts.get(host) {
                if reused {
                    h.reuses.inc();
                } else {
                    h.connects.inc();
                }
            }
            Some((r.clone(), host, s.errors.clone()))
        });
        BackendStats::new(live, slow)
    }

    /// A read (a simple query or an extended-protocol batch) went to a
    /// hot standby of `region`.
    pub fn standby_read(&self, region: &str) {
        if let Some(r) = self.series.as_ref().and_then(|s| s.region(region)) {
            r.standby_reads.inc();
        }
    }

    /// Transaction mode: a statement for `region` waits for a backend
    /// (`timed_out`: and was refused).
    pub fn acquire_waited(&self, region: &str, timed_out: bool) {
        if let Some(r) = self.series.as_ref().and_then(|s| s.region(region)) {
            if timed_out {
                r.acquire_timeouts.inc();
            } else {
                r.acquire_waits.inc();
            }
        }
    }

    /// Sets each region's idle pooled backend count.
    pub fn idle_backends(&self, shared: &crate::server::state::Shared) {
        let Some(s) = self.series.as_ref() else {
            return;
        };
        for (name, rt) in &shared.regions {
            if let Some(r) = s.region(name) {
                r.idle.set(rt.idle.held() as i64);
            }
        }
    }

    /// No backend session could be opened in `region`.
    pub fn connect_failed(&self, region: &str, err: &crate::backend::ConnectError) {
        let crate::backend::ConnectError::Unavailable { failed_hosts, .. } = err else {
            return;
        };
        if let Some(r) = self.series.as_ref().and_then(|s| s.region(region)) {
            for &i in failed_hosts {
                if let Some(h) = r.hosts.get(i) {
                    h.connect_failures.inc();
                }
            }
        }
    }

    /// Handles for the tenant directory.
    pub fn directory(&self) -> DirectoryMetrics {
        DirectoryMetrics(self.series.as_ref().map(|s| {
            [
                s.directory_static.clone(),
                s.directory_cache.clone(),
                s.directory_control.clone(),
            ]
        }))
    }

    /// Handles for column encryption (see [`crypto`]).
    pub fn crypto(&self) -> crypto::CryptoMetrics {
        crypto::CryptoMetrics::new(self.series.clone())
    }

    /// A config reload (`server::reload`) was applied (`ok`) or refused.
    pub fn config_reloaded(&self, ok: bool) {
        if let Some(s) = &self.series {
            if ok {
                s.config_reloads_ok.inc()
            } else {
                s.config_reloads_failed.inc()
            }
        }
    }
}

/// An open client connection; decrements the gauge when dropped.
pub struct ClientGuard(Option<IntGauge>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// A byte counter that may be off.
#[derive(Default)]
pub struct ByteCounter(Option<IntCounter>);

impl ByteCounter {
    pub fn add(&self, n: usize) {
        if let Some(c) = &self.0 {
            c.inc_by(n as u64);
        }
    }
}

/// Where the tenant directory found an answer.
#[derive(Clone, Default)]
pub struct DirectoryMetrics(Option<[IntCounter; 3]>);

impl DirectoryMetrics {
    /// Answered by the config's `[tenants]`.
    pub fn static_hit(&self) {
        self.inc(0)
    }

    /// Answered from the cache of the control table.
    pub fn cache_hit(&self) {
        self.inc(1)
    }

    /// A cache miss: the control database was asked.
    pub fn control_lookup(&self) {
        self.inc(2)
    }

    fn inc(&self, i: usize) {
        if let Some(c) = &self.0 {
            c[i].inc();
        }
    }
}
