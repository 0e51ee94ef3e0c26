//! The columns a job walks: every classified column of the region's
//! catalog (optionally one table's), with the names to use in SQL.

use super::sql::ColumnSql;
use crate::catalog::RegionCatalog;
use crate::crypto::store::store_error;
use crate::crypto::CryptoError;
use crate::sql::ColumnClass;
use std::sync::Arc;
use tokio_postgres::Client;

/// One classified column to re-encrypt.
#[derive(Debug, Clone)]
pub struct Target {
    pub sql: ColumnSql,
    /// The configured column (its binding for the associated data, its
    /// protection mode).
    pub class: Arc<ColumnClass>,
}

/// What the region's catalog holds for a job.
#[derive(Debug, Default)]
pub struct Targets {
    /// Columns with a tenant column: these can be re-encrypted.
    pub columns: Vec<Target>,
    /// `table.column` of classified columns whose table has no tenant
    /// column: the tenant of their rows (and so their associated data) is
    /// unknown here, so they are not rewritten and no version is retired
    /// while they exist.
    pub without_tenant: Vec<String>,
}

impl Targets {
    /// The columns of the configured table `table` (all when `None`).
    pub fn only(&self, table: Option<&str>) -> Vec<Target> {
        self.columns
            .iter()
            .filter(|t| table.is_none_or(|x| t.class.table == x))
            .cloned()
            .collect()
    }

    /// Whether the configured table `table` has a classified column here.
    pub fn has_table(&self, table: &str) -> bool {
        self.columns.iter().any(|t| t.class.table == table)
            || self
                .without_tenant
                .iter()
                .any(|c| c.rsplit_once('.').is_some_and(|(t, _)| t == table))
    }
}

/// Reads the SQL names of the catalog's classified columns and of their
/// tables' tenant columns, in a stable order.
pub async fn discover(
    client: &Client,
    region: &str,
    catalog: &RegionCatalog,
) -> Result<Targets, CryptoError> {
    let mut fields: Vec<_> = catalog.fields().collect();
    fields.sort_by_key(|(k, _)| *k);
    let mut out = Targets::default();
    for ((oid, attnum), field) in fields {
        let Some(tenant_attnum) = field.tenant else {
            out.without_tenant.push(field.class.qualified());
            continue;
        };
        let row = client
            .query_opt(
                "SELECT c.oid::regclass::text, quote_ident(a.attname), quote_ident(t.attname) \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = $2 \
                 JOIN pg_catalog.pg_attribute t ON t.attrelid = c.oid AND t.attnum = $3 \
                 WHERE c.oid = $1::int8::oid",
                &[&i64::from(oid), &attnum, &tenant_attnum],
            )
            .await
            .map_err(|e| store_error(region, &e))?;
        // Dropped since the catalog was read: nothing to rewrite there.
        let Some(row) = row else { continue };
        let get = |e| store_error(region, &e);
        out.columns.push(Target {
            sql: ColumnSql {
                table: row.try_get(0).map_err(get)?,
                column: row.try_get(1).map_err(get)?,
                tenant: row.try_get(2).map_err(get)?,
                storage: field.storage,
            },
            class: Arc::clone(&field.class),
        });
    }
    Ok(out)
}
