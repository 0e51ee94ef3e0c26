use super::*;
use bytes::BytesMut;
use proptest::prelude::*;

fn fmt(sql_options: &str) -> CopyFormat {
    parse_copy(&format!("COPY t FROM STDIN {sql_options}"))
        .unwrap_or_else(|e| panic!("{sql_options}: {e}"))
        .format
}

fn some(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

/// Feeds `chunks`, ends the input, and returns every item (or the error).
fn split_all(format: &CopyFormat, chunks: &[&[u8]]) -> Result<Vec<Item>, CopyError> {
    let mut s = RowSplitter::new(format, 1 << 20);
    let mut items = Vec::new();
    for c in chunks {
        s.push(c);
        while let Some(item) = s.next_item()? {
            items.push(item);
        }
    }
    s.end_of_input();
    while let Some(item) = s.next_item()? {
        items.push(item);
    }
    Ok(items)
}

fn rows_of(format: &CopyFormat, data: &[u8]) -> Result<Vec<Fields>, CopyError> {
    let mut f = CopyInFilter::new(format.clone(), None, 1 << 20);
    f.push(data);
    f.end_of_input();
    let mut rows = Vec::new();
    while let Some(r) = f.next_row()? {
        rows.push(r.fields);
    }
    Ok(rows)
}

// ----- options --------------------------------------------------------------------

#[test]
fn modern_and_legacy_options() {
    let f = fmt("WITH (FORMAT csv, HEADER true, DELIMITER ';', NULL 'x', QUOTE '''', ESCAPE '\\')");
    assert_eq!(f.kind, FormatKind::Csv);
    assert!(f.header);
    assert_eq!((f.delimiter, f.quote, f.escape), (b';', b'\'', b'\\'));
    assert_eq!(f.null, b"x");
    let f = fmt("WITH CSV HEADER");
    assert_eq!(
        (f.kind, f.header, f.delimiter, f.quote, f.escape),
        (FormatKind::Csv, true, b',', b'"', b'"')
    );
    assert!(f.null.is_empty());
    let f = fmt("WITH CSV QUOTE AS '|' FORCE NOT NULL a, b");
    assert_eq!(f.quote, b'|');
    assert_eq!(f.escape, b'|');
    assert_eq!(
        f.force_not_null,
        ColumnSet::Named(vec!["a".into(), "b".into()])
    );
    assert_eq!(fmt("WITH BINARY").kind, FormatKind::Binary);
    assert_eq!(fmt("(FORMAT binary)").kind, FormatKind::Binary);
    assert_eq!(fmt("DELIMITER AS '|' NULL AS ''").delimiter, b'|');
    let f = fmt("");
    assert_eq!(
        (f.kind, f.delimiter, f.null.as_slice()),
        (FormatKind::Text, b'\t', &b"\\N"[..])
    );
    assert!(fmt("WITH (FORMAT text, HEADER)").header);
    assert_eq!(fmt("WITH (ENCODING 'UTF8', FREEZE)").kind, FormatKind::Text);
    let s = parse_copy("COPY public.\"Orders\" (\"Id\", Name) FROM STDIN;").unwrap();
    assert_eq!(s.table.as_deref(), Some("public.\"Orders\""));
    assert_eq!(s.columns, ["Id", "name"]);
    assert!(s.from_stdin);
}

#[test]
fn refused_options() {
    for (opts, code) in [
        ("WITH (FORMAT json)", "22023"),
        ("WITH (FORMAT binary, DELIMITER ',')", "0A000"),
        ("WITH (FORMAT binary, HEADER)", "0A000"),
        ("WITH (QUOTE '\"')", "0A000"),
        ("WITH (ENCODING 'LATIN1')", "0A000"),
        ("WITH (FORMAT csv, FORMAT text)", "42601"),
        ("WITH (FORMAT csv, DELIMITER '\"')", "22023"),
        ("WITH (DELIMITER 'a')", "22023"),
        ("WITH (FORMAT csv, NULL '\\.')", "0A000"),
        ("WITH (NULL 'x\\')", "0A000"),
        ("WITH (FORMAT csv, FORCE_QUOTE (a))", "0A000"),
        ("WITH (FORMAT text, FORCE_NULL (a))", "0A000"),
        ("GZIP", "0A000"),
    ] {
        let e = parse_copy(&format!("COPY t FROM STDIN {opts}")).unwrap_err();
        assert_eq!(e.code, code, "{opts}: {e}");
    }
    let e = fmt("WITH (FORMAT csv, FORCE_NULL (nope))")
        .bind_columns(&["a".into()])
        .unwrap_err();
    assert_eq!(e.code, "42P10");
}

// ----- text -----------------------------------------------------------------------

#[test]
fn text_fields_unescape_like_postgres() {
    let f = CopyFormat::text();
    let row = f
        .decode_row(b"a\\tb\t\\N\t\\\\N\t\\101\\x41\\xg\\q\t\t\\")
        .unwrap();
    assert_eq!(
        row,
        vec![
            some("a\tb"),
            None,
            some("\\N"),
            some("AAxgq"),
            some(""),
            some("")
        ]
    );
    // Octal: at most three digits, wrapped to a byte.
    assert_eq!(
        f.decode_row(b"\\7777").unwrap(),
        vec![Some(vec![0xff, b'7'])]
    );
    assert_eq!(f.decode_row(b"").unwrap(), vec![some("")]);
}

#[test]
fn text_encoding_avoids_the_null_marker() {
    let f = fmt("WITH (NULL 'NULL', DELIMITER '|')");
    let mut out = BytesMut::new();
    f.encode_row(&[some("NULL"), None, some("a|b\\c\nd")], &mut out)
        .unwrap();
    assert_eq!(&out[..], b"\\116ULL|NULL|a\\|b\\\\c\\nd\n");
    assert_eq!(
        f.decode_row(&out[..out.len() - 1]).unwrap(),
        vec![some("NULL"), None, some("a|b\\c\nd")]
    );
    let empty_null = fmt("WITH (NULL '')");
    let e = empty_null
        .encode_row(&[some("")], &mut BytesMut::new())
        .unwrap_err();
    assert_eq!(e.code, BAD_COPY_FILE_FORMAT);
}

#[test]
fn text_lines_and_end_marker() {
    let f = CopyFormat::text();
    // A backslash escapes a newline; `\.` ends the data; what follows is ignored.
    let rows = rows_of(&f, b"a\\\nb\tc\n\\.\nignored\n").unwrap();
    assert_eq!(rows, vec![vec![some("a\nb"), some("c")]]);
    // CRLF is fixed by the first line; a bare LF later is an error.
    assert_eq!(rows_of(&f, b"a\r\nb\r\n").unwrap().len(), 2);
    let e = rows_of(&f, b"a\r\nb\nc").unwrap_err();
    assert_eq!(e.code, BAD_COPY_FILE_FORMAT);
    assert_eq!(rows_of(&f, b"a\rb\r").unwrap().len(), 2);
    // Last line without newline.
    assert_eq!(rows_of(&f, b"a\nb").unwrap().len(), 2);
    // `\.` must be alone on its line.
    assert!(rows_of(&f, b"a\\.\n").is_err());
    assert!(rows_of(&f, b"\\.x\n").is_err());
    // A trailing empty line is a row (one empty field).
    assert_eq!(
        rows_of(&f, b"a\n\n").unwrap(),
        vec![vec![some("a")], vec![some("")]]
    );
}

// ----- CSV ------------------------------------------------------------------------

#[test]
fn csv_quotes_newlines_and_nulls() {
    let f = CopyFormat::csv();
    let rows = rows_of(
        &f,
        b"1,\"multi\nline, \"\"quoted\"\"\",,\"\"\n2,\\.,x,y\n\\.\n",
    )
    .unwrap();
    assert_eq!(
        rows,
        vec![
            vec![some("1"), some("multi\nline, \"quoted\""), None, some("")],
            vec![some("2"), some("\\."), some("x"), some("y")],
        ]
    );
    // `\.` followed by more text on its line is data in CSV.
    assert_eq!(
        rows_of(&f, b"\\.a,b\n").unwrap(),
        vec![vec![some("\\.a"), some("b")]]
    );
    let e = rows_of(&f, b"\"open\n").unwrap_err();
    assert!(e.message.contains("unterminated CSV quoted field"), "{e}");
    // A different escape character.
    let f = fmt("WITH (FORMAT csv, ESCAPE '\\')");
    assert_eq!(
        rows_of(&f, b"\"a\\\"b\\\\\",\"c\\d\"\n").unwrap(),
        vec![vec![some("a\"b\\"), some("c\\d")]]
    );
}

#[test]
fn csv_force_null_and_not_null() {
    let f = fmt("WITH (FORMAT csv, FORCE_NOT_NULL (a), FORCE_NULL (b))")
        .bind_columns(&["a".into(), "b".into(), "c".into()])
        .unwrap();
    assert_eq!(
        f.decode_row(b",\"\",\"\"").unwrap(),
        vec![some(""), None, some("")]
    );
    let mut out = BytesMut::new();
    f.encode_row(&[some(""), None, some("")], &mut out).unwrap();
    assert_eq!(&out[..], b"\"\",,\"\"\n");
    assert!(f
        .encode_row(&[None::<Vec<u8>>, None, None], &mut out)
        .is_err());
    assert!(f
        .encode_row(&[some("x"), some(""), None], &mut out)
        .is_err());
}

#[test]
fn csv_header_passes_through_the_filter() {
    let f = fmt("WITH (FORMAT csv, HEADER)");
    let mut filter = CopyInFilter::new(f, Some(2), 1024);
    filter.push(b"tenant_id,\"na\nme\"\nacme,x\n");
    let row = filter.next_row().unwrap().unwrap();
    assert_eq!(row.number, 1);
    assert_eq!(row.fields, vec![some("acme"), some("x")]);
    filter.write_row(&row).unwrap();
    assert!(filter.next_row().unwrap().is_none());
    let out = filter.take_output().unwrap();
    assert_eq!(&out[..], b"tenant_id,\"na\nme\"\nacme,x\n");
    // A row with the wrong number of fields.
    filter.push(b"a,b,c\n");
    let e = filter.next_row().unwrap_err();
    assert_eq!(e.message, "data row 2 has 3 fields, expected 2");
}

// ----- binary ---------------------------------------------------------------------

fn binary_stream(rows: &[Fields], trailer: bool) -> Vec<u8> {
    let f = CopyFormat::binary();
    let mut out = BytesMut::new();
    CopyFormat::encode_binary_header(&mut out);
    for r in rows {
        f.encode_row(r, &mut out).unwrap();
    }
    if trailer {
        out.extend_from_slice(&BINARY_TRAILER);
    }
    out.to_vec()
}

#[test]
fn binary_header_tuples_trailer() {
    let f = CopyFormat::binary();
    let rows = vec![vec![some("acme"), None, Some(vec![0, 0, 0, 7])]];
    let data = binary_stream(&rows, true);
    assert_eq!(rows_of(&f, &data).unwrap(), rows);
    // No trailer is fine; data after the trailer is not.
    assert_eq!(rows_of(&f, &binary_stream(&rows, false)).unwrap(), rows);
    let mut after = data.clone();
    after.push(0);
    assert!(rows_of(&f, &after).is_err());
    // Bad signature, OIDs flag, truncated tuple.
    let mut bad = data.clone();
    bad[0] = b'X';
    assert!(rows_of(&f, &bad).is_err());
    let mut oids = data.clone();
    oids[12] = 1;
    assert!(rows_of(&f, &oids).is_err());
    assert!(rows_of(&f, &data[..data.len() - 4]).is_err());
    // The filter re-emits header, rows and trailer.
    let mut filter = CopyInFilter::new(f, Some(3), 1024);
    filter.push(&data);
    filter.end_of_input();
    filter.process::<CopyError>(|_| Ok(())).unwrap();
    assert_eq!(filter.take_output().unwrap().to_vec(), data);
}

#[test]
fn rows_over_the_limit_are_refused() {
    let mut s = RowSplitter::new(&CopyFormat::text(), 16);
    s.push(b"0123456789");
    assert!(s.next_item().unwrap().is_none());
    s.push(b"0123456789");
    assert_eq!(s.next_item().unwrap_err().code, "54000");
    let mut s = RowSplitter::new(&CopyFormat::binary(), 64);
    let mut data = binary_stream(&[], false);
    data.extend_from_slice(&1i16.to_be_bytes());
    data.extend_from_slice(&1000i32.to_be_bytes());
    s.push(&data);
    assert!(matches!(s.next_item(), Ok(Some(Item::BinaryHeader(_)))));
    assert_eq!(s.next_item().unwrap_err().code, "54000");
}

#[test]
fn errors_never_echo_row_data() {
    let secret = "tenant-canary-7731";
    let inputs: Vec<(CopyFormat, Vec<u8>)> = vec![
        (
            CopyFormat::csv(),
            format!("{secret},\"{secret}\n").into_bytes(),
        ),
        (
            CopyFormat::text(),
            format!("{secret}\r\n{secret}\n").into_bytes(),
        ),
        (CopyFormat::text(), format!("{secret}\\.\n").into_bytes()),
        (CopyFormat::binary(), secret.as_bytes().to_vec()),
    ];
    for (f, data) in inputs {
        let e = rows_of(&f, &data).unwrap_err();
        assert_eq!(e.code, BAD_COPY_FILE_FORMAT);
        assert!(!e.message.contains(secret), "{e}");
    }
    let mut filter = CopyInFilter::new(CopyFormat::csv(), Some(1), 1024);
    filter.push(format!("{secret},{secret}\n").as_bytes());
    let e = filter.next_row().unwrap_err();
    assert!(!e.message.contains(secret), "{e}");
}

// ----- properties -----------------------------------------------------------------

/// Bytes that matter to some format, plus ordinary and non-ASCII ones.
const ALPHABET: &[u8] = b"a7N.\\\t,;|\"'\r\n x\xc3\xa9\x08";

fn field() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::weighted(
        0.85,
        prop::collection::vec(prop::sample::select(ALPHABET), 0..10),
    )
}

