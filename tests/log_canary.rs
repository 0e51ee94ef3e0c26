//! Logs never hold customer data: canary values are written through every
//! path a value can take — literals, bind parameters in text and binary
//! format, COPY data, rows read back, statements Postgres rejects,
//! statements the proxy refuses, slow statements, notices, comments,
//! startup parameters, a wrong password — with the proxy logging at TRACE in
//! both formats, and the captured logs must contain none of them.

mod support;

use regionguard::config::{AuthMethod, LogFormat};
use support::*;
use tokio::io::AsyncWriteExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const LITERAL: &str = "canary-literal-7f3a9";
const TEXT_PARAM: &str = "canary-textparam-51c2";
const BINARY_PARAM: &str = "canary-binparam-d4e8";
const BINARY_INT: i64 = 8_675_309_123;
const COPY_DATA: &str = "canary-copydata-0b6e";
const PG_ERROR: &str = "canary-pgerror-99aa";
const PG_ERROR_PARAM: &str = "canary-pgerrparam-4b1c";
const DUPLICATE: &str = "canary-duplicate-77e1";
const REFUSED: &str = "canary-refused-c3d1";
const UNKNOWN_TENANT: &str = "canary-tenant-e5f7";
const UNKNOWN_TENANT_PARAM: &str = "canary-tenantparam-2d9e";
const STARTUP_TENANT: &str = "canary-starttenant-8f0a";
const CROSS_REGION: &str = "canary-crossregion-6a3b";
const UNPARSEABLE: &str = "canary-unparseable-1e2f";
const SLOW: &str = "canary-slow-1a2b";
const SLOW_PARAM: &str = "canary-slowparam-3c4d";
const NOTICE: &str = "canary-notice-5e6f";
const COMMENT: &str = "canary-comment-9c0d";
const NOTIFY: &str = "canary-notify-5c6d";
const APP_NAME: &str = "canary-appname-3a4b";
const PASSWORD: &str = "canary-password-7a8b";

