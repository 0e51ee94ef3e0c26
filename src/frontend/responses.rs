//! Backend(s) → client: works through the [`Expect`] queue in order and is
//! the only writer of the client's connection after startup.
//!
//! Responses are copied into one output buffer and written once per round
//! trip: before waiting on a backend again, and when the queue is drained.
//! Flushing before every wait matters for COPY FROM STDIN, where the client
//! sends data only after it has seen CopyInResponse.

use super::copy_out::CopyOut;
use super::decrypt::{self, RowPlan};
use super::encrypt::StatementKeys;
use super::expect::{BackendShared, Collected, Expect, Parked, RowUse};
use super::handback::Handback;
use super::plan_queue::{Empty, PlanReceiver};
use super::region_map::RegionMap;
use super::woken::Woken;
use crate::backend::pool::Buffers;
use crate::backend::standby;
use crate::metrics::crypto::Op;
use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::framing::{self, read_cstr, Frame};
use crate::server::state::{Phase, Shared};
use crate::types::SessionFormat;
use bytes::{Buf, BytesMut};
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const READ_CHUNK: usize = 64 * 1024;
/// Backend messages are bounded by Postgres itself (1 GiB fields); this cap
/// only guards against a corrupt stream.
const MAX_BACKEND_MESSAGE: usize = i32::MAX as usize;
/// Write to the client once this much is buffered, even mid-batch.
const FLUSH_AT: usize = 256 * 1024;

/// Why the session ended, for the log.
#[derive(Debug)]
pub enum SessionEnd {
    ClientGone,
    ClientError(String),
    BackendLost { region: String, reason: String },
    ClientWriteFailed,
    Shutdown,
}

struct Reader {
    rd: ReadHalf,
    buf: BytesMut,
    frames: Vec<Frame>,
    shared: Arc<BackendShared>,
    /// ReadyForQuery messages received: the index of the batch in progress.
    done: u64,
    addr: String,
    fatal_seen: bool,
    /// A COPY FROM STDIN started (CopyInResponse seen) and has not ended.
    copy_active: bool,
    /// The buffer starts with a response to a batch the queue has not
    /// reached yet: leave this backend alone until then.
    parked: bool,
    /// Transaction status of this backend's last ReadyForQuery.
    status: u8,
}

impl Reader {
    async fn read_more(&mut self) -> std::io::Result<usize> {
        let need = framing::needed(&self.buf, MAX_BACKEND_MESSAGE).unwrap_or(0);
        if self.buf.capacity() - self.buf.len() < need.max(READ_CHUNK / 4) {
            self.buf.reserve(need.max(READ_CHUNK));
        }
        let read = self.rd.read_buf(&mut self.buf).await;
        if let Ok(n) = read {
            self.shared.stats.received(n);
        }
        read
    }
}

/// How a batch's responses are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Relay,
    Discard,
    UntilCopyIn,
}

/// The response side of a session.
pub struct Responses {
    client: WriteHalf,
    out: BytesMut,
    readers: RegionMap<Reader>,
    /// Transaction status of the last ReadyForQuery the client got.
    status: u8,
    phase: watch::Receiver<Phase>,
    /// Wakes the session when `phase` changes.
    phase_signal: PhaseSignal,
    phase_open: bool,
    client_gone: watch::Receiver<bool>,
    /// False once the request side ended without the client leaving (its
    /// sender dropped): queued answers still go out.
    gone_open: bool,
    sent: crate::metrics::ByteCounter,
    /// Set when columns are classified: decryption of answers.
    crypto: Option<AnswerCrypto>,
    /// Answers go to a [`Expect::Collect`] buffer, not to the client: no
    /// flushing, and neither the client leaving nor shutdown interrupts
    /// the two-phase commit in progress.
    collecting: bool,
    /// Where backends go when the client says goodbye (ADR 21).
    handback: Option<Arc<Handback>>,
    /// Transaction mode (ADR 22): the regions' pools, and the client's
    /// cancel key whose targets a pooled backend leaves.
    between: Option<(Arc<Shared>, i32)>,
    /// Transaction mode: regions whose parked backend this session keeps
    /// while no statement waits for one there.
    kept: Vec<Arc<str>>,
}

/// What the answer path needs to decrypt.
pub struct AnswerCrypto {
    pub shared: Arc<Shared>,
    /// The session's text I/O settings, kept current from ParameterStatus.
    pub format: Arc<std::sync::Mutex<SessionFormat>>,
    /// How to decrypt the rows of the result in progress.
    rows: Option<RowPlan>,
    /// A value failed to decrypt: the rest of the batch is dropped until
    /// its ReadyForQuery, after the error went to the client.
    failed: bool,
    /// A COPY TO STDOUT whose CopyData is being decrypted.
    copy_out: Option<CopyOut>,
}

