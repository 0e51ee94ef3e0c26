//! The request side's view of a session's backend sessions: one per region,
//! opened lazily with the client's startup parameters and the session state
//! replayed, written in coalesced batches.

use super::expect::{BackendShared, Expect, Parked};
use super::handback::Handback;
use super::plan_queue::PlanSender;
use super::region_map::RegionMap;
use super::NameHasher;
use crate::backend::active::ActiveBackends;
use crate::backend::pool::Origin;
use crate::backend::{self, BackendConn, ConnectError};
use crate::net::WriteHalf;
use crate::protocol::error::{sqlstate, PgError};
use crate::server::state::{RegionRuntime, Shared};
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;

/// One backend session as the request side sees it.
pub struct Backend {
    /// `None` while parked between transactions (transaction mode).
    writer: Option<WriteHalf>,
    pub shared: Arc<BackendShared>,
    /// Batches sent so far (Query, Sync, FunctionCall, injected ones too):
    /// the index of the batch being written now.
    pub batches: u64,
    out: BytesMut,
    /// Housekeeping (Close of statements closed elsewhere) that waits for
    /// this backend's next batch, so an idle backend stays silent.
    deferred: BytesMut,
    /// Statements prepared here (`""` is the unnamed one).
    pub prepared: HashSet<String, NameHasher>,
    /// What the session was opened as, for the idle pool; `None` for a
    /// standby's, which is never pooled.
    origin: Option<Origin>,
    /// Transaction mode: the region's permit for a backend serving a
    /// client, held while this session has it.
    permit: Option<OwnedSemaphorePermit>,
}

impl Backend {
    /// Takes back what was parked (transaction mode), unless the response
    /// side took it to pool the backend: `false` then, and this entry is
    /// stale. `true` for a backend that was not parked.
    fn unpark(&mut self) -> bool {
        if self.writer.is_some() {
            return true;
        }
        match self.shared.unpark() {
            Some(p) => {
                self.writer = Some(p.writer);
                self.out = p.out;
                self.origin = Some(p.origin);
                self.permit = Some(p.permit);
                true
            }
            None => false,
        }
    }

    /// Queues bytes for this backend; written at the next flush.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.deferred.is_empty() {
            let deferred = self.deferred.split();
            self.out.extend_from_slice(&deferred);
        }
        self.out.extend_from_slice(bytes);
    }

    /// Queues a message and records that it ends a batch. A simple Query
    /// (the client's or one the proxy injects) destroys the unnamed
    /// prepared statement, so it is no longer counted as prepared here.
    pub fn push_batch_end(&mut self, bytes: &[u8]) {
        if bytes.first() == Some(&b'Q') && !self.prepared.is_empty() {
            self.prepared.remove("");
        }
        self.push(bytes);
        self.batches += 1;
    }

    fn is_dead(&self) -> bool {
        self.shared.dead.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sends `bytes` with this backend's next batch.
    pub fn defer(&mut self, bytes: &[u8]) {
        self.deferred.extend_from_slice(bytes);
    }

    /// Queues a simple Query the proxy injects (its answer is discarded).
    pub fn push_query(&mut self, sql: &str) {
        let mut b = BytesMut::new();
        if frontend::query(sql, &mut b).is_ok() {
            self.push_batch_end(&b);
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(std::io::Error::other("backend parked while in use"));
        };
        let r = writer.write_all(&self.out).await;
        self.shared.stats.sent(self.out.len());
        self.out.clear();
        r
    }
}

/// All backend sessions of one client session.
pub struct Backends {
    map: RegionMap<Backend>,
    /// Startup parameters every backend session is opened with.
    params: Arc<[(String, String)]>,
    /// Session-state statements (SET, PREPARE, LISTEN…) to replay on a
    /// backend opened later, so every region sees the same session.
    replay: Vec<String>,
    /// The client's cancel key, to register each backend's cancel target.
    cancel_pid: i32,
    /// Where backends go when the client says goodbye.
    handback: Arc<Handback>,
    /// Some backends may be parked (transaction mode, ADR 22).
    parked: bool,
}

