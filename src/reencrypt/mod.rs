//! Background re-encryption (issue 5): after `keys rotate`, jobs rewrite
//! the rows whose classified values are still sealed under an older data
//! key version, so those versions can be retired.
//!
//! - [`table`]: `regionguard.reencrypt_jobs`, the jobs' state in each
//!   regional database (so any proxy serving the region lists, cancels and
//!   resumes them).
//! - [`sql`]: finding rows by the envelope header's key version, and the
//!   compare-and-set that rewrites them without losing a concurrent update.
//! - `targets`, `reseal`, `runner`: which columns, how one value is
//!   re-sealed (exactly like the write path), and the throttled batches.
//! - [`throttle`]: the rate limit.
//! - `manage`: the admin side (start, list, find, cancel) with its refusals.
//!
//! [`Jobs`] is the per-proxy side: it starts jobs, runs each under a
//! session advisory lock (so two proxies never run one job at once, and a
//! job whose proxy died is free to take), and looks for running jobs to
//! take over at start and every `admin.key_recheck_secs`.
//! Layout and reasons: docs/adr/0012-reencryption-jobs.md.

mod manage;
mod reseal;
mod runner;
pub mod sql;
pub mod table;
mod targets;
pub mod throttle;

use crate::admin::audit::AuditLog;
use crate::admin::AdminError;
use crate::crypto::CryptoError;
use crate::metrics::crypto::{CryptoMetrics, RunningJob};
use crate::server::state::Shared;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use table::JobState;
use tokio::task::JoinHandle;

/// A running job whose heartbeat is older than this is tried by the
/// periodic check (the lock decides whether it is really free).
const STALE_SECS: f64 = 10.0;

/// Where job events go: the audit log (when configured) and the metrics.
pub struct Events {
    audit: Option<Arc<AuditLog>>,
    metrics: CryptoMetrics,
    owner: String,
}

impl Events {
    /// Appends a job event to the audit log: the job, this proxy, counts
    /// and versions only.
    pub(crate) fn audit(&self, command: &str, job: &str, event: Value) {
        let Some(log) = &self.audit else { return };
        let mut line = Map::new();
        line.insert("proxy".into(), Value::from(self.owner.as_str()));
        line.insert("command".into(), Value::from(command));
        line.insert("args".into(), json!({ "job": job }));
        line.insert("outcome".into(), Value::from("ok"));
        line.insert("event".into(), event);
        if let Err(e) = log.append(line) {
            tracing::error!(path = %log.path().display(), error = %e, "cannot append to the audit log");
        }
    }

    fn progress(&self, region: &str, done: i64, remaining: i64) {
        self.metrics.record_reencryption(
            region,
            u64::try_from(done).unwrap_or(0),
            u64::try_from(remaining).unwrap_or(0),
        );
    }

    fn running(&self, region: &str) -> RunningJob {
        self.metrics.job_running(region)
    }
}

/// This proxy's side of the region's jobs.
pub struct Jobs {
    shared: Arc<Shared>,
    events: Events,
    /// Runs started by this proxy, by (region, job number).
    tasks: Mutex<HashMap<(String, i64), JoinHandle<()>>>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

/// A key store error as an admin error.
pub(crate) fn failure(e: &CryptoError) -> AdminError {
    crate::admin::commands::crypto_failure(e)
}

/// `<host>:<pid>:<random>`: who runs a job, as shown by `jobs`.
fn proxy_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

impl Jobs {
    /// Starts the periodic check (at once, then every `recheck`) that
    /// resumes running jobs no proxy holds.
    pub fn start(
        shared: Arc<Shared>,
        audit: Option<Arc<AuditLog>>,
        recheck: Duration,
    ) -> Arc<Jobs> {
        let events = Events {
            audit,
            metrics: shared.metrics.crypto(),
            owner: proxy_id(),
        };
        let jobs = Arc::new(Jobs {
            shared,
            events,
            tasks: Mutex::new(HashMap::new()),
            watcher: Mutex::new(None),
        });
        if jobs.shared.keyring.is_some() {
            let handle = tokio::spawn(watch(Arc::downgrade(&jobs), recheck));
            if let Ok(mut w) = jobs.watcher.lock() {
                *w = Some(handle);
            }
        }
        jobs
    }

    /// Stops every run on this proxy (their locks go with their
    /// connections; the jobs stay `running` for the next proxy to resume).
    pub fn stop(&self) {
        if let Ok(mut w) = self.watcher.lock() {
            if let Some(h) = w.take() {
                h.abort();
            }
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            for (_, h) in tasks.drain() {
                h.abort();
            }
        }
    }

