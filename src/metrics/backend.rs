//! Per backend session: byte counts, statements by kind, errors by class,
//! request latency and the busy gauge, on handles resolved when the
//! session opened. A session that never had metrics pays one `None` check
//! per call.

use super::labels::{sqlstate_class, StatementKind};
use super::series::RegionSeries;
use super::slow::SlowLog;
use crate::protocol::error::error_code;
use bytes::Bytes;
use prometheus::{IntCounterVec, IntGauge};
use std::sync::Arc;
use std::time::Instant;

/// What a backend session records into. Lives in the session's
/// `BackendShared`, so it is dropped (and the open-connections gauge goes
/// down) when both the request and the response side let go of it.
#[derive(Default)]
pub struct BackendStats {
    series: Option<Live>,
    slow: Option<SlowLog>,
}

struct Live {
    region: Arc<RegionSeries>,
    host: usize,
    errors: IntCounterVec,
}

impl Drop for BackendStats {
    fn drop(&mut self) {
        if let Some(l) = &self.series {
            if let Some(h) = l.region.hosts.get(l.host) {
                h.open.dec();
            }
        }
    }
}

impl BackendStats {
    /// Counts one more open session on `host` of `region`.
    pub(super) fn new(
        live: Option<(Arc<RegionSeries>, usize, IntCounterVec)>,
        slow: Option<SlowLog>,
    ) -> Self {
        let series = live.map(|(region, host, errors)| {
            if let Some(h) = region.hosts.get(host) {
                h.open.inc();
            }
            Live {
                region,
                host,
                errors,
            }
        });
        BackendStats { series, slow }
    }

    /// Bytes written to the region.
    pub fn sent(&self, n: usize) {
        if let Some(l) = &self.series {
            l.region.sent_bytes.inc_by(n as u64);
        }
    }

    /// Bytes read from the region.
    pub fn received(&self, n: usize) {
        if let Some(l) = &self.series {
            l.region.received_bytes.inc_by(n as u64);
        }
    }

    /// A CommandComplete relayed to the client: one statement done.
    /// `copy_in`: a COPY FROM STDIN was running.
    pub fn command_complete(&self, body: &[u8], copy_in: bool) {
        if let Some(l) = &self.series {
            let kind = StatementKind::from_command_tag(body, copy_in);
            l.region.statements[kind.index()].inc();
        }
    }

    /// An ErrorResponse of the region relayed to the client.
    pub fn backend_error(&self, body: &[u8]) {
        if let Some(l) = &self.series {
            let class = error_code(body).and_then(sqlstate_class);
            let class = class.as_ref().map_or("XX", |c| {
                // Two ASCII alphanumerics: always UTF-8.
                std::str::from_utf8(c).unwrap_or("XX")
            });
            l.errors.with_label_values(&[class, "backend"]).inc();
        }
    }

    /// The response side starts waiting for a request's answers. The timer
    /// marks the session busy until it is finished or dropped.
    pub fn start_batch(&self) -> BatchTimer {
        if self.series.is_none() && self.slow.is_none() {
            return BatchTimer::default();
        }
        let busy = self.series.as_ref().and_then(|l| {
            let g = l.region.hosts.get(l.host)?.busy.clone();
            g.inc();
            Some(g)
        });
        BatchTimer {
            start: Some(Instant::now()),
            busy,
        }
    }

    /// Remembers the message holding the text of batch `batch`'s statement
    /// (a Query or the Parse of the statement bound), in case it turns out
    /// slow. Free (no clone) when slow-statement logging is off.
    pub fn note_statement(&self, batch: u64, message: &Bytes) {
        if let Some(s) = &self.slow {
            s.note(batch, message);
        }
    }

    /// The batch's ReadyForQuery arrived: records its latency and logs it
    /// when slow.
    pub fn finish_batch(&self, timer: BatchTimer, batch: u64) {
        let Some(start) = timer.start else { return };
        let elapsed = start.elapsed();
        if let Some(l) = &self.series {
            l.region.latency.observe(elapsed.as_secs_f64());
        }
        if let Some(s) = &self.slow {
            if s.finish(batch, elapsed) {
                if let Some(l) = &self.series {
                    l.region.slow.inc();
                }
            }
        }
    }
}

/// A request in flight on a backend session.
#[derive(Default)]
pub struct BatchTimer {
    start: Option<Instant>,
    busy: Option<IntGauge>,
}

impl Drop for BatchTimer {
    fn drop(&mut self) {
        if let Some(g) = &self.busy {
            g.dec();
        }
    }
}
