//! `regionguard.reencrypt_jobs` in each regional database: the persistent
//! state of re-encryption jobs, so a job survives the proxy that started it
//! and every proxy serving the region can list, cancel or resume it.
//!
//! Which proxy runs a job is decided by a session advisory lock on the job
//! (held by the runner's dedicated connection, released by Postgres when
//! that connection or its process dies), not by the row: `owner` and
//! `heartbeat` only say who ran it last and when, for people and for
//! deciding when to try taking a job over.

use crate::crypto::store::store_error;
use crate::crypto::CryptoError;
use serde::Serialize;
use tokio_postgres::GenericClient;

/// Creates the job table if missing, serialised like the key table's DDL.
const SCHEMA_SQL: &str = "\
BEGIN;
SELECT pg_advisory_xact_lock(7233105478431500290);
CREATE SCHEMA IF NOT EXISTS regionguard;
CREATE TABLE IF NOT EXISTS regionguard.reencrypt_jobs (
    id bigserial PRIMARY KEY,
    region text NOT NULL,
    tenant text,
    table_name text,
    rate int NOT NULL CHECK (rate > 0),
    state text NOT NULL CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    rows_done bigint NOT NULL DEFAULT 0,
    rows_skipped bigint NOT NULL DEFAULT 0,
    rows_failed bigint NOT NULL DEFAULT 0,
    rows_remaining bigint,
    passes int NOT NULL DEFAULT 0,
    retired jsonb NOT NULL DEFAULT '[]',
    owner text,
    heartbeat timestamptz,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
COMMIT;";

/// The advisory lock key of a job (session level, held while running it).
pub const LOCK_SQL: &str =
    "SELECT pg_try_advisory_lock(hashtextextended('regionguard.reencrypt_jobs:' || $1::int8::text, 0))";

/// The lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Cancelled,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Cancelled => "cancelled",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "running" => JobState::Running,
            "done" => JobState::Done,
            "cancelled" => JobState::Cancelled,
            "failed" => JobState::Failed,
            _ => return None,
        })
    }
}

/// One job as stored (no key material, no row data: filters, counts).
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    /// `<region>/<number>`: job numbers are per regional database.
    pub id: String,
    #[serde(skip)]
    pub number: i64,
    pub region: String,
    pub tenant: Option<String>,
    pub table: Option<String>,
    pub rate: u32,
    pub state: JobState,
    pub rows_done: i64,
    pub rows_skipped: i64,
    pub rows_failed: i64,
    /// Estimate: rows under old versions counted at the start of the
    /// current pass, less those done since.
    pub rows_remaining: Option<i64>,
    pub passes: i32,
    pub retired: serde_json::Value,
    pub owner: Option<String>,
    pub heartbeat_age_secs: Option<i64>,
    pub error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// The display id of job `number` in `region`.
pub fn job_id(region: &str, number: i64) -> String {
    format!("{region}/{number}")
}

/// Splits `<region>/<number>` (or a bare number) into its parts.
pub fn parse_job_id(id: &str) -> Option<(Option<&str>, i64)> {
    match id.rsplit_once('/') {
        Some((region, n)) if !region.is_empty() => Some((Some(region), n.parse().ok()?)),
        Some(_) => None,
        None => Some((None, id.parse().ok()?)),
    }
    .filter(|(_, n)| *n > 0)
}

/// Creates the job table if missing (nothing runs when it exists).
pub async fn ensure_schema(client: &impl GenericClient, region: &str) -> Result<(), CryptoError> {
    let present: bool = client
        .query_one(
            "SELECT to_regclass('regionguard.reencrypt_jobs') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| store_error(region, &e))?;
    if present {
        return Ok(());
    }
    if let Err(e) = client.batch_execute(SCHEMA_SQL).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(store_error(region, &e));
    }
    Ok(())
}

const COLUMNS: &str = "id, region, tenant, table_name, rate, state, rows_done, rows_skipped, \
    rows_failed, rows_remaining, passes, retired::text, owner, \
    extract(epoch FROM now() - heartbeat)::int8, error, \
    extract(epoch FROM created_at)::int8, extract(epoch FROM finished_at)::int8";

