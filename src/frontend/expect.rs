//! What the request side tells the response side, in request order.
//!
//! A session may hold one backend session per region. The client→backend
//! pump decides where each batch (everything up to a Sync, a simple Query,
//! a FunctionCall) goes and queues an [`Expect`] for it; the
//! backend→client pump works through the queue, so the client sees answers
//! in the order it asked, whichever region produced them.

use super::copy_out::CopyOutRun;
use super::encrypt::StatementKeys;
use super::NameHasher;
use crate::backend::pool::Origin;
use crate::net::{ReadHalf, WriteHalf};
use crate::protocol::error::PgError;
use crate::protocol::framing::Frame;
use bytes::BytesMut;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::OwnedSemaphorePermit;

/// One entry of the response plan.
pub enum Expect {
    /// A backend session opened for `region`; its responses come from `reader`.
    Attach {
        region: Arc<str>,
        addr: String,
        reader: ReadHalf,
        shared: Arc<BackendShared>,
        /// A pooled session's read buffer and frame list, to reuse.
        buffers: Option<(BytesMut, Vec<Frame>)>,
    },
    /// Relay `region`'s responses up to and including its next ReadyForQuery.
    /// `query`: the batch is a simple Query whose statements name classified
    /// tables; their rows are decrypted with these keys. (Extended batches
    /// learn their row shapes from [`BackendShared::expect_rows`].)
    Relay {
        region: Arc<str>,
        query: Option<Arc<StatementKeys>>,
    },
    /// Relay `region`'s responses up to CopyInResponse (the COPY FROM STDIN
    /// just executed started) or ErrorResponse (it did not).
    RelayUntilCopyIn { region: Arc<str> },
    /// A Sync sent while a COPY FROM STDIN may be running: Postgres ignores
    /// it if the copy started, and answers it if the copy failed to start.
    CopySync { region: Arc<str> },
    /// Read `region`'s responses up to its next ReadyForQuery and drop them:
    /// statements the proxy injected (a held BEGIN, session-state replay).
    Discard { region: Arc<str> },
    /// Read the answers of a statement the proxy applies in several regions
    /// (ADR 10): for each region, that many batches up to their
    /// ReadyForQuery, handed back through `reply` instead of relayed. A
    /// region whose connection breaks is reported, not fatal.
    Collect {
        regions: Vec<(Arc<str>, usize)>,
        reply: tokio::sync::oneshot::Sender<Vec<Collected>>,
    },
    /// Transaction mode (ADR 22): the request side is done with
    /// `region`'s backend for now and parked its write half in the
    /// backend's [`BackendShared`]. Once every answer before this entry
    /// is relayed, a backend left idle and clean goes back to the region's
    /// pool; otherwise the request side takes it back at its next read.
    Detach { region: Arc<str> },
    /// Messages the proxy answers itself.
    Local(BytesMut),
    /// Writing to `region`'s backend failed: end the session with the
    /// region's loss, as when reading from it fails.
    Lost { region: Arc<str>, reason: String },
    /// Write the error (if any) and end the session.
    End(Option<PgError>),
}

impl Expect {
    /// A short name for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Expect::Attach { .. } => "attach",
            Expect::Relay { .. } => "relay",
            Expect::RelayUntilCopyIn { .. } => "relay-until-copy-in",
            Expect::CopySync { .. } => "copy-sync",
            Expect::Discard { .. } => "discard",
            Expect::Collect { .. } => "collect",
            Expect::Detach { .. } => "detach",
            Expect::Local(_) => "local",
            Expect::Lost { .. } => "lost",
            Expect::End(_) => "end",
        }
    }
}

/// One region's answers to an [`Expect::Collect`].
#[derive(Debug)]
pub struct Collected {
    pub region: Arc<str>,
    /// Each batch's messages, as the client would have seen them.
    pub batches: Vec<BytesMut>,
    /// The connection broke before every batch was answered (the region's
    /// backend session is dropped; the next statement there reopens it).
    pub lost: Option<String>,
}

/// Completion messages of injected Parse/Close requests to swallow, and
/// proxy errors to show instead of a backend's, shared by both pumps.
///
/// Entries are tagged with the backend batch they belong to: after an error
/// Postgres skips the rest of the batch, so entries of a finished batch that
/// never got their completion are dropped when its ReadyForQuery arrives.
///
/// One lock for all of it: both pumps run on the session's task, so it is
/// never contended, and a batch's ReadyForQuery cleans up with one lock.
#[derive(Default)]
pub struct BackendShared {
    queues: Mutex<Queues>,
    /// The response side saw this idle backend die and dropped it; the
    /// request side opens a new one when the region is next needed.
    pub dead: std::sync::atomic::AtomicBool,
    /// Metrics and slow-statement log of this backend session.
    pub stats: crate::metrics::BackendStats,
    /// Transaction mode: what the request side left for the response side
    /// to pool the backend with (see [`Expect::Detach`]).
    parked: Mutex<Option<Parked>>,
}

