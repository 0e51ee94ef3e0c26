//! Where the classified columns are in each regional database.
//!
//! The answer path decides what to decrypt from RowDescription's table OID
//! and column number, never from the SQL text, so `SELECT *`, aliases,
//! joins, subqueries and RETURNING all work. OIDs differ per database, so
//! each region has its own map, read from `pg_attribute` through a control
//! connection at start, after DDL sent through the proxy, and periodically.
//! The same read checks that every classified column stores ciphertext in a
//! usable type (`bytea`, or `text`/`varchar` holding base64).
//!
//! Views are mapped too (ADR 14): a view column that passes a classified
//! column through unchanged decrypts like the base column (same associated
//! data: region, tenant, base table, base column); a view column computed
//! from a classified column can never be decrypted, so a result that
//! contains one is refused rather than shown as ciphertext.

mod node;
mod views;

use crate::sql::{ColumnClass, Tenancy, ViewInfo};
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
    /// The column of the same relation (table or view) that holds the
    /// tenant of this value's row, if it has one: a read of several tenants
    /// decrypts each row with the key its tenant column names.
    pub tenant: Option<i16>,
}

/// One region's classified columns by table OID and column number.
#[derive(Debug, Default)]
pub struct RegionCatalog {
    fields: HashMap<(u32, i16), Field>,
    /// View columns computed from a classified column, described for the
    /// refusal (they can never be decrypted).
    computed: HashMap<(u32, i16), String>,
    /// What the region's views expose, by name (for the statement analysis).
    views: Vec<ViewInfo>,
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

    /// Why the view column at `(view OID, column number)` cannot be
    /// returned, when it is computed from a classified column.
    pub fn computed(&self, view: u32, column: i16) -> Option<&str> {
        if view == 0 {
            return None;
        }
        self.computed.get(&(view, column)).map(String::as_str)
    }

    /// The region's views that read tenant-scoped tables.
    pub fn views(&self) -> &[ViewInfo] {
        &self.views
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

    /// What every region's views expose (see [`Tenancy::set_views`]).
    pub fn views(&self) -> Vec<ViewInfo> {
        self.regions
            .values()
            .flat_map(|c| c.load().views.clone())
            .collect()
    }

    /// Installs a catalog read with [`Catalogs::read`].
    pub fn install(&self, region: &str, catalog: Arc<RegionCatalog>) {
        if let Some(slot) = self.regions.get(region) {
            slot.store(catalog);
        }
    }

    /// Reads `region`'s catalog for the classified columns of `tenancy`
    /// without installing it: a config reload checks the new columns'
    /// storage before anything changes.
    pub async fn read(
        region: &str,
        client: &tokio_postgres::Client,
        tenancy: &Tenancy,
    ) -> Result<RegionCatalog, tokio_postgres::Error> {
        let classification = tenancy.classification();
        let names = classification.table_names();
        let rows = client.query(COLUMNS, &[&names]).await?;
        let mut catalog = RegionCatalog {
            read_at: Some(std::time::Instant::now()),
            ..RegionCatalog::default()
        };
        let mut tenant_columns = HashMap::new();
        for row in rows {
            let oid: i64 = row.try_get(0)?;
            let schema: String = row.try_get(1)?;
            let table: String = row.try_get(2)?;
            let attnum: i16 = row.try_get(3)?;
            let column: String = row.try_get(4)?;
            let type_oid: i64 = row.try_get(5)?;
            let Some(columns) = classification.table_parts(Some(&schema), &table) else {
                continue;
            };
            let oid = oid as u32;
            if tenancy.column_of_parts(Some(&schema), &table).as_deref() == Some(column.as_str()) {
                tenant_columns.insert(oid, attnum);
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
                    tenant: None,
                },
            );
        }
        for ((oid, _), field) in catalog.fields.iter_mut() {
            field.tenant = tenant_columns.get(oid).copied();
        }
        map_views(&mut catalog, region, client, tenancy).await?;
        Ok(catalog)
    }
}

/// Every view outside the system schemas with its stored query. The
/// `regionguard` schema is included: RegionGuard keeps no views there, but
/// a view created through the proxy lands there when the backend role is
/// named `regionguard` (the default search path starts with `"$user"`).
const VIEWS: &str = "SELECT c.oid::int8, n.nspname::text, c.relname::text, r.ev_action::text \
     FROM pg_catalog.pg_rewrite r \
     JOIN pg_catalog.pg_class c ON c.oid = r.ev_class \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'v' AND r.rulename = '_RETURN' \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_%'";

