//! Which tables hold tenant data and which are global reference data.
//!
//! The analyzer only ever asks "is this table reference tenant-scoped, and by
//! which column?" and "is it global?". Names are compared case-insensitively
//! (a quoted `"Customers"` counts as `customers`): treating a few extra
//! references as tenant-scoped only makes RegionGuard stricter, never looser.

use super::{Classification, ColumnClass};
use arc_swap::ArcSwap;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// A configured table name, optionally schema-qualified, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    schema: Option<String>,
    column: String,
}

/// Which tables are tenant-scoped / global, and their tenant column.
///
/// A configured bare name (`customers`) matches a reference in any schema
/// (`customers`, `public.customers`, `app.customers`). A configured qualified
/// name (`app.customers`) matches `app.customers` and the bare reference
/// `customers` (the search path could resolve it there), but not
/// `other.customers`. A table configured both ways counts as tenant-scoped:
/// the stricter reading wins.
#[derive(Debug, Clone)]
pub struct Tenancy {
    default_column: String,
    /// bare table name -> entries (one per configured schema qualification)
    scoped: HashMap<String, Vec<Entry>>,
    /// bare table name -> configured schemas (`None` = any schema)
    global: HashMap<String, Vec<Option<String>>>,
    /// Classified columns (all in tenant-scoped tables).
    classification: Classification,
    /// `tenancy.discover`: tables found in the regional catalogs.
    discovery: Option<std::sync::Arc<ArcSwap<Discovered>>>,
    /// Views that read tenant-scoped tables, as the regional catalogs say
    /// (bare name → one entry per schema).
    views: Arc<ArcSwap<HashMap<String, Vec<Arc<ViewInfo>>>>>,
}

/// A view that reads tenant-scoped tables (directly or through other
/// views), as [`crate::catalog`] read it from a regional database.
///
/// Such a view holds tenant data, so it is tenant-scoped whatever the
/// config says (unless the config lists it itself): its tenant column is
/// the view column that passes a base table's tenant column through
/// unchanged; a view without one is scoped with an unknown tenant column,
/// so a statement on it must name its tenant through
/// `regionguard.tenant` (comment or session), exactly like a table whose
/// columns were renamed by an alias. It is never treated as free of tenant
/// data, so it is never broadcast nor sent to a default region.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewInfo {
    /// Lowercased schema and name.
    pub schema: String,
    pub name: String,
    /// The view column passing a base table's tenant column through.
    pub tenant_column: Option<String>,
    /// Classified base columns passed through unchanged, by view column
    /// name: they decrypt (and compare) like the base column.
    pub classified: HashMap<String, Arc<ColumnClass>>,
    /// View columns computed from classified columns: never decryptable.
    pub computed: Vec<String>,
    /// The stored query could not be read: its columns are unknown.
    pub unreadable: bool,
}

/// What the regional catalogs say about tables, in discovery mode: every
/// table that has the tenant column is tenant-scoped; a table known to lack
/// it is not; a table not known yet (created since the last look) counts as
/// tenant-scoped, so discovery fails closed.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Bare name → schemas of tables with the tenant column.
    scoped: HashMap<String, Vec<String>>,
    /// Bare name → schemas of tables without it.
    unscoped: HashMap<String, Vec<String>>,
}

impl Discovered {
    /// Records a table (`schema`, `name`, lowercased) and whether it has
    /// the tenant column.
    pub fn add(&mut self, schema: &str, name: &str, has_tenant_column: bool) {
        let map = if has_tenant_column {
            &mut self.scoped
        } else {
            &mut self.unscoped
        };
        let schemas = map.entry(name.to_string()).or_default();
        if !schemas.iter().any(|s| s == schema) {
            schemas.push(schema.to_string());
        }
    }

    fn knows(map: &HashMap<String, Vec<String>>, schema: Option<&str>, name: &str) -> bool {
        map.get(name)
            .is_some_and(|schemas| schema.is_none_or(|s| schemas.iter().any(|x| x == s)))
    }
}

/// Splits `schema.table` (or `table`) into lowercased parts, ignoring quotes.
pub(crate) fn split_name(table: &str) -> (Option<String>, String) {
    let cleaned = table.replace('"', "").to_lowercase();
    match cleaned.rsplit_once('.') {
        Some((schema, name)) => {
            // `db.schema.table`: keep only the schema, databases are not routed.
            let schema = schema.rsplit('.').next().unwrap_or(schema).to_string();
            (Some(schema), name.to_string())
        }
        None => (None, cleaned),
    }
}

fn schema_matches(configured: &Option<String>, reference: &Option<String>) -> bool {
    match (configured, reference) {
        (Some(c), Some(r)) => c == r,
        _ => true,
    }
}

impl Tenancy {
    /// A tenancy with no tables yet; `default_column` is the tenant column of
    /// every scoped table that does not name its own (usually `tenant_id`).
    pub fn new(default_column: &str) -> Self {
        Tenancy {
            default_column: default_column.to_lowercase(),
            scoped: HashMap::new(),
            global: HashMap::new(),
            classification: Classification::default(),
            discovery: None,
            views: Arc::default(),
        }
    }

