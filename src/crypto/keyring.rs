//! The facade the frontend uses: a tenant's keys in a region, cached.
//!
//! Loading a tenant's keys reads its rows of `regionguard.data_keys` in
//! the region's own database, unwraps each live version with the region's
//! root key and derives its cipher and nonce keys. The result is cached per
//! (region, tenant) until [`Keyring::invalidate`] (rotation and shredding,
//! issue 5, call it when another proxy announces a change).
//!
//! Nothing here does I/O at construction; the first use of a region opens
//! its control connection and creates the key table if missing.

use super::aad::{canonical_tenant, Aad};
use super::data_key::{self, DataKey};
use super::envelope::{self, Mode};
use super::kek::KekRing;
use super::store::{self, KeyState, StoredKey};
use super::CryptoError;
use crate::backend::control::ControlConnector;
use crate::config::{Config, Protection};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// How long the key table's queries for one tenant may take before the
/// region counts as unavailable: a connection wedged by a network partition
/// must fail the statement, not hang it.
const STORE_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
use zeroize::Zeroizing;

/// Every region's root keys and the tenants' data keys in use.
pub struct Keyring {
    regions: HashMap<String, RegionKeys>,
}

struct RegionKeys {
    name: Arc<str>,
    /// Swapped whole by a root key rotation (`keys rotate-root`, or another
    /// proxy's announcement of one).
    kek: arc_swap::ArcSwap<KekRing>,
    /// Where the root keys come from, to read them again.
    source: crate::config::KeySource,
    connector: ControlConnector,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    tenants: DashMap<String, Arc<TenantKeys>>,
}

impl Keyring {
    /// Loads the root keys of every configured region that has a key
    /// source (a proxy's config lists exactly the regions it serves, so it
    /// never loads another region's keys). Blocking: a key command may run
    /// for up to ten seconds. No database I/O.
    pub fn load(config: &Config) -> Result<Keyring, CryptoError> {
        let mut regions = HashMap::new();
        for (name, region) in &config.regions {
            let Some(source) = &region.key else { continue };
            let kek = KekRing::load(name, source)?;
            let connector =
                ControlConnector::new(name, region).map_err(|reason| CryptoError::Store {
                    region: name.clone(),
                    reason,
                })?;
            regions.insert(
                name.clone(),
                RegionKeys {
                    name: Arc::from(name.as_str()),
                    kek: arc_swap::ArcSwap::from_pointee(kek),
                    source: source.clone(),
                    connector,
                    client: tokio::sync::Mutex::new(None),
                    tenants: DashMap::new(),
                },
            );
        }
        Ok(Keyring { regions })
    }

