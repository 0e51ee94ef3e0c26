//! `date`, `time`, `timestamp` and `timestamptz`: text input (see
//! [`parse`]), binary forms (days or microseconds since 2000-01-01, with
//! `i32::MIN/MAX` and `i64::MIN/MAX` as `-infinity`/`infinity`) and text
//! output in the session's `DateStyle` and `TimeZone`.

mod calendar;
mod parse;
mod zone;

use crate::types::error::{sqlstate, TypeError};
use crate::types::session::{DateOrder, DateOutput, SessionFormat};
use calendar::{
    date2j, is_valid_date, is_valid_julian, is_valid_timestamp, j2date, POSTGRES_EPOCH_JDATE,
    UNIX_EPOCH_JDATE, USECS_PER_DAY, USECS_PER_SEC,
};
use parse::{bad_format, decode, Decoded, Fields, ZoneGiven};

const DATE_NOBEGIN: i32 = i32::MIN;
const DATE_NOEND: i32 = i32::MAX;
const TS_NOBEGIN: i64 = i64::MIN;
const TS_NOEND: i64 = i64::MAX;

fn out_of_range(what: &str) -> TypeError {
    TypeError::new(
        sqlstate::DATETIME_FIELD_OVERFLOW,
        format!("{what} out of range"),
    )
}

fn fixed_len<const N: usize>(bin: &[u8], type_name: &str) -> Result<[u8; N], TypeError> {
    bin.try_into()
        .map_err(|_| TypeError::binary(type_name, "wrong length"))
}

// ---- date ----------------------------------------------------------------

pub(crate) fn date_in(text: &str, fmt: &SessionFormat) -> Result<Vec<u8>, TypeError> {
    let days = match decode(text, "date", fmt.date_order)? {
        Decoded::Late => DATE_NOEND,
        Decoded::Early => DATE_NOBEGIN,
        Decoded::Epoch => (UNIX_EPOCH_JDATE - POSTGRES_EPOCH_JDATE) as i32,
        Decoded::Fields(f) => {
            if !f.date_set {
                return Err(bad_format("date"));
            }
            if !is_valid_julian(f.year, f.month) {
                return Err(out_of_range("date"));
            }
            let days = date2j(f.year, f.month, f.day) - POSTGRES_EPOCH_JDATE;
            if !is_valid_date(days) {
                return Err(out_of_range("date"));
            }
            days as i32
        }
    };
    Ok(days.to_be_bytes().to_vec())
}

fn date_value(bin: &[u8]) -> Result<i32, TypeError> {
    let days = i32::from_be_bytes(fixed_len(bin, "date")?);
    if days != DATE_NOBEGIN && days != DATE_NOEND && !is_valid_date(i64::from(days)) {
        return Err(out_of_range("date"));
    }
    Ok(days)
}

pub(crate) fn date_recv(bin: &[u8]) -> Result<Vec<u8>, TypeError> {
    date_value(bin).map(|d| d.to_be_bytes().to_vec())
}

pub(crate) fn date_out(bin: &[u8], fmt: &SessionFormat) -> Result<String, TypeError> {
    let days = date_value(bin)?;
    Ok(match days {
        DATE_NOBEGIN => "-infinity".into(),
        DATE_NOEND => "infinity".into(),
        _ => {
            let (y, m, d) = j2date(i64::from(days) + POSTGRES_EPOCH_JDATE);
            let mut out = encode_date(y, m, d, fmt);
            push_bc(&mut out, y);
            out
        }
    })
}

/// The date part in `DateStyle` (`EncodeDateOnly`), without the BC suffix.
fn encode_date(y: i64, m: i64, d: i64, fmt: &SessionFormat) -> String {
    let year = display_year(y);
    let dmy = fmt.date_order == DateOrder::Dmy;
    match fmt.date_output {
        DateOutput::Iso => format!("{year:04}-{m:02}-{d:02}"),
        DateOutput::Sql if dmy => format!("{d:02}/{m:02}/{year:04}"),
        DateOutput::Sql => format!("{m:02}/{d:02}/{year:04}"),
        DateOutput::German => format!("{d:02}.{m:02}.{year:04}"),
        DateOutput::Postgres if dmy => format!("{d:02}-{m:02}-{year:04}"),
        DateOutput::Postgres => format!("{m:02}-{d:02}-{year:04}"),
    }
}

