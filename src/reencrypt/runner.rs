//! Running one job: passes over the job's columns in small throttled
//! batches, each batch a compare-and-set in its own transaction together
//! with the job's progress, until no row in scope is under an old version;
//! then the versions no row uses any more are retired.
//!
//! A pass walks each table once by `ctid`, a window of pages at a time
//! (see [`super::sql`]), so the work is linear in the table's size and
//! needs no index. Rewritten rows no longer match, so a pass interrupted
//! anywhere (proxy stopped, connection lost) is simply run again by the
//! next runner: nothing but the counts is kept between runs. Rows moved
//! behind the cursor by concurrent updates, or skipped by the
//! compare-and-set, are found by the next pass.

use super::reseal::reseal;
use super::sql;
use super::table::{self, JobRow, JobState, Step};
use super::targets::{self, Target, Targets};
use super::throttle::{batch_size, Throttle};
use super::Events;
use crate::catalog::Storage;
use crate::crypto::rotation;
use crate::crypto::store::store_error;
use crate::crypto::{CryptoError, Keyring, TenantKeys};
use crate::server::state::Shared;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use zeroize::Zeroizing;

/// Passes before a job gives up on rows that keep failing or moving.
const MAX_PASSES: u32 = 5;
/// How often an idle stretch (windows without old rows) still beats the
/// heartbeat and looks for a cancel.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Why a run stopped early.
#[derive(Debug)]
pub(super) enum Stop {
    /// The job is no longer running (cancelled through some proxy).
    NotRunning,
    Failed(CryptoError),
}

impl From<CryptoError> for Stop {
    fn from(e: CryptoError) -> Stop {
        Stop::Failed(e)
    }
}

/// Tenants in scope and their active versions (parallel, for `unnest`).
#[derive(Debug, Default)]
struct Active {
    tenants: Vec<String>,
    versions: Vec<i32>,
}

impl Active {
    /// The active version of `tenant` when the pass started (`tenants` is
    /// in byte order: `COLLATE "C"`).
    fn version_of(&self, tenant: &str) -> Option<u32> {
        let i = self
            .tenants
            .binary_search_by(|t| t.as_str().cmp(tenant))
            .ok()?;
        u32::try_from(*self.versions.get(i)?).ok()
    }
}

/// A job being run by this proxy, holding its lock on `client`.
pub(super) struct Run<'a> {
    pub shared: &'a Shared,
    pub keyring: &'a Keyring,
    pub client: &'a mut Client,
    pub job: JobRow,
    pub owner: &'a str,
    pub events: &'a Events,
    /// Rows of the current pass still to do (an estimate, for the metric).
    pub remaining: i64,
}

