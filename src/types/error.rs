//! The error every conversion returns: a Postgres SQLSTATE plus a message
//! that names the type but never the value. Values of classified columns are
//! secrets (promise 3), so unlike Postgres's own `invalid input syntax for
//! type integer: "…"` the offending input is never echoed.

use std::fmt;

/// SQLSTATE codes used by the type conversions, as Postgres uses them.
pub mod sqlstate {
    /// `invalid_text_representation`: text input that does not parse.
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    /// `invalid_binary_representation`: binary input that does not decode.
    pub const INVALID_BINARY_REPRESENTATION: &str = "22P03";
    /// `numeric_value_out_of_range`.
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    /// `invalid_datetime_format`.
    pub const INVALID_DATETIME_FORMAT: &str = "22007";
    /// `datetime_field_overflow` (also "date out of range").
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    /// `invalid_time_zone_displacement_value`.
    pub const INVALID_TIME_ZONE_DISPLACEMENT: &str = "22009";
    /// `invalid_parameter_value` (unknown time zone, bad hex digit in bytea).
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    /// `character_not_in_repertoire`: invalid UTF-8 or a NUL byte.
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    /// `untranslatable_character`: `\u0000` in jsonb.
    pub const UNTRANSLATABLE_CHARACTER: &str = "22P05";
    /// `datatype_mismatch`: a binary array of another element type.
    pub const DATATYPE_MISMATCH: &str = "42804";
    /// `program_limit_exceeded`: too many array dimensions, array too large.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// `feature_not_supported`: input Postgres accepts but the proxy cannot
    /// reproduce exactly (so it refuses rather than encrypt a wrong value).
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
}

/// A value that cannot be converted. [`TypeError::sqlstate`] is the code
/// Postgres would have raised for the same input, so clients see the same
/// error class through the proxy as without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    sqlstate: &'static str,
    message: String,
}

impl TypeError {
    /// An error with an explicit SQLSTATE. `message` must not contain the
    /// value being converted.
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> TypeError {
        TypeError {
            sqlstate,
            message: message.into(),
        }
    }

    /// The five-character SQLSTATE.
    pub fn sqlstate(&self) -> &'static str {
        self.sqlstate
    }

    /// The human-readable message (never contains the value).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// `22P02 invalid input syntax for type <type>`.
    pub(crate) fn syntax(type_name: &str) -> TypeError {
        TypeError::new(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type {type_name}"),
        )
    }

    /// `22003 value is out of range for type <type>`.
    pub(crate) fn out_of_range(type_name: &str) -> TypeError {
        TypeError::new(
            sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
            format!("value is out of range for type {type_name}"),
        )
    }

    /// `22P03` with a description of what is wrong with the binary value.
    pub(crate) fn binary(type_name: &str, what: &str) -> TypeError {
        TypeError::new(
            sqlstate::INVALID_BINARY_REPRESENTATION,
            format!("invalid binary value for type {type_name}: {what}"),
        )
    }

    /// `22021`: text that is not valid UTF-8 or contains a NUL byte.
    pub(crate) fn encoding(type_name: &str) -> TypeError {
        TypeError::new(
            sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
            format!("invalid byte sequence for encoding \"UTF8\" in a value of type {type_name}"),
        )
    }

    /// `0A000`: input Postgres would accept that the proxy does not
    /// reproduce; refusing is safer than encrypting a different value.
    pub(crate) fn unsupported(message: impl Into<String>) -> TypeError {
        TypeError::new(sqlstate::FEATURE_NOT_SUPPORTED, message)
    }
}

impl fmt::Display for TypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)
    }
}

impl std::error::Error for TypeError {}
