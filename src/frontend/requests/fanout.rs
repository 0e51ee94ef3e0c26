//! Statements that reach every region (ADR 10): DDL and writes to global
//! tables. Applications run migrations through their `DATABASE_URL`, so the
//! schema and the global tables must change everywhere or nowhere.
//!
//! - Outside a transaction the statement (a simple Query, or an extended
//!   batch up to Sync) runs in every region between an injected `BEGIN` and
//!   `PREPARE TRANSACTION '<gid>'`; when every region prepared it the
//!   decision is logged and each region commits (`COMMIT PREPARED`),
//!   otherwise each rolls back. The client gets one answer.
//! - Inside a transaction the transaction joins every region (BEGIN is sent
//!   where it had not run yet) and becomes [`Txn::Fanned`]: statements that
//!   change every region go to all of them, tenant statements to their own
//!   region, the rest to the primary one; COMMIT is two-phase.
//! - Forms that cannot run in a transaction block (`CREATE INDEX
//!   CONCURRENTLY`, …) run in every region without atomicity, and a partial
//!   failure says where it was applied and where not.
//!
//! The request pump waits for the regions' answers (through
//! [`Expect::Collect`]) before it reads further requests: the outcome
//! decides what comes next.

use super::{Quit, Requests, Txn, FAIL_QUERY};
use crate::frontend::expect::{Collected, Expect};
use crate::frontend::fanout as answer;
use crate::frontend::route;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::messages;
use crate::routing::twophase::{DecideError, Decision};
use crate::sql::{ddl_forms, DdlForm, StatementKind, StatementPlan, TenantRequirement};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// How a statement that reaches every region is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FanMode {
    /// Outside a transaction: two-phase commit of this statement alone.
    Atomic,
    /// Inside the client's transaction, which runs in every region.
    InTransaction,
    /// Cannot run in a transaction block (named): region by region.
    Unwrapped(&'static str),
}

/// A statement (or extended batch) on its way to every region.
pub(super) struct FanBatch {
    pub mode: FanMode,
    /// Every configured region, the primary (whose answer the client gets
    /// when all succeed) first.
    pub regions: Vec<Arc<str>>,
    /// Batches queued in each region ahead of the client's (an injected
    /// BEGIN), by position in `regions`.
    lead: Vec<usize>,
    /// The proxy refused a statement of the batch: every region fails it
    /// on purpose and shows the proxy's error.
    pub refused: bool,
}

/// What one region made of the statement.
struct RegionRun {
    region: Arc<str>,
    /// Its answer to the client's statement (plus any failed lead batch).
    answer: BytesMut,
    failed: bool,
    prepare: Prepare,
    lost: Option<String>,
    /// Transaction status after the last batch answered.
    status: u8,
}

#[derive(Debug)]
enum Prepare {
    NotAsked,
    Prepared,
    /// The transaction had failed: PREPARE rolled it back.
    RolledBack,
    Failed(BytesMut),
    /// No answer (the connection broke).
    Missing,
}

impl RegionRun {
    /// Reads `lead` injected batches, the client's, and (with `prepared`)
    /// the PREPARE TRANSACTION's answer.
    fn new(c: Collected, lead: usize, prepared: bool) -> RegionRun {
        let mut batches = c.batches.into_iter();
        let mut answer = BytesMut::new();
        let mut failed = false;
        for _ in 0..lead {
            if let Some(b) = batches.next() {
                if answer::first_error(&b).is_some() {
                    // The BEGIN sent ahead failed: show that.
                    failed = true;
                    answer.extend_from_slice(&b);
                }
            }
        }
        let mut status = b'I';
        if let Some(b) = batches.next() {
            failed |= answer::first_error(&b).is_some();
            status = ready_status(&b).unwrap_or(b'I');
            if answer.is_empty() {
                answer = b;
            }
        }
        let prepare = if prepared {
            match batches.next() {
                None => Prepare::Missing,
                Some(b) => {
                    status = ready_status(&b).unwrap_or(b'I');
                    read_prepare(b)
                }
            }
        } else {
            Prepare::NotAsked
        };
        RegionRun {
            region: c.region,
            answer,
            failed,
            prepare,
            lost: c.lost,
            status,
        }
    }

    /// Reads the answer to a PREPARE TRANSACTION sent on its own (COMMIT
    /// of a transaction that runs in every region).
    fn prepare_only(c: Collected) -> RegionRun {
        let (prepare, status) = match c.batches.into_iter().next() {
            None => (Prepare::Missing, b'I'),
            Some(b) => {
                let status = ready_status(&b).unwrap_or(b'I');
                (read_prepare(b), status)
            }
        };
        RegionRun {
            region: c.region,
            answer: BytesMut::new(),
            failed: matches!(prepare, Prepare::Failed(_)),
            prepare,
            lost: c.lost,
            status,
        }
    }
}

fn read_prepare(b: BytesMut) -> Prepare {
    if answer::first_error(&b).is_some() {
        Prepare::Failed(b)
    } else if answer::command_tags(&b)
        .iter()
        .any(|t| t == "PREPARE TRANSACTION")
    {
        Prepare::Prepared
    } else {
        Prepare::RolledBack
    }
}

