//! Moving messages between a client and its backend session.
//!
//! Two pumps run concurrently, one per direction, so neither side can stall
//! the other (a client pipelining many queries while the backend streams
//! results would deadlock a single loop that blocks on writes). Each pump
//! reads whatever is available, frames the complete messages, looks only at
//! the type bytes it must, and forwards all complete messages with a single
//! write: syscalls are the cost of a proxy, so nothing is flushed per
//! message and untouched messages are never re-encoded.

use super::setup::{is_utf8_encoding, non_utf8_encoding};
use crate::net::{ReadHalf, WriteHalf};
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::framing::{self, read_cstr, Frame};
use crate::server::state::Phase;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Bytes requested from the kernel per read.
const READ_CHUNK: usize = 64 * 1024;
/// Backend messages are bounded by Postgres itself (1 GiB fields); this cap
/// only guards against a corrupt stream.
const MAX_BACKEND_MESSAGE: usize = i32::MAX as usize;

/// What the client pump tells the server pump, which owns the client's
/// write half and so writes everything the client sees.
pub enum Control {
    /// The client closed or sent Terminate.
    ClientGone,
    /// The client broke the protocol: report and close.
    Fatal(PgError),
}

/// Request/response bookkeeping both pumps see.
pub struct Flow {
    /// Messages sent that each end in a ReadyForQuery (Query, Sync,
    /// FunctionCall) minus ReadyForQuery messages received.
    pending: AtomicU32,
    /// The status byte of the last ReadyForQuery.
    status: AtomicU8,
}

impl Flow {
    pub fn new(status: u8) -> Self {
        Flow {
            pending: AtomicU32::new(0),
            status: AtomicU8::new(status),
        }
    }

    /// Nothing in flight and no transaction open: safe to close on drain.
    fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0 && self.status.load(Ordering::Acquire) == b'I'
    }
}

fn reserve(buf: &mut BytesMut, max: usize) -> Result<(), framing::FrameError> {
    let need = framing::needed(buf, max)?;
    let want = need.max(READ_CHUNK / 4);
    if buf.capacity() - buf.len() < want {
        buf.reserve(need.max(READ_CHUNK));
    }
    Ok(())
}

/// Client → backend.
pub async fn client_pump(
    mut client: ReadHalf,
    mut backend: WriteHalf,
    flow: &Flow,
    ctl: mpsc::Sender<Control>,
    max_message: usize,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut frames: Vec<Frame> = Vec::with_capacity(64);
    loop {
        if let Err(e) = reserve(&mut buf, max_message) {
            let _ = ctl.send(Control::Fatal(frame_error(e))).await;
            return;
        }
        match client.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = ctl.send(Control::ClientGone).await;
                return;
            }
            Ok(_) => {}
        }
        let used = match framing::scan(&buf, max_message, &mut frames) {
            Ok(used) => used,
            Err(e) => {
                let _ = ctl.send(Control::Fatal(frame_error(e))).await;
                return;
            }
        };
        let mut cut = used;
        let mut end: Option<Control> = None;
        for f in &frames {
            match f.tag {
                b'Q' | b'S' | b'F' => {
                    flow.pending.fetch_add(1, Ordering::AcqRel);
                }
                b'P' | b'B' | b'E' | b'D' | b'C' | b'H' | b'd' | b'c' | b'f' => {}
                b'X' => {
                    cut = f.end;
                    end = Some(Control::ClientGone);
                    break;
                }
                other => {
                    cut = f.start;
                    end = Some(Control::Fatal(PgError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("invalid frontend message type {other}"),
                    )));
                    break;
                }
            }
        }
        let chunk = buf.split_to(cut);
        if !chunk.is_empty() && backend.write_all(&chunk).await.is_err() {
            // The server pump sees the backend's end and reports it.
            return;
        }
        if let Some(end) = end {
            let _ = ctl.send(end).await;
            return;
        }
    }
}

fn frame_error(e: framing::FrameError) -> PgError {
    match e {
        framing::FrameError::TooLarge { .. } => PgError::fatal(sqlstate::PROGRAM_LIMIT_EXCEEDED, e.to_string())
            .with_hint("raise listen.max_message_bytes in the RegionGuard config if such messages are expected"),
        framing::FrameError::BadLength { .. } => {
            PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())
        }
    }
}

/// Why the session ended, for the log.
#[derive(Debug)]
pub enum RelayEnd {
    ClientGone,
    ClientError(String),
    BackendLost(String),
    ClientWriteFailed,
    Shutdown,
}

/// Identifies the backend in errors the client sees.
pub struct BackendLabel<'a> {
    pub region: &'a str,
    pub addr: &'a str,
}

