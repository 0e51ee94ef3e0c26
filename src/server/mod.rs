//! The listener: accepts clients, enforces the client limit, runs one
//! session task per client and shuts down gracefully.

mod key_policy;
pub mod reload;
mod search_path;
pub mod state;
mod tls;

use crate::backend::RegionTls;
use crate::config::Config;
use crate::protocol::error::{sqlstate, PgError};
use arc_swap::ArcSwap;
use state::{Phase, RegionRuntime, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Loads the region root keys when columns are classified (a key command
/// may block for a while, so off the runtime's threads).
async fn load_keys(config: &Config) -> Result<Option<Arc<crate::crypto::Keyring>>, StartError> {
    if config.classified.is_empty() {
        return Ok(None);
    }
    let owned = config.clone();
    let keyring = tokio::task::spawn_blocking(move || crate::crypto::Keyring::load(&owned))
        .await
        .map_err(|e| StartError::Keys(e.to_string()))?
        .map_err(|e| StartError::Keys(e.to_string()))?;
    Ok(Some(Arc::new(keyring)))
}

/// Creates the key tables and reads each reachable region's classified
/// columns; a column with a storage type that cannot hold ciphertext
/// refuses the start, naming it. A region that is down is checked when
/// first used.
async fn check_catalogs(shared: &Shared) -> Result<(), StartError> {
    let Some(keyring) = &shared.keyring else {
        return Ok(());
    };
    for (region, outcome) in keyring.prepare().await {
        if let Err(e) = outcome {
            tracing::warn!(%region, error = %e, "region key store unavailable at start; checked on first use");
            continue;
        }
        let Ok(client) = keyring.store_client(&region).await else {
            continue;
        };
        match shared.refresh_catalog(&region, &client).await {
            Ok(catalog) => {
                if !catalog.problems().is_empty() {
                    return Err(StartError::Catalog(catalog.problems().join("; ")));
                }
            }
            Err(e) => {
                tracing::warn!(%region, error = %e, "cannot read the region's catalog at start")
            }
        }
    }
    Ok(())
}

/// Re-reads every region's classified columns periodically, the backstop
/// for tables created or altered outside the proxy.
async fn refresh_catalogs(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.keyring.is_none() {
            return;
        }
        shared.refresh_catalogs().await;
    }
}

/// How many idle backend sessions a region's pool keeps. In transaction
/// mode every busy backend comes back to the pool between transactions:
/// a pool smaller than `max_active_per_region` would close backends that
/// the next transactions open again (a fork and a login each), so it keeps
/// at least that many.
fn idle_capacity(pool: &crate::config::BackendPool) -> usize {
    match pool.mode {
        crate::config::PoolMode::Session => pool.max_idle_per_region,
        crate::config::PoolMode::Transaction => {
            pool.max_idle_per_region.max(pool.max_active_per_region)
        }
    }
}

/// Closes idle pooled backend sessions past `backend_pool.idle_timeout_secs`
/// (or closed by their server) twice per timeout, at most every 10 s.
async fn sweep_idle_backends(shared: std::sync::Weak<Shared>, timeout: Duration) {
    let every = (timeout.min(Duration::from_secs(20)) / 2).max(Duration::from_millis(250));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for rt in shared.regions.values() {
            rt.idle.sweep().await;
        }
        shared.metrics.idle_backends(&shared);
    }
}

/// A running proxy. Dropping it does not stop it; call [`Proxy::shutdown`].
pub struct Proxy {
    local_addr: SocketAddr,
    phase: watch::Sender<Phase>,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
    metrics: Option<crate::metrics::Endpoint>,
    /// The admin socket (when `admin.socket` is set) and the key change
    /// followers (when columns are classified).
    admin: Option<crate::admin::AdminServer>,
    followers: Vec<tokio::task::JoinHandle<()>>,
    jobs: Arc<crate::reencrypt::Jobs>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("client TLS: {0}")]
    Tls(String),
    #[error("backend TLS: {0}")]
    BackendTls(String),
    #[error("auth.users: {0}")]
    Users(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("keys: {0}")]
    Keys(String),
    #[error("classified columns: {0}")]
    Catalog(String),
    #[error("{0}")]
    Admin(String),
}

