//! Logical types of classified columns: what the application sees, while
//! the database stores ciphertext. The canonical plaintext that gets
//! encrypted is the Postgres *binary* encoding of the logical type, so a value
//! sent in text format and the same value sent in binary format encrypt to
//! the same bytes (deterministic mode relies on this).
//!
//! [`LogicalType::text_to_binary`] reads text input as Postgres does,
//! [`LogicalType::binary_to_text`] writes Postgres's text output under the
//! client session's [`SessionFormat`], and [`LogicalType::canonical_binary`]
//! checks and normalises binary input. One file per concern: `int`,
//! `float`, `numeric`, `text` (character types and bytea), `uuid`, `json`,
//! `datetime/`, `array`, `session`, `error`; `codec` dispatches.
//!
//! The reference is Postgres 15, and `tests/types_vs_postgres.rs` checks
//! these conversions against a real server. Where the proxy cannot
//! reproduce what Postgres would do it refuses with SQLSTATE 0A000 rather
//! than encrypt a different value. Known differences:
//!
//! - Date/time input: relative words (`now`, `today`, …), Julian dates,
//!   ISO field labels, day-of-year, run-together times with fractions or
//!   zones, date-dependent zone abbreviations (`MSK`, …), and
//!   `infinity`/`epoch` combined with other fields are refused. Some odd
//!   POSIX zone spellings Postgres accepts in input (`Z8PST`) are refused
//!   as unknown zones (22023).
//! - `timestamptz` text output supports `DateStyle` ISO only (date,
//!   timestamp and time support all four styles); other styles need zone
//!   abbreviations and are refused.
//! - Float input in hexadecimal (`0x1p3`, accepted by `strtod`) is refused.
//! - `json`/`jsonb` nesting depth is unlimited (Postgres stops at its stack
//!   depth limit), so very deep documents Postgres would refuse are
//!   accepted.
//! - Time zone rules come from `jiff`'s bundled IANA database, which may be
//!   a different release from the server's; historical or future rules that
//!   changed between releases can render differently.
//! - `extra_float_digits` and `bytea_output` are not reported by
//!   ParameterStatus: feed them to [`SessionFormat::set`] from the startup
//!   packet and `SET`.

mod array;
mod codec;
mod datetime;
mod error;
mod float;
mod int;
mod json;
mod logical;
mod numeric;
#[cfg(test)]
mod proptests;
mod session;
mod text;
mod uuid;

pub use array::binary_one_dim;
pub use error::{sqlstate, TypeError};
pub use logical::LogicalType;
pub use session::{ByteaOutput, DateOrder, DateOutput, SessionFormat, SessionTimeZone};
