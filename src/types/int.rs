//! `bool`, `int2`, `int4` and `int8`: Postgres's text forms (`boolin`,
//! `pg_strtoint*`) and their big-endian binary forms.

use super::error::TypeError;
use super::text::is_pg_space;

/// Parses `bool` text the way `boolin` does: surrounding whitespace, any
/// prefix of `true`/`false`/`yes`/`no` (case-insensitive), `on`/`off` (at
/// least two letters), `1`/`0`.
pub(crate) fn bool_in(text: &str) -> Result<Vec<u8>, TypeError> {
    let s = text.trim_matches(|c: char| c.is_ascii() && is_pg_space(c as u8));
    let lower = s.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| lower.len() >= min && word.starts_with(&lower);
    let value = match lower.as_bytes().first() {
        Some(b't') if prefix_of("true", 1) => true,
        Some(b'f') if prefix_of("false", 1) => false,
        Some(b'y') if prefix_of("yes", 1) => true,
        Some(b'n') if prefix_of("no", 1) => false,
        Some(b'o') if prefix_of("on", 2) => true,
        Some(b'o') if prefix_of("off", 2) => false,
        Some(b'1') if lower.len() == 1 => true,
        Some(b'0') if lower.len() == 1 => false,
        _ => return Err(TypeError::syntax("boolean")),
    };
    Ok(vec![u8::from(value)])
}

/// `boolrecv` takes any non-zero byte as true; the canonical form is 0 or 1.
pub(crate) fn bool_recv(bin: &[u8]) -> Result<Vec<u8>, TypeError> {
    match bin {
        [b] => Ok(vec![u8::from(*b != 0)]),
        _ => Err(TypeError::binary("boolean", "expected 1 byte")),
    }
}

pub(crate) fn bool_out(bin: &[u8]) -> Result<String, TypeError> {
    let canonical = bool_recv(bin)?;
    Ok(if canonical == [1] { "t" } else { "f" }.to_string())
}

/// The integer widths, for their names and ranges.
#[derive(Clone, Copy)]
pub(crate) enum IntWidth {
    Int2,
    Int4,
    Int8,
}

impl IntWidth {
    fn name(self) -> &'static str {
        match self {
            IntWidth::Int2 => "smallint",
            IntWidth::Int4 => "integer",
            IntWidth::Int8 => "bigint",
        }
    }

    fn bytes(self) -> usize {
        match self {
            IntWidth::Int2 => 2,
            IntWidth::Int4 => 4,
            IntWidth::Int8 => 8,
        }
    }

    fn range(self) -> (i128, i128) {
        match self {
            IntWidth::Int2 => (i16::MIN.into(), i16::MAX.into()),
            IntWidth::Int4 => (i32::MIN.into(), i32::MAX.into()),
            IntWidth::Int8 => (i64::MIN.into(), i64::MAX.into()),
        }
    }
}

/// Parses an integer like `pg_strtoint16/32/64` (Postgres 15): optional
/// surrounding whitespace, an optional sign, decimal digits only. Overflow
/// is reported as soon as it happens, as Postgres does.
pub(crate) fn int_in(text: &str, width: IntWidth) -> Result<Vec<u8>, TypeError> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() && is_pg_space(bytes[i]) {
        i += 1;
    }
    let mut negative = false;
    if i < bytes.len() && (bytes[i] == b'-' || bytes[i] == b'+') {
        negative = bytes[i] == b'-';
        i += 1;
    }
    if i >= bytes.len() || !bytes[i].is_ascii_digit() {
        return Err(TypeError::syntax(width.name()));
    }
    let (min, max) = width.range();
    let mut value: i128 = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        value = value * 10 + i128::from(bytes[i] - b'0');
        let signed = if negative { -value } else { value };
        if signed < min || signed > max {
            return Err(TypeError::out_of_range(width.name()));
        }
        i += 1;
    }
    while i < bytes.len() && is_pg_space(bytes[i]) {
        i += 1;
    }
    if i != bytes.len() {
        return Err(TypeError::syntax(width.name()));
    }
    let signed = if negative { -value } else { value };
    // In range by the check above, so the narrowing is exact.
    Ok(signed.to_be_bytes()[16 - width.bytes()..].to_vec())
}

pub(crate) fn int_recv(bin: &[u8], width: IntWidth) -> Result<Vec<u8>, TypeError> {
    if bin.len() != width.bytes() {
        return Err(TypeError::binary(width.name(), "wrong length"));
    }
    Ok(bin.to_vec())
}

pub(crate) fn int_out(bin: &[u8], width: IntWidth) -> Result<String, TypeError> {
    int_recv(bin, width)?;
    let mut wide = [0u8; 8];
    let n = width.bytes();
    // Sign-extend into 8 bytes.
    let fill = if bin[0] & 0x80 != 0 { 0xff } else { 0 };
    wide[..8 - n].fill(fill);
    wide[8 - n..].copy_from_slice(bin);
    Ok(i64::from_be_bytes(wide).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bool_forms() {
        for t in ["t", "TRUE", " tr ", "y", "yes", "on", "1", "\ttrue\n"] {
            assert_eq!(bool_in(t).unwrap(), [1], "{t:?}");
        }
        for f in ["f", "False", "n", "no", "of", "off", "0"] {
            assert_eq!(bool_in(f).unwrap(), [0], "{f:?}");
        }
        for bad in ["", "o", "truex", "2", "onn", "yess", "00"] {
            assert_eq!(bool_in(bad).unwrap_err().sqlstate(), "22P02", "{bad:?}");
        }
        assert_eq!(bool_out(&[7]).unwrap(), "t");
        assert!(bool_out(&[]).is_err());
    }

    #[test]
    fn ints() {
        assert_eq!(int_in(" -32768 ", IntWidth::Int2).unwrap(), [0x80, 0]);
        assert_eq!(int_in("+7", IntWidth::Int4).unwrap(), [0, 0, 0, 7]);
        assert_eq!(
            int_in("32768", IntWidth::Int2).unwrap_err().sqlstate(),
            "22003"
        );
        assert_eq!(
            int_in("99999999999999999999x", IntWidth::Int8)
                .unwrap_err()
                .sqlstate(),
            "22003"
        );
        for bad in ["", "-", "1.0", "1e3", "0x10", "1 2", "١"] {
            assert_eq!(
                int_in(bad, IntWidth::Int4).unwrap_err().sqlstate(),
                "22P02",
                "{bad:?}"
            );
        }
        assert_eq!(
            int_out(&i64::MIN.to_be_bytes(), IntWidth::Int8).unwrap(),
            i64::MIN.to_string()
        );
        assert_eq!(int_out(&[0xff, 0xfe], IntWidth::Int2).unwrap(), "-2");
        assert!(int_out(&[1, 2, 3], IntWidth::Int4).is_err());
    }
}
