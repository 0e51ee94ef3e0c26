//! Date/time text input, ported from Postgres's `ParseDateTime`,
//! `DecodeDateTime`, `DecodeDate`, `DecodeNumber`, `DecodeNumberField`,
//! `DecodeTime` and `DecodeTimezone` (Postgres 15).
//!
//! The common forms are decoded as Postgres decodes them (ISO 8601,
//! `DateStyle`-ordered numeric dates, month names, `BC`, `AM`/`PM`,
//! numeric offsets, abbreviations, IANA zone names). Forms that depend on
//! the server's clock (`now`, `today`, …), Julian dates, ISO field labels
//! (`y2001m02d04`), day-of-year and run-together times with fractions are
//! refused with 0A000 instead of guessed: the proxy must never encrypt a
//! value that differs from what Postgres would have stored.

use super::zone;
use crate::types::error::{sqlstate, TypeError};
use crate::types::session::DateOrder;

const YEAR: u32 = 1 << 0;
const MONTH: u32 = 1 << 1;
const DAY: u32 = 1 << 2;
const HOUR: u32 = 1 << 3;
const MINUTE: u32 = 1 << 4;
const SECOND: u32 = 1 << 5;
const TZ: u32 = 1 << 6;
const AMPM: u32 = 1 << 7;
const ADBC: u32 = 1 << 8;
const DOW: u32 = 1 << 9;
const DATE_M: u32 = YEAR | MONTH | DAY;
const TIME_M: u32 = HOUR | MINUTE | SECOND;

/// What a date/time text decodes to.
pub(crate) enum Decoded {
    /// `infinity` / `+infinity`.
    Late,
    /// `-infinity`.
    Early,
    /// `epoch`.
    Epoch,
    Fields(Fields),
}

/// Broken-down fields, as Postgres's `struct pg_tm` plus fraction and zone.
#[derive(Default)]
pub(crate) struct Fields {
    /// Astronomical year (0 is 1 BC) once [`Fields::date_set`].
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    /// Microseconds, 0 ..= 1_000_000 (rounding may reach a whole second).
    pub fsec: i64,
    pub date_set: bool,
    pub time_set: bool,
    /// The zone given in the text, if any.
    pub zone: Option<ZoneGiven>,
}

