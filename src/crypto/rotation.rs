//! Key administration in a region's key table (issue 5): listing, data key
//! rotation, re-wrapping under a new root key, retiring versions no row
//! uses any more, crypto-shredding; announcing
//! each change to the other proxies of the region (NOTIFY on
//! [`CHANNEL`]) and following theirs ([`spawn_followers`]: LISTEN plus a
//! periodic re-check as backstop).
//!
//! Every change runs in one transaction on a dedicated connection, under a
//! per-tenant advisory lock, so proxies racing on the same tenant serialise
//! and the outcome is the same as running them one after the other.
//! Nothing here reads, returns or logs key material: only versions, states
//! and ages.

use super::aad::canonical_tenant;
use super::data_key;
use super::store::{self, KeyState};
use super::{CryptoError, Keyring};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_postgres::{Client, Transaction};

/// The NOTIFY channel of key changes in each regional database.
pub const CHANNEL: &str = "regionguard_keys";

/// A key administration failure: a crypto or key store error, or a request
/// the key table's state refuses (with a stable code for the admin socket).
#[derive(Debug, thiserror::Error)]
pub enum KeyAdminError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("{message}")]
    Refused { code: &'static str, message: String },
}

fn refused(code: &'static str, message: impl Into<String>) -> KeyAdminError {
    KeyAdminError::Refused {
        code,
        message: message.into(),
    }
}

/// One row of the key table, without its key material.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub tenant: String,
    pub version: u32,
    pub state: &'static str,
    pub kek_version: u32,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    pub age_secs: i64,
}

/// The outcome of rotating one tenant's data key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rotated {
    pub tenant: String,
    /// The version that was active before, if any.
    pub previous: Option<u32>,
    /// The version now active.
    pub active: u32,
}

/// The outcome of a root key rotation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RootRotated {
    pub kek_version: u32,
    /// Data key rows re-wrapped by this call.
    pub rewrapped: u64,
    /// Live data key rows in the region (all now under `kek_version`).
    pub live_keys: u64,
}

/// The outcome of a shred.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shredded {
    pub tenant: String,
    /// Versions destroyed by this call (0 when already shredded).
    pub destroyed: u64,
    /// Whether the tenant had no key yet and got a destroyed tombstone, so
    /// a later write cannot silently create a fresh key.
    pub tombstone: bool,
}

fn db(region: &str) -> impl Fn(tokio_postgres::Error) -> CryptoError + '_ {
    move |e| store::store_error(region, &e)
}

/// A dedicated connection for one administrative change (transactions need
/// an exclusive client), with the key table ensured.
async fn admin_client(keyring: &Keyring, region: &str) -> Result<Client, CryptoError> {
    let connector = keyring
        .connector(region)
        .ok_or_else(|| CryptoError::NoRegionKey {
            region: region.to_string(),
        })?;
    let client = connector
        .connect()
        .await
        .map_err(|e| CryptoError::StoreUnavailable {
            region: region.to_string(),
            reason: e.reason,
        })?;
    store::ensure_schema(&client, region).await?;
    Ok(client)
}

async fn lock_tenant(tx: &Transaction<'_>, region: &str, tenant: &str) -> Result<(), CryptoError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('regionguard.data_keys:' || $1, 0))",
        &[&tenant],
    )
    .await
    .map_err(db(region))?;
    Ok(())
}

async fn notify(
    tx: &Transaction<'_>,
    region: &str,
    event: &str,
    tenant: Option<&str>,
) -> Result<(), CryptoError> {
    let payload = serde_json::json!({ "event": event, "tenant": tenant }).to_string();
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map_err(db(region))?;
    Ok(())
}

fn i32_of(region: &str, v: u32) -> Result<i32, CryptoError> {
    i32::try_from(v).map_err(|_| CryptoError::Store {
        region: region.to_string(),
        reason: format!("version {v} does not fit the key table"),
    })
}

/// Key rows of the region (one tenant's when given), ascending.
pub async fn list(
    keyring: &Keyring,
    region: &str,
    tenant: Option<&str>,
) -> Result<Vec<KeyInfo>, CryptoError> {
    let client = keyring.store_client(region).await?;
    let tenant = tenant.map(|t| canonical_tenant(t).into_owned());
    let rows = client
        .query(
            "SELECT tenant, version, state, kek_version, \
                    extract(epoch FROM created_at)::bigint, \
                    extract(epoch FROM now() - created_at)::bigint \
             FROM regionguard.data_keys \
             WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, version",
            &[&tenant],
        )
        .await
        .map_err(db(region))?;
    rows.iter()
        .map(|r| {
            let state: &str = r.try_get(2).map_err(db(region))?;
            let state = KeyState::parse(state)
                .map(KeyState::as_str)
                .unwrap_or("unknown");
            Ok(KeyInfo {
                tenant: r.try_get(0).map_err(db(region))?,
                version: r.try_get::<_, i32>(1).map_err(db(region))?.max(0) as u32,
                state,
                kek_version: r.try_get::<_, i32>(3).map_err(db(region))?.max(0) as u32,
                created_at: r.try_get(4).map_err(db(region))?,
                age_secs: r.try_get(5).map_err(db(region))?,
            })
        })
        .collect()
}

