//! The column-encryption series, for the crypto module to feed.
//!
//! The encryption paths (statements, COPY) get a [`CryptoMetrics`] from
//! `Shared::metrics.crypto()` and report per statement or row; the key
//! policy (`server::key_policy`) reports key versions and age. On a proxy
//! without a metrics endpoint every call is a no-op.
//! Never pass values, tenant ids or key material: only the region name.

use super::series::{CryptoSeries, Series};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Handle for recording encryption activity; cheap to clone.
#[derive(Clone, Default)]
pub struct CryptoMetrics {
    series: Option<Arc<Series>>,
}

/// Which way a value went through the cipher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Encrypt,
    Decrypt,
}

impl CryptoMetrics {
    pub(super) fn new(series: Option<Arc<Series>>) -> Self {
        CryptoMetrics { series }
    }

    fn region(&self, region: &str) -> Option<&CryptoSeries> {
        Some(&self.series.as_ref()?.region(region)?.crypto)
    }

    /// One value encrypted (`ok`) or refused because it could not be.
    pub fn record_encrypt(&self, region: &str, ok: bool) {
        self.record(region, Op::Encrypt, ok);
    }

    /// One value decrypted, or a ciphertext that failed to decrypt
    /// (wrong key, tampered, bound to another row).
    pub fn record_decrypt(&self, region: &str, ok: bool) {
        self.record(region, Op::Decrypt, ok);
    }

    /// `n`-free form of the two above, for callers that hold the op.
    pub fn record(&self, region: &str, op: Op, ok: bool) {
        self.record_n(region, op, ok, 1);
    }

    /// `n` values through the cipher at once (a statement's or a row's).
    pub fn record_n(&self, region: &str, op: Op, ok: bool, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(c) = self.region(region) {
            let i = match (op, ok) {
                (Op::Encrypt, true) => 0,
                (Op::Encrypt, false) => 1,
                (Op::Decrypt, true) => 2,
                (Op::Decrypt, false) => 3,
            };
            c.operations[i].inc_by(n);
        }
    }

    /// The region's data keys: how many versions are live, and when the
    /// oldest active one was created (its age is what rotation by age
    /// watches).
    pub fn set_keys(&self, region: &str, versions_in_use: usize, current_created: SystemTime) {
        if let Some(c) = self.region(region) {
            c.key_versions.set(versions_in_use as i64);
            let secs = current_created
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            c.key_created.store(secs, Ordering::Relaxed);
            refresh_age(c);
        }
    }

    /// Progress of a background re-encryption: `done` rows re-encrypted
    /// since the last call, `remaining` still under an older key version.
    pub fn record_reencryption(&self, region: &str, done: u64, remaining: u64) {
        if let Some(c) = self.region(region) {
            c.reencrypted_rows.inc_by(done);
            c.reencrypt_remaining_rows.set(remaining as i64);
        }
    }

    /// A re-encryption job of `region` started running on this proxy; the
    /// guard counts it until dropped (finished, stopped or aborted).
    pub fn job_running(&self, region: &str) -> RunningJob {
        RunningJob(self.region(region).map(|c| {
            c.reencrypt_jobs_running.inc();
            c.reencrypt_jobs_running.clone()
        }))
    }
}

/// A running re-encryption job, counted in the gauge until dropped.
pub struct RunningJob(Option<prometheus::IntGauge>);

impl Drop for RunningJob {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// Sets the key-age gauges from the creation times; called per scrape so
/// the age moves with the clock.
pub(super) fn refresh_ages(series: &Series) {
    for r in &series.regions {
        refresh_age(&r.crypto);
    }
}

fn refresh_age(c: &CryptoSeries) {
    let created = c.key_created.load(Ordering::Relaxed);
    if created > 0 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        c.key_age_seconds.set((now - created).max(0));
    }
}
