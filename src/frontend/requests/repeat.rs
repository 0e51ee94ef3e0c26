//! Repeated pipeline batches (ADR 19). A driver runs a statement by sending
//! one batch again and again — Parse (the same bytes: libpq and pgbench
//! prepare the unnamed statement anew each time), Bind, Describe, Execute,
//! Sync — with only the Bind's parameter values changing. When such a batch
//! took the neutral lane (ADR 18: no tenant data, so its parameters decide
//! nothing) and left the session as it found it, the next batch of the
//! same shape is sent in one step, the way the general path would send it
//! from that state: its bytes to the same backend, the same expectations
//! for its answers, the same relay plan. That spares walking each message
//! through the general path again, most of the request side's cost per
//! transaction.
//!
//! The recording is only valid on the state it was made on: anything the
//! general path handles forgets it, and a replay checks what can change
//! under it (the analysis cache, the routing rules, the backend's health).

use super::repeat_query::QueryRepeat;
use super::{PortalTarget, Requests, Txn};
use crate::frontend::backends::Backends;
use crate::frontend::expect::{Expect, RowUse};
use crate::frontend::plan_queue::PlanSender;
use crate::protocol::framing::{Frame, HEADER_LEN};
use crate::protocol::frontend_msg;
use crate::server::state::Shared;
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A batch that went to `region` unchanged: what a repeat must match, and
/// what sending it does besides writing its bytes.
pub(super) struct BatchRepeat {
    region: Arc<str>,
    /// The batch's messages, byte for byte (one copy, taken when recorded).
    recorded: Bytes,
    /// Which message is the Bind, and where it is in `recorded`.
    bind_at: usize,
    bind: Range<usize>,
    /// Length of the Bind body's names (portal and statement, with their
    /// NULs): what a repeat's Bind must start with.
    names: usize,
    /// The batch has a Parse, a Describe.
    parses: bool,
    describes: bool,
    /// The statement's Parse, for the slow-statement log.
    text: Bytes,
    /// The analysis cache's generation and the routing rules' epoch when
    /// recorded: either changing may change where the statement goes.
    generation: u64,
    epoch: u64,
    /// Messages per batch.
    len: usize,
}

/// One batch of the shape a repeat may have: `[Parse] Bind [Describe]
/// Execute Sync`, each a whole message.
struct Shape<'a> {
    parse: Option<&'a [u8]>,
    bind: &'a [u8],
    describe: Option<&'a [u8]>,
    execute: &'a [u8],
}

impl<'a> Shape<'a> {
    fn of(frames: &[Frame], chunk: &'a [u8]) -> Option<Self> {
        let mut tags = [0u8; 5];
        tags.get_mut(..frames.len())?
            .iter_mut()
            .zip(frames)
            .for_each(|(t, f)| *t = f.tag);
        let tags = &tags[..frames.len()];
        let bytes = |i: usize| frames[i].bytes(chunk);
        let (parse, rest) = match tags {
            [b'P', rest @ ..] => (Some(bytes(0)), rest),
            _ => (None, tags),
        };
        let at = usize::from(parse.is_some());
        let (describe, execute) = match rest {
            [b'B', b'D', b'E', b'S'] => (Some(bytes(at + 1)), bytes(at + 2)),
            [b'B', b'E', b'S'] => (None, bytes(at + 1)),
            _ => return None,
        };
        Some(Shape {
            parse,
            bind: bytes(at),
            describe,
            execute,
        })
    }

    fn len(&self) -> usize {
        3 + usize::from(self.parse.is_some()) + usize::from(self.describe.is_some())
    }
}

fn body(message: &[u8]) -> &[u8] {
    message.get(HEADER_LEN..).unwrap_or_default()
}

impl BatchRepeat {
    /// The record of `frames`, one batch of a repeatable shape whose Bind
    /// names `bound`, sent to `region`.
    fn new(
        region: Arc<str>,
        (frames, chunk): (&[Frame], &[u8]),
        bound: &frontend_msg::Bind<'_>,
        text: Bytes,
        (generation, epoch): (u64, u64),
    ) -> Option<BatchRepeat> {
        let shape = Shape::of(frames, chunk)?;
        let bind_at = usize::from(shape.parse.is_some());
        let (first, last, bind) = (frames.first()?, frames.last()?, frames.get(bind_at)?);
        Some(BatchRepeat {
            region,
            recorded: Bytes::copy_from_slice(chunk.get(first.start..last.end)?),
            bind_at,
            bind: bind.start - first.start..bind.end - first.start,
            names: bound.portal.len() + bound.statement.len() + 2,
            parses: shape.parse.is_some(),
            describes: shape.describe.is_some(),
            text,
            generation,
            epoch,
            len: shape.len(),
        })
    }