impl Backends {
    pub fn new(params: Arc<[(String, String)]>, cancel_pid: i32, handback: Arc<Handback>) -> Self {
        Backends {
            map: RegionMap::default(),
            params,
            replay: Vec::new(),
            cancel_pid,
            handback,
            parked: false,
        }
    }

    /// Adopts the backend opened during startup.
    pub fn adopt(
        &mut self,
        region: Arc<str>,
        writer: WriteHalf,
        shared: Arc<BackendShared>,
        origin: Origin,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let mut b = new_backend(writer, shared, Some(origin));
        b.permit = permit;
        self.map.insert(region, b);
    }

    /// Whether no session state waits to be replayed on backends opened
    /// later (no SET, LISTEN, PREPARE… since the last reset).
    pub fn no_replay(&self) -> bool {
        self.replay.is_empty()
    }

    /// Transaction mode (ADR 22), between transactions: parks the write
    /// half of every backend that holds a permit and has nothing queued,
    /// and asks the response side to pool it once its answers are relayed.
    pub fn park(&mut self, expect: &PlanSender) {
        for (region, b) in self.map.iter_mut() {
            if b.permit.is_none() || !b.out.is_empty() || !b.deferred.is_empty() || b.is_dead() {
                continue;
            }
            let (Some(writer), Some(origin), Some(permit)) =
                (b.writer.take(), b.origin.take(), b.permit.take())
            else {
                continue;
            };
            b.shared.park(Parked {
                sent: b.batches,
                writer,
                out: std::mem::take(&mut b.out),
                origin,
                permit,
            });
            self.parked = true;
            let _ = expect.send(Expect::Detach {
                region: region.clone(),
            });
        }
    }

    /// Takes back the parked backends the response side did not pool, and
    /// forgets the ones it did: the next statement for their region
    /// acquires one again.
    fn reclaim(&mut self) {
        if !std::mem::take(&mut self.parked) {
            return;
        }
        self.map.retain(|_, b| b.unpark());
    }

    /// [`Self::reclaim`] for `region` alone: a session takes back only the
    /// backends its statements use, so while it waits for a backend in one
    /// region, the ones it parked elsewhere can go to other sessions.
    fn reclaim_one(&mut self, region: &str) {
        if self.parked && self.map.get_mut(region).is_some_and(|b| !b.unpark()) {
            self.map.remove(region);
        }
    }

