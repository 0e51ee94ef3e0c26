//! Splitting a COPY data stream into rows, whatever the CopyData message
//! boundaries: a row may span many messages and a message may hold many
//! rows.
//!
//! Text and CSV lines are found exactly as Postgres' `CopyReadLineText`
//! finds them (backslash escapes in text, quoted fields with newlines in
//! CSV, the end-of-data marker `\.`, the newline style fixed by the first
//! line), so a row boundary the proxy sees is a row boundary the server
//! sees. The scan state is kept between messages, so a long row arriving
//! in small pieces is scanned once. Binary data is split into the file
//! header, tuples and the trailer.
//!
//! Memory is bounded: a row that grows past `max_row` bytes is an error
//! (54000) instead of an ever-growing buffer.

use super::error::{CopyError, PROGRAM_LIMIT_EXCEEDED};
use super::format::{CopyFormat, FormatKind};
use bytes::{Bytes, BytesMut};

/// The 11-byte signature that starts binary COPY data.
pub const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// A default bound on one row (or the binary header) held by the proxy.
pub const DEFAULT_MAX_ROW: usize = 64 << 20;

/// One piece of the COPY stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The binary file header: signature, flags, extension area (verbatim).
    BinaryHeader(Bytes),
    /// The HEADER line of text/CSV data, without its line ending.
    Header(Bytes),
    /// A data row: a text/CSV line without its line ending, or a binary
    /// tuple (field count and fields).
    Row(Bytes),
    /// The end of the data: the `\.` marker, the binary trailer, or the end
    /// of the input. Nothing after it is data.
    End,
}

/// Line ending style; Postgres fixes it with the first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Unknown,
    Nl,
    Cr,
    CrNl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    BinaryHeader,
    Header,
    Rows,
    Ended,
}

/// What scanning the buffered text found.
enum Line {
    /// A line: its content ends at `content`, its line ending at `consumed`.
    Complete { content: usize, consumed: usize },
    /// The `\.` marker.
    EndMarker,
    /// The input ended with no more data.
    EndOfInput,
}

/// Cuts a stream of CopyData payloads into [`Item`]s.
pub struct RowSplitter {
    kind: FormatKind,
    quote: u8,
    /// CSV escape character when it differs from the quote.
    escape: Option<u8>,
    /// Unconsumed input; always starts at a row boundary.
    buf: BytesMut,
    /// Text/CSV: how far the current line has been scanned, and the CSV
    /// quoting state at that point.
    scan: usize,
    in_quote: bool,
    last_was_esc: bool,
    eol: Eol,
    phase: Phase,
    /// No more input will come (CopyDone).
    input_done: bool,
    max_row: usize,
    rows: u64,
}

fn eol_error(csv: bool, cr: bool) -> CopyError {
    let (message, hint) = match (csv, cr) {
        (false, true) => (
            "literal carriage return found in data",
            "Use \"\\r\" to represent carriage return.",
        ),
        (true, true) => (
            "unquoted carriage return found in data",
            "Use quoted CSV field to represent carriage return.",
        ),
        (false, false) => (
            "literal newline found in data",
            "Use \"\\n\" to represent newline.",
        ),
        (true, false) => (
            "unquoted newline found in data",
            "Use quoted CSV field to represent newline.",
        ),
    };
    CopyError::bad_format(message).with_hint(hint)
}

fn too_large(max: usize) -> CopyError {
    CopyError {
        code: PROGRAM_LIMIT_EXCEEDED,
        message: format!("a COPY row is larger than RegionGuard's limit of {max} bytes"),
        hint: Some("split the data into smaller rows, or load such rows directly into the region's database".into()),
    }
}

impl RowSplitter {
    /// A splitter for data in `format`, holding at most `max_row` bytes of
    /// an incomplete row.
    pub fn new(format: &CopyFormat, max_row: usize) -> Self {
        RowSplitter {
            kind: format.kind,
            quote: format.quote,
            escape: (format.escape != format.quote).then_some(format.escape),
            buf: BytesMut::new(),
            scan: 0,
            in_quote: false,
            last_was_esc: false,
            eol: Eol::Unknown,
            phase: match format.kind {
                FormatKind::Binary => Phase::BinaryHeader,
                _ if format.header => Phase::Header,
                _ => Phase::Rows,
            },
            input_done: false,
            max_row,
            rows: 0,
        }
    }

