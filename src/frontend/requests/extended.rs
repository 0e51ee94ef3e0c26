//! The extended query protocol: Parse, Bind, Describe, Execute, Close,
//! Flush and Sync, in batches that each run in one region.

use super::{aborted, apply_set, PortalTarget, Quit, Requests, Sealed, Stmt, Txn, FAIL_PORTAL};
use crate::frontend::encrypt;
use crate::frontend::expect::{Expect, RowUse};
use crate::frontend::route::{self, Params, Placement};
use crate::frontend::tenant_value;
use crate::protocol::error::PgError;
use crate::protocol::framing::HEADER_LEN;
use crate::protocol::frontend_msg;
use crate::protocol::messages;
use crate::sql::{Analysis, StatementKind, StatementPlan, TenantSource};
use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend;
use std::sync::Arc;

/// What a locally answered portal does when executed.
#[derive(Clone)]
pub(super) enum LocalAction {
    Begin(String),
    End { commit: bool },
    SetTenant { local: bool, value: Option<String> },
    ShowTenant,
}

/// A prepared statement's Parse sealed again after a key rotation, and how.
type Resealed = (Bytes, Arc<Sealed>);

/// A Parse message for `p` with `text` and the classified parameters'
/// types cleared (the server infers their storage types).
fn encode_parse(
    p: &frontend_msg::Parse<'_>,
    plan: &StatementPlan,
    text: &str,
) -> Result<Bytes, PgError> {
    let types =
        encrypt::parse_types(&p.param_types, &plan.crypto).unwrap_or_else(|| p.param_types.clone());
    let mut out = BytesMut::new();
    frontend::parse(p.name, text, types.iter().copied(), &mut out).map_err(|_| {
        PgError::error(
            crate::protocol::error::sqlstate::PROGRAM_LIMIT_EXCEEDED,
            "the statement with its encrypted values is too long",
        )
    })?;
    Ok(out.freeze())
}

/// The one statement of a prepared statement text (`None` when empty).
fn single(analysis: &Analysis) -> Option<&StatementPlan> {
    match analysis.statements.as_slice() {
        [plan] => Some(plan),
        _ => None,
    }
}

impl Requests {
    /// Whether this batch can still be answered by the proxy alone: nothing
    /// of it went to, or waits for, a backend.
    fn batch_is_local(&self) -> bool {
        self.batch.region.is_none() && self.batch.held.is_empty()
    }

    fn is_local_statement(&self, analysis: &Analysis) -> bool {
        let Some(plan) = single(analysis) else {
            return false;
        };
        match plan.kind {
            StatementKind::SetTenant { .. } | StatementKind::ShowTenant => true,
            StatementKind::Begin => self.txn == Txn::Idle,
            StatementKind::Commit | StatementKind::Rollback => {
                matches!(
                    self.txn,
                    Txn::Held { .. } | Txn::FailedHeld | Txn::Fanned { .. }
                )
            }
            _ => false,
        }
    }

    pub(super) async fn parse(&mut self, msg: &Bytes, body: &[u8]) -> Result<(), Quit> {
        if self.batch.skipping {
            return Ok(());
        }
        self.refresh_if_stale().await;
        let generation = self.shared.analysis.generation();
        let epoch = self
            .shared
            .rules_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        let name = frontend_msg::parse_name(body).map_err(|e| self.malformed(e))?;
        // The Parse the statement it replaces was prepared with, sent
        // unchanged (drivers send the unnamed statement's Parse again for
        // each execution): same text, same analysis, unless the tenancy
        // changed since (discovery invalidates the cache).
        let reused = self
            .statements
            .get(name)
            .filter(|s| {
                s.parse == *msg
                    && s.generation == generation
                    && s.epoch == epoch
                    && s.copy.is_none()
                    && s.analysis.statements.iter().all(|p| p.crypto.is_empty())
            })
            .map(|s| (s.analysis.clone(), s.local));
        let name = name.to_string();
        if let Some((analysis, was_local)) = &reused {
            let local = self.batch_is_local() && self.is_local_statement(analysis);
            if !local && !was_local {
                // Nothing to decode, analyse or record again: the entry
                // stands as it is. Nor to forget: wherever the statement is
                // prepared, it was prepared from these very bytes, and it
                // has no classified parameters whose types were kept.
                if let Err(e) = self.place_text(analysis).await {
                    return self.fail_batch(e).await;
                }
                return self.send_or_hold(msg.clone(), Some(name), None).await;
            }
        }
        self.backends.forget_statement(&name);
        let p = frontend_msg::parse(body).map_err(|e| self.malformed(e))?;
        let analysis = match reused {
            Some((analysis, _)) => analysis,
            None => self
                .shared
                .analysis
                .get_or_analyze(p.query, &self.shared.tenancy()),
        };
        if !name.is_empty() {
            // Its name would clash with another session's on a shared backend.
            self.keeps_state |= self.between_transactions;
        }
        self.note_session_state(p.query, &analysis.statements);
        let local = self.batch_is_local() && self.is_local_statement(&analysis);
        let placed = if local {
            None
        } else {
            match self.place_text(&analysis).await {
                Ok(placed) => placed,
                Err(e) => return self.fail_batch(e).await,
            }
        };
        let (parse, sealed) = match single(&analysis).filter(|p| !p.crypto.is_empty()) {
            Some(plan) => match self.encrypt_parse(msg, &p, plan, placed).await {
                Ok(done) => done,
                Err(e) => return self.fail_batch(e).await,
            },
            None => (msg.clone(), None),
        };
        // A COPY whose rows the proxy sees: where its rows' tenants and
        // classified columns are.
        let (parse, copy) = if local {
            (parse, None)
        } else {
            match self.plan_copy_parse(&analysis, &p, &parse).await {
                Ok(planned) => planned,
                Err(e) => return self.fail_batch(e).await,
            }
        };
        let standby_safe = self.standby_reads
            && !local
            && copy.is_none()
            && crate::sql::standby_safe(p.query, &analysis.statements);
        let sets_config = self.standby_reads && crate::sql::sets_config(p.query);
        self.statements.insert(
            name.clone(),
            Stmt {
                // A copy of its own: a slice would keep the whole read
                // buffer it came in alive as long as the statement lives.
                parse: Bytes::copy_from_slice(&parse),
                analysis,
                generation,
                epoch,
                types: p.param_types.as_slice().into(),
                local,
                sealed,
                copy,
                standby_safe,
                sets_config,
            },
        );
        if local {
            let mut out = BytesMut::new();
            messages::parse_complete(&mut out);
            self.local(out);
            return Ok(());
        }
        self.send_or_hold(parse, Some(name), None).await
    }

