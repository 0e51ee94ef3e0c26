//! Opening an authenticated session on one of a region's Postgres servers.

use super::tls;
use crate::config::{BackendTlsMode, Host, Region};
use crate::net::Stream;
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where a cancel request for a backend session must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
}

/// A ready backend session (after its first ReadyForQuery).
pub struct BackendConn {
    pub stream: Stream,
    pub region: String,
    /// `host:port`, for errors and logs.
    pub addr: String,
    pub cancel: CancelTarget,
    /// ParameterStatus values the server reported, in order (shared with
    /// the pool's record of the session: cloned per transaction in
    /// transaction mode).
    pub params: Arc<[(String, String)]>,
    /// Transaction status of the first ReadyForQuery.
    pub status: u8,
    /// Which of the region's hosts (index in the config) serves the session.
    pub host_index: usize,
    /// Hosts tried first that could not be reached or logged in to
    /// (standbys are not failures), for the metrics.
    pub failed_hosts: Vec<usize>,
    /// This session's host became the region's primary: a failover.
    pub failed_over: bool,
    /// Buffers of a pooled session's last user, to reuse (transaction
    /// mode hands sessions over per transaction; see `pool::Buffers`).
    pub buffers: Option<crate::backend::pool::Buffers>,
}

/// Why no backend session could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No host of the region could be reached or authenticated against.
    #[error("region {region} is unavailable: {reason}")]
    Unavailable {
        region: String,
        reason: String,
        /// Hosts that could not be reached or logged in to (standbys are
        /// not failures), for the metrics.
        failed_hosts: Vec<usize>,
    },
    /// The server accepted the login but refused the session (for example
    /// an invalid startup parameter). The raw ErrorResponse is relayed to
    /// the client unchanged.
    #[error("region {region} refused the session")]
    Refused {
        region: String,
        error_response: BytesMut,
    },
}

impl ConnectError {
    /// The server had no connection slot left (SQLSTATE 53300: too many
    /// clients, or the role's connection limit).
    pub fn is_out_of_slots(&self) -> bool {
        match self {
            ConnectError::Unavailable { reason, .. } => reason.contains("(SQLSTATE 53300)"),
            ConnectError::Refused { error_response, .. } => {
                error_response
                    .get(crate::protocol::framing::HEADER_LEN..)
                    .and_then(crate::protocol::error::error_code)
                    == Some(b"53300")
            }
        }
    }
}

/// TLS settings of a region, built once at start.
#[derive(Clone)]
pub struct RegionTls {
    pub mode: BackendTlsMode,
    pub config: Option<Arc<rustls::ClientConfig>>,
}

impl RegionTls {
    pub fn new(region_name: &str, region: &Region) -> Result<Self, String> {
        Ok(RegionTls {
            mode: region.tls,
            config: tls::client_config(region_name, region)?,
        })
    }
}

/// Which host of a region accepted writes last: sessions try it first.
/// Shared by every session of the proxy.
#[derive(Debug, Default)]
pub struct Primary(AtomicUsize);

