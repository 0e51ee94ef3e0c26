//! The key table in each regional database, `regionguard.data_keys`.
//!
//! Keys stay in their region: a tenant's wrapped data keys live in the
//! database that holds the tenant's rows, so they share its residency, its
//! backups and its access control, and every proxy serving the region sees
//! the same keys.
//!
//! One row per (tenant, version). `state` is `active` (wraps new writes;
//! exactly one per tenant, enforced by a partial unique index),
//! `decrypt-only` (older versions during rotation), `retired` (no row uses
//! it any more; still unwrappable) or `destroyed` (crypto-shredded:
//! `wrapped_key` is NULL, the check constraint keeps the two in step).
//! `kek_version` names the root key version that wrapped it, so a root key
//! rotation re-wraps rows one by one while old and new root keys coexist.

use super::CryptoError;
use std::time::SystemTime;
use tokio_postgres::Client;

/// Creates the schema, table and index if missing. Serialised by an
/// advisory lock because concurrent `CREATE … IF NOT EXISTS` from several
/// proxies can still collide on the catalogs' unique indexes.
pub const SCHEMA_SQL: &str = "\
BEGIN;
SELECT pg_advisory_xact_lock(7233105478431500289);
CREATE SCHEMA IF NOT EXISTS regionguard;
CREATE TABLE IF NOT EXISTS regionguard.data_keys (
    tenant text NOT NULL,
    version int NOT NULL CHECK (version > 0),
    wrapped_key bytea,
    kek_version int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL CHECK (state IN ('active', 'decrypt-only', 'retired', 'destroyed')),
    PRIMARY KEY (tenant, version),
    CHECK ((state = 'destroyed') = (wrapped_key IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS data_keys_one_active
    ON regionguard.data_keys (tenant) WHERE state = 'active';
COMMIT;";

/// The lifecycle state of one data key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    Active,
    DecryptOnly,
    Retired,
    Destroyed,
}

impl KeyState {
    /// The value stored in `state`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt-only",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<KeyState> {
        Some(match s {
            "active" => KeyState::Active,
            "decrypt-only" => KeyState::DecryptOnly,
            "retired" => KeyState::Retired,
            "destroyed" => KeyState::Destroyed,
            _ => return None,
        })
    }
}

/// One row of `regionguard.data_keys`.
#[derive(Clone)]
pub struct StoredKey {
    pub version: u32,
    /// `None` once destroyed.
    pub wrapped_key: Option<Vec<u8>>,
    pub kek_version: u32,
    pub created_at: SystemTime,
    pub state: KeyState,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("version", &self.version)
            .field("kek_version", &self.kek_version)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Maps a driver error: a lost or refused connection means the region is
/// unavailable (`08006`); a server error is a key store error.
pub fn store_error(region: &str, e: &tokio_postgres::Error) -> CryptoError {
    match e.as_db_error() {
        Some(db) => CryptoError::Store {
            region: region.to_string(),
            reason: format!("{} ({})", db.message(), db.code().code()),
        },
        None => CryptoError::StoreUnavailable {
            region: region.to_string(),
            reason: e.to_string(),
        },
    }
}

/// Creates the key table if missing (idempotent, safe to race). When the
/// table and its index already exist nothing is run, so a database where an
/// administrator created them needs no CREATE privilege for the proxy.
pub async fn ensure_schema(client: &Client, region: &str) -> Result<(), CryptoError> {
    let present: bool = client
        .query_one(
            "SELECT to_regclass('regionguard.data_keys') IS NOT NULL \
             AND to_regclass('regionguard.data_keys_one_active') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| store_error(region, &e))?;
    if present {
        return Ok(());
    }
    match client.batch_execute(SCHEMA_SQL).await {
        Ok(()) => Ok(()),
        Err(e) => {
            // A failed batch leaves the session in an aborted transaction.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(store_error(region, &e))
        }
    }
}

/// Every key version of `tenant`, ascending.
pub async fn tenant_keys(
    client: &Client,
    region: &str,
    tenant: &str,
) -> Result<Vec<StoredKey>, CryptoError> {
    let rows = client
        .query(
            "SELECT version, wrapped_key, kek_version, created_at, state \
             FROM regionguard.data_keys WHERE tenant = $1 ORDER BY version",
            &[&tenant],
        )
        .await
        .map_err(|e| store_error(region, &e))?;
    let bad = |what: &str| CryptoError::Store {
        region: region.to_string(),
        reason: format!("regionguard.data_keys holds a row with {what}"),
    };
    rows.iter()
        .map(|row| {
            let get = |e: tokio_postgres::Error| store_error(region, &e);
            let version: i32 = row.try_get(0).map_err(get)?;
            let wrapped_key: Option<Vec<u8>> = row.try_get(1).map_err(get)?;
            let kek_version: i32 = row.try_get(2).map_err(get)?;
            let created_at: SystemTime = row.try_get(3).map_err(get)?;
            let state: &str = row.try_get(4).map_err(get)?;
            Ok(StoredKey {
                version: u32::try_from(version).map_err(|_| bad("a negative version"))?,
                wrapped_key,
                kek_version: u32::try_from(kek_version)
                    .map_err(|_| bad("a negative kek_version"))?,
                created_at,
                state: KeyState::parse(state).ok_or_else(|| bad("an unknown state"))?,
            })
        })
        .collect()
}

/// Inserts version 1 as the tenant's active key unless the tenant already
/// has any key row. Returns whether this call inserted it. Two proxies
/// racing both call this; the primary key (and the one-active index) lets
/// exactly one win, and both then read the winner's row.
pub async fn insert_first_key(
    client: &impl tokio_postgres::GenericClient,
    region: &str,
    tenant: &str,
    wrapped_key: &[u8],
    kek_version: u32,
) -> Result<bool, CryptoError> {
    let kek_version = i32::try_from(kek_version).map_err(|_| CryptoError::Store {
        region: region.to_string(),
        reason: "root key version does not fit the kek_version column".into(),
    })?;
    let n = client
        .execute(
            "INSERT INTO regionguard.data_keys (tenant, version, wrapped_key, kek_version, state) \
             SELECT $1, 1, $2, $3, 'active' \
             WHERE NOT EXISTS (SELECT 1 FROM regionguard.data_keys WHERE tenant = $1) \
             ON CONFLICT DO NOTHING",
            &[&tenant, &wrapped_key, &kek_version],
        )
        .await
        .map_err(|e| store_error(region, &e))?;
    Ok(n == 1)
}
