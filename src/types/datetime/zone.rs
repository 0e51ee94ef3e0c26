//! Time zone rules for timestamptz: the UTC offset of a zone at an instant
//! and at a local wall-clock time, plus the time zone abbreviations
//! Postgres's `Default` set accepts in input.
//!
//! Rules come from `jiff` with its bundled IANA database, which (unlike
//! `chrono-tz`) applies a zone's POSIX rule after its last listed
//! transition, as Postgres does, so daylight saving time keeps working past
//! 2037. Instants outside `jiff`'s range (years beyond ±9999) are shifted by
//! whole 400-year Gregorian cycles, over which both the calendar and the
//! POSIX rules repeat exactly; before the first transition a zone's offset
//! is constant, so the far past needs no special case.

use super::calendar::{POSTGRES_EPOCH_JDATE, UNIX_EPOCH_JDATE};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

/// Seconds in 400 Gregorian years.
const CYCLE_SECS: i64 = 146_097 * 86_400;
/// Seconds from the Unix epoch to Postgres's.
pub(crate) const EPOCH_SHIFT_SECS: i64 = (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * 86_400;
/// A margin inside `jiff`'s range, so that offsets applied to a shifted
/// instant stay in range too.
const SAFE_MAX: i64 = 253_402_207_200 - 3 * 86_400;
const SAFE_MIN: i64 = -377_705_116_800 + 3 * 86_400;

/// Shifts Unix seconds into `jiff`'s range by whole 400-year cycles.
fn into_range(unix: i64) -> i64 {
    if unix > SAFE_MAX {
        unix - ((unix - SAFE_MAX) / CYCLE_SECS + 1) * CYCLE_SECS
    } else if unix < SAFE_MIN {
        unix + ((SAFE_MIN - unix) / CYCLE_SECS + 1) * CYCLE_SECS
    } else {
        unix
    }
}

/// The offset east of UTC, in seconds, of `tz` at the instant `unix`
/// (seconds since 1970-01-01 UTC).
pub(crate) fn offset_at_instant(tz: &TimeZone, unix: i64) -> i64 {
    match Timestamp::from_second(into_range(unix)) {
        Ok(ts) => i64::from(tz.to_offset(ts).seconds()),
        Err(_) => 0,
    }
}

/// The offset east of UTC of `tz` for a local wall-clock time (`local`:
/// seconds since 1970-01-01 00:00 local). A time skipped by a
/// spring-forward transition takes the offset before the transition and a
/// repeated time the offset after it, as `DetermineTimeZoneOffset` does.
pub(crate) fn offset_for_local(tz: &TimeZone, local: i64) -> i64 {
    let shifted = into_range(local);
    let Ok(as_utc) = Timestamp::from_second(shifted) else {
        return 0;
    };
    let civil = jiff::tz::Offset::UTC.to_datetime(as_utc);
    let offset = match tz.to_ambiguous_timestamp(civil).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset,
        AmbiguousOffset::Gap { before, .. } => before,
        AmbiguousOffset::Fold { after, .. } => after,
    };
    i64::from(offset.seconds())
}

