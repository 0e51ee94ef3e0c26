//! Values of common types pass through the proxy unchanged: the same rows,
//! the same column metadata and the same wire bytes as talking to Postgres
//! directly, in the simple protocol (text results) and the extended protocol
//! (binary results, binary parameters).

mod support;

use support::{proxy_client, start_proxy, within, TestRegions};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, Row, SimpleQueryMessage};

/// Any column's raw binary value, to compare wire bytes exactly.
#[derive(Debug, PartialEq)]
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

const VALUES_SQL: &str = "SELECT \
    1::int2 AS i2, (-2147483648)::int4 AS i4, 9223372036854775807::int8 AS i8, \
    123456789.000123456789::numeric AS num, 'NaN'::numeric AS nan, (-0.5)::numeric(10,3) AS num3, \
    'héllo ☃ \"q\" \\ tab\t'::text AS t, ''::text AS empty, 'x'::varchar(5) AS vc, \
    '\\x00ff10'::bytea AS b, ''::bytea AS b_empty, true AS yes, false AS no, \
    '2024-02-29'::date AS d, 'infinity'::date AS d_inf, \
    '2024-02-29 12:34:56.789+02'::timestamptz AS tstz, '1999-12-31 23:59:59.999999'::timestamp AS ts, \
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, \
    '{\"a\": [1, 2.5, {\"b\": null}], \"é\": \"☃\"}'::jsonb AS j, '[1, 2]'::json AS js, \
    ARRAY[1, NULL, 3]::int4[] AS ai, ARRAY['x', 'y z', NULL, '\"']::text[] AS at, \
    '{}'::int8[] AS a_empty, ARRAY[[1,2],[3,4]]::int2[] AS a2d, \
    1.5::float8 AS f8, 'Infinity'::float4 AS f4, \
    NULL::int4 AS n_i4, NULL::text AS n_t, NULL::bytea AS n_b, NULL::jsonb AS n_j, NULL::uuid AS n_u";

async fn setup() -> (TestRegions, regionguard::server::Proxy) {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    (regions, proxy)
}

