//! A start-time check for a trap of the default search path.
//!
//! RegionGuard keeps its tables (data keys, two-phase decisions, jobs) in a
//! schema named `regionguard` in each region. Postgres's default
//! `search_path` is `"$user", public`; when the role the proxy logs in as is
//! itself named `regionguard`, `"$user"` is that schema, so every table or
//! view the application creates through the proxy (migrations!) lands in
//! RegionGuard's schema instead of `public`, and unqualified names resolve
//! there first. The proxy cannot change the path of the application's
//! sessions without changing their meaning, so it says so loudly at start,
//! with the fix.

use super::state::Shared;
use crate::backend::control::ControlConnector;
use std::sync::Weak;
use std::time::Duration;

/// RegionGuard's schema in every region.
const SCHEMA: &str = "regionguard";

/// Warns for each reachable region whose login role would create objects
/// in RegionGuard's schema. A region that is down is skipped.
pub async fn check(shared: Weak<Shared>) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    for (name, region) in &shared.regions {
        let Ok(connector) = ControlConnector::new(name, &region.config) else {
            continue;
        };
        let probe = async {
            let client = connector.connect().await.ok()?;
            let row = client
                .query_one(
                    "SELECT current_user::text, current_setting('search_path')",
                    &[],
                )
                .await
                .ok()?;
            Some((
                row.try_get::<_, String>(0).ok()?,
                row.try_get::<_, String>(1).ok()?,
            ))
        };
        let Ok(Some((user, path))) = tokio::time::timeout(Duration::from_secs(5), probe).await
        else {
            continue;
        };
        if lands_in_own_schema(&user, &path) {
            tracing::warn!(
                region = %name,
                role = %user,
                search_path = %path,
                "objects created through the proxy would land in RegionGuard's own schema `{SCHEMA}`: \
                 run `ALTER ROLE {user} SET search_path = public` in this region, or log in as a role with another name"
            );
        }
    }
}

/// Whether the first schema of `search_path` for `user` is RegionGuard's.
fn lands_in_own_schema(user: &str, search_path: &str) -> bool {
    let first = search_path
        .split(',')
        .map(|s| s.trim().trim_matches('"'))
        .find(|s| !s.is_empty());
    match first {
        Some("$user") => user == SCHEMA,
        Some(schema) => schema == SCHEMA,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::lands_in_own_schema;

    #[test]
    fn the_default_path_traps_only_a_role_named_like_the_schema() {
        assert!(lands_in_own_schema("regionguard", "\"$user\", public"));
        assert!(!lands_in_own_schema("app", "\"$user\", public"));
        assert!(!lands_in_own_schema("regionguard", "public"));
        assert!(lands_in_own_schema("app", "regionguard, public"));
        assert!(!lands_in_own_schema("regionguard", ""));
    }
}