impl AnswerCrypto {
    pub fn new(shared: Arc<Shared>, format: Arc<std::sync::Mutex<SessionFormat>>) -> Self {
        AnswerCrypto {
            shared,
            format,
            rows: None,
            failed: false,
            copy_out: None,
        }
    }

    /// Whether `tag` belongs to a COPY TO STDOUT being decrypted (handle
    /// it with [`Self::copy_out_message`]).
    fn copying(&self, tag: u8) -> bool {
        self.copy_out.is_some() && matches!(tag, b'd' | b'c')
    }

    /// CopyData or CopyDone of a COPY TO STDOUT being decrypted: the rows
    /// decrypted go to `out`; a failure sends the error instead and drops
    /// the rest of the batch.
    async fn copy_out_message(&mut self, tag: u8, body: &[u8], region: &str, out: &mut BytesMut) {
        let Some(copy) = self.copy_out.as_mut() else {
            return;
        };
        let result = if tag == b'd' {
            copy.data(body, out).await
        } else {
            copy.done(out).await
        };
        match result {
            Ok(()) if tag == b'c' => {
                out.extend_from_slice(&tag_frame(tag, body));
                self.copy_out = None;
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(region, code = e.code, "a COPY value could not be decrypted");
                e.encode(out);
                self.copy_out = None;
                self.failed = true;
            }
        }
    }

    /// CopyOutResponse: starts decrypting the COPY if the request side
    /// registered it. `false` when the message is forwarded as usual.
    fn copy_out_response(&mut self, body: &[u8], reader: &Reader, out: &mut BytesMut) -> bool {
        self.copy_out = None;
        let Some(run) = reader.shared.take_copy_out(reader.done) else {
            return false;
        };
        let checked = match self.shared.keyring.clone() {
            Some(keyring) => {
                let format = self.format.lock().map(|f| f.clone()).unwrap_or_default();
                let copy = CopyOut::new(run, keyring, format, self.shared.metrics.crypto());
                copy.check_response(body).map(|()| copy)
            }
            None => Err(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "classified columns are configured but no region key is loaded",
            )),
        };
        match checked {
            Ok(copy) => {
                self.copy_out = Some(copy);
                false
            }
            Err(e) => {
                e.encode(out);
                self.failed = true;
                true
            }
        }
    }

    /// Handles one message of a relayed batch; `false` when the message is
    /// not one it cares about (forward it as usual).
    fn message(
        &mut self,
        tag: u8,
        body: &[u8],
        region: &str,
        reader: &Reader,
        query: &Option<Arc<StatementKeys>>,
        out: &mut BytesMut,
    ) -> bool {
        if self.failed {
            return tag != b'Z';
        }
        match tag {
            b'T' => {
                // A Describe's answer (extended protocol) or a simple
                // query's result. Rows follow only the injected Describe of
                // a portal about to run, or a query's own RowDescription.
                let (usage, rows_follow) = match reader.shared.take_rows(reader.done) {
                    Some(u) => {
                        let follow = u.keys.is_some();
                        (u, follow)
                    }
                    None => (
                        RowUse {
                            forward: true,
                            keys: query.clone(),
                        },
                        true,
                    ),
                };
                let catalog = self.shared.catalogs.get(region);
                match decrypt::row_description(body, &catalog, usage.keys) {
                    Ok(Some((rewritten, plan))) => {
                        self.rows = rows_follow.then_some(plan);
                        if usage.forward {
                            out.extend_from_slice(&rewritten);
                        }
                    }
                    Ok(None) => {
                        self.rows = None;
                        if usage.forward {
                            out.extend_from_slice(&tag_frame(tag, body));
                        }
                    }
                    Err(e) => {
                        // The rest of the batch is dropped until its
                        // ReadyForQuery, as after a value that does not
                        // decrypt.
                        tracing::warn!(
                            region,
                            code = e.code,
                            "a result with a column computed from an encrypted column was refused"
                        );
                        e.encode(out);
                        self.rows = None;
                        self.failed = true;
                    }
                }
                true
            }
            b'n' => {
                self.rows = None;
                let forward = reader
                    .shared
                    .take_rows(reader.done)
                    .is_none_or(|u| u.forward);
                if forward {
                    out.extend_from_slice(&tag_frame(tag, body));
                }
                true
            }
            b'D' => {
                let Some(plan) = &self.rows else {
                    return false;
                };
                let format = self.format.lock().map(|f| f.clone()).unwrap_or_default();
                let metrics = self.shared.metrics.crypto();
                match plan.data_row(body, &format) {
                    Ok((row, n)) => {
                        metrics.record_n(region, Op::Decrypt, true, n);
                        out.extend_from_slice(&row);
                    }
                    Err(e) => {
                        metrics.record_decrypt(region, false);
                        tracing::warn!(region, code = e.code, "a value could not be decrypted");
                        e.encode(out);
                        self.rows = None;
                        self.failed = true;
                    }
                }
                true
            }
            b'H' => self.copy_out_response(body, reader, out),
            b'C' | b's' | b'I' | b'E' => {
                self.rows = None;
                self.copy_out = None;
                false
            }
            b'S' => {
                if let Some((name, value)) = parameter_status(body) {
                    if let Ok(mut f) = self.format.lock() {
                        let _ = f.set(name, value);
                    }
                }
                false
            }
            _ => false,
        }
    }
}