fn row(region: &str, r: &tokio_postgres::Row) -> Result<JobRow, CryptoError> {
    let get = |e| store_error(region, &e);
    let number: i64 = r.try_get(0).map_err(get)?;
    let state: &str = r.try_get(5).map_err(get)?;
    let rate: i32 = r.try_get(4).map_err(get)?;
    let row_region: String = r.try_get(1).map_err(get)?;
    Ok(JobRow {
        id: job_id(&row_region, number),
        number,
        region: row_region,
        tenant: r.try_get(2).map_err(get)?,
        table: r.try_get(3).map_err(get)?,
        rate: u32::try_from(rate).unwrap_or(1),
        state: JobState::parse(state).ok_or_else(|| CryptoError::Store {
            region: region.to_string(),
            reason: format!("regionguard.reencrypt_jobs holds an unknown state `{state}`"),
        })?,
        rows_done: r.try_get(6).map_err(get)?,
        rows_skipped: r.try_get(7).map_err(get)?,
        rows_failed: r.try_get(8).map_err(get)?,
        rows_remaining: r.try_get(9).map_err(get)?,
        passes: r.try_get(10).map_err(get)?,
        retired: serde_json::from_str(r.try_get(11).map_err(get)?).unwrap_or_default(),
        owner: r.try_get(12).map_err(get)?,
        heartbeat_age_secs: r.try_get(13).map_err(get)?,
        error: r.try_get(14).map_err(get)?,
        created_at: r.try_get(15).map_err(get)?,
        finished_at: r.try_get(16).map_err(get)?,
    })
}

/// What a new job covers.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub tenant: Option<String>,
    pub table: Option<String>,
    pub rate: u32,
}

/// Inserts a running job unless a running one overlaps it (same or
/// broader tenant and table filters), under a region-wide advisory lock so
/// two proxies starting jobs at once cannot both pass the check. Returns
/// the new job, or the overlapping one as `Err`.
pub async fn insert(
    client: &mut tokio_postgres::Client,
    region: &str,
    spec: &JobSpec,
) -> Result<Result<JobRow, JobRow>, CryptoError> {
    let db = |e| store_error(region, &e);
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('regionguard.reencrypt_jobs.insert', 0))",
        &[],
    )
    .await
    .map_err(db)?;
    let clash = tx
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM regionguard.reencrypt_jobs \
                 WHERE state = 'running' \
                   AND (tenant IS NULL OR $1::text IS NULL OR tenant = $1) \
                   AND (table_name IS NULL OR $2::text IS NULL OR table_name = $2) \
                 ORDER BY id LIMIT 1"
            ),
            &[&spec.tenant, &spec.table],
        )
        .await
        .map_err(db)?;
    if let Some(r) = clash {
        return Ok(Err(row(region, &r)?));
    }
    let rate = i32::try_from(spec.rate).unwrap_or(i32::MAX);
    let r = tx
        .query_one(
            &format!(
                "INSERT INTO regionguard.reencrypt_jobs (region, tenant, table_name, rate, state) \
                 VALUES ($1, $2, $3, $4, 'running') RETURNING {COLUMNS}"
            ),
            &[&region, &spec.tenant, &spec.table, &rate],
        )
        .await
        .map_err(db)?;
    let job = row(region, &r)?;
    tx.commit().await.map_err(db)?;
    Ok(Ok(job))
}

/// Jobs of the region, newest first (one when `number` is given).
pub async fn list(
    client: &impl GenericClient,
    region: &str,
    number: Option<i64>,
) -> Result<Vec<JobRow>, CryptoError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM regionguard.reencrypt_jobs \
                 WHERE $1::int8 IS NULL OR id = $1 ORDER BY id DESC LIMIT 100"
            ),
            &[&number],
        )
        .await
        .map_err(|e| store_error(region, &e))?;
    rows.iter().map(|r| row(region, r)).collect()
}

