//! The tenant analysis of data statements.
//!
//! Every table reference becomes a *binding*. A tenant-scoped table's binding
//! is *checked*: the statement is placeable only if every checked binding is
//! constrained. Bindings get constrained by
//! - a tenant predicate local to their query block (`t.tenant_id = 'a'`,
//!   `IN ('a', $1)`, also casts and parameters), in WHERE or in the ON of an
//!   inner join (an outer join's ON only constrains its nullable side);
//! - an OR whose every branch constrains the binding (values are united);
//! - an equality with another binding's tenant column (`a.tenant_id =
//!   b.tenant_id`, `USING (tenant_id)`, correlated subqueries), which carries
//!   the other binding's values over (edges, propagated to a fixed point);
//! - the projection of a constrained derived table, CTE or `IN (SELECT …)`;
//! - for INSERT targets, the VALUES rows or the source query's projection.
//!
//! Derived tables and CTEs get *virtual* bindings for the tenant columns they
//! expose; these are never checked themselves (the tables inside are).
//! Values only ever grow (a superset of the true tenants is safe: the proxy
//! demands that they all live in one region), and a binding is only marked
//! constrained when some constrained source bounds it.

use super::predicates::{
    column_ref, ident, implicit_name, is_regionguard_setting_literal, plain_args, split_and,
    tenant_value,
};
use super::{session, StatementKind, StatementPlan, Tenancy, TenantRequirement, TenantSource};
use sqlparser::ast::{
    visit_relations, Assignment, AssignmentTarget, BinaryOperator, ConflictTarget, CopySource,
    CopyTarget, Delete, Expr, FromTable, Insert, JoinConstraint, JoinOperator, ObjectName,
    OnConflictAction, OnInsert, Query, Select, SelectItem, SelectItemQualifiedWildcardKind,
    SetExpr, Statement, TableFactor, TableObject, TableWithJoins, UpdateTableFromKind, Visit,
    Visitor,
};
use std::collections::HashMap;
use std::ops::ControlFlow;

/// A source of tenant values for a projected column.
#[derive(Debug, Clone)]
enum Src {
    Value(TenantSource),
    Binding(usize),
}

/// One projected column: its name (if it has one) and where its tenant
/// value comes from (`None`: not a tenant value we understand).
#[derive(Debug, Clone)]
struct ProjCol {
    name: Option<String>,
    srcs: Option<Vec<Src>>,
}

/// Tenant columns exposed by name, with their sources.
type Exports = Vec<(String, Vec<Src>)>;

/// What a query block yields, as far as tenant columns go.
#[derive(Debug, Clone, Default)]
struct ProjInfo {
    /// Column by column; `None` when a wildcard hides the positions.
    positions: Option<Vec<ProjCol>>,
    /// Tenant columns exposed by name (including through `*`).
    exports: Exports,
}

#[derive(Debug)]
struct Binding {
    table: String,
    column: String,
    checked: bool,
    values: Vec<TenantSource>,
    constrained: bool,
}

#[derive(Debug, Default)]
struct Scope {
    /// alias (or bare table name) → its bindings (empty: opaque relation)
    names: Vec<(String, Vec<usize>)>,
    local: Vec<usize>,
}

/// Which local bindings a predicate may constrain.
#[derive(Debug, Clone)]
enum Allowed {
    All,
    Only(Vec<usize>),
}

impl Allowed {
    fn permits(&self, id: usize) -> bool {
        match self {
            Allowed::All => true,
            Allowed::Only(ids) => ids.contains(&id),
        }
    }
}

struct Walker<'t> {
    tenancy: &'t Tenancy,
    bindings: Vec<Binding>,
    scopes: Vec<Scope>,
    ctes: Vec<Vec<(String, Exports)>>,
    edges: Vec<(usize, usize)>,
    refusals: Vec<TenantRequirement>,
    assignments: Vec<TenantSource>,
    scoped_tables: Vec<String>,
    reads_global: bool,
    writes_global: bool,
    wrote: bool,
}

fn object_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| p.as_ident().map(ident).unwrap_or_default())
        .collect()
}

/// (schema, table, display name) of a table name.
fn table_name(name: &ObjectName) -> (Option<String>, String, String) {
    let parts = object_parts(name);
    let table = parts.last().cloned().unwrap_or_default();
    let schema = if parts.len() >= 2 {
        Some(parts[parts.len() - 2].clone())
    } else {
        None
    };
    (schema, table, parts.join("."))
}

/// Collects the outermost subqueries of an expression (deeper ones are
/// analysed when their parent is).
#[derive(Default)]
struct SubqueryCollector {
    depth: usize,
    found: Vec<Query>,
}

impl Visitor for SubqueryCollector {
    type Break = ();
    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            self.found.push(query.clone());
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }
    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }
}

/// Finds `set_config('regionguard.…', …)` / `current_setting('regionguard.…')`
/// anywhere: the setting lives in the proxy, the backend cannot answer.
struct SettingFunctionFinder;

