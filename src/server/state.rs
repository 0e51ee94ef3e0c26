//! What every session shares: the config, per-region runtime settings, the
//! users, the cancel registry and the shutdown signal.

use crate::backend::{CancelTarget, RegionTls};
use crate::catalog::{Catalogs, RegionCatalog};
use crate::config::{Config, Region};
use crate::crypto::Keyring;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::scram::Verifier;
use crate::routing::directory::Directory;
use crate::sql::{AnalysisCache, Classification, CryptoPlan, Tenancy};
use crate::types::LogicalType;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Where the process is in its life; sessions watch it to drain on SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting; close sessions as soon as they are idle.
    Draining,
    /// The drain timeout passed: close every session now.
    Closing,
}

/// A region as sessions use it.
pub struct RegionRuntime {
    pub config: Region,
    pub tls: RegionTls,
    /// The host that accepted writes last.
    pub primary: crate::backend::Primary,
    /// Set when the region sends reads to its standbys
    /// (`read_from_standbys`).
    pub standbys: Option<crate::backend::standby::Standbys>,
    /// Backend sessions of the region's primary kept for the next client
    /// session (`backend_pool`).
    pub idle: crate::backend::pool::IdlePool,
    /// Transaction mode (`backend_pool.mode`): one permit per backend
    /// session serving a client (`max_active_per_region`).
    pub active: Option<crate::backend::active::ActiveBackends>,
}

/// One client's cancel key and the backend sessions a cancel must reach.
pub struct CancelEntry {
    pub secret: i32,
    pub targets: Vec<CancelTarget>,
}

pub struct Shared {
    /// The config the proxy started with: the settings that only a restart
    /// changes (listen, regions, TLS, …; see `server::reload`).
    pub config: Config,
    /// The config in force: the start config, or the last one a reload
    /// accepted. Reloadable settings are read from here.
    pub current: ArcSwap<Config>,
    pub regions: BTreeMap<Arc<str>, RegionRuntime>,
    /// Tenant-scoped and global tables and the classified columns, for
    /// statement analysis; replaced whole by a reload (read it once per
    /// statement with [`Shared::tenancy`]).
    pub tenancy: ArcSwap<Tenancy>,
    /// Statement analyses by text: a prepared statement is parsed once.
    pub analysis: AnalysisCache,
    pub directory: Arc<Directory>,
    /// SCRAM verifiers by user name; replaced whole by a reload.
    pub users: ArcSwap<HashMap<String, Verifier>>,
    pub tls: Option<TlsAcceptor>,
    /// Keyed by the process id the proxy handed the client.
    pub cancel: DashMap<i32, CancelEntry>,
    /// One permit per client connection (`listen.max_clients`).
    pub clients: Arc<Semaphore>,
    pub phase: watch::Receiver<Phase>,
    /// Series and the slow-statement threshold (no-ops when metrics are off).
    pub metrics: crate::metrics::Metrics,
    /// Region root keys and cached tenant data keys (when columns are classified).
    pub keyring: Option<Arc<Keyring>>,
    /// Where each region's classified columns are.
    pub catalogs: Catalogs,
    /// Two-phase commit of statements that reach every region.
    pub twophase: Arc<crate::routing::twophase::TwoPhase>,
    /// The audit log (`admin.audit_log`): admin commands and key events,
    /// including the ones the proxy takes on its own (rotation by age).
    pub audit: Option<Arc<crate::admin::audit::AuditLog>>,
    /// Transaction mode: woken when a statement waits for a region's
    /// backend, so sessions between transactions hand theirs back
    /// (`backend::active`).
    pub backend_wanted: tokio::sync::Notify,
    /// Serialises config reloads (`server::reload`).
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Bumped by each reload that changes tenancy or classified columns:
    /// a statement prepared before it was planned under the old rules (it
    /// might store plaintext in a newly classified column), so its Bind is
    /// refused until it is prepared again.
    pub rules_epoch: std::sync::atomic::AtomicU64,
    /// Held while catalogs and the tenancy rules they were read under are
    /// installed together (by a reload, or a catalog refresh), so a refresh
    /// that read under the old rules never installs over the new ones.
    pub rules_install: std::sync::Mutex<()>,
}

impl Shared {
    /// The tenancy rules in force (one atomic load; a reload swaps them).
    pub fn tenancy(&self) -> Arc<Tenancy> {
        self.tenancy.load_full()
    }

