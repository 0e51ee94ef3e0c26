//! Two-phase commit across regions: transaction ids, the decision log and
//! the recovery of prepared transactions left behind (ADR 10).
//!
//! A statement that must reach every region (DDL, a write to a global
//! table) is prepared in each region under one id,
//! `regionguard:<proxy id>:<random>:<decision region>`. Once every region
//! has prepared it, the proxy records *commit* in the decision log of the
//! decision region (the default region), `regionguard.twophase_decisions`,
//! and only then commits each prepared transaction. The log's primary key
//! decides races: recovery records *abort* for a transaction that has no
//! decision, and whichever insert comes first wins, so a proxy that was
//! slow to decide learns that its transaction was rolled back instead of
//! committing half of it.
//!
//! Recovery scans `pg_prepared_xacts` of every region for `regionguard:`
//! ids and finishes each one by its decision (commit if logged, abort
//! otherwise). A proxy resolves its own ids (same proxy id) at once unless
//! one of its sessions is still deciding them (they are registered while
//! in flight): those are leftovers of its previous life, or of a session
//! that gave up. Ids of other proxies are resolved only once they are older
//! than the grace period, so a transaction another proxy is still deciding
//! is not rolled back under it (and if it is, the decision log's key makes
//! that proxy roll back too).

use crate::backend::control::ControlConnector;
use crate::config::Config;
use crate::localpg::quote_literal;
use crate::server::state::Phase;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};
use tokio_postgres::Client;

/// Every transaction id the proxy prepares starts with this.
pub const GID_PREFIX: &str = "regionguard:";
/// Bound on each control-plane statement.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often recovery looks for prepared transactions left behind.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(60);
/// Decisions older than this, whose transaction no region still holds,
/// are deleted by recovery.
const DECISION_RETENTION: &str = "1 hour";

/// Creates the decision log. Serialised by an advisory lock: concurrent
/// `CREATE … IF NOT EXISTS` from several proxies can collide on the
/// catalogs' unique indexes.
const SCHEMA_SQL: &str = "\
BEGIN;
SELECT pg_advisory_xact_lock(7233105478431500290);
CREATE SCHEMA IF NOT EXISTS regionguard;
CREATE TABLE IF NOT EXISTS regionguard.twophase_decisions (
    gid text PRIMARY KEY,
    decision text NOT NULL CHECK (decision IN ('commit', 'abort')),
    decided_at timestamptz NOT NULL DEFAULT now()
);
COMMIT;";

/// The parts of a transaction id made by [`TwoPhase::new_gid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gid<'a> {
    pub proxy: &'a str,
    pub id: &'a str,
    /// Where the decision is logged.
    pub decision_region: &'a str,
}

/// Reads a transaction id made by a RegionGuard proxy; `None` for others.
pub fn parse_gid(gid: &str) -> Option<Gid<'_>> {
    let rest = gid.strip_prefix(GID_PREFIX)?;
    let mut parts = rest.splitn(3, ':');
    let (proxy, id, region) = (parts.next()?, parts.next()?, parts.next()?);
    let safe = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    (safe(proxy, &['_', '-', '.']) && safe(id, &[]) && safe(region, &['_', '-'])).then_some(Gid {
        proxy,
        id,
        decision_region: region,
    })
}

/// A transaction id in flight; dropping it lets recovery resolve the id
/// (a session that stops caring — or vanishes — leaves it to recovery).
pub struct InFlight {
    gid: String,
    owner: Arc<TwoPhase>,
}

impl InFlight {
    pub fn as_str(&self) -> &str {
        &self.gid
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.owner.in_flight.lock() {
            set.remove(&self.gid);
        }
    }
}

/// What was decided for a prepared transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Abort,
}

impl Decision {
    fn parse(s: &str) -> Option<Decision> {
        match s {
            "commit" => Some(Decision::Commit),
            "abort" => Some(Decision::Abort),
            _ => None,
        }
    }