pub(crate) enum ZoneGiven {
    Fixed(i64),
    Named(jiff::tz::TimeZone),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FieldType {
    Number,
    Time,
    Date,
    Tz,
    Special,
    String,
}

pub(crate) fn bad_format(type_name: &str) -> TypeError {
    TypeError::new(
        sqlstate::INVALID_DATETIME_FORMAT,
        format!("invalid input syntax for type {type_name}"),
    )
}

pub(crate) fn field_overflow(type_name: &str) -> TypeError {
    TypeError::new(
        sqlstate::DATETIME_FIELD_OVERFLOW,
        format!("date/time field value out of range in a value of type {type_name}"),
    )
}

fn tz_overflow(type_name: &str) -> TypeError {
    TypeError::new(
        sqlstate::INVALID_TIME_ZONE_DISPLACEMENT,
        format!("time zone displacement out of range in a value of type {type_name}"),
    )
}

fn unsupported(type_name: &str, what: &str) -> TypeError {
    TypeError::unsupported(format!(
        "{what} in input of type {type_name} is not supported by the proxy; write the value explicitly (ISO 8601, e.g. 2024-01-02 03:04:05+01)"
    ))
}

/// `ParseDateTime`: splits the input into typed fields (lower-cased).
fn tokenize(text: &str, type_name: &str) -> Result<Vec<(FieldType, String)>, TypeError> {
    let s = text.as_bytes();
    if !text.is_ascii() {
        return Err(bad_format(type_name));
    }
    let mut fields = Vec::new();
    let mut i = 0;
    let is_space = crate::types::text::is_pg_space;
    while i < s.len() {
        let c = s[i];
        if is_space(c) {
            i += 1;
            continue;
        }
        let mut buf = String::new();
        let ftype;
        let take_while = |i: &mut usize, buf: &mut String, f: &dyn Fn(u8) -> bool| {
            while *i < s.len() && f(s[*i]) {
                buf.push(s[*i].to_ascii_lowercase() as char);
                *i += 1;
            }
        };
        if c.is_ascii_digit() {
            take_while(&mut i, &mut buf, &|b| b.is_ascii_digit());
            if i < s.len() && s[i] == b':' {
                ftype = FieldType::Time;
                take_while(&mut i, &mut buf, &|b| {
                    b.is_ascii_digit() || b == b':' || b == b'.'
                });
            } else if i < s.len() && matches!(s[i], b'-' | b'/' | b'.') {
                let delim = s[i];
                buf.push(delim as char);
                i += 1;
                if i < s.len() && s[i].is_ascii_digit() {
                    let mut t = if delim == b'.' {
                        FieldType::Number
                    } else {
                        FieldType::Date
                    };
                    take_while(&mut i, &mut buf, &|b| b.is_ascii_digit());
                    if i < s.len() && s[i] == delim {
                        t = FieldType::Date;
                        take_while(&mut i, &mut buf, &|b| b.is_ascii_digit() || b == delim);
                    }
                    ftype = t;
                } else {
                    ftype = FieldType::Date;
                    take_while(&mut i, &mut buf, &|b| {
                        b.is_ascii_alphanumeric() || b == delim
                    });
                }
            } else {
                ftype = FieldType::Number;
            }
        } else if c == b'.' {
            buf.push('.');
            i += 1;
            take_while(&mut i, &mut buf, &|b| b.is_ascii_digit());
            ftype = FieldType::Number;
        } else if c.is_ascii_alphabetic() {
            take_while(&mut i, &mut buf, &|b| b.is_ascii_alphabetic());
            let next = s.get(i).copied();
            let mut is_date = matches!(next, Some(b'-' | b'/' | b'.'));
            if matches!(next, Some(b'+')) || next.is_some_and(|b| b.is_ascii_digit()) {
                is_date = !is_keyword(&buf);
            }
            if is_date {
                ftype = FieldType::Date;
                loop {
                    buf.push(s[i].to_ascii_lowercase() as char);
                    i += 1;
                    if !(i < s.len()
                        && (matches!(s[i], b'+' | b'-' | b'/' | b'_' | b'.' | b':')
                            || s[i].is_ascii_alphanumeric()))
                    {
                        break;
                    }
                }
            } else {
                ftype = FieldType::String;
            }
        } else if c == b'+' || c == b'-' {
            buf.push(c as char);
            i += 1;
            while i < s.len() && is_space(s[i]) {
                i += 1;
            }
            if i < s.len() && s[i].is_ascii_digit() {
                ftype = FieldType::Tz;
                take_while(&mut i, &mut buf, &|b| {
                    b.is_ascii_digit() || b == b':' || b == b'.' || b == b'-'
                });
            } else if i < s.len() && s[i].is_ascii_alphabetic() {
                ftype = FieldType::Special;
                take_while(&mut i, &mut buf, &|b| b.is_ascii_alphabetic());
            } else {
                return Err(bad_format(type_name));
            }
        } else if c.is_ascii_punctuation() {
            i += 1;
            continue;
        } else {
            return Err(bad_format(type_name));
        }
        fields.push((ftype, buf));
    }
    Ok(fields)
}

/// Keywords of Postgres's core token table that may be followed by a digit
/// or `+` without starting a zone name.
fn is_keyword(word: &str) -> bool {
    keyword(word).is_some()
}

#[derive(Clone, Copy)]
enum Keyword {
    Month(i64),
    Dow,
    Am,
    Pm,
    Ad,
    Bc,
    IsoTime,
    Ignore,
    Infinity,
    NegInfinity,
    Epoch,
    Allballs,
    /// Depends on the server's clock or needs a feature not ported.
    Unsupported,
}

fn keyword(word: &str) -> Option<Keyword> {
    use Keyword::*;
    let months = [
        ("jan", 1),
        ("january", 1),
        ("feb", 2),
        ("february", 2),
        ("mar", 3),
        ("march", 3),
        ("apr", 4),
        ("april", 4),
        ("may", 5),
        ("jun", 6),
        ("june", 6),
        ("jul", 7),
        ("july", 7),
        ("aug", 8),
        ("august", 8),
        ("sep", 9),
        ("sept", 9),
        ("september", 9),
        ("oct", 10),
        ("october", 10),
        ("nov", 11),
        ("november", 11),
        ("dec", 12),
        ("december", 12),
    ];
    if let Some((_, m)) = months.iter().find(|(name, _)| *name == word) {
        return Some(Month(*m));
    }
    Some(match word {
        "sun" | "sunday" | "mon" | "monday" | "tue" | "tues" | "tuesday" | "wed" | "wednesday"
        | "thu" | "thur" | "thurs" | "thursday" | "fri" | "friday" | "sat" | "saturday" => Dow,
        "am" | "a.m." => Am,
        "pm" | "p.m." => Pm,
        "ad" => Ad,
        "bc" => Bc,
        "t" => IsoTime,
        "at" | "on" => Ignore,
        "infinity" | "+infinity" => Infinity,
        "-infinity" => NegInfinity,
        "epoch" => Epoch,
        "allballs" => Allballs,
        "now" | "today" | "tomorrow" | "yesterday" | "j" | "julian" | "jd" | "d" | "h" | "m"
        | "mm" | "s" | "y" | "dst" | "invalid" => Unsupported,
        _ => return None,
    })
}

/// `DecodeTimezone`: `+h`, `+hh`, `+hhmm`, `+hh:mm`, `+hh:mm:ss`. Returns
/// seconds east of UTC.
fn decode_timezone(s: &str, type_name: &str) -> Result<i64, TypeError> {
    let bytes = s.as_bytes();
    let negative = match bytes.first() {
        Some(b'+') => false,
        Some(b'-') => true,
        _ => return Err(bad_format(type_name)),
    };
    let body = &s[1..];
    let number = |t: &str| -> (Option<i64>, usize) {
        let n = t.bytes().take_while(u8::is_ascii_digit).count();
        (t[..n].parse::<i64>().ok(), n)
    };
    let (hr, n) = number(body);
    let Some(mut hr) = hr else {
        return Err(bad_format(type_name));
    };
    let mut rest = &body[n..];
    let mut min = 0;
    let mut sec = 0;
    if let Some(after) = rest.strip_prefix(':') {
        let (m, n) = number(after);
        min = m.ok_or_else(|| bad_format(type_name))?;
        rest = &after[n..];
        if let Some(after) = rest.strip_prefix(':') {
            let (s2, n) = number(after);
            sec = s2.ok_or_else(|| bad_format(type_name))?;
            rest = &after[n..];
        }
    } else if rest.is_empty() && s.len() > 3 {
        min = hr % 100;
        hr /= 100;
    }
    if !(0..=15).contains(&hr) || !(0..60).contains(&min) || !(0..60).contains(&sec) {
        return Err(tz_overflow(type_name));
    }
    if !rest.is_empty() {
        return Err(bad_format(type_name));
    }
    let east = (hr * 60 + min) * 60 + sec;
    Ok(if negative { -east } else { east })
}

/// `ParseFractionalSecond`: `.123` to microseconds, rounded half-even.
fn fraction(s: &str, type_name: &str) -> Result<i64, TypeError> {
    if !s.starts_with('.') || !s[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_format(type_name));
    }
    let frac: f64 = format!("0{s}").parse().map_err(|_| bad_format(type_name))?;
    Ok((frac * 1_000_000.0).round_ties_even() as i64)
}

