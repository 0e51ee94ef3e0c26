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
//!
//! [`Jobs`] is the per-proxy side: it starts jobs, runs each under a
//! session advisory lock (so two proxies never run one job at once, and a
//! job whose proxy died is free to take), and looks for running jobs to
//! take over at start and every `admin.key_recheck_secs`.
//! Layout and reasons: docs/adr/0012-reencryption-jobs.md.

mod reseal;
mod runner;
pub mod sql;
pub mod table;
mod targets;
pub mod throttle;

use crate::admin::audit::AuditLog;
use crate::admin::{codes, AdminError};
use crate::crypto::{CryptoError, Keyring};
use crate::metrics::crypto::{CryptoMetrics, RunningJob};
use crate::server::state::Shared;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use table::{JobRow, JobSpec, JobState};
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

fn failure(e: &CryptoError) -> AdminError {
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

    fn keyring(&self) -> Result<&Keyring, AdminError> {
        self.shared.keyring.as_deref().ok_or_else(|| {
            AdminError::new(
                codes::NOT_FOUND,
                "no column is classified: there is nothing to re-encrypt",
            )
        })
    }

    fn key_region(&self, region: &str) -> Result<&Keyring, AdminError> {
        let keyring = self.keyring()?;
        if keyring.kek(region).is_none() {
            return Err(AdminError::new(
                codes::NOT_FOUND,
                format!(
                    "region `{region}` has no root key on this proxy (regions with keys: {})",
                    keyring.regions().join(", ")
                ),
            ));
        }
        Ok(keyring)
    }

    /// Validates and records a new job, then starts running it here.
    pub async fn create(
        self: &Arc<Self>,
        region: &str,
        spec: JobSpec,
    ) -> Result<JobRow, AdminError> {
        let keyring = self.key_region(region)?;
        if !(1..=throttle::MAX_RATE).contains(&spec.rate) {
            return Err(AdminError::new(
                codes::BAD_ARGS,
                format!(
                    "rate {} is out of range: give 1 to {} rows per second",
                    spec.rate,
                    throttle::MAX_RATE
                ),
            ));
        }
        let connector = keyring.connector(region).ok_or_else(|| {
            AdminError::new(codes::NOT_FOUND, format!("region `{region}` has no keys"))
        })?;
        let mut client = connector.connect().await.map_err(|e| {
            AdminError::new(
                codes::REGION_UNAVAILABLE,
                format!("region `{region}`: {}", e.reason),
            )
        })?;
        crate::crypto::store::ensure_schema(&client, region)
            .await
            .map_err(|e| failure(&e))?;
        let spec = JobSpec {
            tenant: spec
                .tenant
                .map(|t| crate::crypto::aad::canonical_tenant(&t).into_owned()),
            table: spec.table.map(|t| t.replace('"', "").to_lowercase()),
            rate: spec.rate,
        };
        if let Some(tenant) = &spec.tenant {
            check_tenant(&client, region, tenant).await?;
        }
        if let Some(table) = &spec.table {
            let catalog = self
                .shared
                .catalogs
                .refresh(region, &client, &self.shared.tenancy)
                .await
                .map_err(|e| failure(&crate::crypto::store::store_error(region, &e)))?;
            let found = targets::discover(&client, region, &catalog)
                .await
                .map_err(|e| failure(&e))?;
            if !found.has_table(table) {
                return Err(AdminError::new(
                    codes::NOT_FOUND,
                    format!("table `{table}` has no classified column in region `{region}`"),
                ));
            }
        }
        table::ensure_schema(&client, region)
            .await
            .map_err(|e| failure(&e))?;
        let job = match table::insert(&mut client, region, &spec)
            .await
            .map_err(|e| failure(&e))?
        {
            Ok(job) => job,
            Err(clash) => {
                return Err(AdminError::new(
                    codes::CONFLICT,
                    format!(
                        "job {} (tenant {}, table {}) is already re-encrypting these rows; cancel it or wait for it",
                        clash.id,
                        clash.tenant.as_deref().unwrap_or("all"),
                        clash.table.as_deref().unwrap_or("all")
                    ),
                ))
            }
        };
        self.spawn_run(region, job.number);
        Ok(job)
    }

    /// Jobs of one region or all regions with keys (one job with `number`).
    pub async fn list(
        &self,
        region: Option<&str>,
        number: Option<i64>,
    ) -> Result<Vec<JobRow>, AdminError> {
        let keyring = self.keyring()?;
        let regions: Vec<String> = match region {
            Some(r) => {
                self.key_region(r)?;
                vec![r.to_string()]
            }
            None => keyring.regions().into_iter().map(str::to_string).collect(),
        };
        let mut out = Vec::new();
        for region in regions {
            let client = keyring
                .store_client(&region)
                .await
                .map_err(|e| failure(&e))?;
            if !table_exists(&client, &region)
                .await
                .map_err(|e| failure(&e))?
            {
                continue;
            }
            out.extend(
                table::list(&*client, &region, number)
                    .await
                    .map_err(|e| failure(&e))?,
            );
        }
        Ok(out)
    }

    /// Finds one job by its id (`<region>/<n>`, or `<n>` when only one
    /// region has a job `n`).
    pub async fn find(&self, id: &str) -> Result<JobRow, AdminError> {
        let Some((region, number)) = table::parse_job_id(id) else {
            return Err(AdminError::new(
                codes::BAD_ARGS,
                format!("`{id}` is not a job id (like eu/3, as `jobs` shows)"),
            ));
        };
        let found = self.list(region, Some(number)).await?;
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(AdminError::new(
                codes::NOT_FOUND,
                format!("no re-encryption job `{id}`"),
            )),
            _ => Err(AdminError::new(
                codes::BAD_ARGS,
                format!(
                    "job number {number} exists in several regions: name one ({})",
                    found
                        .iter()
                        .map(|j| j.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Cancels a running job (its runner stops within a batch).
    pub async fn cancel(&self, id: &str) -> Result<JobRow, AdminError> {
        let job = self.find(id).await?;
        let keyring = self.key_region(&job.region)?;
        let client = keyring
            .store_client(&job.region)
            .await
            .map_err(|e| failure(&e))?;
        match table::cancel(&*client, &job.region, job.number)
            .await
            .map_err(|e| failure(&e))?
        {
            Some((true, row)) => Ok(row),
            Some((false, row)) => Err(AdminError::new(
                codes::CONFLICT,
                format!(
                    "job {} is {}, not running: nothing to cancel",
                    row.id,
                    row.state.as_str()
                ),
            )),
            None => Err(AdminError::new(
                codes::NOT_FOUND,
                format!("no re-encryption job `{id}`"),
            )),
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

async fn table_exists(client: &tokio_postgres::Client, region: &str) -> Result<bool, CryptoError> {
    client
        .query_one(
            "SELECT to_regclass('regionguard.reencrypt_jobs') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| crate::crypto::store::store_error(region, &e))
}

/// A tenant filter must name a tenant with an active key in the region.
async fn check_tenant(
    client: &tokio_postgres::Client,
    region: &str,
    tenant: &str,
) -> Result<(), AdminError> {
    let rows = client
        .query(
            "SELECT state FROM regionguard.data_keys WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .map_err(|e| failure(&crate::crypto::store::store_error(region, &e)))?;
    let states: Vec<String> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
    if states.is_empty() {
        return Err(AdminError::new(
            codes::NOT_FOUND,
            format!(
                "tenant `{tenant}` has no data keys in region `{region}`: nothing to re-encrypt"
            ),
        ));
    }
    if !states.iter().any(|s| s == "active") {
        return Err(AdminError::new(
            codes::TENANT_SHREDDED,
            format!("tenant `{tenant}` has no active data key in region `{region}` (shredded): its rows cannot be re-encrypted"),
        ));
    }
    Ok(())
}