/// A message rebuilt from its tag and body.
fn tag_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Name and value of a ParameterStatus body.
fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut pos = 0;
    let name = read_cstr(body, &mut pos)?;
    let value = read_cstr(body, &mut pos)?;
    Some((
        std::str::from_utf8(name).ok()?,
        std::str::from_utf8(value).ok()?,
    ))
}

impl Responses {
    pub fn new(
        client: WriteHalf,
        status: u8,
        phase: watch::Receiver<Phase>,
        client_gone: watch::Receiver<bool>,
        crypto: Option<AnswerCrypto>,
    ) -> Self {
        Responses {
            client,
            out: BytesMut::with_capacity(READ_CHUNK),
            readers: RegionMap::default(),
            status,
            phase_signal: PhaseSignal::new(phase.clone()),
            phase,
            phase_open: true,
            client_gone,
            gone_open: true,
            sent: Default::default(),
            crypto,
            collecting: false,
            handback: None,
            between: None,
            kept: Vec::new(),
        }
    }

    /// Leaves settled backends' read halves in `bin` when the client says
    /// goodbye.
    pub fn handing_back(self, bin: Arc<Handback>) -> Self {
        Responses {
            handback: Some(bin),
            ..self
        }
    }

    /// Pools backends between transactions (transaction mode): `pid` is
    /// the client's cancel key.
    pub fn pooling_between_transactions(self, between: Option<(Arc<Shared>, i32)>) -> Self {
        Responses { between, ..self }
    }

    /// Counts the bytes written to the client.
    pub fn counting_sent(self, sent: crate::metrics::ByteCounter) -> Self {
        Responses { sent, ..self }
    }

    pub async fn run(mut self, mut rx: PlanReceiver) -> SessionEnd {
        loop {
            let item = match rx.try_recv() {
                Ok(item) => item,
                Err(Empty::ForGood) => {
                    // The request side ended without a word (the client
                    // left): what was already answered still goes out.
                    let _ = self.flush().await;
                    return SessionEnd::ClientGone;
                }
                Err(Empty::Now) => {
                    if let Err(end) = self.flush().await {
                        return end;
                    }
                    match self.idle(&mut rx).await {
                        Ok(Some(item)) => item,
                        Ok(None) => continue,
                        Err(end) => return end,
                    }
                }
            };
            tracing::trace!(item = item.describe(), "response plan");
            let step = match item {
                Expect::Attach {
                    region,
                    addr,
                    reader,
                    shared,
                    buffers,
                } => {
                    let (buf, frames) = buffers.unwrap_or_else(|| {
                        (BytesMut::with_capacity(READ_CHUNK), Vec::with_capacity(64))
                    });
                    self.readers.insert(
                        region,
                        Reader {
                            rd: reader,
                            buf,
                            frames,
                            shared,
                            done: 0,
                            addr,
                            fatal_seen: false,
                            copy_active: false,
                            parked: false,
                            status: b'I',
                        },
                    );
                    Ok(())
                }
                Expect::Local(bytes) => {
                    if let Some(s) = last_ready_status(&bytes) {
                        self.status = s;
                    }
                    self.out.extend_from_slice(&bytes);
                    Ok(())
                }
                Expect::End(err) => {
                    let end = match err {
                        Some(e) => {
                            self.out.extend_from_slice(&e.to_bytes());
                            SessionEnd::ClientError(e.message)
                        }
                        None => {
                            self.hand_back_readers();
                            SessionEnd::ClientGone
                        }
                    };
                    let _ = self.flush().await;
                    // FIN now, so the client sees the error and the end even
                    // while the request side still drains what it sent.
                    let _ = self.client.shutdown().await;
                    return end;
                }
                Expect::Lost { region, reason } => Err(self.lost(&region, &reason).await),
                Expect::Detach { region } => {
                    self.detach(&region, false);
                    Ok(())
                }
                Expect::Collect { regions, reply } => match self.collect(regions).await {
                    Ok(collected) => {
                        let _ = reply.send(collected);
                        Ok(())
                    }
                    Err(end) => Err(end),
                },
                Expect::Relay { region, query } => self.relay(&region, Mode::Relay, query).await,
                Expect::Discard { region } => self.relay(&region, Mode::Discard, None).await,
                Expect::RelayUntilCopyIn { region } => {
                    self.relay(&region, Mode::UntilCopyIn, None).await
                }
                Expect::CopySync { region } => match self.readers.get_mut(&region) {
                    Some(r) if r.copy_active => {
                        r.shared.batch_done(r.done);
                        r.done += 1;
                        Ok(())
                    }
                    _ => self.relay(&region, Mode::Relay, None).await,
                },
            };
            if let Err(end) = step {
                return end;
            }
            if self.out.len() >= FLUSH_AT {
                if let Err(end) = self.flush().await {
                    return end;
                }
            }
        }
    }

