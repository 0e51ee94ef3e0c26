//! Client → backends: reads the client's messages, decides per statement
//! which region runs it, answers what the proxy owns (`regionguard.tenant`,
//! a held BEGIN) and queues the response plan for the other direction.
//!
//! Extended-protocol messages are grouped in batches ending at Sync. A batch
//! runs in one region: messages before the first one that decides the region
//! are held, then sent there together. A statement prepared in one region
//! and executed in another is prepared there on the fly (the extra
//! ParseComplete is swallowed). A refusal inside a batch that already reached
//! a backend makes that backend fail the batch on purpose (an Execute of a
//! portal that does not exist) and shows the proxy's error instead of the
//! backend's, so the batch's implicit transaction — or the explicit one —
//! fails exactly as Postgres would fail it.

use super::backends::Backends;
use super::encrypt::{self, StatementKeys};
use super::expect::Expect;
use super::plan_queue::PlanSender;
use super::route::{self, Params, Placement};
use super::NameHasher;
use crate::net::ReadHalf;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::framing::{self, Frame};
use crate::protocol::frontend_msg;
use crate::protocol::messages;
use crate::server::state::Shared;
use crate::sql::{Analysis, StatementKind, StatementPlan, TenantSource};
use crate::types::SessionFormat;

mod copy;
mod cursors;
mod extended;
mod fanout;
mod repeat;
mod repeat_query;
use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

const READ_CHUNK: usize = 64 * 1024;
/// A portal name no client uses: executing it makes a backend fail the
/// current batch on purpose.
const FAIL_PORTAL: &str = "regionguard: refused";
/// A statement that fails to parse without side effects, for simple queries.
const FAIL_QUERY: &str = "regionguard refused statement";

/// The session's `regionguard.tenant`, with Postgres GUC semantics.
#[derive(Debug, Default, Clone)]
pub struct TenantSetting {
    pub startup: Option<String>,
    pub session: Option<String>,
    /// `SET LOCAL`: until the transaction ends.
    pub local: Option<String>,
}

impl TenantSetting {
    pub fn effective(&self) -> Option<&str> {
        // RESET goes back to the startup value, as for any Postgres setting.
        self.local
            .as_deref()
            .or(self.session.as_deref())
            .or(self.startup.as_deref())
    }
}

/// Transaction state as seen from the requests the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Txn {
    Idle,
    /// BEGIN answered by the proxy, not yet sent: it goes to the region of
    /// the first statement that needs one.
    Held {
        begin: String,
    },
    /// A refusal failed a held transaction before it reached any backend.
    FailedHeld,
    /// The transaction runs in this region.
    Pinned(Arc<str>),
    /// The transaction changed the schema or a global table, so it runs
    /// in every region and commits with two-phase commit (ADR 10);
    /// `primary` runs its statements without tenant data.
    Fanned {
        primary: Arc<str>,
    },
}

/// A statement prepared by the client (extended protocol).
struct Stmt {
    /// The Parse as sent to backends (classified literals encrypted,
    /// classified parameter types left to the server).
    parse: Bytes,
    analysis: Arc<Analysis>,
    /// The analysis cache's generation when `analysis` was looked up: a
    /// Parse sent again unchanged reuses `analysis` while it is current.
    generation: u64,
    /// `Shared::rules_epoch` when it was prepared.
    epoch: u64,
    /// Parameter types as the client declared them (shared: every Bind
    /// and Describe reads them).
    types: Arc<[u32]>,
    /// Answered by the proxy (BEGIN while idle, regionguard.tenant).
    local: bool,
    /// Set when the text's classified literals were encrypted.
    sealed: Option<Arc<Sealed>>,
    /// A COPY whose rows the proxy sees (FROM STDIN into a tenant-scoped
    /// table, TO STDOUT of a classified table): where its tenants and
    /// classified columns are.
    copy: Option<Arc<crate::frontend::copy_in::CopyPlan>>,
    /// A standby may run it (`sql::standby_safe`); only worked out when
    /// some region reads from standbys.
    standby_safe: bool,
    /// Running it leaves state only the primary holds (`set_config`), so
    /// the session's reads stay on the primary afterwards; only worked out
    /// when some region reads from standbys.
    sets_config: bool,
}

/// How a prepared statement's classified literals were encrypted.
struct Sealed {
    /// The tenants whose keys encrypted them: the statement may only run
    /// for them.
    tenants: Vec<String>,
    /// For a text that compares literals with deterministic columns: each
    /// tenant's live key versions when its literals were sealed (one
    /// envelope per version), and the Parse as the client sent it, so a
    /// Bind after a key rotation seals the literals again.
    lookups: Option<(Vec<Vec<u32>>, Bytes)>,
}

/// What a portal was bound from.
#[derive(Clone)]
enum PortalTarget {
    /// Bound in this region; `copy_in` when it runs COPY FROM STDIN.
    Region {
        region: Arc<str>,
        copy_in: bool,
        /// The statement touches classified columns: its rows are
        /// decrypted with these keys.
        keys: Option<Arc<StatementKeys>>,
        /// A COPY whose rows the proxy checks, encrypts or decrypts.
        copy: Option<copy::PortalCopy>,
    },
    Local(extended::LocalAction),
}