    /// Places what a prepared statement's text alone decides, so a
    /// statement is refused before it reaches any region and its literals
    /// only ever reach their own tenant's region: the region and tenants,
    /// or `None` when its parameters (or nothing) decide.
    async fn place_text(
        &mut self,
        analysis: &Analysis,
    ) -> Result<Option<(Arc<str>, Vec<String>)>, PgError> {
        // A statement without tenant data places nowhere (what
        // `route::place` finds for it, without the work).
        let Some(plan) = single(analysis).filter(|p| !p.is_neutral() && !route::needs_params(p))
        else {
            return Ok(None);
        };
        match route::place(&self.shared, plan, None, self.tenant.effective()).await? {
            (Placement::Region(r), tenants) => {
                if self.batch.fan.is_some() {
                    // Its text would reach every region of the batch.
                    return Err(route::refusal(
                        "a pipeline batch that changes the schema or a global table in every region may not also touch tenant data",
                        "send statements on tenant data in a pipeline batch of their own",
                    ));
                }
                if let Some(err) = self.conflict(&r) {
                    return Err(err);
                }
                if self.batch.hint.is_none() {
                    self.batch.hint = Some(r.clone());
                }
                Ok(Some((r, tenants)))
            }
            (Placement::Neutral, _) => Ok(None),
        }
    }

    /// The Parse to send for a statement that touches classified columns:
    /// its literals encrypted for the tenants the text places it with
    /// (`placed`), its comparisons with parameters rewritten to compare
    /// with arrays of envelopes, the types of its classified parameters
    /// cleared. `msg` is the Parse as the client sent it.
    async fn encrypt_parse(
        &mut self,
        msg: &Bytes,
        p: &frontend_msg::Parse<'_>,
        plan: &StatementPlan,
        placed: Option<(Arc<str>, Vec<String>)>,
    ) -> Result<(Bytes, Option<Arc<Sealed>>), PgError> {
        if let Some(e) = encrypt::refusal(&plan.crypto) {
            return Err(e);
        }
        let has_literals = plan
            .crypto
            .targets
            .iter()
            .any(|t| matches!(t.value, crate::sql::ValueSource::Literal { .. }));
        if has_literals {
            let Some((region, tenants)) = placed else {
                return Err(route::refusal(
                    "a literal for an encrypted column in a statement whose tenant comes from a bind parameter cannot be encrypted when the statement is prepared",
                    "pass the value as a $n parameter too",
                ));
            };
            self.open(&region).await?;
            let keys = encrypt::load_keys(&self.shared, &region, plan, &tenants, None).await?;
            let lookups = match &keys {
                Some(k) if encrypt::compares_literals(&plan.crypto) => {
                    Some((k.lookup_versions(), msg.clone()))
                }
                _ => None,
            };
            let parse = self.sealed_parse(p, plan, &region, keys).await?;
            return Ok((parse, Some(Arc::new(Sealed { tenants, lookups }))));
        }
        let text = encrypt::rewrite_params(p.query, &plan.crypto)?;
        Ok((
            encode_parse(p, plan, text.as_deref().unwrap_or(p.query))?,
            None,
        ))
    }

    /// The Parse of `p` with its classified literals sealed under `keys`.
    async fn sealed_parse(
        &mut self,
        p: &frontend_msg::Parse<'_>,
        plan: &StatementPlan,
        region: &Arc<str>,
        keys: Option<Arc<encrypt::StatementKeys>>,
    ) -> Result<Bytes, PgError> {
        let catalog = self.shared.ensure_catalog(region, &[&plan.crypto]).await?;
        let format = self.format.lock().map(|f| f.clone()).unwrap_or_default();
        let text = encrypt::rewrite_text(
            p.query,
            &[&plan.crypto],
            &[keys],
            &encrypt::Sealer {
                catalog: &catalog,
                format: &format,
                metrics: &self.shared.metrics.crypto(),
            },
        )?;
        encode_parse(p, plan, &text)
    }

    /// Swaps prepared statement `name` for `parse`, its compared literals
    /// sealed again after a key rotation: closed (answer swallowed) on
    /// every backend that has it — now on the batch's, with the next batch
    /// elsewhere — and prepared anew by [`Self::ensure_prepared`].
    fn replace_prepared(
        &mut self,
        region: &Arc<str>,
        name: &str,
        parse: Bytes,
        sealed: Arc<Sealed>,
    ) {
        if let Some(s) = self.statements.get_mut(name) {
            s.parse = parse;
            s.sealed = Some(sealed);
        }
        let mut close = BytesMut::new();
        if frontend::close(b'S', name, &mut close).is_err() {
            return;
        }
        for (r, b) in self.backends.iter_mut() {
            if b.prepared.remove(name) {
                b.shared.expect_completion(b.batches, false);
                if r == region {
                    b.push(&close);
                } else {
                    b.defer(&close);
                }
            }
        }
    }

