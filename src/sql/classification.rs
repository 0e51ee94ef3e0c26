//! Which columns are classified, as the analyzer sees them: names only,
//! matched like [`super::Tenancy`] matches tables (case-insensitively, a bare
//! configured name in any schema).

use crate::config::Protection;
use crate::types::LogicalType;
use std::collections::HashMap;
use std::sync::Arc;

/// One classified column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnClass {
    /// The table as configured (lowercased).
    pub table: String,
    /// The column (lowercased).
    pub column: String,
    pub logical: LogicalType,
    pub protection: Protection,
    /// What the ciphertext is bound to besides region and tenant: the
    /// column's equality group, or `table.column`.
    pub binding: String,
}

impl ColumnClass {
    /// `table.column`, for messages.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }

    pub fn deterministic(&self) -> bool {
        self.protection == Protection::Deterministic
    }
}

/// A table's classified columns by (lowercased) name.
pub type Columns = HashMap<String, Arc<ColumnClass>>;

/// Classified columns by bare table name, then column.
#[derive(Debug, Clone, Default)]
pub struct Classification {
    /// bare table name → (configured schema, column → class)
    tables: HashMap<String, Vec<(Option<String>, Columns)>>,
}

impl Classification {
    /// Declares a classified column.
    pub fn add(
        &mut self,
        table: &str,
        column: &str,
        logical: LogicalType,
        protection: Protection,
        equality_group: Option<&str>,
    ) {
        let (schema, name) = super::tenancy::split_name(table);
        let column = column.replace('"', "").to_lowercase();
        let table = table.replace('"', "").to_lowercase();
        let binding = match equality_group {
            Some(group) => format!("group:{group}"),
            None => format!("{table}.{column}"),
        };
        let class = Arc::new(ColumnClass {
            table,
            column: column.clone(),
            logical,
            protection,
            binding,
        });
        let entries = self.tables.entry(name).or_default();
        match entries.iter_mut().find(|(s, _)| *s == schema) {
            Some((_, columns)) => {
                columns.insert(column.clone(), Arc::clone(&class));
            }
            None => entries.push((
                schema,
                HashMap::from([(column.clone(), Arc::clone(&class))]),
            )),
        }
    }

    /// Whether nothing is classified.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The classified columns of a table reference (split, lowercased).
    pub fn table_parts(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Option<&HashMap<String, Arc<ColumnClass>>> {
        let entries = self.tables.get(name)?;
        entries
            .iter()
            .find(|(s, _)| s.is_some() && s.as_deref() == schema)
            .or_else(|| {
                entries
                    .iter()
                    .find(|(s, _)| s.is_none() || schema.is_none())
            })
            .map(|(_, columns)| columns)
    }

    /// The classified columns of `table` (`schema.table` or bare).
    pub fn table(&self, table: &str) -> Option<&HashMap<String, Arc<ColumnClass>>> {
        let (schema, name) = super::tenancy::split_name(table);
        self.table_parts(schema.as_deref(), &name)
    }

    /// The bare names of the tables with classified columns.
    pub fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }
}