#[derive(Default)]
struct Batch {
    region: Option<Arc<str>>,
    /// Messages waiting for the batch's region, with the statement name of
    /// held Parses (so they count as prepared there once sent).
    held: Vec<(Bytes, Option<String>, Option<Described>)>,
    /// A refusal happened: drop messages until Sync.
    skipping: bool,
    /// The response side was told to relay this batch.
    relay_pushed: bool,
    /// A COPY FROM STDIN was executed and its CopyDone/CopyFail not seen.
    copy_pending: bool,
    /// The batch goes to every region (a statement in it changes the
    /// schema or a global table).
    fan: Option<fanout::FanBatch>,
    /// The batch executes something (Bind, Execute): a held BEGIN must go
    /// ahead of it. A batch that only prepares or describes does not pin
    /// the transaction.
    executes: bool,
    /// The region a held Parse's own literals place it in: where the batch
    /// goes if nothing else decides, so the text reaches no other region.
    hint: Option<Arc<str>>,
}

impl Batch {
    /// Whether nothing of a batch was seen yet (the state [`Self::reset`]
    /// leaves).
    fn is_fresh(&self) -> bool {
        let Batch {
            region,
            held,
            skipping,
            relay_pushed,
            copy_pending,
            fan,
            executes,
            hint,
        } = self;
        region.is_none()
            && held.is_empty()
            && !skipping
            && !relay_pushed
            && !copy_pending
            && fan.is_none()
            && !executes
            && hint.is_none()
    }

    /// Starts the next batch, keeping the held-message buffer's allocation.
    fn reset(&mut self) {
        let mut held = std::mem::take(&mut self.held);
        held.clear();
        *self = Batch {
            held,
            ..Batch::default()
        };
    }
}

/// A Describe of a statement: its name and the logical types of its
/// classified parameters (1-based number, type OID).
type Described = (String, Vec<(usize, u32)>);

pub struct Requests {
    shared: Arc<Shared>,
    expect: PlanSender,
    client_gone: watch::Sender<bool>,
    backends: Backends,
    tenant: TenantSetting,
    /// The session's region for statements that touch no tenant data: the
    /// startup option `regionguard.region`, else the default region.
    home: Arc<str>,
    txn: Txn,
    statements: HashMap<String, Stmt, NameHasher>,
    portals: HashMap<String, PortalTarget, NameHasher>,
    batch: Batch,
    /// Where COPY data goes: the region of the last statement sent.
    last_region: Arc<str>,
    /// A COPY FROM STDIN whose rows are checked on their way.
    copy_in: Option<copy::ActiveCopy>,
    max_message: usize,
    /// The session's text I/O settings (for parsing literals to encrypt).
    format: Arc<std::sync::Mutex<SessionFormat>>,
    /// The BEGIN that opened the current transaction, to open it in more
    /// regions when it starts changing every region.
    begin_sql: String,
    /// DDL was sent since the catalogs were last read: before the next
    /// statement outside a transaction, they are read again, so a view
    /// this session just created is known when it is first used.
    catalog_stale: bool,
    /// Cursors declared over classified columns, by name.
    cursors: HashMap<String, cursors::Cursor>,
    /// Some region reads from its standbys: reads are checked for a
    /// standby (the check costs nothing when this is off).
    standby_reads: bool,
    /// The session has state only its primary holds, so its reads stay
    /// there: it sent DDL (temporary objects exist only on the primary),
    /// session state through the extended protocol (not replayed on other
    /// backends), or a `set_config` call.
    primary_only: bool,
    /// The Bind being handled is followed, in the bytes read with it, by
    /// nothing but Describe/Execute/Close/Flush up to its batch's Sync: the
    /// whole batch is known, so it may go to a standby.
    batch_in_read: bool,
    /// The last batch or simple query, when its repeats may be sent in
    /// one step (`repeat.rs`, `repeat_query.rs`).
    repeat: Option<repeat::Recorded>,
    /// A Bind took the neutral lane since the read began, or a simple
    /// Query did on the statement scan alone: the read's batch or query
    /// may be recorded for repeats.
    took_neutral_lane: bool,
    /// Transaction mode (`backend_pool.mode`, ADR 22): backends go back to
    /// their regions' pools between transactions…
    between_transactions: bool,
    /// …until the session leaves state in them (`sql::keeps_session_state`,
    /// a named prepared statement, a FunctionCall): then it keeps them.
    keeps_state: bool,
}

/// Ends the pump: the response side learns why through the queue.
struct Quit;

impl Requests {
    pub fn new(
        shared: Arc<Shared>,
        expect: PlanSender,
        client_gone: watch::Sender<bool>,
        backends: Backends,
        tenant: TenantSetting,
        home: Arc<str>,
        format: Arc<std::sync::Mutex<SessionFormat>>,
    ) -> Self {
        let max_message = shared.config.listen.max_message_bytes;
        let shared_mode_is_transaction =
            shared.config.backend_pool.mode == crate::config::PoolMode::Transaction;
        let standby_reads = shared.regions.values().any(|r| r.standbys.is_some());
        Requests {
            shared,
            expect,
            client_gone,
            backends,
            tenant,
            last_region: home.clone(),
            home,
            txn: Txn::Idle,
            statements: HashMap::default(),
            portals: HashMap::default(),
            batch: Batch::default(),
            copy_in: None,
            max_message,
            format,
            begin_sql: "BEGIN".into(),
            catalog_stale: false,
            cursors: HashMap::new(),
            standby_reads,
            primary_only: false,
            batch_in_read: false,
            repeat: None,
            took_neutral_lane: false,
            between_transactions: shared_mode_is_transaction,
            keeps_state: false,
        }
    }

