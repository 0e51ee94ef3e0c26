//! Errors of the COPY codec.
//!
//! Messages describe the *shape* of the data (row numbers, field counts,
//! which marker is wrong), never the data itself: COPY rows carry tenant ids
//! and classified values, and these messages end up in ErrorResponses and
//! logs.

use crate::protocol::error::PgError;

/// SQLSTATE `bad_copy_file_format`: malformed COPY data.
pub const BAD_COPY_FILE_FORMAT: &str = "22P04";
/// SQLSTATE `program_limit_exceeded`: a row larger than the proxy buffers.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// SQLSTATE `feature_not_supported`: a COPY option the proxy cannot handle.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE `invalid_parameter_value`: a COPY option with a value Postgres refuses too.
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// SQLSTATE `syntax_error`: conflicting or redundant COPY options.
pub const SYNTAX_ERROR: &str = "42601";

/// A COPY statement or COPY data the codec refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyError {
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl CopyError {
    /// Malformed COPY data (22P04).
    pub fn bad_format(message: impl Into<String>) -> Self {
        CopyError {
            code: BAD_COPY_FILE_FORMAT,
            message: message.into(),
            hint: None,
        }
    }

    /// A COPY option the proxy does not support (0A000).
    pub fn unsupported(message: impl Into<String>) -> Self {
        CopyError {
            code: FEATURE_NOT_SUPPORTED,
            message: message.into(),
            hint: None,
        }
    }

    /// A COPY option value Postgres would refuse as well (22023).
    pub fn invalid(message: impl Into<String>) -> Self {
        CopyError {
            code: INVALID_PARAMETER_VALUE,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The same error with `prefix: ` in front of its message (to name the
    /// table and row it happened in).
    pub fn context(mut self, prefix: impl std::fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for CopyError {}

impl From<CopyError> for PgError {
    fn from(e: CopyError) -> Self {
        let err = PgError::error(e.code, e.message);
        match e.hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }
}
