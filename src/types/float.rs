//! `float4` and `float8`: Postgres's text input (`strtod` semantics with its
//! own checks for NaN/Infinity and range) and output (shortest round-trip
//! digits with Postgres's layout when `extra_float_digits > 0`, `%.*g`
//! otherwise).
//!
//! Postgres's shortest digits come from its copy of Ryu (`d2s.c`/`f2s.c`)
//! built without `STRICTLY_SHORTEST`: a decimal lying exactly on the
//! boundary of a value's rounding interval is never chosen, even though it
//! would read back correctly. The `ryu` crate (like Rust's own formatting)
//! accepts those boundaries for even mantissas. So the `ryu` crate's digits
//! are used unless they sit exactly on a boundary, in which case the next
//! longer correctly rounded candidate strictly inside the interval is
//! taken, which is what Postgres's variant computes.

use super::error::TypeError;
use super::text::is_pg_space;

/// The two widths, for names, sizes and the output thresholds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatWidth {
    Float4,
    Float8,
}

impl FloatWidth {
    fn name(self) -> &'static str {
        match self {
            FloatWidth::Float4 => "real",
            FloatWidth::Float8 => "double precision",
        }
    }

    /// `FLT_DIG` / `DBL_DIG`: the precision base for `extra_float_digits`
    /// and also the exponent from which shortest output switches to
    /// scientific notation.
    fn dig(self) -> i32 {
        match self {
            FloatWidth::Float4 => 6,
            FloatWidth::Float8 => 15,
        }
    }
}

/// Parses float text. Returns the big-endian IEEE bytes.
pub(crate) fn float_in(text: &str, width: FloatWidth) -> Result<Vec<u8>, TypeError> {
    let s = text.trim_matches(|c: char| c.is_ascii() && is_pg_space(c as u8));
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = unsigned.to_ascii_lowercase();
    let value: f64 = match lower.as_str() {
        "inf" | "infinity" => f64::INFINITY,
        "nan" => f64::NAN,
        _ => {
            if !is_decimal(unsigned.as_bytes()) {
                if lower.starts_with("0x") {
                    return Err(TypeError::unsupported(format!(
                        "hexadecimal input for type {} is not supported by the proxy",
                        width.name()
                    )));
                }
                return Err(TypeError::syntax(width.name()));
            }
            let nonzero = unsigned
                .bytes()
                .take_while(|b| *b != b'e' && *b != b'E')
                .any(|b| (b'1'..=b'9').contains(&b));
            let (parsed, zero, infinite) = match width {
                FloatWidth::Float8 => {
                    let v: f64 = unsigned
                        .parse()
                        .map_err(|_| TypeError::syntax(width.name()))?;
                    (v, v == 0.0, v.is_infinite())
                }
                FloatWidth::Float4 => {
                    let v: f32 = unsigned
                        .parse()
                        .map_err(|_| TypeError::syntax(width.name()))?;
                    (f64::from(v), v == 0.0, v.is_infinite())
                }
            };
            // strtod's ERANGE: overflow to infinity or underflow to zero.
            if infinite || (zero && nonzero) {
                return Err(TypeError::out_of_range(width.name()));
            }
            parsed
        }
    };
    let value = if negative { -value } else { value };
    Ok(match width {
        // The conversion is exact: finite values were parsed as f32 above.
        FloatWidth::Float4 => (value as f32).to_be_bytes().to_vec(),
        FloatWidth::Float8 => value.to_be_bytes().to_vec(),
    })
}