    /// Every backend of the session (parked ones taken back first).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut Backend)> {
        self.reclaim();
        self.map.iter_mut()
    }

    /// Forgets statement `name` on every backend: it is prepared anew or
    /// closed. Parked backends stay parked (transaction mode): their
    /// bookkeeping is the session's, not the writer's.
    pub fn forget_statement(&mut self, name: &str) {
        for (_, b) in self.map.iter_mut() {
            b.prepared.remove(name);
            b.shared.forget_statement(name);
        }
    }

    /// The type a server inferred for parameter `n` (1-based) of statement
    /// `name` on any of the session's backends, parked ones included.
    pub fn inferred_param_type(&self, name: &str, n: usize) -> Option<u32> {
        self.map.values().find_map(|b| b.shared.param_type(name, n))
    }

    /// The backend of `region` if the session already has one.
    pub fn existing(&mut self, region: &str) -> Option<&mut Backend> {
        self.reclaim_one(region);
        self.map.get_mut(region)
    }

    /// The backend of `region` if the session has one that is not known to
    /// be dead: what [`Backends::get`] returns without opening one.
    pub fn live(&mut self, region: &str) -> Option<&mut Backend> {
        self.reclaim_one(region);
        self.map.get_mut(region).filter(|b| !b.is_dead())
    }

    /// Records a session-state statement for regions opened later.
    pub fn remember(&mut self, sql: &str) {
        self.replay.push(sql.to_string());
    }

    /// `DISCARD ALL` / `RESET ALL`: nothing older needs replaying.
    pub fn forget_replay(&mut self) {
        self.replay.clear();
    }

    /// The backend of `region`, opened now if the session has none there.
    /// `region` may be a region's standby key (see `backend::standby`):
    /// then a hot standby of that region is opened.
    pub async fn get(
        &mut self,
        region: &Arc<str>,
        shared: &Shared,
        expect: &PlanSender,
    ) -> Result<&mut Backend, PgError> {
        self.reclaim_one(region);
        if self.map.get(region).is_some_and(|b| b.is_dead()) {
            self.map.remove(region);
        }
        if !self.map.contains_key(region) {
            let b = self.open(region, shared, expect).await?;
            self.map.insert(region.clone(), b);
        }
        self.map
            .get_mut(region)
            .ok_or_else(|| PgError::error(sqlstate::INTERNAL_ERROR, "backend vanished"))
    }

    async fn open(
        &mut self,
        region: &Arc<str>,
        shared: &Shared,
        expect: &PlanSender,
    ) -> Result<Backend, PgError> {
        let name = backend::standby::region_of(region);
        let rt = shared.region(name).ok_or_else(|| {
            PgError::error(
                sqlstate::INTERNAL_ERROR,
                format!("region {name} is not configured"),
            )
        })?;
        let standby = backend::standby::is_standby(region);
        let permit = match (&rt.active, standby) {
            (Some(active), false) => Some(acquire(name, active, shared).await?),
            _ => None,
        };
        let connected = if standby {
            backend::connect_standby(name, &rt.config, &rt.tls, &rt.primary, &self.params)
                .await
                .map(|c| (c, false))
        } else {
            primary_session(name, rt, &self.params).await
        };
        let (conn, reused) = connected
            .map_err(|e| match e {
                ConnectError::Unavailable { .. } => {
                    shared.metrics.connect_failed(name, &e);
                    PgError::error(sqlstate::CONNECTION_FAILURE, e.to_string())
                    .with_hint("the region's Postgres servers are down or unreachable; other regions keep working")
                }
                ConnectError::Refused { region, .. } => PgError::error(
                    sqlstate::CONNECTION_FAILURE,
                    format!("region {region} refused a session with this session's parameters"),
                )
                .with_hint("check the startup parameters (options, search_path) against that region"),
            })?;
        tracing::debug!(region = %region, backend = %conn.addr, reused, "opened backend session");
        if let Some(mut entry) = shared.cancel.get_mut(&self.cancel_pid) {
            entry.targets.push(conn.cancel.clone());
        }
        let stats = shared.metrics.backend_connected(
            name,
            conn.host_index,
            &conn.failed_hosts,
            conn.failed_over,
            reused,
        );
        let origin = (!standby).then(|| Origin::of(&conn, &self.params));
        let (reader, writer) = conn.stream.split();
        let bshared = Arc::new(BackendShared::new(stats));
        let (read_buffers, out) = match conn.buffers {
            Some(b) => (Some((b.read, b.frames)), Some(b.write)),
            None => (None, None),
        };
        let _ = expect.send(Expect::Attach {
            region: region.clone(),
            addr: conn.addr.clone(),
            reader,
            shared: bshared.clone(),
            buffers: read_buffers,
        });
        let mut b = new_backend(writer, bshared, origin);
        if let Some(out) = out {
            b.out = out;
        }
        b.permit = permit;
        if standby {
            // One query each: a standby refuses some session state (LISTEN),
            // and one refusal must not undo the settings after it.
            for sql in &self.replay {
                b.push_query(sql);
                let _ = expect.send(Expect::Discard {
                    region: region.clone(),
                });
            }
        } else if !self.replay.is_empty() {
            b.push_query(&self.replay.join(";\n"));
            let _ = expect.send(Expect::Discard {
                region: region.clone(),
            });
        }
        Ok(b)
    }

    /// Writes every backend's queued bytes. A backend found dead is
    /// dropped, a standby backend whose write fails is marked dead; any
    /// other write failure is the caller's to report.
    pub async fn flush(&mut self) -> Result<(), (Arc<str>, std::io::Error)> {
        self.map.retain(|_, b| !b.is_dead());
        for (region, b) in self.map.iter_mut() {
            let Err(e) = b.flush().await else { continue };
            if !b.is_dead() {
                if crate::backend::standby::is_standby(region) {
                    // Its reader reports the read that broke (08006) and
                    // the session goes on without it.
                    b.shared
                        .dead
                        .store(true, std::sync::atomic::Ordering::Release);
                    continue;
                }
                return Err((region.clone(), e));
            }
        }
        Ok(())
    }

    /// Writes every backend's queued bytes, going on past failures (a
    /// statement sent to several regions must reach all that can take it);
    /// returns the regions whose write failed.
    pub async fn flush_all(&mut self) -> Vec<Arc<str>> {
        let mut failed = Vec::new();
        for (region, b) in self.map.iter_mut() {
            if b.flush().await.is_err() {
                failed.push(region.clone());
            }
        }
        failed
    }

    /// The client said goodbye: with `settled` (no transaction, no COPY),
    /// each primary backend's write half is left for the idle pool once
    /// what was queued for it is written; the others get Terminate.
    pub async fn hand_back(&mut self, settled: bool) {
        self.reclaim();
        let mut t = BytesMut::new();
        frontend::terminate(&mut t);
        for (region, mut b) in self.map.drain() {
            let written = b.flush().await.is_ok();
            match (b.origin.take(), b.writer.take()) {
                (Some(origin), Some(writer)) if settled && written && !b.is_dead() => {
                    let permit = b.permit.take();
                    self.handback
                        .writer(region, writer, origin, b.batches, permit);
                }
                (_, writer) => {
                    b.writer = writer;
                    b.push(&t);
                    let _ = b.flush().await;
                }
            }
        }
    }
}

