//! COPY data: formats, row splitting, field codecs and the COPY FROM STDIN
//! row filter. Pure code, no I/O.
//!
//! The proxy must look inside `COPY … FROM STDIN` data to keep rows in
//! their tenant's region and to encrypt classified columns, and
//! inside `COPY … TO STDOUT` data to decrypt them. This module reads and
//! writes that data in the three formats exactly as Postgres does:
//!
//! - [`CopyFormat`]: the format and options of a COPY statement
//!   ([`parse_copy`] reads them from the statement text);
//! - [`RowSplitter`]: CopyData payloads in, complete rows out, whatever the
//!   message boundaries, with bounded memory;
//! - [`CopyFormat::decode_row`] / [`CopyFormat::encode_row`]: a row to
//!   fields (`None` = NULL) and back, round trips exact;
//! - [`CopyInFilter`]: the per-row pipeline the frontend drives (COPY FROM
//!   data from the client, COPY TO data from the server).
//!
//! Malformed data is an error with SQLSTATE 22P04 whose message names the
//! row number and the problem, never the data; nothing here panics on
//! client input.

mod codec;
mod error;
mod filter;
mod format;
mod split;

#[cfg(test)]
mod tests;

pub use codec::{Fields, BINARY_TRAILER};
pub use error::{CopyError, BAD_COPY_FILE_FORMAT};
pub use filter::{CopyInFilter, CopyRow};
pub use format::{
    parse_copy, ColumnFlags, ColumnSet, CopyFormat, CopyStatement, Direction, FormatKind,
};
pub use split::{Item, RowSplitter, BINARY_SIGNATURE, DEFAULT_MAX_ROW};