    /// The client said goodbye and every answer was relayed: the read
    /// halves of primary backends idle outside a transaction with nothing
    /// unread go to the handback (the request side decides about the
    /// write halves).
    fn hand_back_readers(&mut self) {
        let Some(bin) = self.handback.as_ref() else {
            return;
        };
        for (region, r) in self.readers.drain() {
            let settled = r.status == b'I'
                && !r.copy_active
                && !r.fatal_seen
                && !r.parked
                && r.buf.is_empty();
            if settled && !standby::is_standby(&region) {
                bin.reader(region, r.rd, r.done);
            }
        }
    }

    /// Transaction mode (ADR 22): the request side parked `region`'s
    /// backend. If every batch sent before that has been answered, the
    /// backend is idle outside a transaction with nothing unread, and the
    /// request side has not taken it back (nor parked it again with more
    /// sent), it goes back to the region's pool as it is
    /// (the session kept no state in it), its permit is returned and the
    /// client's cancel key no longer reaches it.
    ///
    /// While no statement waits for one of the region's backends, and
    /// unless `wanted`, the session keeps it instead (`kept`): the request
    /// side takes it back at its next read, and the session hands it over
    /// when a statement starts waiting ([`Self::hand_over_wanted`]).
    fn detach(&mut self, region: &Arc<str>, wanted: bool) {
        let Some((shared, pid)) = &self.between else {
            return;
        };
        let waited_for = || {
            shared
                .region(region)
                .and_then(|rt| rt.active.as_ref())
                .is_some_and(|a| a.wanted())
        };
        if !wanted && !waited_for() {
            if !self.kept.contains(region) {
                self.kept.push(region.clone());
            }
            return;
        }
        let clean = self.readers.get(region).is_some_and(|r| {
            r.status == b'I' && !r.copy_active && !r.fatal_seen && !r.parked && r.buf.is_empty()
        });
        if !clean {
            return;
        }
        let Some(parked) = self
            .readers
            .get(region)
            .and_then(|r| r.shared.unpark_answered(r.done))
        else {
            return;
        };
        let Some(reader) = self.readers.remove(region) else {
            return;
        };
        let Parked {
            writer,
            out,
            origin,
            permit,
            ..
        } = parked;
        if let Some(mut entry) = shared.cancel.get_mut(pid) {
            entry.targets.retain(|t| *t != origin.cancel);
        }
        if let (Some(stream), Some(rt)) =
            (Stream::unsplit(reader.rd, writer), shared.region(region))
        {
            let mut frames = reader.frames;
            frames.clear();
            let buffers = Buffers {
                read: reader.buf,
                frames,
                write: out,
            };
            rt.idle.put(stream, origin, Some(buffers));
        }
        // After the put: a session waiting for the permit finds it pooled.
        drop(permit);
    }

    /// Hands over the kept backends of regions where a statement waits.
    fn hand_over_wanted(&mut self, shared: &Shared) {
        let wanted: Vec<Arc<str>> = self
            .kept
            .iter()
            .filter(|r| {
                shared
                    .region(r)
                    .and_then(|rt| rt.active.as_ref())
                    .is_some_and(|a| a.wanted())
            })
            .cloned()
            .collect();
        for region in wanted {
            self.kept.retain(|k| *k != region);
            self.detach(&region, true);
        }
    }

    async fn flush(&mut self) -> Result<(), SessionEnd> {
        if self.out.is_empty() || self.collecting {
            return Ok(());
        }
        let r = self.client.write_all(&self.out).await;
        self.sent.add(self.out.len());
        self.out.clear();
        r.map_err(|_| SessionEnd::ClientWriteFailed)
    }

    /// Nothing queued: wait for the next request while passing on what
    /// backends send unasked (notifications, notices, parameter changes)
    /// and noticing a backend that dies.
    async fn idle(&mut self, rx: &mut PlanReceiver) -> Result<Option<Expect>, SessionEnd> {
        let phase = *self.phase.borrow();
        if phase == Phase::Closing || (phase == Phase::Draining && self.status == b'I') {
            return Err(self.shutting_down().await);
        }
        // Transaction mode, with a backend kept between transactions:
        // listen for statements waiting for one (listening first, so a
        // wait that starts during the check is not missed), and hand over
        // what is wanted now.
        let shared = match (&self.between, self.kept.is_empty()) {
            (Some((shared, _)), false) => Some(shared.clone()),
            _ => None,
        };
        let wanted = shared.as_ref().map(|s| s.backend_wanted.notified());
        if let Some(s) = &shared {
            self.hand_over_wanted(s);
        }
        let listening = wanted.is_some() && !self.kept.is_empty();
        tokio::select! {
            biased;
            item = queued(rx) => match item {
                Some(item) => Ok(Some(item)),
                None => Err(SessionEnd::ClientGone),
            },
            changed = self.phase_signal.changed(), if self.phase_open => {
                if !changed {
                    self.phase_open = false;
                }
                Ok(None)
            }
            _ = async { if let Some(w) = wanted { w.await } }, if listening => Ok(None),
            (region, read) = read_any(&mut self.readers) => {
                self.unsolicited(region, read).await?;
                Ok(None)
            }
        }
    }

