//! `tenancy.discover`: which tables are tenant-scoped, read from the
//! regional catalogs — every table (or view) that has the tenant column.
//!
//! Fails closed: a table no reachable region has reported yet counts as
//! tenant-scoped (see [`crate::sql::Discovered`]), so a table created
//! since the last look, or one living only in a region that is down, is
//! never treated as free of tenant data. The catalogs are read at start,
//! periodically, and shortly after DDL passes through the proxy.

use crate::backend::control::ControlConnector;
use crate::server::state::Shared;
use crate::sql::Discovered;
use std::sync::Weak;
use std::time::Duration;

/// Every user table and view with whether it has the tenant column.
const TABLES: &str = "SELECT n.nspname::text, c.relname::text, \
        coalesce(bool_or(a.attname = $1), false) \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'regionguard') \
       AND n.nspname NOT LIKE 'pg\\_%' \
     GROUP BY 1, 2";

/// Reads every region's catalog and installs the union; regions that
/// cannot be read are skipped (their tables stay unknown, so scoped).
pub async fn discover(shared: &Shared) {
    let column = shared.tenancy.load().default_column().to_string();
    let mut found = Discovered::default();
    for (name, region) in &shared.regions {
        let connector = match ControlConnector::new(name, &region.config) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(region = %name, error = %e, "tenancy discovery: no control connection");
                continue;
            }
        };
        let rows = match connector.connect().await {
            Ok(client) => client.query(TABLES, &[&column]).await,
            Err(e) => {
                tracing::warn!(region = %name, error = %e, "tenancy discovery: region unavailable");
                continue;
            }
        };
        match rows {
            Ok(rows) => {
                for row in rows {
                    let fields = (row.try_get(0), row.try_get(1), row.try_get(2));
                    let (Ok(schema), Ok(table), Ok(scoped)) = fields else {
                        // Unreadable: the table stays unknown, so scoped.
                        tracing::warn!(region = %name, "tenancy discovery: unexpected catalog row");
                        continue;
                    };
                    let (schema, table): (String, String) = (schema, table);
                    found.add(&schema.to_lowercase(), &table.to_lowercase(), scoped);
                }
            }
            Err(e) => {
                tracing::warn!(region = %name, error = %e, "tenancy discovery: catalog query failed")
            }
        }
    }
    shared.tenancy.load().set_discovered(found);
    shared.analysis.invalidate();
}

/// Reads the catalogs again every `tenancy.discover_refresh_secs`.
pub async fn refresh(shared: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        discover(&shared).await;
    }
}

/// Reads the catalogs again shortly after DDL was sent, when it has
/// likely committed.
pub fn after_ddl(shared: Weak<Shared>) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(shared) = shared.upgrade() {
            discover(&shared).await;
        }
    });
}
