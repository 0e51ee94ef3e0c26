//! Which values of a statement must be encrypted before it reaches the
//! database, and what the statement does with classified columns that
//! cannot be done over ciphertext.
//!
//! Fail closed (DESIGN.md promise 2): a classified column may appear only
//! where the proxy knows what to do with it —
//! - stored from a literal or a `$n` parameter (INSERT … VALUES, UPDATE SET,
//!   ON CONFLICT DO UPDATE SET), which the proxy encrypts;
//! - compared for equality with a literal, a parameter or another column of
//!   the same equality binding (`=`, `<>`, `IN`), deterministic columns only;
//! - tested with `IS [NOT] NULL`, counted with `count(col)`, grouped or made
//!   DISTINCT (deterministic only), or returned as it is (projection,
//!   RETURNING), which the answer path decrypts.
//!
//! Every other reference is refused with SQLSTATE 0A000, naming the column
//! and the operation: a result computed over ciphertext would be wrong, and
//! a value computed in the database would be stored unencrypted.
//!
//! Column references are resolved by name, conservatively: an unqualified
//! name that matches a classified column of any classified table in the
//! statement counts as that column, and aliases of classified columns in
//! derived tables count too. Treating an extra reference as classified only
//! makes RegionGuard stricter.

use super::classification::{Classification, ColumnClass};
use super::predicates::{ident, tenant_value};
use super::{Tenancy, TenantSource, ViewInfo};
use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, CopySource, CopyTarget, DuplicateTreatment, Expr,
    FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Insert, JoinConstraint,
    JoinOperator, ObjectName, OnConflictAction, OnInsert, OrderByKind, Query, Select, SelectItem,
    SetExpr, SetQuantifier, Spanned, Statement, TableFactor, TableObject, UnaryOperator, Value,
    Visit, Visitor,
};
use sqlparser::tokenizer::Location;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

/// Where a value to encrypt comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// A literal occupying `start..end` (byte offsets in the statement text)
    /// whose text input form is `text`.
    Literal {
        start: usize,
        end: usize,
        text: String,
    },
    /// Bind parameter `$n` (1-based).
    Param(usize),
}

/// What a value does with its column, which decides how many envelopes
/// it needs: a stored value is sealed once, under the tenant's active key
/// version; a compared value must match rows still stored under older
/// live versions too (ADR 13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// Stored in the column (INSERT … VALUES, UPDATE SET, ON CONFLICT DO
    /// UPDATE SET).
    Store,
    /// Compared with the column in `CryptoPlan::comparisons[comparison]`.
    /// `operand` is the value's byte range in the text, parentheses around
    /// it included, so it can be replaced by a list of envelopes; `None`
    /// when the text between a parenthesis and the value is not blank.
    Compare {
        comparison: usize,
        operand: Option<(usize, usize)>,
    },
}

/// The form of an equality comparison of a deterministic column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `col = v` or `v = col`.
    Eq,
    /// `col <> v` or `v <> col`.
    NotEq,
    /// `col IN (v, …)`.
    In,
    /// `col NOT IN (v, …)`.
    NotIn,
}

impl Shape {
    /// Whether the comparison is true when the column matches none of the values.
    pub fn negated(self) -> bool {
        matches!(self, Shape::NotEq | Shape::NotIn)
    }
}

/// One comparison of a deterministic classified column with literals or
/// parameters, located in the text so the frontend can rewrite it to
/// match every live key version (`col IN (e_v2, e_v1)`, `col = ANY($1)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub shape: Shape,
    /// `v = col`: the column is the right operand.
    pub column_right: bool,
    /// An IN list item is the NULL literal (kept when the list is rewritten).
    pub null_item: bool,
    /// Where the comparison is in the text; `None` when a comment sits
    /// inside parentheses around an operand (the comparison can then only
    /// be sent as it is).
    pub spans: Option<ComparisonSpans>,
}

/// Byte ranges of a comparison in the statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComparisonSpans {
    /// The whole comparison (`col = v`, `v = col`, `col [NOT] IN (…)`).
    pub whole: (usize, usize),
    /// The column reference, parentheses around it included.
    pub column: (usize, usize),
}

/// A value the proxy encrypts for a classified column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoTarget {
    pub value: ValueSource,
    pub column: Arc<ColumnClass>,
    /// The tenant of the row the value is stored in, when the statement
    /// names it per row (INSERT … VALUES); otherwise the statement's tenant.
    pub row_tenant: Option<TenantSource>,
    pub purpose: Purpose,
}

/// Why a statement is refused; names columns and operations, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoRefusal {
    pub column: String,
    pub reason: String,
    pub hint: String,
}

/// What the proxy must do with a statement's classified columns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CryptoPlan {
    /// The statement names a table with classified columns: its answers may
    /// need decrypting, with the keys of the statement's tenant.
    pub touches_classified: bool,
    pub targets: Vec<CryptoTarget>,
    /// The comparisons `Purpose::Compare` targets belong to.
    pub comparisons: Vec<Comparison>,
    pub refusal: Option<CryptoRefusal>,
}

impl CryptoPlan {
    /// Moves literal offsets by `by` bytes (a segment's place in a multi-statement text).
    pub(crate) fn shift(&mut self, by: usize) {
        let move_span = |s: &mut (usize, usize)| {
            s.0 += by;
            s.1 += by;
        };
        for t in &mut self.targets {
            if let ValueSource::Literal { start, end, .. } = &mut t.value {
                *start += by;
                *end += by;
            }
            if let Purpose::Compare {
                operand: Some(span),
                ..
            } = &mut t.purpose
            {
                move_span(span);
            }
        }
        for c in &mut self.comparisons {
            if let Some(spans) = &mut c.spans {
                move_span(&mut spans.whole);
                move_span(&mut spans.column);
            }
        }
    }

    /// The targets compared in comparison `index`.
    pub fn compared_in(&self, index: usize) -> impl Iterator<Item = &CryptoTarget> {
        self.targets.iter().filter(move |t| {
            matches!(t.purpose, Purpose::Compare { comparison, .. } if comparison == index)
        })
    }

    /// Whether the statement needs any crypto work at all.
    pub fn is_empty(&self) -> bool {
        !self.touches_classified && self.targets.is_empty() && self.refusal.is_none()
    }
}

