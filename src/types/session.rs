//! The session settings that change how values are written and read as
//! text. Postgres's text I/O for floats, bytea and the date/time types
//! depends on them, so re-creating a value's text form on the proxy (after
//! decryption) must use the client session's settings, tracked from the
//! startup packet, `SET` and ParameterStatus.

use super::error::{sqlstate, TypeError};
use jiff::tz::TimeZone;

/// How dates and timestamps are written (`DateStyle`'s first part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateOutput {
    /// `2024-01-02 03:04:05+01` — the default and the only style the proxy
    /// writes; the others are refused when a date/time value is output.
    Iso,
    Sql,
    Postgres,
    German,
}

/// How ambiguous numeric dates like `01/02/2024` are read (`DateStyle`'s
/// second part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateOrder {
    Mdy,
    Dmy,
    Ymd,
}

/// `bytea_output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteaOutput {
    /// `\x0102…` (the default since Postgres 9.0).
    Hex,
    /// Printable ASCII as is, `\\` and `\ooo` octal for the rest.
    Escape,
}

/// The session's `TimeZone`: the name as the server reports it, and the
/// rules it stands for.
#[derive(Debug, Clone)]
pub struct SessionTimeZone {
    name: String,
    zone: TimeZone,
}

impl SessionTimeZone {
    /// Resolves a `TimeZone` setting the way Postgres's `check_timezone`
    /// does: a plain number is hours east of UTC (SQL sign convention);
    /// otherwise an IANA zone name (case-insensitive); otherwise a POSIX TZ
    /// string such as `<+05>-05` (POSIX sign convention: west positive),
    /// which is how the server reports numeric offsets in ParameterStatus.
    pub fn parse(value: &str) -> Result<SessionTimeZone, TypeError> {
        let unknown = || {
            TypeError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid value for parameter \"TimeZone\": \"{value}\""),
            )
        };
        let trimmed = value.trim();
        if trimmed.len() >= 8 && trimmed[..8].eq_ignore_ascii_case("interval") {
            return Err(TypeError::unsupported(
                "TimeZone given as an INTERVAL is not supported by the proxy; use an offset in hours or a zone name",
            ));
        }
        let numeric = !trimmed.is_empty()
            && trimmed
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.'));
        if numeric {
            let hours: f64 = trimmed.parse().map_err(|_| unknown())?;
            // Postgres truncates the product to whole seconds.
            let seconds = hours * 3600.0;
            if !seconds.is_finite() || seconds.abs() >= 168.0 * 3600.0 {
                return Err(unknown());
            }
            let offset = jiff::tz::Offset::from_seconds(seconds as i32).map_err(|_| unknown())?;
            return Ok(SessionTimeZone {
                name: value.to_string(),
                zone: TimeZone::fixed(offset),
            });
        }
        let zone = TimeZone::get(trimmed)
            .ok()
            .or_else(|| posix_fixed(trimmed))
            .or_else(|| TimeZone::posix(trimmed).ok())
            .ok_or_else(unknown)?;
        Ok(SessionTimeZone {
            name: value.to_string(),
            zone,
        })
    }

    /// The setting as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The zone's rules.
    pub(crate) fn zone(&self) -> &TimeZone {
        &self.zone
    }
}

/// `<abbr>[+-]hh[:mm[:ss]]`: the fixed-offset form Postgres reports for a
/// numeric or interval `TimeZone` (`pg_tzset_offset`). `jiff`'s POSIX
/// parser refuses the `:` Postgres puts inside the quoted abbreviation.
/// POSIX offsets count west of UTC.
fn posix_fixed(value: &str) -> Option<TimeZone> {
    let rest = value.strip_prefix('<')?;
    let (_, offset) = rest.split_once('>')?;
    let (west, body) = match offset.as_bytes().first()? {
        b'+' => (true, &offset[1..]),
        b'-' => (false, &offset[1..]),
        _ => (true, offset),
    };
    let mut seconds = 0i32;
    let mut parts = 0;
    for (i, part) in body.split(':').enumerate() {
        if i > 2 || part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: i32 = part.parse().ok()?;
        seconds += n * [3600, 60, 1][i];
        parts += 1;
    }
    if parts == 0 {
        return None;
    }
    let east = if west { -seconds } else { seconds };
    jiff::tz::Offset::from_seconds(east)
        .ok()
        .map(TimeZone::fixed)
}

impl Default for SessionTimeZone {
    fn default() -> SessionTimeZone {
        SessionTimeZone {
            name: "UTC".into(),
            zone: TimeZone::UTC,
        }
    }
}

/// The settings that affect text input and output of the logical types.
///
/// `Default` is Postgres's default with `TimeZone` UTC. Feed it every
/// ParameterStatus the server sends (`TimeZone`, `DateStyle`) and, because
/// the server does not report them, the startup options and `SET`s of
/// `extra_float_digits` and `bytea_output`.
#[derive(Debug, Clone)]
pub struct SessionFormat {
    pub time_zone: SessionTimeZone,
    pub date_output: DateOutput,
    pub date_order: DateOrder,
    /// -15 ..= 3; above 0 floats are written shortest-round-trip.
    pub extra_float_digits: i32,
    pub bytea_output: ByteaOutput,
}

