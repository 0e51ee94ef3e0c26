//! Micro-benchmarks of column encryption: sealing and opening one value
//! with a tenant's keys, as the write and read paths do per classified
//! field (envelope, associated data and nonce included).
//!
//! Run with `cargo bench --bench crypto`; results are in docs/benchmarks.md.
//! Targets (issue 4): ≤ 150 ns per 64-byte seal or open, ≥ 3 GB/s at 4 KiB.
//!
//! Times are the benchmark thread's *CPU time* (`CLOCK_THREAD_CPUTIME_ID`),
//! not wall time: the targets are per core, and on a shared machine wall
//! time also counts the moments other processes held the core.

use base64::Engine as _;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use regionguard::config::Protection;
use regionguard::crypto::cipher::Cipher;
use regionguard::crypto::store::{KeyState, StoredKey};
use regionguard::crypto::{data_key, Aad, KekRing, TenantKeys};
use std::hint::black_box;

/// Criterion measurement: CPU time of the calling thread, in nanoseconds.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, formatted as durations like wall time.
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

type Crit = Criterion<ThreadCpuTime>;

fn tenant_keys() -> TenantKeys {
    let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let ring = KekRing::parse("eu", &format!("1:{b64}")).unwrap();
    let raw = data_key::generate().unwrap();
    let wrapped = data_key::wrap(ring.active(), "eu", "acme", 1, &raw).unwrap();
    let row = StoredKey {
        version: 1,
        wrapped_key: Some(wrapped),
        kek_version: 1,
        created_at: std::time::SystemTime::now(),
        state: KeyState::Active,
    };
    TenantKeys::from_rows(&ring, "eu", "acme", &[row]).unwrap()
}

fn bench_values(c: &mut Crit) {
    let keys = tenant_keys();
    let aad = Aad::column("eu", "acme", "customers", "email");
    for size in [64usize, 4096] {
        let plaintext = vec![0x5au8; size];
        let mut group = c.benchmark_group(format!("crypto_{size}B"));
        group.throughput(Throughput::Bytes(size as u64));
        for (label, p) in [
            ("randomized", Protection::Randomized),
            ("deterministic", Protection::Deterministic),
        ] {
            group.bench_function(BenchmarkId::new("seal", label), |b| {
                b.iter(|| keys.seal(p, &aad, black_box(&plaintext)).unwrap())
            });
            let env = keys.seal(p, &aad, &plaintext).unwrap();
            group.bench_function(BenchmarkId::new("open", label), |b| {
                b.iter(|| keys.open(&aad, black_box(&env)).unwrap())
            });
            // The hot-path variants: append into / decrypt into a buffer
            // the caller reuses (no allocation, no per-value wipe).
            let mut out = Vec::with_capacity(size + 64);
            group.bench_function(BenchmarkId::new("seal_into", label), |b| {
                b.iter(|| {
                    out.clear();
                    keys.seal_into(p, &aad, black_box(&plaintext), &mut out)
                        .unwrap()
                })
            });
            let mut scratch = zeroize::Zeroizing::new(Vec::with_capacity(size + 64));
            group.bench_function(BenchmarkId::new("open_into", label), |b| {
                b.iter(|| keys.open_into(&aad, black_box(&env), &mut scratch).unwrap())
            });
        }
        group.finish();
    }
}

/// The bare AEAD (no envelope, fixed nonce), for comparison with the
/// envelope's overhead: with 64 bytes of associated data (about the size of
/// a binding and header) and, for a 64-byte value, with none — the floor
/// of the primitive on this machine.
fn bench_raw_cipher(c: &mut Crit) {
    let cipher = Cipher::new(&[3u8; 32]).unwrap();
    let nonce = [1u8; 12];
    let aad = [0u8; 64];
    for (size, aad_len, suffix) in [(64usize, 64, ""), (64, 0, "_no_aad"), (4096, 64, "")] {
        let mut buf = vec![0x5au8; size];
        let mut group = c.benchmark_group(format!("aes256gcmsiv_raw_{size}B{suffix}"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function("seal_in_place", |b| {
            b.iter(|| {
                cipher
                    .seal_in_place(&nonce, &aad[..aad_len], black_box(&mut buf))
                    .unwrap()
            })
        });
        group.finish();
    }
}

/// Where a seal's time goes besides the AEAD: the random nonce (pooled vs
/// one aws-lc call per nonce).
fn bench_parts(c: &mut Crit) {
    let mut group = c.benchmark_group("nonce");
    group.bench_function("random_nonce_pooled", |b| {
        b.iter(|| regionguard::crypto::cipher::random_nonce().unwrap())
    });
    group.bench_function("aws_lc_rand_fill_12", |b| {
        b.iter(|| {
            let mut n = [0u8; 12];
            aws_lc_rs::rand::fill(&mut n).unwrap();
            n
        })
    });
    group.finish();
    // The deterministic nonce's MAC over a 64-byte value and its binding.
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[9u8; 32]);
    let input = [0x5au8; 6 + 60 + 64];
    c.bench_function("hmac_sha256_130B", |b| {
        b.iter(|| aws_lc_rs::hmac::sign(&key, black_box(&input)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bench_values, bench_raw_cipher, bench_parts
}
criterion_main!(benches);