/// Text results of the simple protocol: names and values.
fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<(String, Option<String>)>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| {
                        (
                            row.columns()[i].name().to_string(),
                            row.get(i).map(str::to_string),
                        )
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn command_tags(messages: &[SimpleQueryMessage]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

/// Column metadata and raw binary values of extended-protocol rows.
#[allow(clippy::type_complexity)]
fn binary_rows(
    rows: &[Row],
) -> Vec<Vec<(String, Type, Option<u32>, Option<i16>, i32, Option<Raw>)>> {
    rows.iter()
        .map(|row| {
            row.columns()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    (
                        c.name().to_string(),
                        c.type_().clone(),
                        c.table_oid(),
                        c.column_id(),
                        c.type_modifier(),
                        row.get::<_, Option<Raw>>(i),
                    )
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_text_results_match_direct() {
    let (regions, proxy) = setup().await;
    let via = proxy_client(&proxy, "eu").await;
    let direct = regions.client("eu").await;
    let multi = format!(
        "{VALUES_SQL}; SELECT g, g * 2 FROM generate_series(1, 50) g; SELECT 1 WHERE false"
    );
    let a = within(30, "simple query via proxy", via.simple_query(&multi))
        .await
        .expect("simple query via proxy");
    let b = direct
        .simple_query(&multi)
        .await
        .expect("direct simple query");
    assert_eq!(simple_rows(&a), simple_rows(&b));
    assert_eq!(command_tags(&a), command_tags(&b));
    assert_eq!(command_tags(&a), vec![1, 50, 0]);
    let first = &simple_rows(&a)[0];
    assert_eq!(first[0], ("i2".into(), Some("1".into())));
    assert_eq!(first.iter().find(|c| c.0 == "n_t").unwrap().1, None);
    assert_eq!(
        first.iter().find(|c| c.0 == "b").unwrap().1.as_deref(),
        Some("\\x00ff10")
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_binary_results_match_direct() {
    let (regions, proxy) = setup().await;
    let via = proxy_client(&proxy, "eu").await;
    let direct = regions.client("eu").await;
    let a = within(30, "query via proxy", via.query(VALUES_SQL, &[]))
        .await
        .expect("query via proxy");
    let b = direct.query(VALUES_SQL, &[]).await.expect("direct query");
    assert_eq!(binary_rows(&a), binary_rows(&b));
    check_typed(&a[0]);
    proxy.shutdown().await;
}

/// Decodes the known types, to be sure the bytes are not merely equal but
/// mean what they should.
fn check_typed(row: &Row) {
    assert_eq!(row.get::<_, i16>("i2"), 1);
    assert_eq!(row.get::<_, i32>("i4"), i32::MIN);
    assert_eq!(row.get::<_, i64>("i8"), i64::MAX);
    assert_eq!(row.get::<_, &str>("t"), "héllo ☃ \"q\" \\ tab\t");
    assert_eq!(row.get::<_, &str>("empty"), "");
    assert_eq!(row.get::<_, Vec<u8>>("b"), vec![0x00, 0xff, 0x10]);
    assert!(row.get::<_, Vec<u8>>("b_empty").is_empty());
    assert!(row.get::<_, bool>("yes"));
    assert!(!row.get::<_, bool>("no"));
    assert_eq!(
        row.get::<_, chrono::NaiveDate>("d"),
        chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()
    );
    let tstz: chrono::DateTime<chrono::Utc> = row.get("tstz");
    assert_eq!(tstz.to_rfc3339(), "2024-02-29T10:34:56.789+00:00");
    assert_eq!(
        row.get::<_, uuid::Uuid>("u").to_string(),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    let j: serde_json::Value = row.get("j");
    assert_eq!(j["a"][1], serde_json::json!(2.5));
    assert_eq!(j["é"], serde_json::json!("☃"));
    assert_eq!(
        row.get::<_, Vec<Option<i32>>>("ai"),
        vec![Some(1), None, Some(3)]
    );
    assert_eq!(
        row.get::<_, Vec<Option<String>>>("at"),
        vec![
            Some("x".into()),
            Some("y z".into()),
            None,
            Some("\"".into())
        ]
    );
    assert!(row.get::<_, Vec<i64>>("a_empty").is_empty());
    assert_eq!(row.get::<_, f64>("f8"), 1.5);
    assert_eq!(row.get::<_, Option<i32>>("n_i4"), None);
    assert_eq!(row.get::<_, Option<String>>("n_t"), None);
    assert_eq!(row.get::<_, Option<Vec<u8>>>("n_b"), None);
    assert_eq!(row.get::<_, Option<serde_json::Value>>("n_j"), None);
    assert_eq!(row.get::<_, Option<uuid::Uuid>>("n_u"), None);
}

const TABLE_DDL: &str = "CREATE TABLE typed (\
    id int4 PRIMARY KEY, i2 int2, i8 int8, num numeric, t text, b bytea, ok bool, \
    d date, tstz timestamptz, u uuid, j jsonb, ai int4[], at text[])";

async fn insert_typed(client: &Client, id: i32, null: bool) {
    let tstz = chrono::DateTime::parse_from_rfc3339("2030-01-02T03:04:05.123456Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let u = uuid::Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
    let j = serde_json::json!({"k": [true, null, "v"], "n": 1});
    let i2: Option<i16> = (!null).then_some(-7);
    let i8: Option<i64> = (!null).then_some(1 << 40);
    let t: Option<&str> = (!null).then_some("text ✓");
    let b: Option<Vec<u8>> = (!null).then(|| (0u8..=255).collect());
    let ok: Option<bool> = (!null).then_some(true);
    let d = (!null).then(|| chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap());
    let tstz = (!null).then_some(tstz);
    let u = (!null).then_some(u);
    let j = (!null).then_some(j);
    let ai: Option<Vec<Option<i32>>> = (!null).then(|| vec![Some(-1), None, Some(i32::MAX)]);
    let at: Option<Vec<&str>> = (!null).then(|| vec!["a", "", "c,d"]);
    let num: Option<&str> = (!null).then_some("-98765.4321");
    let params: [&(dyn ToSql + Sync); 13] = [
        &id, &i2, &i8, &num, &t, &b, &ok, &d, &tstz, &u, &j, &ai, &at,
    ];
    client
        .execute(
            "INSERT INTO typed VALUES ($1, $2, $3, $4::text::numeric, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &params,
        )
        .await
        .expect("insert typed row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_parameters_round_trip_like_direct() {
    let (regions, proxy) = setup().await;
    let via = proxy_client(&proxy, "us").await;
    let direct = regions.client("us").await;
    direct.batch_execute(TABLE_DDL).await.expect("create table");
    // Through the proxy: ids 1 (values) and 2 (NULLs); directly: 3 and 4.
    within(30, "insert via proxy", async {
        insert_typed(&via, 1, false).await;
        insert_typed(&via, 2, true).await;
    })
    .await;
    insert_typed(&direct, 3, false).await;
    insert_typed(&direct, 4, true).await;

    let select = "SELECT i2, i8, num, t, b, ok, d, tstz, u, j, ai, at FROM typed WHERE id = $1";
    for (proxied, direct_id) in [(1, 3), (2, 4)] {
        for client in [&via, &direct] {
            let a = client.query(select, &[&proxied]).await.expect("select");
            let b = client.query(select, &[&direct_id]).await.expect("select");
            assert_eq!(
                binary_rows(&a),
                binary_rows(&b),
                "row {proxied} written via the proxy equals row {direct_id} written directly"
            );
        }
        let a = via
            .query(select, &[&proxied])
            .await
            .expect("select via proxy");
        let b = direct
            .query(select, &[&proxied])
            .await
            .expect("select direct");
        assert_eq!(
            binary_rows(&a),
            binary_rows(&b),
            "row {proxied} read both ways"
        );
    }
    let text_via = via
        .simple_query("SELECT * FROM typed ORDER BY id")
        .await
        .expect("simple via proxy");
    let text_direct = direct
        .simple_query("SELECT * FROM typed ORDER BY id")
        .await
        .expect("simple direct");
    assert_eq!(simple_rows(&text_via), simple_rows(&text_direct));
    let row = via
        .query_one("SELECT num::text, b FROM typed WHERE id = 1", &[])
        .await
        .expect("select");
    assert_eq!(row.get::<_, &str>(0), "-98765.4321");
    assert_eq!(row.get::<_, Vec<u8>>(1), (0u8..=255).collect::<Vec<_>>());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_metadata_matches_direct() {
    let (regions, proxy) = setup().await;
    let via = proxy_client(&proxy, "apac").await;
    let direct = regions.client("apac").await;
    direct.batch_execute(TABLE_DDL).await.expect("create table");
    let sql = "SELECT t.*, $1::int8 + 1 AS p, $2::text AS q FROM typed t WHERE id = $3";
    let a = via.prepare(sql).await.expect("prepare via proxy");
    let b = direct.prepare(sql).await.expect("prepare direct");
    assert_eq!(a.params(), b.params());
    let meta = |s: &tokio_postgres::Statement| {
        s.columns()
            .iter()
            .map(|c| {
                (
                    c.name().to_string(),
                    c.type_().clone(),
                    c.table_oid(),
                    c.column_id(),
                    c.type_modifier(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(meta(&a), meta(&b));
    assert_eq!(a.params(), &[Type::INT8, Type::TEXT, Type::INT4]);
    proxy.shutdown().await;
}