    /// The SCRAM verifiers of `auth.users`; the error names the user whose
    /// verifier does not parse.
    pub fn users_of(config: &Config) -> Result<HashMap<String, Verifier>, String> {
        let mut users = HashMap::new();
        for u in &config.auth.users {
            let v = Verifier::parse(&u.verifier).map_err(|e| format!("{}: {e}", u.name))?;
            users.insert(u.name.clone(), v);
        }
        Ok(users)
    }

    /// The tenancy rules of a config, for statement analysis.
    pub fn tenancy_of(config: &Config) -> Tenancy {
        let t = &config.tenancy;
        let mut tenancy = Tenancy::new(&t.column);
        if t.discover {
            tenancy.enable_discovery();
        }
        for table in &t.tables {
            tenancy.add_scoped(table, t.columns.get(table).map(String::as_str));
        }
        for table in &t.global_tables {
            tenancy.add_global(table);
        }
        let mut classification = Classification::default();
        for (table, columns) in &config.classified {
            for (column, c) in columns {
                let (Some(class), Ok(logical)) = (
                    config.classes.get(&c.class),
                    LogicalType::parse(&c.logical_type),
                ) else {
                    // Validation refuses such a config before it gets here.
                    continue;
                };
                classification.add(
                    table,
                    column,
                    logical,
                    c.protection(class.encrypt),
                    c.equality_group.as_deref(),
                );
            }
        }
        tenancy.set_classification(classification);
        tenancy
    }

    /// `region`'s map of classified columns, read again when it is older
    /// than a second and lacks one of `tables` (created since it was read).
    /// A wrong storage type refuses the statement (42804) naming the column.
    pub async fn ensure_catalog(
        &self,
        region: &str,
        plans: &[&CryptoPlan],
    ) -> Result<Arc<RegionCatalog>, PgError> {
        let current = self.catalogs.get(region);
        let fresh = current
            .read_at
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
        let mut complete = current.read_at.is_some();
        for plan in plans {
            for t in &plan.targets {
                complete &= current.has_table(&t.column.table);
            }
        }
        let catalog = if complete || fresh {
            current
        } else {
            let Some(keyring) = &self.keyring else {
                return Ok(current);
            };
            let client = keyring
                .store_client(region)
                .await
                .map_err(|e| crate::frontend::encrypt::crypto_error(&e))?;
            self.refresh_catalog(region, &client).await.map_err(|e| {
                PgError::error(
                    sqlstate::CONNECTION_EXCEPTION,
                    format!("cannot read the catalog of region {region}: {e}"),
                )
            })?
        };
        if let Some(problem) = catalog.problems().first() {
            return Err(PgError::error("42804", problem.clone())
                .with_hint("store encrypted columns as bytea (or text/varchar)"));
        }
        Ok(catalog)
    }

    /// Reads `region`'s catalog again and installs it; when the views it
    /// reports change what statements mean (a view's tenancy or its
    /// classified columns), cached analyses are dropped.
    ///
    /// The catalog is read under the tenancy rules in force when the read
    /// starts; a reload that swaps the rules meanwhile makes it read again,
    /// so what it installs always matches the rules that serve statements.
    pub async fn refresh_catalog(
        &self,
        region: &str,
        client: &tokio_postgres::Client,
    ) -> Result<Arc<RegionCatalog>, tokio_postgres::Error> {
        loop {
            let tenancy = self.tenancy();
            let catalog = Arc::new(Catalogs::read(region, client, &tenancy).await?);
            let views_changed = {
                let _installing = self
                    .rules_install
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if !Arc::ptr_eq(&tenancy, &self.tenancy.load()) {
                    continue;
                }
                self.catalogs.install(region, Arc::clone(&catalog));
                tenancy.set_views(self.catalogs.views())
            };
            if views_changed {
                self.analysis.invalidate();
            }
            return Ok(catalog);
        }
    }

    /// Reads every region's catalog again (after DDL: views may have been
    /// created, replaced or dropped). A region that cannot be read keeps
    /// its previous map.
    pub async fn refresh_catalogs(&self) {
        let Some(keyring) = &self.keyring else {
            return;
        };
        for region in self.regions.keys() {
            let refreshed = match keyring.store_client(region).await {
                Ok(client) => self.refresh_catalog(region, &client).await.map(|_| ()),
                Err(e) => {
                    tracing::debug!(%region, error = %e, "catalog refresh: no connection");
                    continue;
                }
            };
            if let Err(e) = refreshed {
                tracing::debug!(%region, error = %e, "catalog refresh failed");
            }
        }
    }

    pub fn region(&self, name: &str) -> Option<&RegionRuntime> {
        self.regions.get(name)
    }

    pub fn region_names(&self) -> String {
        self.regions
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