    /// The statement that finishes a prepared transaction this way.
    pub fn statement(self, gid: &str) -> String {
        match self {
            Decision::Commit => format!("COMMIT PREPARED {}", quote_literal(gid)),
            Decision::Abort => format!("ROLLBACK PREPARED {}", quote_literal(gid)),
        }
    }
}

/// Why a commit decision could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideError {
    /// Certainly not recorded: the transaction may be rolled back.
    NotRecorded(String),
    /// The decision log could not be reached after the insert was sent:
    /// the decision may or may not be recorded. Recovery settles it.
    Unknown(String),
}

/// What one recovery pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub committed: usize,
    pub rolled_back: usize,
    /// Left for later: too young, decision region down, or a failure.
    pub skipped: usize,
    pub unreachable: Vec<String>,
}

struct RegionControl {
    connector: ControlConnector,
    /// The control client, and whether the decision log was ensured on it.
    client: Mutex<Option<(Arc<Client>, bool)>>,
}

/// The two-phase commit coordinator of one proxy, shared by its sessions.
pub struct TwoPhase {
    /// Ids this process is preparing or deciding right now.
    in_flight: std::sync::Mutex<std::collections::HashSet<String>>,
    proxy_id: String,
    decision_region: Arc<str>,
    grace: Duration,
    regions: BTreeMap<Arc<str>, RegionControl>,
}

impl TwoPhase {
    /// The coordinator for `config`'s regions. Connects lazily.
    pub fn new(config: &Config) -> Result<TwoPhase, String> {
        let mut regions = BTreeMap::new();
        for (name, region) in &config.regions {
            regions.insert(
                Arc::from(name.as_str()),
                RegionControl {
                    connector: ControlConnector::new(name, region)?,
                    client: Mutex::new(None),
                },
            );
        }
        let proxy_id = if config.two_phase.proxy_id.is_empty() {
            default_proxy_id(&config.listen.address)
        } else {
            config.two_phase.proxy_id.clone()
        };
        Ok(TwoPhase {
            in_flight: Default::default(),
            proxy_id,
            decision_region: Arc::from(config.default_region.as_str()),
            grace: Duration::from_secs(config.two_phase.recovery_grace_secs),
            regions,
        })
    }

    pub fn proxy_id(&self) -> &str {
        &self.proxy_id
    }

    /// The region whose database holds the decision log.
    pub fn decision_region(&self) -> &Arc<str> {
        &self.decision_region
    }

    /// A new transaction id, `regionguard:<proxy>:<32 hex>:<decision
    /// region>`, registered as in flight (recovery leaves it alone) until
    /// the returned guard drops.
    pub fn new_gid(self: &Arc<Self>) -> InFlight {
        let id: u128 = rand::random();
        let gid = format!(
            "{GID_PREFIX}{}:{id:032x}:{}",
            self.proxy_id, self.decision_region
        );
        if let Ok(mut set) = self.in_flight.lock() {
            set.insert(gid.clone());
        }
        InFlight {
            gid,
            owner: Arc::clone(self),
        }
    }

    fn is_in_flight(&self, gid: &str) -> bool {
        self.in_flight
            .lock()
            .map(|s| s.contains(gid))
            .unwrap_or(false)
    }

    /// The control client of `region`, reconnecting when the last one
    /// died; with `log`, the decision log is created on it first.
    async fn client(&self, region: &str, log: bool) -> Result<Arc<Client>, String> {
        let rc = self
            .regions
            .get(region)
            .ok_or_else(|| format!("region {region} is not configured"))?;
        let mut slot = rc.client.lock().await;
        if let Some((c, ready)) = slot.as_mut() {
            if !c.is_closed() {
                if log && !*ready {
                    ensure_log(c).await?;
                    *ready = true;
                }
                return Ok(Arc::clone(c));
            }
        }
        *slot = None;
        let client = Arc::new(rc.connector.connect().await.map_err(|e| e.to_string())?);
        if log {
            ensure_log(&client).await?;
        }
        *slot = Some((Arc::clone(&client), log));
        Ok(client)
    }

