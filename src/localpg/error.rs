//! Errors of local cluster management. Each names the cluster, file or
//! command involved so a failing test or demo says what to fix.

use std::path::PathBuf;

/// Why a local PostgreSQL cluster could not be created, started or used.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH \
         or under /usr/lib/postgresql/*/bin; install them with `apt-get install postgresql`"
    )]
    BinariesNotFound,
    #[error(
        "running as root, but there is no `postgres` OS user to run PostgreSQL as \
         (initdb refuses to run as root); install the `postgresql` package \
         (`apt-get install postgresql`) or create the user (`useradd --system postgres`)"
    )]
    NoPostgresUser,
    #[error("cannot look up OS user `{user}`: {source}")]
    UserLookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("cluster `{cluster}` did not start (log {log}):\n{log_tail}")]
    Start {
        cluster: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error(
        "the `{user}` OS user that runs PostgreSQL cannot enter {dir}; \
         choose a data directory under /tmp or /var/tmp, or run `chmod o+x {dir}`"
    )]
    NotTraversable { dir: PathBuf, user: String },
    #[error("cluster `{cluster}`: {source}")]
    Sql {
        cluster: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl LocalPgError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalPgError {
        let context = context.into();
        move |source| LocalPgError::Io { context, source }
    }
}