    /// Sends a message to the batch's region, or holds it until the region
    /// is known. `parse` / `describe` name the statement the message
    /// prepares or describes, for bookkeeping.
    async fn send_or_hold(
        &mut self,
        msg: Bytes,
        parse: Option<String>,
        describe: Option<super::Described>,
    ) -> Result<(), Quit> {
        if let Some(regions) = self.batch.fan.as_ref().map(|f| f.regions.clone()) {
            for region in &regions {
                if let Some(b) = self.backends.existing(region) {
                    note_sent(b, &msg, parse.as_deref(), describe.as_ref());
                    b.push(&msg);
                }
            }
            return Ok(());
        }
        match self.batch.region.clone() {
            Some(region) => {
                let b = self.backend(&region).await?;
                note_sent(b, &msg, parse.as_deref(), describe.as_ref());
                b.push(&msg);
                Ok(())
            }
            None => {
                self.batch.held.push((msg, parse, describe));
                Ok(())
            }
        }
    }

    /// Fixes the batch's region: a held BEGIN goes first, then the held
    /// messages. The response side is told later, by [`Self::push_relay`].
    async fn set_batch_region(&mut self, region: &Arc<str>) -> Result<(), Quit> {
        if self.batch.region.is_some() {
            return Ok(());
        }
        if self.batch.executes {
            self.pin_held(region).await?;
        }
        self.backend(region).await?;
        let b = self.backends.existing(region).ok_or(Quit)?;
        // Drained in place: the batch keeps the allocation for the next one.
        for (msg, parse, describe) in self.batch.held.drain(..) {
            note_sent(b, &msg, parse.as_deref(), describe.as_ref());
            b.push(&msg);
        }
        self.batch.region = Some(region.clone());
        self.last_region = region.clone();
        Ok(())
    }

    /// Where a batch goes that nothing in it placed: the region its Parse
    /// texts belong to, else the session's region.
    fn batch_home(&self) -> Arc<str> {
        match &self.batch.hint {
            Some(r) => r.clone(),
            None => self.neutral_region(&self.tenant),
        }
    }

    /// Where the batch of the Bind being handled goes: a standby of
    /// `region` when the statement is a read a standby may run (`safe`),
    /// nothing before it in the batch was sent or executes, and the rest of
    /// the batch, already read, executes nothing else (see
    /// [`Requests::read_target`]); else `region`.
    async fn batch_read_target(&mut self, region: Arc<str>, safe: bool) -> Arc<str> {
        let alone = safe
            && self.batch_in_read
            && self.batch.region.is_none()
            && self
                .batch
                .held
                .iter()
                .all(|(m, ..)| matches!(m.first(), Some(b'P' | b'D' | b'C')));
        if !alone {
            return region;
        }
        self.read_target(region, || true).await
    }

    /// Tells the response side to relay the batch's region up to its
    /// ReadyForQuery. Deferred until the client waits for answers (Flush,
    /// Sync) so that a COPY FROM STDIN can be recognised first.
    fn push_relay(&mut self) {
        if let (Some(region), false) = (&self.batch.region, self.batch.relay_pushed) {
            let _ = self.expect.send(Expect::Relay {
                region: region.clone(),
                query: None,
            });
            self.batch.relay_pushed = true;
        }
    }

    /// Makes sure `name` is prepared in `region`, preparing it there now
    /// (answer swallowed) if it was prepared elsewhere.
    pub(super) async fn ensure_prepared(
        &mut self,
        region: &Arc<str>,
        name: &str,
    ) -> Result<(), Quit> {
        if self
            .backends
            .live(region)
            .is_some_and(|b| b.prepared.contains(name))
        {
            return Ok(());
        }
        let Some(parse) = self.statements.get(name).map(|s| s.parse.clone()) else {
            return Ok(());
        };
        let b = self.backend(region).await?;
        if !b.prepared.contains(name) {
            b.shared.expect_completion(b.batches, false);
            b.prepared.insert(name.to_string());
            b.push(&parse);
        }
        Ok(())
    }

    /// Refuses the statement being bound: the rest of the batch is dropped
    /// until Sync and the client sees `err`, the transaction (implicit or
    /// explicit) failing as Postgres would fail it.
    pub(super) async fn fail_batch(&mut self, err: PgError) -> Result<(), Quit> {
        tracing::info!(code = err.code, reason = %err.message, "statement refused");
        self.shared.metrics.statement_refused(&err);
        self.batch.skipping = true;
        self.batch.executes = true;
        if self.batch_is_local() && !matches!(self.txn, Txn::Pinned(_)) {
            if matches!(self.txn, Txn::Held { .. }) {
                self.txn = Txn::FailedHeld;
            }
            self.local(err.to_bytes());
            return Ok(());
        }
        if let Some(regions) = self.batch.fan.as_ref().map(|f| f.regions.clone()) {
            // The batch fails in every region; each shows the proxy's error.
            let mut exec = BytesMut::new();
            let _ = frontend::execute(FAIL_PORTAL, 0, &mut exec);
            for region in &regions {
                if let Some(b) = self.backends.existing(region) {
                    b.shared.override_error(b.batches, err.clone());
                    b.push(&exec);
                }
            }
            if let Some(fan) = self.batch.fan.as_mut() {
                fan.refused = true;
            }
            return Ok(());
        }
        let region = match (&self.batch.region, &self.txn) {
            (Some(r), _) | (None, Txn::Pinned(r)) => r.clone(),
            _ => self.batch_home(),
        };
        if let Txn::Fanned { .. } = self.txn {
            // The transaction runs in every region: it fails in all of them.
            self.fail_others(&region);
        }
        self.set_batch_region(&region).await?;
        let b = self.backend(&region).await?;
        b.shared.override_error(b.batches, err);
        let mut exec = BytesMut::new();
        if frontend::execute(FAIL_PORTAL, 0, &mut exec).is_ok() {
            b.push(&exec);
        }
        Ok(())
    }

    /// Parameter types of `name`: as prepared, or as the server inferred.
    fn param_types(&mut self, name: &str, stmt_types: &[u32], count: usize) -> Vec<u32> {
        let mut types: Vec<u32> = (0..count)
            .map(|i| stmt_types.get(i).copied().unwrap_or(0))
            .collect();
        for (i, t) in types.iter_mut().enumerate() {
            if *t == 0 {
                if let Some(inferred) = self.backends.inferred_param_type(name, i + 1) {
                    *t = inferred;
                }
            }
        }
        types
    }

