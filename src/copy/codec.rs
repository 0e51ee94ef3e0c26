//! Decoding a row into fields and encoding fields back into a row, in the
//! row's COPY format.
//!
//! Decoding mirrors Postgres' `CopyReadAttributesText` / `…CSV` (the null
//! marker is compared with the raw field, before unescaping; CSV's
//! FORCE_NOT_NULL / FORCE_NULL are applied per column). Encoding writes
//! what Postgres' COPY TO writes, and guarantees that decoding the result
//! gives back exactly the fields it was given — or refuses a field that the
//! format cannot represent (an empty string when NULL is `''` in text, a
//! NULL in a FORCE_NOT_NULL column), instead of changing its meaning.

use super::error::CopyError;
use super::format::{CopyFormat, FormatKind};
use super::split::BINARY_SIGNATURE;
use bytes::BytesMut;

/// The fields of one row: `None` is SQL NULL. Text/CSV fields hold the
/// type's text representation (unescaped); binary fields hold the type's
/// binary representation.
pub type Fields = Vec<Option<Vec<u8>>>;

/// The binary trailer: a field count of -1.
pub const BINARY_TRAILER: [u8; 2] = [0xff, 0xff];

fn unrepresentable(message: &str) -> CopyError {
    CopyError::bad_format(format!(
        "a value cannot be represented in this COPY format: {message}"
    ))
}

impl CopyFormat {
    /// The fields of a data row (a line without its ending, or a binary tuple).
    pub fn decode_row(&self, row: &[u8]) -> Result<Fields, CopyError> {
        match self.kind {
            FormatKind::Text => Ok(self.decode_text(row)),
            FormatKind::Csv => self.decode_csv(row, true),
            FormatKind::Binary => decode_binary(row),
        }
    }

    /// The fields of a HEADER line (no per-column options apply).
    pub fn decode_header(&self, line: &[u8]) -> Result<Fields, CopyError> {
        match self.kind {
            FormatKind::Text => Ok(self.decode_text(line)),
            FormatKind::Csv => self.decode_csv(line, false),
            FormatKind::Binary => Err(CopyError::bad_format("binary COPY has no header line")),
        }
    }

    /// Appends one data row, with its line ending (text/CSV: `\n`).
    pub fn encode_row<F: AsRef<[u8]>>(
        &self,
        fields: &[Option<F>],
        out: &mut BytesMut,
    ) -> Result<(), CopyError> {
        match self.kind {
            FormatKind::Text => self.encode_text(fields, out),
            FormatKind::Csv => self.encode_csv(fields, out, true),
            FormatKind::Binary => encode_binary(fields, out),
        }
    }

    /// Appends a HEADER line (text/CSV).
    pub fn encode_header<F: AsRef<[u8]>>(
        &self,
        fields: &[Option<F>],
        out: &mut BytesMut,
    ) -> Result<(), CopyError> {
        match self.kind {
            FormatKind::Text => self.encode_text(fields, out),
            FormatKind::Csv => self.encode_csv(fields, out, false),
            FormatKind::Binary => Err(CopyError::bad_format("binary COPY has no header line")),
        }
    }

    /// Appends the binary file header Postgres writes (no flags, no extension).
    pub fn encode_binary_header(out: &mut BytesMut) {
        out.extend_from_slice(BINARY_SIGNATURE);
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
    }