    /// Connects to every region with keys and creates the key table where
    /// missing, so a misconfigured region shows at start rather than on the
    /// first write. Returns each region's outcome; a region that is down is
    /// not fatal for the others.
    pub async fn prepare(&self) -> Vec<(String, Result<(), CryptoError>)> {
        let mut out = Vec::new();
        for (name, r) in &self.regions {
            out.push((name.clone(), r.client().await.map(|_| ())));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Regions whose root keys this proxy holds, sorted.
    pub fn regions(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.regions.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The root keys of `region` (the current set: a root key rotation
    /// replaces it).
    pub fn kek(&self, region: &str) -> Option<Arc<KekRing>> {
        self.regions.get(region).map(|r| r.kek.load_full())
    }

    /// Reads the region's key source again (blocking work on a blocking
    /// thread) and returns the new root key set without installing it.
    pub async fn read_key_source(&self, region: &str) -> Result<KekRing, CryptoError> {
        let r = self.region(region)?;
        let source = r.source.clone();
        let name = r.name.to_string();
        tokio::task::spawn_blocking(move || KekRing::load(&name, &source))
            .await
            .map_err(|_| CryptoError::Internal("key source task"))?
    }

    /// Installs a root key set for `region` (after [`Keyring::read_key_source`]).
    pub fn install_kek(&self, region: &str, ring: KekRing) -> Result<(), CryptoError> {
        self.region(region)?.kek.store(Arc::new(ring));
        Ok(())
    }

    /// Reads the key source again and installs it: another proxy rotated
    /// the root key, or a key row names a version this proxy lacks.
    pub async fn reload_kek(&self, region: &str) -> Result<(), CryptoError> {
        let ring = self.read_key_source(region).await?;
        self.install_kek(region, ring)
    }

    /// Tenants whose keys are cached in `region`, with the versions and
    /// states cached: what the periodic re-check compares with the table.
    pub fn cached_tenants(&self, region: &str) -> Vec<(String, Vec<(u32, KeyState)>)> {
        let Some(r) = self.regions.get(region) else {
            return Vec::new();
        };
        r.tenants
            .iter()
            .map(|e| (e.key().clone(), e.value().versions()))
            .collect()
    }

    /// The region's control connector (for a dedicated LISTEN connection).
    pub fn connector(&self, region: &str) -> Option<&ControlConnector> {
        self.regions.get(region).map(|r| &r.connector)
    }

    /// The region's control-plane client (connected and with the key table
    /// created on first use), for key administration.
    pub async fn store_client(&self, region: &str) -> Result<Arc<Client>, CryptoError> {
        self.region(region)?.client().await
    }

    /// The tenant's keys with an active version, creating its first data
    /// key (version 1, wrapped by the newest root key) when it has none.
    /// Safe to race with other proxies: exactly one key is created.
    pub async fn for_write(
        &self,
        region: &str,
        tenant: &str,
    ) -> Result<Arc<TenantKeys>, CryptoError> {
        let r = self.region(region)?;
        let tenant = canonical_tenant(tenant);
        if let Some(keys) = r.cached(&tenant) {
            if keys.active.is_some() {
                return Ok(keys);
            }
        }
        let keys = r.load(&tenant, true).await?;
        if keys.active.is_none() {
            return Err(CryptoError::NoActiveKey {
                region: region.to_string(),
                destroyed: keys.all_destroyed(),
            });
        }
        Ok(keys)
    }

    /// The tenant's existing keys, never creating one. A tenant without keys
    /// gets a [`TenantKeys`] that decrypts nothing (`has_keys()` is false);
    /// it is not cached, so keys created later by another proxy are found.
    pub async fn for_read(
        &self,
        region: &str,
        tenant: &str,
    ) -> Result<Arc<TenantKeys>, CryptoError> {
        let r = self.region(region)?;
        let tenant = canonical_tenant(tenant);
        if let Some(keys) = r.cached(&tenant) {
            return Ok(keys);
        }
        r.load(&tenant, false).await
    }

    /// The cached keys of a tenant, without I/O: the hot path. `None` when
    /// not loaded yet (call [`Keyring::for_write`] / [`Keyring::for_read`]).
    pub fn cached(&self, region: &str, tenant: &str) -> Option<Arc<TenantKeys>> {
        self.regions.get(region)?.cached(&canonical_tenant(tenant))
    }

    /// Decrypts a stored envelope of `tenant` in `region`: the cached keys
    /// when they hold the envelope's key version, else a fresh read of the
    /// key table (a version created by another proxy since we cached).
    pub async fn open(
        &self,
        region: &str,
        tenant: &str,
        aad: &Aad,
        stored: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let r = self.region(region)?;
        let tenant = canonical_tenant(tenant);
        let header = envelope::decode_header(stored).map_err(|e| CryptoError::Malformed {
            place: aad.place().clone(),
            reason: e.to_string(),
        })?;
        let keys = match r.cached(&tenant) {
            Some(k) if k.knows(header.key_version) => k,
            _ => r.load(&tenant, false).await?,
        };
        keys.open(aad, stored)
    }

    /// Forgets the cached keys of a tenant (after a rotation or shred); the
    /// next use reads the key table again.
    pub fn invalidate(&self, region: &str, tenant: &str) {
        if let Some(r) = self.regions.get(region) {
            r.tenants.remove(&*canonical_tenant(tenant));
        }
    }

    /// Forgets every cached tenant key of `region`.
    pub fn invalidate_region(&self, region: &str) {
        if let Some(r) = self.regions.get(region) {
            r.tenants.clear();
        }
    }

    fn region(&self, region: &str) -> Result<&RegionKeys, CryptoError> {
        self.regions
            .get(region)
            .ok_or_else(|| CryptoError::NoRegionKey {
                region: region.to_string(),
            })
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("regions", &self.regions())
            .finish_non_exhaustive()
    }
}

impl RegionKeys {
    fn cached(&self, tenant: &str) -> Option<Arc<TenantKeys>> {
        self.tenants.get(tenant).map(|e| Arc::clone(e.value()))
    }

    /// The control client, reconnecting when the last one died. The key
    /// table is ensured once per new connection (cheap and idempotent).
    async fn client(&self) -> Result<Arc<Client>, CryptoError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(Arc::clone(c));
            }
        }
        *slot = None;
        let client = self
            .connector
            .connect()
            .await
            .map_err(|e| CryptoError::StoreUnavailable {
                region: self.name.to_string(),
                reason: e.reason,
            })?;
        store::ensure_schema(&client, &self.name).await?;
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Reads (and with `create`, creates) the tenant's keys and caches them
    /// when there are any. A connection that died since its last use is
    /// replaced once before giving up.
    async fn load(&self, tenant: &str, create: bool) -> Result<Arc<TenantKeys>, CryptoError> {
        let rows = match self.fetch_timed(tenant, create).await {
            Err(e) if e.is_unavailable() => self.fetch_timed(tenant, create).await?,
            other => other?,
        };
        let keys = match TenantKeys::from_rows(&self.kek.load(), &self.name, tenant, &rows) {
            // A root key version this proxy lacks: another proxy rotated the
            // root key since we read the source; read it again once.
            Err(CryptoError::MissingKek { .. }) => {
                let source = self.source.clone();
                let name = self.name.to_string();
                let ring = tokio::task::spawn_blocking(move || KekRing::load(&name, &source))
                    .await
                    .map_err(|_| CryptoError::Internal("key source task"))??;
                self.kek.store(Arc::new(ring));
                TenantKeys::from_rows(&self.kek.load(), &self.name, tenant, &rows)?
            }
            other => other?,
        };
        let keys = Arc::new(keys);
        if keys.has_keys() {
            self.tenants.insert(tenant.to_string(), Arc::clone(&keys));
        }
        Ok(keys)
    }

    /// [`RegionKeys::fetch`] bounded by [`STORE_QUERY_TIMEOUT`]; a timed-out
    /// connection is dropped so the next use reconnects.
    async fn fetch_timed(&self, tenant: &str, create: bool) -> Result<Vec<StoredKey>, CryptoError> {
        let client = self.client().await?;
        match tokio::time::timeout(STORE_QUERY_TIMEOUT, self.fetch(&client, tenant, create)).await {
            Ok(result) => result,
            Err(_) => {
                let mut slot = self.client.lock().await;
                if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                    *slot = None;
                }
                Err(CryptoError::StoreUnavailable {
                    region: self.name.to_string(),
                    reason: format!(
                        "the key table did not answer within {} s",
                        STORE_QUERY_TIMEOUT.as_secs()
                    ),
                })
            }
        }
    }

    async fn fetch(
        &self,
        client: &Client,
        tenant: &str,
        create: bool,
    ) -> Result<Vec<StoredKey>, CryptoError> {
        let rows = store::tenant_keys(client, &self.name, tenant).await?;
        if !rows.is_empty() || !create {
            return Ok(rows);
        }
        let raw = data_key::generate()?;
        let ring = self.kek.load();
        let kek = ring.active();
        let wrapped = data_key::wrap(kek, &self.name, tenant, 1, &raw)?;
        let created =
            store::insert_first_key(client, &self.name, tenant, &wrapped, kek.version()).await?;
        if created {
            tracing::info!(region = %self.name, "created a tenant's first data key");
        }
        // Re-read: when another proxy won the race, its key is the one.
        store::tenant_keys(client, &self.name, tenant).await
    }
}

/// One version in a tenant's key set. The key is boxed: aws-lc's HMAC
/// context makes a `DataKey` over a kilobyte.
enum Slot {
    Live { key: Box<DataKey>, state: KeyState },
    Destroyed,
}

/// A tenant's data keys in one region: every live version (to open values
/// sealed under any of them) and the active one (to seal).
pub struct TenantKeys {
    region: Arc<str>,
    /// Ascending by version; tenants have a handful at most.
    versions: Vec<(u32, Slot)>,
    active: Option<u32>,
}

impl TenantKeys {
    /// Unwraps and derives the key rows of one tenant.
    pub fn from_rows(
        kek: &KekRing,
        region: &str,
        tenant: &str,
        rows: &[StoredKey],
    ) -> Result<TenantKeys, CryptoError> {
        let tenant = canonical_tenant(tenant);
        let mut versions = Vec::with_capacity(rows.len());
        let mut active = None;
        for row in rows {
            let slot = match (&row.wrapped_key, row.state) {
                (None, _) | (_, KeyState::Destroyed) => Slot::Destroyed,
                (Some(wrapped), state) => {
                    let root = kek
                        .get(row.kek_version)
                        .ok_or_else(|| CryptoError::MissingKek {
                            region: region.to_string(),
                            version: row.version,
                            kek_version: row.kek_version,
                        })?;
                    let raw = data_key::unwrap(root, region, &tenant, row.version, wrapped)?;
                    if state == KeyState::Active {
                        active = Some(row.version);
                    }
                    Slot::Live {
                        key: Box::new(DataKey::derive(row.version, &raw)?),
                        state,
                    }
                }
            };
            versions.push((row.version, slot));
        }
        versions.sort_by_key(|(v, _)| *v);
        Ok(TenantKeys {
            region: Arc::from(region),
            versions,
            active,
        })
    }