/// Tenants of the region with an active data key.
pub async fn active_tenants(keyring: &Keyring, region: &str) -> Result<Vec<String>, CryptoError> {
    let client = keyring.store_client(region).await?;
    let rows = client
        .query(
            "SELECT tenant FROM regionguard.data_keys WHERE state = 'active' ORDER BY tenant",
            &[],
        )
        .await
        .map_err(db(region))?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(db(region)))
        .collect()
}

/// What phase one left for phase two of one tenant's rotation.
enum Staged {
    /// The tenant had no key: version 1 was created active, nothing to do.
    Created,
    /// `version` is staged (decrypt-only) and becomes active in phase two.
    Pending { previous: Option<u32>, version: u32 },
}

/// Rotates the data keys of `tenants` in `region`: a new version for each,
/// active for writes; the previous active version becomes decrypt-only.
///
/// Two phases so that no proxy meets a value under a version it has not
/// loaded: the new version is first stored decrypt-only and announced;
/// after `grace` (every proxy has reloaded the tenant's keys by then) it
/// becomes active in a second transaction. Safe to race with other
/// rotations of the same tenant (they serialise on an advisory lock and a
/// staged version is reused) and with first-key creation.
pub async fn rotate(
    keyring: &Keyring,
    region: &str,
    tenants: &[String],
    grace: Duration,
) -> Result<Vec<Rotated>, KeyAdminError> {
    let mut client = admin_client(keyring, region).await?;
    let mut staged = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let tenant = canonical_tenant(tenant).into_owned();
        let s = stage(keyring, &mut client, region, &tenant).await?;
        keyring.invalidate(region, &tenant);
        staged.push((tenant, s));
    }
    if staged
        .iter()
        .any(|(_, s)| matches!(s, Staged::Pending { .. }))
    {
        tokio::time::sleep(grace).await;
    }
    let mut out = Vec::with_capacity(staged.len());
    for (tenant, s) in staged {
        match s {
            Staged::Created => out.push(Rotated {
                tenant,
                previous: None,
                active: 1,
            }),
            Staged::Pending { previous, version } => {
                activate(&mut client, region, &tenant, version).await?;
                keyring.invalidate(region, &tenant);
                out.push(Rotated {
                    tenant,
                    previous,
                    active: version,
                });
            }
        }
    }
    Ok(out)
}

async fn stage(
    keyring: &Keyring,
    client: &mut Client,
    region: &str,
    tenant: &str,
) -> Result<Staged, KeyAdminError> {
    let ring = keyring
        .kek(region)
        .ok_or_else(|| CryptoError::NoRegionKey {
            region: region.to_string(),
        })?;
    let tx = client.transaction().await.map_err(db(region))?;
    lock_tenant(&tx, region, tenant).await?;
    let rows = tx
        .query(
            "SELECT version, state FROM regionguard.data_keys WHERE tenant = $1 ORDER BY version",
            &[&tenant],
        )
        .await
        .map_err(db(region))?;
    let mut versions = Vec::with_capacity(rows.len());
    for r in &rows {
        let v: i32 = r.try_get(0).map_err(db(region))?;
        let s: &str = r.try_get(1).map_err(db(region))?;
        versions.push((v.max(0) as u32, KeyState::parse(s)));
    }
    let kek = ring.active();
    if versions.is_empty() {
        let raw = data_key::generate()?;
        let wrapped = data_key::wrap(kek, region, tenant, 1, &raw)?;
        store::insert_first_key(&tx, region, tenant, &wrapped, kek.version()).await?;
        notify(&tx, region, "create", Some(tenant)).await?;
        tx.commit().await.map_err(db(region))?;
        return Ok(Staged::Created);
    }
    if versions
        .iter()
        .any(|(_, s)| *s == Some(KeyState::Destroyed))
    {
        return Err(refused(
            "tenant_shredded",
            format!("tenant {tenant} was shredded in region {region}: its keys cannot be rotated"),
        ));
    }
    let previous = versions
        .iter()
        .find(|(_, s)| *s == Some(KeyState::Active))
        .map(|(v, _)| *v);
    let (last, last_state) = versions[versions.len() - 1];
    // A version above the active one that is still decrypt-only was staged
    // by a rotation that has not activated it yet (or was interrupted):
    // reuse it rather than stacking another.
    if last_state == Some(KeyState::DecryptOnly) && previous.is_some_and(|p| last > p) {
        tx.commit().await.map_err(db(region))?;
        return Ok(Staged::Pending {
            previous,
            version: last,
        });
    }
    let version = last + 1;
    let raw = data_key::generate()?;
    let wrapped = data_key::wrap(kek, region, tenant, version, &raw)?;
    tx.execute(
        "INSERT INTO regionguard.data_keys (tenant, version, wrapped_key, kek_version, state) \
         VALUES ($1, $2, $3, $4, 'decrypt-only')",
        &[
            &tenant,
            &i32_of(region, version)?,
            &wrapped,
            &i32_of(region, kek.version())?,
        ],
    )
    .await
    .map_err(db(region))?;
    notify(&tx, region, "stage", Some(tenant)).await?;
    tx.commit().await.map_err(db(region))?;
    Ok(Staged::Pending { previous, version })
}

