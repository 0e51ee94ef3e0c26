//! `numeric`: arbitrary-precision decimals in Postgres's own representation,
//! base-10000 digits with a weight (position of the first digit) and a
//! display scale. `postgres-types` has no numeric support and crates such as
//! `rust_decimal` cannot hold Postgres's range (up to 131072 digits before
//! the point, 16383 after), so this module follows `numeric.c` directly:
//! `set_var_from_str`, `numeric_recv`'s checks and truncation, `make_result`'s
//! normalisation and `get_str_from_var`.

use super::error::{sqlstate, TypeError};
use super::text::is_pg_space;

const NBASE: i64 = 10000;
const DEC_DIGITS: i64 = 4;
const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;
const DSCALE_MAX: i64 = 0x3FFF;

/// A numeric value: `sign` is one of the wire sign words; for the special
/// values (NaN, ±Infinity) the other fields are zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Numeric {
    sign: u16,
    weight: i64,
    dscale: i64,
    digits: Vec<i64>,
}

fn overflow() -> TypeError {
    TypeError::new(
        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
        "value overflows numeric format",
    )
}

impl Numeric {
    fn special(sign: u16) -> Numeric {
        Numeric {
            sign,
            weight: 0,
            // numeric_send reads the scale of a special value through the
            // short-header mask, which yields 32 for the infinities.
            dscale: if sign == SIGN_NAN { 0 } else { 32 },
            digits: Vec::new(),
        }
    }

    fn is_finite(&self) -> bool {
        self.sign == SIGN_POS || self.sign == SIGN_NEG
    }

    /// `make_result`: strips leading and trailing zero digits, makes zero
    /// positive with weight 0, and checks the value fits the storage format.
    fn normalize(mut self) -> Result<Numeric, TypeError> {
        if !self.is_finite() {
            return Ok(Numeric::special(self.sign));
        }
        let leading = self.digits.iter().take_while(|d| **d == 0).count();
        self.digits.drain(..leading);
        self.weight -= leading as i64;
        while self.digits.last() == Some(&0) {
            self.digits.pop();
        }
        if self.digits.is_empty() {
            self.weight = 0;
            self.sign = SIGN_POS;
        }
        if self.weight < i64::from(i16::MIN)
            || self.weight > i64::from(i16::MAX)
            || self.dscale > DSCALE_MAX
            || self.digits.len() > usize::from(u16::MAX)
        {
            return Err(overflow());
        }
        Ok(self)
    }

    /// `trunc_var`: drops digits beyond `dscale` decimal places.
    fn truncate_to_dscale(&mut self) {
        let wanted = (self.weight + 1) * DEC_DIGITS + self.dscale;
        if wanted <= 0 {
            self.digits.clear();
            return;
        }
        let ndigits = ((wanted + DEC_DIGITS - 1) / DEC_DIGITS) as usize;
        if ndigits <= self.digits.len() {
            self.digits.truncate(ndigits);
            let keep = wanted % DEC_DIGITS;
            if keep > 0 {
                let pow10 = [0, 1000, 100, 10][keep as usize];
                if let Some(last) = self.digits.last_mut() {
                    *last -= *last % pow10;
                }
            }
        }
    }

