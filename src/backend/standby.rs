//! Reads from a region's hot standbys (`regions.<name>.read_from_standbys`):
//! how a session's standby backend is named, and how long a standby that
//! could not be reached (or is being tried by another session) is left
//! alone.
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
/// backends use (one allocation, so map lookups compare pointers) and until
/// when sessions leave them alone.
#[derive(Debug)]
pub struct Standbys {
    pub key: std::sync::Arc<str>,
    /// Set while a session tries to connect (so a burst of new sessions
    /// does not all wait on a dead host) and after a failure; a session
    /// whose attempt never finishes (its client left) holds it for at most
    /// [`RETRY_AFTER`].
    blocked_until: Mutex<Option<Instant>>,
}

impl Standbys {
    pub fn new(region: &str) -> Self {
        Standbys {
            key: key(region).into(),
            blocked_until: Mutex::new(None),
        }
    }

    /// Claims the next connection attempt: false while another session is
    /// trying or within [`RETRY_AFTER`] of a failure (the read goes to the
    /// primary then). The claimant reports [`Standbys::reached`] or
    /// [`Standbys::failed`].
    pub fn claim(&self) -> bool {
        let Ok(mut blocked) = self.blocked_until.lock() else {
            return false;
        };
        let now = Instant::now();
        if blocked.is_some_and(|until| now < until) {
            return false;
        }
        *blocked = Some(now + RETRY_AFTER);
        true
    }

    /// No standby could be reached: leave them alone for a while.
    pub fn failed(&self) {
        if let Ok(mut blocked) = self.blocked_until.lock() {
            *blocked = Some(Instant::now() + RETRY_AFTER);
        }
    }

    /// A standby answered: other sessions may connect at once.
    pub fn reached(&self) {
        if let Ok(mut blocked) = self.blocked_until.lock() {
            *blocked = None;
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
    fn one_attempt_at_a_time_and_failures_are_remembered_for_a_while() {
        let s = Standbys::new("eu");
        assert!(s.claim());
        assert!(!s.claim(), "another session is trying");
        s.reached();
        assert!(s.claim());
        s.failed();
        assert!(!s.claim(), "failed less than RETRY_AFTER ago");
        s.reached();
        assert!(s.claim());
    }
}