async fn activate(
    client: &mut Client,
    region: &str,
    tenant: &str,
    version: u32,
) -> Result<(), KeyAdminError> {
    let v = i32_of(region, version)?;
    let tx = client.transaction().await.map_err(db(region))?;
    lock_tenant(&tx, region, tenant).await?;
    let state: Option<String> = tx
        .query_opt(
            "SELECT state FROM regionguard.data_keys WHERE tenant = $1 AND version = $2",
            &[&tenant, &v],
        )
        .await
        .map_err(db(region))?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(db(region))?;
    match state.as_deref() {
        // A concurrent rotation activated it already.
        Some("active") => return Ok(()),
        Some("decrypt-only") => {}
        other => {
            return Err(refused(
                "conflict",
                format!(
                    "data key version {version} of tenant {tenant} changed during the rotation (now {})",
                    other.unwrap_or("absent")
                ),
            ))
        }
    }
    tx.execute(
        "UPDATE regionguard.data_keys SET state = 'decrypt-only' \
         WHERE tenant = $1 AND state = 'active'",
        &[&tenant],
    )
    .await
    .map_err(db(region))?;
    tx.execute(
        "UPDATE regionguard.data_keys SET state = 'active' WHERE tenant = $1 AND version = $2",
        &[&tenant, &v],
    )
    .await
    .map_err(db(region))?;
    notify(&tx, region, "activate", Some(tenant)).await?;
    tx.commit().await.map_err(db(region))?;
    Ok(())
}

/// Reads the region's key source again and re-wraps every live data key of
/// the region under its newest root key version, in one transaction. No
/// user row changes: data keys keep their bytes, only their wrapping does.
/// The new root key set is installed on this proxy; the others read their
/// source again when they hear of it (or meet a version they lack).
pub async fn rotate_root(keyring: &Keyring, region: &str) -> Result<RootRotated, KeyAdminError> {
    let old = keyring
        .kek(region)
        .ok_or_else(|| CryptoError::NoRegionKey {
            region: region.to_string(),
        })?;
    let new = keyring.read_key_source(region).await?;
    let newest = new.active().version();
    if newest < old.active().version() {
        return Err(refused(
            "stale_key_source",
            format!(
                "the key source of region {region} now provides root key version {newest} at most, older than the version {} in use",
                old.active().version()
            ),
        ));
    }
    let mut client = admin_client(keyring, region).await?;
    let tx = client.transaction().await.map_err(db(region))?;
    // Holds off first-key creation by other proxies (a short lock: one row
    // per tenant and version).
    tx.batch_execute("LOCK TABLE regionguard.data_keys IN SHARE ROW EXCLUSIVE MODE")
        .await
        .map_err(db(region))?;
    let rows = tx
        .query(
            "SELECT tenant, version, wrapped_key, kek_version FROM regionguard.data_keys \
             WHERE wrapped_key IS NOT NULL",
            &[],
        )
        .await
        .map_err(db(region))?;
    let mut rewrapped = 0u64;
    let target = new.active();
    for r in &rows {
        let tenant: &str = r.try_get(0).map_err(db(region))?;
        let version: i32 = r.try_get(1).map_err(db(region))?;
        let wrapped: &[u8] = r.try_get(2).map_err(db(region))?;
        let kek_version: i32 = r.try_get(3).map_err(db(region))?;
        let (version, kv) = (version.max(0) as u32, kek_version.max(0) as u32);
        if kv == newest {
            continue;
        }
        let root = new
            .get(kv)
            .or_else(|| old.get(kv))
            .ok_or(CryptoError::MissingKek {
                region: region.to_string(),
                version,
                kek_version: kv,
            })?;
        let raw = data_key::unwrap(root, region, tenant, version, wrapped)?;
        let again = data_key::wrap(target, region, tenant, version, &raw)?;
        tx.execute(
            "UPDATE regionguard.data_keys SET wrapped_key = $3, kek_version = $4 \
             WHERE tenant = $1 AND version = $2 AND kek_version = $5",
            &[
                &tenant,
                &i32_of(region, version)?,
                &again,
                &i32_of(region, newest)?,
                &kek_version,
            ],
        )
        .await
        .map_err(db(region))?;
        rewrapped += 1;
    }
    notify(&tx, region, "root", None).await?;
    // Installed before the commit so that this proxy never loads a row
    // wrapped by a version it lacks.
    keyring.install_kek(region, new)?;
    // On a failed commit the new set stays: it is what the source provides
    // now (what a restart would load), and the rows it must unwrap are
    // under versions the source still lists or the rewrap would have failed.
    tx.commit().await.map_err(db(region))?;
    Ok(RootRotated {
        kek_version: newest,
        rewrapped,
        live_keys: rows.len() as u64,
    })
}