    async fn unsolicited(
        &mut self,
        region: Arc<str>,
        read: std::io::Result<usize>,
    ) -> Result<(), SessionEnd> {
        // An idle backend of a session that has others can die (its server
        // restarted) without taking the session down: it is dropped, and the
        // region reopened (or refused with 08006) when next needed. So can
        // one kept between transactions in transaction mode, still parked:
        // the session keeps no state in it.
        let others = self.readers.len() > 1;
        let kept = self.kept.contains(&region);
        let Some(reader) = self.readers.get_mut(&region) else {
            return Ok(());
        };
        let spare = others || (kept && reader.shared.is_parked());
        let expendable = spare && reader.status == b'I';
        match read {
            Ok(0) | Err(_) if expendable => {
                tracing::warn!(region = %region, "an idle backend connection closed; dropped from the session");
                reader
                    .shared
                    .dead
                    .store(true, std::sync::atomic::Ordering::Release);
                self.readers.remove(&region);
                self.kept.retain(|k| *k != region);
                return Ok(());
            }
            Ok(0) => return Err(self.lost(&region, "server closed the connection").await),
            Err(e) => return Err(self.lost(&region, &e.to_string()).await),
            Ok(_) => {}
        }
        let used = match framing::scan(&reader.buf, MAX_BACKEND_MESSAGE, &mut reader.frames) {
            Ok(used) => used,
            Err(e) => return Err(self.lost(&region, &e.to_string()).await),
        };
        let mut consumed = 0;
        for f in reader.frames.iter().take_while(|f| f.end <= used) {
            let asynchronous = match f.tag {
                b'A' | b'N' | b'S' => true,
                b'E' => is_fatal(f.body(&reader.buf)),
                _ => false,
            };
            if !asynchronous {
                // A response that belongs to a batch queued later.
                reader.parked = true;
                break;
            }
            consumed = f.end;
            if f.tag == b'E' {
                reader.fatal_seen = true;
                if expendable {
                    // Its end is handled when the connection closes.
                    continue;
                }
            }
            self.out.extend_from_slice(f.bytes(&reader.buf));
        }
        reader.buf.advance(consumed);
        self.flush().await
    }

    /// Reads each region's answers to a statement applied in several
    /// regions into buffers of their own (see [`Expect::Collect`]).
    async fn collect(
        &mut self,
        regions: Vec<(Arc<str>, usize)>,
    ) -> Result<Vec<Collected>, SessionEnd> {
        // Earlier answers reach the client first.
        self.flush().await?;
        let mut all = Vec::with_capacity(regions.len());
        for (region, count) in regions {
            let mut batches = Vec::with_capacity(count);
            let mut lost = None;
            for _ in 0..count {
                self.collecting = true;
                let saved = std::mem::take(&mut self.out);
                let step = self.relay(&region, Mode::Relay, None).await;
                let got = std::mem::replace(&mut self.out, saved);
                self.collecting = false;
                match step {
                    Ok(()) => batches.push(got),
                    Err(SessionEnd::BackendLost { reason, .. }) => {
                        tracing::warn!(region = %region, %reason, "backend connection lost during a multi-region statement");
                        if let Some(r) = self.readers.remove(&region) {
                            r.shared
                                .dead
                                .store(true, std::sync::atomic::Ordering::Release);
                        }
                        batches.push(got);
                        lost = Some(reason);
                        break;
                    }
                    Err(end) => return Err(end),
                }
            }
            all.push(Collected {
                region,
                batches,
                lost,
            });
        }
        Ok(all)
    }

