//! The HTTP endpoint at `metrics.address`: `/metrics` (Prometheus text
//! format), `/healthz` (the process is alive) and `/readyz` (ready for
//! clients: listening, config loaded, every region reachable).
//!
//! hyper's HTTP/1 server does the protocol; this file only routes. It runs
//! on the proxy's runtime and never touches sessions, so a slow scraper
//! cannot hold up statements.

use super::health::{self, Health};
use super::series::Series;
use crate::server::state::{Phase, Shared};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A scraper that sends no complete request head in this long is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The running endpoint and its health checker.
pub struct Endpoint {
    local_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct State {
    series: Option<Arc<Series>>,
    health: Arc<Health>,
    phase: watch::Receiver<Phase>,
}

impl Endpoint {
    /// Binds `address` and serves it; starts the region health checks.
    pub async fn start(address: &str, shared: &Arc<Shared>) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(address).await?;
        let local_addr = listener.local_addr()?;
        let health = Arc::new(Health::new(&shared.config));
        let series = shared.metrics.series();
        let interval = Duration::from_secs(shared.config.metrics.health_interval_secs.max(1));
        let checker = health::spawn_checker(
            health.clone(),
            Arc::downgrade(shared),
            series.clone(),
            interval,
        );
        let state = Arc::new(State {
            series,
            health,
            phase: shared.phase.clone(),
        });
        let server = tokio::spawn(accept_loop(listener, state));
        tracing::info!(address = %local_addr, "metrics and health endpoint listening");
        Ok(Endpoint {
            local_addr,
            tasks: vec![checker, server],
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and checking.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = route(&state, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn route(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => metrics(state),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => ready(state),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

fn metrics(state: &State) -> Response<Full<Bytes>> {
    let Some(series) = &state.series else {
        return text(StatusCode::NOT_FOUND, "metrics are off\n");
    };
    super::crypto::refresh_ages(series);
    let mut body = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&series.registry.gather(), &mut body) {
        Ok(()) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(prometheus::TEXT_FORMAT),
            );
            r
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode metrics: {e}\n"),
        ),
    }
}

/// Ready: accepting clients (not draining for shutdown), config loaded
/// (it is, or the proxy would not run) and every region reachable.
fn ready(state: &State) -> Response<Full<Bytes>> {
    let listening = *state.phase.borrow() == Phase::Running;
    let regions_up = state.health.all_regions_up();
    let ready = listening && regions_up;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "listening": listening,
        "config": "loaded",
        "regions": state.health.to_json(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