/// Names and columns of the relations views read.
const RELATIONS: &str =
    "SELECT c.oid::int8, n.nspname::text, c.relname::text, a.attnum, a.attname::text \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     WHERE c.oid::int8 = ANY($1)";

/// A view's name and what its stored query says.
struct View {
    schema: String,
    name: String,
    query: Result<views::ViewQuery, String>,
}

/// A relation a view reads: its name and column names.
struct Relation {
    schema: String,
    name: String,
    columns: HashMap<i16, String>,
}

/// What a view column carries, resolved down to the base tables.
#[derive(Debug, Clone)]
enum Resolved {
    /// A classified column of base table `base`, unchanged.
    Classified { field: Field, base: u32 },
    /// The tenant column of tenant-scoped base table `base`, unchanged.
    Tenant(u32),
    /// Computed from the classified column described.
    Computed(String),
    /// Anything else.
    Plain,
}

/// Resolves view columns through nested views, memoized.
struct Resolver<'a> {
    catalog: &'a RegionCatalog,
    tenancy: &'a Tenancy,
    views: &'a HashMap<u32, View>,
    relations: &'a HashMap<u32, Relation>,
    done: HashMap<u32, Vec<(i16, Resolved)>>,
    /// Views being resolved (a cycle cannot happen in Postgres; this keeps
    /// a corrupt catalog from recursing forever).
    active: Vec<u32>,
}

impl Resolver<'_> {
    fn view(&mut self, oid: u32) -> Vec<(i16, Resolved)> {
        if let Some(done) = self.done.get(&oid) {
            return done.clone();
        }
        let Some(view) = self.views.get(&oid) else {
            return Vec::new();
        };
        if self.active.contains(&oid) {
            return Vec::new();
        }
        self.active.push(oid);
        let resolved = match &view.query {
            Ok(q) => {
                let touches = q.relations.iter().any(|r| self.has_classified(*r));
                q.columns
                    .iter()
                    .map(|c| (c.attnum, self.origin(&c.origin, touches)))
                    .collect()
            }
            // Unreadable: every column may be computed from anything it reads.
            Err(_) => Vec::new(),
        };
        self.active.pop();
        self.done.insert(oid, resolved.clone());
        resolved
    }

    fn origin(&mut self, origin: &views::Origin, touches_classified: bool) -> Resolved {
        use views::{Origin, Source};
        match origin {
            Origin::Column { rel, attnum } => self.column(*rel, *attnum),
            Origin::Computed(sources) => {
                for s in sources {
                    let found = match s {
                        Source::Column { rel, attnum } => match self.column(*rel, *attnum) {
                            Resolved::Classified { field, .. } => Some(field.class.qualified()),
                            Resolved::Computed(d) => Some(d),
                            _ => None,
                        },
                        Source::WholeRow(rel) => self
                            .has_classified(*rel)
                            .then(|| format!("a row of {}", self.relation_name(*rel))),
                        Source::Opaque => {
                            touches_classified.then(|| "an encrypted column".to_string())
                        }
                    };
                    if let Some(d) = found {
                        return Resolved::Computed(d);
                    }
                }
                Resolved::Plain
            }
        }
    }

    fn column(&mut self, rel: u32, attnum: i16) -> Resolved {
        if self.views.contains_key(&rel) {
            return self
                .view(rel)
                .into_iter()
                .find(|(a, _)| *a == attnum)
                .map_or(Resolved::Plain, |(_, r)| r);
        }
        if let Some(field) = self.catalog.fields.get(&(rel, attnum)) {
            return Resolved::Classified {
                field: field.clone(),
                base: rel,
            };
        }
        match self.relations.get(&rel) {
            Some(r)
                if self
                    .tenancy
                    .column_of_parts(Some(&r.schema), &r.name)
                    .as_deref()
                    == r.columns.get(&attnum).map(String::as_str) =>
            {
                Resolved::Tenant(rel)
            }
            _ => Resolved::Plain,
        }
    }

    /// Whether relation `rel` holds or exposes classified values.
    fn has_classified(&mut self, rel: u32) -> bool {
        if self.views.contains_key(&rel) {
            let unreadable = matches!(self.views.get(&rel), Some(View { query: Err(_), .. }));
            return unreadable
                || self.view(rel).iter().any(|(_, r)| {
                    matches!(r, Resolved::Classified { .. } | Resolved::Computed(_))
                });
        }
        self.catalog.fields.keys().any(|(t, _)| *t == rel)
    }

    /// Whether relation `rel` holds tenant data: a tenant-scoped table, or
    /// a view reading one.
    fn scoped(&mut self, rel: u32, depth: usize) -> bool {
        if let Some(view) = self.views.get(&rel) {
            return match &view.query {
                Ok(q) if depth < 32 => q.relations.iter().any(|r| self.scoped(*r, depth + 1)),
                // Unreadable: assume it reads tenant data (fail closed).
                _ => true,
            };
        }
        self.relations.get(&rel).is_some_and(|r| {
            self.tenancy
                .column_of_parts(Some(&r.schema), &r.name)
                .is_some()
        })
    }

    fn relation_name(&self, rel: u32) -> String {
        if let Some(v) = self.views.get(&rel) {
            return format!("{}.{}", v.schema, v.name);
        }
        self.relations.get(&rel).map_or_else(
            || format!("relation {rel}"),
            |r| format!("{}.{}", r.schema, r.name),
        )
    }
}