/// `[digits][.digits][e[+-]digits]` with at least one mantissa digit.
fn is_decimal(s: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && s[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let mut mantissa = digits(&mut i);
    if i < s.len() && s[i] == b'.' {
        i += 1;
        mantissa += digits(&mut i);
    }
    if mantissa == 0 {
        return false;
    }
    if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
        i += 1;
        if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == s.len()
}

pub(crate) fn float_recv(bin: &[u8], width: FloatWidth) -> Result<Vec<u8>, TypeError> {
    let len = match width {
        FloatWidth::Float4 => 4,
        FloatWidth::Float8 => 8,
    };
    if bin.len() != len {
        return Err(TypeError::binary(width.name(), "wrong length"));
    }
    Ok(bin.to_vec())
}

pub(crate) fn float_out(
    bin: &[u8],
    width: FloatWidth,
    extra_float_digits: i32,
) -> Result<String, TypeError> {
    float_recv(bin, width)?;
    let (value, shortest) = match width {
        FloatWidth::Float4 => {
            let v = f32::from_be_bytes([bin[0], bin[1], bin[2], bin[3]]);
            (f64::from(v), shortest_f32(v))
        }
        FloatWidth::Float8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(bin);
            let v = f64::from_be_bytes(b);
            (v, shortest_f64(v))
        }
    };
    if value.is_nan() {
        return Ok("NaN".into());
    }
    if value.is_infinite() {
        return Ok(if value > 0.0 { "Infinity" } else { "-Infinity" }.into());
    }
    if extra_float_digits > 0 {
        Ok(layout_shortest(&shortest, width.dig()))
    } else {
        let precision = (width.dig() + extra_float_digits).clamp(1, 17);
        Ok(format_g(value, precision as usize))
    }
}

/// A finite float's binary parts: `value = m × 2^e2`, and whether the
/// interval below it is half as wide (the mantissa is a power of two).
struct Binary {
    m: u64,
    e2: i32,
    narrow_below: bool,
}

impl Binary {
    fn of_f64(v: f64) -> Binary {
        let bits = v.abs().to_bits();
        let (exp, mant) = ((bits >> 52) as i32, bits & ((1 << 52) - 1));
        Binary {
            m: if exp == 0 { mant } else { mant | 1 << 52 },
            e2: exp.max(1) - 1075,
            narrow_below: mant == 0 && exp > 1,
        }
    }

    fn of_f32(v: f32) -> Binary {
        let bits = v.abs().to_bits();
        let (exp, mant) = ((bits >> 23) as i32, u64::from(bits & ((1 << 23) - 1)));
        Binary {
            m: if exp == 0 { mant } else { mant | 1 << 23 },
            e2: exp.max(1) - 150,
            narrow_below: mant == 0 && exp > 1,
        }
    }

    /// Whether `digits × 10^k` is exactly the upper or lower boundary of
    /// this value's rounding interval.
    fn on_boundary(&self, digits: u64, k: i32) -> bool {
        let m = u128::from(self.m);
        let upper = (2 * m + 1, self.e2 - 1);
        let lower = if self.narrow_below {
            (4 * m - 1, self.e2 - 2)
        } else {
            (2 * m - 1, self.e2 - 1)
        };
        [upper, lower]
            .into_iter()
            .any(|(odd, p)| decimal_equals(digits, k, odd, p))
    }
}

/// Whether `digits × 10^k == odd × 2^p` (`odd` odd), exactly.
fn decimal_equals(digits: u64, k: i32, odd: u128, p: i32) -> bool {
    if digits == 0 {
        return false;
    }
    let twos = digits.trailing_zeros() as i32;
    let d = u128::from(digits >> twos);
    // digits × 10^k = d × 5^k × 2^(twos + k)
    if twos + k != p {
        return false;
    }
    let Ok(n) = u32::try_from(k.abs()) else {
        return false;
    };
    match 5u128.checked_pow(n) {
        Some(pow) if k >= 0 => d.checked_mul(pow) == Some(odd),
        Some(pow) => odd.checked_mul(pow) == Some(d),
        None => false,
    }
}

/// Digits as a number and the exponent of their last digit.
fn digits_and_k(formatted: &str) -> Option<(u64, i32)> {
    let (_, digits, first_exp) = split_exp(formatted);
    let n: u64 = digits.parse().ok()?;
    Some((n, first_exp - (digits.len() as i32 - 1)))
}