impl Primary {
    /// Index of the host in the region's `hosts`.
    pub fn index(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Connects to the region's primary — the first host, starting with the
/// one that was primary last time, that accepts the login and is not a hot
/// standby (`in_hot_standby`, reported by Postgres 14 and later) — with
/// `params` as the session's startup parameters (besides user and
/// database). The hosts are the region's own, so a failover never leaves
/// its residency zone: when the primary fails, the next session lands on
/// whichever host has been promoted.
pub async fn connect(
    region_name: &str,
    region: &Region,
    tls: &RegionTls,
    primary: &Primary,
    params: &[(String, String)],
) -> Result<BackendConn, ConnectError> {
    let mut reasons = Vec::new();
    let mut failed_hosts = Vec::new();
    let n = region.hosts.len();
    let first = primary.index() % n.max(1);
    for i in (0..n).map(|k| (first + k) % n) {
        let host = &region.hosts[i];
        let addr = format!("{}:{}", host.host, host.port);
        match try_host(region_name, region, host, tls, params, Role::Primary).await {
            Ok(conn) => {
                let failed_over = primary.0.swap(i, Ordering::Relaxed) != i;
                if failed_over {
                    tracing::info!(region = region_name, host = %addr, "region primary is now this host");
                }
                return Ok(BackendConn {
                    host_index: i,
                    failed_hosts,
                    failed_over,
                    ..conn
                });
            }
            Err(HostError::WrongRole) => reasons.push(format!("{addr}: a read-only standby")),
            Err(HostError::Refused(error_response)) => {
                return Err(ConnectError::Refused {
                    region: region_name.to_string(),
                    error_response,
                })
            }
            Err(HostError::Failed(reason)) => {
                reasons.push(format!("{addr}: {reason}"));
                failed_hosts.push(i);
            }
        }
    }
    Err(ConnectError::Unavailable {
        region: region_name.to_string(),
        reason: reasons.join("; "),
        failed_hosts,
    })
}

/// Connects to a hot standby of the region (a host reporting
/// `in_hot_standby = on`) for reads that may lag the primary. Only the
/// region's own hosts are tried, the last primary last (it is the least
/// likely to be a standby), so a read never leaves the residency zone.
/// The caller falls back to the primary on any error.
pub async fn connect_standby(
    region_name: &str,
    region: &Region,
    tls: &RegionTls,
    primary: &Primary,
    params: &[(String, String)],
) -> Result<BackendConn, ConnectError> {
    let mut reasons = Vec::new();
    let n = region.hosts.len();
    let last = primary.index() % n.max(1);
    for i in (1..=n).map(|k| (last + k) % n) {
        let host = &region.hosts[i];
        let addr = format!("{}:{}", host.host, host.port);
        match try_host(region_name, region, host, tls, params, Role::Standby).await {
            Ok(conn) => {
                return Ok(BackendConn {
                    host_index: i,
                    ..conn
                })
            }
            Err(HostError::WrongRole) => reasons.push(format!("{addr}: not a hot standby")),
            Err(HostError::Refused(_)) => reasons.push(format!("{addr}: refused the session")),
            Err(HostError::Failed(reason)) => reasons.push(format!("{addr}: {reason}")),
        }
    }
    Err(ConnectError::Unavailable {
        region: region_name.to_string(),
        reason: reasons.join("; "),
        failed_hosts: Vec::new(),
    })
}

/// Logs in to one host of a region whatever its role, as a health check,
/// and ends the session cleanly: what the host serves as, or why it cannot
/// serve.
pub async fn probe_host(
    region_name: &str,
    region: &Region,
    host: &Host,
    tls: &RegionTls,
    params: &[(String, String)],
) -> Result<HostRole, String> {
    match try_host(region_name, region, host, tls, params, Role::Any).await {
        Ok(mut conn) => {
            let standby = conn
                .params
                .iter()
                .any(|(k, v)| k == "in_hot_standby" && v == "on");
            // Terminate: a clean goodbye instead of an EOF in the server log.
            let _ = conn.stream.write_all(&[b'X', 0, 0, 0, 4]).await;
            let _ = conn.stream.shutdown().await;
            Ok(if standby {
                HostRole::Standby
            } else {
                HostRole::Primary
            })
        }
        Err(HostError::Refused(_)) => Err("the server refused the session after login".into()),
        Err(HostError::Failed(reason)) => Err(reason),
        Err(HostError::WrongRole) => Err("unexpected server role".into()),
    }
}

/// One host, within the region's connect timeout (a timeout is a failure
/// like any other).
async fn try_host(
    region_name: &str,
    region: &Region,
    host: &Host,
    tls: &RegionTls,
    params: &[(String, String)],
    role: Role,
) -> Result<BackendConn, HostError> {
    let timeout = Duration::from_secs(region.connect_timeout_secs);
    match tokio::time::timeout(timeout, connect_host(region_name, host, tls, params, role)).await {
        Ok(attempt) => attempt,
        Err(_) => Err(HostError::Failed(format!(
            "timed out after {}s",
            timeout.as_secs()
        ))),
    }
}

/// What a host serves as, seen at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRole {
    /// Accepts writes.
    Primary,
    /// A hot standby (`in_hot_standby = on`): reads, and a failover target.
    Standby,
}

/// Which kind of server a connection needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Accepts writes: not a hot standby.
    Primary,
    /// A hot standby, for reads only.
    Standby,
    /// Either (health checks).
    Any,
}

enum HostError {
    Failed(String),
    Refused(BytesMut),
    /// The server is not of the role asked for (a hot standby when the
    /// primary is needed, or the reverse).
    WrongRole,
}

impl From<std::io::Error> for HostError {
    fn from(e: std::io::Error) -> Self {
        HostError::Failed(e.to_string())
    }
}