/// The status byte of the last ReadyForQuery among `bytes`.
fn ready_status(bytes: &[u8]) -> Option<u8> {
    let mut frames = Vec::new();
    crate::protocol::framing::scan(bytes, i32::MAX as usize, &mut frames).ok()?;
    frames
        .iter()
        .rev()
        .find(|f| f.tag == b'Z')
        .and_then(|f| f.body(bytes).first().copied())
}

fn prepare_sql(gid: &str) -> String {
    format!("PREPARE TRANSACTION {}", crate::localpg::quote_literal(gid))
}

/// The hint of every refusal that mixes kinds of statements.
const SEPARATE: &str = "send statements that change the schema or global tables in queries (or pipeline batches) of their own";

impl Requests {
    /// Every configured region, the primary first: the transaction's
    /// region, else the session's.
    fn fan_regions(&self) -> Vec<Arc<str>> {
        let primary = match &self.txn {
            Txn::Pinned(r) | Txn::Fanned { primary: r } => r.clone(),
            _ => self.neutral_region(&self.tenant),
        };
        let mut regions = vec![primary.clone()];
        regions.extend(
            self.shared
                .regions
                .keys()
                .filter(|r| **r != primary)
                .cloned(),
        );
        regions
    }

    /// Whether `plan` must reach every region.
    fn reaches_everywhere(&self, plan: &StatementPlan, form: DdlForm) -> bool {
        match &plan.kind {
            StatementKind::Ddl => form != DdlForm::SessionLocal,
            StatementKind::Unparsed { .. } => {
                plan.tenant == TenantRequirement::None
                    && matches!(form, DdlForm::Transactional | DdlForm::NonTransactional(_))
            }
            StatementKind::Savepoint
            | StatementKind::Release
            | StatementKind::RollbackToSavepoint => matches!(self.txn, Txn::Fanned { .. }),
            _ => plan.writes_global,
        }
    }