impl Run<'_> {
    fn region(&self) -> &str {
        &self.job.region
    }

    fn db(&self) -> impl Fn(tokio_postgres::Error) -> CryptoError + '_ {
        move |e| store_error(&self.job.region, &e)
    }

    /// Runs the job to its end (done, or stopped by a cancel or an error).
    pub async fn run(mut self) -> Result<(), Stop> {
        let region = self.region().to_string();
        let catalog = self
            .shared
            .refresh_catalog(&region, self.client)
            .await
            .map_err(self.db())?;
        let all = targets::discover(self.client, &region, &catalog).await?;
        let scope = all.only(self.job.table.as_deref());
        let mut remaining = 0;
        for _ in 0..MAX_PASSES {
            let active = self.active().await?;
            remaining = self.count(&scope, &active).await?;
            table::start_pass(&*self.client, &region, self.job.number, remaining).await?;
            self.remaining = remaining;
            self.events.progress(&region, 0, remaining);
            if remaining == 0 {
                break;
            }
            let mut pass = Step::default();
            for target in &scope {
                let s = self.walk(target, &active).await?;
                pass.done += s.done;
                pass.skipped += s.skipped;
                pass.failed += s.failed;
            }
            if pass.done == 0 && pass.skipped == 0 {
                // Only rows that fail to decrypt are left: more passes
                // would fail them again.
                break;
            }
        }
        let active = self.active().await?;
        if remaining > 0 {
            remaining = self.count(&scope, &active).await?;
        }
        let retired = self.retire(&all, &active).await?;
        let error = if remaining > 0 {
            Some(format!(
                "{remaining} rows are still under older key versions (see rows_failed: values that do not decrypt are left as they are); their versions were not retired"
            ))
        } else if !all.without_tenant.is_empty() {
            Some(format!(
                "no version was retired: classified columns without a tenant column ({}) cannot be checked",
                all.without_tenant.join(", ")
            ))
        } else {
            None
        };
        table::finish(
            &*self.client,
            &region,
            self.job.number,
            JobState::Done,
            Some(remaining),
            &retired,
            error.as_deref(),
        )
        .await?;
        self.events.progress(&region, 0, 0);
        let now = table::list(&*self.client, &region, Some(self.job.number))
            .await?
            .into_iter()
            .next();
        let event = match now {
            Some(j) => json!({"job": j.id, "state": j.state, "rows_done": j.rows_done,
                "rows_skipped": j.rows_skipped, "rows_failed": j.rows_failed,
                "rows_remaining": remaining, "retired": retired}),
            None => json!({"job": self.job.id, "retired": retired}),
        };
        self.events.audit("reencrypt.finish", &self.job.id, event);
        Ok(())
    }

    /// Tenants in the job's scope with an active key, and that version.
    async fn active(&self) -> Result<Active, CryptoError> {
        let tenant = self
            .job
            .tenant
            .as_deref()
            .map(|t| crate::crypto::aad::canonical_tenant(t).into_owned());
        let rows = self
            .client
            .query(
                "SELECT tenant, version FROM regionguard.data_keys \
                 WHERE state = 'active' AND ($1::text IS NULL OR tenant = $1) \
                 ORDER BY tenant COLLATE \"C\"",
                &[&tenant],
            )
            .await
            .map_err(self.db())?;
        let mut out = Active::default();
        for r in &rows {
            out.tenants.push(r.try_get(0).map_err(self.db())?);
            out.versions.push(r.try_get(1).map_err(self.db())?);
        }
        Ok(out)
    }

    async fn count(&self, scope: &[Target], active: &Active) -> Result<i64, CryptoError> {
        if active.tenants.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        for t in scope {
            let c: i64 = self
                .client
                .query_one(&t.sql.count_old(), &[&active.tenants, &active.versions])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(self.db())?;
            n += c;
        }
        Ok(n)
    }

    /// One pass over one column.
    async fn walk(&mut self, target: &Target, active: &Active) -> Result<Step, Stop> {
        let region = self.region().to_string();
        let pages: i64 = self
            .client
            .query_one(&target.sql.pages(), &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(self.db())?;
        let pages = u64::try_from(pages).unwrap_or(0);
        let batch = batch_size(self.job.rate);
        let limit = batch as i64;
        let select = target.sql.select_batch();
        let update = target.sql.update_batch();
        let mut throttle = Throttle::new(self.job.rate, Instant::now());
        let mut total = Step::default();
        let mut beat = Instant::now();
        let mut window = 0u64;
        while window < pages {
            let end = sql::page_start(window + u64::from(sql::WINDOW_PAGES));
            let mut cursor = sql::page_start(window);
            loop {
                let rows = self
                    .client
                    .query(
                        &select,
                        &[&active.tenants, &active.versions, &cursor, &end, &limit],
                    )
                    .await
                    .map_err(self.db())?;
                let Some(last) = rows.last() else { break };
                cursor = last.try_get(0).map_err(self.db())?;
                let step = self.rewrite(target, &rows, &update, active).await?;
                total.done += step.done;
                total.skipped += step.skipped;
                total.failed += step.failed;
                beat = Instant::now();
                let wait = throttle.take(rows.len(), Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                if rows.len() < batch {
                    break;
                }
            }
            window += u64::from(sql::WINDOW_PAGES);
            if beat.elapsed() >= HEARTBEAT {
                let state = table::progress(
                    &*self.client,
                    &region,
                    self.job.number,
                    self.owner,
                    Step::default(),
                )
                .await?;
                if state != Some(JobState::Running) {
                    return Err(Stop::NotRunning);
                }
                beat = Instant::now();
            }
        }
        Ok(total)
    }

    /// Re-seals one batch and writes it with the compare-and-set, in one
    /// transaction with the job's progress.
    async fn rewrite(
        &mut self,
        target: &Target,
        rows: &[tokio_postgres::Row],
        update: &str,
        active: &Active,
    ) -> Result<Step, Stop> {
        let region = self.region().to_string();
        let mut scratch = Zeroizing::new(Vec::new());
        let mut keys: HashMap<String, Option<Arc<TenantKeys>>> = HashMap::new();
        let (mut ctids, mut tenants) = (Vec::new(), Vec::new());
        let (mut old, mut new): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
        let mut failed = 0i64;
        for row in rows {
            let ctid: String = row.try_get(0).map_err(self.db())?;
            let tenant: String = row.try_get(1).map_err(self.db())?;
            let stored: Vec<u8> = match target.sql.storage {
                Storage::Bytea => row.try_get(2).map_err(self.db())?,
                Storage::Text => row.try_get::<_, String>(2).map_err(self.db())?.into_bytes(),
            };
            if !keys.contains_key(&tenant) {
                let want = active.version_of(&tenant);
                let k = self.keys_for(&tenant, want).await;
                keys.insert(tenant.clone(), k);
            }
            let Some(Some(k)) = keys.get(&tenant) else {
                failed += 1;
                continue;
            };
            match reseal(
                k,
                &tenant,
                &target.class,
                target.sql.storage,
                &stored,
                &mut scratch,
            ) {
                Ok(sealed) => {
                    ctids.push(ctid);
                    tenants.push(tenant);
                    old.push(stored);
                    new.push(sealed);
                }
                Err(e) => {
                    // Names region and column, never the value.
                    tracing::warn!(%region, job = %self.job.id, error = %e, "a value cannot be re-encrypted; left as it is");
                    failed += 1;
                }
            }
        }
        let tx = self
            .client
            .transaction()
            .await
            .map_err(|e| store_error(&region, &e))?;
        let done = if ctids.is_empty() {
            0
        } else {
            match target.sql.storage {
                Storage::Bytea => tx.execute(update, &[&ctids, &old, &new, &tenants]).await,
                Storage::Text => {
                    let text = |v: Vec<Vec<u8>>| -> Vec<String> {
                        v.into_iter()
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .collect()
                    };
                    let (old, new) = (text(old), text(new));
                    tx.execute(update, &[&ctids, &old, &new, &tenants]).await
                }
            }
            .map_err(|e| store_error(&region, &e))?
        };
        let done = i64::try_from(done).unwrap_or(i64::MAX);
        let step = Step {
            done,
            skipped: ctids.len() as i64 - done,
            failed,
        };
        let state = table::progress(&tx, &region, self.job.number, self.owner, step).await?;
        tx.commit().await.map_err(|e| store_error(&region, &e))?;
        self.remaining = (self.remaining - step.done).max(0);
        self.events.progress(&region, step.done, self.remaining);
        if state != Some(JobState::Running) {
            return Err(Stop::NotRunning);
        }
        Ok(step)
    }

    /// The tenant's keys, sealing under at least `want` (the active
    /// version the pass started with; reloaded once when the cache is
    /// older). `None` when they cannot be had.
    async fn keys_for(&self, tenant: &str, want: Option<u32>) -> Option<Arc<TenantKeys>> {
        let region = self.region();
        let want = want?;
        let fresh = |k: &TenantKeys| k.active_version().is_some_and(|v| v >= want);
        match self.keyring.for_read(region, tenant).await {
            Ok(k) if fresh(&k) => return Some(k),
            Ok(_) => self.keyring.invalidate(region, tenant),
            Err(e) => {
                tracing::warn!(%region, error = %e, "cannot load a tenant's keys for re-encryption");
                return None;
            }
        }
        match self.keyring.for_read(region, tenant).await {
            Ok(k) if fresh(&k) => Some(k),
            _ => None,
        }
    }

    /// Retires, per tenant in scope, the decrypt-only versions older than
    /// its active one that no row of any classified column uses. Skipped
    /// (empty) when some classified column has no tenant column.
    async fn retire(
        &self,
        all: &Targets,
        active: &Active,
    ) -> Result<serde_json::Value, CryptoError> {
        let region = self.region();
        if !all.without_tenant.is_empty() || active.tenants.is_empty() {
            return Ok(json!([]));
        }
        let rows = self
            .client
            .query(
                "SELECT k.tenant, k.version FROM regionguard.data_keys k \
                 JOIN unnest($1::text[], $2::int4[]) AS a(tenant, active) ON a.tenant = k.tenant \
                 WHERE k.state = 'decrypt-only' AND k.version < a.active ORDER BY 1, 2",
                &[&active.tenants, &active.versions],
            )
            .await
            .map_err(self.db())?;
        let mut candidates: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for r in &rows {
            let t: String = r.try_get(0).map_err(self.db())?;
            let v: i32 = r.try_get(1).map_err(self.db())?;
            candidates.entry(t).or_default().insert(v.max(0) as u32);
        }
        if candidates.is_empty() {
            return Ok(json!([]));
        }
        let tenants: Vec<String> = candidates.keys().cloned().collect();
        for t in &all.columns {
            for r in self
                .client
                .query(&t.sql.versions_in_use(), &[&tenants])
                .await
                .map_err(self.db())?
            {
                let tenant: String = r.try_get(0).map_err(self.db())?;
                let version: Vec<u8> = r.try_get(1).map_err(self.db())?;
                if let (Some(set), Some(v)) =
                    (candidates.get_mut(&tenant), sql::version_of(&version))
                {
                    set.remove(&v);
                }
            }
        }
        let mut out = Vec::new();
        for (tenant, versions) in candidates {
            let versions: Vec<u32> = versions.into_iter().collect();
            let retired = rotation::retire(self.keyring, region, &tenant, &versions)
                .await
                .map_err(|e| match e {
                    rotation::KeyAdminError::Crypto(e) => e,
                    rotation::KeyAdminError::Refused { message, .. } => CryptoError::Store {
                        region: region.to_string(),
                        reason: message,
                    },
                })?;
            if !retired.is_empty() {
                let entry = json!({"tenant": tenant, "versions": retired});
                self.events
                    .audit("reencrypt.retire", &self.job.id, entry.clone());
                out.push(entry);
            }
        }
        Ok(serde_json::Value::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_versions_by_tenant() {
        let active = Active {
            tenants: vec!["Zed".into(), "acme".into(), "umbrella".into()],
            versions: vec![3, 2, 7],
        };
        assert_eq!(active.version_of("acme"), Some(2));
        assert_eq!(active.version_of("Zed"), Some(3));
        assert_eq!(active.version_of("umbrella"), Some(7));
        assert_eq!(active.version_of("globex"), None);
    }
}
