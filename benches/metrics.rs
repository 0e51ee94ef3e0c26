//! The instrumentation a request pays on the hot path, measured alone: what
//! a `pgbench -S` transaction costs in metrics and slow-statement
//! bookkeeping with metrics on, and with them off (every call a `None`
//! check). The end-to-end comparison is benches/metrics_compare.sh; on a
//! busy machine its noise is larger than this cost, which is why it is
//! measured here too.
//!
//! Run with `cargo bench --bench metrics`; results are in docs/benchmarks.md.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
use regionguard::config::Config;
use regionguard::metrics::Metrics;
use std::hint::black_box;

fn config(metrics: bool, slow_ms: u64) -> Config {
    let endpoint = if metrics {
        "[metrics]\naddress = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    let toml = format!(
        "default_region = \"eu\"\n[auth]\nmethod = \"trust\"\n\
         [logging]\nslow_statement_ms = {slow_ms}\n{endpoint}\
         [regions.eu]\nzone = \"eu\"\n[[regions.eu.hosts]]\nhost = \"h\"\ndbname = \"d\"\nuser = \"u\"\n\
         [regions.us]\nzone = \"us\"\n[[regions.us.hosts]]\nhost = \"h\"\ndbname = \"d\"\nuser = \"u\"\n"
    );
    Config::from_toml_str(&toml, "bench").expect("valid bench config")
}

/// One `pgbench -S` round trip as the proxy's instrumentation sees it.
fn request(
    metrics: &Metrics,
    stats: &regionguard::metrics::BackendStats,
    batch: u64,
    query: &Bytes,
) {
    metrics.client_received(query.len());
    stats.note_statement(batch, query);
    stats.sent(query.len());
    let timer = stats.start_batch();
    stats.received(80);
    stats.command_complete(black_box(b"SELECT 1\0"), false);
    stats.finish_batch(timer, batch);
}

fn bench(c: &mut Criterion) {
    let mut query = BytesMut::new();
    postgres_protocol::message::frontend::query(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
        &mut query,
    )
    .expect("encode");
    let query = query.freeze();
    for (name, on, slow) in [
        ("request, metrics and slow log off", false, 0),
        ("request, metrics on, slow log off", true, 0),
        (
            "request, metrics on, slow log 1000 ms (defaults)",
            true,
            1000,
        ),
    ] {
        let metrics = Metrics::new(&config(on, slow)).expect("metrics");
        let stats = metrics.backend_connected("eu", 0, &[], false, false);
        let mut batch = 0u64;
        c.bench_function(name, |b| {
            b.iter(|| {
                request(&metrics, &stats, batch, &query);
                batch += 1;
            })
        });
    }
    let metrics = Metrics::new(&config(true, 1000)).expect("metrics");
    c.bench_function("scrape (render every series)", |b| {
        b.iter(|| black_box(metrics.render()))
    });
    let refusal = regionguard::protocol::error::PgError::error(
        "42501",
        "cannot tell which tenant a statement on tenant-scoped table customers belongs to",
    );
    c.bench_function("refused statement (reason from the message)", |b| {
        b.iter(|| metrics.statement_refused(black_box(&refusal)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