    /// How the statements of `text` must be applied when one of them
    /// reaches every region (`None`: the usual single-region path).
    /// Refuses mixes that cannot be applied that way.
    pub(super) fn fan_mode(
        &self,
        text: &str,
        plans: &[StatementPlan],
        in_fan_batch: bool,
    ) -> Result<Option<FanMode>, PgError> {
        if self.shared.regions.len() < 2 {
            return Ok(None);
        }
        let parsed_as_ddl = |p: &StatementPlan| {
            matches!(p.kind, StatementKind::Ddl | StatementKind::Unparsed { .. })
        };
        let forms = if plans.iter().any(parsed_as_ddl) {
            ddl_forms(text)
        } else {
            Vec::new()
        };
        let form_of = |i: usize, p: &StatementPlan| match forms.get(i) {
            Some(f) if forms.len() == plans.len() => *f,
            _ if p.kind == StatementKind::Ddl => DdlForm::Transactional,
            _ => DdlForm::NotDdl,
        };
        let everywhere: Vec<bool> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| self.reaches_everywhere(p, form_of(i, p)))
            .collect();
        if !everywhere.iter().any(|e| *e) {
            return Ok(None);
        }
        let mut unwrapped = None;
        for (i, plan) in plans.iter().enumerate() {
            if let StatementKind::Copy {
                table: Some(table), ..
            } = &plan.kind
            {
                if plan.writes_global {
                    return Err(PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("COPY into global table {table} is not supported: it would have to reach every region"),
                    )
                    .with_hint("load global tables with INSERT (a multi-row INSERT … VALUES is fine); it is applied to every region"));
                }
            }
            if let TenantRequirement::Refuse { .. } = plan.tenant {
                // Its own refusal says why.
                continue;
            }
            if everywhere[i] {
                if let DdlForm::NonTransactional(name) = form_of(i, plan) {
                    unwrapped = Some(name);
                }
                continue;
            }
            let alone = match &plan.kind {
                StatementKind::Begin
                | StatementKind::Commit
                | StatementKind::Rollback
                | StatementKind::Savepoint
                | StatementKind::Release
                | StatementKind::RollbackToSavepoint
                | StatementKind::TwoPhase
                | StatementKind::SetTenant { .. }
                | StatementKind::ShowTenant
                | StatementKind::Copy { .. } => true,
                _ => plan.tenant != TenantRequirement::None || plan.comment_tenant.is_some(),
            };
            if alone {
                return Err(route::refusal(
                    "a query that changes the schema or a global table in every region may not also control the transaction or touch tenant data",
                    SEPARATE,
                ));
            }
        }
        if let Some(name) = unwrapped {
            if plans.len() > 1 || in_fan_batch {
                return Err(PgError::error(
                    "25001",
                    format!("{name} must be sent on its own"),
                )
                .with_hint(format!("{name} cannot run inside a transaction block; RegionGuard applies it to every region one by one, so send it as a query (or pipeline batch) of its own")));
            }
            if self.txn != Txn::Idle {
                return Err(PgError::error(
                    "25001",
                    format!("{name} cannot run inside a transaction block"),
                )
                .with_hint("commit or roll back the transaction first"));
            }
            return Ok(Some(FanMode::Unwrapped(name)));
        }
        Ok(Some(if self.txn == Txn::Idle {
            FanMode::Atomic
        } else {
            FanMode::InTransaction
        }))
    }

    /// Opens every region and sends BEGIN where the statement needs one.
    /// A region that cannot be reached refuses the statement before any
    /// region saw it.
    pub(super) async fn start_fan(&mut self, mode: FanMode) -> Result<FanBatch, PgError> {
        let regions = self.fan_regions();
        for region in &regions {
            if let Err(e) = self.open(region).await {
                return Err(PgError {
                    detail: Some("A statement that changes the schema or a global table goes to every region; it was applied in none.".into()),
                    hint: Some(format!("retry when region {region} is reachable again")),
                    ..e
                });
            }
        }
        let mut lead = vec![0; regions.len()];
        let begin: Option<(String, Option<Arc<str>>)> = match (mode, &self.txn) {
            (FanMode::Atomic, _) => Some(("BEGIN".into(), None)),
            (FanMode::InTransaction, Txn::Held { begin }) => Some((
                if begin.is_empty() {
                    "BEGIN".into()
                } else {
                    begin.clone()
                },
                None,
            )),
            (FanMode::InTransaction, Txn::Pinned(p)) => {
                Some((self.begin_sql.clone(), Some(p.clone())))
            }
            _ => None,
        };
        if let Some((sql, skip)) = begin {
            for (i, region) in regions.iter().enumerate() {
                if skip.as_ref() == Some(region) {
                    continue;
                }
                if let Some(b) = self.backends.existing(region) {
                    b.push_query(&sql);
                    lead[i] = 1;
                }
            }
            if mode == FanMode::InTransaction {
                self.begin_sql = sql;
            }
        }
        if mode == FanMode::InTransaction {
            self.txn = Txn::Fanned {
                primary: regions[0].clone(),
            };
        }
        tracing::debug!(
            ?mode,
            regions = regions.len(),
            "statement goes to every region"
        );
        Ok(FanBatch {
            mode,
            regions,
            lead,
            refused: false,
        })
    }

    /// Sends `msg` (whole messages) to every region of `fan`.
    pub(super) fn fan_push(&mut self, fan: &FanBatch, msg: &[u8], batch_end: bool) {
        for region in &fan.regions {
            if let Some(b) = self.backends.existing(region) {
                if batch_end {
                    b.push_batch_end(msg);
                } else {
                    b.push(msg);
                }
            }
        }
    }

    /// Sends the queued batches and waits for every region's answers.
    async fn collect(&mut self, counts: Vec<(Arc<str>, usize)>) -> Result<Vec<Collected>, Quit> {
        for region in self.backends.flush_all().await {
            // The response side finds the broken connection while reading.
            tracing::debug!(%region, "write to a backend failed");
        }
        let (reply, answers) = tokio::sync::oneshot::channel();
        if self
            .expect
            .send(Expect::Collect {
                regions: counts,
                reply,
            })
            .is_err()
        {
            return Err(Quit);
        }
        answers.await.map_err(|_| Quit)
    }

    // ---- simple query ---------------------------------------------------

    /// A simple query that reaches every region, or COMMIT/ROLLBACK of a
    /// transaction that does; `false` when the usual path takes it.
    pub(super) async fn fan_query(
        &mut self,
        msg: &Bytes,
        sql: &str,
        plans: &[StatementPlan],
    ) -> Result<bool, Quit> {
        if let Txn::Fanned { .. } = self.txn {
            let ends = |p: &StatementPlan| {
                matches!(p.kind, StatementKind::Commit | StatementKind::Rollback)
            };
            match plans {
                [p] if ends(p) => {
                    let (mut out, _) = self.end_fanned(p.kind == StatementKind::Commit).await?;
                    messages::ready_for_query(&mut out, b'I');
                    self.local(out);
                    return Ok(true);
                }
                _ if plans.iter().any(ends) => {
                    self.refuse_query(route::refusal(
                        "a transaction that runs in every region must end with COMMIT or ROLLBACK on its own",
                        "send COMMIT (or ROLLBACK) as a query of its own",
                    ))
                    .await?;
                    return Ok(true);
                }
                _ => {}
            }
        }
        let mode = match self.fan_mode(sql, plans, false) {
            Ok(None) => return Ok(false),
            Ok(Some(mode)) => mode,
            Err(e) => {
                self.refuse_query(e).await?;
                return Ok(true);
            }
        };
        for plan in plans {
            let refused = match super::encrypt::refusal(&plan.crypto) {
                Some(e) => Err(e),
                None => route::place(&self.shared, plan, None, self.tenant.effective())
                    .await
                    .map(|_| ()),
            };
            if let Err(e) = refused {
                self.refuse_query(e).await?;
                return Ok(true);
            }
        }
        let fan = match self.start_fan(mode).await {
            Ok(fan) => fan,
            Err(e) => {
                self.refuse_query(e).await?;
                return Ok(true);
            }
        };
        self.fan_push(&fan, msg, true);
        self.last_region = fan.regions[0].clone();
        self.finish_fan(fan).await?;
        if plans.iter().any(|p| p.kind == StatementKind::Ddl) {
            self.note_ddl();
        }
        Ok(true)
    }

    // ---- extended protocol ----------------------------------------------

    /// Binds a statement in every region of the batch, starting the
    /// batch's fan-out with `mode` if this is its first statement.
    pub(super) async fn bind_fanned(
        &mut self,
        msg: &Bytes,
        statement: &str,
        portal: String,
        mode: Option<FanMode>,
    ) -> Result<(), Quit> {
        if self.batch.fan.is_none() {
            let Some(mode) = mode else {
                return Ok(());
            };
            if self.batch.region.is_some() || self.batch.hint.is_some() {
                return self
                    .fail_batch(route::refusal(
                        "a statement that changes the schema or a global table in every region must start its own pipeline batch",
                        "send Sync before it (most drivers do, one statement per batch)",
                    ))
                    .await;
            }
            let fan = match self.start_fan(mode).await {
                Ok(fan) => fan,
                Err(e) => return self.fail_batch(e).await,
            };
            let held = std::mem::take(&mut self.batch.held);
            for region in &fan.regions {
                let Some(b) = self.backends.existing(region) else {
                    continue;
                };
                for (msg, parse, describe) in &held {
                    super::extended::note_sent(b, msg, parse.as_deref(), describe.as_ref());
                    b.push(msg);
                }
            }
            self.batch.region = Some(fan.regions[0].clone());
            self.last_region = fan.regions[0].clone();
            self.batch.fan = Some(fan);
        }
        let regions = self
            .batch
            .fan
            .as_ref()
            .map(|f| f.regions.clone())
            .unwrap_or_default();
        for region in &regions {
            self.ensure_prepared(region, statement).await?;
            if let Some(b) = self.backends.existing(region) {
                b.push(msg);
            }
        }
        self.portals.insert(
            portal,
            super::PortalTarget::Region {
                region: regions[0].clone(),
                copy_in: false,
                keys: None,
                copy: None,
            },
        );
        Ok(())
    }

    /// A statement bound in a batch that already goes to every region:
    /// it goes there too, if it touches no tenant data.
    pub(super) async fn bind_in_fan_batch(
        &mut self,
        msg: &Bytes,
        statement: &str,
        portal: String,
        in_region: bool,
        plan: Option<&StatementPlan>,
    ) -> Result<(), Quit> {
        let control = plan.is_some_and(|p| {
            matches!(
                p.kind,
                StatementKind::Begin
                    | StatementKind::Commit
                    | StatementKind::Rollback
                    | StatementKind::SetTenant { .. }
                    | StatementKind::Copy { .. }
            )
        });
        if in_region || control {
            return self
                .fail_batch(route::refusal(
                    "a pipeline batch that changes the schema or a global table in every region may not also control the transaction or touch tenant data",
                    SEPARATE,
                ))
                .await;
        }
        self.bind_fanned(msg, statement, portal, None).await
    }

    /// Sync of a batch that went to every region.
    pub(super) async fn sync_fanned(&mut self, msg: &Bytes, fan: FanBatch) -> Result<(), Quit> {
        self.fan_push(&fan, msg, true);
        self.finish_fan(fan).await
    }

    // ---- outcome ----------------------------------------------------------

    /// Waits for every region's answer to the statement just queued and
    /// settles it: commit or roll back everywhere, and answer the client.
    pub(super) async fn finish_fan(&mut self, fan: FanBatch) -> Result<(), Quit> {
        let gid = (fan.mode == FanMode::Atomic).then(|| self.shared.twophase.new_gid());
        if let Some(gid) = &gid {
            for region in &fan.regions {
                if let Some(b) = self.backends.existing(region) {
                    b.push_query(&prepare_sql(gid.as_str()));
                }
            }
        }
        let extra = usize::from(gid.is_some());
        let counts = fan
            .regions
            .iter()
            .zip(&fan.lead)
            .map(|(r, lead)| (r.clone(), lead + 1 + extra))
            .collect();
        let collected = self.collect(counts).await?;
        let runs: Vec<RegionRun> = collected
            .into_iter()
            .zip(&fan.lead)
            .map(|(c, lead)| RegionRun::new(c, *lead, gid.is_some()))
            .collect();
        let out = match (fan.mode, gid) {
            (FanMode::Atomic, Some(gid)) => {
                self.settle_atomic(runs, gid.as_str(), fan.refused).await?
            }
            (FanMode::Unwrapped(name), _) => settle_unwrapped(&runs, name),
            _ => self.settle_in_transaction(runs, fan.refused).await,
        };
        self.local(out);
        Ok(())
    }

    /// Outside a transaction: commit where every region prepared, else
    /// roll back everywhere. Returns the client's answer.
    async fn settle_atomic(
        &mut self,
        runs: Vec<RegionRun>,
        gid: &str,
        refused: bool,
    ) -> Result<BytesMut, Quit> {
        let everywhere = names(&runs);
        let all_prepared = !refused
            && runs
                .iter()
                .all(|r| matches!(r.prepare, Prepare::Prepared) && r.lost.is_none());
        let rolled_back = format!(
            "RegionGuard applies this statement to every region ({everywhere}) with two-phase commit; it was rolled back in all of them."
        );
        if !all_prepared {
            self.roll_back(&runs, gid).await?;
            let mut out = if refused {
                answer::without_ready(&runs[0].answer)
            } else {
                failure_answer(&runs, &rolled_back)
            };
            answer::ready(&mut out, b'I');
            return Ok(out);
        }
        let decision = self.shared.twophase.decide_commit(gid).await;
        let primary = &runs[0];
        let mut out = answer::without_ready(&primary.answer);
        match decision {
            Ok(Decision::Commit) => {
                let warnings = self.commit_prepared(&runs, gid).await?;
                out.extend_from_slice(&warnings);
                out.extend_from_slice(&differing_tags(&runs));
            }
            Ok(Decision::Abort) => {
                self.roll_back(&runs, gid).await?;
                answer::error(
                    &mut out,
                    "40000",
                    "the statement was rolled back in every region: RegionGuard's recovery decided to abort it while its commit was pending",
                    &rolled_back,
                    "retry the statement",
                );
            }
            Err(DecideError::NotRecorded(e)) => {
                self.roll_back(&runs, gid).await?;
                let region = self.shared.twophase.decision_region().clone();
                answer::error(
                    &mut out,
                    "40000",
                    &format!("could not record the commit decision in region {region}: {e}"),
                    &rolled_back,
                    &format!("RegionGuard logs commit decisions in regionguard.twophase_decisions in region {region}'s database; its role there needs to create or write that table"),
                );
            }
            Err(DecideError::Unknown(e)) => {
                self.shared.twophase.resolve_soon(gid.to_string());
                answer::error(
                    &mut out,
                    "40003",
                    &format!("the outcome of the statement is not known yet: {e}"),
                    &format!("Every region ({everywhere}) prepared it; RegionGuard commits or rolls it back in all of them once its decision log is reachable (transaction {gid})."),
                    "check whether the change is there before retrying it",
                );
            }
        }
        answer::ready(&mut out, b'I');
        Ok(out)
    }

    /// Commits `gid` in every region; returns warnings for the regions
    /// that did not confirm it (recovery completes them).
    async fn commit_prepared(&mut self, runs: &[RegionRun], gid: &str) -> Result<BytesMut, Quit> {
        let sql = Decision::Commit.statement(gid);
        let mut counts = Vec::new();
        let mut pending = Vec::new();
        let mut warnings = BytesMut::new();
        for run in runs {
            match self
                .backends
                .get(&run.region, &self.shared, &self.expect)
                .await
            {
                Ok(b) => {
                    b.push_query(&sql);
                    counts.push((run.region.clone(), 1));
                }
                Err(e) => {
                    pending.push(run.region.clone());
                    answer::warning(
                        &mut warnings,
                        "01000",
                        &format!("region {} has not confirmed the commit yet: {}", run.region, e.message),
                        Some(&format!("The statement is committed (the decision is logged); RegionGuard completes transaction {gid} in region {} as soon as it can.", run.region)),
                    );
                }
            }
        }
        let collected = self.collect(counts).await?;
        for c in &collected {
            let batch = c.batches.first();
            let done = batch.is_some_and(|b| {
                answer::command_tags(b)
                    .iter()
                    .any(|t| t == "COMMIT PREPARED")
                    || answer::first_error(b).is_some_and(|e| e.code == "42704")
            });
            if !done {
                let reason = batch
                    .and_then(|b| answer::first_error(b))
                    .map(|e| e.message)
                    .or_else(|| c.lost.clone())
                    .unwrap_or_else(|| "no answer".into());
                pending.push(c.region.clone());
                answer::warning(
                    &mut warnings,
                    "01000",
                    &format!("region {} has not confirmed the commit yet: {reason}", c.region),
                    Some(&format!("The statement is committed (the decision is logged); RegionGuard completes transaction {gid} in region {} as soon as it can.", c.region)),
                );
            }
        }
        let confirmed = collected.len() == runs.len() && pending.is_empty();
        if confirmed {
            let twophase = self.shared.twophase.clone();
            let gid = gid.to_string();
            tokio::spawn(async move { twophase.forget(&gid).await });
        } else {
            tracing::warn!(gid, regions = %answer::list(&pending), "commit not confirmed everywhere; recovery completes it");
            self.shared.twophase.resolve_soon(gid.to_string());
        }
        Ok(warnings)
    }

    /// Rolls back every region's share of `gid`: the prepared transaction
    /// where it was prepared, the open one where a failure left it open.
    async fn roll_back(&mut self, runs: &[RegionRun], gid: &str) -> Result<(), Quit> {
        let mut counts = Vec::new();
        let mut unsure = false;
        for run in runs {
            let sql = match (&run.prepare, run.lost.is_some()) {
                (_, true) | (Prepare::Missing, _) => {
                    // It may have prepared before the connection broke.
                    unsure = true;
                    continue;
                }
                (Prepare::Prepared, _) => Decision::Abort.statement(gid),
                _ if run.status != b'I' => "ROLLBACK".to_string(),
                _ => continue,
            };
            if let Some(b) = self.backends.existing(&run.region) {
                b.push_query(&sql);
                counts.push((run.region.clone(), 1));
            }
        }
        if !counts.is_empty() {
            let collected = self.collect(counts).await?;
            unsure |= collected.iter().any(|c| {
                c.lost.is_some()
                    || c.batches
                        .first()
                        .and_then(|b| answer::first_error(b))
                        .is_some()
            });
        }
        if unsure {
            self.shared.twophase.resolve_soon(gid.to_string());
        }
        Ok(())
    }

    /// Inside the client's transaction: a failure in one region fails the
    /// transaction in all of them, as one server would.
    async fn settle_in_transaction(&mut self, runs: Vec<RegionRun>, refused: bool) -> BytesMut {
        let ok = !refused && runs.iter().all(|r| !r.failed && r.lost.is_none());
        if ok {
            let mut out = answer::without_ready(&runs[0].answer);
            out.extend_from_slice(&differing_tags(&runs));
            answer::ready(&mut out, runs[0].status);
            return out;
        }
        // Every region's share of the transaction fails; the others are made
        // to fail on purpose, so a later statement anywhere gets 25P02.
        for run in &runs {
            if run.failed || run.lost.is_some() || refused {
                continue;
            }
            if let Some(b) = self.backends.existing(&run.region) {
                b.push_query(FAIL_QUERY);
                let _ = self.expect.send(Expect::Discard {
                    region: run.region.clone(),
                });
            }
        }
        let mut out = if refused {
            answer::without_ready(&runs[0].answer)
        } else {
            failure_answer(
                &runs,
                "The transaction runs in every region; it is now aborted in all of them.",
            )
        };
        answer::ready(&mut out, b'E');
        out
    }

    /// COMMIT or ROLLBACK of a transaction that runs in every region.
    /// Returns the answer (without ReadyForQuery) and whether it is an error.
    pub(super) async fn end_fanned(&mut self, commit: bool) -> Result<(BytesMut, bool), Quit> {
        let regions = self.fan_regions();
        self.txn = Txn::Idle;
        self.tenant.local = None;
        let mut out = BytesMut::new();
        if !commit {
            let mut counts = Vec::new();
            for region in &regions {
                if let Some(b) = self.backends.existing(region) {
                    b.push_query("ROLLBACK");
                    counts.push((region.clone(), 1));
                }
            }
            self.collect(counts).await?;
            messages::command_complete(&mut out, "ROLLBACK");
            return Ok((out, false));
        }
        let in_flight = self.shared.twophase.new_gid();
        let gid = in_flight.as_str().to_string();
        let mut counts = Vec::new();
        let mut missing = Vec::new();
        for region in &regions {
            match self.backends.existing(region) {
                Some(b) if !b.shared.dead.load(std::sync::atomic::Ordering::Acquire) => {
                    b.push_query(&prepare_sql(&gid));
                    counts.push((region.clone(), 1));
                }
                _ => missing.push(region.clone()),
            }
        }
        let collected = self.collect(counts).await?;
        let mut runs: Vec<RegionRun> = collected.into_iter().map(RegionRun::prepare_only).collect();
        for region in missing {
            runs.push(RegionRun {
                region,
                answer: BytesMut::new(),
                failed: false,
                prepare: Prepare::Missing,
                lost: Some("the connection was lost during the transaction".into()),
                status: b'I',
            });
        }
        let all_prepared = runs
            .iter()
            .all(|r| matches!(r.prepare, Prepare::Prepared) && r.lost.is_none());
        let everywhere = names(&runs);
        let rolled_back = format!(
            "The transaction ran in every region ({everywhere}); it was rolled back in all of them."
        );
        if !all_prepared {
            self.roll_back(&runs, &gid).await?;
            if let Some(run) = runs
                .iter()
                .find(|r| r.lost.is_none() && matches!(r.prepare, Prepare::Failed(_)))
            {
                if let Prepare::Failed(bytes) = &run.prepare {
                    return Ok((prepare_failure(&run.region, bytes, &rolled_back), true));
                }
            }
            if let Some(run) = runs.iter().find(|r| r.lost.is_some()) {
                lost_error(&mut out, run, &rolled_back);
                return Ok((out, true));
            }
            // A failed transaction: COMMIT rolls back, as in Postgres.
            messages::command_complete(&mut out, "ROLLBACK");
            return Ok((out, false));
        }
        match self.shared.twophase.decide_commit(&gid).await {
            Ok(Decision::Commit) => {
                let warnings = self.commit_prepared(&runs, &gid).await?;
                out.extend_from_slice(&warnings);
                messages::command_complete(&mut out, "COMMIT");
                Ok((out, false))
            }
            Ok(Decision::Abort) => {
                self.roll_back(&runs, &gid).await?;
                answer::error(&mut out, "40000", "the transaction was rolled back in every region: RegionGuard's recovery decided to abort it while its commit was pending", &rolled_back, "retry the transaction");
                Ok((out, true))
            }
            Err(DecideError::NotRecorded(e)) => {
                self.roll_back(&runs, &gid).await?;
                let region = self.shared.twophase.decision_region().clone();
                answer::error(
                    &mut out,
                    "40000",
                    &format!("could not record the commit decision in region {region}: {e}"),
                    &rolled_back,
                    &format!("RegionGuard logs commit decisions in regionguard.twophase_decisions in region {region}'s database; its role there needs to create or write that table"),
                );
                Ok((out, true))
            }
            Err(DecideError::Unknown(e)) => {
                self.shared.twophase.resolve_soon(gid.clone());
                answer::error(
                    &mut out,
                    "40003",
                    &format!("the outcome of the transaction is not known yet: {e}"),
                    &format!("Every region ({everywhere}) prepared it; RegionGuard commits or rolls it back in all of them once its decision log is reachable (transaction {gid})."),
                    "check whether the changes are there before retrying",
                );
                Ok((out, true))
            }
        }
    }
}