    /// The binary (`numeric_send`) form.
    pub(crate) fn to_binary(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 2 * self.digits.len());
        // normalize() guarantees these fit their 16-bit fields.
        out.extend_from_slice(&(self.digits.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.weight as i16).to_be_bytes());
        out.extend_from_slice(&self.sign.to_be_bytes());
        out.extend_from_slice(&(self.dscale as u16).to_be_bytes());
        for d in &self.digits {
            out.extend_from_slice(&(*d as i16).to_be_bytes());
        }
        out
    }

    /// Decodes the binary form with `numeric_recv`'s checks and
    /// normalisation, so any value Postgres accepts is accepted and comes
    /// out in the form Postgres would send back.
    pub(crate) fn from_binary(bin: &[u8]) -> Result<Numeric, TypeError> {
        let bad = |what| TypeError::binary("numeric", what);
        if bin.len() < 8 {
            return Err(bad("header too short"));
        }
        let word = |i: usize| u16::from_be_bytes([bin[i], bin[i + 1]]);
        let ndigits = usize::from(word(0));
        let weight = i64::from(word(2) as i16);
        let sign = word(4);
        let dscale = i64::from(word(6));
        if bin.len() != 8 + 2 * ndigits {
            return Err(bad("length does not match the digit count"));
        }
        if ![SIGN_POS, SIGN_NEG, SIGN_NAN, SIGN_PINF, SIGN_NINF].contains(&sign) {
            return Err(bad("invalid sign"));
        }
        if dscale > DSCALE_MAX {
            return Err(bad("invalid scale"));
        }
        let mut digits = Vec::with_capacity(ndigits);
        for i in 0..ndigits {
            let d = i64::from(word(8 + 2 * i) as i16);
            if !(0..NBASE).contains(&d) {
                return Err(bad("invalid digit"));
            }
            digits.push(d);
        }
        let mut value = Numeric {
            sign,
            weight,
            dscale,
            digits,
        };
        if value.is_finite() {
            value.truncate_to_dscale();
        }
        value.normalize()
    }

    /// Parses numeric text like `numeric_in` (Postgres 15): surrounding
    /// whitespace, `NaN`, `[+-]Infinity`, `[+-]inf`, or a decimal with an
    /// optional exponent (`strtol` rules: blanks and a sign may follow `e`).
    pub(crate) fn parse(text: &str) -> Result<Numeric, TypeError> {
        let s = text.as_bytes();
        let mut i = 0;
        while i < s.len() && is_pg_space(s[i]) {
            i += 1;
        }
        let rest = &s[i..];
        let starts =
            |word: &[u8]| rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word);
        let (value, used) = if starts(b"NaN") {
            (Numeric::special(SIGN_NAN), 3)
        } else if starts(b"Infinity") {
            (Numeric::special(SIGN_PINF), 8)
        } else if starts(b"+Infinity") {
            (Numeric::special(SIGN_PINF), 9)
        } else if starts(b"-Infinity") {
            (Numeric::special(SIGN_NINF), 9)
        } else if starts(b"inf") {
            (Numeric::special(SIGN_PINF), 3)
        } else if starts(b"+inf") {
            (Numeric::special(SIGN_PINF), 4)
        } else if starts(b"-inf") {
            (Numeric::special(SIGN_NINF), 4)
        } else {
            parse_decimal(rest)?
        };
        if !rest[used..].iter().all(|b| is_pg_space(*b)) {
            return Err(TypeError::syntax("numeric"));
        }
        value.normalize()
    }

    /// The text (`numeric_out`) form.
    pub(crate) fn to_text(&self) -> String {
        match self.sign {
            SIGN_NAN => return "NaN".into(),
            SIGN_PINF => return "Infinity".into(),
            SIGN_NINF => return "-Infinity".into(),
            _ => {}
        }
        let digit = |d: i64| -> i64 {
            usize::try_from(d)
                .ok()
                .and_then(|d| self.digits.get(d).copied())
                .unwrap_or(0)
        };
        let mut out = String::new();
        if self.sign == SIGN_NEG {
            out.push('-');
        }
        let mut d;
        if self.weight < 0 {
            d = self.weight + 1;
            out.push('0');
        } else {
            d = 0;
            while d <= self.weight {
                let dig = digit(d);
                if d == 0 {
                    out.push_str(&dig.to_string());
                } else {
                    out.push_str(&format!("{dig:04}"));
                }
                d += 1;
            }
        }
        if self.dscale > 0 {
            out.push('.');
            let mut frac = String::with_capacity(self.dscale as usize + 4);
            while (frac.len() as i64) < self.dscale {
                frac.push_str(&format!("{:04}", digit(d)));
                d += 1;
            }
            frac.truncate(self.dscale as usize);
            out.push_str(&frac);
        }
        out
    }
}

