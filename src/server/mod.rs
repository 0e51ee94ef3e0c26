//! The listener: accepts clients, enforces limits, runs one session task per
//! client and shuts down gracefully.

use crate::config::Config;
use std::net::SocketAddr;

/// A running proxy. Dropping it does not stop it; call [`Proxy::shutdown`].
pub struct Proxy {
    local_addr: SocketAddr,
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
}

impl Proxy {
    /// Binds `config.listen.address` (port 0 picks a free port) and starts
    /// accepting clients in the background.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let _ = config;
        todo!("proxy core")
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets open transactions finish up to
    /// `listen.shutdown_timeout_secs`, then closes every session.
    pub async fn shutdown(self) {
        todo!("proxy core")
    }
}