/// Backend → client. Owns the client's write half: everything the client
/// receives after startup goes through here, in order.
pub async fn server_pump(
    mut backend: ReadHalf,
    mut client: WriteHalf,
    flow: &Flow,
    mut ctl: mpsc::Receiver<Control>,
    mut phase: watch::Receiver<Phase>,
    label: BackendLabel<'_>,
) -> RelayEnd {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut frames: Vec<Frame> = Vec::with_capacity(64);
    let mut phase_open = true;
    let mut fatal_seen = false;
    loop {
        if let Err(e) = reserve(&mut buf, MAX_BACKEND_MESSAGE) {
            return lost(&mut client, &label, &e.to_string(), false).await;
        }
        tokio::select! {
            biased;
            msg = ctl.recv() => match msg {
                Some(Control::Fatal(err)) => {
                    let _ = client.write_all(&err.to_bytes()).await;
                    return RelayEnd::ClientError(err.message);
                }
                Some(Control::ClientGone) | None => return RelayEnd::ClientGone,
            },
            changed = phase.changed(), if phase_open => {
                if changed.is_err() {
                    phase_open = false;
                    continue;
                }
                let now = *phase.borrow_and_update();
                if now == Phase::Closing || (now == Phase::Draining && flow.idle()) {
                    return shutting_down(&mut client).await;
                }
                continue;
            }
            read = backend.read_buf(&mut buf) => match read {
                Ok(0) => return lost(&mut client, &label, "server closed the connection", fatal_seen).await,
                Err(e) => return lost(&mut client, &label, &e.to_string(), fatal_seen).await,
                Ok(_) => {}
            },
        }
        let used = match framing::scan(&buf, MAX_BACKEND_MESSAGE, &mut frames) {
            Ok(used) => used,
            Err(e) => return lost(&mut client, &label, &e.to_string(), false).await,
        };
        for f in &frames {
            match f.tag {
                b'Z' => {
                    let status = f.body(&buf).first().copied().unwrap_or(b'I');
                    flow.status.store(status, Ordering::Release);
                    let _ = flow
                        .pending
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
                }
                b'E' => fatal_seen |= is_fatal(f.body(&buf)),
                b'S' => {
                    if let Some(value) = client_encoding_change(f.body(&buf)) {
                        if !is_utf8_encoding(&value) {
                            let err = non_utf8_encoding(&value);
                            let _ = client.write_all(&err.to_bytes()).await;
                            return RelayEnd::ClientError(err.message);
                        }
                    }
                }
                _ => {}
            }
        }
        if used > 0 {
            let chunk = buf.split_to(used);
            if client.write_all(&chunk).await.is_err() {
                return RelayEnd::ClientWriteFailed;
            }
        }
        if *phase.borrow() != Phase::Running && flow.idle() {
            return shutting_down(&mut client).await;
        }
    }
}

async fn shutting_down(client: &mut WriteHalf) -> RelayEnd {
    let err = PgError::fatal(
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    )
    .with_hint("RegionGuard is shutting down; reconnect to another instance");
    let _ = client.write_all(&err.to_bytes()).await;
    RelayEnd::Shutdown
}

async fn lost(
    client: &mut WriteHalf,
    label: &BackendLabel<'_>,
    reason: &str,
    already_told: bool,
) -> RelayEnd {
    if !already_told {
        let err = PgError::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "connection to region {} ({}) was lost: {reason}",
                label.region, label.addr
            ),
        )
        .with_hint("any open transaction was rolled back; reconnect and retry");
        let _ = client.write_all(&err.to_bytes()).await;
    }
    RelayEnd::BackendLost(reason.to_string())
}

/// Whether an ErrorResponse body has severity FATAL or PANIC.
fn is_fatal(body: &[u8]) -> bool {
    let mut pos = 0;
    while pos < body.len() && body[pos] != 0 {
        let code = body[pos];
        pos += 1;
        let Some(value) = read_cstr(body, &mut pos) else {
            return false;
        };
        if code == b'V' || code == b'S' {
            return value == b"FATAL" || value == b"PANIC";
        }
    }
    false
}

/// The new value when a ParameterStatus reports `client_encoding`.
fn client_encoding_change(body: &[u8]) -> Option<String> {
    let mut pos = 0;
    let name = read_cstr(body, &mut pos)?;
    if name != b"client_encoding" {
        return None;
    }
    let value = read_cstr(body, &mut pos)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_detection_reads_the_severity_field() {
        assert!(is_fatal(b"SFATAL\0VFATAL\0C57P01\0\0"));
        assert!(!is_fatal(b"SERROR\0VERROR\0C42P01\0\0"));
        assert!(!is_fatal(b"S"));
    }

    #[test]
    fn parameter_status_encoding() {
        assert_eq!(
            client_encoding_change(b"client_encoding\0LATIN1\0").as_deref(),
            Some("LATIN1")
        );
        assert_eq!(client_encoding_change(b"TimeZone\0UTC\0"), None);
    }
}