    /// Notes DDL just sent: the catalogs are read again before this
    /// session's next statement outside a transaction, and, for other
    /// sessions, shortly after (when it has likely committed).
    fn note_ddl(&mut self) {
        self.catalog_stale = true;
        self.primary_only = true;
        let shared = Arc::downgrade(&self.shared);
        if self.shared.tenancy.load().discovers() {
            crate::routing::discovery::after_ddl(shared.clone());
        }
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            if let Some(shared) = shared.upgrade() {
                shared.refresh_catalogs().await;
            }
        });
    }

    /// Reads the catalogs again if this session sent DDL since, and its
    /// transaction (if any) has ended, so the DDL is visible.
    async fn refresh_if_stale(&mut self) {
        if self.catalog_stale && self.txn == Txn::Idle {
            self.catalog_stale = false;
            self.shared.refresh_catalogs().await;
        }
    }

    /// Transaction mode (ADR 22): between transactions of a session that
    /// keeps no state in its backends, they go back to their regions'
    /// pools (see [`Backends::park`]).
    fn park_between_transactions(&mut self) {
        if self.between_transactions
            && !self.keeps_state
            && self.txn == Txn::Idle
            && self.copy_in.is_none()
            && self.batch.is_fresh()
            && self.cursors.is_empty()
            && self.backends.no_replay()
        {
            self.backends.park(&self.expect);
        }
    }

    /// Notes that `text` may leave state in the backend session (see
    /// [`Self::keeps_state`]).
    fn note_session_state(&mut self, text: &str, plans: &[crate::sql::StatementPlan]) {
        if self.between_transactions
            && !self.keeps_state
            && crate::sql::keeps_session_state(text, plans)
        {
            self.keeps_state = true;
        }
    }

    pub async fn run(mut self, mut client: ReadHalf) {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut frames: Vec<Frame> = Vec::with_capacity(64);
        self.park_between_transactions();
        loop {
            let need = match framing::needed(&buf, self.max_message) {
                Ok(n) => n,
                Err(e) => {
                    self.fatal(frame_error(e));
                    return drain(client).await;
                }
            };
            if buf.capacity() - buf.len() < need.max(READ_CHUNK / 4) {
                buf.reserve(need.max(READ_CHUNK));
            }
            match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return self.gone().await,
                Ok(n) => self.shared.metrics.client_received(n),
            }
            let (used, bad) = framing::scan_until_error(&buf, self.max_message, &mut frames);
            let chunk = buf.split_to(used).freeze();
            if !self.replay_between_transactions(&frames, &chunk).await
                && !self.replay(&frames, &chunk)
            {
                let candidate = self.repeat_candidate(&frames, &chunk);
                for (i, f) in frames.iter().enumerate() {
                    if self.standby_reads && f.tag == b'B' {
                        self.batch_in_read = batch_ends_plainly(&frames[i + 1..]);
                    }
                    let msg = chunk.slice(f.start..f.end);
                    if self.handle(f.tag, msg).await.is_err() {
                        tracing::trace!("request pump quits");
                        let _ = self.backends.flush().await;
                        return;
                    }
                }
                if let Some(before) = candidate {
                    self.record_repeat(before, &frames, &chunk);
                }
            }
            if let Err((region, e)) = self.backends.flush().await {
                // Answers queued before are relayed first: the response
                // side then reads the backend's last words and its end, and
                // reports the loss itself. With nothing queued for it, it
                // reports it from here.
                let _ = self.expect.send(Expect::Lost {
                    region,
                    reason: e.to_string(),
                });
                return;
            }
            if let Some(e) = bad {
                // Messages before the bad one are answered first.
                self.fatal(frame_error(e));
                return drain(client).await;
            }
            self.park_between_transactions();
        }
    }

    /// Transaction mode (ADR 22): a read that repeats the recorded batch
    /// or query in a region whose backend the session handed over takes a
    /// backend there first, so the repeat path can send it. `true` when
    /// the read was answered instead: no backend came (every batch or
    /// query in it gets the refusal, as the general path would answer).
    async fn replay_between_transactions(&mut self, frames: &[Frame], chunk: &Bytes) -> bool {
        if !self.between_transactions {
            return false;
        }
        let Some((region, answers)) = self.repeat_needs_backend(frames, chunk) else {
            return false;
        };
        let Err(e) = self.open(&region).await else {
            return false;
        };
        let mut out = BytesMut::new();
        for _ in 0..answers {
            e.encode(&mut out);
            messages::ready_for_query(&mut out, self.status());
        }
        self.local(out);
        true
    }

    fn fatal(&self, err: PgError) {
        let _ = self.expect.send(Expect::End(Some(err)));
    }

    async fn gone(&mut self) {
        let _ = self.client_gone.send(true);
        let _ = self.expect.send(Expect::End(None));
    }

    fn local(&self, out: BytesMut) {
        tracing::trace!(len = out.len(), "local answer");
        if !out.is_empty() {
            let _ = self.expect.send(Expect::Local(out));
        }
    }

    fn status(&self) -> u8 {
        match self.txn {
            Txn::Idle => b'I',
            Txn::Held { .. } | Txn::Pinned(_) | Txn::Fanned { .. } => b'T',
            Txn::FailedHeld => b'E',
        }
    }

    async fn handle(&mut self, tag: u8, msg: Bytes) -> Result<(), Quit> {
        tracing::trace!(tag = %(tag as char), len = msg.len(), "client message");
        let body = &msg[framing::HEADER_LEN..];
        if !matches!(tag, b'd' | b'c' | b'f' | b'H' | b'S') {
            // Any other message ends a checked COPY (or follows one that
            // never started); its backend must not take unchecked rows.
            self.end_copy_in().await?;
        } else if self.copy_in.is_some() && matches!(tag, b'd' | b'c' | b'f') {
            return self.copy_in_message(tag, msg).await;
        }
        match tag {
            b'Q' => self.query(&msg, body).await,
            b'P' => self.parse(&msg, body).await,
            b'B' => self.bind(&msg, body).await,
            b'D' => self.describe(&msg, body).await,
            b'E' => self.execute(&msg, body).await,
            b'C' => self.close(&msg, body).await,
            b'H' => self.flush_request(&msg).await,
            b'S' => self.sync(&msg).await,
            b'F' => self.function_call(&msg).await,
            b'd' | b'c' | b'f' => {
                if tag != b'd' {
                    self.batch.copy_pending = false;
                }
                let region = self.last_region.clone();
                let b = self.backend(&region).await?;
                b.push(&msg);
                Ok(())
            }
            b'X' => {
                let settled = matches!(self.txn, Txn::Idle) && self.copy_in.is_none();
                self.backends.hand_back(settled).await;
                self.gone().await;
                Err(Quit)
            }
            other => {
                self.fatal(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid frontend message type {other}"),
                ));
                Err(Quit)
            }
        }
    }

    /// The backend of `region`; a region that cannot be reached ends the
    /// session only if the session cannot go on without it.
    async fn backend(&mut self, region: &Arc<str>) -> Result<&mut super::backends::Backend, Quit> {
        if self.backends.live(region).is_some() {
            return self.backends.existing(region).ok_or(Quit);
        }
        if let Err(e) = self.backends.get(region, &self.shared, &self.expect).await {
            self.fatal(PgError {
                severity: crate::protocol::error::Severity::Fatal,
                ..e
            });
            return Err(Quit);
        }
        self.backends.existing(region).ok_or(Quit)
    }

    /// Opens the session's backend in `region` if needed; a region that is
    /// down refuses the statement (08006) and the session goes on.
    async fn open(&mut self, region: &Arc<str>) -> Result<(), PgError> {
        if self.backends.live(region).is_some() {
            return Ok(());
        }
        self.backends
            .get(region, &self.shared, &self.expect)
            .await
            .map(|_| ())
    }

    fn malformed(&self, e: frontend_msg::Malformed) -> Quit {
        self.fatal(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()));
        Quit
    }

    // ---- simple query -------------------------------------------------

    async fn query(&mut self, msg: &Bytes, body: &[u8]) -> Result<(), Quit> {
        let sql = frontend_msg::query(body).map_err(|e| self.malformed(e))?;
        self.refresh_if_stale().await;
        let analysis = self
            .shared
            .analysis
            .get_or_analyze(sql, &self.shared.tenancy());
        self.note_session_state(sql, &analysis.statements);
        if analysis.statements.is_empty() {
            let mut out = BytesMut::new();
            messages::empty_query(&mut out);
            messages::ready_for_query(&mut out, self.status());
            self.local(out);
            return Ok(());
        }
        if self.neutral_lane(&analysis) {
            // Nothing below applies to it: no tenant, no keys, no COPY, no
            // cursor, no other region, no local answer, no standby.
            let region = self.neutral_region(&self.tenant);
            if let Err(err) = self.open(&region).await {
                return self.refuse_query(err).await;
            }
            self.took_neutral_lane = crate::sql::is_plain(&analysis);
            return self.send_query(region, msg, None, None).await;
        }
        let ends_txn = matches!(
            analysis.statements.as_slice(),
            [p] if matches!(p.kind, StatementKind::Commit | StatementKind::Rollback)
        );
        if self.txn == Txn::FailedHeld && !ends_txn {
            let mut out = aborted().to_bytes();
            messages::ready_for_query(&mut out, b'E');
            self.local(out);
            return Ok(());
        }
        match self.answer_locally(&analysis.statements, sql).await {
            Ok(Some(mut out)) => {
                messages::ready_for_query(&mut out, self.status());
                self.local(out);
                return Ok(());
            }
            Ok(None) => {}
            Err(err) => return self.refuse_query(err).await,
        }
        if self.standby_reads && crate::sql::sets_config(sql) {
            self.primary_only = true;
        }
        if self.fan_query(msg, sql, &analysis.statements).await? {
            return Ok(());
        }
        let placed = match self.place_query(&analysis.statements).await {
            Ok((region, after, tenants)) => match self.open(&region).await {
                Ok(()) => Ok((region, after, tenants)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (region, after, tenants) = match placed {
            Ok(placed) => placed,
            Err(err) => return self.refuse_query(err).await,
        };
        match self
            .plan_copy_query(&analysis, sql, &region, &tenants)
            .await
        {
            Ok(Some(planned)) => return self.send_copy_query(region, msg, after, planned).await,
            Ok(None) => {}
            Err(err) => return self.refuse_query(err).await,
        }
        let encrypted = self
            .encrypt_query(sql, &analysis.statements, &tenants, &region)
            .await;
        // A FETCH reads with its cursor's keys (known before this query's
        // CLOSE forgets it); a DECLARE here is covered by the query's own.
        let encrypted = encrypted.map(|done| {
            let (text, own) = match done {
                Some((text, keys)) => (text, Some(keys)),
                None => (None, None),
            };
            let keys = self.with_fetch_keys(&analysis.statements, own.clone(), &region);
            self.track_query_cursors(&analysis.statements, own.as_ref());
            (text, keys)
        });
        match encrypted {
            Ok((rewritten, keys)) => {
                let msg = match rewritten {
                    Some(text) => {
                        let mut out = BytesMut::with_capacity(text.len() + 6);
                        if frontend::query(&text, &mut out).is_err() {
                            return self
                                .refuse_query(PgError::error(
                                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                                    "the statement with its encrypted values is too long",
                                ))
                                .await;
                        }
                        out.freeze()
                    }
                    None => msg.clone(),
                };
                let region = self
                    .read_target(region, || {
                        crate::sql::standby_safe(sql, &analysis.statements)
                    })
                    .await;
                self.send_query(region, &msg, Some(after), keys).await
            }
            Err(err) => self.refuse_query(err).await,
        }
    }

    /// Whether the session may run a statement of `analysis` on its
    /// neutral lane: one statement without tenant data
    /// ([`StatementPlan::is_neutral`]), outside a transaction or in one
    /// pinned to a region, no batch in every region under way, and no
    /// region reading from standbys. Such statements are most of what a
    /// pass-through session sends, and skipping the general path's checks
    /// (each of which finds nothing to do) keeps their cost near a relay's.
    fn neutral_lane(&self, analysis: &Analysis) -> bool {
        matches!(self.txn, Txn::Idle | Txn::Pinned(_))
            && !self.standby_reads
            && self.batch.fan.is_none()
            && matches!(analysis.statements.as_slice(), [p] if p.is_neutral())
    }

    /// Encrypts the literals of a simple query's statements that touch
    /// classified columns; returns the rewritten text (when any literal
    /// changed) and the keys its answers decrypt with. `None` when no
    /// statement touches a classified column.
    async fn encrypt_query(
        &self,
        sql: &str,
        plans: &[StatementPlan],
        tenants: &[Vec<String>],
        region: &Arc<str>,
    ) -> Result<Option<(Option<String>, Arc<StatementKeys>)>, PgError> {
        if !plans.iter().any(|p| !p.crypto.is_empty()) {
            return Ok(None);
        }
        for plan in plans {
            if let Some(e) = encrypt::refusal(&plan.crypto) {
                return Err(e);
            }
        }
        let cryptos: Vec<&crate::sql::CryptoPlan> = plans.iter().map(|p| &p.crypto).collect();
        let catalog = self.shared.ensure_catalog(region, &cryptos).await?;
        let mut keys = Vec::with_capacity(plans.len());
        for (plan, tenants) in plans.iter().zip(tenants) {
            keys.push(encrypt::load_keys(&self.shared, region, plan, tenants, None).await?);
        }
        let format = self.format.lock().map(|f| f.clone()).unwrap_or_default();
        let rewritten = if plans.iter().any(|p| !p.crypto.targets.is_empty()) {
            Some(encrypt::rewrite_text(
                sql,
                &cryptos,
                &keys,
                &encrypt::Sealer {
                    catalog: &catalog,
                    format: &format,
                    metrics: &self.shared.metrics.crypto(),
                },
            )?)
        } else {
            None
        };
        let mut all = StatementKeys {
            region: region.clone(),
            tenants: Vec::new(),
        };
        for k in keys.into_iter().flatten() {
            for (tenant, tk) in &k.tenants {
                if all.get(tenant).is_none() {
                    all.tenants.push((tenant.clone(), tk.clone()));
                }
            }
        }
        Ok(Some((rewritten, Arc::new(all))))
    }

    /// Places every statement of a simple query; they must agree on one
    /// region. Returns the region and the session state after the query.
    async fn place_query(
        &self,
        plans: &[StatementPlan],
    ) -> Result<(Arc<str>, After, Vec<Vec<String>>), PgError> {
        let mut tenants = Vec::with_capacity(plans.len());
        let mut after = After::unchanged(self);
        let mut region: Option<Arc<str>> = match &self.txn {
            Txn::Pinned(r) => Some(r.clone()),
            _ => None,
        };
        for plan in plans {
            if let Some(e) = refuse_kind(&plan.kind) {
                return Err(e);
            }
            after.ddl |= plan.kind == StatementKind::Ddl;
            match &plan.kind {
                StatementKind::SetTenant { local, value } => {
                    let v =
                        match value {
                            Some(TenantSource::Literal(t)) => Some(t.clone()),
                            Some(TenantSource::Param(_)) => return Err(route::refusal(
                                "regionguard.tenant cannot come from a parameter in a simple query",
                                "use a literal: SET regionguard.tenant = '<tenant>'",
                            )),
                            None => None,
                        };
                    if let Some(t) = &v {
                        route::region_of(&self.shared, t).await?;
                    }
                    apply_set(&mut after.tenant, *local, v, after.txn != Txn::Idle);
                    tenants.push(Vec::new());
                    continue;
                }
                StatementKind::SessionState { resets_tenant } => {
                    after.session_state = true;
                    if *resets_tenant {
                        after.resets = true;
                        after.tenant.session = None;
                        after.tenant.local = None;
                    }
                }
                StatementKind::Begin if after.txn == Txn::Idle => {
                    after.txn = Txn::Held {
                        begin: String::new(),
                    };
                }
                StatementKind::Commit | StatementKind::Rollback => {
                    after.txn = Txn::Idle;
                    after.tenant.local = None;
                }
                _ => {}
            }
            let (placement, found) =
                route::place(&self.shared, plan, None, after.tenant.effective()).await?;
            tenants.push(found);
            if let Placement::Region(r) = placement {
                match &region {
                    Some(prev) if *prev != r => return Err(route::refusal(
                        format!("the query needs two regions ({prev} and {r})"),
                        "send statements for different regions separately, outside a transaction",
                    )),
                    _ => region = Some(r),
                }
            }
        }
        let region = region
            .or_else(|| self.fetch_region(plans))
            .unwrap_or_else(|| self.neutral_region(&after.tenant));
        Ok((region, after, tenants))
    }

    /// Where statements without tenant data go.
    fn neutral_region(&self, tenant: &TenantSetting) -> Arc<str> {
        if let Txn::Pinned(r) | Txn::Fanned { primary: r } = &self.txn {
            return r.clone();
        }
        if let Some(t) = tenant.effective() {
            if let Some(r) = self.shared.directory.cached_region(t) {
                if let Some((name, _)) = self.shared.regions.get_key_value(&*r) {
                    return name.clone();
                }
            }
        }
        self.home.clone()
    }

    /// Sends a simple query to `region` and applies the session state it
    /// leaves (`after`; `None` when it changes none, which spares cloning
    /// the state for a statement on the neutral lane).
    async fn send_query(
        &mut self,
        region: Arc<str>,
        msg: &Bytes,
        after: Option<After>,
        keys: Option<Arc<StatementKeys>>,
    ) -> Result<(), Quit> {
        self.pin_held(&region).await?;
        let b = self.backend(&region).await?;
        b.shared.stats.note_statement(b.batches, msg);
        b.push_batch_end(msg);
        let _ = self.expect.send(Expect::Relay {
            region: region.clone(),
            query: keys,
        });
        if let Some(after) = after {
            if after.ddl {
                self.note_ddl();
            }
            if after.session_state {
                let sql = frontend_msg::query(&msg[framing::HEADER_LEN..])
                    .unwrap_or("")
                    .to_string();
                self.share_session_state(&region, &sql, after.resets)
                    .await?;
            }
            self.tenant = after.tenant;
            self.txn = match after.txn {
                Txn::Held { .. } => Txn::Pinned(region.clone()),
                Txn::Pinned(_) => Txn::Pinned(region.clone()),
                other => other,
            };
        }
        if self.txn == Txn::Idle {
            self.tenant.local = None;
        }
        self.last_region = region;
        Ok(())
    }

    /// Where a read goes: the session's standby backend of `region` when
    /// the region reads from standbys, the session is outside any
    /// transaction (a held BEGIN included) and holds no state only its
    /// primary has (`primary_only`), `safe` says a standby may run the
    /// read, and a standby can be reached; else `region` itself, its
    /// primary. Never another region.
    async fn read_target(&mut self, region: Arc<str>, safe: impl FnOnce() -> bool) -> Arc<str> {
        if !self.standby_reads || self.txn != Txn::Idle || self.primary_only || !safe() {
            return region;
        }
        match self.standby(&region).await {
            Some(key) => {
                self.shared.metrics.standby_read(&region);
                key
            }
            None => region,
        }
    }

    /// The key of the session's standby backend of `region`, opened now if
    /// needed; `None` when the region does not read from standbys, another
    /// session is connecting to one, or none can be reached (then none is
    /// tried again for a while).
    async fn standby(&mut self, region: &Arc<str>) -> Option<Arc<str>> {
        let shared = Arc::clone(&self.shared);
        let standbys = shared.region(region)?.standbys.as_ref()?;
        if self.backends.live(&standbys.key).is_some() {
            return Some(standbys.key.clone());
        }
        if !standbys.claim() {
            return None;
        }
        match self
            .backends
            .get(&standbys.key, &shared, &self.expect)
            .await
        {
            Ok(_) => {
                standbys.reached();
                Some(standbys.key.clone())
            }
            Err(e) => {
                tracing::warn!(region = %region, reason = %e.message, "no standby reachable; reads go to the primary");
                standbys.failed();
                None
            }
        }
    }

    /// Sends session state (SET, LISTEN, PREPARE…) to the session's other
    /// open backends too, and remembers it for backends opened later.
    async fn share_session_state(
        &mut self,
        sent_to: &Arc<str>,
        sql: &str,
        resets: bool,
    ) -> Result<(), Quit> {
        if resets {
            self.backends.forget_replay();
        }
        self.backends.remember(sql);
        let mut others = Vec::new();
        for (region, b) in self.backends.iter_mut() {
            if region != sent_to {
                b.push_query(sql);
                others.push(region.clone());
            }
        }
        for region in others {
            let _ = self.expect.send(Expect::Discard { region });
        }
        Ok(())
    }

    /// Makes the transaction fail in every region but `except` (a
    /// transaction that runs in every region failed in `except`).
    fn fail_others(&mut self, except: &Arc<str>) {
        let mut failed = Vec::new();
        for (region, b) in self.backends.iter_mut() {
            if region != except {
                b.push_query(FAIL_QUERY);
                failed.push(region.clone());
            }
        }
        for region in failed {
            let _ = self.expect.send(Expect::Discard { region });
        }
    }

    /// A held BEGIN goes to the region of the first statement that needs
    /// one, ahead of it; its answer was already given.
    async fn pin_held(&mut self, region: &Arc<str>) -> Result<(), Quit> {
        if let Txn::Held { begin } = &self.txn {
            let begin = if begin.is_empty() {
                "BEGIN".to_string()
            } else {
                begin.clone()
            };
            let b = self.backend(region).await?;
            b.push_query(&begin);
            self.begin_sql = begin;
            let _ = self.expect.send(Expect::Discard {
                region: region.clone(),
            });
            self.txn = Txn::Pinned(region.clone());
        }
        Ok(())
    }

    async fn refuse_query(&mut self, err: PgError) -> Result<(), Quit> {
        tracing::info!(code = err.code, reason = %err.message, "statement refused");
        self.shared.metrics.statement_refused(&err);
        match self.txn.clone() {
            Txn::Pinned(region) => {
                let b = self.backend(&region).await?;
                b.shared.override_error(b.batches, err);
                b.push_query(FAIL_QUERY);
                let _ = self.expect.send(Expect::Relay {
                    region,
                    query: None,
                });
            }
            Txn::Fanned { primary } => {
                // The transaction fails in every region, as on one server.
                self.fail_others(&primary);
                let b = self.backend(&primary).await?;
                b.shared.override_error(b.batches, err);
                b.push_query(FAIL_QUERY);
                let _ = self.expect.send(Expect::Relay {
                    region: primary,
                    query: None,
                });
            }
            Txn::Held { .. } | Txn::FailedHeld => {
                self.txn = Txn::FailedHeld;
                let mut out = err.to_bytes();
                messages::ready_for_query(&mut out, b'E');
                self.local(out);
            }
            Txn::Idle => {
                let mut out = err.to_bytes();
                messages::ready_for_query(&mut out, b'I');
                self.local(out);
            }
        }
        Ok(())
    }

    /// Statements the proxy answers itself when the whole query is made of
    /// them: `regionguard.tenant` settings, and BEGIN/COMMIT/ROLLBACK of a
    /// transaction that has not reached a backend yet.
    async fn answer_locally(
        &mut self,
        plans: &[StatementPlan],
        sql: &str,
    ) -> Result<Option<BytesMut>, PgError> {
        let all_tenant = plans.iter().all(|p| {
            matches!(
                p.kind,
                StatementKind::SetTenant { .. } | StatementKind::ShowTenant
            )
        });
        let mut out = BytesMut::new();
        if all_tenant {
            // A failing statement undoes the query's earlier settings, as an
            // aborted transaction undoes SET in Postgres.
            let before = self.tenant.clone();
            for plan in plans {
                if let Err(e) = self.tenant_statement(plan, None, &mut out).await {
                    self.tenant = before;
                    return Err(e);
                }
            }
            return Ok(Some(out));
        }
        let [plan] = plans else { return Ok(None) };
        match (&plan.kind, &self.txn) {
            (StatementKind::Begin, Txn::Idle) => {
                let text = sql.trim().trim_end_matches(';').trim().to_string();
                self.txn = Txn::Held { begin: text };
                messages::command_complete(&mut out, "BEGIN");
            }
            (
                StatementKind::Commit | StatementKind::Rollback,
                Txn::Held { .. } | Txn::FailedHeld,
            ) => {
                let tag = if plan.kind == StatementKind::Commit && self.txn != Txn::FailedHeld {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                self.txn = Txn::Idle;
                self.tenant.local = None;
                messages::command_complete(&mut out, tag);
            }
            _ => return Ok(None),
        }
        Ok(Some(out))
    }

    /// SET/RESET/SHOW regionguard.tenant, answered by the proxy.
    async fn tenant_statement(
        &mut self,
        plan: &StatementPlan,
        bind: Option<&Params<'_>>,
        out: &mut BytesMut,
    ) -> Result<(), PgError> {
        match &plan.kind {
            StatementKind::SetTenant { local, value } => {
                let v =
                    match value {
                        Some(TenantSource::Literal(t)) => Some(t.clone()),
                        Some(TenantSource::Param(n)) => match bind {
                            Some(p) => {
                                let ty = p.types.get(n.saturating_sub(1)).copied().unwrap_or(0);
                                Some(super::tenant_value::from_param(p.bind, *n, ty)?)
                            }
                            None => return Err(route::refusal(
                                "regionguard.tenant cannot come from a parameter in a simple query",
                                "use a literal: SET regionguard.tenant = '<tenant>'",
                            )),
                        },
                        None => None,
                    };
                if let Some(t) = &v {
                    let region = route::region_of(&self.shared, t).await?;
                    if let Txn::Pinned(p) = &self.txn {
                        if *p != region {
                            return Err(route::refusal(
                                format!("the transaction runs in region {p}; that tenant lives in region {region}"),
                                "finish the transaction before switching to a tenant of another region",
                            ));
                        }
                    }
                }
                let in_txn = self.txn != Txn::Idle;
                if *local && !in_txn {
                    messages::warning(
                        out,
                        "25P01",
                        "SET LOCAL can only be used in transaction blocks",
                    );
                }
                apply_set(&mut self.tenant, *local, v, in_txn);
                messages::command_complete(out, if value.is_some() { "SET" } else { "RESET" });
            }
            StatementKind::ShowTenant => {
                messages::text_row_description(out, crate::sql::TENANT_KEY);
                messages::text_data_row(out, Some(self.tenant.effective().unwrap_or("")));
                messages::command_complete(out, "SHOW");
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether `rest`, the messages read after a Bind, hold its batch's Sync
/// with only Describe, Execute, Close or Flush before it: the batch runs
/// nothing else, so it may go to a standby.
fn batch_ends_plainly(rest: &[Frame]) -> bool {
    for f in rest {
        match f.tag {
            b'S' => return true,
            b'D' | b'E' | b'C' | b'H' => {}
            _ => return false,
        }
    }
    false
}

/// After a fatal protocol error: reads and drops what the client is still
/// sending (a large message, say) for a moment, so that closing the socket
/// does not reset the connection before the client has read the error.
async fn drain(mut client: ReadHalf) {
    let mut sink = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, client.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}

/// The session state a simple query leaves behind, applied once it is sent.
struct After {
    tenant: TenantSetting,
    txn: Txn,
    session_state: bool,
    resets: bool,
    /// The query holds DDL (the catalogs are read again after it).
    ddl: bool,
}

impl After {
    /// The session state as it is: a statement that changes none of it.
    fn unchanged(requests: &Requests) -> Self {
        After {
            tenant: requests.tenant.clone(),
            txn: requests.txn.clone(),
            session_state: false,
            resets: false,
            ddl: false,
        }
    }
}

fn apply_set(t: &mut TenantSetting, local: bool, value: Option<String>, in_txn: bool) {
    if local {
        if in_txn {
            t.local = value;
        }
        return;
    }
    match value {
        Some(v) => t.session = Some(v),
        None => t.session = None,
    }
    t.local = None;
}

fn aborted() -> PgError {
    PgError::error(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// Statement kinds refused whatever their tenant.
fn refuse_kind(kind: &StatementKind) -> Option<PgError> {
    match kind {
        StatementKind::TwoPhase => Some(
            PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "two-phase commit commands are not available through RegionGuard",
            )
            .with_hint(
                "RegionGuard uses PREPARE TRANSACTION itself to apply changes to every region",
            ),
        ),
        _ => None,
    }
}

fn frame_error(e: framing::FrameError) -> PgError {
    match e {
        framing::FrameError::TooLarge { .. } => PgError::fatal(sqlstate::PROGRAM_LIMIT_EXCEEDED, e.to_string())
            .with_hint("raise listen.max_message_bytes in the RegionGuard config if such messages are expected"),
        framing::FrameError::BadLength { .. } => PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(tags: &[u8]) -> Vec<Frame> {
        tags.iter()
            .map(|&tag| Frame {
                tag,
                start: 0,
                end: 0,
            })
            .collect()
    }

    #[test]
    fn a_batch_ends_plainly_when_only_describe_execute_close_or_flush_precede_its_sync() {
        assert!(batch_ends_plainly(&frames(b"ES")));
        assert!(batch_ends_plainly(&frames(b"DEHCS")));
        assert!(
            batch_ends_plainly(&frames(b"ESPBES")),
            "the next batch is its own"
        );
        assert!(!batch_ends_plainly(&frames(b"E")), "Sync not read yet");
        assert!(
            !batch_ends_plainly(&frames(b"EPBES")),
            "another statement runs"
        );
        assert!(!batch_ends_plainly(&frames(b"EBES")), "another portal runs");
        assert!(!batch_ends_plainly(&frames(b"EQ")));
        assert!(!batch_ends_plainly(&frames(b"EF")));
    }
}
