//! The COPY row pipeline: CopyData payloads in, checked (and possibly
//! rewritten) rows out. Built for COPY FROM STDIN (the client's data); the
//! same filter runs over a COPY TO STDOUT's data from the server, whose
//! rows are decrypted on their way to the client (text/CSV output never
//! holds an end marker; the binary trailer ends it as in COPY FROM).
//!
//! The filter splits the client's payloads into rows, decodes each row for
//! the caller, and re-encodes the rows the caller hands back. The server
//! therefore only ever parses rows the proxy wrote itself from the fields
//! it checked: even if the proxy read some odd input differently from
//! Postgres, what Postgres stores is what the proxy checked. Headers and
//! the binary file header are passed on; the end-of-data marker and
//! anything after it are not (the client's CopyDone ends the data).
//!
//! The caller drives it, so per-row work may be asynchronous:
//!
//! ```text
//! filter.push(payload)?;
//! while let Some(mut row) = filter.next_row()? {
//!     check(&row).await?;               // e.g. the row's tenant
//!     rewrite(&mut row.fields)?;        // e.g. encrypt classified fields
//!     filter.write_row(&row)?;
//! }
//! if let Some(bytes) = filter.take_output() { forward CopyData(bytes) }
//! ```

use super::codec::{Fields, BINARY_TRAILER};
use super::error::CopyError;
use super::format::{CopyFormat, FormatKind};
use super::split::{Item, RowSplitter};
use bytes::{Bytes, BytesMut};

/// One data row on its way through the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRow {
    /// 1-based number of the data row (the header line is not counted).
    pub number: u64,
    pub fields: Fields,
}

/// Splits, decodes and re-encodes the rows of one `COPY … FROM STDIN`.
pub struct CopyInFilter {
    format: CopyFormat,
    splitter: RowSplitter,
    /// The number of fields every row must have, when known.
    expected_fields: Option<usize>,
    out: BytesMut,
}

impl CopyInFilter {
    /// A filter for data in `format` (with its column flags bound), whose
    /// rows must have `expected_fields` fields when given, holding at most
    /// `max_row` bytes of an incomplete row.
    pub fn new(format: CopyFormat, expected_fields: Option<usize>, max_row: usize) -> Self {
        CopyInFilter {
            splitter: RowSplitter::new(&format, max_row),
            format,
            expected_fields,
            out: BytesMut::new(),
        }
    }

    pub fn format(&self) -> &CopyFormat {
        &self.format
    }

    /// Adds the payload of one CopyData message.
    pub fn push(&mut self, payload: &[u8]) {
        self.splitter.push(payload);
    }

    /// The client sent CopyDone: what is left is the last row.
    pub fn end_of_input(&mut self) {
        self.splitter.end_of_input();
    }

    /// Whether the end of the data was seen.
    pub fn ended(&self) -> bool {
        self.splitter.ended()
    }

    /// The next complete data row, decoded; `None` when more input is
    /// needed or the data ended. Header lines and the binary header go to
    /// the output on the way.
    pub fn next_row(&mut self) -> Result<Option<CopyRow>, CopyError> {
        loop {
            match self.splitter.next_item()? {
                None => return Ok(None),
                Some(Item::BinaryHeader(h)) => self.out.extend_from_slice(&h),
                Some(Item::Header(line)) => {
                    let fields = self.format.decode_header(&line)?;
                    self.format.encode_header(&fields, &mut self.out)?;
                }
                Some(Item::End) => {
                    if self.format.kind == FormatKind::Binary {
                        self.out.extend_from_slice(&BINARY_TRAILER);
                    }
                }
                Some(Item::Row(raw)) => {
                    let number = self.splitter.rows();
                    let fields = self
                        .format
                        .decode_row(&raw)
                        .map_err(|e| e.context(format_args!("data row {number}")))?;
                    if let Some(n) = self.expected_fields {
                        if fields.len() != n {
                            return Err(CopyError::bad_format(format!(
                                "data row {number} has {} fields, expected {n}",
                                fields.len()
                            )));
                        }
                    }
                    return Ok(Some(CopyRow { number, fields }));
                }
            }
        }
    }

    /// Encodes a row (as returned by [`Self::next_row`], possibly changed)
    /// into the output.
    pub fn write_row(&mut self, row: &CopyRow) -> Result<(), CopyError> {
        self.format
            .encode_row(&row.fields, &mut self.out)
            .map_err(|e| e.context(format_args!("data row {}", row.number)))
    }

    /// The bytes to forward as one CopyData payload, if any.
    pub fn take_output(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Runs every complete row through `hook` (which may change the fields
    /// or refuse the row) and writes it: the synchronous form of the loop
    /// above.
    pub fn process<E: From<CopyError>>(
        &mut self,
        mut hook: impl FnMut(&mut CopyRow) -> Result<(), E>,
    ) -> Result<(), E> {
        while let Some(mut row) = self.next_row()? {
            hook(&mut row)?;
            self.write_row(&row)?;
        }
        Ok(())
    }
}
