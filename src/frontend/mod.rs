//! One client session: handshake, backend session, relay.

mod cancel;
mod expect;
mod responses;
mod handshake;
mod relay;
mod setup;

use crate::backend::{self, ConnectError};
use crate::net::Stream;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::messages;
use crate::server::state::{CancelEntry, Shared};
use bytes::BytesMut;
use handshake::{Authenticated, HandshakeEnd};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// Serves one client connection until it ends. Never panics on client or
/// backend input; every failure ends this connection only.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "session",
        id,
        peer = %peer,
        user = tracing::field::Empty,
        region = tracing::field::Empty
    );
    run(tcp, shared).instrument(span).await;
}

async fn run(tcp: TcpStream, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let timeout = Duration::from_secs(shared.config.listen.startup_timeout_secs);
    let auth = match tokio::time::timeout(timeout, handshake::handshake(tcp, &shared)).await {
        Err(_) => {
            tracing::info!("client did not finish startup in time");
            return;
        }
        Ok(Err(HandshakeEnd::Cancelled)) => return,
        Ok(Err(HandshakeEnd::Dropped(reason))) => {
            tracing::info!(%reason, "connection dropped during startup");
            return;
        }
        Ok(Err(HandshakeEnd::Refused(stream, err))) => {
            tracing::info!(code = err.code, message = %err.message, "connection refused");
            refuse(stream, &err.to_bytes()).await;
            return;
        }
        Ok(Ok(auth)) => auth,
    };
    tracing::Span::current().record("user", auth.user.as_str());
    start_session(auth, shared).await;
}

async fn refuse(mut stream: Stream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
}

async fn start_session(auth: Authenticated, shared: Arc<Shared>) {
    let Authenticated {
        stream, startup, ..
    } = auth;
    let setup = match setup::from_startup(&startup, &shared) {
        Ok(s) => s,
        Err(err) => {
            tracing::info!(code = err.code, message = %err.message, "session refused");
            return refuse(stream, &err.to_bytes()).await;
        }
    };
    tracing::Span::current().record("region", setup.region.as_str());
    let Some(region) = shared.region(&setup.region) else {
        return;
    };
    let conn = match backend::connect(
        &setup.region,
        &region.config,
        &region.tls,
        &setup.backend_params,
    )
    .await
    {
        Ok(conn) => conn,
        Err(ConnectError::Refused { error_response, .. }) => {
            return refuse(stream, &error_response).await;
        }
        Err(e @ ConnectError::Unavailable { .. }) => {
            tracing::warn!(error = %e, "backend connection failed");
            let err = PgError::fatal(sqlstate::CONNECTION_FAILURE, e.to_string())
                .with_hint("the region's Postgres servers are down or unreachable; retry later");
            return refuse(stream, &err.to_bytes()).await;
        }
    };

    let (pid, secret) = register_cancel(&shared, conn.cancel.clone());
    let mut out = BytesMut::with_capacity(512);
    for (name, value) in &conn.params {
        messages::parameter_status(&mut out, name, value);
    }
    messages::backend_key_data(&mut out, pid, secret);
    messages::ready_for_query(&mut out, conn.status);

    let (client_rd, mut client_wr) = stream.split();
    if client_wr.write_all(&out).await.is_err() {
        shared.cancel.remove(&pid);
        return;
    }
    tracing::debug!(backend = %conn.addr, "session started");
    let (backend_rd, backend_wr) = conn.stream.split();
    let flow = relay::Flow::new(conn.status);
    let (ctl_tx, ctl_rx) = tokio::sync::mpsc::channel(4);
    let client = relay::client_pump(
        client_rd,
        backend_wr,
        &flow,
        ctl_tx,
        shared.config.listen.max_message_bytes,
    );
    let server = relay::server_pump(
        backend_rd,
        client_wr,
        &flow,
        ctl_rx,
        shared.phase.clone(),
        relay::BackendLabel {
            region: &conn.region,
            addr: &conn.addr,
        },
    );
    tokio::pin!(client, server);
    let mut client_done = false;
    let end = loop {
        tokio::select! {
            _ = &mut client, if !client_done => client_done = true,
            end = &mut server => break end,
        }
    };
    shared.cancel.remove(&pid);
    match end {
        relay::RelayEnd::ClientGone => tracing::debug!("session ended by the client"),
        relay::RelayEnd::ClientWriteFailed => tracing::debug!("client connection broke"),
        relay::RelayEnd::Shutdown => tracing::debug!("session closed for shutdown"),
        relay::RelayEnd::ClientError(message) => {
            tracing::info!(%message, "session closed: client protocol error")
        }
        relay::RelayEnd::BackendLost(reason) => {
            tracing::warn!(%reason, backend = %conn.addr, "session closed: backend connection lost")
        }
    }
}

/// Hands the client a process id and secret of the proxy's own, mapped to
/// the backend session that a cancel must reach.
fn register_cancel(shared: &Shared, target: backend::CancelTarget) -> (i32, i32) {
    loop {
        let pid = (rand::random::<u32>() >> 1) as i32;
        if pid == 0 {
            continue;
        }
        if let dashmap::Entry::Vacant(slot) = shared.cancel.entry(pid) {
            let secret = rand::random::<i32>();
            slot.insert(CancelEntry {
                secret,
                targets: vec![target],
            });
            return (pid, secret);
        }
    }
}