impl Proxy {
    /// Binds `config.listen.address` (port 0 picks a free port) and starts
    /// accepting clients in the background.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let started = std::time::Instant::now();
        let tls = tls::acceptor(&config.client_tls).map_err(StartError::Tls)?;
        let mut regions = std::collections::BTreeMap::new();
        for (name, region) in &config.regions {
            let rt = RegionTls::new(name, region).map_err(StartError::BackendTls)?;
            regions.insert(
                std::sync::Arc::from(name.as_str()),
                RegionRuntime {
                    config: region.clone(),
                    tls: rt,
                    primary: crate::backend::Primary::default(),
                    standbys: region
                        .read_from_standbys
                        .then(|| crate::backend::standby::Standbys::new(name)),
                    idle: crate::backend::pool::IdlePool::new(
                        idle_capacity(&config.backend_pool),
                        std::time::Duration::from_secs(config.backend_pool.idle_timeout_secs),
                    ),
                    active: (config.backend_pool.mode == crate::config::PoolMode::Transaction)
                        .then(|| {
                            crate::backend::active::ActiveBackends::new(
                                config.backend_pool.max_active_per_region,
                            )
                        }),
                },
            );
        }
        let users = Shared::users_of(&config).map_err(StartError::Users)?;
        let audit = match &config.admin.audit_log {
            Some(p) => Some(Arc::new(crate::admin::audit::AuditLog::open(p).map_err(
                |e| StartError::Admin(format!("admin.audit_log: {}: {e}", p.display())),
            )?)),
            None => None,
        };
        let listener = TcpListener::bind(&config.listen.address)
            .await
            .map_err(|source| StartError::Bind {
                address: config.listen.address.clone(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            address: config.listen.address.clone(),
            source,
        })?;
        let keyring = load_keys(&config).await?;
        let catalogs = crate::catalog::Catalogs::new(regions.keys().cloned());
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        let metrics = crate::metrics::Metrics::new(&config)
            .map_err(|e| StartError::Metrics(e.to_string()))?;
        let twophase = Arc::new(
            crate::routing::twophase::TwoPhase::new(&config).map_err(StartError::BackendTls)?,
        );
        let directory = Arc::new(
            crate::routing::directory::Directory::new(&config).with_metrics(metrics.directory()),
        );
        directory.spawn_refresher();
        let shared = Arc::new(Shared {
            clients: Arc::new(Semaphore::new(config.listen.max_clients)),
            tenancy: ArcSwap::from_pointee(Shared::tenancy_of(&config)),
            analysis: crate::sql::AnalysisCache::new(10_000),
            directory,
            current: ArcSwap::from_pointee(config.clone()),
            config,
            regions,
            users: ArcSwap::from_pointee(users),
            tls,
            cancel: dashmap::DashMap::new(),
            phase: phase_rx,
            metrics,
            keyring,
            catalogs,
            twophase,
            audit,
            reload_lock: tokio::sync::Mutex::new(()),
            rules_epoch: std::sync::atomic::AtomicU64::new(0),
            rules_install: std::sync::Mutex::new(()),
            backend_wanted: tokio::sync::Notify::new(),
        });
        check_catalogs(&shared).await?;
        // In the background: a region that is down must not delay the start.
        tokio::spawn(search_path::check(Arc::downgrade(&shared)));
        if shared.tenancy.load().discovers() {
            crate::routing::discovery::discover(&shared).await;
            tokio::spawn(crate::routing::discovery::refresh(
                Arc::downgrade(&shared),
                Duration::from_secs(shared.config.tenancy.discover_refresh_secs.max(1)),
            ));
        }
        if shared.config.backend_pool.max_idle_per_region > 0 {
            tokio::spawn(sweep_idle_backends(
                Arc::downgrade(&shared),
                Duration::from_secs(shared.config.backend_pool.idle_timeout_secs),
            ));
        }
        if shared.keyring.is_some() {
            tokio::spawn(refresh_catalogs(Arc::downgrade(&shared)));
            tokio::spawn(key_policy::run(Arc::downgrade(&shared)));
        }
        let metrics = match &shared.config.metrics.address {
            Some(address) => Some(
                crate::metrics::Endpoint::start(address, &shared)
                    .await
                    .map_err(|e| StartError::Metrics(format!("cannot listen on {address}: {e}")))?,
            ),
            None => None,
        };
        // Prepared transactions left by a crash are resolved now, not left
        // holding their locks (ADR 10).
        shared.twophase.spawn_recovery(shared.phase.clone());
        let followers = match &shared.keyring {
            Some(keyring) => crate::crypto::rotation::spawn_followers(
                keyring,
                Duration::from_secs(shared.config.admin.key_recheck_secs.max(1)),
            ),
            None => Vec::new(),
        };
        // One audit log per process: two handles on one file would fork
        // its hash chain.
        let audit = shared.audit.clone();
        // Re-encryption jobs left running by a stopped proxy resume here.
        let jobs = crate::reencrypt::Jobs::start(
            shared.clone(),
            audit.clone(),
            Duration::from_secs(shared.config.admin.key_recheck_secs.max(1)),
        );
        let admin = match &shared.config.admin.socket {
            Some(path) => Some(
                crate::admin::start(path, shared.clone(), started, audit, jobs.clone())
                    .await
                    .inspect_err(|_| jobs.stop())
                    .map_err(StartError::Admin)?,
            ),
            None => None,
        };
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::info!(address = %local_addr, "RegionGuard listening");
        Ok(Proxy {
            local_addr,
            phase: phase_tx,
            shared,
            accept,
            metrics,
            admin,
            followers,
            jobs,
        })
    }

