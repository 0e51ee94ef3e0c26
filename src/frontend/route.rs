//! Placing one statement: which region it must run in, or why it cannot run.
//!
//! Sources of the tenant, most explicit first: a `regionguard.tenant`
//! comment in the statement, the session's `regionguard.tenant` (SET LOCAL
//! over SET over the startup option), and the tenant column's values in the
//! statement itself. Sources that disagree are a refusal, never a choice.

use super::tenant_value;
use crate::protocol::error::PgError;
use crate::protocol::frontend_msg::Bind;
use crate::server::state::Shared;
use crate::sql::{StatementPlan, TenantRequirement, TenantSource};
use std::sync::Arc;

/// SQLSTATE for residency refusals: insufficient privilege.
pub const RESIDENCY: &str = "42501";

/// A residency refusal with its hint. Messages name tables, columns and
/// regions, never tenant ids or other values from the statement.
pub fn refusal(message: impl Into<String>, hint: impl Into<String>) -> PgError {
    PgError::error(RESIDENCY, message).with_hint(hint)
}

/// Where a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Touches no tenant data: the session's region serves it.
    Neutral,
    /// Must run in this region.
    Region(Arc<str>),
}

/// Bind parameters of an extended-protocol execution, with the types the
/// statement was prepared with (0 = unknown).
pub struct Params<'a> {
    pub bind: &'a Bind<'a>,
    pub types: &'a [u32],
}

/// Decides where `plan` runs, and returns the statement's tenants (empty
/// when it touches no tenant data; the keys of classified columns are
/// theirs). `session_tenant` is the effective `regionguard.tenant` of the
/// session (SET LOCAL, SET or startup option).
pub async fn place(
    shared: &Shared,
    plan: &StatementPlan,
    params: Option<&Params<'_>>,
    session_tenant: Option<&str>,
) -> Result<(Placement, Vec<String>), PgError> {
    let explicit = match (plan.comment_tenant.as_deref(), session_tenant) {
        (Some(c), Some(s)) if c != s => {
            return Err(refusal(
                "the statement's regionguard.tenant comment and the session's regionguard.tenant name different tenants",
                "use one tenant per statement: drop the comment or change the session setting",
            ))
        }
        (Some(c), _) => Some(c),
        (None, s) => s,
    };
    let table_hint = |table: &str| {
        match shared.tenancy().column_of(table) {
            // A view that does not show its tenant column.
            Some(c) if c.is_empty() => format!(
                "{table} does not show its tenant column: SET regionguard.tenant, or add a /* regionguard.tenant = '…' */ comment"
            ),
            c => format!(
                "add {}.{} = … to the statement, or SET regionguard.tenant",
                table,
                c.unwrap_or(std::borrow::Cow::Borrowed("tenant_id"))
            ),
        }
    };
    let tenants: Vec<String> = match &plan.tenant {
        TenantRequirement::Refuse {
            table,
            reason,
            hint,
        } => {
            let message = match table {
                Some(t) => format!("refused statement on table {t}: {reason}"),
                None => format!("refused statement: {reason}"),
            };
            return Err(refusal(message, hint.clone()));
        }
        // COPY FROM STDIN: placed like a statement without tenant data (an
        // explicit tenant's region, else the session's); each row's tenant
        // is then checked against that region (frontend::copy_in).
        TenantRequirement::PerRow { .. } => match explicit {
            Some(t) => vec![t.to_string()],
            None => return Ok((Placement::Neutral, Vec::new())),
        },
        TenantRequirement::None => match explicit {
            Some(t) if plan.comment_tenant.is_some() => vec![t.to_string()],
            _ => return Ok((Placement::Neutral, Vec::new())),
        },
        TenantRequirement::Values(values) => {
            let found = resolve(values, params)?;
            if let Some(e) = explicit {
                if found.iter().any(|t| t != e) {
                    return Err(disagree(&plan.scoped_tables));
                }
            }
            found
        }
        TenantRequirement::Unconstrained { table, values } => {
            let Some(e) = explicit else {
                return Err(refusal(
                    format!("cannot tell which tenant a statement on tenant-scoped table {table} belongs to"),
                    table_hint(table),
                ));
            };
            if resolve(values, params)?.iter().any(|t| t != e) {
                return Err(disagree(&plan.scoped_tables));
            }
            vec![e.to_string()]
        }
    };
    let assigned = resolve(&plan.tenant_assignments, params)?;
    if assigned.iter().any(|a| tenants.iter().any(|t| t != a))
        || (!assigned.is_empty() && tenants.len() != 1)
    {
        return Err(refusal(
            "an UPDATE may not move rows to another tenant",
            "keep the tenant column unchanged; copy the rows through the application instead",
        ));
    }
    let region = region_of_all(shared, &tenants).await?;
    Ok((Placement::Region(region), tenants))
}

