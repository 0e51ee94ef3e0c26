//! Control-plane connections to a region's Postgres: tokio-postgres clients
//! for the proxy's own queries (the key table now; catalog lookups and
//! health checks later), as opposed to the raw relayed sessions of
//! [`super::connect`].
//!
//! Hosts are tried in order with the region's credentials, TLS mode
//! (libpq's meanings, through the same rustls configs as relayed sessions)
//! and `connect_timeout_secs` per host.

use super::tls;
use crate::config::{BackendTlsMode, Region};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};
use tokio_postgres_rustls::MakeRustlsConnect;

/// `application_name` of control-plane sessions, so operators can tell
/// them from relayed client sessions in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "regionguard-control";

/// Opens control-plane clients to one region.
#[derive(Clone)]
pub struct ControlConnector {
    region_name: String,
    region: Region,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// No host of the region accepted a control connection.
#[derive(Debug, thiserror::Error)]
#[error("region {region} is unavailable: {reason}")]
pub struct ControlError {
    pub region: String,
    /// Each host tried and why it failed. Never a password.
    pub reason: String,
}

impl ControlConnector {
    /// Prepares connections to `region` (builds its TLS config once).
    pub fn new(region_name: &str, region: &Region) -> Result<ControlConnector, String> {
        Ok(ControlConnector {
            region_name: region_name.to_string(),
            region: region.clone(),
            tls: tls::client_config(region_name, region)?,
        })
    }

    pub fn region_name(&self) -> &str {
        &self.region_name
    }

    /// Connects to the first host that accepts. The connection runs on a
    /// spawned task until the client is dropped or the server goes away
    /// (`Client::is_closed` then says so).
    pub async fn connect(&self) -> Result<Client, ControlError> {
        self.connect_inner(None).await
    }

    /// [`ControlConnector::connect`], forwarding the connection's
    /// notifications (LISTEN/NOTIFY) to the returned receiver, which closes
    /// when the connection ends.
    pub async fn connect_listening(
        &self,
    ) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), ControlError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = self.connect_inner(Some(tx)).await?;
        Ok((client, rx))
    }

    async fn connect_inner(
        &self,
        notify: Option<mpsc::UnboundedSender<Notification>>,
    ) -> Result<Client, ControlError> {
        let timeout = Duration::from_secs(self.region.connect_timeout_secs.max(1));
        let mut reasons = Vec::new();
        for host in &self.region.hosts {
            let addr = format!("{}:{}", host.host, host.port);
            let mut config = tokio_postgres::Config::new();
            config
                .host(&host.host)
                .port(host.port)
                .dbname(&host.dbname)
                .user(&host.user)
                .application_name(APPLICATION_NAME)
                // Key-table writes need the primary, not a standby listed first.
                .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite)
                .connect_timeout(timeout)
                .ssl_mode(match self.region.tls {
                    BackendTlsMode::Disable => SslMode::Disable,
                    BackendTlsMode::Prefer => SslMode::Prefer,
                    BackendTlsMode::Require | BackendTlsMode::VerifyFull => SslMode::Require,
                });
            if let Some(pw) = &host.password {
                config.password(pw);
            }
            match tokio::time::timeout(timeout, self.connect_host(&config, notify.clone())).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => reasons.push(format!("{addr}: {e}")),
                Err(_) => reasons.push(format!("{addr}: timed out after {}s", timeout.as_secs())),
            }
        }
        if reasons.is_empty() {
            reasons.push("no hosts configured".into());
        }
        Err(ControlError {
            region: self.region_name.clone(),
            reason: reasons.join("; "),
        })
    }

    async fn connect_host(
        &self,
        config: &tokio_postgres::Config,
        notify: Option<mpsc::UnboundedSender<Notification>>,
    ) -> Result<Client, tokio_postgres::Error> {
        let region = self.region_name.clone();
        match &self.tls {
            Some(tls) => {
                let (client, conn) = config
                    .connect(MakeRustlsConnect::new((**tls).clone()))
                    .await?;
                tokio::spawn(drive(conn, region, notify));
                Ok(client)
            }
            None => {
                let (client, conn) = config.connect(NoTls).await?;
                tokio::spawn(drive(conn, region, notify));
                Ok(client)
            }
        }
    }
}

impl std::fmt::Debug for ControlConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConnector")
            .field("region", &self.region_name)
            .field("tls", &self.region.tls)
            .finish_non_exhaustive()
    }
}

/// Runs a control connection until it ends, forwarding notifications when
/// asked to (dropping the sender then closes the receiver).
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    region: String,
    notify: Option<mpsc::UnboundedSender<Notification>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(tx) = notify else {
        if let Err(e) = conn.await {
            tracing::debug!(region, error = %e, "control connection ended");
        }
        return;
    };
    loop {
        match futures_util::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                let _ = tx.send(n);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(region, error = %e, "control connection ended");
                return;
            }
            None => return,
        }
    }
}
