//! Semantic checks the type system cannot express. Each error names the key.

use super::{AuthMethod, BackendPool, ClientTlsMode, Config, ConfigError, PoolMode};
use std::net::SocketAddr;

pub(crate) fn validate(c: &Config) -> Result<(), ConfigError> {
    parse_addr("listen.address", &c.listen.address)?;
    if c.listen.max_clients == 0 {
        return Err(ConfigError::invalid(
            "listen.max_clients",
            "must be at least 1",
        ));
    }
    if c.listen.max_message_bytes < 8192 {
        return Err(ConfigError::invalid(
            "listen.max_message_bytes",
            "must be at least 8192 bytes",
        ));
    }
    if c.listen.max_message_bytes > i32::MAX as usize {
        return Err(ConfigError::invalid(
            "listen.max_message_bytes",
            format!("must be at most {} bytes (the protocol's limit)", i32::MAX),
        ));
    }
    if c.listen.threads > 1024 {
        return Err(ConfigError::invalid(
            "listen.threads",
            "must be at most 1024 (0: one per CPU)",
        ));
    }
    if c.backend_pool.max_idle_per_region > 0 && c.backend_pool.idle_timeout_secs == 0 {
        return Err(ConfigError::invalid(
            "backend_pool.idle_timeout_secs",
            "must be at least 1 (set backend_pool.max_idle_per_region = 0 to keep no idle backends)",
        ));
    }
    validate_transaction_pool(&c.backend_pool)?;
    if let Some(addr) = &c.metrics.address {
        parse_addr("metrics.address", addr)?;
    }
    validate_key_rotation(c)?;
    if c.metrics.health_interval_secs == 0 {
        return Err(ConfigError::invalid(
            "metrics.health_interval_secs",
            "must be at least 1",
        ));
    }
    validate_tls(c)?;
    validate_auth(c)?;
    validate_regions(c)?;
    validate_tenancy(c)?;
    validate_classification(c)?;
    let id = &c.two_phase.proxy_id;
    if id.len() > 64
        || !id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
    {
        return Err(ConfigError::invalid(
            "two_phase.proxy_id",
            "use at most 64 letters, digits, `_`, `-` and `.`",
        ));
    }
    if tracing_subscriber::EnvFilter::try_new(&c.logging.level).is_err() {
        return Err(ConfigError::invalid(
            "logging.level",
            format!(
                "`{}` is not a valid log filter (try `info` or `regionguard=debug`)",
                c.logging.level
            ),
        ));
    }
    Ok(())
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(key, format!("`{value}` is not an IP:port address")))
}

fn validate_tls(c: &Config) -> Result<(), ConfigError> {
    let tls = &c.client_tls;
    if tls.mode != ClientTlsMode::Disable {
        if tls.cert.is_none() {
            return Err(ConfigError::invalid(
                "client_tls.cert",
                "required when client_tls.mode is allow or require",
            ));
        }
        if tls.key.is_none() {
            return Err(ConfigError::invalid(
                "client_tls.key",
                "required when client_tls.mode is allow or require",
            ));
        }
    }
    Ok(())
}

fn validate_auth(c: &Config) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, user) in c.auth.users.iter().enumerate() {
        let key = format!("auth.users[{i}]");
        if user.name.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                "must not be empty",
            ));
        }
        if !seen.insert(user.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("user `{}` is listed twice", user.name),
            ));
        }
        if let Err(e) = crate::protocol::scram::Verifier::parse(&user.verifier) {
            return Err(ConfigError::invalid(
                format!("{key}.verifier"),
                e.to_string(),
            ));
        }
    }
    if c.auth.method == AuthMethod::ScramSha256 && c.auth.users.is_empty() {
        return Err(ConfigError::invalid(
            "auth.users",
            "no users configured: add one (regionguard hash-password prints a verifier) or set auth.method = \"trust\" for local development",
        ));
    }
    Ok(())
}

