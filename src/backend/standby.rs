//! Reads from a region's hot standbys (`regions.<name>.read_from_standbys`):
//! how a session's standby backend is named, and how long a standby that
//! could not be reached is left alone.
//!
//! A session's standby backend is a second backend session of its region.
//! Backends and their readers are keyed by name, so the standby one is
//! keyed by the region's name with [`SUFFIX`]: region names are lowercase
//! letters, digits, `_` and `-` (config validation), so no region is named
//! like a standby key, and the region is recovered by stripping the suffix.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Appended to a region's name to key its standby backend.
pub const SUFFIX: &str = " (standby)";

/// How long a region's standbys are not tried again after no standby
/// could be reached: reads go to the primary meanwhile, so a dead standby
/// costs one connection attempt per window, not one per read.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The key of `region`'s standby backend.
pub fn key(region: &str) -> String {
    format!("{region}{SUFFIX}")
}

/// The region a backend key belongs to: the key itself for a region's
/// primary backend, the region for its standby backend.
pub fn region_of(key: &str) -> &str {
    key.strip_suffix(SUFFIX).unwrap_or(key)
}

/// Whether `key` names a standby backend.
pub fn is_standby(key: &str) -> bool {
    key.ends_with(SUFFIX)
}

/// A region's standbys as the proxy's sessions share them: the key their
/// backends use (one allocation, so map lookups compare pointers) and when
/// no standby could last be reached.
#[derive(Debug)]
pub struct Standbys {
    pub key: std::sync::Arc<str>,
    failed_at: Mutex<Option<Instant>>,
}

impl Standbys {
    pub fn new(region: &str) -> Self {
        Standbys {
            key: key(region).into(),
            failed_at: Mutex::new(None),
        }
    }

    /// Whether a standby may be tried now: none failed in the last
    /// [`RETRY_AFTER`].
    pub fn may_try(&self) -> bool {
        self.failed_at
            .lock()
            .map(|f| f.is_none_or(|at| at.elapsed() >= RETRY_AFTER))
            .unwrap_or(true)
    }

    /// No standby could be reached: leave them alone for a while.
    pub fn failed(&self) {
        if let Ok(mut f) = self.failed_at.lock() {
            *f = Some(Instant::now());
        }
    }

    /// A standby answered: the next failure starts a new window.
    pub fn reached(&self) {
        if let Ok(mut f) = self.failed_at.lock() {
            *f = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_back_to_their_region() {
        assert_eq!(key("eu"), "eu (standby)");
        assert_eq!(region_of(&key("eu")), "eu");
        assert_eq!(region_of("eu"), "eu");
        assert!(is_standby(&key("us-east")) && !is_standby("us-east"));
    }

    #[test]
    fn a_failure_is_remembered_for_a_while() {
        let s = Standbys::new("eu");
        assert!(s.may_try());
        s.failed();
        assert!(!s.may_try());
        s.reached();
        assert!(s.may_try());
    }
}
