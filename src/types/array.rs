//! Arrays of the scalar logical types: Postgres's text form (`array_in` /
//! `array_out`: braces, quoting, backslash escapes, `NULL`, optional
//! `[lb:ub]=` dimension decoration) and binary form (`array_recv` /
//! `array_send`: ndim, has-null flag, element OID, dimensions and lower
//! bounds, then length-prefixed elements).
//!
//! Elements are converted with the element type's own conversions, so an
//! array's canonical binary form holds canonical elements.

use super::error::{sqlstate, TypeError};
use super::logical::LogicalType;
use super::session::SessionFormat;
use super::text::is_pg_space;

/// Postgres's `MAXDIM`.
const MAXDIM: usize = 6;
/// Postgres's `MaxArraySize` (elements).
const MAX_ARRAY_SIZE: i64 = 0x3fff_ffff / 8;

/// A decoded array: dimensions as (length, lower bound), elements in row-major
/// order as canonical element binaries (`None` for NULL).
struct Array {
    dims: Vec<(i32, i32)>,
    items: Vec<Option<Vec<u8>>>,
}

fn malformed() -> TypeError {
    TypeError::new(
        sqlstate::INVALID_TEXT_REPRESENTATION,
        "malformed array literal",
    )
}

fn too_many_dims() -> TypeError {
    TypeError::new(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!("number of array dimensions exceeds the maximum allowed ({MAXDIM})"),
    )
}

impl Array {
    fn encode(&self, element_oid: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let has_null = self.items.iter().any(Option::is_none);
        out.extend_from_slice(&(self.dims.len() as i32).to_be_bytes());
        out.extend_from_slice(&i32::from(has_null).to_be_bytes());
        out.extend_from_slice(&element_oid.to_be_bytes());
        for (len, lbound) in &self.dims {
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&lbound.to_be_bytes());
        }
        for item in &self.items {
            match item {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(bytes) => {
                    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                    out.extend_from_slice(bytes);
                }
            }
        }
        out
    }

    /// `array_recv` with its checks; elements are canonicalised.
    fn decode(bin: &[u8], element: &LogicalType) -> Result<Array, TypeError> {
        let bad = |what| TypeError::binary("array", what);
        let mut pos = 0;
        let int = |pos: &mut usize| -> Result<i32, TypeError> {
            let bytes = bin
                .get(*pos..*pos + 4)
                .ok_or_else(|| bad("insufficient data left in message"))?;
            *pos += 4;
            Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        };
        let ndim = int(&mut pos)?;
        if ndim < 0 {
            return Err(bad("invalid number of dimensions"));
        }
        if ndim as usize > MAXDIM {
            return Err(too_many_dims());
        }
        let flags = int(&mut pos)?;
        if flags != 0 && flags != 1 {
            return Err(bad("invalid array flags"));
        }
        let oid = int(&mut pos)? as u32;
        if oid != element.oid() {
            return Err(TypeError::new(
                sqlstate::DATATYPE_MISMATCH,
                format!(
                    "binary data has array element type {oid} instead of expected {} ({})",
                    element.oid(),
                    element.name()
                ),
            ));
        }
        let mut dims = Vec::with_capacity(ndim as usize);
        let mut nitems: i64 = 1;
        for _ in 0..ndim {
            let len = int(&mut pos)?;
            let lbound = int(&mut pos)?;
            let size_error = || {
                TypeError::new(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    "array size exceeds the maximum allowed",
                )
            };
            if len < 0 {
                return Err(size_error());
            }
            nitems *= i64::from(len);
            if nitems > MAX_ARRAY_SIZE {
                return Err(size_error());
            }
            if lbound.checked_add(len).is_none() {
                return Err(TypeError::new(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    "array lower bound is too large",
                ));
            }
            dims.push((len, lbound));
        }
        if ndim == 0 || nitems == 0 {
            if pos != bin.len() {
                return Err(bad("trailing data"));
            }
            return Ok(Array {
                dims: Vec::new(),
                items: Vec::new(),
            });
        }
        let mut items = Vec::new();
        for _ in 0..nitems {
            let len = int(&mut pos)?;
            if len == -1 {
                items.push(None);
                continue;
            }
            let bytes = usize::try_from(len)
                .ok()
                .and_then(|len| bin.get(pos..pos + len))
                .ok_or_else(|| bad("insufficient data left in message"))?;
            pos += bytes.len();
            items.push(Some(element.canonical_binary(bytes)?));
        }
        if pos != bin.len() {
            return Err(bad("trailing data"));
        }
        Ok(Array { dims, items })
    }
}