    async fn drop_client(&self, region: &str) {
        if let Some(rc) = self.regions.get(region) {
            *rc.client.lock().await = None;
        }
    }

    /// Records the decision to commit `gid`, unless recovery recorded
    /// abort first (then `Ok(Decision::Abort)`). Retries a lost
    /// connection: recording twice is harmless.
    pub async fn decide_commit(&self, gid: &str) -> Result<Decision, DecideError> {
        let region = self.decision_region.clone();
        let mut uncertain: Option<String> = None;
        let mut last = String::new();
        for attempt in 0..3u64 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            let client = match self.client(&region, true).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match record(&client, gid, Decision::Commit).await {
                Ok(d) => return Ok(d),
                Err(Failure::Server(e)) if uncertain.is_none() => {
                    return Err(DecideError::NotRecorded(e));
                }
                Err(Failure::Server(e)) => last = e,
                Err(Failure::Connection(e)) => {
                    self.drop_client(&region).await;
                    uncertain = Some(e);
                }
            }
        }
        match uncertain {
            Some(e) => Err(DecideError::Unknown(format!(
                "decision log in region {region}: {e}"
            ))),
            None => Err(DecideError::NotRecorded(format!(
                "decision log in region {region}: {last}"
            ))),
        }
    }

    /// Deletes the decision of a transaction every region has finished.
    pub async fn forget(&self, gid: &str) {
        let Some(parsed) = parse_gid(gid) else { return };
        let Ok(client) = self.client(parsed.decision_region, false).await else {
            return;
        };
        let sql = "DELETE FROM regionguard.twophase_decisions WHERE gid = $1";
        if let Ok(Err(e)) = tokio::time::timeout(OP_TIMEOUT, client.execute(sql, &[&gid])).await {
            tracing::debug!(error = %e, "could not delete a two-phase decision");
        }
    }

    /// Finishes `gid` in every region that still holds it, by its
    /// decision, retrying for a while: for a transaction whose commit or
    /// rollback the proxy could not complete itself.
    pub fn resolve_soon(self: &Arc<Self>, gid: String) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            for _ in 0..8 {
                tokio::time::sleep(delay).await;
                let report = me.pass(Some(&gid)).await;
                if report.skipped == 0 && report.unreachable.is_empty() {
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            tracing::warn!(
                gid,
                "prepared transaction still unresolved; the periodic recovery pass retries it"
            );
        });
    }

    /// Recovery at start, then every minute until the proxy stops.
    pub fn spawn_recovery(self: &Arc<Self>, mut phase: watch::Receiver<Phase>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let report = me.pass(None).await;
                if report.committed + report.rolled_back > 0 {
                    tracing::info!(
                        committed = report.committed,
                        rolled_back = report.rolled_back,
                        "resolved prepared transactions left behind"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(RECOVERY_INTERVAL) => {}
                    changed = phase.changed() => {
                        if changed.is_err() || *phase.borrow() != Phase::Running {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// One recovery pass over every region (only `gid` when given: a
    /// transaction this proxy gave up on, resolved at once).
    pub async fn pass(&self, only: Option<&str>) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        // gid → (regions holding it, whether every copy is past the grace period)
        let mut found: BTreeMap<String, (Vec<Arc<str>>, bool)> = BTreeMap::new();
        for region in self.regions.keys() {
            match self.prepared_in(region, only).await {
                Ok(rows) => {
                    for (gid, age) in rows {
                        let e = found.entry(gid).or_insert((Vec::new(), true));
                        e.0.push(region.clone());
                        e.1 &= age >= self.grace.as_secs_f64();
                    }
                }
                Err(e) => {
                    tracing::debug!(%region, error = %e, "recovery cannot scan the region");
                    report.unreachable.push(region.to_string());
                }
            }
        }
        let mut decisions: HashMap<String, Decision> = HashMap::new();
        for (gid, (holders, old)) in &found {
            let Some(parsed) = parse_gid(gid) else {
                report.skipped += 1;
                continue;
            };
            let mine = parsed.proxy == self.proxy_id;
            let eligible = only.is_some() || (mine && !self.is_in_flight(gid)) || (*old && !mine);
            if !eligible {
                report.skipped += 1;
                continue;
            }
            let decision = match self.settle(parsed.decision_region, gid).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(gid, decision_region = parsed.decision_region, error = %e, "cannot read or record the decision of a prepared transaction");
                    report.skipped += 1;
                    continue;
                }
            };
            decisions.insert(gid.clone(), decision);
            let mut all_done = true;
            for region in holders {
                match self.finish(region, gid, decision).await {
                    Ok(()) => {}
                    Err(e) => {
                        all_done = false;
                        tracing::warn!(%region, gid, error = %e, "cannot finish a prepared transaction");
                    }
                }
            }
            if all_done {
                tracing::info!(
                    gid,
                    ?decision,
                    regions = holders.len(),
                    "resolved a prepared transaction"
                );
                match decision {
                    Decision::Commit => report.committed += 1,
                    Decision::Abort => report.rolled_back += 1,
                }
                if report.unreachable.is_empty() {
                    self.forget(gid).await;
                }
            } else {
                report.skipped += 1;
            }
        }
        if only.is_none() && report.unreachable.is_empty() {
            let pending: Vec<String> = found.keys().cloned().collect();
            self.sweep(&pending).await;
        }
        report
    }

    /// Prepared transactions of this database with a RegionGuard id in
    /// `region`, with their age in seconds.
    async fn prepared_in(
        &self,
        region: &str,
        only: Option<&str>,
    ) -> Result<Vec<(String, f64)>, String> {
        let client = self.client(region, false).await?;
        let sql = "SELECT gid, extract(epoch FROM now() - prepared)::float8 \
                   FROM pg_prepared_xacts \
                   WHERE database = current_database() AND starts_with(gid, $1) \
                   AND ($2::text IS NULL OR gid = $2)";
        let rows = tokio::time::timeout(OP_TIMEOUT, client.query(sql, &[&GID_PREFIX, &only]))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string());
        match rows {
            Ok(rows) => rows
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(|e| e.to_string()),
            Err(e) => {
                self.drop_client(region).await;
                Err(e)
            }
        }
    }

    /// The decision of `gid`, recording abort when there is none.
    async fn settle(&self, decision_region: &str, gid: &str) -> Result<Decision, String> {
        let client = self.client(decision_region, true).await?;
        record(&client, gid, Decision::Abort)
            .await
            .map_err(|e| match e {
                Failure::Server(e) | Failure::Connection(e) => e,
            })
    }

    /// Commits or rolls back `gid` in `region`; a transaction already gone
    /// (finished by someone else) counts as done.
    async fn finish(&self, region: &str, gid: &str, decision: Decision) -> Result<(), String> {
        let client = self.client(region, false).await?;
        match tokio::time::timeout(OP_TIMEOUT, client.batch_execute(&decision.statement(gid))).await
        {
            Err(_) => Err("timed out".into()),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
        }
    }

    /// Deletes old decisions whose transaction no region holds any more.
    async fn sweep(&self, pending: &[String]) {
        let Ok(client) = self.client(&self.decision_region, false).await else {
            return;
        };
        let sql = format!(
            "DELETE FROM regionguard.twophase_decisions \
             WHERE decided_at < now() - interval '{DECISION_RETENTION}' AND NOT (gid = ANY($1))"
        );
        let pending: Vec<&str> = pending.iter().map(String::as_str).collect();
        match tokio::time::timeout(OP_TIMEOUT, client.execute(&sql, &[&pending])).await {
            Ok(Err(e)) if e.code() != Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                tracing::debug!(error = %e, "could not sweep old two-phase decisions")
            }
            _ => {}
        }
    }
}