/// Ids of running jobs; with `stale_secs`, only those whose heartbeat is
/// older than that (or missing): candidates to take over.
pub async fn running(
    client: &impl GenericClient,
    region: &str,
    stale_secs: Option<f64>,
) -> Result<Vec<i64>, CryptoError> {
    let rows = client
        .query(
            "SELECT id FROM regionguard.reencrypt_jobs WHERE state = 'running' \
               AND ($1::float8 IS NULL OR heartbeat IS NULL \
                    OR heartbeat < now() - make_interval(secs => $1)) ORDER BY id",
            &[&stale_secs],
        )
        .await
        .map_err(|e| store_error(region, &e))?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(|e| store_error(region, &e)))
        .collect()
}

/// Marks a running job cancelled. `Ok(None)`: no such job; `Ok(Some(row))`
/// with the row as it is now (its state says whether this call cancelled it).
pub async fn cancel(
    client: &impl GenericClient,
    region: &str,
    number: i64,
) -> Result<Option<(bool, JobRow)>, CryptoError> {
    let db = |e| store_error(region, &e);
    let changed = client
        .execute(
            "UPDATE regionguard.reencrypt_jobs SET state = 'cancelled', finished_at = now() \
             WHERE id = $1 AND state = 'running'",
            &[&number],
        )
        .await
        .map_err(db)?;
    let now = list(client, region, Some(number)).await?;
    Ok(now.into_iter().next().map(|r| (changed == 1, r)))
}

/// Progress of one batch, and the job's state now (a cancel shows here).
pub async fn progress(
    client: &impl GenericClient,
    region: &str,
    number: i64,
    owner: &str,
    step: Step,
) -> Result<Option<JobState>, CryptoError> {
    let r = client
        .query_opt(
            "UPDATE regionguard.reencrypt_jobs SET rows_done = rows_done + $2, \
                 rows_skipped = rows_skipped + $3, rows_failed = rows_failed + $4, \
                 rows_remaining = greatest(coalesce(rows_remaining, 0) - $2, 0), \
                 owner = $5, heartbeat = now() \
             WHERE id = $1 RETURNING state",
            &[&number, &step.done, &step.skipped, &step.failed, &owner],
        )
        .await
        .map_err(|e| store_error(region, &e))?;
    match r {
        Some(r) => {
            let s: &str = r.try_get(0).map_err(|e| store_error(region, &e))?;
            Ok(JobState::parse(s))
        }
        None => Ok(None),
    }
}

/// Counts of one batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Step {
    pub done: i64,
    pub skipped: i64,
    pub failed: i64,
}

/// The start of a pass: its number and the rows it expects to rewrite.
pub async fn start_pass(
    client: &impl GenericClient,
    region: &str,
    number: i64,
    remaining: i64,
) -> Result<(), CryptoError> {
    client
        .execute(
            "UPDATE regionguard.reencrypt_jobs SET passes = passes + 1, rows_remaining = $2, \
                 heartbeat = now() WHERE id = $1",
            &[&number, &remaining],
        )
        .await
        .map_err(|e| store_error(region, &e))?;
    Ok(())
}

/// Ends a running job (a cancelled one stays cancelled).
pub async fn finish(
    client: &impl GenericClient,
    region: &str,
    number: i64,
    state: JobState,
    remaining: Option<i64>,
    retired: &serde_json::Value,
    error: Option<&str>,
) -> Result<(), CryptoError> {
    client
        .execute(
            "UPDATE regionguard.reencrypt_jobs SET state = $2, finished_at = now(), \
                 rows_remaining = coalesce($3, rows_remaining), retired = $4::text::jsonb, error = $5, \
                 heartbeat = now() \
             WHERE id = $1 AND state = 'running'",
            &[&number, &state.as_str(), &remaining, &retired.to_string(), &error],
        )
        .await
        .map_err(|e| store_error(region, &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        assert_eq!(job_id("eu", 7), "eu/7");
        assert_eq!(parse_job_id("eu/7"), Some((Some("eu"), 7)));
        assert_eq!(parse_job_id("7"), Some((None, 7)));
        assert_eq!(parse_job_id("/7"), None);
        assert_eq!(parse_job_id("eu/x"), None);
        assert_eq!(parse_job_id("eu/0"), None);
        assert_eq!(parse_job_id("eu/-3"), None);
    }

    #[test]
    fn states_round_trip() {
        for s in [
            JobState::Running,
            JobState::Done,
            JobState::Cancelled,
            JobState::Failed,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("paused"), None);
    }
}