/// Reads `region`'s views and maps their columns into `catalog`: classified
/// pass-through columns as fields, columns computed from classified ones as
/// refusals, and a [`ViewInfo`] for each view that reads tenant data.
async fn map_views(
    catalog: &mut RegionCatalog,
    region: &str,
    client: &tokio_postgres::Client,
    tenancy: &Tenancy,
) -> Result<(), tokio_postgres::Error> {
    let mut found = HashMap::new();
    for row in client.query(VIEWS, &[]).await? {
        let oid = row.try_get::<_, i64>(0)? as u32;
        let action: String = row.try_get(3)?;
        let query = views::read(&action, oid);
        if let Err(e) = &query {
            tracing::warn!(region, view = oid, error = %e, "cannot read a view's stored query; its columns are treated as computed from everything it reads");
        }
        found.insert(
            oid,
            View {
                schema: row.try_get(1)?,
                name: row.try_get(2)?,
                query,
            },
        );
    }
    if found.is_empty() {
        return Ok(());
    }
    let mut wanted: Vec<i64> = found
        .values()
        .filter_map(|v| v.query.as_ref().ok())
        .flat_map(|q| q.relations.iter().map(|r| i64::from(*r)))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    for row in client.query(RELATIONS, &[&wanted]).await? {
        let oid = row.try_get::<_, i64>(0)? as u32;
        let schema = row.try_get::<_, String>(1)?.to_lowercase();
        let name = row.try_get::<_, String>(2)?.to_lowercase();
        let rel = relations.entry(oid).or_insert_with(|| Relation {
            schema,
            name,
            columns: HashMap::new(),
        });
        rel.columns.insert(row.try_get(3)?, row.try_get(4)?);
    }
    let mut r = Resolver {
        catalog,
        tenancy,
        views: &found,
        relations: &relations,
        done: HashMap::new(),
        active: Vec::new(),
    };
    let mut fields = Vec::new();
    let mut computed = Vec::new();
    let mut infos = Vec::new();
    for (&oid, view) in &found {
        let resolved = r.view(oid);
        let names: HashMap<i16, &str> = view
            .query
            .as_ref()
            .map(|q| {
                q.columns
                    .iter()
                    .map(|c| (c.attnum, c.name.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let name_of = |attnum: i16| names.get(&attnum).copied().unwrap_or_default().to_string();
        let mut info = ViewInfo {
            schema: view.schema.to_lowercase(),
            name: view.name.to_lowercase(),
            tenant_column: None,
            classified: HashMap::new(),
            computed: Vec::new(),
            unreadable: view.query.is_err(),
        };
        for (attnum, res) in &resolved {
            match res {
                Resolved::Classified { field, base } => {
                    let tenant = resolved.iter().find_map(|(a, r)| {
                        matches!(r, Resolved::Tenant(b) if b == base).then_some(*a)
                    });
                    info.classified
                        .insert(name_of(*attnum), Arc::clone(&field.class));
                    fields.push((
                        (oid, *attnum),
                        Field {
                            tenant,
                            ..field.clone()
                        },
                    ));
                }
                Resolved::Computed(from) => {
                    let column = name_of(*attnum);
                    computed.push((
                        (oid, *attnum),
                        format!(
                            "column {column} of view {}.{} is computed from {from}",
                            view.schema, view.name
                        ),
                    ));
                    info.computed.push(column);
                }
                Resolved::Tenant(_) if info.tenant_column.is_none() => {
                    info.tenant_column = Some(name_of(*attnum));
                }
                _ => {}
            }
        }
        if r.scoped(oid, 0) {
            infos.push(info);
        }
    }
    catalog.fields.extend(fields);
    catalog.computed.extend(computed);
    catalog.views = infos;
    Ok(())
}