enum Failure {
    /// The server refused the statement: nothing was recorded.
    Server(String),
    /// The connection failed: unknown whether it was recorded.
    Connection(String),
}

/// Records `decision` for `gid` unless one is recorded; returns the one
/// that stands.
async fn record(client: &Client, gid: &str, decision: Decision) -> Result<Decision, Failure> {
    let wanted = match decision {
        Decision::Commit => "commit",
        Decision::Abort => "abort",
    };
    let insert = "INSERT INTO regionguard.twophase_decisions (gid, decision) VALUES ($1, $2) \
                  ON CONFLICT (gid) DO NOTHING RETURNING decision";
    let fail = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) => Failure::Server(format!("{} ({})", db.message(), db.code().code())),
        None => Failure::Connection(e.to_string()),
    };
    let inserted = tokio::time::timeout(OP_TIMEOUT, client.query_opt(insert, &[&gid, &wanted]))
        .await
        .map_err(|_| Failure::Connection("timed out".into()))?
        .map_err(fail)?;
    if inserted.is_some() {
        return Ok(decision);
    }
    // Someone decided first (the conflicting insert has committed: ON
    // CONFLICT waited for it); a new statement sees its row.
    let select = "SELECT decision FROM regionguard.twophase_decisions WHERE gid = $1";
    let row = tokio::time::timeout(OP_TIMEOUT, client.query_opt(select, &[&gid]))
        .await
        .map_err(|_| Failure::Connection("timed out".into()))?
        .map_err(fail)?;
    let value: Option<String> = row.map(|r| r.try_get(0)).transpose().map_err(fail)?;
    value
        .as_deref()
        .and_then(Decision::parse)
        .ok_or_else(|| Failure::Server("the decision log returned no decision".into()))
}