    /// Moves one batch's responses from `region` to the client (or drops
    /// them), up to and including ReadyForQuery (or the start of a COPY).
    async fn relay(
        &mut self,
        region: &Arc<str>,
        mode: Mode,
        query: Option<Arc<StatementKeys>>,
    ) -> Result<(), SessionEnd> {
        let discard = mode == Mode::Discard;
        // A standby backend's rows decrypt with its region's catalog and
        // count under its region.
        let named = crate::backend::standby::region_of(region);
        if let Some(r) = self.readers.get_mut(region) {
            r.parked = false;
        }
        let mut timer = match (mode, self.readers.get(region)) {
            (Mode::Relay, Some(r)) => r.shared.stats.start_batch(),
            _ => crate::metrics::BatchTimer::default(),
        };
        loop {
            let Some(reader) = self.readers.get_mut(region) else {
                if standby::is_standby(region) && !self.collecting {
                    // A batch queued for a standby backend that already
                    // broke: it fails alone, as the read before it did.
                    self.standby_read_lost(region, mode, "the connection closed earlier");
                    return Ok(());
                }
                // Dropped while idle, before the request side noticed.
                return Err(self.lost(region, "the connection closed while idle").await);
            };
            let scanned = framing::scan(&reader.buf, MAX_BACKEND_MESSAGE, &mut reader.frames);
            if let Err(e) = scanned {
                return Err(self.lost(region, &e.to_string()).await);
            }
            let mut consumed = 0;
            let mut finished = false;
            // Frames forwarded unchanged, copied to the client's buffer in
            // one go per run of adjacent ones.
            let mut run = 0..0;
            for f in &reader.frames {
                tracing::trace!(tag = %(f.tag as char), region = %region, "backend message");
                consumed = f.end;
                if f.tag == b'C' && !discard {
                    let copy_in = reader.copy_active;
                    reader
                        .shared
                        .stats
                        .command_complete(f.body(&reader.buf), copy_in);
                }
                if let Some(crypto) = self.crypto.as_mut().filter(|_| !discard) {
                    copy_run(&mut run, &reader.buf, &mut self.out);
                    if crypto.copying(f.tag) {
                        crypto
                            .copy_out_message(f.tag, f.body(&reader.buf), named, &mut self.out)
                            .await;
                        continue;
                    }
                    if crypto.message(
                        f.tag,
                        f.body(&reader.buf),
                        named,
                        reader,
                        &query,
                        &mut self.out,
                    ) {
                        continue;
                    }
                }
                match f.tag {
                    b'1' | b'3' => {
                        if reader.shared.take_completion(reader.done) && !discard {
                            extend_run(&mut run, f, &reader.buf, &mut self.out);
                        }
                    }
                    b'G' => {
                        reader.copy_active = true;
                        extend_run(&mut run, f, &reader.buf, &mut self.out);
                        if mode == Mode::UntilCopyIn {
                            finished = true;
                            break;
                        }
                    }
                    b'E' => {
                        let fatal = is_fatal(f.body(&reader.buf));
                        reader.fatal_seen |= fatal;
                        reader.copy_active = false;
                        if fatal && standby::is_standby(region) && !self.collecting {
                            // The standby ends the connection: the read
                            // fails with the proxy's error once it closes,
                            // and the session goes on.
                            continue;
                        }
                        if let Some(replacement) = reader.shared.take_override(reader.done) {
                            copy_run(&mut run, &reader.buf, &mut self.out);
                            replacement.encode(&mut self.out);
                        } else if discard {
                            tracing::warn!(
                                region = %region,
                                "a statement the proxy replayed on this region failed"
                            );
                        } else {
                            reader.shared.stats.backend_error(f.body(&reader.buf));
                            extend_run(&mut run, f, &reader.buf, &mut self.out);
                        }
                        if mode == Mode::UntilCopyIn {
                            finished = true;
                            break;
                        }
                    }
                    b't' => {
                        let overrides = reader
                            .shared
                            .parameter_description(reader.done, f.body(&reader.buf));
                        if !discard {
                            match decrypt::parameter_description(f.body(&reader.buf), &overrides)
                                .filter(|_| !overrides.is_empty())
                            {
                                Some(rewritten) => {
                                    copy_run(&mut run, &reader.buf, &mut self.out);
                                    self.out.extend_from_slice(&rewritten);
                                }
                                None => extend_run(&mut run, f, &reader.buf, &mut self.out),
                            }
                        }
                    }
                    b'Z' => {
                        if let Some(crypto) = self.crypto.as_mut() {
                            crypto.failed = false;
                            crypto.rows = None;
                            crypto.copy_out = None;
                        }
                        reader.copy_active = false;
                        reader.status = f.body(&reader.buf).first().copied().unwrap_or(b'I');
                        reader.shared.batch_done(reader.done);
                        let done = std::mem::take(&mut timer);
                        reader.shared.stats.finish_batch(done, reader.done);
                        reader.done += 1;
                        if !discard {
                            self.status = f.body(&reader.buf).first().copied().unwrap_or(b'I');
                            extend_run(&mut run, f, &reader.buf, &mut self.out);
                        }
                        finished = true;
                        break;
                    }
                    _ => {
                        if !discard {
                            extend_run(&mut run, f, &reader.buf, &mut self.out);
                        }
                    }
                }
            }
            copy_run(&mut run, &reader.buf, &mut self.out);
            reader.buf.advance(consumed);
            if finished {
                return Ok(());
            }
            self.flush().await?;
            let Some(reader) = self.readers.get_mut(region) else {
                continue;
            };
            let read = tokio::select! {
                biased;
                read = reader.read_more() => read,
                (gone, open) = gone_signal(&mut self.client_gone), if self.gone_open && !self.collecting => {
                    if gone {
                        return Err(SessionEnd::ClientGone);
                    }
                    self.gone_open = open;
                    continue;
                }
                changed = self.phase_signal.changed(), if self.phase_open && !self.collecting => {
                    if !changed {
                        self.phase_open = false;
                    } else if *self.phase.borrow() == Phase::Closing {
                        return Err(self.shutting_down().await);
                    }
                    continue;
                }
            };
            let broke = match read {
                Ok(0) => "server closed the connection".to_string(),
                Err(e) => e.to_string(),
                Ok(_) => continue,
            };
            if standby::is_standby(region) && !self.collecting {
                self.standby_read_lost(region, mode, &broke);
                return Ok(());
            }
            return Err(self.lost(region, &broke).await);
        }
    }