impl Visitor for SettingFunctionFinder {
    type Break = ();
    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            let name = f.name.0.last().and_then(|p| p.as_ident()).map(ident);
            if matches!(name.as_deref(), Some("set_config" | "current_setting")) {
                if let Some(args) = plain_args(&f.args) {
                    if args
                        .first()
                        .is_some_and(|a| is_regionguard_setting_literal(a))
                    {
                        return ControlFlow::Break(());
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }
}

impl<'t> Walker<'t> {
    fn new(tenancy: &'t Tenancy) -> Self {
        Walker {
            tenancy,
            bindings: Vec::new(),
            scopes: Vec::new(),
            ctes: Vec::new(),
            edges: Vec::new(),
            refusals: Vec::new(),
            assignments: Vec::new(),
            scoped_tables: Vec::new(),
            reads_global: false,
            writes_global: false,
            wrote: false,
        }
    }

    fn refuse(&mut self, table: Option<&str>, reason: impl Into<String>, hint: impl Into<String>) {
        self.refusals
            .push(TenantRequirement::refuse(table, reason, hint));
    }

    fn new_binding(&mut self, table: &str, column: &str, checked: bool) -> usize {
        self.bindings.push(Binding {
            table: table.to_string(),
            column: column.to_string(),
            checked,
            values: Vec::new(),
            constrained: false,
        });
        self.bindings.len() - 1
    }

    fn scope(&mut self) -> &mut Scope {
        if self.scopes.is_empty() {
            self.scopes.push(Scope::default());
        }
        let last = self.scopes.len() - 1;
        &mut self.scopes[last]
    }

    fn register(&mut self, name: String, ids: Vec<usize>) {
        let scope = self.scope();
        scope.local.extend(ids.iter().copied());
        scope.names.push((name, ids));
    }

    /// A virtual binding per exported tenant column, fed by its sources.
    fn virtual_bindings(&mut self, table: &str, exports: &[(String, Vec<Src>)]) -> Vec<usize> {
        let mut ids = Vec::new();
        for (column, srcs) in exports {
            let id = self.new_binding(table, column, false);
            self.feed(id, srcs);
            ids.push(id);
        }
        ids
    }

    /// `srcs` flow into binding `id`.
    fn feed(&mut self, id: usize, srcs: &[Src]) {
        for src in srcs {
            match src {
                Src::Value(v) => self.constrain(id, std::slice::from_ref(v)),
                Src::Binding(from) => self.edges.push((*from, id)),
            }
        }
    }

    fn constrain(&mut self, id: usize, values: &[TenantSource]) {
        if let Some(b) = self.bindings.get_mut(id) {
            b.constrained = true;
            for v in values {
                if !b.values.contains(v) {
                    b.values.push(v.clone());
                }
            }
        }
    }

    // ----- references -------------------------------------------------

    /// Resolves a column expression to a binding whose tenant column it is;
    /// the flag says whether the binding belongs to the innermost scope.
    fn resolve(&self, expr: &Expr) -> Option<(usize, bool)> {
        let (qualifier, column) = column_ref(expr)?;
        let innermost = self.scopes.len().checked_sub(1)?;
        match qualifier {
            None => {
                let scope = &self.scopes[innermost];
                let matches: Vec<usize> = scope
                    .local
                    .iter()
                    .copied()
                    .filter(|id| self.bindings[*id].column == column)
                    .collect();
                match matches.as_slice() {
                    [id] => Some((*id, true)),
                    _ => None,
                }
            }
            Some(q) => {
                for (index, scope) in self.scopes.iter().enumerate().rev() {
                    if let Some((_, ids)) = scope.names.iter().rev().find(|(n, _)| *n == q) {
                        return ids
                            .iter()
                            .copied()
                            .find(|id| self.bindings[*id].column == column)
                            .map(|id| (id, index == innermost));
                    }
                }
                None
            }
        }
    }

    /// Constraint of `expr` on local bindings (value predicates only; used
    /// for conjuncts and for each branch of an OR).
    fn constraints_in(&self, expr: &Expr, allowed: &Allowed) -> HashMap<usize, Vec<TenantSource>> {
        let mut out: HashMap<usize, Vec<TenantSource>> = HashMap::new();
        let local = |w: &Self, e: &Expr| match w.resolve(e) {
            Some((id, true)) if allowed.permits(id) => Some(id),
            _ => None,
        };
        match expr {
            Expr::Nested(inner) => return self.constraints_in(inner, allowed),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                for side in [left, right] {
                    for (id, vals) in self.constraints_in(side, allowed) {
                        out.entry(id).or_default().extend(vals);
                    }
                }
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Or,
                right,
            } => {
                let l = self.constraints_in(left, allowed);
                let r = self.constraints_in(right, allowed);
                for (id, mut vals) in l {
                    if let Some(more) = r.get(&id) {
                        vals.extend(more.iter().cloned());
                        out.insert(id, vals);
                    }
                }
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            }
            | Expr::IsNotDistinctFrom(left, right) => {
                for (col, val) in [(left, right), (right, left)] {
                    if let (Some(id), Some(v)) = (local(self, col), tenant_value(val)) {
                        out.entry(id).or_default().push(v);
                    }
                }
            }
            Expr::InList {
                expr,
                list,
                negated: false,
            } => {
                if let Some(id) = local(self, expr) {
                    let values: Option<Vec<TenantSource>> = list.iter().map(tenant_value).collect();
                    if let Some(values) = values.filter(|v| !v.is_empty()) {
                        out.entry(id).or_default().extend(values);
                    }
                }
            }
            _ => {}
        }
        out
    }

    /// A predicate (WHERE, ON, HAVING-free): constrain what it constrains,
    /// add equality edges, analyse its subqueries.
    fn predicate(&mut self, expr: &Expr, allowed: &Allowed) {
        for conjunct in split_and(expr) {
            for (id, values) in self.constraints_in(conjunct, allowed) {
                self.constrain(id, &values);
            }
            match conjunct {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                }
                | Expr::IsNotDistinctFrom(left, right) => {
                    match (self.resolve(left), self.resolve(right)) {
                        (Some(l), Some(r)) => {
                            self.edge(l, r, allowed);
                            continue;
                        }
                        (Some((id, true)), None) | (None, Some((id, true))) => {
                            let other = if self.resolve(left).is_some() {
                                right
                            } else {
                                left
                            };
                            if let Expr::Subquery(q) = strip(other) {
                                let info = self.query(q);
                                if allowed.permits(id) {
                                    self.feed_from_first_column(id, &info);
                                }
                                continue;
                            }
                        }
                        _ => {}
                    }
                    self.scan(conjunct);
                }
                Expr::InSubquery {
                    expr,
                    subquery,
                    negated,
                } => {
                    let info = self.query(subquery);
                    if !*negated {
                        if let Some((id, true)) = self.resolve(expr) {
                            if allowed.permits(id) {
                                self.feed_from_first_column(id, &info);
                            }
                        }
                    }
                    self.scan(expr);
                }
                other => self.scan(other),
            }
        }
    }

