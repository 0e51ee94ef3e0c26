//! Property tests over every logical type: random bytes and random text
//! never panic any conversion, and canonical values survive
//! binary → text → binary unchanged under varied session settings.

use super::{LogicalType, SessionFormat};
use proptest::prelude::*;

const NAMES: [&str; 18] = [
    "text",
    "varchar",
    "bpchar",
    "bytea",
    "bool",
    "int2",
    "int4",
    "int8",
    "float4",
    "float8",
    "numeric",
    "date",
    "time",
    "timestamp",
    "timestamptz",
    "uuid",
    "json",
    "jsonb",
];

fn any_type() -> impl Strategy<Value = LogicalType> {
    (0..NAMES.len(), any::<bool>()).prop_map(|(i, array)| {
        let t = LogicalType::parse(NAMES[i]).expect("known name");
        if array {
            LogicalType::Array(Box::new(t))
        } else {
            t
        }
    })
}

fn any_format() -> impl Strategy<Value = SessionFormat> {
    let zones = [
        "UTC",
        "Europe/Berlin",
        "Asia/Kolkata",
        "America/St_Johns",
        "5.5",
        "<-03:30>+03:30",
    ];
    let styles = [
        "ISO, MDY",
        "ISO, DMY",
        "SQL, DMY",
        "Postgres, MDY",
        "German",
    ];
    (0..zones.len(), 0..styles.len(), -15..=3i32, any::<bool>()).prop_map(
        move |(z, s, efd, esc)| {
            let mut f = SessionFormat::default();
            f.set("TimeZone", zones[z]).expect("zone");
            f.set("DateStyle", styles[s]).expect("style");
            f.set("extra_float_digits", &efd.to_string())
                .expect("digits");
            f.set("bytea_output", if esc { "escape" } else { "hex" })
                .expect("bytea");
            f
        },
    )
}

/// Random binary values that are often valid: the right length for fixed
/// size types, with random content.
fn plausible_binary(t: &LogicalType) -> BoxedStrategy<Vec<u8>> {
    match t.typlen() {
        n if n > 0 => prop::collection::vec(any::<u8>(), n as usize).boxed(),
        _ => prop::collection::vec(any::<u8>(), 0..48).boxed(),
    }
}

/// Text that looks like input of many types.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        "[-+ 0-9.eE:/TZ]{0,30}",
        "[{}\",\\\\ a-zA-Z0-9NUL]{0,30}",
        "\\PC{0,20}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}( [0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,9})?)?)?( ?[+-][0-9]{1,4}| [A-Za-z/_]{1,20})?( BC)?",
        "[\\[\\]{}:\" ,0-9a-z\\\\-]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(t in any_type(), bin in prop::collection::vec(any::<u8>(), 0..64), fmt in any_format()) {
        let _ = t.check_binary(&bin);
        let _ = t.canonical_binary(&bin);
        let _ = t.binary_to_text(&bin, &fmt);
        let _ = t.text_to_binary(&bin, &fmt);
    }

    #[test]
    fn random_text_never_panics(t in any_type(), text in texty(), fmt in any_format()) {
        let _ = t.text_to_binary(text.as_bytes(), &fmt);
    }

    #[test]
    fn binary_text_binary_is_identity(
        (t, bin) in any_type().prop_flat_map(|t| { let b = plausible_binary(&t); (Just(t), b) }),
        fmt in any_format(),
    ) {
        // Only canonical values round-trip exactly; NaN payloads and
        // reduced-precision floats are not expected to.
        let Ok(canonical) = t.canonical_binary(&bin) else { return Ok(()) };
        let lossy_float = matches!(t, LogicalType::Float4 | LogicalType::Float8)
            && fmt.extra_float_digits <= 0;
        if lossy_float {
            return Ok(());
        }
        match t.binary_to_text(&canonical, &fmt) {
            Ok(text) => {
                if text == b"NaN" {
                    return Ok(());
                }
                let again = t.text_to_binary(&text, &fmt);
                prop_assert_eq!(again.as_ref().ok(), Some(&canonical), "{:?} via {:?}", t, String::from_utf8_lossy(&text));
            }
            // Output styles the proxy refuses (timestamptz outside ISO).
            Err(e) => prop_assert_eq!(e.sqlstate(), "0A000"),
        }
    }

    #[test]
    fn text_binary_text_is_stable(t in any_type(), text in texty(), fmt in any_format()) {
        if let Ok(bin) = t.text_to_binary(text.as_bytes(), &fmt) {
            prop_assert_eq!(t.canonical_binary(&bin).ok(), Some(bin.clone()));
            if let Ok(out) = t.binary_to_text(&bin, &fmt) {
                let lossy = matches!(t, LogicalType::Float4 | LogicalType::Float8) && fmt.extra_float_digits <= 0;
                if !lossy && out != b"NaN" {
                    prop_assert_eq!(t.text_to_binary(&out, &fmt).ok(), Some(bin));
                }
            }
        }
    }
}