    /// A session's standby backend broke while answering a read (reads go
    /// there only outside transactions, and only reads do): that read fails
    /// with 08006 and the session goes on. The backend is dropped; the
    /// request side opens another standby backend for a later read, or
    /// sends it to the primary when no standby answers.
    fn standby_read_lost(&mut self, key: &Arc<str>, mode: Mode, reason: &str) {
        let host = match self.readers.remove(key) {
            Some(r) => {
                r.shared
                    .dead
                    .store(true, std::sync::atomic::Ordering::Release);
                format!(" ({})", r.addr)
            }
            None => String::new(),
        };
        let region = standby::region_of(key);
        tracing::warn!(%region, host = %host.trim(), %reason, "standby connection lost during a read");
        if mode == Mode::Discard {
            return;
        }
        PgError::error(
            sqlstate::CONNECTION_FAILURE,
            format!("connection to a standby of region {region}{host} was lost during a read: {reason}"),
        )
        .with_hint("the read did not complete; retry it (reads go to the region's primary while no standby answers)")
        .encode(&mut self.out);
        crate::protocol::messages::ready_for_query(&mut self.out, b'I');
        self.status = b'I';
    }

    async fn shutting_down(&mut self) -> SessionEnd {
        PgError::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
        .with_hint("RegionGuard is shutting down; reconnect to another instance")
        .encode(&mut self.out);
        let _ = self.flush().await;
        SessionEnd::Shutdown
    }

    /// A backend connection broke: tell the client (unless the backend
    /// already sent a FATAL error) and end the session.
    async fn lost(&mut self, region: &Arc<str>, reason: &str) -> SessionEnd {
        let (addr, already_told) = self
            .readers
            .get(region)
            .map(|r| (r.addr.clone(), r.fatal_seen))
            .unwrap_or_default();
        if !already_told && !self.collecting {
            PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("connection to region {region} ({addr}) was lost: {reason}"),
            )
            .with_hint("any open transaction was rolled back; reconnect and retry")
            .encode(&mut self.out);
        }
        let _ = self.flush().await;
        SessionEnd::BackendLost {
            region: region.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The next item of the response plan, `None` once the request side is
/// gone. Registers no waker: only the request side queues items, and the
/// session polls it right before this side (`frontend::start_session`), so
/// an item queued while this waits is seen in the same poll of the task.
fn queued(rx: &mut PlanReceiver) -> impl Future<Output = Option<Expect>> + '_ {
    std::future::poll_fn(move |_| match rx.try_recv() {
        Ok(item) => Poll::Ready(Some(item)),
        Err(Empty::ForGood) => Poll::Ready(None),
        Err(Empty::Now) => Poll::Pending,
    })
}

/// Completes when the request side reported the client gone (`(true, _)`)
/// or ended without that (`(false, false)`). Like [`queued`], registers no
/// waker (the sender is the request side) and reads only an atomic while
/// nothing happened.
fn gone_signal(rx: &mut watch::Receiver<bool>) -> impl Future<Output = (bool, bool)> + '_ {
    std::future::poll_fn(move |_| match rx.has_changed() {
        Ok(false) => Poll::Pending,
        Ok(true) => Poll::Ready((*rx.borrow_and_update(), true)),
        Err(_) => Poll::Ready((*rx.borrow_and_update(), false)),
    })
}

/// Wakes the session when the proxy's phase changes (shutdown). The
/// watch's own `changed()` future takes a lock shared by every session
/// each time it is polled, and a session is polled several times per
/// transaction; this one polls it only after its waker fired.
struct PhaseSignal {
    wait: Pin<Box<dyn Future<Output = (watch::Receiver<Phase>, bool)> + Send>>,
    woken: Woken,
}

impl PhaseSignal {
    fn new(rx: watch::Receiver<Phase>) -> Self {
        PhaseSignal {
            wait: Box::pin(phase_changed(rx)),
            woken: Woken::new(),
        }
    }

