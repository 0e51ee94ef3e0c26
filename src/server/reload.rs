//! Config reload (`regionguard ctl reload`, SIGHUP): read the config file
//! again and swap in what can change while clients are connected.
//!
//! All or nothing: the new file is parsed and validated, every setting
//! that needs a restart is compared with the running one, the new users'
//! verifiers are parsed and every newly classified column's storage type is
//! checked in each reachable region — and only when all of that passes are
//! the new rules installed, each with one atomic swap. A refused reload
//! changes nothing and says why; the old config stays in force.
//!
//! Statements already analysed keep the rules they were analysed with
//! (they hold their own `Arc`); the next statement sees the new ones. The
//! analysis cache is invalidated so no statement is served from an analysis
//! made under the old rules.
//!
//! Reloadable: `auth.users`, `[tenants]`, `tenancy.tables`/`columns`/
//! `global_tables`, `[classes]`, `[classified]`, `[key_rotation]`,
//! `admin.rotation_grace_ms`. Everything else needs a restart (listening
//! sockets, region hosts, keys and `read_from_standbys`, TLS, the directory
//! connection, …).

use super::state::Shared;
use crate::config::{Config, ConfigError};
use std::path::PathBuf;
use std::sync::Arc;

/// A reload that was applied.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub path: PathBuf,
    /// SHA-256 of the file as read.
    pub sha256: String,
    /// The reloadable settings whose values changed (empty: none did).
    pub changed: Vec<&'static str>,
    /// Regions whose catalogs could not be read to check storage types now
    /// (down); they are checked when next used, as at start.
    pub unchecked_regions: Vec<String>,
}

/// Why a reload was refused; the running config is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the proxy was started without a config file; nothing to reload")]
    NoFile,
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("these settings change only with a restart: {}", .0.join(", "))]
    NeedsRestart(Vec<String>),
    #[error("auth.users: {0}")]
    Users(String),
    #[error("classified columns: {0}")]
    Catalog(String),
}

impl ReloadError {
    /// A stable, short reason for logs and the admin error code.
    pub fn kind(&self) -> &'static str {
        match self {
            ReloadError::NoFile => "no_config_file",
            ReloadError::Invalid(_) => "invalid_config",
            ReloadError::NeedsRestart(_) => "needs_restart",
            ReloadError::Users(_) => "invalid_config",
            ReloadError::Catalog(_) => "storage_type",
        }
    }
}

/// Reads the config file again and applies it (see the module doc).
/// Reloads are serialised: two at once would race on the swap.
pub async fn reload(shared: &Shared) -> Result<Reloaded, ReloadError> {
    let _one_at_a_time = shared.reload_lock.lock().await;
    let outcome = apply(shared).await;
    shared.metrics.config_reloaded(outcome.is_ok());
    outcome
}

