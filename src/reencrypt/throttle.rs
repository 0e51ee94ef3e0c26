//! Rate limiting of a re-encryption job: a token bucket in rows per
//! second, so a job rewrites at most `rate` rows in any second on average
//! and never more than one batch in a burst, whatever the batch costs.

use std::time::{Duration, Instant};

/// The default rate: low enough that a job on a busy primary stays in the
/// noise of its foreground traffic (one 50-row batch every 100 ms), high
/// enough to re-encrypt 1.8 million rows an hour.
pub const DEFAULT_RATE: u32 = 500;
/// The highest rate accepted (a job then runs as fast as one core allows).
pub const MAX_RATE: u32 = 1_000_000;

/// Rows per batch at `rate`: about ten batches a second, 1 to 500 rows
/// each, so a batch's transaction stays short and cancellation is noticed
/// within a batch.
pub fn batch_size(rate: u32) -> usize {
    (rate / 10).clamp(1, 500) as usize
}

/// A token bucket: `rate` tokens per second, holding at most one batch.
#[derive(Debug)]
pub struct Throttle {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    pub fn new(rate: u32, now: Instant) -> Throttle {
        let capacity = batch_size(rate) as f64;
        Throttle {
            rate: f64::from(rate.max(1)),
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes `rows` tokens and says how long to wait before going on (zero
    /// when the bucket had them). The debt is carried, so the long-run rate
    /// holds exactly.
    pub fn take(&mut self, rows: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.tokens -= rows as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes() {
        assert_eq!(batch_size(1), 1);
        assert_eq!(batch_size(DEFAULT_RATE), 50);
        assert_eq!(batch_size(MAX_RATE), 500);
    }

    #[test]
    fn the_long_run_rate_holds() {
        let start = Instant::now();
        let mut t = Throttle::new(100, start);
        let mut now = start;
        let mut rows = 0;
        // Take batches of 10 and sleep as told: 1000 rows take ~10 s.
        while rows < 1000 {
            let wait = t.take(10, now);
            now += wait;
            rows += 10;
        }
        let secs = now.duration_since(start).as_secs_f64();
        assert!((9.8..=10.0).contains(&secs), "{secs}");
    }

    #[test]
    fn a_full_bucket_lets_one_batch_through_at_once() {
        let start = Instant::now();
        let mut t = Throttle::new(500, start);
        assert_eq!(t.take(50, start), Duration::ZERO);
        let wait = t.take(50, start);
        assert!(wait > Duration::from_millis(90), "{wait:?}");
        // Idle time refills, but never beyond one batch.
        let later = start + Duration::from_secs(60);
        let mut t = Throttle::new(500, start);
        assert_eq!(t.take(50, later), Duration::ZERO);
        assert!(t.take(50, later) > Duration::ZERO);
    }
}