    /// `true` when the phase changed, `false` when it never will (the
    /// proxy is gone): what `watch::Receiver::changed` tells, as `is_ok()`.
    fn changed(&mut self) -> impl Future<Output = bool> + '_ {
        std::future::poll_fn(move |cx| {
            if !self.woken.take(cx) {
                return Poll::Pending;
            }
            match self.wait.as_mut().poll(&mut self.woken.context()) {
                Poll::Ready((rx, changed)) => {
                    self.wait = Box::pin(phase_changed(rx));
                    self.woken.fire();
                    Poll::Ready(changed)
                }
                Poll::Pending => Poll::Pending,
            }
        })
    }
}

async fn phase_changed(mut rx: watch::Receiver<Phase>) -> (watch::Receiver<Phase>, bool) {
    let changed = rx.changed().await.is_ok();
    (rx, changed)
}

/// Adds `frame` to the run of frames forwarded unchanged; a frame not
/// adjacent to the run (one in between was dropped or rewritten) starts a
/// new run after the old one is copied out.
fn extend_run(run: &mut Range<usize>, frame: &Frame, buf: &[u8], out: &mut BytesMut) {
    if run.end != frame.start {
        copy_run(run, buf, out);
        run.start = frame.start;
    }
    run.end = frame.end;
}

/// Copies the run of frames forwarded unchanged to `out` (before anything
/// else is written there, to keep the order).
fn copy_run(run: &mut Range<usize>, buf: &[u8], out: &mut BytesMut) {
    if let Some(bytes) = buf.get(run.clone()).filter(|b| !b.is_empty()) {
        out.extend_from_slice(bytes);
    }
    *run = 0..0;
}

/// Waits until any backend that is not parked has bytes (or broke). With
/// none it never completes, which leaves the other `select!` arms to decide.
///
/// Each poll tries each reader with a fresh read: a read that is not ready
/// leaves nothing behind but the socket's waker registration, so nothing
/// is allocated per wait.
async fn read_any(readers: &mut RegionMap<Reader>) -> (Arc<str>, std::io::Result<usize>) {
    std::future::poll_fn(|cx| {
        for (region, reader) in readers.iter_mut() {
            if reader.parked {
                continue;
            }
            if let Poll::Ready(r) = std::pin::pin!(reader.read_more()).poll(cx) {
                return Poll::Ready((region.clone(), r));
            }
        }
        Poll::Pending
    })
    .await
}

/// The status byte of the last ReadyForQuery in a buffer of messages.
fn last_ready_status(bytes: &[u8]) -> Option<u8> {
    let mut frames = Vec::new();
    framing::scan(bytes, MAX_BACKEND_MESSAGE, &mut frames).ok()?;
    frames
        .iter()
        .rev()
        .find(|f| f.tag == b'Z')
        .and_then(|f| f.body(bytes).first().copied())
}

/// Whether an ErrorResponse body has severity FATAL or PANIC.
fn is_fatal(body: &[u8]) -> bool {
    let mut pos = 0;
    while pos < body.len() && body[pos] != 0 {
        let code = body[pos];
        pos += 1;
        let Some(value) = read_cstr(body, &mut pos) else {
            return false;
        };
        if code == b'V' || code == b'S' {
            return value == b"FATAL" || value == b"PANIC";
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_unchanged_frames_are_copied_in_order() {
        let buf = b"aaabbbcccddd";
        let frame = |start: usize| Frame {
            tag: b'x',
            start,
            end: start + 3,
        };
        let mut out = BytesMut::new();
        let mut run = 0..0;
        // a and b adjacent, c dropped, then something written, then d.
        extend_run(&mut run, &frame(0), buf, &mut out);
        extend_run(&mut run, &frame(3), buf, &mut out);
        assert!(out.is_empty(), "nothing copied while the run grows");
        copy_run(&mut run, buf, &mut out);
        out.extend_from_slice(b"-");
        extend_run(&mut run, &frame(9), buf, &mut out);
        copy_run(&mut run, buf, &mut out);
        assert_eq!(&out[..], b"aaabbb-ddd");
        // A gap ends a run without anything written in between.
        out.clear();
        extend_run(&mut run, &frame(3), buf, &mut out);
        extend_run(&mut run, &frame(9), buf, &mut out);
        copy_run(&mut run, buf, &mut out);
        assert_eq!(&out[..], b"bbbddd");
    }

    #[test]
    fn fatal_detection_reads_the_severity_field() {
        assert!(is_fatal(b"SFATAL\0VFATAL\0C57P01\0\0"));
        assert!(!is_fatal(b"SERROR\0VERROR\0C42P01\0\0"));
        assert!(!is_fatal(b"S"));
    }

    #[test]
    fn finds_the_last_ready_status() {
        let mut b = BytesMut::new();
        crate::protocol::messages::ready_for_query(&mut b, b'T');
        crate::protocol::messages::ready_for_query(&mut b, b'E');
        assert_eq!(last_ready_status(&b), Some(b'E'));
        assert_eq!(last_ready_status(b""), None);
    }
}