struct Decoder<'a> {
    type_name: &'a str,
    order: DateOrder,
    fmask: u32,
    tm: Fields,
    is2digits: bool,
    have_text_month: bool,
    bc: bool,
    mer: Option<bool>, // Some(true) = PM
}

fn parse_int(s: &str, type_name: &str) -> Result<i64, TypeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_format(type_name));
    }
    // strtoint's ERANGE.
    s.parse::<i32>()
        .map(i64::from)
        .map_err(|_| field_overflow(type_name))
}

impl Decoder<'_> {
    fn bad(&self) -> TypeError {
        bad_format(self.type_name)
    }

    fn claim(&mut self, mask: u32) -> Result<(), TypeError> {
        if self.fmask & mask != 0 {
            return Err(self.bad());
        }
        self.fmask |= mask;
        Ok(())
    }

    /// `DecodeNumber`: one numeric date field, placed by what is known.
    fn number(&mut self, s: &str) -> Result<(), TypeError> {
        let flen = s.len();
        let (digits, frac) = match s.find('.') {
            Some(p) => (&s[..p], Some(&s[p..])),
            None => (s, None),
        };
        if let Some(frac) = frac {
            if digits.len() > 2 {
                return self.number_field(s, false);
            }
            self.tm.fsec = fraction(frac, self.type_name)?;
        }
        let val = parse_int(digits, self.type_name)?;
        if flen == 3 && self.fmask & DATE_M == YEAR && (1..=366).contains(&val) {
            return Err(unsupported(self.type_name, "a day-of-year date"));
        }
        let tmask;
        match self.fmask & DATE_M {
            0 => {
                if flen >= 3 || self.order == DateOrder::Ymd {
                    tmask = YEAR;
                    self.tm.year = val;
                } else if self.order == DateOrder::Dmy {
                    tmask = DAY;
                    self.tm.day = val;
                } else {
                    tmask = MONTH;
                    self.tm.month = val;
                }
            }
            YEAR => {
                tmask = MONTH;
                self.tm.month = val;
            }
            MONTH => {
                if self.have_text_month && (flen >= 3 || self.order == DateOrder::Ymd) {
                    tmask = YEAR;
                    self.tm.year = val;
                } else {
                    tmask = DAY;
                    self.tm.day = val;
                }
            }
            m if m == YEAR | MONTH => {
                if self.have_text_month && flen >= 3 && self.is2digits {
                    // The first number was the day after all.
                    tmask = DAY;
                    self.tm.day = self.tm.year;
                    self.tm.year = val;
                    self.is2digits = false;
                    self.claim(tmask)?;
                    return Ok(());
                }
                tmask = DAY;
                self.tm.day = val;
            }
            DAY => {
                tmask = MONTH;
                self.tm.month = val;
            }
            m if m == MONTH | DAY => {
                tmask = YEAR;
                self.tm.year = val;
            }
            DATE_M => return self.number_field(s, false),
            _ => return Err(self.bad()),
        }
        if tmask == YEAR {
            self.is2digits = flen <= 2;
        }
        self.claim(tmask)
    }

    /// `DecodeNumberField`: run-together `yyyymmdd`, `hhmmss` or `hhmm`
    /// (only a time when `time_only`).
    fn number_field(&mut self, s: &str, time_only: bool) -> Result<(), TypeError> {
        if s.contains('.') {
            return Err(unsupported(
                self.type_name,
                "a run-together date or time with a fraction",
            ));
        }
        let len = s.len();
        if !time_only && self.fmask & DATE_M != DATE_M && len >= 6 {
            self.claim(DATE_M)?;
            self.tm.day = parse_int(&s[len - 2..], self.type_name)?;
            self.tm.month = parse_int(&s[len - 4..len - 2], self.type_name)?;
            self.tm.year = parse_int(&s[..len - 4], self.type_name)?;
            self.is2digits = len - 4 == 2;
            return Ok(());
        }
        if self.fmask & TIME_M != TIME_M && (len == 6 || len == 4) {
            self.claim(TIME_M)?;
            self.tm.hour = parse_int(&s[..2], self.type_name)?;
            self.tm.minute = parse_int(&s[2..4], self.type_name)?;
            self.tm.second = if len == 6 {
                parse_int(&s[4..6], self.type_name)?
            } else {
                0
            };
            self.tm.fsec = 0;
            self.tm.time_set = true;
            return Ok(());
        }
        Err(self.bad())
    }

    /// `DecodeDate`: a date field with `-`, `/` or `.` separators and maybe
    /// a month name.
    fn date(&mut self, s: &str) -> Result<(), TypeError> {
        let mut parts: Vec<&str> = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            while i < b.len() && !b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            if i >= b.len() {
                return Err(self.bad());
            }
            let start = i;
            if b[i].is_ascii_digit() {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            } else {
                while i < b.len() && b[i].is_ascii_alphabetic() {
                    i += 1;
                }
            }
            parts.push(&s[start..i]);
            if i < b.len() {
                i += 1;
            }
        }
        if parts.len() > 25 {
            return Err(self.bad());
        }
        let mut numbers = Vec::new();
        for part in parts {
            if part.as_bytes()[0].is_ascii_alphabetic() {
                match keyword(part) {
                    Some(Keyword::Month(m)) => {
                        self.claim(MONTH)?;
                        self.tm.month = m;
                        self.have_text_month = true;
                    }
                    Some(Keyword::Ignore) => {}
                    _ => return Err(self.bad()),
                }
            } else {
                numbers.push(part);
            }
        }
        for n in numbers {
            self.number(n)?;
        }
        // DecodeDate checks the caller's mask too: a date field after a
        // time, weekday, AM/PM or era word is refused.
        if self.fmask & !TZ != DATE_M {
            return Err(self.bad());
        }
        Ok(())
    }

    /// `DecodeTime`: `hh:mm`, `hh:mm:ss[.f]`, or `mm:ss.f`.
    fn time(&mut self, s: &str) -> Result<(), TypeError> {
        self.claim(TIME_M)?;
        let mut parts = s.splitn(2, ':');
        let hour = parse_int(parts.next().unwrap_or(""), self.type_name)?;
        let rest = parts.next().ok_or_else(|| self.bad())?;
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        let minute = parse_int(&rest[..n], self.type_name)?;
        let rest = &rest[n..];
        let (h, m, sec, fsec) = if rest.is_empty() {
            (hour, minute, 0, 0)
        } else if rest.starts_with('.') {
            // mm:ss.fff
            (0, hour, minute, fraction(rest, self.type_name)?)
        } else if let Some(rest) = rest.strip_prefix(':') {
            let n = rest.bytes().take_while(u8::is_ascii_digit).count();
            let sec = parse_int(&rest[..n], self.type_name)?;
            let rest = &rest[n..];
            let fsec = if rest.is_empty() {
                0
            } else {
                fraction(rest, self.type_name)?
            };
            (hour, minute, sec, fsec)
        } else {
            return Err(self.bad());
        };
        if !(0..60).contains(&m) || !(0..=60).contains(&sec) || !(0..=1_000_000).contains(&fsec) {
            return Err(field_overflow(self.type_name));
        }
        self.tm.hour = h;
        self.tm.minute = m;
        self.tm.second = sec;
        self.tm.fsec = fsec;
        self.tm.time_set = true;
        Ok(())
    }

    /// A zone name: from a word (unknown: bad format) or from a field with
    /// punctuation like `america/new_york` (unknown: 22023, as Postgres).
    fn zone_name(&mut self, name: &str, punctuated: bool) -> Result<(), TypeError> {
        if zone::is_dynamic_abbreviation(name) {
            return Err(unsupported(
                self.type_name,
                "a date-dependent time zone abbreviation",
            ));
        }
        let zone = zone::named_zone(name).ok_or_else(|| {
            if punctuated {
                TypeError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!(
                        "time zone not recognized in a value of type {}",
                        self.type_name
                    ),
                )
            } else {
                self.bad()
            }
        })?;
        self.claim(TZ)?;
        self.tm.zone = Some(ZoneGiven::Named(zone));
        Ok(())
    }

    /// `time_overflows`: each field in range and at most 24:00:00.
    fn check_time(&self) -> Result<(), TypeError> {
        let t = &self.tm;
        let total = ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.fsec;
        if !(0..=24).contains(&t.hour)
            || !(0..60).contains(&t.minute)
            || !(0..=60).contains(&t.second)
            || total > 86_400_000_000
        {
            return Err(field_overflow(self.type_name));
        }
        Ok(())
    }

    /// `ValidateDate` plus the AM/PM adjustment.
    fn finish(&mut self) -> Result<(), TypeError> {
        if self.fmask & YEAR != 0 {
            if self.bc {
                if self.tm.year <= 0 {
                    return Err(field_overflow(self.type_name));
                }
                self.tm.year = -(self.tm.year - 1);
            } else if self.is2digits {
                if self.tm.year < 70 {
                    self.tm.year += 2000;
                } else if self.tm.year < 100 {
                    self.tm.year += 1900;
                }
            } else if self.tm.year <= 0 {
                return Err(field_overflow(self.type_name));
            }
        }
        if self.fmask & MONTH != 0 && !(1..=12).contains(&self.tm.month) {
            return Err(field_overflow(self.type_name));
        }
        if self.fmask & DAY != 0 && !(1..=31).contains(&self.tm.day) {
            return Err(field_overflow(self.type_name));
        }
        if self.fmask & DATE_M == DATE_M {
            if self.tm.day > super::calendar::days_in_month(self.tm.year, self.tm.month) {
                return Err(field_overflow(self.type_name));
            }
            self.tm.date_set = true;
        }
        match self.mer {
            Some(_) if self.tm.hour > 12 => return Err(field_overflow(self.type_name)),
            Some(false) if self.tm.hour == 12 => self.tm.hour = 0,
            Some(true) if self.tm.hour != 12 => self.tm.hour += 12,
            _ => {}
        }
        Ok(())
    }
}