/// The request side's part of a backend session, parked between
/// transactions (transaction mode, ADR 22): whichever side takes it first
/// owns the backend — the response side to pool it, the request side to
/// go on using it.
pub struct Parked {
    /// Batches sent to the backend before it was parked: the response side
    /// pools it only once as many have been answered.
    pub sent: u64,
    pub writer: WriteHalf,
    /// The request side's write buffer (empty), pooled with the backend.
    pub out: BytesMut,
    pub origin: Origin,
    /// The region's permit for a backend serving a client.
    pub permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Queues {
    completions: VecDeque<(u64, bool)>,
    overrides: VecDeque<(u64, PgError)>,
    /// Statement names whose Describe is in flight, so the response side
    /// can file the ParameterDescription under the right statement, with
    /// the logical types of its classified parameters.
    describes: VecDeque<(u64, String, ParamTypes)>,
    /// One entry per Describe sent in an extended batch, answered by
    /// RowDescription or NoData: whether the answer goes to the client,
    /// and the keys when it describes a portal about to be executed (the
    /// proxy injects such Describes so it knows the shape of the rows).
    rows: VecDeque<(u64, RowUse)>,
    /// Parameter types the server inferred, by statement name: needed to
    /// read a tenant id sent in binary format by drivers that let the
    /// server infer types (tokio-postgres, JDBC).
    param_types: HashMap<String, Vec<u32>, NameHasher>,
    /// `COPY … TO STDOUT` executions of classified tables, by batch: the
    /// response side decrypts the CopyData after their CopyOutResponse.
    copy_outs: VecDeque<(u64, Arc<CopyOutRun>)>,
}

/// Logical type OIDs of a statement's classified parameters, by 1-based number.
pub type ParamTypes = Vec<(usize, u32)>;

/// What a RowDescription answering a Describe is for.
pub struct RowUse {
    pub forward: bool,
    /// The portal's rows follow: decrypt them with these keys.
    pub keys: Option<Arc<StatementKeys>>,
}

impl BackendShared {
    pub fn new(stats: crate::metrics::BackendStats) -> Self {
        BackendShared {
            stats,
            ..Default::default()
        }
    }

    /// Leaves the request side's part for [`Expect::Detach`].
    pub fn park(&self, parked: Parked) {
        if let Ok(mut p) = self.parked.lock() {
            *p = Some(parked);
        }
    }

    /// Whether the request side's part is parked (not taken back).
    pub fn is_parked(&self) -> bool {
        self.parked.lock().is_ok_and(|p| p.is_some())
    }

    /// Takes the parked part back, unless the other side took it.
    pub fn unpark(&self) -> Option<Parked> {
        self.parked.lock().ok()?.take()
    }

    /// Takes the parked part to pool the backend, if every batch sent
    /// before it was parked has been answered (`answered` of them are).
    pub fn unpark_answered(&self, answered: u64) -> Option<Parked> {
        let mut parked = self.parked.lock().ok()?;
        if parked.as_ref()?.sent != answered {
            return None;
        }
        parked.take()
    }

    fn queues(&self) -> Option<MutexGuard<'_, Queues>> {
        self.queues.lock().ok()
    }

    /// A Describe was sent in `batch` (see [`RowUse`]).
    pub fn expect_rows(&self, batch: u64, usage: RowUse) {
        if let Some(mut q) = self.queues() {
            q.rows.push_back((batch, usage));
        }
    }

    /// The use of the RowDescription or NoData just received in `batch`.
    pub fn take_rows(&self, batch: u64) -> Option<RowUse> {
        take_for(&mut self.queues()?.rows, batch)
    }

    /// A COPY TO STDOUT whose rows need decrypting runs in `batch`.
    pub fn expect_copy_out(&self, batch: u64, run: Arc<CopyOutRun>) {
        if let Some(mut q) = self.queues() {
            q.copy_outs.push_back((batch, run));
        }
    }

    /// The decryption of the COPY whose CopyOutResponse just arrived in
    /// `batch`, if it needs one.
    pub fn take_copy_out(&self, batch: u64) -> Option<Arc<CopyOutRun>> {
        take_for(&mut self.queues()?.copy_outs, batch)
    }

    /// Records a Parse or Close sent in `batch`; `forward` is false for the
    /// ones the proxy injected.
    pub fn expect_completion(&self, batch: u64, forward: bool) {
        if let Some(mut q) = self.queues() {
            q.completions.push_back((batch, forward));
        }
    }