/// A relation name in scope.
#[derive(Clone, Copy)]
enum Relation<'c> {
    Classified(&'c HashMap<String, Arc<ColumnClass>>),
    Plain,
    Derived,
}

/// Plans `stmt`, whose text is `text`.
pub(crate) fn plan(stmt: &Statement, text: &str, tenancy: &Tenancy) -> CryptoPlan {
    let classes = tenancy.classification();
    if classes.is_empty() {
        return CryptoPlan::default();
    }
    let views = tenancy.views_snapshot();
    let mut p = Planner {
        classes,
        views: &views,
        tenancy,
        text,
        relations: HashMap::new(),
        derived: HashMap::new(),
        computed: HashMap::new(),
        allowed: HashSet::new(),
        plan: CryptoPlan::default(),
    };
    p.collect_relations(stmt);
    p.computed_references(stmt);
    if !p.plan.touches_classified {
        return p.plan;
    }
    p.collect_derived(stmt);
    p.statement(stmt);
    p.patterns(stmt);
    p.leftovers(stmt);
    p.check_params(stmt);
    p.view_values(stmt);
    p.plan
}

struct Planner<'c, 't> {
    classes: &'c Classification,
    /// Views that read tenant data (see [`ViewInfo`]), by bare name.
    views: &'c HashMap<String, Vec<Arc<ViewInfo>>>,
    tenancy: &'t Tenancy,
    text: &'t str,
    relations: HashMap<String, Relation<'c>>,
    /// Aliases of classified columns in derived tables and CTEs.
    derived: HashMap<String, Arc<ColumnClass>>,
    /// Columns of the statement's views computed from classified columns,
    /// by column name, with the view's name.
    computed: HashMap<String, String>,
    /// Column references (by address in the AST) in a permitted position.
    allowed: HashSet<*const Expr>,
    plan: CryptoPlan,
}

fn last_part(name: &ObjectName) -> Option<String> {
    name.0.last().and_then(|p| p.as_ident()).map(ident)
}

fn split(name: &ObjectName) -> (Option<String>, String) {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(ident)
        .collect();
    match parts.as_slice() {
        [.., schema, table] => (Some(schema.clone()), table.clone()),
        [table] => (None, table.clone()),
        [] => (None, String::new()),
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(inner) => strip(inner),
        other => other,
    }
}

/// How many parentheses wrap `e`, and what they wrap.
fn nesting(e: &Expr) -> (usize, &Expr) {
    let mut depth = 0;
    let mut inner = e;
    while let Expr::Nested(next) = inner {
        depth += 1;
        inner = next;
    }
    (depth, inner)
}

fn is_null(e: &Expr) -> bool {
    matches!(strip(e), Expr::Value(v) if matches!(v.value, Value::Null))
}

/// Widens the byte range `span` of `text` over `depth` pairs of
/// parentheses around it; `None` when anything but blanks sits between
/// a parenthesis and what it wraps (sqlparser does not keep their spans).
fn widen(text: &str, span: (usize, usize), depth: usize) -> Option<(usize, usize)> {
    let (mut start, mut end) = span;
    for _ in 0..depth {
        let before = text.get(..start)?.trim_end();
        let after = text.get(end..)?.trim_start();
        if !before.ends_with('(') || !after.starts_with(')') {
            return None;
        }
        start = before.len() - 1;
        end = text.len() - after.len() + 1;
    }
    Some((start, end))
}

impl<'c, 't> Planner<'c, 't> {
    fn refuse(&mut self, column: &str, reason: impl Into<String>, hint: impl Into<String>) {
        if self.plan.refusal.is_none() {
            self.plan.refusal = Some(CryptoRefusal {
                column: column.to_string(),
                reason: reason.into(),
                hint: hint.into(),
            });
        }
    }