/// A cursor over array text.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn skip_space(&mut self) {
        while self.i < self.s.len() && is_pg_space(self.s[self.i]) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn int(&mut self) -> Result<i32, TypeError> {
        self.skip_space();
        let start = self.i;
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.i += 1;
        }
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| malformed())?;
        let value = text.parse().map_err(|_| malformed())?;
        self.skip_space();
        Ok(value)
    }

    /// `[lb:ub][lb:ub]…=`: (length, lower bound) per dimension.
    fn dimensions(&mut self) -> Result<Vec<(i32, i32)>, TypeError> {
        let mut dims = Vec::new();
        while self.peek() == Some(b'[') {
            self.i += 1;
            if dims.len() == MAXDIM {
                return Err(too_many_dims());
            }
            let first = self.int()?;
            let (lower, upper) = if self.peek() == Some(b':') {
                self.i += 1;
                (first, self.int()?)
            } else {
                (1, first)
            };
            if self.peek() != Some(b']') {
                return Err(malformed());
            }
            self.i += 1;
            if upper < lower {
                return Err(TypeError::new(
                    "2202E",
                    "upper bound cannot be less than lower bound",
                ));
            }
            let len = i64::from(upper) - i64::from(lower) + 1;
            dims.push((i32::try_from(len).map_err(|_| malformed())?, lower));
            self.skip_space();
        }
        if !dims.is_empty() {
            if self.peek() != Some(b'=') {
                return Err(malformed());
            }
            self.i += 1;
            self.skip_space();
        }
        Ok(dims)
    }

    /// One element's text: quoted (never NULL) or unquoted (trimmed;
    /// `NULL` without escapes is NULL). Leaves the cursor on `,` or `}`.
    fn element(&mut self) -> Result<Option<Vec<u8>>, TypeError> {
        let mut out = Vec::new();
        if self.peek() == Some(b'"') {
            self.i += 1;
            loop {
                match self.peek() {
                    None => return Err(malformed()),
                    Some(b'"') => {
                        self.i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let escaped = self.s.get(self.i + 1).copied().ok_or_else(malformed)?;
                        out.push(escaped);
                        self.i += 2;
                    }
                    Some(b) => {
                        out.push(b);
                        self.i += 1;
                    }
                }
            }
            self.skip_space();
            if !matches!(self.peek(), Some(b',' | b'}')) {
                return Err(malformed());
            }
            return Ok(Some(out));
        }
        // Unquoted: up to an unescaped delimiter; trailing blanks that were
        // not escaped are dropped.
        let mut keep = 0;
        let mut escaped_any = false;
        loop {
            match self.peek() {
                None | Some(b'{' | b'"') => return Err(malformed()),
                Some(b',' | b'}') => break,
                Some(b'\\') => {
                    let escaped = self.s.get(self.i + 1).copied().ok_or_else(malformed)?;
                    out.push(escaped);
                    keep = out.len();
                    escaped_any = true;
                    self.i += 2;
                }
                Some(b) => {
                    out.push(b);
                    if !is_pg_space(b) {
                        keep = out.len();
                    }
                    self.i += 1;
                }
            }
        }
        out.truncate(keep);
        if out.is_empty() {
            return Err(malformed());
        }
        if !escaped_any && out.eq_ignore_ascii_case(b"NULL") {
            return Ok(None);
        }
        Ok(Some(out))
    }
}

/// Dimensions (length, lower bound) and element texts of an array literal.
type ParsedText = (Vec<(i32, i32)>, Vec<Option<Vec<u8>>>);