/// Marks data key versions of `tenant` that no row uses any more as
/// `retired` (after a re-encryption job rewrote their rows), announces it
/// and returns the versions this call retired. Only `decrypt-only` versions
/// older than the active one qualify: never the active version, nor one
/// staged by a rotation in progress (above the active one). Retired keys
/// still unwrap, so a value written under one by a proxy that had not yet
/// heard of the rotation stays readable.
pub async fn retire(
    keyring: &Keyring,
    region: &str,
    tenant: &str,
    versions: &[u32],
) -> Result<Vec<u32>, KeyAdminError> {
    if versions.is_empty() {
        return Ok(Vec::new());
    }
    let tenant = canonical_tenant(tenant).into_owned();
    let wanted: Vec<i32> = versions
        .iter()
        .map(|v| i32_of(region, *v))
        .collect::<Result<_, _>>()?;
    let mut client = admin_client(keyring, region).await?;
    let tx = client.transaction().await.map_err(db(region))?;
    lock_tenant(&tx, region, &tenant).await?;
    let rows = tx
        .query(
            "UPDATE regionguard.data_keys SET state = 'retired' \
             WHERE tenant = $1 AND version = ANY($2) AND state = 'decrypt-only' \
               AND version < (SELECT version FROM regionguard.data_keys \
                              WHERE tenant = $1 AND state = 'active') \
             RETURNING version",
            &[&tenant, &wanted],
        )
        .await
        .map_err(db(region))?;
    let mut retired = Vec::with_capacity(rows.len());
    for r in &rows {
        let v: i32 = r.try_get(0).map_err(db(region))?;
        retired.push(v.max(0) as u32);
    }
    retired.sort_unstable();
    if !retired.is_empty() {
        notify(&tx, region, "retire", Some(&tenant)).await?;
    }
    tx.commit().await.map_err(db(region))?;
    keyring.invalidate(region, &tenant);
    Ok(retired)
}