    /// Whether the next ParseComplete/CloseComplete of `batch` goes to the
    /// client.
    pub fn take_completion(&self, batch: u64) -> bool {
        let Some(mut guard) = self.queues() else {
            return true;
        };
        let q = &mut guard.completions;
        while let Some(&(b, forward)) = q.front() {
            q.pop_front();
            if b == batch {
                return forward;
            }
        }
        true
    }

    /// The backend will fail `batch` on purpose (the proxy refused a
    /// statement inside it); its first ErrorResponse is replaced by `error`.
    pub fn override_error(&self, batch: u64, error: PgError) {
        if let Some(mut q) = self.queues() {
            q.overrides.push_back((batch, error));
        }
    }

    /// The replacement for the first ErrorResponse of `batch`, if any.
    pub fn take_override(&self, batch: u64) -> Option<PgError> {
        take_for(&mut self.queues()?.overrides, batch)
    }

    /// A Describe of statement `name` was sent in `batch`; `overrides` are
    /// the logical type OIDs of its classified parameters.
    pub fn expect_describe(&self, batch: u64, name: &str, overrides: Vec<(usize, u32)>) {
        if let Some(mut q) = self.queues() {
            q.describes.push_back((batch, name.to_string(), overrides));
        }
    }

    /// Files a ParameterDescription body under the statement whose Describe
    /// it answers; returns the parameter types to show the client instead
    /// of the storage types, when any parameter is classified.
    pub fn parameter_description(&self, batch: u64, body: &[u8]) -> Vec<(usize, u32)> {
        let Some(mut q) = self.queues() else {
            return Vec::new();
        };
        let (name, overrides) = loop {
            match q.describes.pop_front() {
                Some((b, name, overrides)) if b == batch => break (name, overrides),
                Some(_) => continue,
                None => return Vec::new(),
            }
        };
        let mut pos = 0;
        let Some(n) = body.get(0..2).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
            return overrides;
        };
        pos += 2;
        let mut types = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n.max(0) {
            match crate::protocol::framing::read_i32(body, &mut pos) {
                Some(t) => types.push(t as u32),
                None => return overrides,
            }
        }
        q.param_types.insert(name, types);
        overrides
    }

    /// The server-inferred type of parameter `n` (1-based) of `statement`.
    pub fn param_type(&self, statement: &str, n: usize) -> Option<u32> {
        let q = self.queues()?;
        q.param_types
            .get(statement)?
            .get(n.checked_sub(1)?)
            .copied()
    }

    /// Forgets inferred types when a statement name is re-prepared or closed.
    pub fn forget_statement(&self, statement: &str) {
        if let Some(mut q) = self.queues() {
            q.param_types.remove(statement);
        }
    }

    /// Drops what belonged to `batch` once its ReadyForQuery arrived.
    pub fn batch_done(&self, batch: u64) {
        let Some(mut q) = self.queues() else {
            return;
        };
        while q.completions.front().is_some_and(|(b, _)| *b <= batch) {
            q.completions.pop_front();
        }
        while q.overrides.front().is_some_and(|(b, _)| *b <= batch) {
            q.overrides.pop_front();
        }
        while q.describes.front().is_some_and(|(b, _, _)| *b <= batch) {
            q.describes.pop_front();
        }
        while q.rows.front().is_some_and(|(b, _)| *b <= batch) {
            q.rows.pop_front();
        }
        while q.copy_outs.front().is_some_and(|(b, _)| *b <= batch) {
            q.copy_outs.pop_front();
        }
    }
}

/// The first entry of `batch` in a queue tagged by batch, dropping the
/// entries of earlier batches (they failed before reaching them).
fn take_for<T>(q: &mut VecDeque<(u64, T)>, batch: u64) -> Option<T> {
    while q.front().is_some_and(|(b, _)| *b < batch) {
        q.pop_front();
    }
    if q.front().is_some_and(|(b, _)| *b == batch) {
        return q.pop_front().map(|(_, t)| t);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error::sqlstate;

    #[test]
    fn completions_of_failed_batches_are_skipped() {
        let s = BackendShared::default();
        s.expect_completion(0, false);
        s.expect_completion(0, true);
        s.expect_completion(1, false);
        // Batch 0 failed after its first Parse: only one completion came.
        assert!(!s.take_completion(0));
        s.batch_done(0);
        assert!(!s.take_completion(1));
        assert!(s.take_completion(2));
    }

    #[test]
    fn overrides_apply_to_their_batch_only() {
        let s = BackendShared::default();
        s.override_error(3, PgError::error(sqlstate::INTERNAL_ERROR, "x"));
        assert!(s.take_override(2).is_none());
        assert!(s.take_override(3).is_some());
        assert!(s.take_override(3).is_none());
    }
}
