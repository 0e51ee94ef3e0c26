//! The conversions of [`LogicalType`]: text ⇄ canonical binary, and the
//! check that makes a client-sent binary value canonical.
//!
//! The canonical plaintext of a value is exactly what Postgres's `<type>send`
//! returns for it, so text and binary input of the same value encrypt to the
//! same bytes.

use super::array;
use super::datetime;
use super::error::TypeError;
use super::float::{float_in, float_out, float_recv, FloatWidth};
use super::int::{bool_in, bool_out, bool_recv, int_in, int_out, int_recv, IntWidth};
use super::json;
use super::logical::LogicalType;
use super::numeric;
use super::session::SessionFormat;
use super::text::{bytea_in, bytea_out, chars_recv, utf8};
use super::uuid;

impl LogicalType {
    /// Parses the text input form of a value as Postgres does for this type
    /// and returns its canonical binary form (what `<type>send` would
    /// return). `fmt` matters for date/time input (`DateStyle` order and
    /// the `TimeZone` of timestamptz values given without a zone).
    ///
    /// Errors carry Postgres's SQLSTATE and never include the value.
    pub fn text_to_binary(&self, text: &[u8], fmt: &SessionFormat) -> Result<Vec<u8>, TypeError> {
        let s = utf8(text, &self.name())?;
        match self {
            LogicalType::Text | LogicalType::Varchar | LogicalType::Bpchar => Ok(text.to_vec()),
            LogicalType::Bytea => bytea_in(text),
            LogicalType::Bool => bool_in(s),
            LogicalType::Int2 => int_in(s, IntWidth::Int2),
            LogicalType::Int4 => int_in(s, IntWidth::Int4),
            LogicalType::Int8 => int_in(s, IntWidth::Int8),
            LogicalType::Float4 => float_in(s, FloatWidth::Float4),
            LogicalType::Float8 => float_in(s, FloatWidth::Float8),
            LogicalType::Numeric => numeric::numeric_in(s),
            LogicalType::Date => datetime::date_in(s, fmt),
            LogicalType::Time => datetime::time_in(s, fmt),
            LogicalType::Timestamp => datetime::timestamp_in(s, fmt),
            LogicalType::Timestamptz => datetime::timestamptz_in(s, fmt),
            LogicalType::Uuid => uuid::uuid_in(s),
            LogicalType::Json => json::json_in(text),
            LogicalType::Jsonb => json::jsonb_in(text),
            LogicalType::Array(element) => {
                nested_array_check(element)?;
                array::array_in(text, element, fmt)
            }
        }
    }

    /// Writes a binary value as Postgres's text output would under the
    /// session's settings (`TimeZone`, `DateStyle`, `extra_float_digits`,
    /// `bytea_output`). Any binary value Postgres would accept is accepted,
    /// canonical or not.
    pub fn binary_to_text(&self, bin: &[u8], fmt: &SessionFormat) -> Result<Vec<u8>, TypeError> {
        let text = match self {
            LogicalType::Text | LogicalType::Varchar | LogicalType::Bpchar => {
                return chars_recv(bin, &self.name())
            }
            LogicalType::Bytea => bytea_out(bin, fmt.bytea_output),
            LogicalType::Bool => bool_out(bin)?,
            LogicalType::Int2 => int_out(bin, IntWidth::Int2)?,
            LogicalType::Int4 => int_out(bin, IntWidth::Int4)?,
            LogicalType::Int8 => int_out(bin, IntWidth::Int8)?,
            LogicalType::Float4 => float_out(bin, FloatWidth::Float4, fmt.extra_float_digits)?,
            LogicalType::Float8 => float_out(bin, FloatWidth::Float8, fmt.extra_float_digits)?,
            LogicalType::Numeric => numeric::numeric_out(bin)?,
            LogicalType::Date => datetime::date_out(bin, fmt)?,
            LogicalType::Time => datetime::time_out(bin)?,
            LogicalType::Timestamp => datetime::timestamp_out(bin, fmt)?,
            LogicalType::Timestamptz => datetime::timestamptz_out(bin, fmt)?,
            LogicalType::Uuid => uuid::uuid_out(bin)?,
            LogicalType::Json => return json::json_recv(bin),
            LogicalType::Jsonb => json::jsonb_out(bin)?,
            LogicalType::Array(element) => {
                nested_array_check(element)?;
                return array::array_out(bin, element, fmt);
            }
        };
        Ok(text.into_bytes())
    }

    /// Validates a client-sent binary value the way the type's `<type>recv`
    /// would, so garbage is refused before it is encrypted.
    pub fn check_binary(&self, bin: &[u8]) -> Result<(), TypeError> {
        self.canonical_binary(bin).map(drop)
    }

    /// Validates a client-sent binary value and returns its canonical form:
    /// what Postgres would send back after receiving it (`<type>send` of
    /// `<type>recv`). Most types are already canonical; `bool` (any
    /// non-zero byte is true), `numeric` (extra zero digits, digits hidden
    /// by the scale), `jsonb` (spacing, key order, duplicate keys) and
    /// arrays (empty dimensions, has-null flag, their elements) are
    /// normalised. Encrypt this, not the bytes as received, so equal values
    /// encrypt equally in deterministic mode.
    pub fn canonical_binary(&self, bin: &[u8]) -> Result<Vec<u8>, TypeError> {
        match self {
            LogicalType::Text | LogicalType::Varchar | LogicalType::Bpchar => {
                chars_recv(bin, &self.name())
            }
            LogicalType::Bytea => Ok(bin.to_vec()),
            LogicalType::Bool => bool_recv(bin),
            LogicalType::Int2 => int_recv(bin, IntWidth::Int2),
            LogicalType::Int4 => int_recv(bin, IntWidth::Int4),
            LogicalType::Int8 => int_recv(bin, IntWidth::Int8),
            LogicalType::Float4 => float_recv(bin, FloatWidth::Float4),
            LogicalType::Float8 => float_recv(bin, FloatWidth::Float8),
            LogicalType::Numeric => numeric::numeric_recv(bin),
            LogicalType::Date => datetime::date_recv(bin),
            LogicalType::Time => datetime::time_recv(bin),
            LogicalType::Timestamp => datetime::timestamp_recv(bin, false),
            LogicalType::Timestamptz => datetime::timestamp_recv(bin, true),
            LogicalType::Uuid => uuid::uuid_recv(bin),
            LogicalType::Json => json::json_recv(bin),
            LogicalType::Jsonb => json::jsonb_recv(bin),
            LogicalType::Array(element) => {
                nested_array_check(element)?;
                array::array_recv(bin, element)
            }
        }
    }
}

/// `LogicalType::parse` never builds arrays of arrays (Postgres arrays are
/// multi-dimensional instead); refuse one built by hand.
fn nested_array_check(element: &LogicalType) -> Result<(), TypeError> {
    if matches!(element, LogicalType::Array(_)) {
        return Err(TypeError::unsupported(
            "arrays of arrays are not a Postgres type; use a multi-dimensional array",
        ));
    }
    Ok(())
}