/// Decodes date/time text for `type_name` (`date`, `time`, `timestamp`,
/// `timestamptz`); `order` is the session's `DateStyle` field order.
pub(crate) fn decode(text: &str, type_name: &str, order: DateOrder) -> Result<Decoded, TypeError> {
    let time_only = type_name == "time without time zone";
    let fields = tokenize(text, type_name)?;
    let mut d = Decoder {
        type_name,
        order,
        fmask: 0,
        tm: Fields::default(),
        is2digits: false,
        have_text_month: false,
        bc: false,
        mer: None,
    };
    let mut special = None;
    let mut iso_time_next = false;
    for (index, (ftype, field)) in fields.iter().enumerate() {
        if iso_time_next && !matches!(ftype, FieldType::Number | FieldType::Time | FieldType::Date)
        {
            return Err(d.bad());
        }
        if iso_time_next && *ftype == FieldType::Date {
            // After "t" Postgres reads such a field as a run-together time
            // with a zone, `hhmmss-zz` (DecodeDateTime and DecodeTimeOnly
            // alike): without a time yet and with the `-`, one this proxy
            // does not reproduce.
            if d.fmask & TIME_M == TIME_M || !field.contains('-') {
                return Err(d.bad());
            }
            return Err(unsupported(
                type_name,
                "a run-together time with a time zone",
            ));
        }
        iso_time_next = false;
        match ftype {
            FieldType::Date if time_only => {
                // DecodeTimeOnly takes a date only as the first field, before
                // a time or with a zone name last; otherwise a zone name.
                let last_is_date = fields.last().is_some_and(|f| f.0 == FieldType::Date);
                let second_is_time = fields.get(1).is_some_and(|f| f.0 == FieldType::Time);
                if index == 0 && fields.len() >= 2 && (last_is_date || second_is_time) {
                    d.date(field)?;
                } else if field.as_bytes()[0].is_ascii_digit() {
                    if d.fmask & TIME_M == TIME_M {
                        return Err(d.bad());
                    }
                    return Err(unsupported(
                        type_name,
                        "a run-together time with a time zone",
                    ));
                } else {
                    d.zone_name(field, true)?;
                }
            }
            FieldType::Date => {
                if d.fmask & (MONTH | DAY) == (MONTH | DAY) {
                    if field.as_bytes()[0].is_ascii_digit() {
                        return Err(unsupported(
                            type_name,
                            "a run-together time with a time zone",
                        ));
                    }
                    d.zone_name(field, true)?;
                } else {
                    d.date(field)?;
                }
            }
            FieldType::Time => {
                d.time(field)?;
                d.check_time()?;
            }
            FieldType::Tz => {
                let east = decode_timezone(field, type_name)?;
                d.claim(TZ)?;
                d.tm.zone = Some(ZoneGiven::Fixed(east));
            }
            FieldType::Number if time_only => {
                // DecodeTimeOnly: numbers are run-together times.
                match field.find('.') {
                    Some(p) if p > 2 => {
                        return Err(unsupported(
                            type_name,
                            "a run-together time with a fraction",
                        ))
                    }
                    Some(_) => return Err(d.bad()),
                    None => d.number_field(field, true)?,
                }
                d.check_time()?;
            }
            FieldType::Number => {
                let flen = field.len();
                let dot = field.find('.');
                if dot.is_some() && d.fmask & DATE_M == 0 {
                    d.date(field)?;
                } else if dot.is_some_and(|p| p > 2)
                    || (flen >= 6 && (d.fmask & DATE_M == 0 || d.fmask & TIME_M == 0))
                {
                    // A run-together date (yyyymmdd) or time (hhmmss); as in
                    // Postgres, such a time is not range-checked here.
                    d.number_field(field, false)?;
                } else {
                    d.number(field)?;
                }
            }
            FieldType::String | FieldType::Special => {
                if let Some(east) = zone::abbreviation(field) {
                    d.claim(TZ)?;
                    d.tm.zone = Some(ZoneGiven::Fixed(east));
                    continue;
                }
                match keyword(field) {
                    Some(Keyword::Month(_) | Keyword::Dow) if time_only => return Err(d.bad()),
                    Some(Keyword::Month(m)) => {
                        // A numeric "month" read before the month name was
                        // the day: "8 Jan 1999".
                        if d.fmask & MONTH != 0
                            && !d.have_text_month
                            && d.fmask & DAY == 0
                            && (1..=31).contains(&d.tm.month)
                        {
                            d.tm.day = d.tm.month;
                            d.fmask |= DAY;
                        } else {
                            d.claim(MONTH)?;
                        }
                        d.tm.month = m;
                        d.have_text_month = true;
                    }
                    Some(Keyword::Dow) => d.claim(DOW)?,
                    Some(Keyword::Am) => {
                        d.claim(AMPM)?;
                        d.mer = Some(false);
                    }
                    Some(Keyword::Pm) => {
                        d.claim(AMPM)?;
                        d.mer = Some(true);
                    }
                    Some(Keyword::Ad) => d.claim(ADBC)?,
                    Some(Keyword::Bc) => {
                        d.claim(ADBC)?;
                        d.bc = true;
                    }
                    Some(Keyword::Ignore) => {}
                    Some(Keyword::IsoTime) => {
                        let needs_date = !time_only && d.fmask & DATE_M != DATE_M;
                        if needs_date || index + 1 >= fields.len() {
                            return Err(d.bad());
                        }
                        iso_time_next = true;
                    }
                    Some(Keyword::Infinity | Keyword::NegInfinity | Keyword::Epoch)
                        if time_only =>
                    {
                        return Err(d.bad())
                    }
                    Some(k @ (Keyword::Infinity | Keyword::NegInfinity | Keyword::Epoch)) => {
                        // Postgres 15 lets other fields surround these with
                        // rules of its own (`allballs` turns the result back
                        // into a date); only the plain word is taken.
                        if fields.len() != 1 {
                            return Err(unsupported(
                                type_name,
                                "infinity or epoch combined with other fields",
                            ));
                        }
                        special = Some(k);
                    }
                    Some(Keyword::Allballs) => {
                        d.claim(TIME_M | TZ)?;
                        d.tm.time_set = true;
                        d.tm.zone = Some(ZoneGiven::Fixed(0));
                    }
                    Some(Keyword::Unsupported) => {
                        return Err(unsupported(
                            type_name,
                            "a relative or labelled date/time word",
                        ))
                    }
                    None => d.zone_name(field, false)?,
                }
            }
        }
    }
    if iso_time_next {
        return Err(d.bad());
    }
    d.finish()?;
    if time_only && d.fmask & DATE_M != DATE_M {
        // A zone whose offset ever changes needs a date to mean anything
        // (Postgres's pg_get_timezone_offset); a POSIX zone without
        // daylight saving time, `abc12:34`, does not.
        if let Some(ZoneGiven::Named(tz)) = &d.tm.zone {
            if !zone::has_one_offset(tz) {
                return Err(d.bad());
            }
        }
    }
    Ok(match special {
        Some(Keyword::Infinity) => Decoded::Late,
        Some(Keyword::NegInfinity) => Decoded::Early,
        Some(Keyword::Epoch) => Decoded::Epoch,
        _ => Decoded::Fields(d.tm),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ymd(text: &str, order: DateOrder) -> (i64, i64, i64) {
        match decode(text, "date", order).unwrap() {
            Decoded::Fields(f) => {
                assert!(f.date_set, "{text}");
                (f.year, f.month, f.day)
            }
            _ => panic!("{text}: special"),
        }
    }

    #[test]
    fn date_forms() {
        use DateOrder::*;
        assert_eq!(ymd("2024-01-02", Mdy), (2024, 1, 2));
        assert_eq!(ymd("01/02/2024", Mdy), (2024, 1, 2));
        assert_eq!(ymd("01/02/2024", Dmy), (2024, 2, 1));
        assert_eq!(ymd("2024/01/02", Dmy), (2024, 1, 2));
        assert_eq!(ymd("20240102", Mdy), (2024, 1, 2));
        assert_eq!(ymd("January 8, 1999", Mdy), (1999, 1, 8));
        assert_eq!(ymd("1999-Jan-08", Mdy), (1999, 1, 8));
        assert_eq!(ymd("08-Jan-1999", Mdy), (1999, 1, 8));
        assert_eq!(ymd("Jan-08-99", Mdy), (1999, 1, 8));
        assert_eq!(ymd("0044-03-15 BC", Mdy), (-43, 3, 15));
        assert_eq!(ymd("1/2/24", Mdy), (2024, 1, 2));
        assert_eq!(ymd("2024.01.02", Mdy), (2024, 1, 2));
        for bad in ["2024-13-01", "2023-02-29", "0000-01-01"] {
            assert_eq!(
                decode(bad, "date", Mdy).err().map(|e| e.sqlstate()),
                Some("22008"),
                "{bad}"
            );
        }
        for bad in ["2024-01", "2024-01-02-03", "abc", "2024-01-02 x"] {
            assert!(decode(bad, "date", Mdy).is_err(), "{bad}");
        }
        assert_eq!(
            decode("today", "date", Mdy).err().map(|e| e.sqlstate()),
            Some("0A000")
        );
    }

    #[test]
    fn time_and_zone_forms() {
        let f = match decode("2024-01-02T03:04:05.5+05:30", "timestamptz", DateOrder::Mdy).unwrap()
        {
            Decoded::Fields(f) => f,
            _ => panic!(),
        };
        assert_eq!((f.hour, f.minute, f.second, f.fsec), (3, 4, 5, 500_000));
        assert!(matches!(f.zone, Some(ZoneGiven::Fixed(19800))));
        for (tz, east) in [
            ("+0530", 19800),
            ("-7", -25200),
            ("+05:30:15", 19815),
            ("+1", 3600),
        ] {
            assert_eq!(decode_timezone(tz, "x").unwrap(), east, "{tz}");
        }
        assert_eq!(decode_timezone("+16", "x").unwrap_err().sqlstate(), "22009");
        let f = match decode(
            "2024-01-02 12:00 pm Europe/Berlin",
            "timestamptz",
            DateOrder::Mdy,
        )
        .unwrap()
        {
            Decoded::Fields(f) => f,
            _ => panic!(),
        };
        assert_eq!(f.hour, 12);
        assert!(matches!(f.zone, Some(ZoneGiven::Named(_))));
        assert!(matches!(
            decode(" -infinity ", "timestamp", DateOrder::Mdy).unwrap(),
            Decoded::Early
        ));
    }

    #[test]
    fn a_time_takes_a_zone_without_a_date_only_when_its_offset_never_changes() {
        let time = |t: &str| decode(t, "time without time zone", DateOrder::Mdy);
        // POSIX zones without daylight saving time, as pg_tzset reads them.
        assert!(time("23:59:59.999999 pmCET12:34:56").is_ok());
        assert!(time("12:00 abc-3").is_ok());
        assert!(time("12:00 UTC").is_ok());
        // Zones whose offset changes need a date (22007, as Postgres).
        for t in ["12:00 EST5EDT", "12:00 America/New_York"] {
            let e = time(t).err().unwrap_or_else(|| panic!("{t} accepted"));
            assert_eq!(e.sqlstate(), "22007", "{t}");
        }
    }

    #[test]
    fn a_date_shaped_field_after_t_is_a_run_together_time_with_a_zone() {
        // Postgres reads "T 2024-8" as 20:24 at UTC-8; not reproduced: 0A000.
        let e = decode("T 2024-8 /", "time without time zone", DateOrder::Dmy)
            .err()
            .expect("refused");
        assert_eq!(e.sqlstate(), "0A000");
        let e = decode(
            "2024-01-02 T 2024/8",
            "timestamp without time zone",
            DateOrder::Mdy,
        )
        .err()
        .expect("refused");
        assert_eq!(e.sqlstate(), "22007");
    }
}