/// `eu, us and apac`.
fn names(runs: &[RegionRun]) -> String {
    let names: Vec<&str> = runs.iter().map(|r| &*r.region).collect();
    answer::list(&names)
}

/// The answer when some region failed: that region's own error, naming
/// it; else the error of a region whose PREPARE failed; else the lost
/// region's. Everything before the error is the primary's answer.
fn failure_answer(runs: &[RegionRun], detail: &str) -> BytesMut {
    if same_failure_everywhere(runs) {
        // As one server would have failed: nothing to tell apart.
        return answer::without_ready(&runs[0].answer);
    }
    if let Some(run) = runs
        .iter()
        .find(|r| r.failed && r.lost.is_none() && answer::first_error(&r.answer).is_some())
    {
        let named = answer::name_region_in_error(&run.answer, &run.region, detail, "");
        return answer::without_ready(&named);
    }
    if let Some(run) = runs
        .iter()
        .find(|r| r.lost.is_none() && matches!(r.prepare, Prepare::Failed(_)))
    {
        if let Prepare::Failed(bytes) = &run.prepare {
            let mut out = answer::without_ready(&runs[0].answer);
            out.extend_from_slice(&prepare_failure(&run.region, bytes, detail));
            return out;
        }
    }
    let base = runs
        .iter()
        .find(|r| r.lost.is_none() && !r.answer.is_empty())
        .map(|r| answer::without_ready(&r.answer))
        .unwrap_or_default();
    let mut out = base;
    match runs.iter().find(|r| r.lost.is_some()) {
        Some(run) => lost_error(&mut out, run, detail),
        None => answer::error(
            &mut out,
            sqlstate::INTERNAL_ERROR,
            "the statement could not be applied in every region",
            detail,
            "retry the statement",
        ),
    }
    out
}

