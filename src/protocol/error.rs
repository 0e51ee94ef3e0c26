//! Errors the proxy itself reports to clients as `ErrorResponse`.
//!
//! Every refusal carries a SQLSTATE, a message naming what was refused and a
//! hint, so a person can act on it. Values of classified columns never go in.

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;

/// Severity as Postgres spells it: `ERROR` aborts the statement, `FATAL`
/// ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error produced by the proxy (not relayed from a backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            ..Self::error(code, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Appends the `ErrorResponse` message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let sev = self.severity.as_str().to_string();
        let mut fields = vec![
            (b'S', sev.clone()),
            (b'V', sev),
            (b'C', self.code.to_string()),
            (b'M', self.message.clone()),
        ];
        if let Some(d) = &self.detail {
            fields.push((b'D', d.clone()));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', h.clone()));
        }
        // Encoding into a BytesMut only fails for messages over 2 GiB, which
        // an error text never is; fall back to a minimal message regardless.
        if ErrorResponse::new(fields).encode(out).is_err() {
            let _ = ErrorResponse::new(vec![(b'S', "ERROR".into()), (b'C', "XX000".into())])
                .encode(out);
        }
    }

    /// The message as a standalone buffer.
    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

/// SQLSTATE codes used by the proxy, named as in the Postgres docs.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CONNECTION_EXCEPTION: &str = "08000";
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: &str = "08001";
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const INTERNAL_ERROR: &str = "XX000";
}

/// The SQLSTATE of an ErrorResponse body (field `C`): what the proxy reads
/// of a backend's errors (metrics by class, a full server at login).
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    let mut pos = 0;
    while let Some(&field) = body.get(pos) {
        if field == 0 {
            break;
        }
        pos += 1;
        let value = crate::protocol::framing::read_cstr(body, &mut pos)?;
        if field == b'C' {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_in_postgres_layout() {
        let e = PgError::error("42501", "refused").with_hint("do X");
        let b = e.to_bytes();
        assert_eq!(b[0], b'E');
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let body = &b[5..];
        assert!(body.windows(6).any(|w| w == b"C42501"));
        assert!(body.windows(5).any(|w| w == b"Hdo X"));
        assert_eq!(*body.last().unwrap(), 0);
    }
}