    /// Whether one batch's messages repeat the recorded batch: the same
    /// bytes but for the Bind's parameters; its names are the same and it
    /// is well formed (the general path checks that too).
    fn matches(&self, batch: &[Frame], chunk: &[u8]) -> bool {
        let (Some(first), Some(last), Some(bind)) =
            (batch.first(), batch.last(), batch.get(self.bind_at))
        else {
            return false;
        };
        let names = HEADER_LEN..HEADER_LEN + self.names;
        bind.tag == b'B'
            && chunk.get(first.start..bind.start) == self.recorded.get(..self.bind.start)
            && chunk.get(bind.end..last.end) == self.recorded.get(self.bind.end..)
            && chunk
                .get(bind.start..bind.end)
                .and_then(|b| b.get(names.clone()))
                == self
                    .recorded
                    .get(self.bind.clone())
                    .and_then(|b| b.get(names))
            && frontend_msg::bind_names(bind.body(chunk)).is_ok()
    }
}

/// The last read, recorded when its repeats may be sent in one step.
pub(super) enum Recorded {
    Batch(BatchRepeat),
    Query(QueryRepeat),
}

/// What a replay sends with: the parts of the session it touches.
struct Sender<'a> {
    shared: &'a Shared,
    backends: &'a mut Backends,
    expect: &'a PlanSender,
}

impl Sender<'_> {
    /// Whether what was recorded at `generation` and `epoch` is still
    /// placed as it was: the tenancy (the analysis cache's generation) and
    /// the routing rules (their epoch) have not changed since.
    fn current(&self, generation: u64, epoch: u64) -> bool {
        generation == self.shared.analysis.generation()
            && epoch == self.shared.rules_epoch.load(Ordering::Acquire)
    }

    /// Whether every batch of the read is a repeat of `r`, still placed as
    /// it was.
    fn batches_fit(&self, r: &BatchRepeat, frames: &[Frame], chunk: &[u8]) -> bool {
        !frames.is_empty()
            && frames.len() % r.len == 0
            && self.current(r.generation, r.epoch)
            && frames.chunks(r.len).all(|batch| r.matches(batch, chunk))
    }

    /// Whether every message of the read is a repeat of the simple query
    /// `q`, still placed as it was.
    fn queries_fit(&self, q: &QueryRepeat, frames: &[Frame], chunk: &[u8]) -> bool {
        let shared = self.shared;
        !frames.is_empty()
            && self.current(q.generation, q.epoch)
            && frames
                .iter()
                .all(|f| f.tag == b'Q' && q.matches(f.body(chunk), || shared.tenancy()))
    }

    fn batches(&mut self, r: &BatchRepeat, frames: &[Frame], chunk: &Bytes) -> bool {
        if !self.batches_fit(r, frames, chunk) {
            return false;
        }
        let Some(b) = self.backends.live(&r.region) else {
            return false;
        };
        // What the general path does for each batch from the recorded
        // state: the Parse (held until the Bind) expects its
        // ParseComplete, the Bind notes the statement, the Describe expects
        // rows to forward, the Sync ends the batch and has it relayed.
        for _ in 0..frames.len() / r.len {
            if r.parses {
                b.shared.expect_completion(b.batches, true);
            }
            b.shared.stats.note_statement(b.batches, &r.text);
            if r.describes {
                b.shared.expect_rows(
                    b.batches,
                    RowUse {
                        forward: true,
                        keys: None,
                    },
                );
            }
            let _ = self.expect.send(Expect::Relay {
                region: r.region.clone(),
                query: None,
            });
            b.batches += 1;
        }
        b.push(chunk);
        tracing::trace!(messages = frames.len(), "repeated batch");
        true
    }

    fn queries(&mut self, q: &QueryRepeat, frames: &[Frame], chunk: &Bytes) -> bool {
        if !self.queries_fit(q, frames, chunk) {
            return false;
        }
        let Some(b) = self.backends.live(&q.region) else {
            return false;
        };
        // What the general path's neutral lane does for each query: note
        // the statement, send it as a batch of its own (which forgets the
        // unnamed prepared statement), have its answers relayed.
        for f in frames {
            let message = chunk.slice(f.start..f.end);
            b.shared.stats.note_statement(b.batches, &message);
            b.push_batch_end(&message);
            let _ = self.expect.send(Expect::Relay {
                region: q.region.clone(),
                query: None,
            });
        }
        tracing::trace!(queries = frames.len(), "repeated query");
        true
    }
}

