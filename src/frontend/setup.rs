//! Turning a client's startup parameters into the session's region and the
//! parameters its backend sessions are opened with.

use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::startup::{join_options, parse_options, StartupRequest};
use crate::server::state::Shared;

/// Startup parameters the proxy consumes instead of passing to Postgres.
const CONSUMED: &[&str] = &["user", "database", "options", "replication"];

/// What a session needs from its startup packet.
#[derive(Debug)]
pub struct SessionSetup {
    pub region: String,
    /// `regionguard.tenant` given at startup.
    pub tenant: Option<String>,
    /// Parameters for every backend session (besides user and database).
    pub backend_params: Vec<(String, String)>,
}

pub fn from_startup(req: &StartupRequest, shared: &Shared) -> Result<SessionSetup, PgError> {
    if let Some(r) = req.get("replication") {
        if !matches!(
            r.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        ) {
            return Err(PgError::fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "replication connections are not supported through RegionGuard",
            )
            .with_hint("connect replication clients to the regional Postgres servers directly"));
        }
    }
    let mut region = None;
    let mut tenant = None;
    let mut backend_params = Vec::new();
    let options = parse_options(req.get("options").unwrap_or(""));
    let direct = req
        .params
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("regionguard."))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()));
    for (name, value) in options.proxy_settings.into_iter().chain(direct) {
        match name.as_str() {
            "regionguard.region" => region = Some(value),
            "regionguard.tenant" => tenant = Some(value),
            other => {
                return Err(PgError::fatal(
                    "42704",
                    format!("unrecognized configuration parameter \"{other}\""),
                )
                .with_hint(
                    "RegionGuard accepts regionguard.region and regionguard.tenant at startup",
                ))
            }
        }
    }
    for (k, v) in &req.params {
        let lower = k.to_ascii_lowercase();
        if CONSUMED.contains(&lower.as_str())
            || lower.starts_with("_pq_.")
            || lower.starts_with("regionguard.")
        {
            continue;
        }
        if lower == "client_encoding" && !is_utf8_encoding(v) {
            return Err(non_utf8_encoding(v));
        }
        backend_params.push((k.clone(), v.clone()));
    }
    if !options.passthrough.is_empty() {
        backend_params.push(("options".into(), join_options(&options.passthrough)));
    }
    if let (Some(t), None) = (&tenant, &region) {
        // The tenant's region serves the session when it is known now.
        if let Some(r) = shared.directory.cached_region(t) {
            region = Some(r.to_string());
        }
    }
    let region = region.unwrap_or_else(|| shared.config.default_region.clone());
    if shared.region(&region).is_none() {
        return Err(PgError::fatal(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("region \"{region}\" is not served by this RegionGuard"),
        )
        .with_hint(format!(
            "set regionguard.region to one of: {}",
            shared.region_names()
        )));
    }
    Ok(SessionSetup {
        region,
        tenant,
        backend_params,
    })
}

/// The encodings under which SQL text is UTF-8, which the proxy must be able
/// to read to route and protect statements.
pub fn is_utf8_encoding(value: &str) -> bool {
    let v: String = value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(v.as_str(), "utf8" | "unicode")
}

pub fn non_utf8_encoding(value: &str) -> PgError {
    PgError::fatal(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("client_encoding \"{value}\" is not supported by RegionGuard"),
    )
    .with_hint(
        "use client_encoding UTF8; RegionGuard must read statement text to keep data in its region",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_spellings() {
        assert!(is_utf8_encoding("UTF8"));
        assert!(is_utf8_encoding("utf-8"));
        assert!(is_utf8_encoding("'unicode'"));
        assert!(!is_utf8_encoding("LATIN1"));
        assert!(!is_utf8_encoding("SQL_ASCII"));
    }
}