    /// Adds the payload of one CopyData message.
    pub fn push(&mut self, data: &[u8]) {
        if self.phase == Phase::Ended && self.kind != FormatKind::Binary {
            // Postgres reads and ignores what follows `\.`.
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// No more data will come (the client sent CopyDone): the last line
    /// may end without a newline.
    pub fn end_of_input(&mut self) {
        self.input_done = true;
    }

    /// Data rows returned so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the end of the data was reached.
    pub fn ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// The next complete item, `None` when more input is needed (or after
    /// [`Item::End`]).
    pub fn next_item(&mut self) -> Result<Option<Item>, CopyError> {
        match self.phase {
            Phase::Ended => {
                if self.kind == FormatKind::Binary && !self.buf.is_empty() {
                    return Err(CopyError::bad_format("received copy data after EOF marker"));
                }
                self.buf.clear();
                Ok(None)
            }
            Phase::BinaryHeader => self.binary_header(),
            Phase::Rows if self.kind == FormatKind::Binary => self.binary_tuple(),
            Phase::Header | Phase::Rows => {
                let line = match self.scan_line()? {
                    None => return Ok(None),
                    Some(line) => line,
                };
                match line {
                    Line::EndMarker | Line::EndOfInput => {
                        self.phase = Phase::Ended;
                        self.buf.clear();
                        Ok(Some(Item::End))
                    }
                    Line::Complete { content, consumed } => {
                        let bytes = self.buf.split_to(consumed).freeze().slice(..content);
                        self.scan = 0;
                        self.in_quote = false;
                        self.last_was_esc = false;
                        if self.phase == Phase::Header {
                            self.phase = Phase::Rows;
                            Ok(Some(Item::Header(bytes)))
                        } else {
                            self.rows += 1;
                            Ok(Some(Item::Row(bytes)))
                        }
                    }
                }
            }
        }
    }

    /// Finds the end of the line at the start of the buffer, resuming the
    /// scan where the previous call stopped. Mirrors `CopyReadLineText`.
    fn scan_line(&mut self) -> Result<Option<Line>, CopyError> {
        let csv = self.kind == FormatKind::Csv;
        let len = self.buf.len();
        let eof = self.input_done;
        let mut i = self.scan;
        loop {
            if i >= len {
                if eof {
                    return Ok(Some(if len == 0 {
                        Line::EndOfInput
                    } else {
                        Line::Complete {
                            content: len,
                            consumed: len,
                        }
                    }));
                }
                return self.need_more(i);
            }
            let c = self.buf[i];
            // Look far enough ahead to decide without undoing state
            // changes: `\.` plus a line ending is at most 4 bytes.
            let ahead = match c {
                b'\\' => 3,
                b'\r' => 1,
                _ => 0,
            };
            if !eof && i + ahead >= len {
                return self.need_more(i);
            }
            let at = |k: usize| self.buf.get(k).copied().unwrap_or(0);
            if csv {
                if self.in_quote && Some(c) == self.escape {
                    self.last_was_esc = !self.last_was_esc;
                }
                if c == self.quote && !self.last_was_esc {
                    self.in_quote = !self.in_quote;
                }
                if Some(c) != self.escape {
                    self.last_was_esc = false;
                }
            }
            if c == b'\r' && (!csv || !self.in_quote) {
                return match self.eol {
                    Eol::Unknown | Eol::CrNl => {
                        if at(i + 1) == b'\n' {
                            self.eol = Eol::CrNl;
                            Ok(Some(Line::Complete {
                                content: i,
                                consumed: i + 2,
                            }))
                        } else if self.eol == Eol::CrNl {
                            Err(eol_error(csv, true))
                        } else {
                            self.eol = Eol::Cr;
                            Ok(Some(Line::Complete {
                                content: i,
                                consumed: i + 1,
                            }))
                        }
                    }
                    Eol::Nl => Err(eol_error(csv, true)),
                    Eol::Cr => Ok(Some(Line::Complete {
                        content: i,
                        consumed: i + 1,
                    })),
                };
            }
            if c == b'\n' && (!csv || !self.in_quote) {
                if matches!(self.eol, Eol::Cr | Eol::CrNl) {
                    return Err(eol_error(csv, false));
                }
                self.eol = Eol::Nl;
                return Ok(Some(Line::Complete {
                    content: i,
                    consumed: i + 1,
                }));
            }
            if c == b'\\' && (!csv || i == 0) {
                if i + 1 >= len {
                    // A backslash just before the end of the input is data.
                    return Ok(Some(Line::Complete {
                        content: len,
                        consumed: len,
                    }));
                }
                if at(i + 1) == b'.' {
                    match self.end_marker(i, csv)? {
                        true if i == 0 => return Ok(Some(Line::EndMarker)),
                        true => {
                            // Postgres before 18 takes the text before it as
                            // a last line, 18 refuses it: refuse everywhere.
                            return Err(CopyError::bad_format(
                                "end-of-copy marker is not alone on its line",
                            ));
                        }
                        // CSV: `\.` followed by more text is data.
                        false => {
                            i += 1;
                            continue;
                        }
                    }
                } else if !csv {
                    // In text, the character after a backslash is never
                    // special (not even a newline): skip it.
                    i += 2;
                    continue;
                }
            }
            i += 1;
        }
    }

    /// `\.` at `i`: whether it is the end-of-data marker (true) or, in CSV,
    /// data (false). Malformed markers in text are errors, as in Postgres.
    fn end_marker(&self, i: usize, csv: bool) -> Result<bool, CopyError> {
        let at = |k: usize| self.buf.get(k).copied().unwrap_or(0);
        let corrupt = || CopyError::bad_format("end-of-copy marker corrupt");
        let style =
            || CopyError::bad_format("end-of-copy marker does not match previous newline style");
        let mut j = i + 2;
        if self.eol == Eol::CrNl {
            let c = at(j);
            j += 1;
            if c == b'\n' {
                return if csv { Ok(false) } else { Err(style()) };
            }
            if c != b'\r' {
                return if csv { Ok(false) } else { Err(corrupt()) };
            }
        }
        let c = at(j);
        if c != b'\r' && c != b'\n' {
            return if csv { Ok(false) } else { Err(corrupt()) };
        }
        let mismatch = match self.eol {
            Eol::Nl | Eol::CrNl => c != b'\n',
            Eol::Cr => c != b'\r',
            Eol::Unknown => false,
        };
        if mismatch {
            return Err(style());
        }
        Ok(true)
    }

    /// More input is needed; remembers how far the scan got.
    fn need_more<T>(&mut self, scanned: usize) -> Result<Option<T>, CopyError> {
        if self.buf.len() > self.max_row {
            return Err(too_large(self.max_row));
        }
        self.scan = scanned;
        Ok(None)
    }

    fn binary_header(&mut self) -> Result<Option<Item>, CopyError> {
        let buf = &self.buf;
        let have = buf.len();
        let sig = have.min(BINARY_SIGNATURE.len());
        if buf[..sig] != BINARY_SIGNATURE[..sig] {
            return Err(CopyError::bad_format("COPY file signature not recognized"));
        }
        let incomplete = |what: &str| -> Result<Option<Item>, CopyError> {
            Err(CopyError::bad_format(what.to_string()))
        };
        if have < 19 {
            if !self.input_done {
                return Ok(None);
            }
            return match have {
                0..=10 => incomplete("COPY file signature not recognized"),
                11..=14 => incomplete("invalid COPY file header (missing flags)"),
                _ => incomplete("invalid COPY file header (missing length)"),
            };
        }
        let flags = i32::from_be_bytes([buf[11], buf[12], buf[13], buf[14]]);
        if flags & (1 << 16) != 0 {
            return Err(CopyError::bad_format(
                "invalid COPY file header (WITH OIDS)",
            ));
        }
        if (flags & !(1 << 16)) >> 16 != 0 {
            return Err(CopyError::bad_format(
                "unrecognized critical flags in COPY file header",
            ));
        }
        let ext = i32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]);
        let Ok(ext) = usize::try_from(ext) else {
            return Err(CopyError::bad_format(
                "invalid COPY file header (missing length)",
            ));
        };
        let total = 19usize.saturating_add(ext);
        if total > self.max_row {
            return Err(too_large(self.max_row));
        }
        if have < total {
            if self.input_done {
                return incomplete("invalid COPY file header (wrong length)");
            }
            return Ok(None);
        }
        self.phase = Phase::Rows;
        Ok(Some(Item::BinaryHeader(self.buf.split_to(total).freeze())))
    }