/// `set_var_from_str`: returns the (unnormalised) value and the number of
/// bytes used.
fn parse_decimal(s: &[u8]) -> Result<(Numeric, usize), TypeError> {
    let syntax = || TypeError::syntax("numeric");
    let mut i = 0;
    let mut negative = false;
    match s.first() {
        Some(b'+') => i += 1,
        Some(b'-') => {
            negative = true;
            i += 1
        }
        _ => {}
    }
    let mut have_dp = false;
    if s.get(i) == Some(&b'.') {
        have_dp = true;
        i += 1;
    }
    if !s.get(i).is_some_and(u8::is_ascii_digit) {
        return Err(syntax());
    }
    let mut decdigits: Vec<i64> = Vec::new();
    let mut dweight: i64 = -1;
    let mut dscale: i64 = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_ascii_digit() {
            decdigits.push(i64::from(c - b'0'));
            if have_dp {
                dscale += 1;
            } else {
                dweight += 1;
            }
            i += 1;
        } else if c == b'.' {
            if have_dp {
                return Err(syntax());
            }
            have_dp = true;
            i += 1;
        } else {
            break;
        }
    }
    if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
        i += 1;
        // strtol: optional blanks, optional sign, at least one digit.
        let mut j = i;
        while j < s.len() && is_pg_space(s[j]) {
            j += 1;
        }
        let mut exp_negative = false;
        if j < s.len() && (s[j] == b'+' || s[j] == b'-') {
            exp_negative = s[j] == b'-';
            j += 1;
        }
        let start = j;
        let mut exponent: i64 = 0;
        while j < s.len() && s[j].is_ascii_digit() {
            exponent = (exponent * 10 + i64::from(s[j] - b'0')).min(i64::from(i32::MAX));
            j += 1;
        }
        if j == start {
            return Err(syntax());
        }
        if exponent >= i64::from(i32::MAX / 2) {
            return Err(overflow());
        }
        let exponent = if exp_negative { -exponent } else { exponent };
        i = j;
        dweight += exponent;
        dscale = (dscale - exponent).max(0);
    }
    // Base-10000 conversion, aligning the first digit group.
    let weight = if dweight >= 0 {
        (dweight + DEC_DIGITS) / DEC_DIGITS - 1
    } else {
        -((-dweight - 1) / DEC_DIGITS + 1)
    };
    let offset = (weight + 1) * DEC_DIGITS - (dweight + 1);
    let ndigits = (decdigits.len() as i64 + offset + DEC_DIGITS - 1) / DEC_DIGITS;
    let mut padded = vec![0i64; offset as usize];
    padded.extend_from_slice(&decdigits);
    padded.resize((ndigits * DEC_DIGITS) as usize, 0);
    let digits = padded
        .chunks(DEC_DIGITS as usize)
        .map(|c| c.iter().fold(0, |acc, d| acc * 10 + d))
        .collect();
    Ok((
        Numeric {
            sign: if negative { SIGN_NEG } else { SIGN_POS },
            weight,
            dscale,
            digits,
        },
        i,
    ))
}

pub(crate) fn numeric_in(text: &str) -> Result<Vec<u8>, TypeError> {
    Ok(Numeric::parse(text)?.to_binary())
}

pub(crate) fn numeric_recv(bin: &[u8]) -> Result<Vec<u8>, TypeError> {
    Ok(Numeric::from_binary(bin)?.to_binary())
}

pub(crate) fn numeric_out(bin: &[u8]) -> Result<String, TypeError> {
    Ok(Numeric::from_binary(bin)?.to_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(text: &str) -> String {
        Numeric::parse(text).unwrap().to_text()
    }

    #[test]
    fn text_forms() {
        for (input, output) in [
            ("0", "0"),
            ("-0", "0"),
            ("-0.00", "0.00"),
            (" 12.3400 ", "12.3400"),
            ("+.5", "0.5"),
            ("1e3", "1000"),
            ("1.5E-3", "0.0015"),
            ("1e 2", "100"),
            ("12345678.9", "12345678.9"),
            ("0.00001", "0.00001"),
            ("100000000", "100000000"),
            (
                "-123456789012345678901234567890.123456789",
                "-123456789012345678901234567890.123456789",
            ),
            ("nan", "NaN"),
            ("-inf", "-Infinity"),
            ("Infinity", "Infinity"),
            ("5.", "5"),
        ] {
            assert_eq!(round(input), output, "{input}");
        }
        for bad in [
            "", ".", "1..2", "e5", "1e", "1e+", "abc", "1 2", "NaNx", "--1",
        ] {
            assert_eq!(
                Numeric::parse(bad).unwrap_err().sqlstate(),
                "22P02",
                "{bad:?}"
            );
        }
        for big in ["1e1000000", "1e-20000", "0e-20000", "1e2147483647"] {
            assert_eq!(
                Numeric::parse(big).unwrap_err().sqlstate(),
                "22003",
                "{big}"
            );
        }
    }

    #[test]
    fn binary_form() {
        // 12.5 = weight 0, digits [12, 5000], dscale 1.
        let bin = numeric_in("12.5").unwrap();
        assert_eq!(bin, [0, 2, 0, 0, 0, 0, 0, 1, 0, 12, 0x13, 0x88]);
        // Leading/trailing zero digits and digits hidden by dscale are
        // normalised away, as numeric_recv does.
        let sloppy = [0, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 12, 0x13, 0x88];
        assert_eq!(numeric_recv(&sloppy).unwrap(), numeric_in("12").unwrap());
        assert_eq!(
            numeric_recv(&[0, 0, 0, 0, 0x50, 0, 0, 0])
                .unwrap_err()
                .sqlstate(),
            "22P03"
        );
        assert_eq!(
            numeric_recv(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10])
                .unwrap_err()
                .sqlstate(),
            "22P03"
        );
        assert_eq!(numeric_out(&numeric_in("NaN").unwrap()).unwrap(), "NaN");
    }
}
