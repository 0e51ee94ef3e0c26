//! Throwaway and persistent local PostgreSQL clusters for the `demo` command
//! and the integration tests.
//!
//! Each cluster lives in its own directory (`<dir>/data` plus
//! `<dir>/postgres.log`), listens on 127.0.0.1 only, and authenticates every
//! connection with SCRAM so the proxy's backend authentication is exercised
//! exactly as in production. Settings this module owns are kept in
//! `data/regionguard.conf`, included from `postgresql.conf`, so they can be
//! rewritten (new port, fast mode) without editing the user's file.
//!
//! `initdb` refuses to run as root; when the process is root, every
//! PostgreSQL program runs as the `postgres` OS user instead (see
//! [`RunAs`]).

mod binaries;
mod cluster;
mod error;
mod fsutil;
mod initdb;
mod run_as;
mod sql;
mod template;

pub use binaries::PgBinaries;
pub use cluster::{Cluster, ClusterOptions};
pub use error::LocalPgError;
pub use initdb::SUPERUSER;
pub use run_as::RunAs;
pub use sql::{quote_ident, quote_literal};

/// A random alphanumeric password: safe unquoted in URLs, SQL literals and
/// TOML, so callers never need to escape it.
pub fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// Where throwaway clusters and the template cache go: `/dev/shm` when it is
/// a roomy tmpfs (at least 2 GiB free), else the system temp dir. On a
/// virtual disk, copying a data directory costs ~1 s of kernel time; on
/// tmpfs ~50 ms, which is most of a test's startup. The size check avoids
/// Docker's default 64 MiB `/dev/shm`, which PostgreSQL also needs for its
/// own shared memory.
pub fn scratch_dir() -> std::path::PathBuf {
    const MIN_FREE: u64 = 2 << 30;
    let shm = std::path::Path::new("/dev/shm");
    let roomy = nix::sys::statvfs::statvfs(shm)
        .is_ok_and(|s| s.blocks_available().saturating_mul(s.fragment_size()) >= MIN_FREE);
    let writable = nix::unistd::access(shm, nix::unistd::AccessFlags::W_OK).is_ok();
    if roomy && writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