impl Default for SessionFormat {
    fn default() -> SessionFormat {
        SessionFormat {
            time_zone: SessionTimeZone::default(),
            date_output: DateOutput::Iso,
            date_order: DateOrder::Mdy,
            extra_float_digits: 1,
            bytea_output: ByteaOutput::Hex,
        }
    }
}

impl SessionFormat {
    /// Applies one parameter (name case-insensitive, as in ParameterStatus or
    /// `SET`). Parameters that do not affect type I/O are ignored. On error
    /// the setting is left unchanged.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), TypeError> {
        let invalid = || {
            TypeError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid value for parameter \"{name}\": \"{value}\""),
            )
        };
        match name.to_ascii_lowercase().as_str() {
            "timezone" => self.time_zone = SessionTimeZone::parse(value)?,
            "datestyle" => {
                let (output, order) = parse_datestyle(value, self.date_output, self.date_order)
                    .ok_or_else(invalid)?;
                self.date_output = output;
                self.date_order = order;
            }
            "extra_float_digits" => {
                let digits: i32 = value.trim().parse().map_err(|_| invalid())?;
                if !(-15..=3).contains(&digits) {
                    return Err(invalid());
                }
                self.extra_float_digits = digits;
            }
            "bytea_output" => {
                self.bytea_output = match value.trim().to_ascii_lowercase().as_str() {
                    "hex" => ByteaOutput::Hex,
                    "escape" => ByteaOutput::Escape,
                    _ => return Err(invalid()),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Parses a `DateStyle` value like Postgres's `check_datestyle`: comma or
/// space separated keywords, at most one output style and one order;
/// `German` alone implies `DMY`.
fn parse_datestyle(
    value: &str,
    current_output: DateOutput,
    current_order: DateOrder,
) -> Option<(DateOutput, DateOrder)> {
    let mut output = None;
    let mut order = None;
    for word in value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        let (new_output, new_order) = match word.to_ascii_lowercase().as_str() {
            "iso" => (Some(DateOutput::Iso), None),
            "sql" => (Some(DateOutput::Sql), None),
            "postgres" => (Some(DateOutput::Postgres), None),
            "german" => (Some(DateOutput::German), None),
            "ymd" => (None, Some(DateOrder::Ymd)),
            "dmy" | "euro" | "european" => (None, Some(DateOrder::Dmy)),
            "mdy" | "us" | "noneuro" | "noneuropean" => (None, Some(DateOrder::Mdy)),
            "default" => (Some(DateOutput::Iso), Some(DateOrder::Mdy)),
            _ => return None,
        };
        if let Some(o) = new_output {
            if output.is_some_and(|prev| prev != o) {
                return None;
            }
            output = Some(o);
        }
        if let Some(o) = new_order {
            if order.is_some_and(|prev| prev != o) {
                return None;
            }
            order = Some(o);
        }
    }
    if output == Some(DateOutput::German) && order.is_none() {
        order = Some(DateOrder::Dmy);
    }
    Some((
        output.unwrap_or(current_output),
        order.unwrap_or(current_order),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_postgres_defaults() {
        let f = SessionFormat::default();
        assert_eq!(f.time_zone.name(), "UTC");
        assert_eq!(f.date_output, DateOutput::Iso);
        assert_eq!(f.date_order, DateOrder::Mdy);
        assert_eq!(f.extra_float_digits, 1);
        assert_eq!(f.bytea_output, ByteaOutput::Hex);
    }

    #[test]
    fn parameters_are_applied() {
        let mut f = SessionFormat::default();
        f.set("TimeZone", "Europe/Berlin").unwrap();
        f.set("DateStyle", "SQL, DMY").unwrap();
        f.set("extra_float_digits", "0").unwrap();
        f.set("bytea_output", "escape").unwrap();
        f.set("application_name", "x").unwrap();
        assert_eq!(f.time_zone.name(), "Europe/Berlin");
        assert_eq!(
            (f.date_output, f.date_order),
            (DateOutput::Sql, DateOrder::Dmy)
        );
        assert_eq!(f.extra_float_digits, 0);
        assert_eq!(f.bytea_output, ByteaOutput::Escape);
        f.set("datestyle", "German").unwrap();
        assert_eq!(
            (f.date_output, f.date_order),
            (DateOutput::German, DateOrder::Dmy)
        );
        assert!(f.set("DateStyle", "ISO, SQL").is_err());
        assert!(f.set("extra_float_digits", "4").is_err());
        assert!(f.set("TimeZone", "Mars/Olympus").is_err());
        assert_eq!(f.time_zone.name(), "Europe/Berlin");
    }

    #[test]
    fn time_zone_forms() {
        for (setting, seconds_east) in [
            ("UTC", 0),
            ("europe/berlin", 3600),
            ("5", 5 * 3600),
            ("-3.5", -12600),
            ("<+05>-05", 5 * 3600),
            ("<-03:30>+03:30", -12600),
        ] {
            let tz = SessionTimeZone::parse(setting).unwrap();
            let at = jiff::Timestamp::from_second(1_700_000_000).unwrap();
            assert_eq!(tz.zone().to_offset(at).seconds(), seconds_east, "{setting}");
        }
    }
}