    /// The region these keys belong to.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The version new values are sealed under, if any.
    pub fn active_version(&self) -> Option<u32> {
        self.active
    }

    /// Whether the tenant has any key row at all (live or destroyed).
    pub fn has_keys(&self) -> bool {
        !self.versions.is_empty()
    }

    /// Versions and their states, ascending. Never key material.
    pub fn versions(&self) -> Vec<(u32, KeyState)> {
        self.versions
            .iter()
            .map(|(v, s)| {
                (
                    *v,
                    match s {
                        Slot::Live { state, .. } => *state,
                        Slot::Destroyed => KeyState::Destroyed,
                    },
                )
            })
            .collect()
    }

    /// Whether `version` is one of this tenant's key rows (live or
    /// destroyed): if not, the cached set is stale or the value foreign.
    pub fn knows(&self, version: u32) -> bool {
        self.slot(version).is_some()
    }

    fn all_destroyed(&self) -> bool {
        !self.versions.is_empty()
            && self
                .versions
                .iter()
                .all(|(_, s)| matches!(s, Slot::Destroyed))
    }

    fn slot(&self, version: u32) -> Option<&Slot> {
        self.versions
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, s)| s)
    }

    fn active_key(&self) -> Result<&DataKey, CryptoError> {
        match self.active.and_then(|v| self.slot(v)) {
            Some(Slot::Live { key, .. }) => Ok(key),
            _ => Err(CryptoError::NoActiveKey {
                region: self.region.to_string(),
                destroyed: self.all_destroyed(),
            }),
        }
    }

    /// Seals the canonical plaintext of a value into a binary envelope
    /// under the active version. Fails (never returns plaintext) when the
    /// tenant has no active key — keys obtained with `for_read` may not.
    pub fn seal(
        &self,
        protection: Protection,
        aad: &Aad,
        canonical_plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.active_key()?
            .seal(Mode::from(protection), aad, canonical_plaintext)
    }

    /// [`TenantKeys::seal`], appending the envelope to `out` (for example
    /// an outgoing message buffer) without allocating when it has room.
    pub fn seal_into(
        &self,
        protection: Protection,
        aad: &Aad,
        canonical_plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        self.active_key()?
            .seal_into(Mode::from(protection), aad, canonical_plaintext, out)
    }

    /// The versions an equality lookup must match, active first, then the
    /// decrypt-only ones, newest first. Retired versions are left out:
    /// re-encryption retires a version only once no row uses it, and every
    /// extra version costs every lookup an envelope.
    pub fn lookup_versions(&self) -> Vec<u32> {
        let older = self
            .versions
            .iter()
            .rev()
            .filter_map(|(v, slot)| match slot {
                Slot::Live { state, .. }
                    if Some(*v) != self.active && *state != KeyState::Retired =>
                {
                    Some(*v)
                }
                _ => None,
            });
        self.active.into_iter().chain(older).collect()
    }

    /// Deterministic envelopes of one value under every version of
    /// [`TenantKeys::lookup_versions`], in that order: what an equality
    /// lookup must match while rows under older versions remain
    /// (`col IN (enc_v2(x), enc_v1(x))`).
    pub fn seal_for_lookup(
        &self,
        aad: &Aad,
        canonical_plaintext: &[u8],
    ) -> Result<Vec<Vec<u8>>, CryptoError> {
        let active = self.active_key()?;
        let mut out = vec![active.seal(Mode::Deterministic, aad, canonical_plaintext)?];
        for v in self.lookup_versions().into_iter().skip(1) {
            if let Some(Slot::Live { key, .. }) = self.slot(v) {
                out.push(key.seal(Mode::Deterministic, aad, canonical_plaintext)?);
            }
        }
        Ok(out)
    }

    /// Opens a binary envelope with the version its header names. Every
    /// failure is an error naming the region and column, never the value.
    pub fn open(&self, aad: &Aad, stored: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut out = Zeroizing::new(Vec::new());
        self.open_into(aad, stored, &mut out)?;
        Ok(out)
    }

    /// [`TenantKeys::open`] into a reused buffer (its previous contents are
    /// replaced): no allocation and no per-value wipe on the hot path; the
    /// buffer is zeroized when it drops.
    pub fn open_into(
        &self,
        aad: &Aad,
        stored: &[u8],
        out: &mut Zeroizing<Vec<u8>>,
    ) -> Result<(), CryptoError> {
        out.clear();
        let env = envelope::decode(stored).map_err(|e| CryptoError::Malformed {
            place: aad.place().clone(),
            reason: e.to_string(),
        })?;
        let version = env.header.key_version;
        match self.slot(version) {
            Some(Slot::Live { key, .. }) => {
                key.open_into(aad, &env, out)
                    .map_err(|()| CryptoError::Integrity {
                        place: aad.place().clone(),
                    })
            }
            Some(Slot::Destroyed) => Err(CryptoError::Destroyed {
                place: aad.place().clone(),
                version,
            }),
            None => Err(CryptoError::UnknownKeyVersion {
                place: aad.place().clone(),
                version,
            }),
        }
    }
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKeys")
            .field("region", &self.region)
            .field("active", &self.active)
            .field("versions", &self.versions())
            .finish()
    }
}
