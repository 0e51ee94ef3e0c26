//! Where the classified columns are in each regional database.
//!
//! The answer path decides what to decrypt from RowDescription's table OID
//! and column number, never from the SQL text, so `SELECT *`, aliases,
//! joins, subqueries and RETURNING all work. OIDs differ per database, so
//! each region has its own map, read from `pg_attribute` through a control
//! connection at start, after DDL sent through the proxy, and periodically.
//! The same read checks that every classified column stores ciphertext in a
//! usable type (`bytea`, or `text`/`varchar` holding base64).

use crate::sql::{ColumnClass, Tenancy};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How a classified column stores its ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `bytea`: the binary envelope.
    Bytea,
    /// `text`/`varchar`: the envelope in base64 with a prefix.
    Text,
}

/// A classified column of one table in one regional database.
#[derive(Debug, Clone)]
pub struct Field {
    pub class: Arc<ColumnClass>,
    pub storage: Storage,
}

/// One region's classified columns by table OID and column number.
#[derive(Debug, Default)]
pub struct RegionCatalog {
    fields: HashMap<(u32, i16), Field>,
    /// The tenant column's number in each classified table.
    tenant_columns: HashMap<u32, i16>,
    /// Storage by configured table name (lowercased) and column, for the
    /// write path, which knows tables by name.
    by_name: HashMap<(String, String), Storage>,
    /// Classified columns whose storage type cannot hold ciphertext.
    problems: Vec<String>,
    /// When the map was read (`None`: never).
    pub read_at: Option<std::time::Instant>,
}

impl RegionCatalog {
    /// The classified column at `(table OID, column number)`, if any.
    pub fn field(&self, table: u32, column: i16) -> Option<&Field> {
        if table == 0 {
            return None;
        }
        self.fields.get(&(table, column))
    }

    /// The tenant column's number in classified table `table`.
    pub fn tenant_column(&self, table: u32) -> Option<i16> {
        self.tenant_columns.get(&table).copied()
    }

    /// How `class` stores ciphertext in this region (bytea when unknown:
    /// a table that does not exist yet fails in Postgres anyway).
    pub fn storage(&self, class: &ColumnClass) -> Storage {
        self.by_name
            .get(&(class.table.clone(), class.column.clone()))
            .copied()
            .unwrap_or(Storage::Bytea)
    }

    /// Every classified column: (table OID, column number) and its field,
    /// for background work that walks whole tables (re-encryption).
    pub fn fields(&self) -> impl Iterator<Item = ((u32, i16), &Field)> {
        self.fields.iter().map(|(k, f)| (*k, f))
    }

    /// Classified columns whose storage type is wrong, described.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Whether classified table `table` (configured name) was found.
    pub fn has_table(&self, table: &str) -> bool {
        self.by_name.keys().any(|(t, _)| t == table)
    }
}

/// The catalogs of every region this proxy serves.
#[derive(Debug)]
pub struct Catalogs {
    regions: BTreeMap<Arc<str>, ArcSwap<RegionCatalog>>,
}

/// The catalog query: every column of every table named like a classified table.
const COLUMNS: &str = "SELECT c.oid::int8, n.nspname::text, c.relname::text, a.attnum, a.attname::text, a.atttypid::int8 \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
     WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
       AND c.relname = ANY($1)";

impl Catalogs {
    pub fn new(regions: impl IntoIterator<Item = Arc<str>>) -> Self {
        Catalogs {
            regions: regions
                .into_iter()
                .map(|r| (r, ArcSwap::from_pointee(RegionCatalog::default())))
                .collect(),
        }
    }

    /// The current catalog of `region` (empty when unknown).
    pub fn get(&self, region: &str) -> Arc<RegionCatalog> {
        self.regions
            .get(region)
            .map(|c| c.load_full())
            .unwrap_or_default()
    }

    /// Reads `region`'s catalog through `client` and installs it.
    pub async fn refresh(
        &self,
        region: &str,
        client: &tokio_postgres::Client,
        tenancy: &Tenancy,
    ) -> Result<Arc<RegionCatalog>, tokio_postgres::Error> {
        let classification = tenancy.classification();
        let names = classification.table_names();
        let rows = client.query(COLUMNS, &[&names]).await?;
        let mut catalog = RegionCatalog {
            read_at: Some(std::time::Instant::now()),
            ..RegionCatalog::default()
        };
        for row in rows {
            let oid: i64 = row.get(0);
            let schema: String = row.get(1);
            let table: String = row.get(2);
            let attnum: i16 = row.get(3);
            let column: String = row.get(4);
            let type_oid: i64 = row.get(5);
            let Some(columns) = classification.table_parts(Some(&schema), &table) else {
                continue;
            };
            let oid = oid as u32;
            if tenancy.column_of_parts(Some(&schema), &table) == Some(column.as_str()) {
                catalog.tenant_columns.insert(oid, attnum);
            }
            let Some(class) = columns.get(&column) else {
                continue;
            };
            let storage = match type_oid {
                17 => Storage::Bytea,
                25 | 1043 => Storage::Text,
                _ => {
                    catalog.problems.push(format!(
                        "column {schema}.{table}.{column} in region {region} has type OID {type_oid}; an encrypted column must be bytea (or text/varchar)"
                    ));
                    continue;
                }
            };
            catalog
                .by_name
                .insert((class.table.clone(), class.column.clone()), storage);
            catalog.fields.insert(
                (oid, attnum),
                Field {
                    class: Arc::clone(class),
                    storage,
                },
            );
        }
        let catalog = Arc::new(catalog);
        if let Some(slot) = self.regions.get(region) {
            slot.store(Arc::clone(&catalog));
        }
        Ok(catalog)
    }
}
