//! The proxy configuration of the demo: the three regions, SCRAM with one
//! well-known user, listening on loopback.

use super::keys::KeyFiles;
use super::state::State;
use super::{DATABASE, ROLE};
use crate::config::{Config, ConfigError};
use crate::localpg::Cluster;
use std::fmt::Write;

/// The demo's client credentials: printed in every URL, not a secret.
pub(crate) const PROXY_USER: &str = "app";
pub(crate) const PROXY_PASSWORD: &str = "app";

/// Builds the config from TOML text, so the demo goes through the same
/// parsing and validation as a user's config file.
pub(crate) fn build(
    clusters: &[Cluster],
    state: &State,
    keys: &KeyFiles,
    port: u16,
) -> Result<Config, ConfigError> {
    let verifier = postgres_protocol::password::scram_sha_256(PROXY_PASSWORD.as_bytes());
    let mut toml = format!(
        "default_region = \"eu\"\n\
         [listen]\n\
         address = \"127.0.0.1:{port}\"\n\
         [[auth.users]]\n\
         name = \"{PROXY_USER}\"\n\
         verifier = \"{verifier}\"\n\
         [tenancy]\n\
         tables = [\"customers\", \"orders\"]\n\
         [classes.pii]\n\
         encrypt = \"randomized\"\n\
         [classified.customers.email]\n\
         class = \"pii\"\n\
         type = \"text\"\n\
         searchable = true\n\
         [classified.customers.full_name]\n\
         class = \"pii\"\n\
         type = \"text\"\n\
         [tenants]\n"
    );
    for (tenant, region) in super::schema::tenant_regions() {
        let _ = writeln!(toml, "{tenant} = \"{region}\"");
    }
    for cluster in clusters {
        let region = cluster.name();
        let password = state
            .regions
            .get(region)
            .map(|r| r.role_password.as_str())
            .unwrap_or_default();
        // Writing to a String cannot fail. Passwords are alphanumeric
        // (localpg::random_password), so they need no TOML escaping.
        let _ = write!(
            toml,
            "[regions.{region}]\n\
             zone = \"{region}\"\n\
             [[regions.{region}.hosts]]\n\
             host = \"127.0.0.1\"\n\
             port = {}\n\
             dbname = \"{DATABASE}\"\n\
             user = \"{ROLE}\"\n\
             password = \"{password}\"\n",
            cluster.port()
        );
        if let Some(path) = keys.path(region) {
            // Key paths are under the demo's data directory; TOML's
            // literal strings need no escaping of anything but `'`.
            let _ = write!(
                toml,
                "[regions.{region}.key]\n\
                 source = \"file\"\n\
                 path = '{}'\n",
                path.display()
            );
        }
    }
    Config::from_toml_str(&toml, "demo")
}
