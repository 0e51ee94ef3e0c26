//! A client's way in: SSL/GSS negotiation, the startup packet, cancel
//! requests and authentication.

use crate::config::{AuthMethod, ClientTlsMode};
use crate::net::Stream;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::framing::{self, read_cstr, read_i32};
use crate::protocol::messages;
use crate::protocol::scram::{ScramError, ScramServer, Verifier};
use crate::protocol::startup::{self, InitialPacket, StartupRequest};
use crate::server::state::Shared;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How the handshake ended without an authenticated session.
pub enum HandshakeEnd {
    /// The connection carried a cancel request, now handled.
    Cancelled,
    /// Refused; the error goes to the client (if it can still be written).
    Refused(Stream, PgError),
    /// The connection broke or spoke nonsense before it could be answered.
    Dropped(String),
}

/// A client that passed startup and authentication.
pub struct Authenticated {
    pub stream: Stream,
    pub startup: StartupRequest,
    pub user: String,
}

/// Runs the handshake up to (not including) AuthenticationOk.
pub async fn handshake(tcp: TcpStream, shared: &Shared) -> Result<Authenticated, HandshakeEnd> {
    let mut plain = Some(tcp);
    let mut stream: Option<Stream> = None;
    loop {
        let packet = match (&mut plain, &mut stream) {
            (Some(tcp), _) => startup::read_initial(tcp).await,
            (None, Some(s)) => startup::read_initial(s).await,
            (None, None) => return Err(HandshakeEnd::Dropped("no stream".into())),
        };
        let packet = packet.map_err(|e| HandshakeEnd::Dropped(e.to_string()));
        let packet = match packet {
            Ok(p) => p,
            Err(HandshakeEnd::Dropped(reason)) => {
                // A malformed startup packet still deserves an answer.
                let s = match (plain.take(), stream.take()) {
                    (Some(tcp), _) => Stream::Plain(tcp),
                    (None, Some(s)) => s,
                    _ => return Err(HandshakeEnd::Dropped(reason)),
                };
                return Err(HandshakeEnd::Refused(
                    s,
                    PgError::fatal(sqlstate::PROTOCOL_VIOLATION, reason),
                ));
            }
            Err(e) => return Err(e),
        };
        match packet {
            InitialPacket::SslRequest => {
                let Some(mut tcp) = plain.take() else {
                    return Err(HandshakeEnd::Dropped("SSLRequest inside TLS".into()));
                };
                match &shared.tls {
                    Some(acceptor) => {
                        write_byte(&mut tcp, b'S').await?;
                        let tls = acceptor
                            .accept(tcp)
                            .await
                            .map_err(|e| HandshakeEnd::Dropped(format!("TLS handshake: {e}")))?;
                        stream = Some(Stream::ServerTls(Box::new(tls)));
                    }
                    None => {
                        write_byte(&mut tcp, b'N').await?;
                        plain = Some(tcp);
                    }
                }
            }
            InitialPacket::GssEncRequest => match &mut plain {
                Some(tcp) => write_byte(tcp, b'N').await?,
                None => return Err(HandshakeEnd::Dropped("GSSENCRequest inside TLS".into())),
            },
            InitialPacket::Cancel { pid, secret } => {
                super::cancel::handle(shared, pid, &secret).await;
                return Err(HandshakeEnd::Cancelled);
            }
            InitialPacket::Startup(req) => {
                let s = match (plain.take(), stream.take()) {
                    (Some(tcp), _) => Stream::Plain(tcp),
                    (None, Some(s)) => s,
                    _ => return Err(HandshakeEnd::Dropped("no stream".into())),
                };
                return authenticate(s, req, shared).await;
            }
        }
    }
}

async fn write_byte(tcp: &mut TcpStream, b: u8) -> Result<(), HandshakeEnd> {
    tcp.write_all(&[b])
        .await
        .map_err(|e| HandshakeEnd::Dropped(e.to_string()))
}