fn display_year(y: i64) -> i64 {
    if y > 0 {
        y
    } else {
        -(y - 1)
    }
}

fn push_bc(out: &mut String, y: i64) {
    if y <= 0 {
        out.push_str(" BC");
    }
}

// ---- time ----------------------------------------------------------------

pub(crate) fn time_in(text: &str, fmt: &SessionFormat) -> Result<Vec<u8>, TypeError> {
    let Decoded::Fields(f) = decode(text, "time without time zone", fmt.date_order)? else {
        return Err(bad_format("time without time zone"));
    };
    if !f.time_set {
        return Err(bad_format("time without time zone"));
    }
    if f.hour == 24 && (f.minute > 0 || f.second > 0 || f.fsec > 0) {
        return Err(parse::field_overflow("time without time zone"));
    }
    Ok(time_of(&f).to_be_bytes().to_vec())
}

fn time_of(f: &Fields) -> i64 {
    ((f.hour * 60 + f.minute) * 60 + f.second) * USECS_PER_SEC + f.fsec
}

fn time_value(bin: &[u8]) -> Result<i64, TypeError> {
    let t = i64::from_be_bytes(fixed_len(bin, "time without time zone")?);
    if !(0..=USECS_PER_DAY).contains(&t) {
        return Err(out_of_range("time"));
    }
    Ok(t)
}

pub(crate) fn time_recv(bin: &[u8]) -> Result<Vec<u8>, TypeError> {
    time_value(bin).map(|t| t.to_be_bytes().to_vec())
}

pub(crate) fn time_out(bin: &[u8]) -> Result<String, TypeError> {
    Ok(encode_time(time_value(bin)?))
}