async fn ensure_log(client: &Client) -> Result<(), String> {
    let present: bool = match client
        .query_one(
            "SELECT to_regclass('regionguard.twophase_decisions') IS NOT NULL",
            &[],
        )
        .await
    {
        Ok(row) => row.try_get(0).map_err(|e| e.to_string())?,
        Err(e) => return Err(e.to_string()),
    };
    if present {
        return Ok(());
    }
    match tokio::time::timeout(OP_TIMEOUT, client.batch_execute(SCHEMA_SQL)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            // Leave the connection usable after a failed transaction block.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(format!("cannot create regionguard.twophase_decisions: {e}"))
        }
        Err(_) => Err("creating the decision log timed out".into()),
    }
}

/// `<host name>-<listen port>`, made safe for a transaction id.
fn default_proxy_id(listen: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let mut id: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if id.is_empty() {
        id = "regionguard".into();
    }
    let port = listen.rsplit(':').next().unwrap_or("0");
    format!("{id}-{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_round_trip() {
        let gid = format!("{GID_PREFIX}host-1.a_b:{:032x}:eu-west", 42u128);
        let parsed = parse_gid(&gid).expect("parses");
        assert_eq!(parsed.proxy, "host-1.a_b");
        assert_eq!(parsed.decision_region, "eu-west");
        assert!(gid.len() < 200, "Postgres limits ids to 199 bytes");
    }

    #[test]
    fn foreign_or_odd_ids_are_not_ours() {
        for gid in [
            "other:x:1:eu",
            "regionguard:x:1",
            "regionguard::1:eu",
            "regionguard:x:1:e'u",
            "regionguard:x y:1:eu",
        ] {
            assert!(parse_gid(gid).is_none(), "{gid}");
        }
    }

    #[test]
    fn default_proxy_id_is_safe() {
        let id = default_proxy_id("0.0.0.0:6432");
        assert!(id.ends_with("-6432"), "{id}");
        assert!(
            parse_gid(&format!("{GID_PREFIX}{id}:1:eu")).is_some(),
            "{id}"
        );
    }

    #[test]
    fn finishing_statements_quote_the_id() {
        assert_eq!(
            Decision::Commit.statement("regionguard:p:1:eu"),
            "COMMIT PREPARED 'regionguard:p:1:eu'"
        );
        assert_eq!(
            Decision::Abort.statement("regionguard:p:1:eu"),
            "ROLLBACK PREPARED 'regionguard:p:1:eu'"
        );
    }
}