    fn decode_text(&self, line: &[u8]) -> Fields {
        let delim = self.delimiter;
        let len = line.len();
        let mut fields = Vec::new();
        let mut pos = 0;
        loop {
            let start = pos;
            let mut end;
            let mut value = Vec::new();
            let mut found_delim = false;
            loop {
                end = pos;
                let Some(&c) = line.get(pos) else { break };
                pos += 1;
                if c == delim {
                    found_delim = true;
                    break;
                }
                if c != b'\\' {
                    value.push(c);
                    continue;
                }
                // A backslash at the very end of the line is dropped.
                let Some(&c) = line.get(pos) else { break };
                pos += 1;
                let byte = match c {
                    b'0'..=b'7' => {
                        let mut v = u32::from(c - b'0');
                        for _ in 0..2 {
                            match line.get(pos) {
                                Some(&d @ b'0'..=b'7') => {
                                    v = (v << 3) + u32::from(d - b'0');
                                    pos += 1;
                                }
                                _ => break,
                            }
                        }
                        (v & 0xff) as u8
                    }
                    b'x' => match line.get(pos).and_then(|&h| hex(h)) {
                        Some(h1) => {
                            pos += 1;
                            match line.get(pos).and_then(|&h| hex(h)) {
                                Some(h2) => {
                                    pos += 1;
                                    (h1 << 4) | h2
                                }
                                None => h1,
                            }
                        }
                        None => b'x',
                    },
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 0x0b,
                    other => other,
                };
                value.push(byte);
            }
            let raw = &line[start..end];
            fields.push((raw != self.null.as_slice()).then_some(value));
            if !found_delim || pos > len {
                break;
            }
        }
        fields
    }

    fn decode_csv(&self, line: &[u8], apply_flags: bool) -> Result<Fields, CopyError> {
        let (delim, quote, escape) = (self.delimiter, self.quote, self.escape);
        let mut fields = Vec::new();
        let mut pos = 0;
        loop {
            let start = pos;
            let mut end;
            let mut value = Vec::new();
            let mut saw_quote = false;
            let mut found_delim = false;
            'field: loop {
                // Outside quotes.
                loop {
                    end = pos;
                    let Some(&c) = line.get(pos) else {
                        break 'field;
                    };
                    pos += 1;
                    if c == delim {
                        found_delim = true;
                        break 'field;
                    }
                    if c == quote {
                        saw_quote = true;
                        break;
                    }
                    value.push(c);
                }
                // Inside quotes.
                loop {
                    let Some(&c) = line.get(pos) else {
                        return Err(CopyError::bad_format("unterminated CSV quoted field"));
                    };
                    pos += 1;
                    if c == escape {
                        if let Some(&next) = line.get(pos) {
                            if next == escape || next == quote {
                                value.push(next);
                                pos += 1;
                                continue;
                            }
                        }
                    }
                    if c == quote {
                        break;
                    }
                    value.push(c);
                }
            }
            let raw = &line[start..end];
            let mut field = (saw_quote || raw != self.null.as_slice()).then_some(value);
            if apply_flags {
                let flags = self.flags(fields.len());
                match &field {
                    None if flags.force_not_null => field = Some(self.null.clone()),
                    Some(v) if flags.force_null && *v == self.null => field = None,
                    _ => {}
                }
            }
            fields.push(field);
            if !found_delim {
                break;
            }
        }
        Ok(fields)
    }

    fn encode_text<F: AsRef<[u8]>>(
        &self,
        fields: &[Option<F>],
        out: &mut BytesMut,
    ) -> Result<(), CopyError> {
        if fields.is_empty() {
            return Err(unrepresentable("a text row needs at least one field"));
        }
        let delim = self.delimiter;
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(&[delim]);
            }
            let Some(value) = field else {
                out.extend_from_slice(&self.null);
                continue;
            };
            let value = value.as_ref();
            let start = out.len();
            escape_text(value, delim, out);
            if out[start..] == self.null[..] {
                // The value would read back as NULL: write its first byte
                // as an octal escape, which never matches the raw marker.
                let Some((&first, rest)) = value.split_first() else {
                    return Err(unrepresentable(
                        "an empty string when the NULL string is empty",
                    ));
                };
                out.truncate(start);
                out.extend_from_slice(&[
                    b'\\',
                    b'0' + (first >> 6),
                    b'0' + ((first >> 3) & 7),
                    b'0' + (first & 7),
                ]);
                escape_text(rest, delim, out);
            }
        }
        out.extend_from_slice(b"\n");
        Ok(())
    }

    fn encode_csv<F: AsRef<[u8]>>(
        &self,
        fields: &[Option<F>],
        out: &mut BytesMut,
        apply_flags: bool,
    ) -> Result<(), CopyError> {
        if fields.is_empty() {
            return Err(unrepresentable("a CSV row needs at least one field"));
        }
        let (delim, quote, escape) = (self.delimiter, self.quote, self.escape);
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(&[delim]);
            }
            let flags = if apply_flags {
                self.flags(i)
            } else {
                Default::default()
            };
            let Some(value) = field else {
                if flags.force_not_null {
                    return Err(unrepresentable("NULL in a FORCE_NOT_NULL column"));
                }
                out.extend_from_slice(&self.null);
                continue;
            };
            let value = value.as_ref();
            let is_null_text = value == self.null.as_slice();
            if flags.force_null && is_null_text {
                return Err(unrepresentable(
                    "the NULL string as a value of a FORCE_NULL column",
                ));
            }
            let needs_quotes = flags.force_quote
                || is_null_text
                || (i == 0 && value.starts_with(b"\\."))
                || value
                    .iter()
                    .any(|&c| c == delim || c == quote || c == b'\n' || c == b'\r');
            if !needs_quotes {
                out.extend_from_slice(value);
                continue;
            }
            out.extend_from_slice(&[quote]);
            let mut run = 0;
            for (j, &c) in value.iter().enumerate() {
                if c == quote || c == escape {
                    out.extend_from_slice(&value[run..j]);
                    out.extend_from_slice(&[escape]);
                    run = j;
                }
            }
            out.extend_from_slice(&value[run..]);
            out.extend_from_slice(&[quote]);
        }
        out.extend_from_slice(b"\n");
        Ok(())
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Text-format escaping as Postgres' `CopyAttributeOutText` does it.
fn escape_text(value: &[u8], delim: u8, out: &mut BytesMut) {
    let mut run = 0;
    for (i, &c) in value.iter().enumerate() {
        let escaped = match c {
            0x08 => Some(b'b'),
            0x0c => Some(b'f'),
            b'\n' => Some(b'n'),
            b'\r' => Some(b'r'),
            b'\t' => Some(b't'),
            0x0b => Some(b'v'),
            b'\\' => Some(b'\\'),
            c if c == delim => Some(c),
            _ => None,
        };
        if let Some(e) = escaped {
            out.extend_from_slice(&value[run..i]);
            out.extend_from_slice(&[b'\\', e]);
            run = i + 1;
        }
    }
    out.extend_from_slice(&value[run..]);
}