/// Whether every region failed the client's statement with the same
/// error: then the primary's answer is relayed as it is, so the client sees
/// exactly what one server would have said.
fn same_failure_everywhere(runs: &[RegionRun]) -> bool {
    let first = runs.first().and_then(|r| answer::first_error(&r.answer));
    first.is_some()
        && runs
            .iter()
            .all(|r| r.failed && r.lost.is_none() && answer::first_error(&r.answer) == first)
}

/// The error for a region whose connection broke. Its own FATAL error (a
/// server shutting down, a terminated backend) becomes the reason: the
/// client's session goes on, so it gets an ERROR.
fn lost_error(out: &mut BytesMut, run: &RegionRun, detail: &str) {
    let reason = answer::first_error(&run.answer)
        .map(|e| e.message)
        .or_else(|| run.lost.clone())
        .unwrap_or_else(|| "no answer".into());
    answer::error(
        out,
        sqlstate::CONNECTION_FAILURE,
        &format!(
            "region {}: connection lost while applying the statement: {reason}",
            run.region,
        ),
        detail,
        &format!("retry when region {} is reachable again", run.region),
    );
}

/// The error of a region whose PREPARE TRANSACTION failed; a region that
/// does not allow prepared transactions gets a hint naming the setting.
fn prepare_failure(region: &str, bytes: &[u8], detail: &str) -> BytesMut {
    let e = answer::first_error(bytes);
    if e.as_ref().is_some_and(|e| e.code == "55000") {
        let mut out = BytesMut::new();
        let message = e.map(|e| e.message).unwrap_or_default();
        answer::error(
            &mut out,
            "55000",
            &format!("region {region} does not allow two-phase commit ({message})"),
            detail,
            &format!("set max_prepared_transactions above zero (as high as max_connections is safe) in region {region}'s postgresql.conf and restart it: RegionGuard applies DDL and writes to global tables to every region with PREPARE TRANSACTION"),
        );
        return out;
    }
    answer::without_ready(&answer::name_region_in_error(bytes, region, detail, ""))
}