/// The fixed-offset abbreviations of Postgres's `Default`
/// `timezone_abbreviations` set (offsets east of UTC, in seconds).
const ABBREVIATIONS: &[(&str, i64)] = &[
    ("acdt", 37800),
    ("acsst", 37800),
    ("acst", 34200),
    ("act", -18000),
    ("acwst", 31500),
    ("adt", -10800),
    ("aedt", 39600),
    ("aesst", 39600),
    ("aest", 36000),
    ("aft", 16200),
    ("akdt", -28800),
    ("akst", -32400),
    ("almst", 25200),
    ("almt", 21600),
    ("amt", -14400),
    ("ast", -14400),
    ("awsst", 32400),
    ("awst", 28800),
    ("azost", 0),
    ("azot", -3600),
    ("bdst", 7200),
    ("bdt", 21600),
    ("bnt", 28800),
    ("bort", 28800),
    ("bot", -14400),
    ("bra", -10800),
    ("brst", -7200),
    ("brt", -10800),
    ("bst", 3600),
    ("btt", 21600),
    ("cadt", 37800),
    ("cast", 34200),
    ("cct", 28800),
    ("cdt", -18000),
    ("cest", 7200),
    ("cet", 3600),
    ("cetdst", 7200),
    ("chadt", 49500),
    ("chast", 45900),
    ("chut", 36000),
    ("clst", -10800),
    ("cot", -18000),
    ("cst", -21600),
    ("cxt", 25200),
    ("ddut", 36000),
    ("eat", 10800),
    ("edt", -14400),
    ("eest", 10800),
    ("eet", 7200),
    ("eetdst", 10800),
    ("egst", 0),
    ("egt", -3600),
    ("est", -18000),
    ("fet", 10800),
    ("fjst", 46800),
    ("fjt", 43200),
    ("fnst", -3600),
    ("fnt", -7200),
    ("galt", -21600),
    ("gamt", -32400),
    ("gft", -10800),
    ("gilt", 43200),
    ("gmt", 0),
    ("hkt", 28800),
    ("hst", -36000),
    ("ict", 25200),
    ("idt", 10800),
    ("irt", 12600),
    ("ist", 7200),
    ("jayt", 32400),
    ("jst", 32400),
    ("kdt", 36000),
    ("kgst", 21600),
    ("kst", 32400),
    ("lhst", 37800),
    ("ligt", 36000),
    ("mart", -34200),
    ("mdt", -21600),
    ("mest", 7200),
    ("mesz", 7200),
    ("met", 3600),
    ("metdst", 7200),
    ("mez", 3600),
    ("mht", 43200),
    ("mmt", 23400),
    ("mpt", 36000),
    ("msd", 14400),
    ("mst", -25200),
    ("must", 18000),
    ("mut", 14400),
    ("mvt", 18000),
    ("myt", 28800),
    ("ndt", -9000),
    ("nft", -12600),
    ("npt", 20700),
    ("nst", -12600),
    ("nzdt", 46800),
    ("nzst", 43200),
    ("nzt", 43200),
    ("pdt", -25200),
    ("pet", -18000),
    ("pgt", 36000),
    ("pht", 28800),
    ("pkst", 21600),
    ("pkt", 18000),
    ("pmdt", -7200),
    ("pmst", -10800),
    ("pont", 39600),
    ("pst", -28800),
    ("pwt", 32400),
    ("pyst", -10800),
    ("ret", 14400),
    ("sadt", 37800),
    ("sast", 7200),
    ("sct", 14400),
    ("taht", -36000),
    ("tft", 18000),
    ("tjt", 18000),
    ("tot", 46800),
    ("trut", 36000),
    ("tvt", 43200),
    ("uct", 0),
    ("ulast", 32400),
    ("ut", 0),
    ("utc", 0),
    ("uyst", -7200),
    ("uyt", -10800),
    ("uzst", 21600),
    ("uzt", 18000),
    ("vut", 39600),
    ("wadt", 28800),
    ("wakt", 43200),
    ("wast", 25200),
    ("wat", 3600),
    ("wdt", 32400),
    ("wet", 0),
    ("wetdst", 3600),
    ("wft", 43200),
    ("wgst", -7200),
    ("wgt", -10800),
    ("xjt", 21600),
    ("yapt", 36000),
    ("yekst", 21600),
    ("z", 0),
    ("zulu", 0),
];

