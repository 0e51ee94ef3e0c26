//! The character types (`text`, `varchar`, `bpchar`) and `bytea`, plus the
//! UTF-8 checks every text input goes through.
//!
//! The character types' binary form is their UTF-8 bytes. The database
//! encoding is assumed to be UTF-8: Postgres rejects invalid sequences and
//! NUL bytes in any text it receives, so the proxy does too.

use super::error::{sqlstate, TypeError};
use super::session::ByteaOutput;

/// Postgres's `isspace` in the C locale.
pub(crate) fn is_pg_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `bytes` as UTF-8 without NUL, or `22021` as Postgres reports it.
pub(crate) fn utf8<'a>(bytes: &'a [u8], type_name: &str) -> Result<&'a str, TypeError> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !bytes.contains(&0) => Ok(s),
        _ => Err(TypeError::encoding(type_name)),
    }
}

/// Text, varchar and bpchar: the text form and the binary form are the same
/// bytes. Without a type modifier `bpchar` keeps trailing spaces as given.
pub(crate) fn chars_recv(bin: &[u8], type_name: &str) -> Result<Vec<u8>, TypeError> {
    utf8(bin, type_name)?;
    Ok(bin.to_vec())
}

/// Parses `bytea` text like `byteain`: `\x` then hex digit pairs (white
/// space between pairs allowed), or the escape form where `\\` is a
/// backslash and `\ooo` an octal byte.
pub(crate) fn bytea_in(text: &[u8]) -> Result<Vec<u8>, TypeError> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut i = 0;
        while i < hex.len() {
            if matches!(hex[i], b' ' | b'\n' | b'\t' | b'\r') {
                i += 1;
                continue;
            }
            let high = hex_digit(hex[i])?;
            let low = match hex.get(i + 1) {
                Some(&b) => hex_digit(b)?,
                None => {
                    return Err(TypeError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "invalid hexadecimal data: odd number of digits",
                    ))
                }
            };
            out.push(high << 4 | low);
            i += 2;
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            out.push(text[i]);
            i += 1;
        } else if let Some(d) = text
            .get(i + 1..i + 4)
            .filter(|d| (b'0'..=b'3').contains(&d[0]) && is_octal(d[1]) && is_octal(d[2]))
        {
            out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
            i += 4;
        } else if text.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            return Err(TypeError::syntax("bytea"));
        }
    }
    Ok(out)
}

fn is_octal(b: u8) -> bool {
    (b'0'..=b'7').contains(&b)
}

fn hex_digit(b: u8) -> Result<u8, TypeError> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(TypeError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            "invalid hexadecimal digit in bytea input",
        )),
    }
}

/// Writes `bytea` as `byteaout` does under the session's `bytea_output`.
pub(crate) fn bytea_out(bin: &[u8], style: ByteaOutput) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 + bin.len() * 2);
    match style {
        ByteaOutput::Hex => {
            out.push_str("\\x");
            for &b in bin {
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
        ByteaOutput::Escape => {
            for &b in bin {
                if b == b'\\' {
                    out.push_str("\\\\");
                } else if !(0x20..=0x7e).contains(&b) {
                    out.push('\\');
                    out.push(char::from(b'0' + (b >> 6)));
                    out.push(char::from(b'0' + ((b >> 3) & 7)));
                    out.push(char::from(b'0' + (b & 7)));
                } else {
                    out.push(b as char);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytea_forms() {
        assert_eq!(bytea_in(b"\\x0aFF").unwrap(), [0x0a, 0xff]);
        assert_eq!(bytea_in(b"\\x 0a\n ff ").unwrap(), [0x0a, 0xff]);
        assert_eq!(bytea_in(b"\\x").unwrap(), b"");
        assert_eq!(bytea_in(b"\\x0").unwrap_err().sqlstate(), "22023");
        assert_eq!(bytea_in(b"\\x0g").unwrap_err().sqlstate(), "22023");
        assert_eq!(bytea_in(b"a\\\\b\\001\\377").unwrap(), b"a\\b\x01\xff");
        assert_eq!(bytea_in(b"\\400").unwrap_err().sqlstate(), "22P02");
        assert_eq!(bytea_in(b"\\X01").unwrap_err().sqlstate(), "22P02");
        assert_eq!(bytea_in(b"ab\\").unwrap_err().sqlstate(), "22P02");
        assert_eq!(bytea_out(b"\x00\\a\x7f", ByteaOutput::Hex), "\\x005c617f");
        assert_eq!(
            bytea_out(b"\x00\\a\x7f", ByteaOutput::Escape),
            "\\000\\\\a\\177"
        );
    }

    #[test]
    fn text_must_be_utf8_without_nul() {
        assert!(chars_recv("héllo".as_bytes(), "text").is_ok());
        assert_eq!(chars_recv(b"a\0b", "text").unwrap_err().sqlstate(), "22021");
        assert_eq!(chars_recv(b"\xff", "text").unwrap_err().sqlstate(), "22021");
    }
}
