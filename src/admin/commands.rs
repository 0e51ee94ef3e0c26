//! The admin commands. Each returns its result and, for key events, a
//! summary for the audit log (versions and counts, never key material).

use super::{codes, AdminError, Ctx};
use crate::crypto::rotation::{self, KeyAdminError};
use crate::crypto::{CryptoError, Keyring};
use serde_json::{json, Value};
use std::time::Duration;

/// How long one region's key store may take to answer a read-only query
/// (`status`, `keys list`) before it is reported unavailable.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

type Outcome = Result<(Value, Option<Value>), AdminError>;

pub(crate) async fn run(ctx: &Ctx, command: &str, args: &Value) -> Outcome {
    match command {
        "status" => status(ctx).await.map(|v| (v, None)),
        "keys.list" => keys_list(ctx, args).await.map(|v| (v, None)),
        "keys.rotate" => keys_rotate(ctx, args).await,
        "keys.rotate-root" => keys_rotate_root(ctx, args).await,
        "tenant.where" => tenant_where(ctx, args).await.map(|v| (v, None)),
        "tenant.shred" => tenant_shred(ctx, args).await,
        "audit.verify" => audit_verify(ctx).map(|v| (v, None)),
        "reload" => reload(ctx).await,
        "reencrypt.start" => super::jobs::start(ctx, args).await,
        "jobs.list" => super::jobs::list(ctx, args).await.map(|v| (v, None)),
        "jobs.cancel" => super::jobs::cancel(ctx, args).await,
        other => Err(AdminError::new(
            codes::UNKNOWN_COMMAND,
            format!("unknown command `{other}` (status, keys.list, keys.rotate, keys.rotate-root, tenant.where, tenant.shred, audit.verify, reload, reencrypt.start, jobs.list, jobs.cancel)"),
        )),
    }
}

pub(crate) fn arg<'a>(args: &'a Value, name: &str) -> Result<Option<&'a str>, AdminError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(AdminError::new(
            codes::BAD_ARGS,
            format!("`{name}` must be a non-empty string"),
        )),
    }
}

pub(crate) fn required<'a>(args: &'a Value, name: &str) -> Result<&'a str, AdminError> {
    arg(args, name)?
        .ok_or_else(|| AdminError::new(codes::BAD_ARGS, format!("`{name}` is required")))
}

pub(crate) fn crypto_failure(e: &CryptoError) -> AdminError {
    let code = match e {
        CryptoError::StoreUnavailable { .. } => codes::REGION_UNAVAILABLE,
        CryptoError::NoRegionKey { .. } => codes::NOT_FOUND,
        CryptoError::NoActiveKey {
            destroyed: true, ..
        }
        | CryptoError::Destroyed { .. } => codes::TENANT_SHREDDED,
        CryptoError::Internal(_) => codes::INTERNAL,
        _ => codes::KEY_STORE,
    };
    AdminError::new(code, e.to_string())
}

fn key_failure(e: KeyAdminError) -> AdminError {
    match e {
        KeyAdminError::Crypto(e) => crypto_failure(&e),
        KeyAdminError::Refused { code, message } => AdminError::new(code, message),
    }
}

fn keyring(ctx: &Ctx) -> Result<&Keyring, AdminError> {
    ctx.shared.keyring.as_deref().ok_or_else(|| {
        AdminError::new(
            codes::NOT_FOUND,
            "no column is classified: this proxy holds no keys",
        )
    })
}

/// The region named in `args`, which must have keys on this proxy.
fn key_region<'a>(ctx: &'a Ctx, region: &str) -> Result<&'a Keyring, AdminError> {
    let keyring = keyring(ctx)?;
    if keyring.kek(region).is_none() {
        return Err(AdminError::new(
            codes::NOT_FOUND,
            format!(
                "region `{region}` has no root key on this proxy (regions with keys: {})",
                keyring.regions().join(", ")
            ),
        ));
    }
    Ok(keyring)
}

async fn timed<T>(
    region: &str,
    f: impl std::future::Future<Output = Result<T, CryptoError>>,
) -> Result<T, CryptoError> {
    tokio::time::timeout(QUERY_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(CryptoError::StoreUnavailable {
                region: region.to_string(),
                reason: format!("no answer within {} s", QUERY_TIMEOUT.as_secs()),
            })
        })
}

