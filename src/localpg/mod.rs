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