    pub(super) async fn bind(&mut self, msg: &Bytes, body: &[u8]) -> Result<(), Quit> {
        if self.batch.skipping {
            return Ok(());
        }
        let names = frontend_msg::bind_names(body).map_err(|e| self.malformed(e))?;
        self.batch.executes = true;
        let name = names.statement;
        let portal = names.portal.to_string();
        let epoch = self
            .shared
            .rules_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        if let Some(parse) = self
            .statements
            .get(name)
            .filter(|s| s.epoch == epoch && s.copy.is_none() && self.neutral_lane(&s.analysis))
            .map(|s| s.parse.clone())
        {
            return self.bind_neutral(msg, name, portal, parse).await;
        }
        let stmt = self.statements.get(name).map(|s| {
            (
                s.epoch,
                s.analysis.clone(),
                s.types.clone(),
                s.sealed.clone(),
                s.copy.clone(),
                s.parse.clone(),
                (s.standby_safe, s.sets_config),
            )
        });
        if stmt.as_ref().is_some_and(|s| s.0 != epoch) {
            // Fail closed: planned before a reload changed which tables are
            // tenant-scoped or which columns are encrypted.
            return self
                .fail_batch(
                    PgError::error(
                        crate::protocol::error::sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("prepared statement \"{name}\" was planned before a config reload changed tenancy or classified columns"),
                    )
                    .with_hint("prepare the statement again (drivers do so after this error when their statement cache is reset)"),
                )
                .await;
        }
        let Some((_, analysis, stmt_types, sealed, copy_plan, parse, (standby_safe, sets_config))) =
            stmt
        else {
            // Not prepared through Parse (SQL PREPARE, or no such
            // statement): its text was never placed, so it is not run.
            return self
                .fail_batch(route::refusal(
                    format!("prepared statement \"{name}\" was not prepared through the extended protocol, so RegionGuard cannot place it"),
                    "prepare statements with Parse (a driver's prepare) instead of SQL PREPARE",
                ))
                .await;
        };
        if copy_plan.is_none()
            && single(&analysis).is_some_and(crate::frontend::copy_in::needs_plan)
        {
            return self
                .fail_batch(route::refusal(
                    format!("COPY statement \"{name}\" was not planned for row checks"),
                    "prepare the COPY statement again",
                ))
                .await;
        }
        // Only statements that read a parameter (a tenant, a value to
        // encrypt) need the parameters decoded and their types; finding
        // inferred types costs a lookup in every backend of the session per
        // parameter.
        let decoded;
        let (bind, types) = if single(&analysis).is_some_and(reads_params) {
            decoded = frontend_msg::bind(body).map_err(|e| self.malformed(e))?;
            let types = self.param_types(name, &stmt_types, decoded.params.len());
            (&decoded, types)
        } else {
            (&names, Vec::new())
        };
        let params = Params {
            bind,
            types: &types,
        };
        if self.txn == Txn::FailedHeld && !self.is_local_statement(&analysis) {
            return self.fail_batch(aborted()).await;
        }
        if self.batch_is_local() && self.is_local_statement(&analysis) {
            let text = self
                .statements
                .get(name)
                .and_then(|s| {
                    frontend_msg::parse(&s.parse[HEADER_LEN..])
                        .ok()
                        .map(|p| p.query.to_string())
                })
                .unwrap_or_default();
            let action = match self.local_action(&analysis, &params, text).await {
                Ok(a) => a,
                Err(e) => return self.fail_batch(e).await,
            };
            self.portals.insert(portal, PortalTarget::Local(action));
            let mut out = BytesMut::new();
            messages::bind_complete(&mut out);
            self.local(out);
            return Ok(());
        }
        let plan = single(&analysis);
        if let Some(plan) = plan {
            let ends = matches!(plan.kind, StatementKind::Commit | StatementKind::Rollback);
            if ends && matches!(self.txn, Txn::Fanned { .. }) {
                return self
                    .fail_batch(route::refusal(
                        "a transaction that runs in every region must end with COMMIT or ROLLBACK in a pipeline batch of its own",
                        "send COMMIT (or ROLLBACK) on its own, followed by Sync",
                    ))
                    .await;
            }
            // The text's leading keywords tell DDL forms apart; other
            // statements need no copy of it (this runs for every Bind).
            let text = if matches!(
                plan.kind,
                StatementKind::Ddl | StatementKind::Unparsed { .. }
            ) {
                self.statements
                    .get(name)
                    .and_then(|s| frontend_msg::parse(&s.parse[HEADER_LEN..]).ok())
                    .map(|p| p.query.to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            match self.fan_mode(&text, std::slice::from_ref(plan), self.batch.fan.is_some()) {
                Err(e) => return self.fail_batch(e).await,
                Ok(Some(mode)) if super::refuse_kind(&plan.kind).is_none() => {
                    if let Err(e) =
                        route::place(&self.shared, plan, Some(&params), self.tenant.effective())
                            .await
                    {
                        return self.fail_batch(e).await;
                    }
                    if self
                        .batch
                        .fan
                        .as_ref()
                        .is_some_and(|f| matches!(f.mode, super::fanout::FanMode::Unwrapped(_)))
                    {
                        return self
                            .fail_batch(route::refusal(
                                "a statement that cannot run in a transaction block must be alone in its pipeline batch",
                                "send Sync after it",
                            ))
                            .await;
                    }
                    return self.bind_fanned(msg, name, portal, Some(mode)).await;
                }
                _ => {}
            }
        }
        let placement = match plan {
            Some(plan) => {
                if let Some(e) = super::refuse_kind(&plan.kind) {
                    return self.fail_batch(e).await;
                }
                route::place(&self.shared, plan, Some(&params), self.tenant.effective()).await
            }
            None => Ok((Placement::Neutral, Vec::new())),
        };
        let (placement, tenants) = match placement {
            Ok((p, t)) => (Ok(p), t),
            Err(e) => (Err(e), Vec::new()),
        };
        let in_region = matches!(placement, Ok(Placement::Region(_)));
        let region = match placement {
            Ok(Placement::Region(r)) => r,
            Ok(Placement::Neutral) => match &self.batch.region {
                Some(r) => r.clone(),
                None => self.neutral_region(&self.tenant),
            },
            Err(e) => return self.fail_batch(e).await,
        };
        if self.batch.fan.is_some() {
            return self
                .bind_in_fan_batch(msg, name, portal, in_region, plan)
                .await;
        }
        if let Some(err) = self.conflict(&region) {
            return self.fail_batch(err).await;
        }
        if let Err(e) = self.open(&region).await {
            return self.fail_batch(e).await;
        }
        if let Some(plan) = plan {
            if let Err(e) = self.track_forwarded(plan, &params, &region).await {
                return self.fail_batch(e).await;
            }
        }
        self.primary_only |= sets_config;
        // A planned COPY's classified fields are handled row by row.
        let (msg, keys, resealed) =
            match plan.filter(|p| !p.crypto.is_empty() && copy_plan.is_none()) {
                Some(plan) => {
                    let sealed = (&region, &tenants[..], sealed.as_deref());
                    match self
                        .encrypt_bind(msg, body, plan, &params, &stmt_types, sealed)
                        .await
                    {
                        Ok((m, k, r)) => (m, Some(k), r),
                        Err(e) => return self.fail_batch(e).await,
                    }
                }
                None => (msg.clone(), None, None),
            };
        // A FETCH's rows decrypt with its cursor's keys, in its region.
        let keys = match plan.and_then(|p| self.fetch_keys(p)) {
            Some(k) if keys.is_none() && k.region == region => Some(k),
            _ => keys,
        };
        if let Some(plan) = plan {
            let in_txn = self.txn != Txn::Idle;
            self.track_cursor(plan, keys.as_ref(), in_txn);
        }
        let copy_plan = match copy_plan {
            Some(p) => match crate::frontend::copy_in::for_region(&self.shared, p, &region).await {
                Ok(p) => Some(p),
                Err(e) => return self.fail_batch(e).await,
            },
            None => None,
        };
        let copy = match copy_plan {
            Some(p) if p.format.direction == crate::copy::Direction::To => {
                match super::copy::copy_out_run(&self.shared, p, &region, &tenants).await {
                    Ok(run) => Some(super::copy::PortalCopy::Out(run)),
                    Err(e) => return self.fail_batch(e).await,
                }
            }
            Some(p) => Some(super::copy::PortalCopy::In(p)),
            None => None,
        };
        let region = self
            .batch_read_target(region, standby_safe && copy.is_none())
            .await;
        self.set_batch_region(&region).await?;
        let text = match resealed {
            Some((parse, sealed)) => {
                self.replace_prepared(&region, name, parse.clone(), sealed);
                parse
            }
            None => parse,
        };
        self.ensure_prepared(&region, name).await?;
        let b = self.backend(&region).await?;
        b.shared.stats.note_statement(b.batches, &text);
        b.push(&msg);
        let copy_in = matches!(
            plan.map(|p| &p.kind),
            Some(StatementKind::Copy {
                from_stdin: true,
                ..
            })
        );
        self.portals.insert(
            portal,
            PortalTarget::Region {
                region,
                copy_in,
                keys,
                copy,
            },
        );
        Ok(())
    }

    /// Binds a statement on the session's neutral lane (see
    /// [`Requests::neutral_lane`]): to the batch's region, else where the
    /// session's statements without tenant data run. `parse` is the
    /// statement's Parse, for the slow-statement log.
    async fn bind_neutral(
        &mut self,
        msg: &Bytes,
        name: &str,
        portal: String,
        parse: Bytes,
    ) -> Result<(), Quit> {
        let region = match &self.batch.region {
            Some(r) => r.clone(),
            None => self.neutral_region(&self.tenant),
        };
        if let Some(err) = self.conflict(&region) {
            return self.fail_batch(err).await;
        }
        if let Err(e) = self.open(&region).await {
            return self.fail_batch(e).await;
        }
        self.set_batch_region(&region).await?;
        self.ensure_prepared(&region, name).await?;
        let b = self.backend(&region).await?;
        b.shared.stats.note_statement(b.batches, &parse);
        b.push(msg);
        self.portals.insert(
            portal,
            PortalTarget::Region {
                region,
                copy_in: false,
                keys: None,
                copy: None,
            },
        );
        self.took_neutral_lane = true;
        Ok(())
    }

    /// The Bind to send for a statement that touches classified columns
    /// (its classified parameters encrypted), the keys its rows are
    /// decrypted with, and — when a key rotation changed the live versions
    /// its compared literals were sealed under — the statement's Parse
    /// sealed again, to replace it before the Bind.
    async fn encrypt_bind(
        &mut self,
        msg: &Bytes,
        body: &[u8],
        plan: &StatementPlan,
        params: &Params<'_>,
        declared: &[u32],
        (region, tenants, sealed): (&Arc<str>, &[String], Option<&Sealed>),
    ) -> Result<(Bytes, Arc<encrypt::StatementKeys>, Option<Resealed>), PgError> {
        if let Some(e) = encrypt::refusal(&plan.crypto) {
            return Err(e);
        }
        if sealed.is_some_and(|s| s.tenants != tenants) {
            return Err(route::refusal(
                "the prepared statement's encrypted literals belong to another tenant than the one it now runs for",
                "prepare the statement again after switching tenants, or pass the values as parameters",
            ));
        }
        let catalog = self.shared.ensure_catalog(region, &[&plan.crypto]).await?;
        let keys = encrypt::load_keys(&self.shared, region, plan, tenants, Some(params))
            .await?
            .ok_or_else(|| {
                PgError::error(
                    crate::protocol::error::sqlstate::INTERNAL_ERROR,
                    "statement keys missing",
                )
            })?;
        let resealed = match sealed.and_then(|s| s.lookups.as_ref().map(|l| (s, l))) {
            Some((s, (versions, source))) if *versions != keys.lookup_versions() => {
                let p = frontend_msg::parse(source.get(HEADER_LEN..).unwrap_or_default()).map_err(
                    |_| {
                        PgError::error(
                            crate::protocol::error::sqlstate::INTERNAL_ERROR,
                            "stored Parse unreadable",
                        )
                    },
                )?;
                let parse = self
                    .sealed_parse(&p, plan, region, Some(keys.clone()))
                    .await?;
                let sealed = Sealed {
                    tenants: s.tenants.clone(),
                    lookups: Some((keys.lookup_versions(), source.clone())),
                };
                Some((parse, Arc::new(sealed)))
            }
            _ => None,
        };
        let has_params = plan
            .crypto
            .targets
            .iter()
            .any(|t| matches!(t.value, crate::sql::ValueSource::Param(_)));
        if !has_params {
            return Ok((msg.clone(), keys, resealed));
        }
        let format = self.format.lock().map(|f| f.clone()).unwrap_or_default();
        let rewritten = encrypt::rewrite_bind(
            body,
            &plan.crypto,
            &keys,
            params,
            declared,
            &encrypt::Sealer {
                catalog: &catalog,
                format: &format,
                metrics: &self.shared.metrics.crypto(),
            },
        )?;
        Ok((Bytes::from(rewritten), keys, resealed))
    }

    /// Whether `portal` runs in the batch's region and needs nothing but to
    /// be sent there (no keys, no COPY): what the general Describe and
    /// Execute paths would find, checked without cloning the portal's
    /// target. The batch's region was checked against the transaction's
    /// when it was set; [`Self::conflict`] checks it again all the same.
    fn plain_portal(&self, portal: &str) -> bool {
        match (self.portals.get(portal), &self.batch.region) {
            (
                Some(PortalTarget::Region {
                    region,
                    copy_in: false,
                    keys: None,
                    copy: None,
                }),
                Some(batch),
            ) => region == batch && self.batch.fan.is_none() && self.conflict(region).is_none(),
            _ => false,
        }
    }

    /// A region that the batch or the transaction cannot use.
    fn conflict(&self, region: &Arc<str>) -> Option<PgError> {
        if let Some(b) = &self.batch.region {
            if b != region {
                return Some(route::refusal(
                    format!("one pipeline batch needs two regions ({b} and {region})"),
                    "end the batch with Sync before switching to a tenant of another region",
                ));
            }
        }
        if let Txn::Pinned(p) = &self.txn {
            if p != region {
                return Some(route::refusal(
                    format!("the transaction runs in region {p}; this statement belongs in region {region}"),
                    "a transaction may only touch one region's tenants: commit it, then start one for the other region",
                ));
            }
        }
        None
    }

    /// Keeps the proxy's view of the session in step with statements that
    /// change it and go to a backend.
    async fn track_forwarded(
        &mut self,
        plan: &StatementPlan,
        params: &Params<'_>,
        region: &Arc<str>,
    ) -> Result<(), PgError> {
        match &plan.kind {
            StatementKind::SetTenant { local, value } => {
                let v = self.tenant_value(value.as_ref(), Some(params))?;
                if let Some(t) = &v {
                    if route::region_of(&self.shared, t).await? != *region {
                        return Err(route::refusal(
                            format!(
                                "the session runs in region {region}; that tenant lives elsewhere"
                            ),
                            "finish the transaction before switching to a tenant of another region",
                        ));
                    }
                }
                apply_set(&mut self.tenant, *local, v, self.txn != Txn::Idle);
            }
            StatementKind::Begin if self.txn == Txn::Idle => {
                self.txn = Txn::Pinned(region.clone());
            }
            StatementKind::Ddl => self.note_ddl(),
            StatementKind::Commit | StatementKind::Rollback => {
                self.txn = Txn::Idle;
                self.tenant.local = None;
            }
            StatementKind::SessionState { resets_tenant } => {
                // Not replayed on the session's other backends: its reads
                // stay on the primary, which has this state.
                self.primary_only = true;
                if *resets_tenant {
                    self.tenant.session = None;
                    self.tenant.local = None;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn tenant_value(
        &self,
        value: Option<&TenantSource>,
        params: Option<&Params<'_>>,
    ) -> Result<Option<String>, PgError> {
        Ok(match value {
            Some(TenantSource::Literal(t)) => Some(t.clone()),
            Some(TenantSource::Param(n)) => {
                let Some(p) = params else {
                    return Err(route::refusal(
                        "regionguard.tenant cannot come from a parameter here",
                        "use a literal: SET regionguard.tenant = '<tenant>'",
                    ));
                };
                let ty = p.types.get(n.saturating_sub(1)).copied().unwrap_or(0);
                Some(tenant_value::from_param(p.bind, *n, ty)?)
            }
            None => None,
        })
    }

    async fn local_action(
        &mut self,
        analysis: &Analysis,
        params: &Params<'_>,
        text: String,
    ) -> Result<LocalAction, PgError> {
        let Some(plan) = single(analysis) else {
            return Err(aborted());
        };
        Ok(match &plan.kind {
            StatementKind::SetTenant { local, value } => {
                let v = self.tenant_value(value.as_ref(), Some(params))?;
                if let Some(t) = &v {
                    route::region_of(&self.shared, t).await?;
                }
                LocalAction::SetTenant {
                    local: *local,
                    value: v,
                }
            }
            StatementKind::ShowTenant => LocalAction::ShowTenant,
            StatementKind::Begin => LocalAction::Begin(text),
            StatementKind::Commit => LocalAction::End { commit: true },
            _ => LocalAction::End { commit: false },
        })
    }

    pub(super) async fn describe(&mut self, msg: &Bytes, body: &[u8]) -> Result<(), Quit> {
        if self.batch.skipping {
            return Ok(());
        }
        let (kind, name) = frontend_msg::target(body, "Describe").map_err(|e| self.malformed(e))?;
        if kind == b'P' && self.plain_portal(name) {
            return self.send_or_hold(msg.clone(), None, None).await;
        }
        let name = name.to_string();
        if kind == b'P' {
            return match self.portals.get(&name).cloned() {
                Some(PortalTarget::Local(action)) => {
                    let mut out = BytesMut::new();
                    match action {
                        LocalAction::ShowTenant => {
                            messages::text_row_description(&mut out, crate::sql::TENANT_KEY)
                        }
                        _ => messages::no_data(&mut out),
                    }
                    self.local(out);
                    Ok(())
                }
                Some(PortalTarget::Region { region: r, .. }) => {
                    if let Some(err) = self.conflict(&r) {
                        return self.fail_batch(err).await;
                    }
                    self.set_batch_region(&r).await?;
                    self.send_or_hold(msg.clone(), None, None).await
                }
                None => self.send_or_hold(msg.clone(), None, None).await,
            };
        }
        let stmt_local = self
            .statements
            .get(&name)
            .map(|s| (s.local, s.analysis.clone()));
        if let Some((true, analysis)) = &stmt_local {
            if self.batch_is_local() {
                let mut out = BytesMut::new();
                messages::empty_parameter_description(&mut out);
                match single(analysis).map(|p| &p.kind) {
                    Some(StatementKind::ShowTenant) => {
                        messages::text_row_description(&mut out, crate::sql::TENANT_KEY)
                    }
                    _ => messages::no_data(&mut out),
                }
                self.local(out);
                return Ok(());
            }
        }
        let regions = match (&self.batch.fan, &self.batch.region) {
            (Some(fan), _) => fan.regions.clone(),
            (None, Some(region)) => vec![region.clone()],
            (None, None) => Vec::new(),
        };
        for region in &regions {
            self.ensure_prepared(region, &name).await?;
        }
        let declared = self
            .statements
            .get(&name)
            .map(|s| s.types.clone())
            .unwrap_or_default();
        let overrides = stmt_local
            .as_ref()
            .and_then(|(_, a)| single(a))
            .map(|p| encrypt::param_overrides(&p.crypto, &declared))
            .unwrap_or_default();
        self.send_or_hold(msg.clone(), None, Some((name, overrides)))
            .await
    }

    pub(super) async fn execute(&mut self, msg: &Bytes, body: &[u8]) -> Result<(), Quit> {
        if self.batch.skipping {
            return Ok(());
        }
        let portal = frontend_msg::execute(body).map_err(|e| self.malformed(e))?;
        self.batch.executes = true;
        if self.plain_portal(portal) {
            return self.send_or_hold(msg.clone(), None, None).await;
        }
        let portal = portal.to_string();
        match self.portals.get(&portal).cloned() {
            Some(PortalTarget::Local(LocalAction::End { commit }))
                if matches!(self.txn, Txn::Fanned { .. }) =>
            {
                let (out, failed) = self.end_fanned(commit).await?;
                self.batch.skipping |= failed;
                self.local(out);
                Ok(())
            }
            Some(PortalTarget::Local(action)) => {
                let mut out = BytesMut::new();
                self.run_local(action, &mut out);
                self.local(out);
                Ok(())
            }
            Some(PortalTarget::Region {
                region: r,
                copy_in,
                keys,
                copy,
            }) => {
                if let Some(err) = self.conflict(&r) {
                    return self.fail_batch(err).await;
                }
                self.set_batch_region(&r).await?;
                if let Some(keys) = keys {
                    // Learn the shape of the rows (table OIDs, formats)
                    // right before they come; the answer is not forwarded.
                    let b = self.backend(&r).await?;
                    let mut describe = BytesMut::new();
                    if frontend::describe(b'P', &portal, &mut describe).is_ok() {
                        b.shared.expect_rows(
                            b.batches,
                            RowUse {
                                forward: false,
                                keys: Some(keys),
                            },
                        );
                        b.push(&describe);
                    }
                }
                if let Some(super::copy::PortalCopy::Out(run)) = &copy {
                    // The response side decrypts the CopyData that follows
                    // this Execute's CopyOutResponse.
                    let b = self.backend(&r).await?;
                    if !run.plan.classified.is_empty() {
                        b.shared.expect_copy_out(b.batches, Arc::clone(run));
                    }
                }
                self.send_or_hold(msg.clone(), None, None).await?;
                if let Some(super::copy::PortalCopy::In(plan)) = copy {
                    let session = self.format.lock().map(|f| f.clone()).unwrap_or_default();
                    self.copy_in = Some(super::copy::ActiveCopy::new(
                        crate::frontend::copy_in::CopyIn::new(plan, r.clone(), session),
                        false,
                    ));
                }
                if copy_in && !self.batch.relay_pushed {
                    // Answers up to CopyInResponse now; the copy's end is
                    // relayed with the Sync that follows CopyDone.
                    let _ = self.expect.send(Expect::RelayUntilCopyIn { region: r });
                    self.batch.copy_pending = true;
                }
                Ok(())
            }
            None => self.send_or_hold(msg.clone(), None, None).await,
        }
    }

    fn run_local(&mut self, action: LocalAction, out: &mut BytesMut) {
        match action {
            LocalAction::Begin(text) => {
                if self.txn == Txn::Idle {
                    self.txn = Txn::Held { begin: text };
                }
                messages::command_complete(out, "BEGIN");
            }
            LocalAction::End { commit } => {
                let tag = if commit && self.txn != Txn::FailedHeld {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                self.txn = Txn::Idle;
                self.tenant.local = None;
                messages::command_complete(out, tag);
            }
            LocalAction::SetTenant { local, value } => {
                let in_txn = self.txn != Txn::Idle;
                if local && !in_txn {
                    messages::warning(
                        out,
                        "25P01",
                        "SET LOCAL can only be used in transaction blocks",
                    );
                }
                let tag = if value.is_some() { "SET" } else { "RESET" };
                apply_set(&mut self.tenant, local, value, in_txn);
                messages::command_complete(out, tag);
            }
            LocalAction::ShowTenant => {
                messages::text_data_row(out, Some(self.tenant.effective().unwrap_or("")));
                messages::command_complete(out, "SHOW");
            }
        }
    }

    pub(super) async fn close(&mut self, msg: &Bytes, body: &[u8]) -> Result<(), Quit> {
        if self.batch.skipping {
            return Ok(());
        }
        let (kind, name) = frontend_msg::target(body, "Close").map_err(|e| self.malformed(e))?;
        let name = name.to_string();
        if kind == b'P' {
            return match self.portals.remove(&name) {
                Some(PortalTarget::Region { region: r, .. })
                    if self.batch.region.as_ref().is_none_or(|b| *b == r) =>
                {
                    self.set_batch_region(&r).await?;
                    self.send_or_hold(msg.clone(), None, None).await
                }
                Some(PortalTarget::Region { .. }) | Some(PortalTarget::Local(_)) | None
                    if self.batch_is_local() =>
                {
                    let mut out = BytesMut::new();
                    messages::close_complete(&mut out);
                    self.local(out);
                    Ok(())
                }
                _ => self.send_or_hold(msg.clone(), None, None).await,
            };
        }
        self.statements.remove(&name);
        if self.batch.fan.is_some() {
            // It goes to every region with the batch.
            self.backends.forget_statement(&name);
            return self.send_or_hold(msg.clone(), None, None).await;
        }
        let target = self.batch.region.clone();
        // Close it everywhere it is prepared; only the batch's own Close is answered.
        for (region, b) in self.backends.iter_mut() {
            b.shared.forget_statement(&name);
            if b.prepared.remove(&name) && target.as_ref() != Some(region) {
                b.shared.expect_completion(b.batches, false);
                b.defer(msg);
            }
        }
        if self.batch_is_local() {
            let mut out = BytesMut::new();
            messages::close_complete(&mut out);
            self.local(out);
            return Ok(());
        }
        self.send_or_hold(msg.clone(), None, None).await
    }

    pub(super) async fn flush_request(&mut self, msg: &Bytes) -> Result<(), Quit> {
        if self.batch.skipping || self.batch.fan.is_some() {
            // A batch that goes to every region is answered at its Sync,
            // once every region's outcome is known.
            return Ok(());
        }
        if self.batch.region.is_none() && !self.batch.held.is_empty() {
            let region = self.batch_home();
            self.set_batch_region(&region).await?;
        }
        match self.batch.region.clone() {
            Some(region) => {
                self.push_relay();
                let b = self.backend(&region).await?;
                b.push(msg);
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub(super) async fn sync(&mut self, msg: &Bytes) -> Result<(), Quit> {
        if let Some(fan) = self.batch.fan.take() {
            self.batch.reset();
            self.sync_fanned(msg, fan).await?;
            if self.txn == Txn::Idle {
                self.tenant.local = None;
            }
            return Ok(());
        }
        if self.batch.region.is_none() && !self.batch.held.is_empty() && !self.batch.skipping {
            let region = self.batch_home();
            self.set_batch_region(&region).await?;
        }
        match self.batch.region.clone() {
            Some(region) if self.batch.copy_pending => {
                // Ignored by Postgres if the copy is running; the batch goes on.
                let _ = self.expect.send(Expect::CopySync {
                    region: region.clone(),
                });
                let b = self.backend(&region).await?;
                b.push_batch_end(msg);
                return Ok(());
            }
            Some(region) => {
                self.push_relay();
                let b = self.backend(&region).await?;
                b.push_batch_end(msg);
            }
            None => {
                let mut out = BytesMut::new();
                messages::ready_for_query(&mut out, self.status());
                self.local(out);
            }
        }
        self.batch.reset();
        if self.txn == Txn::Idle {
            self.tenant.local = None;
        }
        Ok(())
    }

    pub(super) async fn function_call(&mut self, msg: &Bytes) -> Result<(), Quit> {
        // Large-object and other server functions may keep session state.
        self.keeps_state |= self.between_transactions;
        let region = self.neutral_region(&self.tenant);
        self.backend(&region).await?;
        self.pin_held(&region).await?;
        let b = self.backend(&region).await?;
        b.push_batch_end(msg);
        let _ = self.expect.send(crate::frontend::expect::Expect::Relay {
            region: region.clone(),
            query: None,
        });
        self.last_region = region;
        Ok(())
    }
}

/// Whether running `plan` reads a bind parameter's value: a tenant (its
/// requirement, an UPDATE's assignment, `SET regionguard.tenant = $n`) or a
/// value of a classified column. Readers use [`Params::types`].
fn reads_params(plan: &StatementPlan) -> bool {
    route::needs_params(plan)
        || !plan.crypto.is_empty()
        || matches!(
            plan.kind,
            StatementKind::SetTenant {
                value: Some(TenantSource::Param(_)),
                ..
            }
        )
}

/// Bookkeeping for a message as it is written to a backend.
pub(super) fn note_sent(
    b: &mut crate::frontend::backends::Backend,
    msg: &[u8],
    parse: Option<&str>,
    describe: Option<&super::Described>,
) {
    match msg.first() {
        Some(b'P') => {
            b.shared.expect_completion(b.batches, true);
            if let Some(name) = parse.filter(|n| !b.prepared.contains(*n)) {
                b.prepared.insert(name.to_string());
            }
        }
        Some(b'C') => b.shared.expect_completion(b.batches, true),
        Some(b'D') => {
            if let Some((name, overrides)) = describe {
                b.shared.expect_describe(b.batches, name, overrides.clone());
            }
            b.shared.expect_rows(
                b.batches,
                RowUse {
                    forward: true,
                    keys: None,
                },
            );
        }
        _ => {}
    }
}