/// Region by region, without atomicity: where it failed, the error says
/// where it was applied.
fn settle_unwrapped(runs: &[RegionRun], name: &str) -> BytesMut {
    let applied: Vec<&str> = runs
        .iter()
        .filter(|r| !r.failed && r.lost.is_none())
        .map(|r| &*r.region)
        .collect();
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| r.failed || r.lost.is_some())
        .map(|r| &*r.region)
        .collect();
    if failed.is_empty() || same_failure_everywhere(runs) {
        let mut out = answer::without_ready(&runs[0].answer);
        out.extend_from_slice(&differing_tags(runs));
        answer::ready(&mut out, b'I');
        return out;
    }
    let detail = format!(
        "{name} cannot run inside a transaction block, so RegionGuard applies it region by region: applied in {}; failed in {}.",
        if applied.is_empty() { "none".to_string() } else { answer::list(&applied) },
        answer::list(&failed)
    );
    let hint = "fix the cause and run it again (IF NOT EXISTS / IF EXISTS make it safe to repeat where it was applied)";
    let mut out = match runs
        .iter()
        .find(|r| r.failed && r.lost.is_none() && answer::first_error(&r.answer).is_some())
    {
        Some(run) => answer::without_ready(&answer::name_region_in_error(
            &run.answer,
            &run.region,
            &detail,
            hint,
        )),
        None => {
            let mut out = answer::without_ready(&runs[0].answer);
            if let Some(run) = runs.iter().find(|r| r.lost.is_some()) {
                lost_error(&mut out, run, &detail);
            }
            out
        }
    };
    answer::ready(&mut out, b'I');
    out
}