/// The `Default` set's abbreviations whose offset depends on the date (they
/// stand for a zone). The proxy refuses them rather than guess.
const DYNAMIC_ABBREVIATIONS: &[&str] = &[
    "amst", "anast", "anat", "arst", "art", "azst", "azt", "ckt", "clt", "davt", "easst", "east",
    "fkst", "fkt", "gest", "get", "gyt", "iot", "irkst", "irkt", "kgt", "kost", "krast", "krat",
    "lhdt", "lint", "lkt", "magst", "magt", "mawt", "msk", "novst", "novt", "nut", "omsst", "omst",
    "petst", "pett", "pyt", "sgt", "tkt", "tmt", "ulat", "vet", "vlast", "vlat", "volt", "yakst",
    "yakt", "yekt",
];

/// A fixed abbreviation (lower case) from the `Default` set.
pub(crate) fn abbreviation(word: &str) -> Option<i64> {
    ABBREVIATIONS
        .binary_search_by(|(name, _)| name.cmp(&word))
        .ok()
        .map(|i| ABBREVIATIONS[i].1)
}

/// Whether `word` (lower case) is a date-dependent abbreviation.
pub(crate) fn is_dynamic_abbreviation(word: &str) -> bool {
    DYNAMIC_ABBREVIATIONS.contains(&word)
}

/// A zone name as `pg_tzset` resolves it: an IANA name (case-insensitive),
/// else a POSIX TZ string such as `UTC+3` (3 hours west of UTC).
/// Whether `tz` has the same UTC offset at every instant, as Postgres's
/// `pg_get_timezone_offset` asks of a zone given with a time but no date.
/// Transitions that keep the offset (a new abbreviation) do not count; the
/// walk is bounded, and a zone still undecided after it counts as varying.
pub(crate) fn has_one_offset(tz: &TimeZone) -> bool {
    if tz.to_fixed_offset().is_ok() {
        return true;
    }
    let first = tz.to_offset(jiff::Timestamp::MIN);
    let mut transitions = tz.following(jiff::Timestamp::MIN).take(10_000);
    let mut seen = 0;
    let same = transitions.all(|t| {
        seen += 1;
        t.offset() == first
    });
    same && seen < 10_000
}

pub(crate) fn named_zone(name: &str) -> Option<TimeZone> {
    TimeZone::get(name)
        .ok()
        .or_else(|| TimeZone::posix(&name.to_ascii_uppercase()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abbreviations_are_sorted_for_binary_search() {
        assert!(ABBREVIATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(abbreviation("cet"), Some(3600));
        assert_eq!(abbreviation("pst"), Some(-28800));
        assert_eq!(abbreviation("msk"), None);
        assert!(is_dynamic_abbreviation("msk"));
    }

    #[test]
    fn offsets_follow_rules_far_into_the_future() {
        let berlin = named_zone("Europe/Berlin").unwrap();
        // 2024-07-01 12:00 UTC and the same day 400*k years later.
        let july_2024 = 1_719_835_200;
        assert_eq!(offset_at_instant(&berlin, july_2024), 7200);
        assert_eq!(
            offset_at_instant(&berlin, july_2024 + 700 * CYCLE_SECS),
            7200
        );
        // 2160 is past chrono-tz's tables; DST still applies.
        let july_2160 = july_2024 + (date_days(2160) - date_days(2024)) * 86_400;
        assert_eq!(offset_at_instant(&berlin, july_2160), 7200);
        // Local Mean Time before 1893.
        assert_eq!(offset_at_instant(&berlin, -4_000_000_000), 3208);
    }

    fn date_days(year: i64) -> i64 {
        super::super::calendar::date2j(year, 7, 1)
    }

    #[test]
    fn local_times_in_gaps_and_folds() {
        let berlin = named_zone("Europe/Berlin").unwrap();
        // 2024-03-31 02:30 does not exist: Postgres takes +01.
        let gap = 1_711_852_200;
        assert_eq!(offset_for_local(&berlin, gap), 3600);
        // 2024-10-27 02:30 happens twice: Postgres takes the later (+01).
        let fold = 1_729_996_200;
        assert_eq!(offset_for_local(&berlin, fold), 3600);
    }
}
