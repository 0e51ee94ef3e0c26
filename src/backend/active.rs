//! Transaction mode's bound on a region's busy backend sessions (ADR 22):
//! one permit per backend session serving a client, and a count of the
//! statements waiting for one.
//!
//! A client session between transactions keeps its backend (and permit)
//! as long as nobody waits, so a region with fewer busy clients than
//! permits pays nothing for sharing; a statement that has to wait says so
//! ([`ActiveBackends::take`] wakes every session through the shared
//! `Notify`), and sessions between transactions then hand theirs back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

pub struct ActiveBackends {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl ActiveBackends {
    pub fn new(max: usize) -> Self {
        ActiveBackends {
            permits: Arc::new(Semaphore::new(max)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Whether a statement waits for one of this region's backends.
    pub fn wanted(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// A permit for one more busy backend session: at once if one is free,
    /// else after asking sessions between transactions (through `wanted`)
    /// to hand theirs back, waiting up to `wait` (`waits` is called first);
    /// `None` when none came.
    pub async fn take(
        &self,
        wanted: &Notify,
        wait: Duration,
        waits: impl FnOnce(),
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        waits();
        let _waiting = Waiting::new(&self.waiting);
        wanted.notify_waiters();
        tokio::time::timeout(wait, self.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// Counts a waiting statement for as long as it waits (its future may be
/// dropped mid-wait: the client left, the session ended).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_is_counted_and_wakes_sessions_until_a_permit_comes_back() {
        let active = Arc::new(ActiveBackends::new(1));
        let wanted = Arc::new(Notify::new());
        let held = active.take(&wanted, Duration::from_secs(1), || {}).await;
        assert!(held.is_some());
        assert!(!active.wanted());

        // A session between transactions listens before it checks.
        let listening = wanted.clone();
        let notified = listening.notified();
        let waiter = {
            let (active, wanted) = (active.clone(), wanted.clone());
            tokio::spawn(async move { active.take(&wanted, Duration::from_secs(5), || {}).await })
        };
        notified.await;
        assert!(active.wanted(), "the waiter is counted");
        drop(held);
        let got = waiter.await.expect("join");
        assert!(got.is_some(), "the permit handed back went to the waiter");
        assert!(!active.wanted());

        // No permit comes back: the wait ends empty and is no longer counted.
        let none = active.take(&wanted, Duration::from_millis(50), || {}).await;
        assert!(none.is_none());
        assert!(!active.wanted());
    }
}