/// Postgres's shortest digits (see the module comment), as `{:e}`-style text.
fn postgres_shortest(
    ryu_text: &str,
    binary: &Binary,
    max_digits: usize,
    rounded: impl Fn(usize) -> (String, bool),
) -> String {
    let Some((digits, k)) = digits_and_k(ryu_text) else {
        return ryu_text.to_string();
    };
    if !binary.on_boundary(digits, k) {
        return ryu_text.to_string();
    }
    let start = digits.to_string().trim_end_matches('0').len().max(1);
    for n in start..=max_digits {
        let (candidate, reads_back) = rounded(n);
        let inside = digits_and_k(&candidate).is_some_and(|(d, k)| !binary.on_boundary(d, k));
        if reads_back && inside {
            return candidate;
        }
    }
    rounded(max_digits).0
}

fn shortest_f64(v: f64) -> String {
    let ryu_text = ryu::Buffer::new().format(v).to_string();
    if v == 0.0 {
        return ryu_text;
    }
    postgres_shortest(&ryu_text, &Binary::of_f64(v), 17, |n| {
        let text = format!("{:.*e}", n - 1, v);
        let reads_back = text.parse::<f64>().is_ok_and(|r| r == v);
        (text, reads_back)
    })
}

fn shortest_f32(v: f32) -> String {
    let ryu_text = ryu::Buffer::new().format(v).to_string();
    if v == 0.0 {
        return ryu_text;
    }
    postgres_shortest(&ryu_text, &Binary::of_f32(v), 9, |n| {
        let text = format!("{:.*e}", n - 1, v);
        let reads_back = text.parse::<f32>().is_ok_and(|r| r == v);
        (text, reads_back)
    })
}

