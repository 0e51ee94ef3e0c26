//! The response plan's queue: the request side pushes, in order, what the
//! response side must do with the backends' answers ([`Expect`]).
//!
//! Both sides are futures of one session task, polled by
//! `frontend::start_session` with the request side first, so whatever it
//! queues is seen by the response side in the same poll: the queue needs
//! no waker, and a lock that is never contended around a deque does what a
//! tokio channel did with less work (the channel's block list, atomics and
//! waker slot served wake-ups this queue never needs). The lock only makes
//! the pair `Send`, so the session runs on any runtime.

use super::expect::Expect;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The queue and which of its two ends still exist.
#[derive(Default)]
struct State {
    items: VecDeque<Expect>,
    sender_gone: bool,
    receiver_gone: bool,
}

type Shared = Arc<Mutex<State>>;

/// Locks the state; a panic while it was held (none can happen between its
/// few lines) leaves nothing half-written worth refusing.
fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new queue's two ends.
pub fn plan_queue() -> (PlanSender, PlanReceiver) {
    let shared = Shared::default();
    (PlanSender(shared.clone()), PlanReceiver(shared))
}

/// The request side's end.
pub struct PlanSender(Shared);

/// The response side's end.
pub struct PlanReceiver(Shared);

/// Why [`PlanReceiver::try_recv`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Empty {
    /// Nothing queued yet.
    Now,
    /// Nothing queued, and the sender is gone: nothing ever will be.
    ForGood,
}

impl PlanSender {
    /// Queues `item`; hands it back when the response side is gone.
    pub fn send(&self, item: Expect) -> Result<(), Box<Expect>> {
        let mut state = lock(&self.0);
        if state.receiver_gone {
            return Err(Box::new(item));
        }
        state.items.push_back(item);
        Ok(())
    }
}

impl Drop for PlanSender {
    fn drop(&mut self) {
        lock(&self.0).sender_gone = true;
    }
}

impl PlanReceiver {
    /// The next queued item, if any.
    pub fn try_recv(&mut self) -> Result<Expect, Empty> {
        let mut state = lock(&self.0);
        match state.items.pop_front() {
            Some(item) => Ok(item),
            None if state.sender_gone => Err(Empty::ForGood),
            None => Err(Empty::Now),
        }
    }
}

impl Drop for PlanReceiver {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        state.receiver_gone = true;
        // What was queued for nobody goes now, not with the last sender.
        state.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn local(byte: u8) -> Expect {
        Expect::Local(BytesMut::from(&[byte][..]))
    }

    fn byte(item: Expect) -> u8 {
        match item {
            Expect::Local(b) => b[0],
            _ => panic!("not a local answer"),
        }
    }

    #[test]
    fn items_come_out_in_order_and_then_empty_until_the_sender_goes() {
        let (tx, mut rx) = plan_queue();
        assert!(tx.send(local(1)).is_ok());
        assert!(tx.send(local(2)).is_ok());
        assert_eq!(byte(rx.try_recv().unwrap()), 1);
        assert_eq!(byte(rx.try_recv().unwrap()), 2);
        assert_eq!(rx.try_recv().err(), Some(Empty::Now));
        assert!(tx.send(local(3)).is_ok());
        drop(tx);
        // What was queued before the sender went is still delivered.
        assert_eq!(byte(rx.try_recv().unwrap()), 3);
        assert_eq!(rx.try_recv().err(), Some(Empty::ForGood));
    }

    #[test]
    fn sending_to_a_gone_receiver_hands_the_item_back() {
        let (tx, rx) = plan_queue();
        drop(rx);
        match tx.send(local(7)) {
            Err(back) => assert_eq!(byte(*back), 7),
            Ok(()) => panic!("a gone receiver took an item"),
        }
    }
}
