//! The audit log: one JSON object per line, appended, hash-chained.
//!
//! Every line carries `seq` (1, 2, …) and `prev`, the hex SHA-256 of the
//! previous line's bytes (without its newline; 64 zeros for the first), so
//! editing, inserting or deleting a line breaks the chain at the next one.
//! The chain cannot show that the *last* lines were cut off or the last
//! line edited: [`verify`] reports the head hash for an operator to record
//! elsewhere (a ticket, another machine) and compare later.
//!
//! Lines name who (the peer uid of the admin socket), what (command and
//! its arguments: regions, tenant ids, options), when and the outcome. No
//! key material and no tenant data ever reaches it: commands take no key
//! material and results are versions, states and counts.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An open audit log, appended to under a lock.
pub struct AuditLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: std::fs::File,
    prev: String,
    seq: u64,
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log and continues its chain.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)?;
        let mut prev = GENESIS.to_string();
        let mut seq = 0;
        for line in std::io::BufReader::new(&file).lines() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            prev = sha256_hex(line.as_bytes());
            seq += 1;
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner { file, prev, seq }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event (an object; `seq`, `time` and `prev` are added)
    /// and syncs it to disk.
    pub fn append(&self, mut event: Map<String, Value>) -> std::io::Result<()> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
        event.insert("seq".into(), Value::from(inner.seq + 1));
        event.insert(
            "time".into(),
            Value::from(jiff::Timestamp::now().to_string()),
        );
        event.insert("prev".into(), Value::from(inner.prev.clone()));
        let line = Value::Object(event).to_string();
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        inner.file.write_all(&bytes)?;
        inner.file.sync_data()?;
        inner.prev = sha256_hex(line.as_bytes());
        inner.seq += 1;
        Ok(())
    }
}

impl AuditLog {
    /// Records what the proxy did on its own (`by`: `SIGHUP`, `key-policy`)
    /// in the same shape as an admin command, without a peer uid. A write
    /// failure is logged, never fatal: the action already happened.
    pub fn record_system(&self, by: &str, command: &str, outcome: Result<Value, &str>) {
        let mut event = Map::new();
        event.insert("by".into(), Value::from(by));
        event.insert("command".into(), Value::from(command));
        match outcome {
            Ok(summary) => {
                event.insert("outcome".into(), Value::from("ok"));
                event.insert("event".into(), summary);
            }
            Err(code) => {
                event.insert("outcome".into(), Value::from("error"));
                event.insert("error".into(), Value::from(code));
            }
        }
        if let Err(e) = self.append(event) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot append to the audit log");
        }
    }
}

/// A verified chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    pub lines: u64,
    /// SHA-256 of the last line: record it to detect a truncated tail later.
    pub head: String,
}

/// Where and why a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Broken {
    pub line: u64,
    pub reason: String,
}

/// Checks the chain of the log at `path`.
pub fn verify(path: &Path) -> Result<Verified, Broken> {
    let file = std::fs::File::open(path).map_err(|e| Broken {
        line: 0,
        reason: format!("cannot open {}: {e}", path.display()),
    })?;
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    for line in std::io::BufReader::new(file).lines() {
        n += 1;
        let broken = |reason: String| Broken { line: n, reason };
        let line = line.map_err(|e| broken(format!("unreadable: {e}")))?;
        let value: Value =
            serde_json::from_str(&line).map_err(|e| broken(format!("not a JSON object: {e}")))?;
        let claimed = value.get("prev").and_then(Value::as_str).unwrap_or("");
        if claimed != prev {
            return Err(broken(
                "its `prev` is not the SHA-256 of the previous line: a line before it was edited, inserted or removed".into(),
            ));
        }
        if value.get("seq").and_then(Value::as_u64) != Some(n) {
            return Err(broken(format!("its `seq` is not {n}")));
        }
        prev = sha256_hex(line.as_bytes());
    }
    Ok(Verified {
        lines: n,
        head: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("command".into(), Value::from(what));
        m.insert("uid".into(), Value::from(1000));
        m
    }

    #[test]
    fn the_chain_verifies_continues_after_reopen_and_detects_an_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.append(event("status")).unwrap();
        log.append(event("keys.rotate")).unwrap();
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.append(event("tenant.shred")).unwrap();
        let ok = verify(&path).unwrap();
        assert_eq!(ok.lines, 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("keys.rotate", "keys.list", 1);
        std::fs::write(&path, edited).unwrap();
        let err = verify(&path).unwrap_err();
        assert_eq!(err.line, 3, "{err}");

        // Removing a line is caught too.
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        assert_eq!(verify(&path).unwrap_err().line, 2);
    }
}
