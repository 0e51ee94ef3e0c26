//! A waker that notes that it fired before waking the session's task.
//!
//! A session is one task that drives several futures (the request and
//! response pumps, the shutdown watch). Polling one of them while nothing
//! it waits on changed costs a walk through its state machine and a look
//! at each socket it waits on; giving it a waker of its own lets the task
//! poll it only after that waker fired.

use futures_util::task::AtomicWaker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

/// Shared by a [`Woken`] handle and the [`Waker`] it hands out.
struct Flag {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One inner future's wake-ups, noted for the task that polls it.
pub struct Woken {
    flag: Arc<Flag>,
    waker: Waker,
}

impl Woken {
    /// Starts as fired, so the inner future is polled the first time.
    pub fn new() -> Self {
        let flag = Arc::new(Flag {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Woken {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// Whether the inner future's waker fired since the last call (and so
    /// it should be polled now, with [`Self::context`]). Registers the
    /// task's waker first, so a wake-up that comes after the answer still
    /// wakes the task.
    pub fn take(&self, task: &Context<'_>) -> bool {
        self.flag.task.register(task.waker());
        self.flag.fired.swap(false, Ordering::AcqRel)
    }

    /// Marks the inner future to be polled at the next [`Self::take`].
    pub fn fire(&self) {
        self.flag.fired.store(true, Ordering::Release);
    }

    /// The context to poll the inner future with.
    pub fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }
}
