//! The admin socket (issue 5): a Unix domain socket speaking line-delimited
//! JSON, for `regionguard ctl`.
//!
//! Request: `{"id": <any JSON>, "version": 1, "command": "keys.rotate",
//! "args": {…}}`. Reply, one line: `{"id": …, "ok": true, "result": …}` or
//! `{"id": …, "ok": false, "error": {"code": "…", "message": "…"}}` with a
//! code from [`codes`] (stable: scripts may match on them).
//!
//! Access: the socket is created mode 0600 in a directory that neither
//! group nor others may write (checked at start, refused otherwise, sticky
//! bit or not: in a shared directory like /tmp another user could take the
//! name first and impersonate the proxy to `ctl`). Every connection's peer
//! uid (SO_PEERCRED) must be the proxy's own or root. Every request and its
//! outcome goes to the audit log when one is configured.
//!
//! Layout and reasons: docs/adr/0011-admin-socket.md.

pub mod audit;
pub mod client;
pub(crate) mod commands;
mod jobs;
mod progress;

use crate::server::state::Shared;
use serde_json::{json, Map, Value};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The protocol version this proxy speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// Stable error codes of the admin protocol.
pub mod codes {
    /// The line is not a JSON request object.
    pub const BAD_REQUEST: &str = "bad_request";
    /// `version` is not one this proxy speaks.
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    pub const UNKNOWN_COMMAND: &str = "unknown_command";
    /// A missing or invalid argument.
    pub const BAD_ARGS: &str = "bad_args";
    /// The peer's uid is neither the proxy's nor root.
    pub const PERMISSION_DENIED: &str = "permission_denied";
    /// Unknown region or tenant, or a region without keys on this proxy.
    pub const NOT_FOUND: &str = "not_found";
    /// The destructive command's `confirm` does not repeat its target.
    pub const CONFIRMATION_REQUIRED: &str = "confirmation_required";
    /// The region's database (key store) cannot be reached.
    pub const REGION_UNAVAILABLE: &str = "region_unavailable";
    /// The key store or key source answered with an error.
    pub const KEY_STORE: &str = "key_store";
    /// The tenant's keys were destroyed.
    pub const TENANT_SHREDDED: &str = "tenant_shredded";
    /// A concurrent change got in the way (or a running job already covers
    /// the request; a job that is not running cannot be cancelled); retry.
    pub const CONFLICT: &str = "conflict";
    /// `audit.verify` found an edited, inserted or removed line.
    pub const AUDIT_CHAIN_BROKEN: &str = "audit_chain_broken";
    /// `reload` refused the file: invalid, or a change that needs a
    /// restart, or a classified column with a wrong storage type. The old
    /// config stays in force.
    pub const RELOAD_REFUSED: &str = "reload_refused";
    pub const INTERNAL: &str = "internal";
}

/// A failed command: a stable code and a message for people.
#[derive(Debug, Clone)]
pub struct AdminError {
    pub code: &'static str,
    pub message: String,
}

impl AdminError {
    pub fn new(code: &'static str, message: impl Into<String>) -> AdminError {
        AdminError {
            code,
            message: message.into(),
        }
    }
}