/// Parses `{…}` text into dimensions and element texts.
fn parse_text(text: &[u8]) -> Result<ParsedText, TypeError> {
    let mut c = Cursor { s: text, i: 0 };
    c.skip_space();
    let explicit = c.dimensions()?;
    if c.peek() != Some(b'{') {
        return Err(malformed());
    }
    c.i += 1;
    let mut depth = 1usize;
    let mut counts = [0i64; MAXDIM + 1];
    let mut dims: [Option<i64>; MAXDIM] = [None; MAXDIM];
    let mut ndim: Option<usize> = None;
    let mut items = Vec::new();
    let mut just_opened = true;
    loop {
        c.skip_space();
        match c.peek() {
            Some(b'{') => {
                if depth == MAXDIM {
                    return Err(too_many_dims());
                }
                if ndim.is_some_and(|n| depth >= n) {
                    return Err(malformed());
                }
                c.i += 1;
                depth += 1;
                counts[depth] = 0;
                just_opened = true;
                continue;
            }
            Some(b'}') if just_opened => {
                if depth != 1 || ndim.is_some() {
                    return Err(malformed());
                }
                c.i += 1;
                c.skip_space();
                if c.i != text.len() || !explicit.is_empty() {
                    return Err(malformed());
                }
                return Ok((Vec::new(), Vec::new()));
            }
            _ => {
                if ndim.is_some_and(|n| n != depth) {
                    return Err(malformed());
                }
                ndim = Some(depth);
                items.push(c.element()?);
                counts[depth] += 1;
            }
        }
        // After an item: a comma, or closing braces.
        loop {
            c.skip_space();
            match c.peek() {
                Some(b',') => {
                    c.i += 1;
                    just_opened = false;
                    break;
                }
                Some(b'}') => {
                    c.i += 1;
                    let level = depth - 1;
                    match dims[level] {
                        Some(n) if n != counts[depth] => return Err(malformed()),
                        _ => dims[level] = Some(counts[depth]),
                    }
                    depth -= 1;
                    if depth == 0 {
                        c.skip_space();
                        if c.i != text.len() {
                            return Err(malformed());
                        }
                        let n = ndim.unwrap_or(0);
                        let mut out_dims = Vec::with_capacity(n);
                        for d in dims.iter().take(n) {
                            let len = i32::try_from(d.unwrap_or(0)).map_err(|_| malformed())?;
                            out_dims.push((len, 1));
                        }
                        if !explicit.is_empty() {
                            if explicit.len() != n
                                || explicit.iter().zip(&out_dims).any(|(e, d)| e.0 != d.0)
                            {
                                return Err(malformed());
                            }
                            out_dims = explicit;
                        }
                        return Ok((out_dims, items));
                    }
                    counts[depth] += 1;
                }
                _ => return Err(malformed()),
            }
        }
    }
}

pub(crate) fn array_in(
    text: &[u8],
    element: &LogicalType,
    fmt: &SessionFormat,
) -> Result<Vec<u8>, TypeError> {
    let (dims, texts) = parse_text(text)?;
    let items = texts
        .into_iter()
        .map(|t| t.map(|t| element.text_to_binary(&t, fmt)).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Array { dims, items }.encode(element.oid()))
}

/// `array_send`'s form of a one-dimensional array of non-NULL elements
/// (lower bound 1): how a parameter bound as `elements[]` is sent in
/// binary format.
pub fn binary_one_dim(element_oid: u32, elements: Vec<Vec<u8>>) -> Vec<u8> {
    let items: Vec<Option<Vec<u8>>> = elements.into_iter().map(Some).collect();
    Array {
        dims: vec![(items.len() as i32, 1)],
        items,
    }
    .encode(element_oid)
}

pub(crate) fn array_recv(bin: &[u8], element: &LogicalType) -> Result<Vec<u8>, TypeError> {
    Ok(Array::decode(bin, element)?.encode(element.oid()))
}

