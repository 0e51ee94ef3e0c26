//! Idle backend sessions kept after their client session ended, for the
//! next client session of the region with the same startup parameters
//! (ADR 21).
//!
//! Opening a backend session costs a Postgres process (fork, SCRAM login,
//! a cold catalog cache, page faults on shared buffers); a client that
//! connects per request or per job pays it every time. A session that
//! ends cleanly — the client said goodbye, the backend is idle outside a
//! transaction, every answer has been read — hands its backend here after
//! `DISCARD ALL` has reset it to a fresh login's state. Only sessions with
//! the same startup parameters take it, so what Postgres applied at login
//! is what the next client asked for.

use super::connect::{BackendConn, CancelTarget};
use crate::net::{Stream, WriteHalf};
use crate::protocol::framing::{self, Frame};
use bytes::{Buf, BytesMut};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long resetting a released backend may take before it is closed.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted while resetting (a notice, a parameter change).
const RESET_MAX_MESSAGE: usize = 1 << 20;

/// What a backend session was opened as: what the next session that takes
/// it needs to know.
#[derive(Clone)]
pub struct Origin {
    /// Which of the region's hosts (index in the config) serves it.
    pub host_index: usize,
    /// `host:port`, for errors and logs.
    pub addr: String,
    pub cancel: CancelTarget,
    /// ParameterStatus values the server reported at login (a reset
    /// brings them back).
    pub server_params: Arc<[(String, String)]>,
    /// The startup parameters it was opened with (besides user and database).
    pub startup: Arc<[(String, String)]>,
}

impl Origin {
    pub fn of(conn: &BackendConn, startup: &Arc<[(String, String)]>) -> Self {
        Origin {
            host_index: conn.host_index,
            addr: conn.addr.clone(),
            cancel: conn.cancel.clone(),
            server_params: conn.params.clone(),
            startup: startup.clone(),
        }
    }
}

/// The proxy's buffers for a backend session, kept with it in the pool
/// between transactions (transaction mode): the next session that takes
/// it reuses them instead of allocating (and freeing) them per
/// transaction.
pub struct Buffers {
    /// The response side's read buffer and frame list, empty.
    pub read: BytesMut,
    pub frames: Vec<Frame>,
    /// The request side's write buffer, empty.
    pub write: BytesMut,
}

struct Idle {
    stream: Stream,
    origin: Origin,
    since: Instant,
    buffers: Option<Buffers>,
}

