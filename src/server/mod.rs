//! The listener: accepts clients, enforces the client limit, runs one
//! session task per client and shuts down gracefully.

pub mod state;
mod tls;

use crate::backend::RegionTls;
use crate::config::Config;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::scram::Verifier;
use state::{Phase, RegionRuntime, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// A running proxy. Dropping it does not stop it; call [`Proxy::shutdown`].
pub struct Proxy {
    local_addr: SocketAddr,
    phase: watch::Sender<Phase>,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
    metrics: Option<crate::metrics::Endpoint>,
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
}

impl Proxy {
    /// Binds `config.listen.address` (port 0 picks a free port) and starts
    /// accepting clients in the background.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let tls = tls::acceptor(&config.client_tls).map_err(StartError::Tls)?;
        let mut regions = std::collections::BTreeMap::new();
        for (name, region) in &config.regions {
            let rt = RegionTls::new(name, region).map_err(StartError::BackendTls)?;
            regions.insert(
                std::sync::Arc::from(name.as_str()),
                RegionRuntime {
                    config: region.clone(),
                    tls: rt,
                },
            );
        }
        let mut users = std::collections::HashMap::new();
        for u in &config.auth.users {
            let v = Verifier::parse(&u.verifier)
                .map_err(|e| StartError::Users(format!("{}: {e}", u.name)))?;
            users.insert(u.name.clone(), v);
        }
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
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        let metrics = crate::metrics::Metrics::new(&config)
            .map_err(|e| StartError::Metrics(e.to_string()))?;
        let directory = Arc::new(
            crate::routing::directory::Directory::new(&config).with_metrics(metrics.directory()),
        );
        directory.spawn_refresher();
        let shared = Arc::new(Shared {
            clients: Arc::new(Semaphore::new(config.listen.max_clients)),
            tenancy: Shared::tenancy_of(&config),
            analysis: crate::sql::AnalysisCache::new(10_000),
            directory,
            config,
            regions,
            users,
            tls,
            cancel: dashmap::DashMap::new(),
            phase: phase_rx,
            metrics,
        });
        let metrics = match &shared.config.metrics.address {
            Some(address) => Some(
                crate::metrics::Endpoint::start(address, &shared)
                    .await
                    .map_err(|e| StartError::Metrics(format!("cannot listen on {address}: {e}")))?,
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
        })
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
        let max = self.shared.config.listen.max_clients as u32;
        let timeout = Duration::from_secs(self.shared.config.listen.shutdown_timeout_secs);
        let all_done = || self.shared.clients.acquire_many(max);
        if tokio::time::timeout(timeout, all_done()).await.is_err() {
            tracing::warn!("shutdown timeout reached: closing remaining sessions");
            let _ = self.phase.send(Phase::Closing);
            let _ = tokio::time::timeout(Duration::from_secs(5), all_done()).await;
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