/// A backend session of `name`'s primary with these startup parameters: an
/// idle one from the region's pool when there is one (`true`), else a new
/// one.
pub async fn primary_session(
    name: &str,
    rt: &RegionRuntime,
    params: &[(String, String)],
) -> Result<(BackendConn, bool), ConnectError> {
    let host = rt.primary.index() % rt.config.hosts.len().max(1);
    if let Some(conn) = rt.idle.take(name, host, params) {
        return Ok((conn, true));
    }
    let first = backend::connect(name, &rt.config, &rt.tls, &rt.primary, params).await;
    match first {
        Err(e) if e.is_out_of_slots() && rt.idle.held() > 0 => {
            // The server's (or the role's) connection slots are full, some
            // with this proxy's idle backends: they give way to a client.
            tracing::info!(
                region = name,
                "connection slots full: closing idle pooled backends"
            );
            rt.idle.clear().await;
            let mut last = Err(e);
            for _ in 0..10 {
                // A closed backend frees its slot when its process exits.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                last = backend::connect(name, &rt.config, &rt.tls, &rt.primary, params).await;
                if !last.as_ref().is_err_and(|e| e.is_out_of_slots()) {
                    break;
                }
            }
            last.map(|c| (c, false))
        }
        other => other.map(|c| (c, false)),
    }
}

/// Transaction mode: a permit for one more backend of `region` serving a
/// client, waiting up to `backend_pool.acquire_timeout_secs` for one to
/// come back.
pub async fn acquire(
    region: &str,
    active: &ActiveBackends,
    shared: &Shared,
) -> Result<OwnedSemaphorePermit, PgError> {
    let pool = &shared.config.backend_pool;
    let wait = std::time::Duration::from_secs(pool.acquire_timeout_secs);
    let counted = || shared.metrics.acquire_waited(region, false);
    let taken = active.take(&shared.backend_wanted, wait, counted).await;
    match taken {
        Some(p) => Ok(p),
        None => Err({
            shared.metrics.acquire_waited(region, true);
            PgError::error(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "region {region}: all {} backend sessions stayed busy for {} s",
                pool.max_active_per_region, pool.acquire_timeout_secs
            ),
        )
            .with_hint(
                "raise backend_pool.max_active_per_region (within the region's max_connections) or shorten transactions; sessions that keep session state (SET, LISTEN, named prepared statements, temporary tables, advisory locks) hold their backend while connected",
            )
        }),
    }
}

fn new_backend(writer: WriteHalf, shared: Arc<BackendShared>, origin: Option<Origin>) -> Backend {
    Backend {
        writer: Some(writer),
        shared,
        batches: 0,
        out: BytesMut::with_capacity(16 * 1024),
        deferred: BytesMut::new(),
        prepared: HashSet::default(),
        origin,
        permit: None,
    }
}
