//! Helpers of the metrics tests: a bare HTTP/1.1 GET and a reader of the
//! Prometheus text format, so the tests check what a scraper would see.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on `addr`: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head and body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line in {head:?}"));
    (status, body.to_string())
}

/// The value of the sample `name{labels…}` (labels compared as a set; the
/// sample may carry more labels than given only if `exact` is false).
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        if n != name || l.len() != labels.len() {
            continue;
        }
        if labels
            .iter()
            .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want))
        {
            return v.parse().ok();
        }
    }
    None
}

/// Like [`value`], panicking with the scrape when the sample is missing.
pub fn must(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(text, name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in the scrape:\n{text}"))
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    s.split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

/// Metric family name → type, from the `# TYPE` lines.
pub fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (n, t) = l.split_once(' ')?;
            Some((n.to_string(), t.to_string()))
        })
        .collect()
}

/// `/readyz` parsed: the status code and the JSON body.
pub async fn readyz(addr: SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, "/readyz").await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz body {body:?}: {e}"));
    (status, json)
}

/// `name → type` from the tables of docs/metrics.md (rows `| \`name\` | type | …`).
pub fn documented() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("read docs/metrics.md");
    text.lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let ty = cells.next()?;
            name.starts_with("regionguard_")
                .then(|| (name.to_string(), ty.to_string()))
        })
        .collect()
}