/// One region's idle backend sessions, newest last.
pub struct IdlePool {
    max: usize,
    timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

impl IdlePool {
    /// Keeps at most `max` idle sessions (0: none), each at most `timeout`.
    pub fn new(max: usize, timeout: Duration) -> Self {
        IdlePool {
            max,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// Idle sessions held now (for the metrics).
    pub fn held(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// The newest idle session on host `host_index` opened with exactly
    /// `startup`, as a ready backend session. Sessions found closed by the
    /// server (or that sent anything while idle) are dropped on the way.
    pub fn take(
        &self,
        region: &str,
        host_index: usize,
        startup: &[(String, String)],
    ) -> Option<BackendConn> {
        let Ok(mut idle) = self.idle.lock() else {
            return None;
        };
        while let Some(i) = idle
            .iter()
            .rposition(|s| s.origin.host_index == host_index && *s.origin.startup == *startup)
        {
            let s = idle.remove(i);
            if s.since.elapsed() >= self.timeout || !is_quiet(&s.stream) {
                continue;
            }
            return Some(BackendConn {
                stream: s.stream,
                region: region.to_string(),
                addr: s.origin.addr,
                cancel: s.origin.cancel,
                params: s.origin.server_params,
                status: b'I',
                host_index,
                failed_hosts: Vec::new(),
                failed_over: false,
                buffers: s.buffers,
            });
        }
        None
    }

    /// Resets `stream` (`DISCARD ALL`) and keeps it; closes it instead when
    /// the reset fails or the pool is full of newer ones (the oldest goes).
    pub async fn release(&self, mut stream: Stream, origin: Origin) {
        if !self.enabled() {
            return close(stream).await;
        }
        match tokio::time::timeout(RESET_TIMEOUT, reset(&mut stream)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                tracing::debug!(backend = %origin.addr, %reason, "released backend not kept");
                return close(stream).await;
            }
            Err(_) => {
                tracing::debug!(backend = %origin.addr, "released backend did not reset in time");
                return close(stream).await;
            }
        }
        self.put(stream, origin, None);
    }

    /// Keeps `stream` as it is, without a reset: a backend session that a
    /// client session in transaction mode leaves between transactions,
    /// idle, having kept no session state in it (ADR 22). The oldest goes
    /// when the pool is full.
    pub fn put(&self, stream: Stream, origin: Origin, buffers: Option<Buffers>) {
        let evicted = match self.idle.lock() {
            Ok(mut idle) => {
                idle.push(Idle {
                    stream,
                    origin,
                    since: Instant::now(),
                    buffers,
                });
                let over = idle.len().saturating_sub(self.max);
                idle.drain(..over).collect::<Vec<_>>()
            }
            Err(_) => Vec::new(),
        };
        for s in evicted {
            tokio::spawn(close(s.stream));
        }
    }

    /// Closes idle sessions past the idle timeout and drops those the
    /// server closed.
    pub async fn sweep(&self) {
        let expired = match self.idle.lock() {
            Ok(mut idle) => {
                let (old, keep): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut *idle)
                    .into_iter()
                    .partition(|s| s.since.elapsed() >= self.timeout || !is_quiet(&s.stream));
                *idle = keep;
                old
            }
            Err(_) => Vec::new(),
        };
        for s in expired {
            close(s.stream).await;
        }
    }

    /// Closes every idle session (shutdown).
    pub async fn clear(&self) {
        let all = match self.idle.lock() {
            Ok(mut idle) => std::mem::take(&mut *idle),
            Err(_) => Vec::new(),
        };
        for s in all {
            close(s.stream).await;
        }
    }
}

/// Whether an idle session's socket has nothing to read: not closed by the
/// server, and no message (a termination notice, a notification) waiting
/// that the next client would see out of turn.
fn is_quiet(stream: &Stream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(stream.tcp()).peek(&mut byte) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

/// Terminate, the polite end of a backend session.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Ends a backend session politely (Terminate), so the server logs no
/// lost connection.
pub async fn close(mut stream: Stream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&TERMINATE).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// [`close`] for a backend session of which only the write half is left.
pub async fn close_write(mut half: WriteHalf) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = half.write_all(&TERMINATE).await;
        let _ = half.shutdown().await;
    })
    .await;
}