async fn status(ctx: &Ctx) -> Result<Value, AdminError> {
    let shared = &ctx.shared;
    let current = shared.current.load_full();
    let config = match &current.source_path {
        Some(path) => {
            // The hash of the config in force; `file_changed` tells an
            // operator that the file on disk is not what runs (reload it).
            let on_disk = std::fs::read(path)
                .map(|b| super::audit::sha256_hex(&b))
                .ok();
            json!({
                "path": path.display().to_string(),
                "sha256": current.source_sha256,
                "file_changed": on_disk != current.source_sha256,
            })
        }
        None => json!({"path": null, "sha256": null, "file_changed": false}),
    };
    let max = shared.config.listen.max_clients;
    let connected = max.saturating_sub(shared.clients.available_permits());
    let mut regions = Vec::new();
    for (name, rt) in &shared.regions {
        let hosts: Vec<String> = rt
            .config
            .hosts
            .iter()
            .map(|h| format!("{}:{}", h.host, h.port))
            .collect();
        let probes = crate::metrics::health::probe_region(name, rt).await;
        // Up: a host accepts writes; a hot standby alone cannot serve.
        let up = probes
            .iter()
            .any(|p| matches!(p, Ok(crate::backend::HostRole::Primary)));
        let health: Vec<Value> = hosts
            .iter()
            .zip(&probes)
            .map(|(h, p)| match p {
                Ok(crate::backend::HostRole::Primary) => json!({"host": h, "state": "up"}),
                Ok(crate::backend::HostRole::Standby) => json!({"host": h, "state": "standby"}),
                Err(reason) => json!({"host": h, "state": "down", "reason": reason}),
            })
            .collect();
        let mut region = json!({
            "name": name.to_string(),
            "zone": rt.config.zone,
            "hosts": hosts,
            "health": if up { "up" } else { "down" },
            "host_health": health,
        });
        if let Some(keyring) = shared.keyring.as_deref() {
            if let Some(ring) = keyring.kek(name) {
                region["root_key_versions"] = json!(ring.versions().collect::<Vec<_>>());
                region["root_key_active"] = json!(ring.active().version());
                match timed(name, key_summary(keyring, name)).await {
                    Ok(v) => {
                        region["key_store"] = json!("ok");
                        region["data_keys"] = v;
                    }
                    Err(e) => region["key_store"] = json!(format!("unavailable: {e}")),
                }
            }
        }
        regions.push(region);
    }
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": ctx.started.elapsed().as_secs(),
        "config": config,
        "clients": {"connected": connected, "max": max},
        "regions": regions,
    }))
}

/// Versions in use in a region: per (version, state) the number of
/// tenants, and the oldest active key's age.
async fn key_summary(keyring: &Keyring, region: &str) -> Result<Value, CryptoError> {
    let client = keyring.store_client(region).await?;
    let rows = client
        .query(
            "SELECT version, state, count(*), \
                    max(extract(epoch FROM now() - created_at))::bigint \
             FROM regionguard.data_keys GROUP BY version, state ORDER BY version, state",
            &[],
        )
        .await
        .map_err(|e| crate::crypto::store::store_error(region, &e))?;
    let mut out = Vec::new();
    for r in &rows {
        let get = |e| crate::crypto::store::store_error(region, &e);
        let version: i32 = r.try_get(0).map_err(get)?;
        let state: &str = r.try_get(1).map_err(get)?;
        let tenants: i64 = r.try_get(2).map_err(get)?;
        let oldest: i64 = r.try_get(3).map_err(get)?;
        out.push(
            json!({"version": version, "state": state, "tenants": tenants, "max_age_secs": oldest}),
        );
    }
    Ok(Value::Array(out))
}

async fn keys_list(ctx: &Ctx, args: &Value) -> Result<Value, AdminError> {
    let keyring = keyring(ctx)?;
    let tenant = arg(args, "tenant")?;
    let regions: Vec<String> = match arg(args, "region")? {
        Some(r) => {
            key_region(ctx, r)?;
            vec![r.to_string()]
        }
        None => keyring.regions().into_iter().map(str::to_string).collect(),
    };
    let mut out = Vec::new();
    for region in regions {
        let keys = timed(&region, rotation::list(keyring, &region, tenant))
            .await
            .map_err(|e| crypto_failure(&e))?;
        for k in keys {
            let mut v = serde_json::to_value(&k).unwrap_or(Value::Null);
            v["region"] = json!(region);
            out.push(v);
        }
    }
    Ok(json!({ "keys": out }))
}