async fn connect_host(
    region_name: &str,
    host: &Host,
    tls: &RegionTls,
    params: &[(String, String)],
    role: Role,
) -> Result<BackendConn, HostError> {
    let tcp = TcpStream::connect((host.host.as_str(), host.port)).await?;
    tcp.set_nodelay(true)?;
    let mut stream = negotiate_tls(tcp, host, tls).await?;

    let mut buf = BytesMut::with_capacity(512);
    let mut startup: Vec<(&str, &str)> = vec![("user", &host.user), ("database", &host.dbname)];
    startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(startup, &mut buf)?;
    stream.write_all(&buf).await?;
    buf.clear();

    let mut scram: Option<ScramSha256> = None;
    let mut authenticated = false;
    let mut params_out = Vec::new();
    let mut key = None;
    let mut inbuf = BytesMut::with_capacity(4096);
    loop {
        let raw = read_message(&mut stream, &mut inbuf).await?;
        let mut parse_buf = raw.clone();
        let msg = Message::parse(&mut parse_buf)?
            .ok_or_else(|| HostError::Failed("truncated message".into()))?;
        match msg {
            Message::AuthenticationOk => authenticated = true,
            Message::AuthenticationCleartextPassword => {
                let pw = password(host, region_name)?;
                frontend::password_message(pw.as_bytes(), &mut buf)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let pw = password(host, region_name)?;
                let hash = postgres_protocol::authentication::md5_hash(
                    host.user.as_bytes(),
                    pw.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut buf)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut has_scram = false;
                while let Some(m) = fallible_next(&mut mechanisms)? {
                    has_scram |= m == SCRAM_SHA_256;
                }
                if !has_scram {
                    return Err(HostError::Failed("server offers no SCRAM-SHA-256".into()));
                }
                let pw = password(host, region_name)?;
                let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut buf)?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| HostError::Failed("unexpected SASL continue".into()))?;
                s.update(body.data())?;
                frontend::sasl_response(s.message(), &mut buf)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| HostError::Failed("unexpected SASL final".into()))?;
                s.finish(body.data())
                    .map_err(|e| HostError::Failed(format!("server signature invalid: {e}")))?;
            }
            Message::ParameterStatus(body) => {
                params_out.push((body.name()?.to_string(), body.value()?.to_string()));
            }
            Message::BackendKeyData(body) => key = Some((body.process_id(), body.secret_key())),
            Message::NoticeResponse(_) => {}
            Message::ErrorResponse(body) => {
                if authenticated {
                    return Err(HostError::Refused(raw));
                }
                return Err(HostError::Failed(error_text(&body)));
            }
            Message::ReadyForQuery(body) => {
                let standby = params_out
                    .iter()
                    .any(|(k, v)| k == "in_hot_standby" && v == "on");
                if role != Role::Any && standby != (role == Role::Standby) {
                    return Err(HostError::WrongRole);
                }
                let (pid, secret) =
                    key.ok_or_else(|| HostError::Failed("server sent no BackendKeyData".into()))?;
                return Ok(BackendConn {
                    stream,
                    region: region_name.to_string(),
                    addr: format!("{}:{}", host.host, host.port),
                    cancel: CancelTarget {
                        host: host.host.clone(),
                        port: host.port,
                        pid,
                        secret,
                    },
                    params: params_out.into(),
                    status: body.status(),
                    host_index: 0,
                    failed_hosts: Vec::new(),
                    failed_over: false,
                    buffers: None,
                });
            }
            _ => {
                return Err(HostError::Failed(format!(
                    "unexpected message '{}' during startup",
                    raw[0] as char
                )))
            }
        }
        if !buf.is_empty() {
            stream.write_all(&buf).await?;
            buf.clear();
        }
    }
}

fn password<'a>(host: &'a Host, region: &str) -> Result<&'a str, HostError> {
    host.password.as_deref().ok_or_else(|| {
        HostError::Failed(format!(
            "server asks for a password but regions.{region} host {} has none configured",
            host.host
        ))
    })
}

fn fallible_next<'a>(
    it: &mut postgres_protocol::message::backend::SaslMechanisms<'a>,
) -> std::io::Result<Option<&'a str>> {
    use fallible_iterator::FallibleIterator;
    it.next()
}

fn error_text(body: &postgres_protocol::message::backend::ErrorResponseBody) -> String {
    use fallible_iterator::FallibleIterator;
    let mut fields = body.fields();
    let mut code = String::new();
    let mut message = String::new();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    format!("{message} (SQLSTATE {code})")
}

/// Reads exactly one message (header and body) into a fresh buffer.
async fn read_message(stream: &mut Stream, inbuf: &mut BytesMut) -> Result<BytesMut, HostError> {
    const MAX_STARTUP_MESSAGE: usize = 1 << 20;
    loop {
        if let Some((_, total)) = crate::protocol::framing::peek_header(inbuf, MAX_STARTUP_MESSAGE)
            .map_err(|e| HostError::Failed(e.to_string()))?
        {
            if inbuf.len() >= total {
                return Ok(inbuf.split_to(total));
            }
        }
        if stream.read_buf(inbuf).await? == 0 {
            return Err(HostError::Failed("server closed the connection".into()));
        }
    }
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    host: &Host,
    tls: &RegionTls,
) -> Result<Stream, HostError> {
    let Some(config) = &tls.config else {
        return Ok(Stream::Plain(tcp));
    };
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req).await?;
    let answer = tcp.read_u8().await?;
    if answer != b'S' {
        if tls.mode == BackendTlsMode::Prefer {
            return Ok(Stream::Plain(tcp));
        }
        return Err(HostError::Failed("server does not support TLS".into()));
    }
    let name = rustls::pki_types::ServerName::try_from(host.host.clone())
        .map_err(|e| HostError::Failed(format!("invalid TLS server name: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| HostError::Failed(format!("TLS handshake: {e}")))?;
    Ok(Stream::ClientTls(Box::new(stream)))
}

/// Sends a CancelRequest for `target` on a new connection. Postgres handles
/// cancels before authentication, so no TLS or credentials are needed.
pub async fn send_cancel(target: &CancelTarget) -> std::io::Result<()> {
    let mut tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    let mut buf = BytesMut::new();
    frontend::cancel_request(target.pid, target.secret, &mut buf);
    tcp.write_all(&buf).await?;
    // Postgres closes the connection after reading the request.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut sink)).await;
    Ok(())
}