impl Requests {
    /// Sends a read's messages as repeats of the recorded batch or query
    /// when every batch or query in it is one; `false` leaves them to the
    /// general path.
    pub(super) fn replay(&mut self, frames: &[Frame], chunk: &Bytes) -> bool {
        let mut sender = Sender {
            shared: &self.shared,
            backends: &mut self.backends,
            expect: &self.expect,
        };
        match &self.repeat {
            None => false,
            Some(Recorded::Batch(r)) => sender.batches(r, frames, chunk),
            Some(Recorded::Query(q)) => sender.queries(q, frames, chunk),
        }
    }

    /// Transaction mode (ADR 22): when the read repeats the recorded batch
    /// or query but the session handed its backend in that region over
    /// since, and the record does not rely on what that backend had
    /// prepared (the batch parses its statement, or it is a simple query),
    /// the region to take a backend in so the repeat can go ahead, and how
    /// many answers the read asks for.
    pub(super) fn repeat_needs_backend(
        &mut self,
        frames: &[Frame],
        chunk: &[u8],
    ) -> Option<(Arc<str>, usize)> {
        let sender = Sender {
            shared: &self.shared,
            backends: &mut self.backends,
            expect: &self.expect,
        };
        let (region, answers) = match &self.repeat {
            Some(Recorded::Batch(r)) if r.parses && sender.batches_fit(r, frames, chunk) => {
                (&r.region, frames.len() / r.len)
            }
            Some(Recorded::Query(q)) if sender.queries_fit(q, frames, chunk) => {
                (&q.region, frames.len())
            }
            _ => return None,
        };
        sender
            .backends
            .live(region)
            .is_none()
            .then(|| (region.clone(), answers))
    }

    /// Before the general path handles a read: the transaction state to
    /// compare with afterwards when the read is one batch that may be
    /// recorded, from a state it may be recorded in. Forgets the recorded
    /// batch either way: the general path changes what it was valid for.
    pub(super) fn repeat_candidate(&mut self, frames: &[Frame], chunk: &[u8]) -> Option<Txn> {
        self.repeat = None;
        self.took_neutral_lane = false;
        let recordable = !self.standby_reads
            && self.copy_in.is_none()
            && !self.catalog_stale
            && self.batch.is_fresh()
            && self.tenant.effective().is_none()
            && matches!(self.txn, Txn::Idle | Txn::Pinned(_));
        let one_query = matches!(frames, [f] if f.tag == b'Q');
        (recordable && (one_query || Shape::of(frames, chunk).is_some())).then(|| self.txn.clone())
    }

    /// After the general path handled a read that [`Self::repeat_candidate`]
    /// accepted: records it when its Bind took the neutral lane and the
    /// session is left as it was, so that the general path would send a
    /// repeat of it exactly as [`Self::replay`] does.
    pub(super) fn record_repeat(&mut self, before: Txn, frames: &[Frame], chunk: &[u8]) {
        let unchanged = self.took_neutral_lane
            && self.txn == before
            && self.copy_in.is_none()
            && !self.catalog_stale
            && self.batch.is_fresh()
            && self.tenant.effective().is_none();
        if !unchanged {
            return;
        }
        self.repeat = match frames {
            [f] if f.tag == b'Q' => self.recorded_query(f.bytes(chunk)).map(Recorded::Query),
            _ => self.recorded(frames, chunk).map(Recorded::Batch),
        };
    }

    /// The record of a simple query that took the neutral lane on the
    /// statement scan alone (so its numbers decided nothing), when it went
    /// where the lane sends it.
    fn recorded_query(&mut self, message: &[u8]) -> Option<QueryRepeat> {
        let region = self.neutral_region(&self.tenant);
        if region != self.last_region || self.backends.live(&region).is_none() {
            return None;
        }
        let generation = self.shared.analysis.generation();
        let epoch = self.shared.rules_epoch.load(Ordering::Acquire);
        let check_words = self.shared.tenancy().names_tables();
        QueryRepeat::new(region, message, check_words, (generation, epoch))
    }