/// `HH:MM:SS[.ffffff]` with trailing fraction zeros trimmed.
fn encode_time(t: i64) -> String {
    let secs = t / USECS_PER_SEC;
    let fsec = t % USECS_PER_SEC;
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if fsec != 0 {
        let frac = format!("{fsec:06}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out
}

// ---- timestamp and timestamptz -------------------------------------------

/// Parses timestamp text. With `with_zone`, the result is UTC: the zone in
/// the text or else the session's converts the local time.
fn timestamp_parse(text: &str, fmt: &SessionFormat, with_zone: bool) -> Result<i64, TypeError> {
    let type_name = if with_zone {
        "timestamp with time zone"
    } else {
        "timestamp without time zone"
    };
    let f = match decode(text, type_name, fmt.date_order)? {
        Decoded::Late => return Ok(TS_NOEND),
        Decoded::Early => return Ok(TS_NOBEGIN),
        Decoded::Epoch => return Ok((UNIX_EPOCH_JDATE - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY),
        Decoded::Fields(f) => f,
    };
    if !f.date_set {
        return Err(bad_format(type_name));
    }
    let range = || out_of_range("timestamp");
    if !is_valid_julian(f.year, f.month) {
        return Err(range());
    }
    let date = date2j(f.year, f.month, f.day) - POSTGRES_EPOCH_JDATE;
    let local = date
        .checked_mul(USECS_PER_DAY)
        .and_then(|d| d.checked_add(time_of(&f)))
        .ok_or_else(range)?;
    let result = if with_zone {
        let local_unix_secs = (date2j(f.year, f.month, f.day) - UNIX_EPOCH_JDATE) * 86_400
            + (f.hour * 60 + f.minute) * 60
            + f.second;
        let east = match &f.zone {
            Some(ZoneGiven::Fixed(east)) => *east,
            Some(ZoneGiven::Named(tz)) => zone::offset_for_local(tz, local_unix_secs),
            None => zone::offset_for_local(fmt.time_zone.zone(), local_unix_secs),
        };
        local.checked_sub(east * USECS_PER_SEC).ok_or_else(range)?
    } else {
        local
    };
    if !is_valid_timestamp(result) {
        return Err(range());
    }
    Ok(result)
}

pub(crate) fn timestamp_in(text: &str, fmt: &SessionFormat) -> Result<Vec<u8>, TypeError> {
    Ok(timestamp_parse(text, fmt, false)?.to_be_bytes().to_vec())
}

pub(crate) fn timestamptz_in(text: &str, fmt: &SessionFormat) -> Result<Vec<u8>, TypeError> {
    Ok(timestamp_parse(text, fmt, true)?.to_be_bytes().to_vec())
}

fn timestamp_value(bin: &[u8], type_name: &str) -> Result<i64, TypeError> {
    let t = i64::from_be_bytes(fixed_len(bin, type_name)?);
    if t != TS_NOBEGIN && t != TS_NOEND && !is_valid_timestamp(t) {
        return Err(out_of_range("timestamp"));
    }
    Ok(t)
}

pub(crate) fn timestamp_recv(bin: &[u8], with_zone: bool) -> Result<Vec<u8>, TypeError> {
    let name = if with_zone {
        "timestamp with time zone"
    } else {
        "timestamp without time zone"
    };
    timestamp_value(bin, name).map(|t| t.to_be_bytes().to_vec())
}

pub(crate) fn timestamp_out(bin: &[u8], fmt: &SessionFormat) -> Result<String, TypeError> {
    let t = timestamp_value(bin, "timestamp without time zone")?;
    Ok(match t {
        TS_NOBEGIN => "-infinity".into(),
        TS_NOEND => "infinity".into(),
        _ => encode_timestamp(t, None, fmt),
    })
}

pub(crate) fn timestamptz_out(bin: &[u8], fmt: &SessionFormat) -> Result<String, TypeError> {
    let t = timestamp_value(bin, "timestamp with time zone")?;
    if t == TS_NOBEGIN || t == TS_NOEND {
        return Ok(if t == TS_NOBEGIN {
            "-infinity"
        } else {
            "infinity"
        }
        .into());
    }
    if fmt.date_output != DateOutput::Iso {
        return Err(TypeError::unsupported(
            "timestamp with time zone output is only supported with DateStyle ISO through the proxy",
        ));
    }
    let unix_secs = t.div_euclid(USECS_PER_SEC) + zone::EPOCH_SHIFT_SECS;
    let east = zone::offset_at_instant(fmt.time_zone.zone(), unix_secs);
    Ok(encode_timestamp(t + east * USECS_PER_SEC, Some(east), fmt))
}

/// `EncodeDateTime` for a local timestamp, with the zone offset when given
/// (ISO only for timestamptz).
fn encode_timestamp(local: i64, east: Option<i64>, fmt: &SessionFormat) -> String {
    let date = local.div_euclid(USECS_PER_DAY);
    let time = local.rem_euclid(USECS_PER_DAY);
    let (y, m, d) = j2date(date + POSTGRES_EPOCH_JDATE);
    let clock = encode_time(time);
    let mut out = match fmt.date_output {
        DateOutput::Iso | DateOutput::Sql | DateOutput::German => {
            format!("{} {clock}", encode_date(y, m, d, fmt))
        }
        DateOutput::Postgres => {
            const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let dow = DAYS[((date + POSTGRES_EPOCH_JDATE + 1).rem_euclid(7)) as usize];
            let mon = MONTHS[(m - 1).clamp(0, 11) as usize];
            let year = display_year(y);
            if fmt.date_order == DateOrder::Dmy {
                format!("{dow} {d:02} {mon} {clock} {year:04}")
            } else {
                format!("{dow} {mon} {d:02} {clock} {year:04}")
            }
        }
    };
    if let Some(east) = east {
        push_offset(&mut out, east);
    }
    push_bc(&mut out, y);
    out
}

/// `EncodeTimezone`: `+HH`, `+HH:MM` or `+HH:MM:SS` as needed.
fn push_offset(out: &mut String, east: i64) {
    let abs = east.abs();
    let (h, m, s) = (abs / 3600, abs / 60 % 60, abs % 60);
    out.push(if east >= 0 { '+' } else { '-' });
    if s != 0 {
        out.push_str(&format!("{h:02}:{m:02}:{s:02}"));
    } else if m != 0 {
        out.push_str(&format!("{h:02}:{m:02}"));
    } else {
        out.push_str(&format!("{h:02}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt_tz(tz: &str) -> SessionFormat {
        let mut f = SessionFormat::default();
        f.set("TimeZone", tz).unwrap();
        f
    }

    fn tstz(text: &str, input_tz: &str, output_tz: &str) -> String {
        let bin = timestamptz_in(text, &fmt_tz(input_tz)).unwrap();
        timestamptz_out(&bin, &fmt_tz(output_tz)).unwrap()
    }

    #[test]
    fn timestamptz_round_trips_through_zones() {
        assert_eq!(
            tstz("2024-01-02 03:04:05.123", "UTC", "Europe/Berlin"),
            "2024-01-02 04:04:05.123+01"
        );
        assert_eq!(
            tstz("2024-07-02 03:04:05+02", "UTC", "Asia/Kolkata"),
            "2024-07-02 06:34:05+05:30"
        );
        assert_eq!(
            tstz(
                "2024-07-02 03:04:05",
                "America/St_Johns",
                "America/St_Johns"
            ),
            "2024-07-02 03:04:05-02:30"
        );
        assert_eq!(
            tstz("1800-01-01 00:00", "UTC", "Europe/Berlin"),
            "1800-01-01 00:53:28+00:53:28"
        );
        assert_eq!(
            tstz("0044-03-15 12:00 BC", "UTC", "UTC"),
            "0044-03-15 12:00:00+00 BC"
        );
        assert_eq!(tstz("infinity", "UTC", "UTC"), "infinity");
        assert_eq!(tstz("epoch", "UTC", "UTC"), "1970-01-01 00:00:00+00");
    }

    #[test]
    fn dates_and_times() {
        let f = SessionFormat::default();
        let date = |s: &str| date_out(&date_in(s, &f).unwrap(), &f).unwrap();
        assert_eq!(date("2024-02-29"), "2024-02-29");
        assert_eq!(date("5874897-12-31"), "5874897-12-31");
        assert_eq!(date("4714-11-24 BC"), "4714-11-24 BC");
        assert_eq!(
            date_in("5874898-01-01", &f).unwrap_err().sqlstate(),
            "22008"
        );
        let time = |s: &str| time_out(&time_in(s, &f).unwrap()).unwrap();
        assert_eq!(time("24:00"), "24:00:00");
        assert_eq!(time("1:02:03.4500"), "01:02:03.45");
        assert_eq!(time("12:00 am"), "00:00:00");
        assert_eq!(time("allballs"), "00:00:00");
        assert_eq!(time("2024-01-02 13:14:15+02"), "13:14:15");
        assert!(time_in("24:00:01", &f).is_err());
        let ts = |s: &str| timestamp_out(&timestamp_in(s, &f).unwrap(), &f).unwrap();
        assert_eq!(
            ts("2024-01-02 03:04:05.000001+05"),
            "2024-01-02 03:04:05.000001"
        );
        assert_eq!(
            ts("294276-12-31 23:59:59.999999"),
            "294276-12-31 23:59:59.999999"
        );
        assert!(timestamp_in("294277-01-01", &f).is_err());
    }

    #[test]
    fn other_date_styles() {
        let mut f = SessionFormat::default();
        let bin = timestamp_in("2024-01-02 03:04:05", &f).unwrap();
        f.set("DateStyle", "SQL, DMY").unwrap();
        assert_eq!(timestamp_out(&bin, &f).unwrap(), "02/01/2024 03:04:05");
        f.set("DateStyle", "Postgres, MDY").unwrap();
        assert_eq!(timestamp_out(&bin, &f).unwrap(), "Tue Jan 02 03:04:05 2024");
        f.set("DateStyle", "German").unwrap();
        assert_eq!(timestamp_out(&bin, &f).unwrap(), "02.01.2024 03:04:05");
        let tz = timestamptz_in("2024-01-02 03:04:05", &f).unwrap();
        assert_eq!(timestamptz_out(&tz, &f).unwrap_err().sqlstate(), "0A000");
    }
}
