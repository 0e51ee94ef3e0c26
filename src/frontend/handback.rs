//! A session's backend sessions on their way to the region's idle pool
//! (ADR 21). The request side leaves the write halves of backends it
//! finished with cleanly on the client's goodbye, the response side the
//! read halves once every answer has been relayed; a backend with both
//! halves, and as many batches answered as sent, is reset and pooled when
//! the session is over. Anything else is closed.

use crate::backend::pool::Origin;
use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::server::state::Shared;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedSemaphorePermit;

struct Writer {
    region: Arc<str>,
    half: WriteHalf,
    origin: Origin,
    /// Batches sent to the backend.
    sent: u64,
    /// Transaction mode: the region's permit, returned once the backend
    /// is back in the pool (or closed), so nobody opens a new backend
    /// while this one is being reset.
    permit: Option<OwnedSemaphorePermit>,
}

struct Reader {
    region: Arc<str>,
    half: ReadHalf,
    /// Batches whose answers were read to their end.
    answered: u64,
}

#[derive(Default)]
pub struct Handback {
    writers: Mutex<Vec<Writer>>,
    readers: Mutex<Vec<Reader>>,
}

impl Handback {
    pub fn writer(
        &self,
        region: Arc<str>,
        half: WriteHalf,
        origin: Origin,
        sent: u64,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        if let Ok(mut w) = self.writers.lock() {
            w.push(Writer {
                region,
                half,
                origin,
                sent,
                permit,
            });
        }
    }

    pub fn reader(&self, region: Arc<str>, half: ReadHalf, answered: u64) {
        if let Ok(mut r) = self.readers.lock() {
            r.push(Reader {
                region,
                half,
                answered,
            });
        }
    }

    /// Pools every backend left whole and settled (when `keep`); closes
    /// the rest.
    pub async fn release(&self, shared: &Shared, keep: bool) {
        let writers = self
            .writers
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        let mut readers = self
            .readers
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        for w in writers {
            let reader = readers
                .iter()
                .position(|r| r.region == w.region)
                .map(|i| readers.swap_remove(i));
            let Some(r) = reader else {
                crate::backend::pool::close_write(w.half).await;
                continue;
            };
            let settled = r.answered == w.sent;
            let (Some(stream), Some(rt)) =
                (Stream::unsplit(r.half, w.half), shared.region(&w.region))
            else {
                continue;
            };
            if keep && settled {
                rt.idle.release(stream, w.origin).await;
            } else {
                crate::backend::pool::close(stream).await;
            }
            drop(w.permit);
        }
        shared.metrics.idle_backends(shared);
    }
}