/// The proxy's own layers (text and JSON), at TRACE, into one buffer.
fn capture_logs() -> LogCapture {
    let capture = LogCapture::default();
    tracing_subscriber::registry()
        .with(regionguard::logging::filter("trace"))
        .with(regionguard::logging::layer(
            LogFormat::Text,
            capture.clone(),
            false,
        ))
        .with(regionguard::logging::layer(
            LogFormat::Json,
            capture.clone(),
            false,
        ))
        .try_init()
        .expect("the only subscriber of this test binary");
    capture
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_value_reaches_the_logs() {
    let logs = capture_logs();
    within(40, "log canary workload", async {
        let regions = TestRegions::start().await;
        regions.create_routing_schema().await;
        regions
            .batch_everywhere("CREATE TABLE notes (body text UNIQUE);")
            .await;
        let mut config = regions.routing_config(&ROUTING_TENANTS);
        config.auth.method = AuthMethod::Trust;
        config.logging.slow_statement_ms = 100;
        config.metrics.address = Some("127.0.0.1:0".into());
        config.metrics.health_interval_secs = 1;
        let proxy = start_proxy(config).await;

        let mut startup = proxy_pg_config(&proxy, None);
        startup
            .options("-c regionguard.tenant=acme")
            .application_name(APP_NAME);
        let acme = connect(&startup).await.expect("connect as acme");

        // Literals, and the rows they wrote read back.
        acme.simple_query(&format!(
            "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('acme', 1, '{LITERAL}', '{LITERAL}')"
        ))
        .await
        .expect("insert literal");
        let rows = acme
            .simple_query(&format!(
                "SELECT email FROM customers WHERE tenant_id = 'acme' AND email = '{LITERAL}'"
            ))
            .await
            .expect("select literal");
        let found = support::row_count(&rows);
        assert_eq!(found, 1, "the row written");

        // Bind parameters in binary format (tokio-postgres) …
        acme.execute(
            "INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, $3)",
            &[&"acme", &BINARY_INT, &BINARY_PARAM],
        )
        .await
        .expect("insert binary params");
        let got = acme
            .query(
                "SELECT email FROM customers WHERE tenant_id = $1 AND id = $2",
                &[&"acme", &BINARY_INT],
            )
            .await
            .expect("select binary params");
        assert_eq!(got[0].get::<_, String>(0), BINARY_PARAM);

        // … and in text format (raw protocol).
        let mut raw_session = raw::trusted_session_with(
            proxy.local_addr(),
            &[("options", "-c regionguard.tenant=acme")],
        )
        .await;
        let msgs = raw::extended_text_query(
            &mut raw_session,
            "INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, $3)",
            &[Some("acme"), Some("2"), Some(TEXT_PARAM)],
        )
        .await;
        assert!(raw::first_error(&msgs).is_none(), "{:?}", raw::first_error(&msgs));
        let msgs = raw::extended_text_query(
            &mut raw_session,
            "SELECT email FROM customers WHERE tenant_id = $1 AND email = $2",
            &[Some("acme"), Some(TEXT_PARAM)],
        )
        .await;
        assert_eq!(raw::first_column(&msgs), vec![Some(TEXT_PARAM.to_string())]);

        // COPY in and out of a table that is not tenant-scoped.
        let sink = acme
            .copy_in("COPY notes (body) FROM STDIN")
            .await
            .expect("copy in");
        futures_util::pin_mut!(sink);
        use futures_util::SinkExt;
        sink.send(bytes::Bytes::from(format!("{COPY_DATA}\n{COPY_DATA}-2\n")))
            .await
            .expect("copy data");
        assert_eq!(sink.finish().await.expect("copy done"), 2);
        let out = acme
            .copy_out("COPY notes TO STDOUT")
            .await
            .expect("copy out");
        use futures_util::StreamExt;
        let chunks: Vec<_> = out.collect().await;
        assert!(!chunks.is_empty());

        // Statements Postgres rejects: the value is in its error message or detail.
        let e = acme
            .simple_query(&format!("SELECT '{PG_ERROR}'::int"))
            .await
            .expect_err("invalid integer");
        assert!(e.to_string().contains(PG_ERROR) || format!("{e:?}").contains(PG_ERROR));
        acme.query("SELECT $1::text::int", &[&PG_ERROR_PARAM])
            .await
            .expect_err("invalid integer parameter");
        acme.simple_query(&format!("INSERT INTO notes VALUES ('{DUPLICATE}')"))
            .await
            .expect("first");
        acme.simple_query(&format!("INSERT INTO notes VALUES ('{DUPLICATE}')"))
            .await
            .expect_err("duplicate key: the value is in the detail");

        // Statements the proxy refuses.
        let anonymous = tenant_client(&proxy, None).await;
        let r = anonymous
            .simple_query(&format!("SELECT * FROM customers WHERE email = '{REFUSED}'"))
            .await;
        expect_refusal(r, "42501", &[REFUSED], "no tenant");
        let r = anonymous
            .simple_query(&format!(
                "SELECT * FROM customers WHERE tenant_id = '{UNKNOWN_TENANT}'"
            ))
            .await;
        expect_refusal(r, "42501", &[UNKNOWN_TENANT], "unknown tenant literal");
        let r = anonymous
            .query(
                "SELECT * FROM customers WHERE tenant_id = $1",
                &[&UNKNOWN_TENANT_PARAM],
            )
            .await;
        expect_refusal(r, "42501", &[UNKNOWN_TENANT_PARAM], "unknown tenant parameter");
        let r = anonymous
            .simple_query(&format!("SET regionguard.tenant = '{UNKNOWN_TENANT}'"))
            .await;
        expect_refusal(r, "42501", &[UNKNOWN_TENANT], "unknown tenant SET");
        let r = anonymous
            .simple_query(&format!(
                "SELEC * FROM customers WHERE email = '{UNPARSEABLE}'"
            ))
            .await;
        assert!(r.is_err(), "an unparseable statement on a tenant table is refused");
        acme.simple_query("BEGIN").await.expect("begin");
        acme.simple_query("SELECT 1 FROM customers WHERE tenant_id = 'acme'")
            .await
            .expect("pin eu");
        let r = acme
            .simple_query(&format!(
                "SELECT * FROM customers WHERE tenant_id = 'globex' AND email = '{CROSS_REGION}'"
            ))
            .await;
        expect_refusal(r, "42501", &[CROSS_REGION], "other region inside a transaction");
        acme.simple_query("ROLLBACK").await.expect("rollback");

        // An unknown tenant at startup.
        let mut bad_start = proxy_pg_config(&proxy, None);
        bad_start.options(format!("-c regionguard.tenant={STARTUP_TENANT}"));
        if let Ok(c) = connect(&bad_start).await {
            let _ = c.simple_query("SELECT 1 FROM customers").await;
        }

        // Slow statements, with a literal and with a parameter.
        acme.simple_query(&format!("SELECT pg_sleep(0.15), '{SLOW}'"))
            .await
            .expect("slow literal");
        acme.query("SELECT pg_sleep(0.15), $1::text", &[&SLOW_PARAM])
            .await
            .expect("slow parameter");

        // Notices, comments and notifications relayed, never logged.
        acme.simple_query(&format!("DO $$ BEGIN RAISE NOTICE '{NOTICE}'; END $$"))
            .await
            .expect("notice");
        acme.simple_query(&format!("/* {COMMENT} */ SELECT 1"))
            .await
            .expect("comment");
        acme.simple_query(&format!("LISTEN ch; NOTIFY ch, '{NOTIFY}'"))
            .await
            .expect("notify");

        // A scrape, so the metrics paths run under the capture too.
        if let Some(addr) = proxy.metrics_addr() {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics");
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
        }
        drop(raw_session);
        drop(anonymous);
        drop(acme);
        proxy.shutdown().await;

        // A wrong password, on a proxy that checks them.
        let scram = start_proxy(regions.routing_config(&ROUTING_TENANTS)).await;
        let mut wrong = proxy_pg_config(&scram, None);
        wrong.password(PASSWORD);
        assert!(connect(&wrong).await.is_err(), "wrong password accepted");
        scram.shutdown().await;
    })
    .await;

    let text = logs.text();
    // The capture works and the paths were logged at all.
    for expected in [
        "slow statement",
        "SELECT pg_sleep(?), ?",
        "SELECT pg_sleep(?), $1::text",
        "statement refused",
        "session{",
        "\"span\":{",
        "connection refused",
        "client message",
    ] {
        assert!(
            text.contains(expected),
            "the logs lack {expected:?}:\n{text}"
        );
    }
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let decimal_list = |s: &str| {
        s.bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let canaries = [
        LITERAL,
        TEXT_PARAM,
        BINARY_PARAM,
        &BINARY_INT.to_string(),
        COPY_DATA,
        PG_ERROR,
        PG_ERROR_PARAM,
        DUPLICATE,
        REFUSED,
        UNKNOWN_TENANT,
        UNKNOWN_TENANT_PARAM,
        STARTUP_TENANT,
        CROSS_REGION,
        UNPARSEABLE,
        SLOW,
        SLOW_PARAM,
        NOTICE,
        COMMENT,
        NOTIFY,
        APP_NAME,
        PASSWORD,
        ROLE_PASSWORD,
        PROXY_PASSWORD,
    ]
    .map(str::to_string);
    let mut hits = Vec::new();
    for canary in &canaries {
        for form in [canary.clone(), hex(canary), decimal_list(canary)] {
            if text.contains(&form) {
                hits.push(form);
            }
        }
    }
    // Any canary's common prefix, in byte-list or hex form.
    for form in [decimal_list("canary-"), hex("canary-")] {
        if text.contains(&form) {
            hits.push(form);
        }
    }
    let leaked: Vec<&str> = text
        .lines()
        .filter(|l| hits.iter().any(|h| l.contains(h.as_str())))
        .collect();
    assert!(
        hits.is_empty(),
        "{} canary forms in the logs: {hits:?}\n{}",
        hits.len(),
        leaked.join("\n")
    );
    assert!(!text.contains("canary"), "a canary in the logs");
}
