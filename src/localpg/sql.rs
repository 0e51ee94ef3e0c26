//! Connecting to a local cluster and the few administrative statements the
//! demo and tests need. Everything goes over TCP with SCRAM, as the proxy's
//! own backend connections do.

use super::initdb::SUPERUSER;
use super::{Cluster, LocalPgError};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

impl Cluster {
    /// Connects as `user` to `dbname`. The connection runs on a spawned
    /// task that ends when the client is dropped.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<Client, LocalPgError> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port())
            .user(user)
            .password(password)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10))
            .connect(NoTls)
            .await
            .map_err(|source| self.sql_error(source))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "local cluster connection ended");
            }
        });
        Ok(client)
    }

    /// Connects as the superuser to `dbname`.
    pub async fn connect_superuser(&self, dbname: &str) -> Result<Client, LocalPgError> {
        self.connect(SUPERUSER, self.superuser_password(), dbname)
            .await
    }

    /// Runs `sql` (any number of statements) as the superuser in `dbname`.
    pub async fn batch_execute(&self, dbname: &str, sql: &str) -> Result<(), LocalPgError> {
        let client = self.connect_superuser(dbname).await?;
        client
            .batch_execute(sql)
            .await
            .map_err(|source| self.sql_error(source))
    }

    /// Creates a login role with `password`, or resets the password of an
    /// existing one, so re-running a setup is harmless. Only the SCRAM
    /// verifier is sent, never the password.
    ///
    /// The role's search path is `public` alone: the default `"$user",
    /// public` would put what a role named `regionguard` creates into
    /// RegionGuard's own schema of that name (see `server::search_path`).
    pub async fn ensure_login_role(&self, name: &str, password: &str) -> Result<(), LocalPgError> {
        let client = self.connect_superuser("postgres").await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
            .await
            .map_err(|source| self.sql_error(source))?
            .is_some();
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let verb = if exists { "ALTER" } else { "CREATE" };
        let sql = format!(
            "{verb} ROLE {role} LOGIN PASSWORD {}; ALTER ROLE {role} SET search_path = public",
            quote_literal(&verifier),
            role = quote_ident(name),
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|source| self.sql_error(source))
    }

    /// Creates database `name` owned by `owner` unless it exists.
    pub async fn ensure_database(&self, name: &str, owner: &str) -> Result<(), LocalPgError> {
        let client = self.connect_superuser("postgres").await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .map_err(|source| self.sql_error(source))?
            .is_some();
        if exists {
            return Ok(());
        }
        let sql = format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(name),
            quote_ident(owner)
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|source| self.sql_error(source))
    }

    /// A libpq URL for `user` on `dbname`, e.g. to print or pass to psql.
    pub fn connection_string(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            url_encode(user),
            url_encode(password),
            self.port(),
            url_encode(dbname)
        )
    }

    fn sql_error(&self, source: tokio_postgres::Error) -> LocalPgError {
        LocalPgError::Sql {
            cluster: self.name().to_string(),
            source,
        }
    }
}

/// Quotes an SQL identifier (`"a""b"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (`'it''s'`); valid with
/// `standard_conforming_strings` on, the default since PostgreSQL 9.1.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn url_encoding_keeps_only_unreserved_characters() {
        assert_eq!(url_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(url_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }
}