fn rows() -> impl Strategy<Value = Vec<Fields>> {
    (1usize..5)
        .prop_flat_map(|n| prop::collection::vec(prop::collection::vec(field(), n..=n), 0..8))
}

fn formats() -> Vec<CopyFormat> {
    vec![
        CopyFormat::text(),
        fmt("WITH (DELIMITER '|', NULL 'NULL')"),
        fmt("WITH (DELIMITER ',', NULL '')"),
        fmt("WITH (HEADER)"),
        CopyFormat::csv(),
        fmt("WITH (FORMAT csv, HEADER, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL '\\N')"),
        fmt("WITH (FORMAT csv, DELIMITER '|', NULL 'NULL')"),
        CopyFormat::binary(),
    ]
}

/// Cuts `data` at the given fractions.
fn cut<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points {
        out.push(&data[prev..p]);
        prev = p;
    }
    out.push(&data[prev..]);
    out
}

/// Whether `format` can represent `rows` exactly (see the codec's refusals).
fn representable(format: &CopyFormat, rows: &[Fields]) -> bool {
    !(format.kind == FormatKind::Text
        && format.null.is_empty()
        && rows
            .iter()
            .flatten()
            .any(|f| f.as_deref() == Some(&b""[..])))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// encode → split (arbitrary chunks) → decode gives back the fields.
    #[test]
    fn round_trip_in_every_format(
        rows in rows(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        end_marker in any::<bool>(),
    ) {
        for format in formats() {
            if !representable(&format, &rows) {
                continue;
            }
            let mut data = BytesMut::new();
            let width = rows.first().map_or(1, Vec::len);
            if format.kind == FormatKind::Binary {
                CopyFormat::encode_binary_header(&mut data);
            } else if format.header {
                let names: Vec<Option<&[u8]>> = (0..width).map(|_| Some(&b"col"[..])).collect();
                format.encode_header(&names, &mut data).unwrap();
            }
            for r in &rows {
                format.encode_row(r, &mut data).unwrap();
            }
            if end_marker {
                if format.kind == FormatKind::Binary {
                    data.extend_from_slice(&BINARY_TRAILER);
                } else {
                    data.extend_from_slice(b"\\.\n");
                }
            }
            let mut filter = CopyInFilter::new(format.clone(), None, 1 << 16);
            let mut got = Vec::new();
            let mut out = BytesMut::new();
            for chunk in cut(&data, &cuts) {
                filter.push(chunk);
                while let Some(row) = filter.next_row().unwrap() {
                    filter.write_row(&row).unwrap();
                    got.push(row.fields);
                }
                if let Some(b) = filter.take_output() { out.extend_from_slice(&b); }
            }
            filter.end_of_input();
            while let Some(row) = filter.next_row().unwrap() {
                filter.write_row(&row).unwrap();
                got.push(row.fields);
            }
            if let Some(b) = filter.take_output() { out.extend_from_slice(&b); }
            prop_assert_eq!(&got, &rows, "format {:?}", format);
            // The filter's output reads back as the same rows again.
            prop_assert_eq!(rows_of(&format, &out).unwrap(), rows.clone());
        }
    }

    /// Random bytes never panic, and chunking never changes the outcome.
    #[test]
    fn random_input_is_handled_the_same_in_any_chunks(
        data in prop::collection::vec(prop::sample::select(ALPHABET), 0..200),
        noise in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut data = data;
        data.extend_from_slice(&noise);
        for format in formats() {
            let whole = split_all(&format, &[&data]);
            let chunked = split_all(&format, &cut(&data, &cuts));
            prop_assert_eq!(&whole, &chunked, "format {:?}", format);
            let _ = rows_of(&format, &data);
        }
        // Binary after a valid header.
        let mut b = binary_stream(&[], false);
        b.extend_from_slice(&data);
        let format = CopyFormat::binary();
        prop_assert_eq!(split_all(&format, &[&b]), split_all(&format, &cut(&b, &cuts)));
        let _ = rows_of(&format, &b);
    }
}