/// The running admin socket; [`AdminServer::shutdown`] removes it.
pub struct AdminServer {
    path: PathBuf,
    accept: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting and removes the socket file.
    pub fn shutdown(self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What command handlers see.
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub started: Instant,
    pub audit: Option<Arc<audit::AuditLog>>,
    /// Re-encryption jobs (`reencrypt`, `jobs`, `jobs cancel`).
    pub jobs: Arc<crate::reencrypt::Jobs>,
}

/// Refuses a socket directory others could write to: group- or
/// other-writable (sticky bit or not), or owned by someone other than the
/// proxy's user or root.
pub fn check_directory(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("admin.socket: directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "admin.socket: {} is not a directory",
            dir.display()
        ));
    }
    let own = nix::unistd::geteuid().as_raw();
    if meta.uid() != own && meta.uid() != 0 {
        return Err(format!(
            "admin.socket: directory {} is owned by uid {}, not by the proxy's user (uid {own}) or root",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(format!(
            "admin.socket: directory {} is writable by {} (mode {:o}); use a directory only the proxy's user can write, e.g. /run/regionguard with mode 0700 or 0755",
            dir.display(),
            if mode & 0o002 != 0 { "others" } else { "its group" },
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Whether a peer uid may use the socket.
pub fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

/// Binds the socket at `path` (mode 0600, replacing a stale socket file)
/// and serves it in the background.
pub async fn start(
    path: &Path,
    shared: Arc<Shared>,
    started: Instant,
    audit: Option<Arc<audit::AuditLog>>,
    jobs: Arc<crate::reencrypt::Jobs>,
) -> Result<AdminServer, String> {
    let listener = bind(path)?;
    let ctx = Arc::new(Ctx {
        shared,
        started,
        audit,
        jobs,
    });
    let accept = tokio::spawn(accept_loop(listener, ctx));
    tracing::info!(socket = %path.display(), "admin socket listening");
    Ok(AdminServer {
        path: path.to_path_buf(),
        accept,
    })
}

fn bind(path: &Path) -> Result<UnixListener, String> {
    let err =
        |what: &str, e: std::io::Error| format!("admin.socket {}: {what}: {e}", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_directory(&dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "admin.socket {}: another process is serving it (another proxy with the same config?)",
                    path.display()
                ));
            }
            // Stale: left by a proxy that did not shut down cleanly.
            std::fs::remove_file(path).map_err(|e| err("removing the stale socket", e))?;
            tracing::info!(socket = %path.display(), "replaced a stale admin socket");
        }
        Ok(_) => {
            return Err(format!(
                "admin.socket {}: exists and is not a socket; refusing to replace it",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("inspecting", e)),
    }
    // Bound under a temporary name, restricted, then renamed into place:
    // the socket is never reachable with the umask's mode.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "admin.sock".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| err("bind", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err("chmod 0600", e))?;
    std::fs::rename(&tmp, path).map_err(|e| err("rename into place", e))?;
    Ok(listener)
}

async fn accept_loop(listener: UnixListener, ctx: Arc<Ctx>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_conn(stream, Arc::clone(&ctx)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn reply_error(id: &Value, e: &AdminError) -> Value {
    json!({"id": id, "ok": false, "error": {"code": e.code, "message": e.message}})
}

async fn serve_conn(stream: UnixStream, ctx: Arc<Ctx>) {
    let own = nix::unistd::geteuid().as_raw();
    let uid = match stream.peer_cred() {
        Ok(c) => c.uid(),
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: cannot read the peer's credentials");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    if !peer_allowed(uid, own) {
        let e = AdminError::new(
            codes::PERMISSION_DENIED,
            format!("uid {uid} may not use the admin socket (only uid {own} and root)"),
        );
        record(&ctx, uid, "connect", &Value::Null, Err(&e), None);
        // Read (and ignore) the first request so the reply is not lost to
        // a reset, then refuse it and close.
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            (&mut reader)
                .take(MAX_REQUEST as u64)
                .read_until(b'\n', &mut buf),
        )
        .await;
        let mut line = reply_error(&Value::Null, &e).to_string();
        line.push('\n');
        let _ = write.write_all(line.as_bytes()).await;
        return;
    }
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let too_long = n > MAX_REQUEST && buf.last() != Some(&b'\n');
        let reply = if too_long {
            reply_error(
                &Value::Null,
                &AdminError::new(codes::BAD_REQUEST, "request line too long"),
            )
        } else {
            handle_line(&ctx, uid, &buf).await
        };
        let mut line = reply.to_string();
        line.push('\n');
        if write.write_all(line.as_bytes()).await.is_err() || too_long {
            return;
        }
    }
}

async fn handle_line(ctx: &Ctx, uid: u32, line: &[u8]) -> Value {
    let request: Value = match serde_json::from_slice(line) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return reply_error(
                &Value::Null,
                &AdminError::new(codes::BAD_REQUEST, "a request is one JSON object per line"),
            )
        }
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let version = request.get("version").and_then(Value::as_u64);
    if version != Some(PROTOCOL_VERSION) {
        return reply_error(
            &id,
            &AdminError::new(
                codes::UNSUPPORTED_VERSION,
                format!("this proxy speaks admin protocol version {PROTOCOL_VERSION}"),
            ),
        );
    }
    let Some(command) = request.get("command").and_then(Value::as_str) else {
        return reply_error(
            &id,
            &AdminError::new(codes::BAD_REQUEST, "`command` (a string) is missing"),
        );
    };
    let args = match request.get("args") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return reply_error(
                &id,
                &AdminError::new(codes::BAD_ARGS, "`args` must be an object"),
            )
        }
    };
    let outcome = commands::run(ctx, command, &args).await;
    match &outcome {
        Ok((result, summary)) => {
            record(ctx, uid, command, &args, Ok(()), summary.clone());
            json!({"id": id, "ok": true, "result": result})
        }
        Err(e) => {
            record(ctx, uid, command, &args, Err(e), None);
            reply_error(&id, e)
        }
    }
}

/// Appends one event to the audit log (when configured). Arguments are
/// regions, tenant ids and options only: the commands accept nothing else.
fn record(
    ctx: &Ctx,
    uid: u32,
    command: &str,
    args: &Value,
    outcome: Result<(), &AdminError>,
    summary: Option<Value>,
) {
    let Some(log) = &ctx.audit else {
        return;
    };
    let mut event = Map::new();
    event.insert("uid".into(), Value::from(uid));
    event.insert("command".into(), Value::from(command));
    event.insert("args".into(), args.clone());
    match outcome {
        Ok(()) => {
            event.insert("outcome".into(), Value::from("ok"));
        }
        Err(e) => {
            event.insert("outcome".into(), Value::from("error"));
            event.insert("error".into(), Value::from(e.code));
        }
    }
    if let Some(s) = summary {
        event.insert("event".into(), s);
    }
    if let Err(e) = log.append(event) {
        tracing::error!(path = %log.path().display(), error = %e, "cannot append to the audit log");
    }
}