/// Random canonical values of the interesting shapes, generated directly.
mod values {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn floats_round_trip(bits in any::<u64>(), bits32 in any::<u32>()) {
            let f = SessionFormat::default();
            for (t, bin) in [
                (LogicalType::Float8, bits.to_be_bytes().to_vec()),
                (LogicalType::Float4, bits32.to_be_bytes().to_vec()),
            ] {
                let text = t.binary_to_text(&bin, &f).expect("any bits print");
                if text != b"NaN" {
                    prop_assert_eq!(t.text_to_binary(&text, &f).expect("reads back"), bin);
                }
            }
        }

        #[test]
        fn numerics_round_trip(digits in "-?[0-9]{1,40}(\\.[0-9]{0,40})?(e-?[0-9]{1,3})?") {
            let f = SessionFormat::default();
            let t = LogicalType::Numeric;
            if let Ok(bin) = t.text_to_binary(digits.as_bytes(), &f) {
                let text = t.binary_to_text(&bin, &f).expect("prints");
                prop_assert_eq!(t.text_to_binary(&text, &f).expect("reads back"), bin);
            }
        }

        #[test]
        fn timestamps_round_trip(us in -211_813_488_000_000_000i64..9_223_371_331_200_000_000, fmt in any_format()) {
            for t in [LogicalType::Timestamp, LogicalType::Timestamptz] {
                let bin = us.to_be_bytes().to_vec();
                match t.binary_to_text(&bin, &fmt) {
                    Ok(text) => prop_assert_eq!(
                        t.text_to_binary(&text, &fmt).ok(),
                        Some(bin),
                        "{:?}", String::from_utf8_lossy(&text)
                    ),
                    Err(e) => prop_assert_eq!(e.sqlstate(), "0A000"),
                }
            }
        }

        #[test]
        fn dates_round_trip(days in -2_451_545i32..2_145_031_948, fmt in any_format()) {
            let bin = days.to_be_bytes().to_vec();
            let text = LogicalType::Date.binary_to_text(&bin, &fmt).expect("prints");
            prop_assert_eq!(LogicalType::Date.text_to_binary(&text, &fmt).ok(), Some(bin), "{:?}", String::from_utf8_lossy(&text));
        }

        #[test]
        fn text_arrays_round_trip(items in prop::collection::vec(prop::option::of("\\PC{0,8}"), 0..6)) {
            let f = SessionFormat::default();
            let t = LogicalType::parse("text[]").expect("type");
            let mut bin = Vec::new();
            if !items.is_empty() {
                bin.extend_from_slice(&1i32.to_be_bytes());
                bin.extend_from_slice(&i32::from(items.iter().any(Option::is_none)).to_be_bytes());
                bin.extend_from_slice(&25u32.to_be_bytes());
                bin.extend_from_slice(&(items.len() as i32).to_be_bytes());
                bin.extend_from_slice(&1i32.to_be_bytes());
                for item in &items {
                    match item {
                        None => bin.extend_from_slice(&(-1i32).to_be_bytes()),
                        Some(s) => {
                            bin.extend_from_slice(&(s.len() as i32).to_be_bytes());
                            bin.extend_from_slice(s.as_bytes());
                        }
                    }
                }
            } else {
                bin.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25]);
            }
            if items.iter().flatten().any(|s| s.contains('\0')) {
                return Ok(());
            }
            let text = t.binary_to_text(&bin, &f).expect("prints");
            prop_assert_eq!(t.text_to_binary(&text, &f).expect("reads back"), bin, "{:?}", String::from_utf8_lossy(&text));
        }
    }
}