    /// The admin socket's path, when it is serving.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin.as_ref().map(|a| a.path())
    }

    /// Reads the config file again and applies what can change online;
    /// refused as a whole (old config kept) when anything is wrong.
    pub async fn reload(&self) -> Result<reload::Reloaded, reload::ReloadError> {
        reload::reload(&self.shared).await
    }

    /// [`Proxy::reload`] for SIGHUP: the outcome goes to the log and the
    /// audit log, since there is no one to answer.
    pub async fn reload_on_signal(&self) {
        match self.reload().await {
            Ok(r) => {
                tracing::info!(path = %r.path.display(), sha256 = %r.sha256, changed = ?r.changed, "SIGHUP: config reloaded");
                if let Some(log) = &self.shared.audit {
                    let summary = serde_json::json!({"sha256": r.sha256, "changed": r.changed});
                    log.record_system("SIGHUP", "reload", Ok(summary));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: config reload refused; the running config is unchanged");
                if let Some(log) = &self.shared.audit {
                    log.record_system("SIGHUP", "reload", Err(e.kind()));
                }
            }
        }
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, when on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// The proxy's metrics (for in-process tools and tests).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.shared.metrics
    }

    /// Stops accepting, lets open transactions finish up to
    /// `listen.shutdown_timeout_secs`, then closes every session.
    pub async fn shutdown(self) {
        let _ = self.phase.send(Phase::Draining);
        self.accept.abort();
        if let Some(admin) = self.admin {
            admin.shutdown();
        }
        // Jobs stay `running` in the database: another proxy (or this one
        // started again) resumes them.
        self.jobs.stop();
        for f in &self.followers {
            f.abort();
        }
        let max = self.shared.config.listen.max_clients as u32;
        let timeout = Duration::from_secs(self.shared.config.listen.shutdown_timeout_secs);
        let all_done = || self.shared.clients.acquire_many(max);
        if tokio::time::timeout(timeout, all_done()).await.is_err() {
            tracing::warn!("shutdown timeout reached: closing remaining sessions");
            let _ = self.phase.send(Phase::Closing);
            let _ = tokio::time::timeout(Duration::from_secs(5), all_done()).await;
        }
        for rt in self.shared.regions.values() {
            rt.idle.clear().await;
        }
        if let Some(m) = &self.metrics {
            m.stop();
        }
        tracing::info!("RegionGuard stopped");
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (mut tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and similar: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = shared.clients.clone().try_acquire_owned() else {
            shared
                .metrics
                .client_refused(crate::metrics::ClientRefusal::MaxClients);
            let err = PgError::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            )
            .with_hint("raise listen.max_clients or use a connection pool in the application");
            tokio::spawn(async move {
                let _ = tcp.write_all(&err.to_bytes()).await;
            });
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let open = shared.metrics.client_connected();
            crate::frontend::serve(tcp, peer, shared).await;
            drop((open, permit));
        });
    }
}