    /// Runs job `number` of `region` here unless a run of it is already
    /// going on here; the run itself gives up when another proxy holds it.
    fn spawn_run(self: &Arc<Self>, region: &str, number: i64) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        tasks.retain(|_, h| !h.is_finished());
        let key = (region.to_string(), number);
        if tasks.contains_key(&key) {
            return;
        }
        let jobs = Arc::clone(self);
        let region = region.to_string();
        let handle = tokio::spawn(async move { jobs.run_one(&region, number).await });
        tasks.insert(key, handle);
    }

    async fn run_one(&self, region: &str, number: i64) {
        let Some(keyring) = self.shared.keyring.as_deref() else {
            return;
        };
        let Some(connector) = keyring.connector(region) else {
            return;
        };
        let mut client = match connector.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%region, error = %e.reason, "re-encryption job: cannot connect; retried later");
                return;
            }
        };
        let locked = client
            .query_one(table::LOCK_SQL, &[&number])
            .await
            .and_then(|r| r.try_get::<_, bool>(0));
        if !matches!(locked, Ok(true)) {
            // Another proxy runs it (or the region went away).
            return;
        }
        let job = match table::list(&client, region, Some(number)).await {
            Ok(mut rows) if !rows.is_empty() => rows.swap_remove(0),
            _ => return,
        };
        if job.state != JobState::Running {
            return;
        }
        let _running = self.events.running(region);
        tracing::info!(%region, job = %job.id, "re-encryption job running");
        self.events.audit(
            "reencrypt.run",
            &job.id,
            json!({"region": region, "resumed": job.passes > 0, "rows_done": job.rows_done}),
        );
        let id = job.id.clone();
        let run = runner::Run {
            shared: &self.shared,
            keyring,
            client: &mut client,
            job,
            owner: &self.events.owner,
            events: &self.events,
            remaining: 0,
        };
        match run.run().await {
            Ok(()) => tracing::info!(%region, job = %id, "re-encryption job done"),
            Err(runner::Stop::NotRunning) => {
                let state = match table::list(&client, region, Some(number)).await {
                    Ok(rows) => rows.first().map(|j| j.state.as_str()).unwrap_or("absent"),
                    Err(_) => "unknown",
                };
                tracing::info!(%region, job = %id, %state, "re-encryption job stopped");
                self.events
                    .audit("reencrypt.stopped", &id, json!({ "state": state }));
                self.events.progress(region, 0, 0);
            }
            Err(runner::Stop::Failed(e)) if e.is_unavailable() => {
                // Stays running: resumed when the region is back.
                tracing::warn!(%region, job = %id, error = %e, "re-encryption job interrupted; it resumes later");
            }
            Err(runner::Stop::Failed(e)) => {
                tracing::error!(%region, job = %id, error = %e, "re-encryption job failed");
                let message = e.to_string();
                let _ = table::finish(
                    &client,
                    region,
                    number,
                    JobState::Failed,
                    None,
                    &json!([]),
                    Some(&message),
                )
                .await;
                self.events
                    .audit("reencrypt.failed", &id, json!({ "error": message }));
                self.events.progress(region, 0, 0);
            }
        }
    }

    /// Starts runs of running jobs: all of them (at start: a proxy that
    /// was stopped left its jobs behind), else only stale ones.
    async fn resume(self: &Arc<Self>, all: bool) {
        let Some(keyring) = self.shared.keyring.as_deref() else {
            return;
        };
        for region in keyring.regions() {
            let Ok(client) = keyring.store_client(region).await else {
                continue;
            };
            match table_exists(&client, region).await {
                Ok(true) => {}
                _ => continue,
            }
            let stale = (!all).then_some(STALE_SECS);
            match table::running(&*client, region, stale).await {
                Ok(ids) => {
                    for id in ids {
                        self.spawn_run(region, id);
                    }
                }
                Err(e) => {
                    tracing::debug!(%region, error = %e, "cannot look for re-encryption jobs")
                }
            }
        }
    }
}

async fn watch(jobs: Weak<Jobs>, every: Duration) {
    let mut all = true;
    loop {
        let Some(j) = jobs.upgrade() else { return };
        j.resume(all).await;
        drop(j);
        all = false;
        tokio::time::sleep(every).await;
    }
}

/// Whether the region has a job table (listing never creates it).
pub(crate) async fn table_exists(
    client: &tokio_postgres::Client,
    region: &str,
) -> Result<bool, CryptoError> {
    client
        .query_one(
            "SELECT to_regclass('regionguard.reencrypt_jobs') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| crate::crypto::store::store_error(region, &e))
}