fn validate_regions(c: &Config) -> Result<(), ConfigError> {
    if c.regions.is_empty() {
        return Err(ConfigError::invalid(
            "regions",
            "at least one region is required",
        ));
    }
    for (name, region) in &c.regions {
        let key = format!("regions.{name}");
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-');
        if !valid_name {
            return Err(ConfigError::invalid(
                key,
                "region names use lowercase letters, digits, `_` and `-` only",
            ));
        }
        if region.zone.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.zone"),
                "must not be empty",
            ));
        }
        if region.hosts.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.hosts"),
                "at least one host is required",
            ));
        }
        if region.connect_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.connect_timeout_secs"),
                "must be at least 1",
            ));
        }
        for (i, host) in region.hosts.iter().enumerate() {
            let hkey = format!("{key}.hosts[{i}]");
            if host.host.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{hkey}.host"),
                    "must not be empty",
                ));
            }
            if host.dbname.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{hkey}.dbname"),
                    "must not be empty",
                ));
            }
            if host.user.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{hkey}.user"),
                    "must not be empty",
                ));
            }
        }
    }
    if !c.regions.contains_key(&c.default_region) {
        return Err(ConfigError::invalid(
            "default_region",
            format!(
                "`{}` is not a configured region (configured: {})",
                c.default_region,
                c.regions.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(())
}

fn validate_tenancy(c: &Config) -> Result<(), ConfigError> {
    let t = &c.tenancy;
    if !is_identifier(&t.column) {
        return Err(ConfigError::invalid(
            "tenancy.column",
            format!("`{}` is not a column name", t.column),
        ));
    }
    for (table, column) in &t.columns {
        if !is_identifier(column) {
            return Err(ConfigError::invalid(
                format!("tenancy.columns.{table}"),
                format!("`{column}` is not a column name"),
            ));
        }
    }
    for (i, table) in t.tables.iter().enumerate() {
        if t.global_tables
            .iter()
            .any(|g| g.eq_ignore_ascii_case(table))
        {
            return Err(ConfigError::invalid(
                format!("tenancy.tables[{i}]"),
                format!("`{table}` is also listed in tenancy.global_tables; a table is one or the other"),
            ));
        }
    }
    for (tenant, region) in &c.tenants {
        if !c.regions.contains_key(region) {
            return Err(ConfigError::invalid(
                format!("tenants.{tenant}"),
                format!(
                    "region `{region}` is not configured (configured: {})",
                    c.regions.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    if let Some(d) = &c.directory {
        if d.refresh_secs == 0 {
            return Err(ConfigError::invalid(
                "directory.refresh_secs",
                "must be at least 1",
            ));
        }
        if !d.table.split('.').all(is_identifier) {
            return Err(ConfigError::invalid(
                "directory.table",
                format!("`{}` is not a table name", d.table),
            ));
        }
        if !is_identifier(&d.channel) {
            return Err(ConfigError::invalid(
                "directory.channel",
                format!("`{}` is not a channel name", d.channel),
            ));
        }
    }
    Ok(())
}

fn validate_classification(c: &Config) -> Result<(), ConfigError> {
    for name in c.classes.keys() {
        if !is_identifier(name) {
            return Err(ConfigError::invalid(
                format!("classes.{name}"),
                "class names are identifiers (letters, digits, `_`)",
            ));
        }
    }
    for (table, columns) in &c.classified {
        let scoped = c
            .tenancy
            .tables
            .iter()
            .any(|t| t.eq_ignore_ascii_case(table));
        if !scoped {
            return Err(ConfigError::invalid(
                format!("classified.{table}"),
                format!(
                    "`{table}` is not in tenancy.tables: classified columns are encrypted with their tenant's key, so their table must be tenant-scoped"
                ),
            ));
        }
        for (column, col) in columns {
            let key = format!("classified.{table}.{column}");
            if !is_identifier(column) {
                return Err(ConfigError::invalid(key, "not a column name"));
            }
            let tenant_column = c.tenancy.columns.get(table).unwrap_or(&c.tenancy.column);
            if column.eq_ignore_ascii_case(tenant_column) {
                return Err(ConfigError::invalid(
                    key,
                    "the tenant column routes statements and cannot be encrypted",
                ));
            }
            let Some(class) = c.classes.get(&col.class) else {
                return Err(ConfigError::invalid(
                    format!("{key}.class"),
                    format!(
                        "class `{}` is not defined in [classes] (defined: {})",
                        col.class,
                        c.classes.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            if col.equality_group.is_some()
                && col.protection(class.encrypt) != super::Protection::Deterministic
            {
                return Err(ConfigError::invalid(
                    format!("{key}.equality_group"),
                    "only deterministic (searchable) columns can be compared across columns",
                ));
            }
            if let Err(e) = crate::types::LogicalType::parse(&col.logical_type) {
                return Err(ConfigError::invalid(format!("{key}.type"), e));
            }
        }
    }
    if !c.classified.is_empty() {
        for (name, region) in &c.regions {
            if region.key.is_none() {
                return Err(ConfigError::invalid(
                    format!("regions.{name}.key"),
                    "required when columns are classified: the region's root key source (file, env or command)",
                ));
            }
        }
    }
    for (name, region) in &c.regions {
        match &region.key {
            Some(super::KeySource::Env { var }) if var.is_empty() => {
                return Err(ConfigError::invalid(
                    format!("regions.{name}.key.var"),
                    "must name an environment variable",
                ))
            }
            Some(super::KeySource::Command { argv }) if argv.is_empty() => {
                return Err(ConfigError::invalid(
                    format!("regions.{name}.key.argv"),
                    "must name a program to run",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A plain SQL identifier: the proxy interpolates these into catalog and
/// directory queries, so nothing else is accepted.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// Transaction mode hands backends back to the idle pool after each
/// transaction, so it needs the pool, a bound on busy backends and a wait.
fn validate_transaction_pool(p: &BackendPool) -> Result<(), ConfigError> {
    if p.mode != PoolMode::Transaction {
        return Ok(());
    }
    if p.max_idle_per_region == 0 {
        return Err(ConfigError::invalid(
            "backend_pool.max_idle_per_region",
            "must be at least 1 with mode = \"transaction\" (backends go back to the idle pool after each transaction)",
        ));
    }
    if p.max_active_per_region == 0 {
        return Err(ConfigError::invalid(
            "backend_pool.max_active_per_region",
            "must be at least 1 with mode = \"transaction\"",
        ));
    }
    if p.acquire_timeout_secs == 0 {
        return Err(ConfigError::invalid(
            "backend_pool.acquire_timeout_secs",
            "must be at least 1 with mode = \"transaction\"",
        ));
    }
    Ok(())
}

/// Per-region key ages must name configured regions (a typo would leave a
/// region on the default silently), and the check must not spin.
fn validate_key_rotation(c: &Config) -> Result<(), ConfigError> {
    let r = &c.key_rotation;
    if r.check_interval < std::time::Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "key_rotation.check_interval",
            "must be at least 1s",
        ));
    }
    for region in r.regions.keys() {
        if !c.regions.contains_key(region) {
            return Err(ConfigError::invalid(
                format!("key_rotation.regions.{region}"),
                "names no configured region",
            ));
        }
    }
    Ok(())
}