    fn binary_tuple(&mut self) -> Result<Option<Item>, CopyError> {
        let buf = &self.buf;
        let len = buf.len();
        let eof_inside = || CopyError::bad_format("unexpected EOF in COPY data");
        if len < 2 {
            if !self.input_done {
                return Ok(None);
            }
            if len == 0 {
                self.phase = Phase::Ended;
                return Ok(Some(Item::End));
            }
            return Err(eof_inside());
        }
        let count = i16::from_be_bytes([buf[0], buf[1]]);
        if count == -1 {
            let _ = self.buf.split_to(2);
            self.phase = Phase::Ended;
            return Ok(Some(Item::End));
        }
        if count < 0 {
            return Err(CopyError::bad_format("invalid field count in COPY data"));
        }
        let mut pos = 2usize;
        for _ in 0..count {
            let Some(l) = buf.get(pos..pos + 4) else {
                return self.tuple_incomplete();
            };
            let flen = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
            pos += 4;
            if flen == -1 {
                continue;
            }
            let Ok(flen) = usize::try_from(flen) else {
                return Err(CopyError::bad_format("invalid field size"));
            };
            pos = pos.saturating_add(flen);
            if pos > self.max_row {
                return Err(too_large(self.max_row));
            }
            if pos > len {
                return self.tuple_incomplete();
            }
        }
        self.rows += 1;
        Ok(Some(Item::Row(self.buf.split_to(pos).freeze())))
    }

    fn tuple_incomplete(&self) -> Result<Option<Item>, CopyError> {
        if self.input_done {
            return Err(CopyError::bad_format("unexpected EOF in COPY data"));
        }
        if self.buf.len() > self.max_row {
            return Err(too_large(self.max_row));
        }
        Ok(None)
    }
}