    fn recorded(&mut self, frames: &[Frame], chunk: &[u8]) -> Option<BatchRepeat> {
        let shape = Shape::of(frames, chunk)?;
        let bound = frontend_msg::bind_names(body(shape.bind)).ok()?;
        if let Some(parse) = shape.parse {
            if frontend_msg::parse_name(body(parse)).ok()? != bound.statement {
                return None;
            }
        }
        if let Some(describe) = shape.describe {
            if frontend_msg::target(body(describe), "Describe").ok()? != (b'P', bound.portal) {
                return None;
            }
        }
        if frontend_msg::execute(body(shape.execute)).ok()? != bound.portal {
            return None;
        }
        let generation = self.shared.analysis.generation();
        let epoch = self.shared.rules_epoch.load(Ordering::Acquire);
        let stmt = self.statements.get(bound.statement)?;
        let unchanged = |parse: &[u8]| stmt.parse == parse && stmt.generation == generation;
        if stmt.local
            || stmt.copy.is_some()
            || stmt.epoch != epoch
            || !self.neutral_lane(&stmt.analysis)
            || !shape.parse.is_none_or(unchanged)
        {
            return None;
        }
        let region = match self.portals.get(bound.portal)? {
            PortalTarget::Region {
                region,
                copy_in: false,
                keys: None,
                copy: None,
            } => region.clone(),
            _ => return None,
        };
        if region != self.neutral_region(&self.tenant) || region != self.last_region {
            return None;
        }
        let text = stmt.parse.clone();
        if !self
            .backends
            .live(&region)
            .is_some_and(|b| b.prepared.contains(bound.statement))
        {
            return None;
        }
        BatchRepeat::new(region, (frames, chunk), &bound, text, (generation, epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn bind(portal: &str, statement: &str, value: &str) -> Vec<u8> {
        let mut body = format!("{portal}\0{statement}\0").into_bytes();
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&(value.len() as i32).to_be_bytes());
        body.extend_from_slice(value.as_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        message(b'B', &body)
    }

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        let used = framing::scan(bytes, 1 << 20, &mut frames).expect("well framed");
        assert_eq!(used, bytes.len());
        frames
    }

    /// Parse of `sql` (unnamed), a Bind of `value` to `portal`, Describe
    /// of the portal, Execute with `max_rows`, Sync.
    fn batch_with(sql: &str, portal: &str, value: &str, max_rows: i32) -> Vec<u8> {
        let mut execute = format!("{portal}\0").into_bytes();
        execute.extend_from_slice(&max_rows.to_be_bytes());
        [
            message(b'P', format!("\0{sql}\0\0\0").as_bytes()),
            bind(portal, "", value),
            message(b'D', format!("P{portal}\0").as_bytes()),
            message(b'E', &execute),
            message(b'S', b""),
        ]
        .concat()
    }

    fn batch(value: &str) -> Vec<u8> {
        batch_with("SELECT $1", "", value, 0)
    }

    /// What recording `batch("1")` keeps.
    fn recorded() -> BatchRepeat {
        let bytes = batch("1");
        let f = frames(&bytes);
        let bound = frontend_msg::bind_names(f[1].body(&bytes)).expect("a Bind");
        BatchRepeat::new(Arc::from("eu"), (&f, &bytes), &bound, Bytes::new(), (0, 0))
            .expect("a repeatable shape")
    }

    #[test]
    fn only_one_whole_batch_of_the_driver_shape_is_repeatable() {
        let shapes: [(&[u8], bool); 8] = [
            (b"PBDES", true),
            (b"PBES", true),
            (b"BDES", true),
            (b"BES", true),
            (b"PBDE", false),
            (b"PBDESS", false),
            (b"PDS", false),
            (b"BHES", false),
        ];
        for (tags, repeatable) in shapes {
            let bytes: Vec<u8> = tags
                .iter()
                .flat_map(|&t| match t {
                    b'B' => bind("", "", "1"),
                    b'E' => message(b'E', b"\0\0\0\0\0"),
                    b'D' => message(b'D', b"P\0"),
                    b'S' | b'H' => message(t, b""),
                    other => message(other, b"\0SELECT 1\0\0\0"),
                })
                .collect();
            let shape = Shape::of(&frames(&bytes), &bytes);
            assert_eq!(
                shape.is_some(),
                repeatable,
                "{}",
                String::from_utf8_lossy(tags)
            );
            if let Some(shape) = shape {
                assert_eq!(shape.len(), tags.len());
            }
        }
    }

    #[test]
    fn a_repeat_may_differ_only_in_the_bind_values() {
        let r = recorded();
        for value in ["1", "22", "a much longer value than before"] {
            let bytes = batch(value);
            assert!(r.matches(&frames(&bytes), &bytes), "value {value}");
        }
        let mut malformed = batch("1");
        // The Bind's result-format count cut off, its length adjusted.
        let bind = frames(&malformed)[1];
        malformed.drain(bind.end - 2..bind.end);
        let len = (bind.end - bind.start - 3) as i32;
        malformed[bind.start + 1..bind.start + 5].copy_from_slice(&len.to_be_bytes());
        for (what, bytes) in [
            ("another text", batch_with("SELECT $1 + 1", "", "1", 0)),
            ("another portal", batch_with("SELECT $1", "p", "1", 0)),
            ("another row limit", batch_with("SELECT $1", "", "1", 10)),
            ("a malformed Bind", malformed),
        ] {
            assert!(!r.matches(&frames(&bytes), &bytes), "{what}");
        }
    }
}