/// Crypto-shreds a tenant in `region`: every data key version destroyed
/// (wrapped key erased, state `destroyed`), announced to the other proxies
/// and purged from this one's cache. A tenant without keys gets a destroyed
/// version 1, so a later write fails instead of creating a fresh key.
pub async fn shred(
    keyring: &Keyring,
    region: &str,
    tenant: &str,
) -> Result<Shredded, KeyAdminError> {
    let tenant = canonical_tenant(tenant).into_owned();
    let ring = keyring
        .kek(region)
        .ok_or_else(|| CryptoError::NoRegionKey {
            region: region.to_string(),
        })?;
    let mut client = admin_client(keyring, region).await?;
    let tx = client.transaction().await.map_err(db(region))?;
    lock_tenant(&tx, region, &tenant).await?;
    let destroyed = tx
        .execute(
            "UPDATE regionguard.data_keys SET state = 'destroyed', wrapped_key = NULL \
             WHERE tenant = $1 AND state <> 'destroyed'",
            &[&tenant],
        )
        .await
        .map_err(db(region))?;
    let any: i64 = tx
        .query_one(
            "SELECT count(*) FROM regionguard.data_keys WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db(region))?;
    let tombstone = any == 0;
    if tombstone {
        tx.execute(
            "INSERT INTO regionguard.data_keys (tenant, version, wrapped_key, kek_version, state) \
             VALUES ($1, 1, NULL, $2, 'destroyed')",
            &[&tenant, &i32_of(region, ring.active().version())?],
        )
        .await
        .map_err(db(region))?;
    }
    notify(&tx, region, "shred", Some(&tenant)).await?;
    tx.commit().await.map_err(db(region))?;
    keyring.invalidate(region, &tenant);
    // The old row versions (with the wrapped keys) stay in the table's
    // pages until vacuumed; do it now rather than whenever autovacuum runs.
    if let Err(e) = client.batch_execute("VACUUM regionguard.data_keys").await {
        tracing::warn!(%region, error = %e, "VACUUM of the key table after a shred failed");
    }
    Ok(Shredded {
        tenant,
        destroyed,
        tombstone,
    })
}

/// Starts one follower per region with keys: a LISTEN connection that
/// forgets cached keys when another proxy (or this one) announces a
/// change, and every `recheck` compares the cached key sets with the table
/// (the backstop for a notification lost with its connection).
pub fn spawn_followers(
    keyring: &Arc<Keyring>,
    recheck: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    keyring
        .regions()
        .into_iter()
        .map(|region| {
            tokio::spawn(follow(
                Arc::downgrade(keyring),
                region.to_string(),
                recheck.max(Duration::from_millis(100)),
            ))
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct Event {
    event: String,
    tenant: Option<String>,
}

async fn follow(keyring: Weak<Keyring>, region: String, recheck: Duration) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let Some(connector) = keyring
            .upgrade()
            .and_then(|k| k.connector(&region).cloned())
        else {
            return;
        };
        let (client, mut events) = match connector.connect_listening().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%region, error = %e, "key change listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            tracing::debug!(%region, error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(500);
        // Changes may have been announced while we were not listening.
        match keyring.upgrade() {
            Some(k) => k.invalidate_region(&region),
            None => return,
        }
        let mut tick = tokio::time::interval(recheck);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                n = events.recv() => {
                    let Some(n) = n else { break };
                    let Some(k) = keyring.upgrade() else { return };
                    apply(&k, &region, n.payload()).await;
                }
                _ = tick.tick() => {
                    let Some(k) = keyring.upgrade() else { return };
                    if let Err(e) = recheck_region(&k, &region, &client).await {
                        tracing::debug!(%region, error = %e, "key re-check failed");
                        break;
                    }
                }
            }
        }
        tracing::debug!(%region, "key change listener lost its connection; reconnecting");
    }
}

async fn apply(keyring: &Keyring, region: &str, payload: &str) {
    match serde_json::from_str::<Event>(payload) {
        Ok(Event { event, .. }) if event == "root" => {
            if let Err(e) = keyring.reload_kek(region).await {
                tracing::warn!(%region, error = %e, "cannot re-read the root keys after a root rotation elsewhere");
            }
        }
        Ok(Event {
            tenant: Some(t), ..
        }) => keyring.invalidate(region, &t),
        _ => keyring.invalidate_region(region),
    }
}

/// Forgets every cached tenant whose versions or states differ from the
/// key table's.
async fn recheck_region(
    keyring: &Keyring,
    region: &str,
    client: &Client,
) -> Result<(), CryptoError> {
    let cached = keyring.cached_tenants(region);
    if cached.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = cached.iter().map(|(t, _)| t.as_str()).collect();
    let rows = client
        .query(
            "SELECT tenant, version, state FROM regionguard.data_keys \
             WHERE tenant = ANY($1) ORDER BY tenant, version",
            &[&names],
        )
        .await
        .map_err(db(region))?;
    let mut table: HashMap<String, Vec<(u32, Option<KeyState>)>> = HashMap::new();
    for r in &rows {
        let t: String = r.try_get(0).map_err(db(region))?;
        let v: i32 = r.try_get(1).map_err(db(region))?;
        let s: &str = r.try_get(2).map_err(db(region))?;
        table
            .entry(t)
            .or_default()
            .push((v.max(0) as u32, KeyState::parse(s)));
    }
    for (tenant, versions) in cached {
        let cached: Vec<(u32, Option<KeyState>)> =
            versions.into_iter().map(|(v, s)| (v, Some(s))).collect();
        if table.get(&tenant) != Some(&cached) {
            tracing::debug!(%region, "cached tenant keys are stale; forgetting them");
            keyring.invalidate(region, &tenant);
        }
    }
    Ok(())
}
