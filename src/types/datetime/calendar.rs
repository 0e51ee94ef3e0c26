//! Calendar arithmetic exactly as Postgres does it (`date2j`/`j2date` in
//! `datetime.c`). Postgres dates run from 4714-11-24 BC to 5874897 AD and
//! timestamps to 294276 AD, beyond what `chrono` or `jiff` can represent,
//! so the Julian-day conversion lives here; `jiff` is used only for time
//! zone rules.

/// Julian day of 2000-01-01, Postgres's epoch.
pub(crate) const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;
/// Julian day of 1970-01-01.
pub(crate) const UNIX_EPOCH_JDATE: i64 = 2_440_588;
pub(crate) const USECS_PER_SEC: i64 = 1_000_000;
pub(crate) const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// First Julian day after the last valid date (5874898-01-01).
const DATE_END_JULIAN: i64 = 2_147_483_494;
/// 4714-11-24 00:00:00 BC in microseconds since the epoch.
pub(crate) const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// 294277-01-01 00:00:00 AD (exclusive).
pub(crate) const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;

/// The Julian day of a proleptic Gregorian date (`year` astronomical:
/// 0 is 1 BC).
pub(crate) fn date2j(year: i64, month: i64, day: i64) -> i64 {
    let (m, y) = if month > 2 {
        (month + 1, year + 4800)
    } else {
        (month + 13, year + 4799)
    };
    let century = y.div_euclid(100);
    let mut julian = y * 365 - 32167;
    julian += y.div_euclid(4) - century + century.div_euclid(4);
    julian + 7834 * m / 256 + day
}

/// The date of a Julian day (valid for `jd >= 0`).
pub(crate) fn j2date(jd: i64) -> (i64, i64, i64) {
    let mut julian = jd + 32044;
    let mut quad = julian / 146_097;
    let extra = (julian - quad * 146_097) * 4 + 3;
    julian += 60 + quad * 3 + extra / 146_097;
    quad = julian / 1461;
    julian -= quad * 1461;
    let mut y = julian * 4 / 1461;
    julian = if y != 0 {
        (julian + 305) % 365
    } else {
        (julian + 306) % 366
    } + 123;
    y += quad * 4;
    let year = y - 4800;
    let quad = julian * 2141 / 65536;
    let day = julian - 7834 * quad / 256;
    let month = (quad + 10) % 12 + 1;
    (year, month, day)
}

/// Postgres's `IS_VALID_JULIAN`: the year/month is inside the range the
/// Julian-day routines handle.
pub(crate) fn is_valid_julian(year: i64, month: i64) -> bool {
    (year > -4713 || (year == -4713 && month >= 11))
        && (year < 5_874_898 || (year == 5_874_898 && month < 6))
}

/// `IS_VALID_DATE` for days since 2000-01-01.
pub(crate) fn is_valid_date(days: i64) -> bool {
    let jd = days + POSTGRES_EPOCH_JDATE;
    (0..DATE_END_JULIAN).contains(&jd)
}

/// `IS_VALID_TIMESTAMP`.
pub(crate) fn is_valid_timestamp(t: i64) -> bool {
    (MIN_TIMESTAMP..END_TIMESTAMP).contains(&t)
}

pub(crate) fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub(crate) fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn julian_days_round_trip() {
        assert_eq!(date2j(2000, 1, 1), POSTGRES_EPOCH_JDATE);
        assert_eq!(date2j(1970, 1, 1), UNIX_EPOCH_JDATE);
        assert_eq!(date2j(-4713, 11, 24), 0);
        for jd in
            (0..DATE_END_JULIAN)
                .step_by(9_999_991)
                .chain([0, 1, 2_451_545, DATE_END_JULIAN - 1])
        {
            let (y, m, d) = j2date(jd);
            assert_eq!(date2j(y, m, d), jd, "{jd} -> {y}-{m}-{d}");
        }
        assert_eq!(j2date(DATE_END_JULIAN - 1), (5_874_897, 12, 31));
    }
}