/// `DISCARD ALL`: closes cursors, drops prepared statements, temporary
/// tables and plans, resets every setting and the session authorization,
/// unlistens and releases advisory locks. Succeeds only on its plain
/// answer ending idle outside a transaction.
async fn reset(stream: &mut Stream) -> Result<(), String> {
    const QUERY: &[u8] = b"Q\0\0\0\x10DISCARD ALL\0";
    stream
        .write_all(QUERY)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        while let Some((tag, len)) = framing::peek_header(&buf, RESET_MAX_MESSAGE)
            .map_err(|e| e.to_string())?
            .filter(|&(_, len)| buf.len() >= len)
        {
            let body = buf[framing::HEADER_LEN..len].to_vec();
            buf.advance(len);
            match tag {
                // CommandComplete, ParameterStatus (settings reset), notices.
                b'C' | b'S' | b'N' => {}
                b'Z' if body.first() == Some(&b'I') && buf.is_empty() => return Ok(()),
                b'Z' => return Err("not idle after DISCARD ALL".into()),
                b'E' => return Err("DISCARD ALL failed".into()),
                other => return Err(format!("unexpected message {:?}", other as char)),
            }
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err("connection closed".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the proxy's end as a [`Stream`], the server's raw.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            Stream::Plain(client.expect("connect")),
            server.expect("accept").0,
        )
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Runs a reset against a server that answers with `answer`.
    async fn reset_answered_with(answer: Vec<u8>) -> Result<(), String> {
        let (mut stream, mut server) = pair().await;
        let serve = async move {
            let mut query = [0u8; 17];
            server.read_exact(&mut query).await.expect("query");
            assert_eq!(&query, b"Q\0\0\0\x10DISCARD ALL\0");
            server.write_all(&answer).await.expect("answer");
            server
        };
        let (result, _server) = tokio::join!(reset(&mut stream), serve);
        result
    }

    #[tokio::test]
    async fn a_reset_takes_only_the_plain_answer_ending_idle() {
        let done = message(b'C', b"DISCARD ALL\0");
        let status = message(b'S', b"TimeZone\0UTC\0");
        let idle = message(b'Z', b"I");
        let ok = [status.clone(), done.clone(), idle.clone()].concat();
        assert_eq!(reset_answered_with(ok).await, Ok(()));

        let in_txn = [done.clone(), message(b'Z', b"T")].concat();
        assert!(reset_answered_with(in_txn).await.is_err());
        let failed = [message(b'E', b"SERROR\0C25001\0Mno\0\0"), idle.clone()].concat();
        assert!(reset_answered_with(failed).await.is_err());
        let notification = [
            message(b'A', b"\0\0\0\x01chan\0\0"),
            done.clone(),
            idle.clone(),
        ]
        .concat();
        assert!(reset_answered_with(notification).await.is_err());
        let trailing = [done, idle.clone(), idle].concat();
        assert!(reset_answered_with(trailing).await.is_err());
    }

    #[tokio::test]
    async fn a_quiet_socket_is_one_with_nothing_to_read() {
        let (stream, mut server) = pair().await;
        assert!(is_quiet(&stream));
        server.write_all(b"N").await.expect("write");
        // Loopback delivers at once; allow the scheduler a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!is_quiet(&stream), "a byte waiting");

        let (stream, server) = pair().await;
        drop(server);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!is_quiet(&stream), "closed by the server");
    }

    #[tokio::test]
    async fn the_pool_hands_out_only_matching_live_sessions() {
        let pool = IdlePool::new(2, Duration::from_secs(60));
        let origin = |host_index, name: &str| Origin {
            host_index,
            addr: "127.0.0.1:1".into(),
            cancel: CancelTarget {
                host: "127.0.0.1".into(),
                port: 1,
                pid: 1,
                secret: 2,
            },
            server_params: vec![("TimeZone".into(), "UTC".into())].into(),
            startup: vec![("application_name".into(), name.into())].into(),
        };
        let mut servers = Vec::new();
        for (host, name) in [(0, "a"), (1, "a"), (0, "b")] {
            let (stream, server) = pair().await;
            servers.push(server);
            pool.idle.lock().expect("lock").push(Idle {
                stream,
                origin: origin(host, name),
                since: Instant::now(),
                buffers: None,
            });
        }
        let wanted = [("application_name".to_string(), "a".to_string())];
        let conn = pool.take("eu", 0, &wanted).expect("host 0, a");
        assert_eq!((conn.host_index, conn.status), (0, b'I'));
        assert_eq!(conn.params[..], [("TimeZone".into(), "UTC".into())]);
        assert!(pool.take("eu", 0, &wanted).is_none(), "taken already");
        // The server of (host 1, a) goes away: skipped and dropped.
        drop(servers.remove(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.take("eu", 1, &wanted).is_none());
        assert_eq!(pool.held(), 1, "only (host 0, b) is left");
        pool.clear().await;
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn out_of_slots_is_sqlstate_53300_either_way() {
        let refused = |code: &str| super::super::ConnectError::Refused {
            region: "eu".into(),
            error_response: BytesMut::from(
                &message(b'E', format!("SFATAL\0C{code}\0Mtoo many\0\0").as_bytes())[..],
            ),
        };
        assert!(refused("53300").is_out_of_slots());
        assert!(!refused("28P01").is_out_of_slots());
        let unavailable = |reason: &str| super::super::ConnectError::Unavailable {
            region: "eu".into(),
            reason: reason.into(),
            failed_hosts: vec![0],
        };
        assert!(
            unavailable("h:1: sorry, too many clients already (SQLSTATE 53300)").is_out_of_slots()
        );
        assert!(!unavailable("h:1: connection refused").is_out_of_slots());
    }
}