async fn authenticate(
    mut stream: Stream,
    req: StartupRequest,
    shared: &Shared,
) -> Result<Authenticated, HandshakeEnd> {
    if shared.config.client_tls.mode == ClientTlsMode::Require && !stream.is_tls() {
        return Err(HandshakeEnd::Refused(
            stream,
            PgError::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "this RegionGuard requires TLS: unencrypted connections are refused",
            )
            .with_hint("connect with sslmode=require (or stronger)"),
        ));
    }
    let Some(user) = req.get("user").map(str::to_string) else {
        return Err(HandshakeEnd::Refused(
            stream,
            PgError::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "no PostgreSQL user name specified in startup packet",
            ),
        ));
    };
    // Postgres answers a newer minor version or `_pq_.` options with
    // NegotiateProtocolVersion before authentication; so do we.
    let pq_options: Vec<String> = req
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    let negotiate = (req.minor > 0 || !pq_options.is_empty()).then_some(pq_options);
    let mut out = BytesMut::new();
    if let Some(unsupported) = negotiate {
        messages::negotiate_protocol_version(&mut out, unsupported);
    }
    match shared.config.auth.method {
        AuthMethod::Trust => messages::auth_ok(&mut out),
        AuthMethod::ScramSha256 => {
            let verifier = shared.users.load().get(&user).cloned();
            if let Err(e) = scram_exchange(&mut stream, &mut out, verifier, &user).await {
                return Err(match e {
                    AuthFailure::Refused(err) => HandshakeEnd::Refused(stream, err),
                    AuthFailure::Dropped(reason) => HandshakeEnd::Dropped(reason),
                });
            }
        }
    }
    if !out.is_empty() {
        stream
            .write_all(&out)
            .await
            .map_err(|e| HandshakeEnd::Dropped(e.to_string()))?;
    }
    Ok(Authenticated {
        stream,
        startup: req,
        user,
    })
}

enum AuthFailure {
    Refused(PgError),
    Dropped(String),
}

fn password_failed(user: &str) -> AuthFailure {
    AuthFailure::Refused(PgError::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}

/// SASL SCRAM-SHA-256 as Postgres runs it. Unknown users go through the
/// same exchange with a mock verifier so they look like a wrong password.
async fn scram_exchange(
    stream: &mut Stream,
    out: &mut BytesMut,
    verifier: Option<Verifier>,
    user: &str,
) -> Result<(), AuthFailure> {
    let known = verifier.is_some();
    let verifier = verifier.unwrap_or_else(|| Verifier::mock(user));
    messages::auth_sasl(out, &["SCRAM-SHA-256"]);
    flush(stream, out).await?;

    let body = read_password_message(stream).await?;
    let mut pos = 0;
    let mechanism = read_cstr(&body, &mut pos).ok_or_else(malformed)?;
    if mechanism != b"SCRAM-SHA-256" {
        return Err(AuthFailure::Refused(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        )));
    }
    let len = read_i32(&body, &mut pos).ok_or_else(malformed)?;
    let data = usize::try_from(len)
        .ok()
        .and_then(|len| body.get(pos..pos + len))
        .filter(|d| pos + d.len() == body.len())
        .ok_or_else(malformed)?;
    let (server, first) = ScramServer::start(verifier, data).map_err(scram_error)?;
    messages::auth_sasl_continue(out, first);
    flush(stream, out).await?;

    let body = read_password_message(stream).await?;
    let last = server.finish(&body).map_err(|e| match e {
        ScramError::InvalidProof => password_failed(user),
        other => scram_error(other),
    })?;
    if !known {
        return Err(password_failed(user));
    }
    messages::auth_sasl_final(out, last);
    messages::auth_ok(out);
    Ok(())
}

fn malformed() -> AuthFailure {
    AuthFailure::Refused(PgError::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        "malformed SASL message",
    ))
}

fn scram_error(e: ScramError) -> AuthFailure {
    AuthFailure::Refused(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))
}

async fn flush(stream: &mut Stream, out: &mut BytesMut) -> Result<(), AuthFailure> {
    stream
        .write_all(out)
        .await
        .map_err(|e| AuthFailure::Dropped(e.to_string()))?;
    out.clear();
    Ok(())
}

/// Reads one 'p' message body, capped like Postgres caps auth messages.
async fn read_password_message(stream: &mut Stream) -> Result<Vec<u8>, AuthFailure> {
    const MAX_AUTH_MESSAGE: usize = 10_000;
    let mut header = [0u8; framing::HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| AuthFailure::Dropped(format!("client closed during authentication: {e}")))?;
    let (tag, total) = framing::peek_header(&header, MAX_AUTH_MESSAGE)
        .map_err(|e| {
            AuthFailure::Refused(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))
        })?
        .ok_or_else(malformed)?;
    if tag != b'p' {
        return Err(AuthFailure::Refused(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("expected SASL response, got message type '{}'", tag as char),
        )));
    }
    let mut body = vec![0u8; total - framing::HEADER_LEN];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| AuthFailure::Dropped(format!("client closed during authentication: {e}")))?;
    Ok(body)
}
