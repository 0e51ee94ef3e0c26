//! Session and transaction statements: the tenant setting the proxy answers
//! itself, session state it must replay on every regional backend, and
//! transaction control.

use super::predicates::{
    ident, is_regionguard_setting_literal, is_tenant_setting_literal, plain_args, tenant_value,
};
use super::{StatementKind, StatementPlan, TenantRequirement, TenantSource, TENANT_KEY};
use sqlparser::ast::{ContextModifier, Expr, ObjectName, Query, SelectItem, Set, SetExpr, Value};

fn refused(kind: StatementKind, reason: &str, hint: &str) -> StatementPlan {
    let mut plan = StatementPlan::new(kind);
    plan.tenant = TenantRequirement::refuse(None, reason, hint);
    plan
}

fn unknown_setting() -> StatementPlan {
    refused(
        StatementKind::SessionState {
            resets_tenant: false,
        },
        "unknown RegionGuard setting (only regionguard.tenant exists)",
        "use SET regionguard.tenant = '<tenant>'",
    )
}

/// Statements recognised from their first tokens, because sqlparser does not
/// parse them (two-phase commit, RESET, ABORT).
pub(crate) fn plan_from_head(head: &[String]) -> Option<StatementPlan> {
    let word = |i: usize| head.get(i).map(String::as_str).unwrap_or("");
    match (word(0), word(1)) {
        ("PREPARE", "TRANSACTION") | ("COMMIT", "PREPARED") | ("ROLLBACK", "PREPARED") => {
            Some(StatementPlan::new(StatementKind::TwoPhase))
        }
        ("ABORT", _) => Some(StatementPlan::new(StatementKind::Rollback)),
        ("RESET", _) => {
            let name = head[1..].concat().to_lowercase();
            Some(if name == TENANT_KEY {
                StatementPlan::new(StatementKind::SetTenant {
                    local: false,
                    value: None,
                })
            } else if name.starts_with("regionguard.") {
                unknown_setting()
            } else {
                StatementPlan::new(StatementKind::SessionState {
                    resets_tenant: name == "all",
                })
            })
        }
        _ => None,
    }
}

fn setting_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| p.as_ident().map(ident).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(".")
}

/// `SET …` statements.
pub(crate) fn plan_set(set: &Set) -> StatementPlan {
    let session = StatementPlan::new(StatementKind::SessionState {
        resets_tenant: false,
    });
    match set {
        Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => {
            let name = setting_name(variable);
            if name == TENANT_KEY {
                let local = matches!(scope, Some(ContextModifier::Local));
                match values.as_slice() {
                    [value] => match set_value(value) {
                        Some(value) => {
                            StatementPlan::new(StatementKind::SetTenant { local, value })
                        }
                        None => refused(
                            StatementKind::SetTenant { local, value: None },
                            "regionguard.tenant must be set to a literal",
                            "use SET regionguard.tenant = '<tenant>'",
                        ),
                    },
                    _ => refused(
                        StatementKind::SetTenant { local, value: None },
                        "regionguard.tenant takes exactly one value",
                        "use SET regionguard.tenant = '<tenant>'",
                    ),
                }
            } else if name.starts_with("regionguard.") {
                unknown_setting()
            } else {
                session
            }
        }
        Set::MultipleAssignments { assignments } => {
            if assignments
                .iter()
                .any(|a| setting_name(&a.name).starts_with("regionguard."))
            {
                unknown_setting()
            } else {
                session
            }
        }
        Set::ParenthesizedAssignments { variables, .. } => {
            if variables
                .iter()
                .any(|v| setting_name(v).starts_with("regionguard."))
            {
                unknown_setting()
            } else {
                session
            }
        }
        _ => session,
    }
}

/// The value of `SET regionguard.tenant = …`: `Some(None)` for DEFAULT.
fn set_value(value: &Expr) -> Option<Option<TenantSource>> {
    match value {
        Expr::Identifier(i)
            if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") =>
        {
            Some(None)
        }
        // `SET regionguard.tenant = acme`: Postgres takes a bare word as a string (folded).
        Expr::Identifier(i) => Some(Some(TenantSource::Literal(if i.quote_style.is_none() {
            i.value.to_lowercase()
        } else {
            i.value.clone()
        }))),
        other => tenant_value(other).map(Some),
    }
}

/// `SHOW …`.
pub(crate) fn plan_show(variable: &[sqlparser::ast::Ident]) -> StatementPlan {
    let name = variable.iter().map(ident).collect::<Vec<_>>().join(".");
    if name == TENANT_KEY {
        StatementPlan::new(StatementKind::ShowTenant)
    } else if name.starts_with("regionguard.") {
        refused(
            StatementKind::Other,
            "unknown RegionGuard setting (only regionguard.tenant exists)",
            "use SHOW regionguard.tenant",
        )
    } else {
        StatementPlan::new(StatementKind::Other)
    }
}

/// `SELECT set_config('regionguard.tenant', v, is_local)` and
/// `SELECT current_setting('regionguard.tenant')`, alone in their query.
pub(crate) fn plan_tenant_function(query: &Query) -> Option<StatementPlan> {
    if query.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    if !select.from.is_empty() || select.selection.is_some() {
        return None;
    }
    let [item] = select.projection.as_slice() else {
        return None;
    };
    let expr = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return None,
    };
    let Expr::Function(f) = expr else {
        return None;
    };
    let fname = f.name.0.last().and_then(|p| p.as_ident()).map(ident)?;
    let args = plain_args(&f.args)?;
    match (fname.as_str(), args.as_slice()) {
        ("set_config", [name, value, local]) if is_tenant_setting_literal(name) => {
            let local = match local {
                Expr::Value(v) => match &v.value {
                    Value::Boolean(b) => Some(*b),
                    Value::SingleQuotedString(s) => match s.to_ascii_lowercase().as_str() {
                        "t" | "true" | "on" | "yes" | "1" => Some(true),
                        "f" | "false" | "off" | "no" | "0" => Some(false),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            };
            let value = match value {
                Expr::Value(v) if v.value == Value::Null => Some(None),
                other => tenant_value(other).map(Some),
            };
            Some(match (local, value) {
                (Some(local), Some(value)) => {
                    StatementPlan::new(StatementKind::SetTenant { local, value })
                }
                _ => refused(
                    StatementKind::SetTenant {
                        local: false,
                        value: None,
                    },
                    "set_config('regionguard.tenant', …) needs a literal or parameter value and a literal is_local",
                    "use SET regionguard.tenant = '<tenant>'",
                ),
            })
        }
        ("set_config", [name, ..]) if is_regionguard_setting_literal(name) => {
            Some(unknown_setting())
        }
        ("current_setting", [name] | [name, _]) if is_tenant_setting_literal(name) => {
            Some(StatementPlan::new(StatementKind::ShowTenant))
        }
        _ => None,
    }
}