    fn feed_from_first_column(&mut self, id: usize, info: &ProjInfo) {
        if let Some(srcs) = info
            .positions
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|c| c.srcs.clone())
        {
            self.feed(id, &srcs);
        }
    }

    /// `l = r` on two tenant columns: values flow into whichever side is
    /// local and may be constrained here.
    fn edge(
        &mut self,
        (l, l_local): (usize, bool),
        (r, r_local): (usize, bool),
        allowed: &Allowed,
    ) {
        if r_local && allowed.permits(r) {
            self.edges.push((l, r));
        }
        if l_local && allowed.permits(l) {
            self.edges.push((r, l));
        }
    }

    /// Analyses the subqueries of an expression that is not a tenant predicate.
    fn scan(&mut self, expr: &Expr) {
        let mut collector = SubqueryCollector::default();
        let _ = expr.visit(&mut collector);
        for q in collector.found {
            self.query(&q);
        }
    }

    // ----- queries ----------------------------------------------------

    fn query(&mut self, q: &Query) -> ProjInfo {
        let has_ctes = q.with.is_some();
        if let Some(with) = &q.with {
            self.ctes.push(Vec::new());
            for cte in &with.cte_tables {
                let info = self.query(&cte.query);
                let exports = rename(
                    info,
                    &cte.alias
                        .columns
                        .iter()
                        .map(|c| ident(&c.name))
                        .collect::<Vec<_>>(),
                );
                if let Some(frame) = self.ctes.last_mut() {
                    frame.push((ident(&cte.alias.name), exports));
                }
            }
        }
        let info = self.set_expr(&q.body);
        if let Some(order_by) = &q.order_by {
            let _ = order_by; // ORDER BY cannot change which rows are read.
        }
        if has_ctes {
            self.ctes.pop();
        }
        info
    }

    fn set_expr(&mut self, body: &SetExpr) -> ProjInfo {
        match body {
            SetExpr::Select(select) => self.select(select),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                let l = self.set_expr(left);
                let r = self.set_expr(right);
                let positions = match (l.positions, r.positions) {
                    (Some(l), Some(r)) if l.len() == r.len() => Some(
                        l.into_iter()
                            .zip(r)
                            .map(|(a, b)| ProjCol {
                                name: a.name,
                                srcs: match (a.srcs, b.srcs) {
                                    (Some(mut x), Some(y)) => {
                                        x.extend(y);
                                        Some(x)
                                    }
                                    _ => None,
                                },
                            })
                            .collect(),
                    ),
                    _ => None,
                };
                let exports = exports_of(&positions);
                ProjInfo { positions, exports }
            }
            SetExpr::Values(values) => {
                let width = values.rows.iter().map(Vec::len).min().unwrap_or(0);
                let mut positions = Vec::with_capacity(width);
                for i in 0..width {
                    let srcs: Option<Vec<Src>> = values
                        .rows
                        .iter()
                        .map(|row| tenant_value(&row[i]).map(Src::Value))
                        .collect();
                    positions.push(ProjCol { name: None, srcs });
                }
                for row in &values.rows {
                    for e in row {
                        self.scan(e);
                    }
                }
                ProjInfo {
                    positions: Some(positions),
                    exports: Vec::new(),
                }
            }
            SetExpr::Insert(stmt) | SetExpr::Update(stmt) | SetExpr::Delete(stmt) => {
                self.dml(stmt).unwrap_or_default()
            }
            SetExpr::Table(t) => {
                let name = match (&t.schema_name, &t.table_name) {
                    (Some(s), Some(n)) => format!("{s}.{n}"),
                    (None, Some(n)) => n.clone(),
                    _ => String::new(),
                }
                .to_lowercase();
                self.scopes.push(Scope::default());
                self.plain_table(&name, None);
                let info = self.wildcard_exports(None);
                self.scopes.pop();
                info
            }
            SetExpr::Merge(stmt) => {
                self.dml(stmt);
                ProjInfo::default()
            }
        }
    }

    fn select(&mut self, s: &Select) -> ProjInfo {
        self.scopes.push(Scope::default());
        for twj in &s.from {
            self.table_with_joins(twj);
        }
        if let Some(w) = &s.selection {
            self.predicate(w, &Allowed::All);
        }
        if s.into.is_some() {
            self.wrote = true;
        }
        let info = self.projection(&s.projection);
        if let Some(h) = &s.having {
            self.scan(h);
        }
        if let sqlparser::ast::GroupByExpr::Expressions(exprs, _) = &s.group_by {
            for e in exprs {
                self.scan(e);
            }
        }
        self.scopes.pop();
        info
    }

    fn projection(&mut self, items: &[SelectItem]) -> ProjInfo {
        let mut positions = Some(Vec::new());
        let mut wildcard_exports = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    let name = match item {
                        SelectItem::ExprWithAlias { alias, .. } => Some(ident(alias)),
                        _ => implicit_name(e),
                    };
                    let srcs = if let Some(v) = tenant_value(e) {
                        Some(vec![Src::Value(v)])
                    } else {
                        self.resolve(e).map(|(id, _)| vec![Src::Binding(id)])
                    };
                    self.scan(e);
                    if let Some(p) = positions.as_mut() {
                        p.push(ProjCol { name, srcs });
                    }
                }
                SelectItem::Wildcard(_) => {
                    positions = None;
                    wildcard_exports.extend(self.wildcard_exports(None).exports);
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    positions = None;
                    if let SelectItemQualifiedWildcardKind::ObjectName(name) = kind {
                        let parts = object_parts(name);
                        wildcard_exports.extend(
                            self.wildcard_exports(parts.last().map(String::as_str))
                                .exports,
                        );
                    }
                }
            }
        }
        let mut exports = exports_of(&positions);
        exports.extend(wildcard_exports);
        ProjInfo { positions, exports }
    }

    /// Tenant columns `*` (or `q.*`) exposes from the innermost scope.
    fn wildcard_exports(&self, qualifier: Option<&str>) -> ProjInfo {
        let Some(scope) = self.scopes.last() else {
            return ProjInfo::default();
        };
        let ids: Vec<usize> = match qualifier {
            None => scope.local.clone(),
            Some(q) => scope
                .names
                .iter()
                .filter(|(n, _)| n == q)
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect(),
        };
        let mut exports: Vec<(String, Vec<Src>)> = Vec::new();
        for id in ids {
            let column = self.bindings[id].column.clone();
            if exports.iter().any(|(c, _)| *c == column) {
                // Two relations expose the same column name: ambiguous outside.
                exports.retain(|(c, _)| *c != column);
                continue;
            }
            exports.push((column, vec![Src::Binding(id)]));
        }
        ProjInfo {
            positions: None,
            exports,
        }
    }

    // ----- FROM -------------------------------------------------------

    fn table_with_joins(&mut self, twj: &TableWithJoins) -> Vec<usize> {
        let mut left = self.table_factor(&twj.relation);
        for join in &twj.joins {
            let right = self.table_factor(&join.relation);
            let (constraint, allowed) = match &join.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) | JoinOperator::CrossJoin(c) => {
                    (Some(c), Allowed::All)
                }
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => {
                    (Some(c), Allowed::Only(right.clone()))
                }
                JoinOperator::Right(c) | JoinOperator::RightOuter(c) => {
                    (Some(c), Allowed::Only(left.clone()))
                }
                JoinOperator::FullOuter(c) => (Some(c), Allowed::Only(Vec::new())),
                _ => (None, Allowed::Only(Vec::new())),
            };
            match constraint {
                Some(JoinConstraint::On(e)) => self.predicate(e, &allowed),
                Some(JoinConstraint::Using(cols)) => {
                    let cols: Vec<String> = cols
                        .iter()
                        .filter_map(|c| object_parts(c).last().cloned())
                        .collect();
                    self.join_edges(&left, &right, |c| cols.iter().any(|x| x == c), &allowed);
                }
                Some(JoinConstraint::Natural) => self.join_edges(&left, &right, |_| true, &allowed),
                _ => {}
            }
            left.extend(right);
        }
        left
    }

    /// Equality edges between same-named tenant columns of two join sides.
    fn join_edges(
        &mut self,
        left: &[usize],
        right: &[usize],
        column_ok: impl Fn(&str) -> bool,
        allowed: &Allowed,
    ) {
        for &l in left {
            for &r in right {
                let (lc, rc) = (&self.bindings[l].column, &self.bindings[r].column);
                if lc == rc && column_ok(lc) {
                    self.edge((l, true), (r, true), allowed);
                }
            }
        }
    }

    fn table_factor(&mut self, tf: &TableFactor) -> Vec<usize> {
        match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let parts = object_parts(name);
                let alias_name = alias.as_ref().map(|a| ident(&a.name));
                if args.is_some() {
                    // A set-returning function written as a table: opaque.
                    self.register(alias_name.unwrap_or_default(), Vec::new());
                    return Vec::new();
                }
                if parts.len() == 1 {
                    let cte = self
                        .ctes
                        .iter()
                        .rev()
                        .flat_map(|frame| frame.iter().rev())
                        .find(|(n, _)| *n == parts[0])
                        .map(|(_, exports)| exports.clone());
                    if let Some(exports) = cte {
                        let ids = self.virtual_bindings(&parts[0], &exports);
                        self.register(alias_name.unwrap_or_else(|| parts[0].clone()), ids.clone());
                        return ids;
                    }
                }
                let renamed = alias.as_ref().is_some_and(|a| !a.columns.is_empty());
                self.plain_table(&parts.join("."), alias_name.map(|a| (a, renamed)))
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let info = self.query(subquery);
                let (name, columns) = match alias {
                    Some(a) => (
                        ident(&a.name),
                        a.columns.iter().map(|c| ident(&c.name)).collect(),
                    ),
                    None => (String::new(), Vec::new()),
                };
                let exports = rename(info, &columns);
                let ids = self.virtual_bindings(&name, &exports);
                self.register(name, ids.clone());
                ids
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let ids = self.table_with_joins(table_with_joins);
                if let Some(a) = alias {
                    self.register(ident(&a.name), Vec::new());
                }
                ids
            }
            other => {
                // Table functions, UNNEST, …: analyse what they read, stay opaque.
                let mut collector = SubqueryCollector::default();
                let _ = other.visit(&mut collector);
                for q in collector.found {
                    self.query(&q);
                }
                let mut scoped = None;
                let _ = visit_relations(other, |rel| {
                    let (schema, table, display) = table_name(rel);
                    if self
                        .tenancy
                        .column_of_parts(schema.as_deref(), &table)
                        .is_some()
                    {
                        scoped = Some(display);
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                });
                if let Some(t) = scoped {
                    self.refuse(
                        Some(&t),
                        "this FROM item form is not supported for tenant-scoped tables",
                        "use a plain table reference with a tenant predicate",
                    );
                }
                Vec::new()
            }
        }
    }

    /// A named table in FROM (or a DML target). `alias`: (alias, renames columns).
    fn plain_table(&mut self, dotted: &str, alias: Option<(String, bool)>) -> Vec<usize> {
        let parts: Vec<&str> = dotted.split('.').collect();
        let table = parts.last().copied().unwrap_or_default().to_string();
        let schema = (parts.len() >= 2).then(|| parts[parts.len() - 2].to_string());
        let renamed = alias.as_ref().is_some_and(|(_, r)| *r);
        let name = alias.map(|(a, _)| a).unwrap_or_else(|| table.clone());
        if let Some(column) = self.tenancy.column_of_parts(schema.as_deref(), &table) {
            // Renamed columns (`AS c(a, b)`): the tenant column's new name is unknown.
            let column = if renamed {
                String::new()
            } else {
                column.to_string()
            };
            if !self.scoped_tables.iter().any(|t| t == dotted) {
                self.scoped_tables.push(dotted.to_string());
            }
            let id = self.new_binding(dotted, &column, true);
            self.register(name, vec![id]);
            vec![id]
        } else {
            if self.tenancy.is_global_parts(schema.as_deref(), &table) {
                self.reads_global = true;
            }
            self.register(name, Vec::new());
            Vec::new()
        }
    }

    // ----- DML --------------------------------------------------------

    /// INSERT/UPDATE/DELETE (also inside CTEs); returns the RETURNING projection.
    fn dml(&mut self, stmt: &Statement) -> Option<ProjInfo> {
        self.wrote = true;
        match stmt {
            Statement::Insert(insert) => Some(self.insert(insert)),
            Statement::Update {
                table,
                assignments,
                from,
                selection,
                returning,
                ..
            } => {
                self.scopes.push(Scope::default());
                let targets = self.table_with_joins(table);
                self.mark_global_write(&table.relation);
                if let Some(from) = from {
                    let (UpdateTableFromKind::BeforeSet(list)
                    | UpdateTableFromKind::AfterSet(list)) = from;
                    for twj in list {
                        self.table_with_joins(twj);
                    }
                }
                if let Some(w) = selection {
                    self.predicate(w, &Allowed::All);
                }
                let target = targets.first().copied();
                self.tenant_assignments(target, assignments, None);
                let info = returning
                    .as_ref()
                    .map(|r| self.projection(r))
                    .unwrap_or_default();
                self.scopes.pop();
                Some(info)
            }
            Statement::Delete(delete) => Some(self.delete(delete)),
            other => {
                // MERGE: not analysed; refuse if it touches tenant-scoped tables.
                self.opaque_statement(other, "MERGE is not supported on tenant-scoped tables");
                None
            }
        }
    }

    fn mark_global_write(&mut self, relation: &TableFactor) {
        if let TableFactor::Table { name, .. } = relation {
            let (schema, table, _) = table_name(name);
            if self.tenancy.is_global_parts(schema.as_deref(), &table) {
                self.writes_global = true;
            }
        }
    }

    fn delete(&mut self, delete: &Delete) -> ProjInfo {
        self.scopes.push(Scope::default());
        let (FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables)) = &delete.from;
        for twj in tables {
            self.table_with_joins(twj);
            self.mark_global_write(&twj.relation);
        }
        if let Some(using) = &delete.using {
            for twj in using {
                self.table_with_joins(twj);
            }
        }
        if let Some(w) = &delete.selection {
            self.predicate(w, &Allowed::All);
        }
        let info = delete
            .returning
            .as_ref()
            .map(|r| self.projection(r))
            .unwrap_or_default();
        self.scopes.pop();
        info
    }

    fn insert(&mut self, insert: &Insert) -> ProjInfo {
        let TableObject::TableName(name) = &insert.table else {
            self.opaque_statement(
                &Statement::Insert(insert.clone()),
                "INSERT into a table function is not supported",
            );
            return ProjInfo::default();
        };
        let (schema, table, display) = table_name(name);
        let source = insert.source.as_ref().map(|q| self.query(q));
        self.scopes.push(Scope::default());
        let alias = insert.table_alias.as_ref().map(|a| (ident(a), false));
        let ids = self.plain_table(&display, alias);
        if self.tenancy.is_global_parts(schema.as_deref(), &table) {
            self.writes_global = true;
        }
        if let Some(&target) = ids.first() {
            let column = self.bindings[target].column.clone();
            let hint =
                format!("list the columns, including {column}, and give it a literal or parameter");
            let columns: Vec<String> = insert.columns.iter().map(ident).collect();
            match (&source, columns.iter().position(|c| *c == column)) {
                (None, _) => self.refuse(Some(&display), format!("INSERT without values for tenant column {column}"), hint),
                (Some(_), None) if columns.is_empty() => self.refuse(
                    Some(&display),
                    "INSERT without a column list: the tenant column's position is unknown",
                    hint,
                ),
                (Some(_), None) => self.refuse(
                    Some(&display),
                    format!("INSERT does not set tenant column {column}"),
                    hint,
                ),
                (Some(info), Some(index)) => match &info.positions {
                    None => self.refuse(
                        Some(&display),
                        "INSERT … SELECT * : the tenant column's source is unknown",
                        "list the selected columns",
                    ),
                    Some(positions) => match positions.get(index).and_then(|c| c.srcs.clone()) {
                        Some(srcs) => self.feed(target, &srcs),
                        None => self.refuse(
                            Some(&display),
                            format!("the value of tenant column {column} is not a literal, a parameter or the tenant column of a tenant-scoped source"),
                            hint,
                        ),
                    },
                },
            }
            if let Some(OnInsert::OnConflict(on_conflict)) = &insert.on {
                if let OnConflictAction::DoUpdate(update) = &on_conflict.action {
                    let target_has_tenant = matches!(&on_conflict.conflict_target,
                        Some(ConflictTarget::Columns(cols)) if cols.iter().any(|c| ident(c) == column));
                    self.register("excluded".to_string(), Vec::new());
                    self.tenant_assignments(
                        Some(target),
                        &update.assignments,
                        Some(target_has_tenant),
                    );
                    if let Some(w) = &update.selection {
                        self.scan(w);
                    }
                }
            }
        } else if let Some(OnInsert::OnConflict(on_conflict)) = &insert.on {
            if let OnConflictAction::DoUpdate(update) = &on_conflict.action {
                for a in &update.assignments {
                    self.scan(&a.value);
                }
            }
        }
        let info = insert
            .returning
            .as_ref()
            .map(|r| self.projection(r))
            .unwrap_or_default();
        self.scopes.pop();
        info
    }

    /// SET clauses of UPDATE / ON CONFLICT DO UPDATE. `on_conflict`: whether
    /// the conflict target includes the tenant column (`None` for UPDATE).
    fn tenant_assignments(
        &mut self,
        target: Option<usize>,
        assignments: &[Assignment],
        on_conflict: Option<bool>,
    ) {
        let target = target.filter(|t| self.bindings[*t].checked);
        for a in assignments {
            self.scan(&a.value);
            let Some(t) = target else { continue };
            let column = self.bindings[t].column.clone();
            let table = self.bindings[t].table.clone();
            let names: Vec<String> = match &a.target {
                AssignmentTarget::ColumnName(n) => {
                    object_parts(n).last().cloned().into_iter().collect()
                }
                AssignmentTarget::Tuple(ns) => ns
                    .iter()
                    .filter_map(|n| object_parts(n).last().cloned())
                    .collect(),
            };
            if !names.contains(&column) {
                continue;
            }
            let hint = format!("do not change {column}; rows cannot move between tenants");
            if matches!(a.target, AssignmentTarget::Tuple(_)) {
                self.refuse(
                    Some(&table),
                    format!("cannot assign tenant column {column} in a column tuple"),
                    hint,
                );
                continue;
            }
            match on_conflict {
                Some(target_has_tenant) => {
                    let same = matches!(column_ref(&a.value), Some((q, c)) if c == column
                        && (q.as_deref() == Some("excluded") || self.resolve(&a.value).is_some_and(|(id, _)| id == t)));
                    if !(target_has_tenant && same) {
                        self.refuse(
                            Some(&table),
                            format!("ON CONFLICT DO UPDATE may not change tenant column {column}"),
                            hint,
                        );
                    }
                }
                None => {
                    if self.resolve(&a.value).is_some_and(|(id, _)| id == t) {
                        continue;
                    }
                    match tenant_value(&a.value) {
                        Some(v) => {
                            let b = &self.bindings[t];
                            let already = matches!(&v, TenantSource::Literal(_))
                                && b.values.len() == 1
                                && b.values[0] == v;
                            if !already && !self.assignments.contains(&v) {
                                self.assignments.push(v);
                            }
                        }
                        None => self.refuse(
                            Some(&table),
                            format!(
                                "UPDATE may not set tenant column {column} to a computed value"
                            ),
                            hint,
                        ),
                    }
                }
            }
        }
    }

    /// A statement we do not analyse: refused when it names a tenant-scoped table.
    fn opaque_statement(&mut self, stmt: &Statement, reason: &str) {
        let mut scoped = None;
        let _ = visit_relations(stmt, |rel| {
            let (schema, table, display) = table_name(rel);
            if self
                .tenancy
                .column_of_parts(schema.as_deref(), &table)
                .is_some()
            {
                scoped = Some(display);
                return ControlFlow::Break(());
            } else if self.tenancy.is_global_parts(schema.as_deref(), &table) {
                self.writes_global = true;
            }
            ControlFlow::Continue(())
        });
        if let Some(t) = scoped {
            self.refuse(
                Some(&t),
                reason,
                "use INSERT/UPDATE/DELETE with a tenant predicate",
            );
        }
    }

    // ----- result -----------------------------------------------------

    fn finish(mut self, kind: StatementKind) -> StatementPlan {
        // Propagate values along equality edges to a fixed point.
        for _ in 0..=self.bindings.len() {
            let mut changed = false;
            for &(from, to) in &self.edges {
                if from == to || !self.bindings[from].constrained {
                    continue;
                }
                let values = self.bindings[from].values.clone();
                let target = &mut self.bindings[to];
                if !target.constrained {
                    target.constrained = true;
                    changed = true;
                }
                for v in values {
                    if !target.values.contains(&v) {
                        target.values.push(v);
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut values: Vec<TenantSource> = Vec::new();
        let mut unconstrained = None;
        let mut any_checked = false;
        for b in self.bindings.iter().filter(|b| b.checked) {
            any_checked = true;
            if !b.constrained && unconstrained.is_none() {
                unconstrained = Some(b.table.clone());
            }
            for v in &b.values {
                if !values.contains(v) {
                    values.push(v.clone());
                }
            }
        }
        let tenant = if let Some(refusal) = self.refusals.into_iter().next() {
            refusal
        } else if self.writes_global && any_checked {
            TenantRequirement::refuse(
                self.scoped_tables.first().map(String::as_str),
                "a statement that writes a global table may not read tenant-scoped tables (it would copy tenant data to every region)",
                "split the statement",
            )
        } else if let Some(table) = unconstrained {
            TenantRequirement::Unconstrained { table, values }
        } else if any_checked {
            TenantRequirement::Values(values)
        } else {
            TenantRequirement::None
        };
        StatementPlan {
            kind,
            tenant,
            comment_tenant: None,
            writes_global: self.writes_global,
            reads_global: self.reads_global,
            tenant_assignments: self.assignments,
            scoped_tables: self.scoped_tables,
            crypto: super::CryptoPlan::default(),
            cursor: None,
        }
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(inner) => strip(inner),
        Expr::Cast { expr, .. } => strip(expr),
        other => other,
    }
}

/// Named exports of positional columns.
fn exports_of(positions: &Option<Vec<ProjCol>>) -> Vec<(String, Vec<Src>)> {
    positions
        .iter()
        .flatten()
        .filter_map(|c| Some((c.name.clone()?, c.srcs.clone()?)))
        .collect()
}

/// Exports of a derived table / CTE, after `AS s(a, b)` column renaming.
fn rename(info: ProjInfo, columns: &[String]) -> Vec<(String, Vec<Src>)> {
    if columns.is_empty() {
        return info.exports;
    }
    match info.positions {
        Some(positions) => positions
            .into_iter()
            .zip(columns)
            .filter_map(|(c, name)| Some((name.clone(), c.srcs?)))
            .collect(),
        // `SELECT *` renamed positionally: which column got which name is unknown.
        None => Vec::new(),
    }
}

/// Analyses one parsed statement.
pub(crate) fn plan_statement(stmt: &Statement, tenancy: &Tenancy) -> StatementPlan {
    let mut w = Walker::new(tenancy);
    match stmt {
        Statement::Query(q) => {
            if let Some(plan) = session::plan_tenant_function(q) {
                return plan;
            }
            if q.visit(&mut SettingFunctionFinder).is_break() {
                return setting_function_refusal();
            }
            w.query(q);
            let kind = if w.wrote {
                StatementKind::Write
            } else {
                StatementKind::Read
            };
            w.finish(kind)
        }
        Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Merge { .. } => {
            if stmt.visit(&mut SettingFunctionFinder).is_break() {
                return setting_function_refusal();
            }
            w.dml(stmt);
            w.finish(StatementKind::Write)
        }
        Statement::Truncate { table_names, .. } => {
            for t in table_names {
                let (schema, table, display) = table_name(&t.name);
                if tenancy.column_of_parts(schema.as_deref(), &table).is_some() {
                    w.refuse(
                        Some(&display),
                        "TRUNCATE of a tenant-scoped table would remove every tenant's rows",
                        "use DELETE … WHERE tenant predicate",
                    );
                } else if tenancy.is_global_parts(schema.as_deref(), &table) {
                    w.writes_global = true;
                }
            }
            w.finish(StatementKind::Write)
        }
        Statement::Copy {
            source, to, target, ..
        } => copy(w, source, *to, target),
        Statement::Set(set) => session::plan_set(set),
        Statement::ShowVariable { variable } => session::plan_show(variable),
        Statement::StartTransaction { .. } => StatementPlan::new(StatementKind::Begin),
        Statement::Commit { .. } => StatementPlan::new(StatementKind::Commit),
        Statement::Rollback {
            savepoint: None, ..
        } => StatementPlan::new(StatementKind::Rollback),
        Statement::Rollback {
            savepoint: Some(_), ..
        } => StatementPlan::new(StatementKind::RollbackToSavepoint),
        Statement::Savepoint { .. } => StatementPlan::new(StatementKind::Savepoint),
        Statement::ReleaseSavepoint { .. } => StatementPlan::new(StatementKind::Release),
        Statement::Discard { object_type } => StatementPlan::new(StatementKind::SessionState {
            resets_tenant: matches!(object_type, sqlparser::ast::DiscardObject::ALL),
        }),
        Statement::Deallocate { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::NOTIFY { .. } => StatementPlan::new(StatementKind::SessionState {
            resets_tenant: false,
        }),
        Statement::Prepare { statement, .. } => {
            // The prepared text's needs are those of each later EXECUTE.
            let inner = plan_statement(statement, tenancy);
            StatementPlan {
                kind: StatementKind::SessionState {
                    resets_tenant: false,
                },
                ..inner
            }
        }
        Statement::Execute { .. } => {
            let mut plan = StatementPlan::new(StatementKind::Other);
            plan.tenant = TenantRequirement::refuse(
                None,
                "EXECUTE of an SQL-level prepared statement cannot be placed",
                "use protocol-level prepared statements (Parse/Bind/Execute)",
            );
            plan
        }
        Statement::Explain {
            statement, analyze, ..
        } => {
            let inner = plan_statement(statement, tenancy);
            let kind = match inner.kind {
                StatementKind::Write if *analyze => StatementKind::Write,
                StatementKind::Read | StatementKind::Write => StatementKind::Read,
                _ => StatementKind::Other,
            };
            StatementPlan { kind, ..inner }
        }
        Statement::Declare { stmts } => {
            let mut cursor = None;
            for d in stmts {
                if let Some(q) = &d.for_query {
                    w.query(q);
                    if let [name] = d.names.as_slice() {
                        cursor = Some(super::CursorOp::Declare {
                            name: ident(name),
                            hold: d.hold == Some(true),
                        });
                    }
                }
            }
            let mut plan = w.finish(StatementKind::Read);
            plan.cursor = cursor;
            plan
        }
        Statement::Fetch {
            name, into: None, ..
        } => StatementPlan {
            cursor: Some(super::CursorOp::Fetch { name: ident(name) }),
            ..StatementPlan::new(StatementKind::Other)
        },
        Statement::Close { cursor } => StatementPlan {
            cursor: Some(super::CursorOp::Close {
                name: match cursor {
                    sqlparser::ast::CloseCursor::All => None,
                    sqlparser::ast::CloseCursor::Specific { name } => Some(ident(name)),
                },
            }),
            ..StatementPlan::new(StatementKind::Other)
        },
        s if is_ddl(s) => StatementPlan::new(StatementKind::Ddl),
        other => {
            w.opaque_statement(
                other,
                "this statement type is not supported on tenant-scoped tables",
            );
            let writes_global = w.writes_global;
            let mut plan = w.finish(StatementKind::Other);
            // Naming a global table in an unknown statement is not a write.
            plan.writes_global = false;
            plan.reads_global = writes_global;
            plan
        }
    }
}

fn setting_function_refusal() -> StatementPlan {
    let mut plan = StatementPlan::new(StatementKind::Other);
    plan.tenant = TenantRequirement::refuse(
        None,
        "regionguard.* settings live in the proxy and cannot be used inside a statement",
        "use SET/SHOW regionguard.tenant as separate statements",
    );
    plan
}

fn copy(mut w: Walker<'_>, source: &CopySource, to: bool, target: &CopyTarget) -> StatementPlan {
    match source {
        CopySource::Query(q) => {
            w.query(q);
            let mut plan = w.finish(StatementKind::Other);
            plan.kind = StatementKind::Copy {
                table: None,
                from_stdin: false,
                columns: Vec::new(),
                tenant_column: None,
            };
            plan
        }
        CopySource::Table {
            table_name: name,
            columns,
        } => {
            let (schema, table, display) = table_name(name);
            let columns: Vec<String> = columns.iter().map(ident).collect();
            let tenant_column = w
                .tenancy
                .column_of_parts(schema.as_deref(), &table)
                .map(std::borrow::Cow::into_owned);
            let global = w.tenancy.is_global_parts(schema.as_deref(), &table);
            let from_stdin = !to && matches!(target, CopyTarget::Stdin);
            let mut plan = StatementPlan::new(StatementKind::Copy {
                table: Some(display.clone()),
                from_stdin,
                columns: columns.clone(),
                tenant_column: tenant_column
                    .as_ref()
                    .and_then(|c| columns.iter().position(|x| x == c)),
            });
            if tenant_column.is_some() {
                plan.scoped_tables.push(display.clone());
                plan.tenant = if to {
                    TenantRequirement::Unconstrained {
                        table: display,
                        values: Vec::new(),
                    }
                } else if from_stdin {
                    TenantRequirement::PerRow { table: display }
                } else {
                    TenantRequirement::refuse(
                        Some(&display),
                        "COPY FROM a server file or program into a tenant-scoped table cannot be checked",
                        "use COPY … FROM STDIN",
                    )
                };
            } else if global {
                plan.reads_global = to;
                plan.writes_global = !to;
            }
            plan
        }
    }
}

fn is_ddl(s: &Statement) -> bool {
    matches!(
        s,
        Statement::CreateTable(_)
            | Statement::CreateVirtualTable { .. }
            | Statement::CreateIndex(_)
            | Statement::CreateRole { .. }
            | Statement::CreatePolicy { .. }
            | Statement::AlterTable { .. }
            | Statement::AlterSchema(_)
            | Statement::AlterIndex { .. }
            | Statement::AlterView { .. }
            | Statement::AlterType(_)
            | Statement::AlterRole { .. }
            | Statement::AlterPolicy { .. }
            | Statement::Drop { .. }
            | Statement::DropFunction { .. }
            | Statement::DropDomain(_)
            | Statement::DropProcedure { .. }
            | Statement::DropPolicy { .. }
            | Statement::DropTrigger(_)
            | Statement::CreateExtension { .. }
            | Statement::DropExtension { .. }
            | Statement::Comment { .. }
            | Statement::CreateSchema { .. }
            | Statement::CreateDatabase { .. }
            | Statement::CreateFunction(_)
            | Statement::CreateTrigger(_)
            | Statement::CreateProcedure { .. }
            | Statement::CreateSequence { .. }
            | Statement::CreateDomain(_)
            | Statement::CreateType { .. }
            | Statement::CreateView { .. }
            | Statement::Grant { .. }
            | Statement::Revoke { .. }
            | Statement::RenameTable(_)
            | Statement::CreateUser(_)
    )
}