fn decode_binary(tuple: &[u8]) -> Result<Fields, CopyError> {
    let bad = || CopyError::bad_format("malformed binary COPY tuple");
    let count = tuple
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(bad)?;
    let count = usize::try_from(count).map_err(|_| bad())?;
    let mut fields = Vec::with_capacity(count);
    let mut pos = 2usize;
    for _ in 0..count {
        let l = tuple.get(pos..pos + 4).ok_or_else(bad)?;
        let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
        pos += 4;
        if len == -1 {
            fields.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| CopyError::bad_format("invalid field size"))?;
        let end = pos.checked_add(len).ok_or_else(bad)?;
        fields.push(Some(tuple.get(pos..end).ok_or_else(bad)?.to_vec()));
        pos = end;
    }
    if pos != tuple.len() {
        return Err(bad());
    }
    Ok(fields)
}

fn encode_binary<F: AsRef<[u8]>>(
    fields: &[Option<F>],
    out: &mut BytesMut,
) -> Result<(), CopyError> {
    let count = i16::try_from(fields.len())
        .map_err(|_| unrepresentable("more than 32767 fields in a binary row"))?;
    out.extend_from_slice(&count.to_be_bytes());
    for field in fields {
        match field {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                let v = v.as_ref();
                let len = i32::try_from(v.len())
                    .map_err(|_| unrepresentable("a binary field over 2 GiB"))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    Ok(())
}