/// Splits a decimal rendering (`-1.25e-7`, `4153705.2`, `0.00012`, `1e20`)
/// into sign, significant digits (no leading or trailing zeros) and the
/// decimal exponent of the first digit.
fn split_exp(s: &str) -> (bool, String, i32) {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (mantissa, exp) = s.split_once(['e', 'E']).unwrap_or((s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = format!("{int}{frac}");
    let leading = all.bytes().take_while(|b| *b == b'0').count();
    let digits = all[leading..].trim_end_matches('0');
    if digits.is_empty() {
        return (negative, "0".into(), 0);
    }
    let first_exp = int.len() as i32 - 1 - leading as i32 + exp;
    (negative, digits.to_string(), first_exp)
}

/// Postgres's Ryu layout: fixed point when `-4 <= exp < dig`, else
/// `d.ddde±XX` with at least two exponent digits.
fn layout_shortest(formatted: &str, dig: i32) -> String {
    let (negative, digits, exp) = split_exp(formatted);
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if (-4..dig).contains(&exp) {
        out.push_str(&fixed_from_digits(&digits, exp));
    } else {
        push_scientific(&mut out, &digits, exp);
    }
    out
}

/// `digits` × 10^(exp - len + 1) in plain notation.
fn fixed_from_digits(digits: &str, exp: i32) -> String {
    if exp < 0 {
        let zeros = "0".repeat((-exp - 1) as usize);
        return format!("0.{zeros}{digits}");
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        format!("{digits}{}", "0".repeat(int_len - digits.len()))
    } else {
        format!("{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

fn push_scientific(out: &mut String, digits: &str, exp: i32) {
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push('e');
    out.push(if exp < 0 { '-' } else { '+' });
    out.push_str(&format!("{:02}", exp.unsigned_abs()));
}

/// C's `%.{precision}g` for a finite value.
fn format_g(value: f64, precision: usize) -> String {
    let (negative, digits, exp) = split_exp(&format!("{:.*e}", precision - 1, value));
    if exp >= -4 && (exp as i64) < precision as i64 {
        let decimals = (precision as i64 - 1 - exp as i64).max(0) as usize;
        let fixed = format!("{:.*}", decimals, value);
        if fixed.contains('.') {
            fixed
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        } else {
            fixed
        }
    } else {
        let mut out = String::new();
        if negative {
            out.push('-');
        }
        push_scientific(&mut out, &digits, exp);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out8(v: f64, efd: i32) -> String {
        float_out(&v.to_be_bytes(), FloatWidth::Float8, efd).unwrap()
    }

    fn out4(v: f32, efd: i32) -> String {
        float_out(&v.to_be_bytes(), FloatWidth::Float4, efd).unwrap()
    }

    #[test]
    fn shortest_output_has_postgres_layout() {
        assert_eq!(out8(1e20, 1), "1e+20");
        assert_eq!(out8(1.5e-7, 1), "1.5e-07");
        assert_eq!(out8(0.0001, 1), "0.0001");
        assert_eq!(out8(1e-5, 1), "1e-05");
        assert_eq!(out8(123456789012345.0, 1), "123456789012345");
        assert_eq!(out8(1e15, 1), "1e+15");
        assert_eq!(out8(-0.0, 1), "-0");
        assert_eq!(out8(0.1, 1), "0.1");
        assert_eq!(out8(1.0 / 3.0, 1), "0.3333333333333333");
        assert_eq!(out8(1e300, 1), "1e+300");
        assert_eq!(out8(f64::NAN, 1), "NaN");
        assert_eq!(out8(f64::NEG_INFINITY, 1), "-Infinity");
        assert_eq!(out4(100000.0, 1), "100000");
        assert_eq!(out4(1e6, 1), "1e+06");
        assert_eq!(out4(1.1, 1), "1.1");
        // Exactly on a rounding boundary: Postgres's Ryu takes a longer
        // candidate than the strictly shortest one.
        assert_eq!(out8(85130208776033800.0, 1), "8.513020877603379e+16");
        assert_eq!(out8(38022753014754740.0, 3), "3.8022753014754736e+16");
        assert_eq!(out4(515953216.0, 1), "5.1595322e+08");
        assert_eq!(out4(264.839e6, 1), "2.6483901e+08");
        assert_eq!(out4(4153705.3, 1), "4.1537052e+06");
    }

    #[test]
    fn g_output_for_low_extra_float_digits() {
        assert_eq!(out8(0.1, 0), "0.1");
        assert_eq!(out8(1.0 / 3.0, 0), "0.333333333333333");
        assert_eq!(out8(1e15, 0), "1e+15");
        assert_eq!(out8(123456789012345.0, 0), "123456789012345");
        assert_eq!(out8(1e-5, 0), "1e-05");
        assert_eq!(out4(1.1, 0), "1.1");
        assert_eq!(out4(1.1, -15), "1");
        assert_eq!(out8(2.5, -14), "2");
    }

    #[test]
    fn input_forms() {
        let f8 = |s: &str| {
            float_in(s, FloatWidth::Float8).map(|b| f64::from_be_bytes(b.try_into().unwrap()))
        };
        assert_eq!(f8(" 1.5 ").unwrap(), 1.5);
        assert_eq!(f8("-.5e1").unwrap(), -5.0);
        assert_eq!(f8("5.").unwrap(), 5.0);
        assert!(f8("NaN").unwrap().is_nan());
        assert_eq!(f8("-Infinity").unwrap(), f64::NEG_INFINITY);
        assert_eq!(f8("+inf").unwrap(), f64::INFINITY);
        assert_eq!(f8("1e-310").unwrap(), 1e-310);
        assert_eq!(f8("0e-999").unwrap(), 0.0);
        assert_eq!(f8("1e400").unwrap_err().sqlstate(), "22003");
        assert_eq!(f8("1e-400").unwrap_err().sqlstate(), "22003");
        for bad in ["", " ", "1e", "e5", ".", "1.5x", "--1", "1 2", "Infinityx"] {
            assert_eq!(f8(bad).unwrap_err().sqlstate(), "22P02", "{bad:?}");
        }
        assert_eq!(
            float_in("1e39", FloatWidth::Float4).unwrap_err().sqlstate(),
            "22003"
        );
    }
}
