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

pub use error::{sqlstate, TypeError};
pub use logical::LogicalType;
pub use session::{ByteaOutput, DateOrder, DateOutput, SessionFormat, SessionTimeZone};
