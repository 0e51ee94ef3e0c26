//! One client session: handshake, startup, then the request and response
//! pumps (ADR 3 and 4).

mod backends;
mod cancel;
mod copy_in;
mod copy_out;
mod decrypt;
pub mod encrypt;
mod expect;
mod fanout;
mod handback;
mod handshake;
mod plan_queue;
mod region_map;
mod requests;
mod responses;
mod route;
mod setup;
mod tenant_value;
mod woken;

use crate::backend::{self, ConnectError};
use crate::metrics::ClientRefusal;
use crate::net::Stream;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::messages;
use crate::server::state::{CancelEntry, Shared};
use crate::types::SessionFormat;
use bytes::BytesMut;
use handshake::{Authenticated, HandshakeEnd};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// The hasher of a session's own maps keyed by names its client picks
/// (prepared statements, portals): FxHash, the one rustc uses. SipHash costs more
/// than the rest of a lookup for such short keys, and its protection
/// against colliding keys buys nothing here: a client choosing colliding
/// names slows down only its own session.
type NameHasher = rustc_hash::FxBuildHasher;

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
            shared.metrics.client_refused(ClientRefusal::StartupTimeout);
            return;
        }
        Ok(Err(HandshakeEnd::Cancelled)) => return,
        Ok(Err(HandshakeEnd::Dropped(reason))) => {
            tracing::info!(%reason, "connection dropped during startup");
            return;
        }
        Ok(Err(HandshakeEnd::Refused(stream, err))) => {
            tracing::info!(code = err.code, message = %err.message, "connection refused");
            shared
                .metrics
                .client_refused(ClientRefusal::from_sqlstate(err.code));
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
            shared
                .metrics
                .client_refused(ClientRefusal::from_sqlstate(err.code));
            return refuse(stream, &err.to_bytes()).await;
        }
    };
    tracing::Span::current().record("region", setup.region.as_str());
    let Some(region) = shared.region(&setup.region) else {
        return;
    };
    let permit = match &region.active {
        Some(active) => match backends::acquire(&setup.region, active, &shared).await {
            Ok(p) => Some(p),
            Err(err) => {
                tracing::info!(code = err.code, message = %err.message, "session refused");
                shared
                    .metrics
                    .client_refused(ClientRefusal::from_sqlstate(err.code));
                let err = PgError {
                    severity: crate::protocol::error::Severity::Fatal,
                    ..err
                };
                return refuse(stream, &err.to_bytes()).await;
            }
        },
        None => None,
    };
    let (conn, reused) =
        match backends::primary_session(&setup.region, region, &setup.backend_params).await {
            Ok(c) => c,
            Err(ConnectError::Refused { error_response, .. }) => {
                shared.metrics.client_refused(ClientRefusal::Other);
                return refuse(stream, &error_response).await;
            }
            Err(e @ ConnectError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "backend connection failed");
                shared.metrics.connect_failed(&setup.region, &e);
                shared
                    .metrics
                    .client_refused(ClientRefusal::RegionUnavailable);
                let err = PgError::fatal(sqlstate::CONNECTION_FAILURE, e.to_string()).with_hint(
                    "the region's Postgres servers are down or unreachable; retry later",
                );
                return refuse(stream, &err.to_bytes()).await;
            }
        };

    let (pid, secret) = register_cancel(&shared, conn.cancel.clone());
    let mut out = BytesMut::with_capacity(512);
    for (name, value) in conn.params.iter() {
        messages::parameter_status(&mut out, name, value);
    }
    messages::backend_key_data(&mut out, pid, secret);
    messages::ready_for_query(&mut out, conn.status);

    let mut format = SessionFormat::default();
    // extra_float_digits and bytea_output are never reported back in
    // ParameterStatus: take them from what the client asked for.
    for (name, value) in setup.backend_params.iter().chain(conn.params.iter()) {
        let _ = format.set(name, value);
    }
    let format = Arc::new(std::sync::Mutex::new(format));
    let (client_rd, mut client_wr) = stream.split();
    if client_wr.write_all(&out).await.is_err() {
        shared.cancel.remove(&pid);
        return;
    }
    tracing::debug!(backend = %conn.addr, "session started");
    let region: Arc<str> = match shared.regions.get_key_value(setup.region.as_str()) {
        Some((name, _)) => name.clone(),
        None => Arc::from(setup.region.as_str()),
    };
    let between_transactions =
        shared.config.backend_pool.mode == crate::config::PoolMode::Transaction;
    let (expect_tx, expect_rx) = plan_queue::plan_queue();
    let (gone_tx, gone_rx) = tokio::sync::watch::channel(false);
    let stats = shared.metrics.backend_connected(
        &region,
        conn.host_index,
        &conn.failed_hosts,
        conn.failed_over,
        reused,
    );
    let startup: Arc<[(String, String)]> = setup.backend_params.into();
    let origin = backend::pool::Origin::of(&conn, &startup);
    let (backend_rd, backend_wr) = conn.stream.split();
    let bshared = Arc::new(expect::BackendShared::new(stats));
    let _ = expect_tx.send(expect::Expect::Attach {
        region: region.clone(),
        addr: conn.addr.clone(),
        reader: backend_rd,
        shared: bshared.clone(),
        buffers: None,
    });
    let handback = Arc::new(handback::Handback::default());
    let mut backends = backends::Backends::new(startup, pid, handback.clone());
    backends.adopt(region.clone(), backend_wr, bshared, origin, permit);
    let tenant = requests::TenantSetting {
        startup: setup.tenant,
        ..Default::default()
    };
    let crypto = shared
        .keyring
        .is_some()
        .then(|| responses::AnswerCrypto::new(shared.clone(), format.clone()));
    let requests = requests::Requests::new(
        shared.clone(),
        expect_tx,
        gone_tx,
        backends,
        tenant,
        region,
        format,
    );
    let responses = responses::Responses::new(
        client_wr,
        conn.status,
        shared.phase.clone(),
        gone_rx,
        crypto,
    )
    .counting_sent(shared.metrics.client_sent_counter())
    .handing_back(handback.clone())
    .pooling_between_transactions(between_transactions.then(|| (shared.clone(), pid)));
    let req = requests.run(client_rd);
    let resp = responses.run(expect_rx);
    tokio::pin!(req, resp);
    let mut req_done = false;
    let req_woken = woken::Woken::new();
    // The request side is polled only when something it waits on woke the
    // task (a backend's answer wakes only the response side), and always
    // before the response side: what it queues for the response side is
    // seen by it in the same poll, so the queue needs no wake-up (which
    // would cost the task a second poll and, on the multi-threaded
    // runtime, an unpark of another worker) — see `Responses::idle`.
    let end = std::future::poll_fn(|cx| {
        if !req_done
            && req_woken.take(cx)
            && Future::poll(req.as_mut(), &mut req_woken.context()).is_ready()
        {
            req_done = true;
        }
        Future::poll(resp.as_mut(), cx)
    })
    .await;
    if matches!(end, responses::SessionEnd::ClientError(_)) && !req_done {
        // Let the request side drain the client briefly (it stops by itself).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), &mut req).await;
    }
    shared.cancel.remove(&pid);
    let keep = matches!(end, responses::SessionEnd::ClientGone)
        && *shared.phase.borrow() == crate::server::state::Phase::Running;
    handback.release(&shared, keep).await;
    match end {
        responses::SessionEnd::ClientGone => tracing::debug!("session ended by the client"),
        responses::SessionEnd::ClientWriteFailed => tracing::debug!("client connection broke"),
        responses::SessionEnd::Shutdown => tracing::debug!("session closed for shutdown"),
        responses::SessionEnd::ClientError(message) => {
            tracing::info!(%message, "session closed: client protocol error")
        }
        responses::SessionEnd::BackendLost { region, reason } => {
            tracing::warn!(%region, %reason, "session closed: backend connection lost")
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
