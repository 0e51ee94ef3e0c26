//! Micro-benchmarks of the per-message work on the proxy's hot paths:
//! framing a read buffer, parsing a startup packet, encoding the proxy's own
//! errors and parsing SCRAM verifiers.
//!
//! Run with `cargo bench --bench framing`; results are in docs/benchmarks.md.

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use regionguard::protocol::error::{sqlstate, PgError};
use regionguard::protocol::framing::{self, Frame};
use regionguard::protocol::scram::{hash_password, Verifier};
use regionguard::protocol::startup::{parse_initial, InitialPacket};
use std::hint::black_box;

/// The size cap the proxy applies to client messages by default (1 GiB).
const MAX_LEN: usize = 1 << 30;

/// Appends one message: type byte, length, body.
fn put_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32((body.len() + 4) as i32);
    out.put_slice(body);
}

/// A DataRow like `pgbench_accounts`' (aid, bid, abalance, filler).
fn data_row(i: usize) -> Vec<u8> {
    let fields: [Vec<u8>; 4] = [
        i.to_string().into_bytes(),
        (i / 100_000 + 1).to_string().into_bytes(),
        b"0".to_vec(),
        vec![b' '; 84],
    ];
    let mut body = Vec::new();
    body.extend_from_slice(&(fields.len() as i16).to_be_bytes());
    for f in &fields {
        body.extend_from_slice(&(f.len() as i32).to_be_bytes());
        body.extend_from_slice(f);
    }
    body
}

/// A backend reply of 100 DataRows, CommandComplete and ReadyForQuery, as
/// one read from the backend would deliver it.
fn hundred_rows() -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..100 {
        put_message(&mut buf, b'D', &data_row(i));
    }
    put_message(&mut buf, b'C', b"SELECT 100\0");
    put_message(&mut buf, b'Z', b"I");
    buf
}

fn bench_scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing::scan");
    let mut frames: Vec<Frame> = Vec::with_capacity(128);

    let rows = hundred_rows();
    g.throughput(Throughput::Elements(102));
    g.bench_function("100 DataRows + CommandComplete + ReadyForQuery", |b| {
        b.iter(|| {
            let used = framing::scan(black_box(&rows), MAX_LEN, &mut frames).unwrap();
            black_box((used, frames.len()))
        })
    });

    // A read that ends in the middle of a message: the incomplete tail stays.
    let partial = &rows[..rows.len() - 50];
    g.bench_function("100 messages, last one incomplete", |b| {
        b.iter(|| {
            let used = framing::scan(black_box(partial), MAX_LEN, &mut frames).unwrap();
            black_box((used, frames.len()))
        })
    });

    let mut copy = BytesMut::new();
    put_message(&mut copy, b'd', &vec![0x5a; 1 << 20]);
    g.throughput(Throughput::Bytes(copy.len() as u64));
    g.bench_function("1 MiB CopyData", |b| {
        b.iter(|| {
            let used = framing::scan(black_box(&copy), MAX_LEN, &mut frames).unwrap();
            black_box((used, frames.len()))
        })
    });
    g.finish();
}

fn startup_packet() -> Vec<u8> {
    let params = [
        ("user", "bench"),
        ("database", "bench"),
        ("application_name", "pgbench"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("options", "-c regionguard.region=eu"),
    ];
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes()); // protocol 3.0
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

fn bench_startup(c: &mut Criterion) {
    let packet = startup_packet();
    assert!(matches!(
        parse_initial(&packet),
        Ok(InitialPacket::Startup(_))
    ));
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    assert!(matches!(parse_initial(&ssl), Ok(InitialPacket::SslRequest)));

    let mut g = c.benchmark_group("startup::parse_initial");
    g.bench_function("StartupMessage, 6 parameters", |b| {
        b.iter(|| black_box(parse_initial(black_box(&packet)).unwrap()))
    });
    g.bench_function("SSLRequest", |b| {
        b.iter(|| black_box(parse_initial(black_box(&ssl)).unwrap()))
    });
    g.finish();
}

fn bench_error(c: &mut Criterion) {
    let err = PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "operator LIKE is not supported on encrypted column \"customers\".\"email\"",
    )
    .with_detail("the column is encrypted with randomized encryption")
    .with_hint("compare with = on a deterministic column, or decrypt in the application");

    let mut g = c.benchmark_group("PgError");
    let mut out = BytesMut::with_capacity(1024);
    g.bench_function("encode (message, detail, hint) into a reused buffer", |b| {
        b.iter(|| {
            out.clear();
            black_box(&err).encode(&mut out);
            black_box(out.len())
        })
    });
    g.bench_function("to_bytes (fresh buffer)", |b| {
        b.iter(|| black_box(black_box(&err).to_bytes()))
    });
    g.finish();
}

fn bench_verifier(c: &mut Criterion) {
    let verifier = hash_password("correct horse battery staple");
    Verifier::parse(&verifier).unwrap();

    let mut g = c.benchmark_group("scram::Verifier");
    g.bench_function("parse", |b| {
        b.iter(|| black_box(Verifier::parse(black_box(&verifier)).unwrap()))
    });
    // Parse rejects early on a bad prefix; bad input must stay cheap.
    let bad = verifier.replacen("SCRAM", "SCRUM", 1);
    g.bench_function("parse (invalid prefix)", |b| {
        b.iter(|| black_box(Verifier::parse(black_box(&bad)).is_err()))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_scan,
    bench_startup,
    bench_error,
    bench_verifier
);
criterion_main!(benches);