async fn apply(shared: &Shared) -> Result<Reloaded, ReloadError> {
    let path = shared
        .config
        .source_path
        .clone()
        .ok_or(ReloadError::NoFile)?;
    let new = read(path.clone()).await?;
    let sha256 = new.source_sha256.clone().unwrap_or_default();
    let current = shared.current.load_full();
    let restart = needs_restart(&shared.config, &new);
    if !restart.is_empty() {
        return Err(ReloadError::NeedsRestart(restart));
    }
    if !new.classified.is_empty() && shared.keyring.is_none() {
        return Err(ReloadError::NeedsRestart(vec![
            "classified (the proxy started without classified columns, so without region keys)"
                .into(),
        ]));
    }
    let users = Shared::users_of(&new).map_err(ReloadError::Users)?;
    let mut tenancy = Shared::tenancy_of(&new);
    tenancy.share_discovery(&shared.tenancy.load());
    let mut catalogs = Vec::new();
    let mut unchecked_regions = Vec::new();
    if let Some(keyring) = &shared.keyring {
        for region in keyring.regions() {
            let read = match keyring.store_client(region).await {
                Ok(client) => crate::catalog::Catalogs::read(region, &client, &tenancy)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match read {
                Ok(catalog) => {
                    if let Some(problem) = catalog.problems().first() {
                        return Err(ReloadError::Catalog(problem.clone()));
                    }
                    catalogs.push((region.to_string(), Arc::new(catalog)));
                }
                Err(e) => {
                    tracing::warn!(%region, error = %e, "reload: cannot read the region's catalog; checked on first use");
                    unchecked_regions.push(region.to_string());
                }
            }
        }
    }
    let changed = changed_settings(&current, &new);
    shared.users.store(Arc::new(users));
    shared.directory.set_fixed(&new);
    {
        // A catalog refresh running now read under the old rules: it sees
        // the swap once this ends and reads again (Shared::refresh_catalog).
        let _installing = shared
            .rules_install
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (region, catalog) in catalogs {
            shared.catalogs.install(&region, catalog);
        }
        // Views are read with the classification: install what the new
        // catalogs say before the new rules serve a statement.
        tenancy.set_views(shared.catalogs.views());
        shared.tenancy.store(Arc::new(tenancy));
    }
    shared.analysis.invalidate();
    if changed
        .iter()
        .any(|c| matches!(*c, "tenancy" | "classes" | "classified"))
    {
        shared
            .rules_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    shared.current.store(Arc::new(new));
    Ok(Reloaded {
        path,
        sha256,
        changed,
        unchecked_regions,
    })
}

/// Loads the file off the runtime's threads (interpolation reads the
/// environment; the file may sit on slow storage).
async fn read(path: PathBuf) -> Result<Config, ReloadError> {
    tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .map_err(|e| {
            ReloadError::Invalid(ConfigError::invalid(
                "reload",
                format!("reading the file failed: {e}"),
            ))
        })?
        .map_err(ReloadError::Invalid)
}

/// The settings that differ between `running` and `new` and need a
/// restart, by config key.
pub fn needs_restart(running: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |key: &str, same: bool| {
        if !same {
            out.push(key.to_string());
        }
    };
    check("listen", running.listen == new.listen);
    check("client_tls", running.client_tls == new.client_tls);
    check("auth.method", running.auth.method == new.auth.method);
    check(
        "default_region",
        running.default_region == new.default_region,
    );
    check("directory", running.directory == new.directory);
    check("two_phase", running.two_phase == new.two_phase);
    check("backend_pool", running.backend_pool == new.backend_pool);
    check("metrics", running.metrics == new.metrics);
    check("logging", running.logging == new.logging);
    check("admin.socket", running.admin.socket == new.admin.socket);
    check(
        "admin.audit_log",
        running.admin.audit_log == new.admin.audit_log,
    );
    check(
        "admin.key_recheck_secs",
        running.admin.key_recheck_secs == new.admin.key_recheck_secs,
    );
    check(
        "tenancy.column",
        running.tenancy.column == new.tenancy.column,
    );
    check(
        "tenancy.discover",
        running.tenancy.discover == new.tenancy.discover
            && running.tenancy.discover_refresh_secs == new.tenancy.discover_refresh_secs,
    );
    let names = |c: &Config| c.regions.keys().cloned().collect::<Vec<_>>();
    if names(running) != names(new) {
        out.push("regions (added or removed)".into());
    } else {
        for (name, region) in &running.regions {
            if new.regions.get(name) != Some(region) {
                out.push(format!("regions.{name}"));
            }
        }
    }
    out
}

/// The reloadable settings whose values differ.
fn changed_settings(running: &Config, new: &Config) -> Vec<&'static str> {
    let t = |c: &Config| {
        (
            c.tenancy.tables.clone(),
            c.tenancy.columns.clone(),
            c.tenancy.global_tables.clone(),
        )
    };
    [
        ("auth.users", running.auth.users == new.auth.users),
        ("tenants", running.tenants == new.tenants),
        ("tenancy", t(running) == t(new)),
        ("classes", running.classes == new.classes),
        ("classified", running.classified == new.classified),
        ("key_rotation", running.key_rotation == new.key_rotation),
        (
            "admin.rotation_grace_ms",
            running.admin.rotation_grace_ms == new.admin.rotation_grace_ms,
        ),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(key, _)| key)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        default_region = "eu"
        [auth]
        method = "trust"
        [listen]
        address = "127.0.0.1:6432"
        [regions.eu]
        zone = "eu"
        hosts = [{ host = "127.0.0.1", port = 5432, dbname = "app", user = "app" }]
        [tenancy]
        tables = ["orders"]
    "#;

    fn config(extra: &str) -> Config {
        Config::from_toml_str(&format!("{BASE}\n{extra}"), "test").unwrap()
    }

    #[test]
    fn identical_configs_need_no_restart_and_change_nothing() {
        let a = config("");
        assert!(needs_restart(&a, &config("")).is_empty());
        assert!(changed_settings(&a, &config("")).is_empty());
    }

    #[test]
    fn reloadable_settings_are_reported_as_changed() {
        let a = config("");
        let b = config("[tenants]\nacme = \"eu\"\n[key_rotation]\nmax_age = \"30d\"");
        assert!(needs_restart(&a, &b).is_empty());
        assert_eq!(changed_settings(&a, &b), vec!["tenants", "key_rotation"]);
    }

    #[test]
    fn restart_only_settings_are_named() {
        let a = config("");
        let text = BASE
            .replace("127.0.0.1:6432", "127.0.0.1:7000")
            .replace("port = 5432", "port = 5433");
        let b = Config::from_toml_str(&text, "test").unwrap();
        assert_eq!(needs_restart(&a, &b), vec!["listen", "regions.eu"]);
    }

    #[test]
    fn reading_from_standbys_changes_only_with_a_restart() {
        let a = config("");
        let mut b = config("");
        if let Some(eu) = b.regions.get_mut("eu") {
            eu.read_from_standbys = true;
        }
        assert_eq!(needs_restart(&a, &b), vec!["regions.eu"]);
    }

    #[test]
    fn the_tenant_column_needs_a_restart_but_tables_do_not() {
        let a = config("");
        let more = Config::from_toml_str(
            &BASE.replace("[\"orders\"]", "[\"orders\", \"items\"]"),
            "t",
        )
        .unwrap();
        assert!(needs_restart(&a, &more).is_empty());
        assert_eq!(changed_settings(&a, &more), vec!["tenancy"]);
        let column = config("").tenancy.column.clone();
        let mut other = config("");
        other.tenancy.column = format!("{column}_x");
        assert_eq!(needs_restart(&a, &other), vec!["tenancy.column"]);
    }
}