pub(crate) fn array_out(
    bin: &[u8],
    element: &LogicalType,
    fmt: &SessionFormat,
) -> Result<Vec<u8>, TypeError> {
    let array = Array::decode(bin, element)?;
    if array.dims.is_empty() {
        return Ok(b"{}".to_vec());
    }
    let mut out = Vec::new();
    if array.dims.iter().any(|(_, lb)| *lb != 1) {
        for (len, lb) in &array.dims {
            let ub = i64::from(*lb) + i64::from(*len) - 1;
            out.extend_from_slice(format!("[{lb}:{ub}]").as_bytes());
        }
        out.push(b'=');
    }
    // Row-major walk: open braces where an index rolls over.
    let lens: Vec<usize> = array.dims.iter().map(|(l, _)| *l as usize).collect();
    let mut index = vec![0usize; lens.len()];
    for (n, item) in array.items.iter().enumerate() {
        let opening = if n == 0 {
            lens.len()
        } else {
            index.iter().rev().take_while(|i| **i == 0).count()
        };
        if n > 0 {
            // Close the braces that rolled over, then separate.
            out.extend(std::iter::repeat_n(b'}', opening));
            out.push(b',');
        }
        out.extend(std::iter::repeat_n(b'{', opening));
        match item {
            None => out.extend_from_slice(b"NULL"),
            Some(bytes) => push_quoted(&mut out, &element.binary_to_text(bytes, fmt)?),
        }
        // Advance the multi-dimensional index.
        for d in (0..lens.len()).rev() {
            index[d] += 1;
            if index[d] < lens[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out.extend(std::iter::repeat_n(b'}', lens.len()));
    Ok(out)
}

/// `array_out`'s quoting: quote empty strings, `NULL`, and anything with
/// quotes, backslashes, braces, commas or blanks; escape `"` and `\`.
fn push_quoted(out: &mut Vec<u8>, value: &[u8]) {
    let needs_quotes = value.is_empty()
        || value.eq_ignore_ascii_case(b"NULL")
        || value
            .iter()
            .any(|b| matches!(b, b'"' | b'\\' | b'{' | b'}' | b',') || is_pg_space(*b));
    if !needs_quotes {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(ty: &str, text: &str) -> String {
        let ty = LogicalType::parse(ty).unwrap();
        let f = SessionFormat::default();
        let bin = ty.text_to_binary(text.as_bytes(), &f).unwrap();
        String::from_utf8(ty.binary_to_text(&bin, &f).unwrap()).unwrap()
    }

    #[test]
    fn text_forms() {
        assert_eq!(round("int4[]", "{}"), "{}");
        assert_eq!(round("int4[]", " { 1 , -2,NULL } "), "{1,-2,NULL}");
        assert_eq!(round("int4[]", "{{1,2},{3,4}}"), "{{1,2},{3,4}}");
        assert_eq!(round("int4[]", "[0:1]={5,6}"), "[0:1]={5,6}");
        assert_eq!(round("int4[]", "[1:2]={5,6}"), "{5,6}");
        assert_eq!(
            round("text[]", r#"{"a b","",null,"NULL",\,x,"q\"\\", a\ }"#),
            r#"{"a b","",NULL,"NULL",",x","q\"\\","a "}"#
        );
        assert_eq!(round("bytea[]", r#"{"\\x01"}"#), r#"{"\\x01"}"#);
        assert_eq!(round("text[]", "{{a},{b}}"), "{{a},{b}}");
    }

    #[test]
    fn malformed_literals() {
        let ty = LogicalType::parse("int4[]").unwrap();
        let f = SessionFormat::default();
        for bad in [
            "",
            "1",
            "{",
            "{1",
            "{1,}",
            "{,1}",
            "{{1},2}",
            "{1,{2}}",
            "{{1,2},{3}}",
            "{1}x",
            "{{}}",
            "[1:3]={1,2}",
            "{1 2}",
        ] {
            assert!(ty.text_to_binary(bad.as_bytes(), &f).is_err(), "{bad:?}");
        }
        assert_eq!(
            ty.text_to_binary(b"{a}", &f).unwrap_err().sqlstate(),
            "22P02"
        );
        assert_eq!(
            ty.text_to_binary(b"{{{{{{{1}}}}}}}", &f)
                .unwrap_err()
                .sqlstate(),
            "54000"
        );
    }

    #[test]
    fn binary_checks() {
        let ty = LogicalType::parse("int4[]").unwrap();
        let f = SessionFormat::default();
        let bin = ty.text_to_binary(b"{1,NULL}", &f).unwrap();
        assert_eq!(&bin[..12], [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 23]);
        assert!(ty.check_binary(&bin).is_ok());
        let mut wrong_oid = bin.clone();
        wrong_oid[11] = 20;
        assert_eq!(ty.check_binary(&wrong_oid).unwrap_err().sqlstate(), "42804");
        assert!(ty.check_binary(&bin[..bin.len() - 1]).is_err());
        // One dimension of length zero is the empty array.
        let empty_dim = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            ty.canonical_binary(&empty_dim).unwrap(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23]
        );
        // A huge element count with no data fails without allocating it.
        let huge = [
            0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, 0x07, 0xff, 0xff, 0xff, 0, 0, 0, 1,
        ];
        assert!(ty.check_binary(&huge).is_err());
    }
}