    /// Installs the views the catalogs report now (the union of every
    /// region's; where regions differ, the stricter reading of a view:
    /// its tenant column only if all agree, every classified and computed
    /// column of any). Returns whether anything changed, so cached
    /// analyses can be dropped.
    pub fn set_views(&self, views: impl IntoIterator<Item = ViewInfo>) -> bool {
        let mut merged: HashMap<String, Vec<ViewInfo>> = HashMap::new();
        for v in views {
            let entries = merged.entry(v.name.clone()).or_default();
            match entries.iter_mut().find(|e| e.schema == v.schema) {
                Some(e) => {
                    if e.tenant_column != v.tenant_column {
                        e.tenant_column = None;
                    }
                    e.unreadable |= v.unreadable;
                    for (k, c) in v.classified {
                        e.classified.entry(k).or_insert(c);
                    }
                    for c in v.computed {
                        if !e.computed.contains(&c) {
                            e.computed.push(c);
                        }
                    }
                }
                None => entries.push(v),
            }
        }
        let merged: HashMap<String, Vec<Arc<ViewInfo>>> = merged
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_by(|a, b| a.schema.cmp(&b.schema));
                for e in &mut v {
                    e.computed.sort();
                }
                (k, v.into_iter().map(Arc::new).collect())
            })
            .collect();
        if **self.views.load() == merged {
            return false;
        }
        self.views.store(Arc::new(merged));
        true
    }

    /// Every known view that reads tenant data, by bare name.
    pub(crate) fn views_snapshot(&self) -> Arc<HashMap<String, Vec<Arc<ViewInfo>>>> {
        self.views.load_full()
    }

    /// The known views named `name` (in `schema`, or in any schema when
    /// the reference is not qualified: the search path could reach any).
    pub fn views_named(&self, schema: Option<&str>, name: &str) -> Vec<Arc<ViewInfo>> {
        self.views
            .load()
            .get(name)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| schema.is_none_or(|s| e.schema == s))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A view's tenant column as [`Tenancy::column_of_parts`] reports it:
    /// empty when unknown (some view of that name does not pass one through).
    fn view_column(&self, schema: Option<&str>, name: &str) -> Option<String> {
        let found = self.views_named(schema, name);
        let first = found.first()?;
        let column = first.tenant_column.clone().unwrap_or_default();
        if found
            .iter()
            .all(|v| v.tenant_column.as_deref() == Some(column.as_str()))
        {
            Some(column)
        } else {
            Some(String::new())
        }
    }

    /// Turns on discovery: tables are tenant-scoped when the regional
    /// catalogs say they have the tenant column (see [`Discovered`]).
    pub fn enable_discovery(&mut self) {
        self.discovery = Some(std::sync::Arc::new(ArcSwap::from_pointee(
            Discovered::default(),
        )));
    }

    /// Shares `other`'s discovered tables (both must discover): a config
    /// reload keeps what the catalogs said instead of starting blind.
    pub fn share_discovery(&mut self, other: &Tenancy) {
        if self.discovery.is_some() {
            if let Some(d) = &other.discovery {
                self.discovery = Some(std::sync::Arc::clone(d));
            }
        }
    }

    /// Whether tables are discovered from the catalogs.
    pub fn discovers(&self) -> bool {
        self.discovery.is_some()
    }

    /// Installs what the catalogs say now.
    pub fn set_discovered(&self, discovered: Discovered) {
        if let Some(d) = &self.discovery {
            d.store(std::sync::Arc::new(discovered));
        }
    }

    /// In discovery mode: whether a table not configured either way is
    /// tenant-scoped. Catalog tables never are.
    fn discovered_scoped(&self, schema: Option<&str>, name: &str) -> bool {
        let Some(d) = &self.discovery else {
            return false;
        };
        if name.starts_with("pg_")
            || matches!(
                schema,
                Some("pg_catalog" | "information_schema" | "regionguard")
            )
        {
            return false;
        }
        let d = d.load();
        Discovered::knows(&d.scoped, schema, name) || !Discovered::knows(&d.unscoped, schema, name)
    }

    /// The classified columns.
    pub fn classification(&self) -> &Classification {
        &self.classification
    }

    /// Declares the classified columns (all of them, replacing any before).
    pub fn set_classification(&mut self, classification: Classification) {
        self.classification = classification;
    }

    /// Declares a tenant-scoped table; `column` overrides the default tenant column.
    pub fn add_scoped(&mut self, table: &str, column: Option<&str>) {
        let (schema, name) = split_name(table);
        let column = column
            .map(|c| c.replace('"', "").to_lowercase())
            .unwrap_or_else(|| self.default_column.clone());
        let entries = self.scoped.entry(name).or_default();
        entries.retain(|e| e.schema != schema);
        entries.push(Entry { schema, column });
    }

    /// Declares a global table: present in every region, written to all of them.
    pub fn add_global(&mut self, table: &str) {
        let (schema, name) = split_name(table);
        let schemas = self.global.entry(name).or_default();
        if !schemas.contains(&schema) {
            schemas.push(schema);
        }
    }

    /// The default tenant column name.
    pub fn default_column(&self) -> &str {
        &self.default_column
    }

    /// The tenant column of `table` when it is tenant-scoped (empty when
    /// the relation is a view that does not show it).
    pub fn column_of(&self, table: &str) -> Option<Cow<'_, str>> {
        let (schema, name) = split_name(table);
        self.column_of_parts(schema.as_deref(), &name)
    }

    /// Like [`Tenancy::column_of`] with the name already split and
    /// lowercased. Configured tables first, then views that read tenant
    /// data (see [`ViewInfo`]), then discovered tables.
    pub fn column_of_parts(&self, schema: Option<&str>, name: &str) -> Option<Cow<'_, str>> {
        let reference = schema.map(str::to_string);
        let Some(entries) = self.scoped.get(name) else {
            if let Some(column) = self.view_column(schema, name) {
                return Some(Cow::Owned(column));
            }
            if self.discovered_scoped(schema, name) && !self.is_configured_global(schema, name) {
                return Some(Cow::Borrowed(&self.default_column));
            }
            return None;
        };
        // An exact schema match wins over a bare entry (its column may differ).
        entries
            .iter()
            .find(|e| e.schema.is_some() && e.schema == reference)
            .or_else(|| {
                entries
                    .iter()
                    .find(|e| schema_matches(&e.schema, &reference))
            })
            .map(|e| Cow::Borrowed(e.column.as_str()))
    }

    /// Whether `table` is tenant-scoped.
    pub fn is_scoped(&self, table: &str) -> bool {
        self.column_of(table).is_some()
    }

    /// Whether `table` is a global table (and not also tenant-scoped).
    pub fn is_global(&self, table: &str) -> bool {
        let (schema, name) = split_name(table);
        self.is_global_parts(schema.as_deref(), &name)
    }

    pub(crate) fn is_global_parts(&self, schema: Option<&str>, name: &str) -> bool {
        if self.column_of_parts(schema, name).is_some() {
            return false;
        }
        self.is_configured_global(schema, name)
    }

    fn is_configured_global(&self, schema: Option<&str>, name: &str) -> bool {
        let reference = schema.map(str::to_string);
        self.global
            .get(name)
            .is_some_and(|schemas| schemas.iter().any(|s| schema_matches(s, &reference)))
    }

    /// Whether a word of a statement can name a tenant-scoped or global
    /// table: some are configured, or tables are discovered (then any
    /// unknown word may be one).
    pub(crate) fn names_tables(&self) -> bool {
        !self.scoped.is_empty()
            || !self.global.is_empty()
            || self.discovers()
            || !self.views.load().is_empty()
    }

    /// Whether the bare word (lowercased) names any scoped table.
    pub(crate) fn mentions_scoped_word(&self, word: &str) -> bool {
        self.scoped.contains_key(word)
            || self.views.load().contains_key(word)
            || self.discovered_scoped(None, word)
    }

    /// Whether the bare word (lowercased) names any global table.
    pub(crate) fn mentions_global_word(&self, word: &str) -> bool {
        self.global.contains_key(word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenancy() -> Tenancy {
        let mut t = Tenancy::new("tenant_id");
        t.add_scoped("customers", None);
        t.add_scoped("app.orders", Some("org_id"));
        t.add_global("countries");
        t.add_global("public.plans");
        t
    }

    #[test]
    fn bare_names_match_any_schema_case_insensitively() {
        let t = tenancy();
        assert_eq!(t.column_of("customers").as_deref(), Some("tenant_id"));
        assert_eq!(
            t.column_of("PUBLIC.Customers").as_deref(),
            Some("tenant_id")
        );
        assert_eq!(
            t.column_of("\"public\".\"customers\"").as_deref(),
            Some("tenant_id")
        );
        assert!(t.is_scoped("db.public.customers"));
    }

    #[test]
    fn qualified_names_match_their_schema_and_bare_references() {
        let t = tenancy();
        assert_eq!(t.column_of("app.orders").as_deref(), Some("org_id"));
        assert_eq!(t.column_of("orders").as_deref(), Some("org_id"));
        assert_eq!(t.column_of("other.orders"), None);
        assert!(t.is_global("plans"));
        assert!(t.is_global("public.plans"));
        assert!(!t.is_global("archive.plans"));
    }

    #[test]
    fn scoped_wins_over_global() {
        let mut t = tenancy();
        t.add_global("customers");
        assert!(t.is_scoped("customers"));
        assert!(!t.is_global("customers"));
        assert!(t.is_global("countries"));
        assert!(!t.is_scoped("countries"));
    }
}
