//! Expression helpers: tenant values, AND chains, column references.

use super::TenantSource;
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, UnaryOperator, Value,
};

/// Lowercased identifier (Postgres folds unquoted names; quoted names are
/// compared case-insensitively too, which only ever widens what counts as
/// tenant-scoped).
pub(crate) fn ident(i: &Ident) -> String {
    i.value.to_lowercase()
}

/// A tenant value: a literal or `$n`, possibly cast (`'acme'::text`,
/// `CAST($1 AS uuid)`, `uuid '…'`) or parenthesised. Integer literals become
/// their canonical text so `7` and `007` name the same tenant.
pub(crate) fn tenant_value(expr: &Expr) -> Option<TenantSource> {
    match expr {
        Expr::Nested(inner) => tenant_value(inner),
        Expr::Cast { expr, .. } => tenant_value(expr),
        Expr::TypedString(t) => string_value(&t.value.value).map(TenantSource::Literal),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match tenant_value(expr)? {
            TenantSource::Literal(n) if n.parse::<i128>().is_ok() => {
                Some(TenantSource::Literal(format!("-{n}")))
            }
            _ => None,
        },
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => p
                .strip_prefix('$')
                .and_then(|d| d.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .map(TenantSource::Param),
            Value::Number(n, _) => Some(TenantSource::Literal(
                n.parse::<i128>()
                    .map(|i| i.to_string())
                    .unwrap_or_else(|_| n.clone()),
            )),
            other => string_value(other).map(TenantSource::Literal),
        },
        _ => None,
    }
}

fn string_value(v: &Value) -> Option<String> {
    match v {
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s) => Some(s.clone()),
        Value::DollarQuotedString(d) => Some(d.value.clone()),
        _ => None,
    }
}

/// The conjuncts of an AND chain (parentheses removed).
pub(crate) fn split_and(expr: &Expr) -> Vec<&Expr> {
    let mut out = Vec::new();
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match e {
            Expr::Nested(inner) => stack.push(inner),
            Expr::BinaryOp {
                left,
                op: sqlparser::ast::BinaryOperator::And,
                right,
            } => {
                stack.push(right);
                stack.push(left);
            }
            other => out.push(other),
        }
    }
    out
}

/// A column reference (casts and parentheses removed): qualifier (the part
/// before the column, lowercased) and column.
pub(crate) fn column_ref(expr: &Expr) -> Option<(Option<String>, String)> {
    match expr {
        Expr::Nested(inner) => column_ref(inner),
        Expr::Cast { expr, .. } => column_ref(expr),
        Expr::Identifier(i) => Some((None, ident(i))),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let column = ident(&parts[parts.len() - 1]);
            let qualifier = ident(&parts[parts.len() - 2]);
            Some((Some(qualifier), column))
        }
        _ => None,
    }
}

/// The name a projection item gets from a bare column (`t.tenant_id` → `tenant_id`).
pub(crate) fn implicit_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(i) => Some(ident(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident),
        _ => None,
    }
}

/// Positional unnamed arguments of a function call, `None` if there are others.
pub(crate) fn plain_args(args: &FunctionArguments) -> Option<Vec<&Expr>> {
    match args {
        FunctionArguments::None => Some(Vec::new()),
        FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect(),
        FunctionArguments::Subquery(_) => None,
    }
}

/// Whether `expr` is the literal `'regionguard.tenant'` (any case).
pub(crate) fn is_tenant_setting_literal(expr: &Expr) -> bool {
    matches!(tenant_value(expr), Some(TenantSource::Literal(s)) if s.eq_ignore_ascii_case(super::TENANT_KEY))
}

/// Whether `expr` is the literal `'regionguard.<anything>'`.
pub(crate) fn is_regionguard_setting_literal(expr: &Expr) -> bool {
    matches!(tenant_value(expr), Some(TenantSource::Literal(s)) if s.to_ascii_lowercase().starts_with("regionguard."))
}