async fn keys_rotate(ctx: &Ctx, args: &Value) -> Result<(Value, Option<Value>), AdminError> {
    let region = required(args, "region")?;
    let keyring = key_region(ctx, region)?;
    let tenants = match arg(args, "tenant")? {
        Some(t) => vec![t.to_string()],
        None => timed(region, rotation::active_tenants(keyring, region))
            .await
            .map_err(|e| crypto_failure(&e))?,
    };
    let grace = Duration::from_millis(ctx.shared.current.load().admin.rotation_grace_ms);
    let rotated = rotation::rotate(keyring, region, &tenants, grace)
        .await
        .map_err(key_failure)?;
    let result = json!({"region": region, "rotated": rotated});
    Ok((result.clone(), Some(result)))
}

async fn keys_rotate_root(ctx: &Ctx, args: &Value) -> Result<(Value, Option<Value>), AdminError> {
    let region = required(args, "region")?;
    let keyring = key_region(ctx, region)?;
    let done = rotation::rotate_root(keyring, region)
        .await
        .map_err(key_failure)?;
    let mut result = serde_json::to_value(&done).unwrap_or(Value::Null);
    result["region"] = json!(region);
    Ok((result.clone(), Some(result)))
}

async fn tenant_region(ctx: &Ctx, tenant: &str) -> Result<String, AdminError> {
    match ctx.shared.directory.region_of(tenant).await {
        Ok(Some(r)) => Ok(r.to_string()),
        Ok(None) => Err(AdminError::new(
            codes::NOT_FOUND,
            format!("tenant `{tenant}` is not in the directory"),
        )),
        Err(e) => Err(AdminError::new(
            codes::REGION_UNAVAILABLE,
            format!("cannot look the tenant up in the directory: {e}"),
        )),
    }
}

async fn tenant_where(ctx: &Ctx, args: &Value) -> Result<Value, AdminError> {
    let tenant = required(args, "tenant")?;
    let region = tenant_region(ctx, tenant).await?;
    let mut out = json!({"tenant": tenant, "region": region});
    if let Some(rt) = ctx.shared.region(&region) {
        out["zone"] = json!(rt.config.zone);
        out["hosts"] = json!(rt
            .config
            .hosts
            .iter()
            .map(|h| format!("{}:{}", h.host, h.port))
            .collect::<Vec<_>>());
    }
    if let Some(keyring) = ctx.shared.keyring.as_deref() {
        if keyring.kek(&region).is_some() {
            match timed(&region, rotation::list(keyring, &region, Some(tenant))).await {
                Ok(keys) => out["keys"] = serde_json::to_value(keys).unwrap_or(Value::Null),
                Err(e) => out["keys_error"] = json!(e.to_string()),
            }
        }
    }
    Ok(out)
}

async fn tenant_shred(ctx: &Ctx, args: &Value) -> Result<(Value, Option<Value>), AdminError> {
    let tenant = required(args, "tenant")?;
    if arg(args, "confirm")? != Some(tenant) {
        return Err(AdminError::new(
            codes::CONFIRMATION_REQUIRED,
            format!("shredding destroys every data key of `{tenant}` for good: repeat the tenant id as `confirm`"),
        ));
    }
    let region = tenant_region(ctx, tenant).await?;
    let keyring = key_region(ctx, &region)?;
    let done = rotation::shred(keyring, &region, tenant)
        .await
        .map_err(key_failure)?;
    let mut result = serde_json::to_value(&done).unwrap_or(Value::Null);
    result["region"] = json!(region);
    Ok((result.clone(), Some(result)))
}

fn audit_verify(ctx: &Ctx) -> Result<Value, AdminError> {
    let Some(log) = &ctx.audit else {
        return Err(AdminError::new(
            codes::NOT_FOUND,
            "no audit log is configured (admin.audit_log)",
        ));
    };
    match super::audit::verify(log.path()) {
        Ok(v) => {
            Ok(json!({"path": log.path().display().to_string(), "lines": v.lines, "head": v.head}))
        }
        Err(b) => Err(AdminError::new(
            codes::AUDIT_CHAIN_BROKEN,
            format!("{}: {b}", log.path().display()),
        )),
    }
}

/// `reload`: the same as SIGHUP (see `server::reload`).
async fn reload(ctx: &Ctx) -> Result<(Value, Option<Value>), AdminError> {
    match crate::server::reload::reload(&ctx.shared).await {
        Ok(r) => {
            let v = json!({
                "path": r.path.display().to_string(),
                "sha256": r.sha256,
                "changed": r.changed,
                "unchecked_regions": r.unchecked_regions,
            });
            let summary = json!({"sha256": r.sha256, "changed": r.changed});
            Ok((v, Some(summary)))
        }
        Err(e) => Err(AdminError::new(
            codes::RELOAD_REFUSED,
            format!("{e}; the running config is unchanged"),
        )),
    }
}
