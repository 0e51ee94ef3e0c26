//! Equality lookups on deterministic columns across data key versions
//! (ADR 13), against real regional clusters: after `keys rotate`, rows
//! stored under the old version and rows stored under the new one must
//! both be found by `=`, `<>`, `IN` and `NOT IN`, with literals and with
//! parameters (binary and text format), through the simple and the
//! extended protocol, for bytea and text storage — and every answer must
//! equal the answer of the same query over a plaintext copy of the values
//! kept in the same rows.

mod support;

use regionguard::config::{AuthMethod, ClassifiedColumn, Config, DataClass, KeySource, Protection};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::*;
use tokio_postgres::types::ToSql;

/// `email` (bytea storage), `handle` (text storage) and `code` (an int4
/// in bytea storage) are encrypted deterministically; the `plain_*`
/// columns hold the same values unencrypted, as the reference.
const SCHEMA: &str = "\
    CREATE TABLE people (tenant_id text NOT NULL, id bigint NOT NULL, \
        email bytea, handle text, code bytea, \
        plain_email text, plain_handle text, plain_code int4, \
        PRIMARY KEY (tenant_id, id));\n\
    CREATE VIEW people_v AS SELECT p.tenant_id, p.id, p.email AS mail FROM people p;\n";

fn write_keys(dir: &Path) -> BTreeMap<String, PathBuf> {
    use base64::Engine;
    let mut out = BTreeMap::new();
    for (i, region) in REGIONS.iter().enumerate() {
        let key: Vec<u8> = (0..32u8)
            .map(|b| b.wrapping_mul(11).wrapping_add(i as u8))
            .collect();
        let path = dir.join(format!("{region}.key"));
        std::fs::write(
            &path,
            format!(
                "1:{}\n",
                base64::engine::general_purpose::STANDARD.encode(key)
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        out.insert(region.to_string(), path);
    }
    out
}

fn config(regions: &TestRegions, keys: &BTreeMap<String, PathBuf>, socket: PathBuf) -> Config {
    let mut config = regions.routing_config(&ROUTING_TENANTS);
    config.auth.method = AuthMethod::Trust;
    config.tenancy.tables.push("people".into());
    for (name, region) in config.regions.iter_mut() {
        region.key = Some(KeySource::File {
            path: keys[name].clone(),
        });
    }
    config.classes.insert(
        "contact".into(),
        DataClass {
            encrypt: Protection::Deterministic,
        },
    );
    let mut people = BTreeMap::new();
    for (column, ty) in [("email", "text"), ("handle", "text"), ("code", "int4")] {
        people.insert(
            column.to_string(),
            ClassifiedColumn {
                class: "contact".into(),
                logical_type: ty.into(),
                searchable: true,
                equality_group: None,
            },
        );
    }
    config.classified.insert("people".into(), people);
    config.admin.socket = Some(socket);
    config.admin.rotation_grace_ms = 100;
    config
}

async fn rotate(socket: &Path, tenant: &str) {
    let socket = socket.to_path_buf();
    let tenant = tenant.to_string();
    let reply: Value = tokio::task::spawn_blocking(move || {
        regionguard::admin::client::request(
            &socket,
            "keys.rotate",
            json!({"region": "eu", "tenant": tenant}),
            std::time::Duration::from_secs(15),
        )
    })
    .await
    .unwrap()
    .expect("admin socket reachable");
    assert_eq!(reply["ok"], json!(true), "{reply}");
}

/// id, email, handle, code.
type Row<'a> = (i64, Option<&'a str>, Option<&'a str>, Option<i32>);

/// Inserts rows through the proxy (parameters), the plaintext copy alongside.
async fn insert(client: &tokio_postgres::Client, tenant: &str, rows: &[Row<'_>]) {
    for (id, email, handle, code) in rows {
        client
            .execute(
                "INSERT INTO people (tenant_id, id, email, handle, code, plain_email, plain_handle, plain_code) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&tenant, id, email, handle, code, email, handle, code],
            )
            .await
            .expect("insert");
    }
}

/// The key versions of acme's stored emails, read directly in the region.
async fn stored_versions(regions: &TestRegions) -> Vec<i32> {
    regions
        .client("eu")
        .await
        .query(
            "SELECT DISTINCT get_byte(email, 5) + 256 * get_byte(email, 4) FROM people \
             WHERE tenant_id = 'acme' AND email IS NOT NULL ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The query over the encrypted columns and over the plaintext copy.
fn both(template: &str) -> (String, String) {
    let sql =
        format!("SELECT id FROM people WHERE tenant_id = 'acme' AND ({template}) ORDER BY id");
    let plain = sql
        .replace("{email}", "plain_email")
        .replace("{handle}", "plain_handle")
        .replace("{code}", "plain_code");
    let enc = sql
        .replace("{email}", "email")
        .replace("{handle}", "handle")
        .replace("{code}", "code");
    (enc, plain)
}

/// Comparisons with literals.
const LITERAL_QUERIES: &[&str] = &[
    "{email} = 'a@x'",
    "'a@x' = {email}",
    "{email} <> 'a@x'",
    "'b@x' <> {email}",
    "{email} IN ('a@x', 'd@x', 'zz')",
    "{email} NOT IN ('a@x', ('b@x'))",
    "({email}) = ( 'b@x' )",
    "NOT {email} = 'b@x'",
    "{email} IN ('c@x', NULL)",
    "{email} = 'zz'",
    "{email} = 'a@x' OR {handle} = 'h4'",
    "{handle} = 'h1'",
    "'h2' <> {handle}",
    "{handle} IN ('h1', 'h4')",
    "{handle} NOT IN ('h2')",
    "{code} = 1",
    "{code} IN (1, 4)",
    "{code} <> 2",
    "{code} NOT IN (2, -9)",
];

#[derive(Clone, Copy)]
enum P {
    T(&'static str),
    I(i32),
}

impl P {
    fn text(self) -> String {
        match self {
            P::T(s) => s.to_string(),
            P::I(i) => i.to_string(),
        }
    }
}

/// Comparisons with parameters, and the values bound.
const PARAM_QUERIES: &[(&str, &[P])] = &[
    ("{email} = $1", &[P::T("a@x")]),
    ("$1 = {email}", &[P::T("b@x")]),
    ("{email} <> $1", &[P::T("a@x")]),
    ("{email} IN ($1, $2)", &[P::T("a@x"), P::T("d@x")]),
    ("{email} NOT IN ($1, $2)", &[P::T("a@x"), P::T("b@x")]),
    ("{email} IN ($1, 'c@x', NULL)", &[P::T("b@x")]),
    ("{email} NOT IN ($1, 'c@x')", &[P::T("a@x")]),
    ("{email} = $1 AND {handle} = $2", &[P::T("a@x"), P::T("h1")]),
    ("{handle} = $1", &[P::T("h1")]),
    ("{handle} IN ($1, $2)", &[P::T("h2"), P::T("h4")]),
    ("{handle} <> $1", &[P::T("h1")]),
    ("{code} = $1", &[P::I(1)]),
    ("{code} <> $1", &[P::I(1)]),
    ("{code} IN ($1, $2)", &[P::I(2), P::I(4)]),
];

fn ids_of_simple(msgs: Vec<tokio_postgres::SimpleQueryMessage>) -> Vec<i64> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .collect()
}

fn ids(rows: &[tokio_postgres::Row]) -> Vec<i64> {
    rows.iter().map(|r| r.get(0)).collect()
}

/// Every lookup through every path gives the plaintext copy's answer.
async fn check_all(client: &tokio_postgres::Client, raw: &mut tokio::net::TcpStream, stage: &str) {
    for template in LITERAL_QUERIES {
        let (enc, plain) = both(template);
        let want = ids(&client
            .query(plain.as_str(), &[])
            .await
            .expect("plain query"));
        let simple = ids_of_simple(
            client
                .simple_query(&enc)
                .await
                .unwrap_or_else(|e| panic!("{stage}: {enc}: {e}")),
        );
        assert_eq!(simple, want, "{stage}, simple protocol: {enc}");
        let extended = ids(&client
            .query(enc.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("{stage}: {enc}: {e}")));
        assert_eq!(extended, want, "{stage}, extended protocol: {enc}");
    }
    for (template, values) in PARAM_QUERIES {
        let (enc, plain) = both(template);
        let owned: Vec<Box<dyn ToSql + Sync>> = values
            .iter()
            .map(|v| -> Box<dyn ToSql + Sync> {
                match v {
                    P::T(s) => Box::new(*s),
                    P::I(i) => Box::new(*i),
                }
            })
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref()).collect();
        let want = ids(&client
            .query(plain.as_str(), &params)
            .await
            .expect("plain query"));
        let binary = ids(&client
            .query(enc.as_str(), &params)
            .await
            .unwrap_or_else(|e| panic!("{stage}: {enc}: {e}")));
        assert_eq!(binary, want, "{stage}, binary parameters: {enc}");
        let texts: Vec<String> = values.iter().map(|v| v.text()).collect();
        let text_params: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
        let msgs = raw::extended_text_query(raw, &enc, &text_params).await;
        assert!(
            raw::first_error(&msgs).is_none(),
            "{stage}: {enc}: {:?}",
            raw::first_error(&msgs)
        );
        let text: Vec<i64> = raw::first_column(&msgs)
            .into_iter()
            .map(|v| v.unwrap().parse().unwrap())
            .collect();
        assert_eq!(text, want, "{stage}, text parameters: {enc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_match_every_live_key_version() {
    let regions = TestRegions::start().await;
    regions.batch_everywhere(SCHEMA).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let keys = write_keys(dir.path());
    let socket = dir.path().join("admin.sock");
    let proxy = start_proxy(config(&regions, &keys, socket.clone())).await;
    within(120, "lookups across key versions", async {
        let client = tenant_client(&proxy, Some("acme")).await;
        let mut raw = raw::trusted_session_with(
            proxy.local_addr(),
            &[("options", "-c regionguard.tenant=acme")],
        )
        .await;
        insert(
            &client,
            "acme",
            &[
                (1, Some("a@x"), Some("h1"), Some(1)),
                (2, Some("b@x"), Some("h2"), Some(2)),
                (3, Some("a@x"), Some("h1"), Some(3)),
                (4, None, None, None),
                (5, Some("c@x"), Some("h3"), Some(1)),
            ],
        )
        .await;
        // Another tenant of the region with the same values: never matched.
        let umbrella = tenant_client(&proxy, Some("umbrella")).await;
        insert(
            &umbrella,
            "umbrella",
            &[(100, Some("a@x"), Some("h1"), Some(1))],
        )
        .await;
        // Prepared before any rotation, executed after each one.
        let by_email = client
            .prepare("SELECT id FROM people WHERE tenant_id = 'acme' AND email = $1 ORDER BY id")
            .await
            .unwrap();

        // A named statement whose compared literals are sealed at Parse:
        // a Bind after a rotation seals them again, transparently.
        let literal = client
            .prepare("SELECT id FROM people WHERE tenant_id = 'acme' AND email IN ('a@x', $1) ORDER BY id")
            .await
            .unwrap();
        assert_eq!(ids(&client.query(&literal, &[&"b@x"]).await.unwrap()), vec![1, 2, 3]);

        check_all(&client, &mut raw, "one key version").await;
        assert_eq!(stored_versions(&regions).await, vec![1]);

        rotate(&socket, "acme").await;
        insert(
            &client,
            "acme",
            &[
                (6, Some("a@x"), Some("h1"), Some(2)),
                (7, Some("d@x"), Some("h4"), Some(4)),
                (8, Some("b@x"), Some("h2"), Some(1)),
            ],
        )
        .await;
        assert_eq!(stored_versions(&regions).await, vec![1, 2]);
        check_all(&client, &mut raw, "two key versions").await;
        let found = ids(&client.query(&by_email, &[&"a@x"]).await.unwrap());
        assert_eq!(
            found,
            vec![1, 3, 6],
            "statement prepared before the rotation"
        );
        let found = ids(&client.query(&literal, &[&"b@x"]).await.unwrap());
        assert_eq!(found, vec![1, 2, 3, 6, 8], "literal prepared before the rotation");
        // Executed again: the statement was replaced once, not per Bind.
        let found = ids(&client.query(&literal, &[&"d@x"]).await.unwrap());
        assert_eq!(found, vec![1, 3, 6, 7]);

        rotate(&socket, "acme").await;
        insert(&client, "acme", &[(9, Some("a@x"), Some("h4"), Some(9))]).await;
        assert_eq!(stored_versions(&regions).await, vec![1, 2, 3]);
        check_all(&client, &mut raw, "three key versions").await;
        let found = ids(&client.query(&by_email, &[&"a@x"]).await.unwrap());
        assert_eq!(
            found,
            vec![1, 3, 6, 9],
            "statement prepared before the rotations"
        );
        let found = ids(&client.query(&literal, &[&"zz"]).await.unwrap());
        assert_eq!(found, vec![1, 3, 6, 9], "literal prepared before the rotations");

        // Through a view that passes the column through (ADR 14).
        let rows = client
            .query(
                "SELECT id FROM people_v WHERE tenant_id = 'acme' AND mail = $1 ORDER BY id",
                &[&"a@x"],
            )
            .await
            .unwrap();
        assert_eq!(ids(&rows), vec![1, 3, 6, 9], "view, parameter");
        let rows = client
            .simple_query("SELECT id FROM people_v WHERE tenant_id = 'acme' AND 'b@x' = mail ORDER BY id")
            .await
            .unwrap();
        assert_eq!(ids_of_simple(rows), vec![2, 8], "view, literal");

        // A rotation through the proxy while a session is open: a fresh
        // session sees the same answers.
        let fresh = tenant_client(&proxy, Some("acme")).await;
        let rows = fresh
            .query(
                "SELECT id FROM people WHERE tenant_id = 'acme' AND email IN ($1, $2) ORDER BY id",
                &[&"a@x", &"b@x"],
            )
            .await
            .unwrap();
        assert_eq!(ids(&rows), vec![1, 2, 3, 6, 8, 9]);
    })
    .await;
}