/// A warning when the regions' command tags differ: their copies of a
/// global table do not hold the same rows.
fn differing_tags(runs: &[RegionRun]) -> BytesMut {
    let mut out = BytesMut::new();
    let tags: Vec<(&str, Vec<String>)> = runs
        .iter()
        .map(|r| (&*r.region, answer::command_tags(&r.answer)))
        .collect();
    if tags.windows(2).all(|w| w[0].1 == w[1].1) {
        return out;
    }
    let each: Vec<String> = tags
        .iter()
        .map(|(r, t)| format!("{r}: {}", t.join(", ")))
        .collect();
    tracing::warn!(answers = %each.join("; "), "regions answered a statement applied everywhere differently");
    answer::warning(
        &mut out,
        "01000",
        "the regions answered differently: their copies of a global table differ",
        Some(&format!(
            "{}. The client sees the first region's answer.",
            each.join("; ")
        )),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(tag: &str, error: Option<(&str, &str)>, status: u8) -> BytesMut {
        let mut b = BytesMut::new();
        messages::parse_complete(&mut b);
        match error {
            Some((code, message)) => answer::error(&mut b, code, message, "", ""),
            None => messages::command_complete(&mut b, tag),
        }
        messages::ready_for_query(&mut b, status);
        b
    }

    fn run(region: &str, own: BytesMut, prepare: BytesMut, lost: Option<&str>) -> RegionRun {
        let mut begin = BytesMut::new();
        messages::command_complete(&mut begin, "BEGIN");
        messages::ready_for_query(&mut begin, b'T');
        RegionRun::new(
            Collected {
                region: Arc::from(region),
                batches: vec![begin, own, prepare],
                lost: lost.map(str::to_string),
            },
            1,
            true,
        )
    }

    fn prepared() -> BytesMut {
        let mut b = BytesMut::new();
        messages::command_complete(&mut b, "PREPARE TRANSACTION");
        messages::ready_for_query(&mut b, b'I');
        b
    }

    fn rolled_back() -> BytesMut {
        let mut b = BytesMut::new();
        messages::command_complete(&mut b, "ROLLBACK");
        messages::ready_for_query(&mut b, b'I');
        b
    }

    #[test]
    fn reads_each_region_outcome() {
        let ok = run("eu", batch("CREATE TABLE", None, b'T'), prepared(), None);
        assert!(!ok.failed && matches!(ok.prepare, Prepare::Prepared));
        let bad = run(
            "us",
            batch("", Some(("42P07", "exists")), b'E'),
            rolled_back(),
            None,
        );
        assert!(bad.failed && matches!(bad.prepare, Prepare::RolledBack));
        assert_eq!(bad.status, b'I');
    }

    #[test]
    fn the_failing_region_is_named_unless_all_failed_alike() {
        let runs = vec![
            run("eu", batch("CREATE TABLE", None, b'T'), prepared(), None),
            run(
                "us",
                batch("", Some(("42P07", "exists")), b'E'),
                rolled_back(),
                None,
            ),
        ];
        let out = failure_answer(&runs, "rolled back");
        let e = answer::first_error(&out).expect("error");
        assert_eq!(e.code, "42P07");
        assert_eq!(e.message, "region us: exists");

        let same = vec![
            run(
                "eu",
                batch("", Some(("P0001", "custom")), b'E'),
                rolled_back(),
                None,
            ),
            run(
                "us",
                batch("", Some(("P0001", "custom")), b'E'),
                rolled_back(),
                None,
            ),
        ];
        let e = answer::first_error(&failure_answer(&same, "x")).expect("error");
        assert_eq!(e.message, "custom", "as one server would say it");
    }

    #[test]
    fn a_lost_region_is_an_error_not_fatal() {
        let mut fatal = BytesMut::new();
        answer::encode_fields(
            &mut fatal,
            b'E',
            &[
                (b'S', "FATAL".into()),
                (b'C', "57P01".into()),
                (b'M', "terminating connection".into()),
            ],
        );
        let runs = vec![
            run("eu", batch("CREATE TABLE", None, b'T'), prepared(), None),
            RegionRun::new(
                Collected {
                    region: Arc::from("apac"),
                    batches: vec![fatal],
                    lost: Some("server closed the connection".into()),
                },
                0,
                true,
            ),
        ];
        let out = failure_answer(&runs, "rolled back");
        let e = answer::first_error(&out).expect("error");
        assert_eq!(e.code, "08006");
        assert!(e.message.starts_with("region apac: "), "{}", e.message);
        assert!(
            e.message.contains("terminating connection"),
            "{}",
            e.message
        );
        let mut frames = Vec::new();
        crate::protocol::framing::scan(&out, 1 << 20, &mut frames).expect("frames");
        for f in frames.iter().filter(|f| f.tag == b'E') {
            let fields = answer::fields(f.body(&out));
            assert!(
                fields.iter().all(|(c, v)| *c != b'S' || v == "ERROR"),
                "{fields:?}"
            );
        }
    }

    #[test]
    fn a_partial_non_transactional_statement_says_where_it_applied() {
        let runs = vec![
            run("eu", batch("CREATE INDEX", None, b'I'), prepared(), None),
            run(
                "us",
                batch("", Some(("42P07", "exists")), b'I'),
                prepared(),
                None,
            ),
        ];
        let out = settle_unwrapped(&runs, "CREATE INDEX CONCURRENTLY");
        let body = String::from_utf8_lossy(&out);
        assert!(body.contains("applied in eu; failed in us"), "{body}");
    }
}
