//! Rotation by age (`[key_rotation]`): the proxy keeps "keys rotate every
//! 90 days" on its own, and reports key age as a metric.
//!
//! Every `check_interval`, for each region whose root keys this proxy
//! holds, it reads the key table's summary (live versions, the oldest
//! active key) into the key metrics and, when the region has a maximum age,
//! rotates the data keys of every tenant whose active key is older — the
//! same two-phase rotation as `ctl keys rotate`, so writes never meet a
//! version another proxy has not loaded.
//!
//! Several proxies serve a region: only the one holding the region's policy
//! lock (a session advisory lock on its key store connection) rotates in a
//! round, and it picks the due tenants after taking the lock, so a tenant
//! rotated by another proxy a moment ago is no longer due. The lock goes
//! with the connection if the proxy dies.

use super::state::Shared;
use crate::crypto::rotation;
use crate::crypto::CryptoError;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

/// The region's policy lock, distinct from the key table's other locks.
const POLICY_LOCK: i64 = 7_233_105_478_431_500_301;

/// Tenants rotated per region per round, so one round stays short; the
/// rest are due again at the next check.
const MAX_PER_ROUND: i64 = 1000;

/// Runs the checks until the proxy is dropped. The first check runs at
/// once, so the key metrics are filled right after start.
pub async fn run(shared: Weak<Shared>) {
    loop {
        let interval = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            check_all(&shared).await;
            check_interval(&shared)
        };
        tokio::time::sleep(interval).await;
    }
}

/// The interval in force (a reload may change it).
fn check_interval(shared: &Shared) -> Duration {
    shared.current.load().key_rotation.check_interval
}

/// One round over every region with keys.
pub async fn check_all(shared: &Shared) {
    let Some(keyring) = &shared.keyring else {
        return;
    };
    for region in keyring.regions() {
        if let Err(e) = check_region(shared, region).await {
            tracing::warn!(%region, error = %e, "key age check failed; retried at the next check");
        }
    }
}

async fn check_region(shared: &Shared, region: &str) -> Result<(), CryptoError> {
    let Some(keyring) = &shared.keyring else {
        return Ok(());
    };
    let client = keyring.store_client(region).await?;
    let db = |e: tokio_postgres::Error| crate::crypto::store::store_error(region, &e);
    let row = client
        .query_one(
            "SELECT count(DISTINCT version) FILTER (WHERE state IN ('active', 'decrypt-only')), \
                    extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'active'))::float8 \
             FROM regionguard.data_keys",
            &[],
        )
        .await
        .map_err(db)?;
    let versions: i64 = row.try_get(0).map_err(db)?;
    let oldest: Option<f64> = row.try_get(1).map_err(db)?;
    if let Some(age) = oldest {
        let created = SystemTime::now()
            .checked_sub(Duration::from_secs_f64(age.max(0.0)))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        shared
            .metrics
            .crypto()
            .set_keys(region, versions.max(0) as usize, created);
    }
    let policy = shared.current.load_full();
    let Some(max_age) = policy.key_rotation.max_age_in(region) else {
        return Ok(());
    };
    if oldest.is_none_or(|age| age < max_age.as_secs_f64()) {
        return Ok(());
    }
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&POLICY_LOCK])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db)?;
    if !locked {
        // Another proxy is rotating this region's keys right now.
        return Ok(());
    }
    let outcome = rotate_due(shared, &client, region, max_age).await;
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1)", &[&POLICY_LOCK])
        .await
    {
        tracing::warn!(%region, error = %e, "cannot release the key policy lock; it goes with the connection");
    }
    outcome
}

async fn rotate_due(
    shared: &Shared,
    client: &tokio_postgres::Client,
    region: &str,
    max_age: Duration,
) -> Result<(), CryptoError> {
    let Some(keyring) = &shared.keyring else {
        return Ok(());
    };
    let db = |e: tokio_postgres::Error| crate::crypto::store::store_error(region, &e);
    let rows = client
        .query(
            "SELECT tenant FROM regionguard.data_keys \
             WHERE state = 'active' AND created_at < now() - make_interval(secs => $1) \
             ORDER BY created_at LIMIT $2",
            &[&max_age.as_secs_f64(), &MAX_PER_ROUND],
        )
        .await
        .map_err(db)?;
    let due: Vec<String> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db)?;
    if due.is_empty() {
        return Ok(());
    }
    let grace = Duration::from_millis(shared.current.load().admin.rotation_grace_ms);
    let outcome = rotation::rotate(keyring, region, &due, grace).await;
    let audit = |result: Result<serde_json::Value, &str>| {
        if let Some(log) = &shared.audit {
            log.record_system("key-policy", "keys.rotate", result);
        }
    };
    match outcome {
        Ok(rotated) => {
            tracing::info!(%region, tenants = rotated.len(), max_age = ?max_age, "rotated data keys older than the maximum age");
            audit(Ok(serde_json::json!({
                "region": region,
                "tenants": rotated.len(),
                "max_age_secs": max_age.as_secs(),
            })));
            Ok(())
        }
        Err(e) => {
            audit(Err("rotation_failed"));
            Err(CryptoError::Store {
                region: region.to_string(),
                reason: format!("rotation by age: {e}"),
            })
        }
    }
}