    /// The classified columns of table `name`, or the classified base
    /// columns a view passes through (by view column name).
    fn table_classes(&self, name: &ObjectName) -> Option<&'c HashMap<String, Arc<ColumnClass>>> {
        let (schema, table) = split(name);
        if let Some(columns) = self.classes.table_parts(schema.as_deref(), &table) {
            return Some(columns);
        }
        let views: &'c HashMap<String, Vec<Arc<ViewInfo>>> = self.views;
        views
            .get(&table)
            .into_iter()
            .flatten()
            .filter(|v| schema.as_deref().is_none_or(|s| v.schema == s))
            .find(|v| !v.classified.is_empty())
            .map(|v| &v.classified)
    }

    fn views_named<'s>(
        &'s self,
        schema: Option<&'s str>,
        name: &str,
    ) -> impl Iterator<Item = &'c Arc<ViewInfo>> + 's {
        self.views
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |v| schema.is_none_or(|s| v.schema == s))
    }

    /// Views whose stored query RegionGuard cannot read are refused; the
    /// names of view columns computed from classified columns are noted,
    /// and referring to one is refused: whatever the statement does with
    /// it works on a value computed over ciphertext.
    fn computed_references(&mut self, stmt: &Statement) {
        let mut computed = Vec::new();
        let mut unreadable = None;
        let _ = sqlparser::ast::visit_relations(stmt, |rel| {
            let (schema, table) = split(rel);
            for v in self.views_named(schema.as_deref(), &table) {
                if v.unreadable {
                    unreadable = Some(format!("{}.{}", v.schema, v.name));
                }
                for c in &v.computed {
                    computed.push((c.clone(), format!("{}.{}", v.schema, v.name)));
                }
            }
            ControlFlow::<()>::Continue(())
        });
        if let Some(view) = unreadable {
            self.refuse(
                &view,
                format!("RegionGuard cannot read the definition of view {view}, which reads tenant data"),
                "recreate the view, or query its base tables",
            );
        }
        self.computed.extend(computed);
        if self.computed.is_empty() {
            return;
        }
        let mut found = None;
        let _ = sqlparser::ast::visit_expressions(stmt, |e| {
            let name = match e {
                Expr::Identifier(i) => Some(ident(i)),
                Expr::CompoundIdentifier(parts) => parts.last().map(ident),
                _ => None,
            };
            if let Some((column, view)) = name.and_then(|n| self.computed.get_key_value(&n)) {
                found = Some((column.clone(), view.clone()));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        if let Some((column, view)) = found {
            self.refuse(
                &column,
                format!("column {column} of view {view} is computed from an encrypted column and cannot be used"),
                "the database computed it over ciphertext: select the encrypted column itself and compute in the application",
            );
        }
    }

    /// CREATE VIEW: a value encrypted into the view's text (a literal
    /// compared with an encrypted column) would be sealed with one
    /// tenant's key, and the view would silently match nothing for every
    /// other tenant.
    fn view_values(&mut self, stmt: &Statement) {
        if !matches!(stmt, Statement::CreateView { .. }) {
            return;
        }
        if let Some(t) = self.plan.targets.first() {
            let class = Arc::clone(&t.column);
            self.refuse(
                &class.column,
                format!(
                    "a view may not compare encrypted column {} with a constant",
                    class.qualified()
                ),
                "the constant would be encrypted with one tenant's key and match no other tenant's rows: filter in the query that reads the view instead",
            );
        }
    }

    /// Every table, derived table and CTE name in the statement, flat: a
    /// name's scope is ignored, which can only add classified readings.
    fn collect_relations(&mut self, stmt: &Statement) {
        struct Collect<'a, 'c, 't>(&'a mut Planner<'c, 't>);
        impl Visitor for Collect<'_, '_, '_> {
            type Break = ();
            fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
                match tf {
                    TableFactor::Table { name, alias, .. } => {
                        let relation = match self.0.table_classes(name) {
                            Some(columns) => {
                                self.0.plan.touches_classified = true;
                                Relation::Classified(columns)
                            }
                            None => Relation::Plain,
                        };
                        if let Some(table) = last_part(name) {
                            self.0.add_relation(table, relation);
                        }
                        if let Some(a) = alias {
                            self.0.add_relation(ident(&a.name), relation);
                        }
                    }
                    TableFactor::Derived { alias: Some(a), .. } => {
                        self.0.add_relation(ident(&a.name), Relation::Derived);
                    }
                    _ => {}
                }
                ControlFlow::Continue(())
            }
            fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
                if let Some(with) = &q.with {
                    for cte in &with.cte_tables {
                        self.0
                            .add_relation(ident(&cte.alias.name), Relation::Derived);
                    }
                }
                ControlFlow::Continue(())
            }
        }
        if let Statement::Insert(Insert {
            table: TableObject::TableName(name),
            table_alias,
            ..
        }) = stmt
        {
            if let Some(columns) = self.table_classes(name) {
                self.plan.touches_classified = true;
                if let Some(table) = last_part(name) {
                    self.add_relation(table, Relation::Classified(columns));
                }
                if let Some(a) = table_alias {
                    self.add_relation(ident(a), Relation::Classified(columns));
                }
                self.add_relation("excluded".into(), Relation::Classified(columns));
            }
        }
        if let Statement::Copy { source, .. } = stmt {
            // The visitor does not see COPY's table name as a relation.
            let mut named = matches!(
                source,
                CopySource::Table { table_name, .. } if self.table_classes(table_name).is_some()
            );
            let _ = sqlparser::ast::visit_relations(stmt, |rel| {
                named |= self.table_classes(rel).is_some();
                ControlFlow::<()>::Continue(())
            });
            self.plan.touches_classified |= named;
        }
        let _ = stmt.visit(&mut Collect(self));
    }

    /// A name bound twice keeps the stricter reading.
    fn add_relation(&mut self, name: String, relation: Relation<'c>) {
        match (self.relations.get(&name), relation) {
            (Some(Relation::Classified(_)), _) => {}
            (Some(Relation::Derived), Relation::Plain) => {}
            _ => {
                self.relations.insert(name, relation);
            }
        }
    }

    /// Aliases given to classified columns (`SELECT email AS e …`), to a
    /// fixed point so aliases of aliases count.
    fn collect_derived(&mut self, stmt: &Statement) {
        struct Aliases<'a, 'c, 't>(&'a mut Planner<'c, 't>, bool);
        impl Visitor for Aliases<'_, '_, '_> {
            type Break = ();
            fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
                let mut found = Vec::new();
                for_each_select(&q.body, &mut |s: &Select| {
                    for item in &s.projection {
                        if let SelectItem::ExprWithAlias { expr, alias } = item {
                            if let Some(class) = self.0.resolve_one(expr) {
                                found.push((ident(alias), class));
                            }
                        }
                    }
                });
                for (alias, class) in found {
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        self.0.derived.entry(alias)
                    {
                        slot.insert(class);
                        self.1 = true;
                    }
                }
                ControlFlow::Continue(())
            }
        }
        for _ in 0..4 {
            let mut pass = Aliases(self, false);
            let _ = stmt.visit(&mut pass);
            if !pass.1 {
                break;
            }
        }
    }

    /// The classified columns `expr` may refer to (empty: none).
    fn resolve(&self, expr: &Expr) -> Vec<Arc<ColumnClass>> {
        match strip(expr) {
            Expr::Identifier(i) => self.resolve_bare(&ident(i)),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let name = ident(&parts[parts.len() - 1]);
                let qualifier = ident(&parts[parts.len() - 2]);
                match self.relations.get(&qualifier) {
                    Some(Relation::Classified(columns)) => {
                        columns.get(&name).cloned().into_iter().collect()
                    }
                    Some(Relation::Plain) => Vec::new(),
                    Some(Relation::Derived) | None => self.resolve_bare(&name),
                }
            }
            _ => Vec::new(),
        }
    }

    fn resolve_bare(&self, name: &str) -> Vec<Arc<ColumnClass>> {
        let mut found: Vec<Arc<ColumnClass>> = self
            .relations
            .values()
            .filter_map(|r| match r {
                Relation::Classified(columns) => columns.get(name).cloned(),
                _ => None,
            })
            .collect();
        if let Some(class) = self.derived.get(name) {
            found.push(Arc::clone(class));
        }
        found.sort_by(|a, b| a.binding.cmp(&b.binding));
        found.dedup();
        found
    }

    /// The one classified column `expr` refers to; refuses an ambiguous one.
    fn resolve_one(&mut self, expr: &Expr) -> Option<Arc<ColumnClass>> {
        let found = self.resolve(expr);
        match found.as_slice() {
            [] => None,
            [one] => Some(Arc::clone(one)),
            [first, rest @ ..] => {
                if rest.iter().all(|c| {
                    c.binding == first.binding
                        && c.logical == first.logical
                        && c.protection == first.protection
                }) {
                    return Some(Arc::clone(first));
                }
                let names: Vec<String> = found.iter().map(|c| c.qualified()).collect();
                self.refuse(
                    &first.column,
                    format!(
                        "column reference {} is ambiguous between classified columns {}",
                        first.column,
                        names.join(", ")
                    ),
                    "qualify the column with its table name or alias",
                );
                Some(Arc::clone(first))
            }
        }
    }

    fn allow(&mut self, expr: &Expr) {
        self.allowed.insert(expr as *const Expr);
        let inner = strip(expr);
        self.allowed.insert(inner as *const Expr);
    }

    // ---- statement structure -------------------------------------------

    fn statement(&mut self, stmt: &Statement) {
        match stmt {
            Statement::Insert(insert) => self.insert(insert),
            Statement::Update {
                table, assignments, ..
            } => {
                let columns = match &table.relation {
                    TableFactor::Table { name, .. } => self.table_classes(name),
                    _ => None,
                };
                if let Some(columns) = columns {
                    self.assignments(columns, assignments, None, false);
                }
            }
            Statement::Copy {
                source, to, target, ..
            } => self.copy(source, *to, target),
            Statement::Query(_) | Statement::Delete(_) => {}
            // A view is read through the catalog's map of its columns
            // (ADR 14): its query is checked like any other; constants it
            // would encrypt are refused by `view_values`.
            Statement::CreateView {
                materialized: false,
                ..
            } => {}
            Statement::CreateTable(_) | Statement::CreateView { .. } => {
                // Creating a table or materialized view from a query over
                // classified columns copies ciphertext away from the column
                // it is bound to.
                if let Some(class) = self.first_classified_reference(stmt) {
                    self.refuse(
                        &class.column,
                        format!(
                            "copying encrypted column {} into another table or view is not supported",
                            class.qualified()
                        ),
                        "a ciphertext is bound to its table and column and would not decrypt elsewhere; select the column through RegionGuard instead",
                    );
                }
            }
            _ => {}
        }
        let mut projections = Projections(self);
        let _ = stmt.visit(&mut projections);
        if let Some(returning) = returning_of(stmt) {
            self.projection_items(returning, false);
        }
    }

    /// COPY: a classified table's rows are encrypted (FROM STDIN) and
    /// decrypted (TO STDOUT) by the proxy, row by row; a server file or
    /// program cannot be. `COPY (query) TO` sends no RowDescription, so the
    /// proxy cannot tell which output columns to decrypt: a query that
    /// outputs a classified column (or `*` over a classified table) is
    /// refused.
    fn copy(&mut self, source: &CopySource, to: bool, target: &CopyTarget) {
        match source {
            CopySource::Table { table_name, .. } => {
                let Some(columns) = self.table_classes(table_name) else {
                    return;
                };
                let stdio = if to {
                    matches!(target, CopyTarget::Stdout)
                } else {
                    matches!(target, CopyTarget::Stdin)
                };
                if !stdio {
                    let first = columns
                        .values()
                        .next()
                        .map(|c| c.qualified())
                        .unwrap_or_default();
                    let table = last_part(table_name).unwrap_or_default();
                    self.refuse(
                        &first,
                        format!(
                            "COPY of table {table}, which has encrypted columns, {} a server file or program is not supported",
                            if to { "to" } else { "from" }
                        ),
                        "use COPY … FROM STDIN / TO STDOUT (psql's \\copy), which RegionGuard encrypts and decrypts row by row",
                    );
                }
            }
            CopySource::Query(query) => {
                let mut hit: Option<String> = None;
                let mut wildcard = false;
                struct Outputs<'a, 'c, 't> {
                    planner: &'a Planner<'c, 't>,
                    hit: &'a mut Option<String>,
                    wildcard: &'a mut bool,
                }
                impl Visitor for Outputs<'_, '_, '_> {
                    type Break = ();
                    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
                        for_each_select(&q.body, &mut |s: &Select| {
                            for item in &s.projection {
                                match item {
                                    SelectItem::UnnamedExpr(e)
                                    | SelectItem::ExprWithAlias { expr: e, .. } => {
                                        if self.hit.is_none() {
                                            *self.hit = self
                                                .planner
                                                .resolve(e)
                                                .into_iter()
                                                .next()
                                                .map(|c| c.qualified());
                                        }
                                    }
                                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                                        *self.wildcard = true
                                    }
                                }
                            }
                        });
                        ControlFlow::Continue(())
                    }
                }
                let _ = query.visit(&mut Outputs {
                    planner: self,
                    hit: &mut hit,
                    wildcard: &mut wildcard,
                });
                let column = match (hit, wildcard) {
                    (Some(c), _) => c,
                    (None, true) => "*".to_string(),
                    (None, false) => return,
                };
                self.refuse(
                    &column,
                    format!(
                        "COPY (query) TO of encrypted column {column} is not supported: RegionGuard cannot tell which output columns to decrypt"
                    ),
                    "copy the table with a column list instead (COPY table (columns) TO STDOUT, or psql's \\copy table (columns) to …), or SELECT the rows",
                );
            }
        }
    }

    fn first_classified_reference(&self, stmt: &Statement) -> Option<Arc<ColumnClass>> {
        let mut found = None;
        let _ = sqlparser::ast::visit_expressions(stmt, |e| {
            if let Some(c) = self.resolve(e).into_iter().next() {
                found = Some(c);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        found
    }

    fn insert(&mut self, insert: &Insert) {
        let TableObject::TableName(name) = &insert.table else {
            return;
        };
        let Some(columns) = self.table_classes(name) else {
            if let Some(source) = &insert.source {
                self.copy_check(source, name);
            }
            return;
        };
        let (schema, table) = split(name);
        let listed: Vec<String> = insert.columns.iter().map(ident).collect();
        let tenant_column = self.tenancy.column_of_parts(schema.as_deref(), &table);
        let tenant_index =
            tenant_column.and_then(|t| listed.iter().position(|c| c.as_str() == t.as_ref()));
        if let Some(source) = &insert.source {
            if listed.is_empty() {
                let first = columns
                    .values()
                    .next()
                    .map(|c| c.qualified())
                    .unwrap_or_default();
                self.refuse(
                    &first,
                    format!("INSERT into {table} without a column list: the classified columns' positions are unknown"),
                    "list the columns the statement sets",
                );
            } else if let SetExpr::Values(values) = source.body.as_ref() {
                for row in &values.rows {
                    let row_tenant = tenant_index.and_then(|i| row.get(i)).and_then(tenant_value);
                    for (i, column) in listed.iter().enumerate() {
                        let (Some(class), Some(expr)) = (columns.get(column), row.get(i)) else {
                            continue;
                        };
                        self.store(expr, class, row_tenant.clone());
                    }
                }
            } else if let Some(class) = listed.iter().find_map(|c| columns.get(c)) {
                self.refuse(
                    &class.column,
                    format!(
                        "INSERT … SELECT would store the query's values in encrypted column {} unencrypted",
                        class.qualified()
                    ),
                    "insert with VALUES (literals or $n parameters) so RegionGuard can encrypt them",
                );
            }
        }
        if let Some(OnInsert::OnConflict(on_conflict)) = &insert.on {
            if let OnConflictAction::DoUpdate(update) = &on_conflict.action {
                let single_row_tenant = match insert.source.as_deref().map(|q| q.body.as_ref()) {
                    Some(SetExpr::Values(v)) if v.rows.len() == 1 => tenant_index
                        .and_then(|i| v.rows[0].get(i))
                        .and_then(tenant_value),
                    _ => None,
                };
                self.assignments(columns, &update.assignments, single_row_tenant, true);
            }
        }
    }

    /// INSERT into an unclassified table from a query that projects
    /// classified columns: ciphertext would be copied away from its binding.
    fn copy_check(&mut self, source: &Query, target: &ObjectName) {
        let mut hit = None;
        for_each_select(&source.body, &mut |s: &Select| {
            for item in &s.projection {
                let expr = match item {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                    _ => continue,
                };
                if hit.is_none() {
                    hit = self.resolve(expr).into_iter().next();
                }
            }
        });
        if let Some(class) = hit {
            self.refuse(
                &class.column,
                format!(
                    "copying encrypted column {} into {} is not supported",
                    class.qualified(),
                    last_part(target).unwrap_or_default()
                ),
                "a ciphertext is bound to its table and column and would not decrypt elsewhere; read it through RegionGuard and insert the plaintext",
            );
        }
    }

    /// SET clauses of UPDATE and ON CONFLICT DO UPDATE.
    fn assignments(
        &mut self,
        columns: &HashMap<String, Arc<ColumnClass>>,
        assignments: &[sqlparser::ast::Assignment],
        row_tenant: Option<TenantSource>,
        on_conflict: bool,
    ) {
        for a in assignments {
            match &a.target {
                AssignmentTarget::ColumnName(n) => {
                    let Some(class) = last_part(n).and_then(|c| columns.get(&c)) else {
                        continue;
                    };
                    let same_column = match strip(&a.value) {
                        Expr::Identifier(i) => ident(i) == class.column && !on_conflict,
                        Expr::CompoundIdentifier(parts) => {
                            parts.last().map(ident).as_deref() == Some(class.column.as_str())
                                && self
                                    .resolve(&a.value)
                                    .iter()
                                    .any(|c| c.binding == class.binding)
                        }
                        _ => false,
                    };
                    if same_column {
                        self.allow(&a.value);
                    } else {
                        self.store(&a.value, class, row_tenant.clone());
                    }
                }
                AssignmentTarget::Tuple(names) => {
                    if let Some(class) = names
                        .iter()
                        .find_map(|n| last_part(n).and_then(|c| columns.get(&c)))
                    {
                        self.refuse(
                            &class.column,
                            format!(
                                "assigning encrypted column {} in a column tuple is not supported",
                                class.qualified()
                            ),
                            "assign it on its own: SET col = $n",
                        );
                    }
                }
            }
        }
    }

    /// A value stored into a classified column: a literal or parameter to
    /// encrypt, NULL or DEFAULT; anything else would be stored unencrypted.
    fn store(&mut self, expr: &Expr, class: &Arc<ColumnClass>, row_tenant: Option<TenantSource>) {
        match strip(expr) {
            Expr::Value(v) if matches!(v.value, Value::Null) => {}
            Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") => {
                self.allow(expr);
            }
            inner => match self.value_source(inner) {
                Some(value) => self.plan.targets.push(CryptoTarget {
                    value,
                    column: Arc::clone(class),
                    row_tenant,
                    purpose: Purpose::Store,
                }),
                None => self.refuse(
                    &class.column,
                    format!(
                        "a computed value (expression, function, cast or column) would be stored in encrypted column {} unencrypted",
                        class.qualified()
                    ),
                    "pass the value as a literal or a $n parameter so RegionGuard can encrypt it",
                ),
            },
        }
    }

    /// A literal or parameter as a value to encrypt.
    fn value_source(&self, expr: &Expr) -> Option<ValueSource> {
        match strip(expr) {
            Expr::Value(v) => match &v.value {
                Value::Placeholder(p) => p
                    .strip_prefix('$')
                    .and_then(|d| d.parse::<usize>().ok())
                    .filter(|n| *n > 0)
                    .map(ValueSource::Param),
                Value::Number(n, _) => {
                    let (start, end) = self.byte_span(v.span.start, v.span.end)?;
                    Some(ValueSource::Literal {
                        start,
                        end,
                        text: n.clone(),
                    })
                }
                Value::Boolean(b) => {
                    let (start, end) = self.byte_span(v.span.start, v.span.end)?;
                    Some(ValueSource::Literal {
                        start,
                        end,
                        text: b.to_string(),
                    })
                }
                Value::SingleQuotedString(s)
                | Value::EscapedStringLiteral(s)
                | Value::UnicodeStringLiteral(s) => {
                    let (start, end) = self.byte_span(v.span.start, v.span.end)?;
                    Some(ValueSource::Literal {
                        start,
                        end,
                        text: s.clone(),
                    })
                }
                Value::DollarQuotedString(d) => {
                    let (start, end) = self.byte_span(v.span.start, v.span.end)?;
                    Some(ValueSource::Literal {
                        start,
                        end,
                        text: d.value.clone(),
                    })
                }
                _ => None,
            },
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match strip(expr) {
                Expr::Value(v) => match &v.value {
                    Value::Number(n, _) => {
                        let (start, end) = self.byte_span(v.span.start, v.span.end)?;
                        let minus = self.text[..start].trim_end();
                        minus.ends_with('-').then(|| ValueSource::Literal {
                            start: minus.len() - 1,
                            end,
                            text: format!("-{n}"),
                        })
                    }
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        }
    }

    /// Byte offsets of a token span (lines and columns count characters from 1).
    fn byte_span(&self, start: Location, end: Location) -> Option<(usize, usize)> {
        let s = byte_offset(self.text, start)?;
        let e = byte_offset(self.text, end)?;
        (s < e && e <= self.text.len()).then_some((s, e))
    }

    fn projection_items(&mut self, items: &[SelectItem], distinct: bool) {
        for item in items {
            let expr = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => continue,
            };
            if let Some(class) = self.resolve_one(expr) {
                if distinct && !class.deterministic() {
                    self.refuse_randomized(&class, "DISTINCT");
                }
                self.allow(expr);
            }
        }
    }

    fn select(&mut self, s: &Select) {
        let distinct = matches!(s.distinct, Some(sqlparser::ast::Distinct::Distinct));
        self.projection_items(&s.projection, distinct);
        if s.into.is_some() {
            if let Some(class) = s.projection.iter().find_map(|item| match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    self.resolve(e).into_iter().next()
                }
                _ => None,
            }) {
                self.refuse(
                    &class.column,
                    format!(
                        "SELECT INTO would copy encrypted column {} into another table",
                        class.qualified()
                    ),
                    "a ciphertext is bound to its table and column and would not decrypt elsewhere",
                );
            }
        }
        if let GroupByExpr::Expressions(exprs, _) = &s.group_by {
            for e in exprs {
                let positional = match strip(e) {
                    Expr::Value(v) => match &v.value {
                        Value::Number(n, _) => n.parse::<usize>().ok(),
                        _ => None,
                    },
                    _ => None,
                };
                let class = match positional {
                    Some(n) => s
                        .projection
                        .get(n.wrapping_sub(1))
                        .and_then(|item| match item {
                            SelectItem::UnnamedExpr(e)
                            | SelectItem::ExprWithAlias { expr: e, .. } => {
                                self.resolve(e).into_iter().next()
                            }
                            _ => None,
                        }),
                    None => self.resolve_one(e),
                };
                if let Some(class) = class {
                    if !class.deterministic() {
                        self.refuse_randomized(&class, "GROUP BY");
                    }
                    self.allow(e);
                }
            }
        }
        for twj in &s.from {
            for join in &twj.joins {
                let constraint = match &join.join_operator {
                    JoinOperator::Join(c)
                    | JoinOperator::Inner(c)
                    | JoinOperator::Left(c)
                    | JoinOperator::LeftOuter(c)
                    | JoinOperator::Right(c)
                    | JoinOperator::RightOuter(c)
                    | JoinOperator::FullOuter(c) => Some(c),
                    _ => None,
                };
                match constraint {
                    Some(JoinConstraint::Using(names)) => {
                        for n in names {
                            let Some(column) = last_part(n) else { continue };
                            if let Some(class) = self.resolve_bare(&column).into_iter().next() {
                                if !class.deterministic() {
                                    self.refuse_randomized(&class, "JOIN USING");
                                }
                            }
                        }
                    }
                    Some(JoinConstraint::Natural) => self.refuse(
                        "",
                        "NATURAL JOIN of a table with encrypted columns is not supported",
                        "join with ON and name the columns",
                    ),
                    _ => {}
                }
            }
        }
    }

    fn refuse_randomized(&mut self, class: &ColumnClass, operation: &str) {
        self.refuse(
            &class.column,
            format!(
                "{operation} on encrypted column {} is not supported: it is encrypted with a random nonce",
                class.qualified()
            ),
            "mark the column searchable (deterministic encryption) to compare, group or deduplicate it",
        );
    }

    // ---- comparison patterns -------------------------------------------

    fn patterns(&mut self, stmt: &Statement) {
        struct Patterns<'a, 'c, 't>(&'a mut Planner<'c, 't>);
        impl Visitor for Patterns<'_, '_, '_> {
            type Break = ();
            fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
                self.0.pattern(e);
                ControlFlow::Continue(())
            }
        }
        let _ = stmt.visit(&mut Patterns(self));
    }

    fn pattern(&mut self, e: &Expr) {
        match e {
            Expr::BinaryOp {
                left,
                op: op @ (BinaryOperator::Eq | BinaryOperator::NotEq),
                right,
            } => {
                let l = self.resolve_one(left);
                let r = self.resolve_one(right);
                let shape = if *op == BinaryOperator::Eq {
                    Shape::Eq
                } else {
                    Shape::NotEq
                };
                let op = if *op == BinaryOperator::Eq { "=" } else { "<>" };
                match (l, r) {
                    (Some(a), None) => {
                        self.allow(left);
                        let cmp = self.comparison(left, std::slice::from_ref(right), shape, false);
                        self.compare(&a, right, op, cmp);
                    }
                    (None, Some(b)) => {
                        self.allow(right);
                        let cmp = self.comparison(right, std::slice::from_ref(left), shape, true);
                        self.compare(&b, left, op, cmp);
                    }
                    (Some(a), Some(b)) => {
                        self.allow(left);
                        self.allow(right);
                        if !a.deterministic() {
                            self.refuse_randomized(&a, op);
                        } else if !b.deterministic() {
                            self.refuse_randomized(&b, op);
                        } else if a.binding != b.binding || a.logical != b.logical {
                            self.refuse(
                                &a.column,
                                format!(
                                    "comparing encrypted columns {} and {}: their ciphertexts are bound to different columns",
                                    a.qualified(),
                                    b.qualified()
                                ),
                                "give both columns the same equality_group in [classified] to join them",
                            );
                        }
                    }
                    (None, None) => {}
                }
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                if let Some(class) = self.resolve_one(expr) {
                    self.allow(expr);
                    let shape = if *negated { Shape::NotIn } else { Shape::In };
                    let cmp = self.comparison(expr, list, shape, false);
                    for item in list {
                        self.compare(&class, item, "IN", cmp);
                    }
                }
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) if self.resolve_one(inner).is_some() => {
                self.allow(inner);
            }
            Expr::Function(f) => {
                let name = last_part(&f.name).unwrap_or_default();
                if name != "count" {
                    return;
                }
                if let FunctionArguments::List(list) = &f.args {
                    if let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] = list.args.as_slice()
                    {
                        if let Some(class) = self.resolve_one(arg) {
                            let distinct = matches!(
                                list.duplicate_treatment,
                                Some(DuplicateTreatment::Distinct)
                            );
                            if distinct && !class.deterministic() {
                                self.refuse_randomized(&class, "count(DISTINCT …)");
                            }
                            self.allow(arg);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Records a comparison of `column` with `values` (one for `=`/`<>`,
    /// the items of an IN list) and where it is in the text.
    fn comparison(
        &mut self,
        column: &Expr,
        values: &[Expr],
        shape: Shape,
        column_right: bool,
    ) -> usize {
        let null_item = values.iter().any(is_null);
        let spans = self.comparison_spans(column, values, shape, column_right);
        self.plan.comparisons.push(Comparison {
            shape,
            column_right,
            null_item,
            spans,
        });
        self.plan.comparisons.len() - 1
    }

    fn comparison_spans(
        &self,
        column: &Expr,
        values: &[Expr],
        shape: Shape,
        column_right: bool,
    ) -> Option<ComparisonSpans> {
        let (depth, inner) = nesting(column);
        let (start, end) = self.byte_span(inner.span().start, inner.span().end)?;
        let column = widen(self.text, (start, end), depth)?;
        let whole = match shape {
            Shape::Eq | Shape::NotEq => {
                let value = self.operand_span(values.first()?)?;
                if column_right {
                    (value.0, column.1)
                } else {
                    (column.0, value.1)
                }
            }
            Shape::In | Shape::NotIn => {
                let last = self.operand_span(values.last()?)?;
                let after = self.text.get(last.1..)?.trim_start();
                if !after.starts_with(')') {
                    return None;
                }
                (column.0, self.text.len() - after.len() + 1)
            }
        };
        (whole.0 < whole.1).then_some(ComparisonSpans { whole, column })
    }

    /// The byte range of a compared value, parentheses around it included.
    fn operand_span(&self, e: &Expr) -> Option<(usize, usize)> {
        let (depth, inner) = nesting(e);
        let base = match self.value_source(inner) {
            Some(ValueSource::Literal { start, end, .. }) => (start, end),
            _ => self.byte_span(inner.span().start, inner.span().end)?,
        };
        widen(self.text, base, depth)
    }

    /// `class op other`: other must be a literal, a parameter or NULL, and
    /// the column deterministic.
    fn compare(&mut self, class: &Arc<ColumnClass>, other: &Expr, op: &str, comparison: usize) {
        if !class.deterministic() {
            self.refuse_randomized(class, op);
            return;
        }
        if is_null(other) {
            return;
        }
        match self.value_source(other) {
            Some(value) => {
                let operand = self.operand_span(other);
                let located = self
                    .plan
                    .comparisons
                    .get(comparison)
                    .is_some_and(|c| c.spans.is_some());
                if matches!(value, ValueSource::Param(_)) && !located {
                    // A compared parameter is always rewritten (`col = ANY($n)`).
                    self.refuse(
                        &class.column,
                        format!(
                            "{op} between encrypted column {} and a parameter could not be located in the statement text",
                            class.qualified()
                        ),
                        "remove comments inside the parentheses around the column or the parameter",
                    );
                }
                self.plan.targets.push(CryptoTarget {
                    value,
                    column: Arc::clone(class),
                    row_tenant: None,
                    purpose: Purpose::Compare {
                        comparison,
                        operand,
                    },
                })
            }
            None => self.refuse(
                &class.column,
                format!(
                    "{op} between encrypted column {} and a computed value or unclassified column is not supported",
                    class.qualified()
                ),
                "compare the column with a literal or a $n parameter",
            ),
        }
    }

    // ---- everything else -----------------------------------------------

    /// Any classified reference not in a permitted position is refused,
    /// naming the operation around it.
    fn leftovers(&mut self, stmt: &Statement) {
        if self.plan.refusal.is_some() {
            return;
        }
        struct Leftovers<'a, 'c, 't> {
            planner: &'a mut Planner<'c, 't>,
            /// What each enclosing expression does (`None`: parentheses).
            stack: Vec<Option<String>>,
            found: Option<(Arc<ColumnClass>, String)>,
        }
        impl Visitor for Leftovers<'_, '_, '_> {
            type Break = ();
            fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
                let ptr = e as *const Expr;
                if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
                    && !self.planner.allowed.contains(&ptr)
                {
                    if let Some(class) = self.planner.resolve(e).into_iter().next() {
                        let operation = self
                            .stack
                            .iter()
                            .rev()
                            .find_map(Clone::clone)
                            .unwrap_or_else(|| "use in this clause".to_string());
                        self.found = Some((class, operation));
                        return ControlFlow::Break(());
                    }
                }
                self.stack
                    .push((!matches!(e, Expr::Nested(_))).then(|| describe(e)));
                ControlFlow::Continue(())
            }
            fn post_visit_expr(&mut self, _e: &Expr) -> ControlFlow<()> {
                self.stack.pop();
                ControlFlow::Continue(())
            }
        }
        let mut v = Leftovers {
            planner: self,
            stack: Vec::new(),
            found: None,
        };
        let _ = stmt.visit(&mut v);
        if let Some((class, operation)) = v.found {
            self.refuse(
                &class.column,
                format!(
                    "{operation} on encrypted column {} is not supported",
                    class.qualified()
                ),
                "the database only sees ciphertext: select the column as it is, or compare it with = / IN on a searchable column",
            );
        }
    }

    /// A parameter bound to a classified column carries ciphertext, so it
    /// may not be used anywhere else, nor for two different bindings.
    fn check_params(&mut self, stmt: &Statement) {
        let mut uses: HashMap<usize, usize> = HashMap::new();
        let _ = sqlparser::ast::visit_expressions(stmt, |e| {
            if let Expr::Value(v) = e {
                if let Value::Placeholder(p) = &v.value {
                    if let Some(n) = p.strip_prefix('$').and_then(|d| d.parse::<usize>().ok()) {
                        *uses.entry(n).or_default() += 1;
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
        let mut targets: HashMap<usize, Vec<&CryptoTarget>> = HashMap::new();
        for t in &self.plan.targets {
            if let ValueSource::Param(n) = t.value {
                targets.entry(n).or_default().push(t);
            }
        }
        let mut refusal = None;
        for (n, uses_of_n) in &targets {
            let first = &uses_of_n[0].column;
            let classes: Vec<&Arc<ColumnClass>> = uses_of_n.iter().map(|t| &t.column).collect();
            let stored = uses_of_n.iter().any(|t| t.purpose == Purpose::Store);
            let compared = uses_of_n.iter().any(|t| t.purpose != Purpose::Store);
            if stored && compared {
                // A compared parameter is bound as an array of envelopes
                // (one per live key version); a stored one is one envelope.
                refusal = Some((
                    first.column.clone(),
                    format!(
                        "parameter ${n} is both stored in and compared with encrypted column {}",
                        first.qualified()
                    ),
                ));
            } else if uses.get(n).copied().unwrap_or(0) > classes.len() {
                refusal = Some((
                    first.column.clone(),
                    format!(
                        "parameter ${n} is used both for encrypted column {} and elsewhere",
                        first.qualified()
                    ),
                ));
            } else if classes.iter().any(|c| {
                c.binding != first.binding
                    || c.logical != first.logical
                    || c.protection != first.protection
            }) {
                refusal = Some((
                    first.column.clone(),
                    format!("parameter ${n} is used for differently encrypted columns"),
                ));
            }
        }
        if let Some((column, reason)) = refusal {
            self.refuse(
                &column,
                reason,
                "use a separate parameter for each use of the value",
            );
        }
    }
}

/// Visits every Select of every query for permitted projections, GROUP BY
/// and joins; refuses set operations that compare randomized ciphertexts.
struct Projections<'a, 'c, 't>(&'a mut Planner<'c, 't>);

impl Visitor for Projections<'_, '_, '_> {
    type Break = ();
    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        walk_selects(self.0, &q.body);
        if let Some(OrderByKind::Expressions(items)) = q.order_by.as_ref().map(|o| &o.kind) {
            for item in items {
                if let Some(class) = self.0.resolve(&item.expr).into_iter().next() {
                    self.0.refuse(
                        &class.column,
                        format!(
                            "ORDER BY on encrypted column {} is not supported",
                            class.qualified()
                        ),
                        "ciphertext has no meaningful order; sort in the application",
                    );
                }
            }
        }
        ControlFlow::Continue(())
    }
}

fn walk_selects(p: &mut Planner<'_, '_>, body: &SetExpr) {
    match body {
        SetExpr::Select(s) => p.select(s),
        SetExpr::Query(q) => walk_selects(p, &q.body),
        SetExpr::SetOperation {
            left,
            right,
            set_quantifier,
            ..
        } => {
            walk_selects(p, left);
            walk_selects(p, right);
            if !matches!(set_quantifier, SetQuantifier::All) {
                let mut randomized = None;
                for_each_select(body, &mut |s: &Select| {
                    for item in &s.projection {
                        if let SelectItem::UnnamedExpr(e)
                        | SelectItem::ExprWithAlias { expr: e, .. } = item
                        {
                            if randomized.is_none() {
                                randomized = p.resolve(e).into_iter().find(|c| !c.deterministic());
                            }
                        }
                    }
                });
                if let Some(class) = randomized {
                    p.refuse_randomized(&class, "UNION/INTERSECT/EXCEPT without ALL");
                }
            }
        }
        _ => {}
    }
}

fn for_each_select<'q>(body: &'q SetExpr, f: &mut impl FnMut(&'q Select)) {
    match body {
        SetExpr::Select(s) => f(s),
        SetExpr::Query(q) => for_each_select(&q.body, f),
        SetExpr::SetOperation { left, right, .. } => {
            for_each_select(left, f);
            for_each_select(right, f);
        }
        _ => {}
    }
}

fn returning_of(stmt: &Statement) -> Option<&[SelectItem]> {
    match stmt {
        Statement::Insert(i) => i.returning.as_deref(),
        Statement::Update { returning, .. } => returning.as_deref(),
        Statement::Delete(d) => d.returning.as_deref(),
        _ => None,
    }
}

/// What the expression around a refused column reference does, for the message.
fn describe(e: &Expr) -> String {
    match e {
        Expr::BinaryOp { op, .. } => format!("operator {op}"),
        Expr::Like { .. } => "LIKE".into(),
        Expr::ILike { .. } => "ILIKE".into(),
        Expr::SimilarTo { .. } => "SIMILAR TO".into(),
        Expr::Between { .. } => "BETWEEN".into(),
        Expr::Cast { .. } => "a cast".into(),
        Expr::Function(f) => format!("function {}", f.name),
        Expr::UnaryOp { op, .. } => format!("operator {op}"),
        Expr::InSubquery { .. } => "IN (subquery)".into(),
        Expr::AnyOp { .. } | Expr::AllOp { .. } => "ANY/ALL".into(),
        Expr::Case { .. } => "CASE".into(),
        Expr::IsDistinctFrom(..) | Expr::IsNotDistinctFrom(..) => "IS DISTINCT FROM".into(),
        _ => "an expression".into(),
    }
}

/// Byte offset of a 1-based line/column (counted in characters).
fn byte_offset(text: &str, at: Location) -> Option<usize> {
    if at.line == 0 || at.column == 0 {
        return None;
    }
    let mut line = 1u64;
    let mut column = 1u64;
    for (i, ch) in text.char_indices() {
        if line == at.line && column == at.column {
            return Some(i);
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line == at.line && column == at.column).then_some(text.len())
}