/// Whether placing `plan` needs bind parameters (a tenant from `$n`).
pub fn needs_params(plan: &StatementPlan) -> bool {
    let param = |v: &TenantSource| matches!(v, TenantSource::Param(_));
    let in_requirement = match &plan.tenant {
        TenantRequirement::Values(v) | TenantRequirement::Unconstrained { values: v, .. } => {
            v.iter().any(param)
        }
        _ => false,
    };
    in_requirement || plan.tenant_assignments.iter().any(param)
}

fn disagree(tables: &[String]) -> PgError {
    refusal(
        format!(
            "the tenant in the statement{} differs from the session's or comment's regionguard.tenant",
            if tables.is_empty() { String::new() } else { format!(" (table {})", tables.join(", ")) }
        ),
        "a statement may only touch the tenant the session is set to",
    )
}

fn resolve(values: &[TenantSource], params: Option<&Params<'_>>) -> Result<Vec<String>, PgError> {
    values
        .iter()
        .map(|v| match v {
            TenantSource::Literal(s) => Ok(s.clone()),
            TenantSource::Param(n) => {
                let Some(p) = params else {
                    return Err(refusal(
                        format!("the tenant comes from parameter ${n}, which a simple query cannot bind"),
                        "use the extended protocol (a prepared statement) or a literal tenant id",
                    ));
                };
                let ty = p.types.get(n.saturating_sub(1)).copied().unwrap_or(0);
                tenant_value::from_param(p.bind, *n, ty)
            }
        })
        .collect()
}

/// The one region all `tenants` live in.
pub async fn region_of_all(shared: &Shared, tenants: &[String]) -> Result<Arc<str>, PgError> {
    let mut region: Option<Arc<str>> = None;
    for t in tenants {
        let r = region_of(shared, t).await?;
        match &region {
            None => region = Some(r),
            Some(prev) if *prev != r => return Err(refusal(
                format!("the statement touches tenants in two regions ({prev} and {r})"),
                "send one statement per region; a statement may only touch one region's tenants",
            )),
            Some(_) => {}
        }
    }
    region.ok_or_else(|| {
        refusal(
            "no tenant found for the statement",
            "add a tenant predicate or SET regionguard.tenant",
        )
    })
}

/// The region serving `tenant`, checked against the regions this proxy serves.
pub async fn region_of(shared: &Shared, tenant: &str) -> Result<Arc<str>, PgError> {
    let found = shared.directory.region_of(tenant).await.map_err(|e| {
        PgError::error(
            crate::protocol::error::sqlstate::CONNECTION_EXCEPTION,
            e.to_string(),
        )
        .with_hint("the tenant directory's control database must be reachable to place new tenants")
    })?;
    let Some(region) = found else {
        return Err(refusal(
            "the tenant is not in the tenant directory",
            "add the tenant to [tenants] in the config or to the directory table",
        ));
    };
    match shared.regions.get_key_value(&*region) {
        Some((name, _)) => Ok(name.clone()),
        None => Err(refusal(
            format!("the tenant lives in region {region}, which this RegionGuard does not serve"),
            "connect to a RegionGuard that serves that region",
        )),
    }
}
