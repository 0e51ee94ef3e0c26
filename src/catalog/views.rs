//! Where each output column of a view comes from, read from the query tree
//! Postgres stored for it (`pg_rewrite.ev_action`).
//!
//! A view's RowDescription names the view's OID and column number, which
//! say nothing about the base column. Postgres records, for every output
//! column that is a plain column reference (also through subqueries, joins
//! and CTEs), the relation and column it comes from (`resorigtbl`,
//! `resorigcol`); a column that names another view is resolved through that
//! view by the caller. For a computed column the variables of its
//! expression are followed to their relations, so the catalog can tell a
//! column computed from an encrypted column (never decryptable: refused)
//! from one computed from plain columns. What cannot be followed is
//! reported as [`Source::Opaque`], which the caller treats as possibly
//! encrypted.

use super::node::{self, Node};

/// One input of a computed view column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Column `attnum` of relation `rel`.
    Column { rel: u32, attnum: i16 },
    /// A whole-row reference to relation `rel`.
    WholeRow(u32),
    /// Something the reader does not follow (a sublink, a function in
    /// FROM, an outer reference, a set operation…).
    Opaque,
}

/// Where a view's output column comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Passed through unchanged from column `attnum` of relation `rel`
    /// (a table or another view).
    Column { rel: u32, attnum: i16 },
    /// Computed from these inputs.
    Computed(Vec<Source>),
}

/// One output column of a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewColumn {
    pub attnum: i16,
    pub name: String,
    pub origin: Origin,
}

/// What a view's stored query says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewQuery {
    pub columns: Vec<ViewColumn>,
    /// Every relation the query reads (tables and views), anywhere in it.
    pub relations: Vec<u32>,
}

/// How deep variables are followed through subqueries and CTEs before
/// giving up (recursive CTEs refer to themselves).
const MAX_DEPTH: usize = 32;

/// Reads the `ev_action` of view `view` (its own OID, which the stored
/// query lists as its `old`/`new` entries and is left out of `relations`).
pub fn read(ev_action: &str, view: u32) -> Result<ViewQuery, String> {
    let tree = node::parse(ev_action)?;
    let query = match &tree {
        Node::List(items) => match items.as_slice() {
            [q] if q.name() == Some("QUERY") => q,
            _ => return Err("a view rule with other than one query".into()),
        },
        _ => return Err("ev_action is not a list".into()),
    };
    let mut relations = Vec::new();
    tree.walk(&mut |n| {
        if n.name() == Some("RANGETBLENTRY") && n.int("rtekind") == Some(0) {
            if let Some(rel) = n.int("relid").and_then(|r| u32::try_from(r).ok()) {
                if rel != view && !relations.contains(&rel) {
                    relations.push(rel);
                }
            }
        }
    });
    let set_operation = !query.is_null("setOperations");
    let mut columns = Vec::new();
    for te in query
        .list("targetList")
        .ok_or("a view query without a target list")?
    {
        if te.text("resjunk") == Some("true") {
            continue;
        }
        let attnum = te
            .int("resno")
            .and_then(|n| i16::try_from(n).ok())
            .ok_or("a target entry without a column number")?;
        let name = te.text("resname").unwrap_or_default().to_string();
        let rel = te.int("resorigtbl").and_then(|r| u32::try_from(r).ok());
        let col = te.int("resorigcol").and_then(|c| i16::try_from(c).ok());
        let origin = match (rel, col) {
            (Some(rel), Some(attnum)) if rel != 0 && attnum > 0 && !set_operation => {
                Origin::Column { rel, attnum }
            }
            _ if set_operation => Origin::Computed(vec![Source::Opaque]),
            _ => {
                let mut sources = Vec::new();
                if let Some(expr) = te.field("expr") {
                    collect(expr, &[query], &mut sources, 0);
                }
                Origin::Computed(sources)
            }
        };
        columns.push(ViewColumn {
            attnum,
            name,
            origin,
        });
    }
    Ok(ViewQuery { columns, relations })
}

fn push(out: &mut Vec<Source>, s: Source) {
    if !out.contains(&s) {
        out.push(s);
    }
}

/// The inputs of expression `expr`, evaluated in the innermost query of
/// `stack` (outer queries before it, for outer references).
fn collect(expr: &Node, stack: &[&Node], out: &mut Vec<Source>, depth: usize) {
    if depth > MAX_DEPTH {
        return push(out, Source::Opaque);
    }
    match expr {
        Node::Struct { name, .. } if name == "VAR" => var(expr, stack, out, depth),
        // A sublink's subquery: its own scope, not followed.
        Node::Struct { name, .. } if name == "QUERY" => push(out, Source::Opaque),
        Node::Struct { fields, .. } => {
            for (_, v) in fields {
                collect(v, stack, out, depth + 1);
            }
        }
        Node::List(items) => {
            for n in items {
                collect(n, stack, out, depth + 1);
            }
        }
        Node::Token(_) => {}
    }
}

/// A target entry's expression by column number in `query`.
fn output(query: &Node, attnum: i64) -> Option<&Node> {
    query
        .list("targetList")?
        .iter()
        .find(|te| te.int("resno") == Some(attnum))?
        .field("expr")
}

/// Follows a Var to the relations it reads.
fn var(v: &Node, stack: &[&Node], out: &mut Vec<Source>, depth: usize) {
    let (Some(varno), Some(attno), Some(up)) =
        (v.int("varno"), v.int("varattno"), v.int("varlevelsup"))
    else {
        return push(out, Source::Opaque);
    };
    let owner = usize::try_from(up)
        .ok()
        .and_then(|up| stack.len().checked_sub(1 + up));
    let Some(owner) = owner else {
        return push(out, Source::Opaque);
    };
    let scope = &stack[..=owner];
    let rte = usize::try_from(varno)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| stack[owner].list("rtable")?.get(i));
    let Some(rte) = rte else {
        return push(out, Source::Opaque);
    };
    match rte.int("rtekind") {
        Some(0) => match (
            rte.int("relid").and_then(|r| u32::try_from(r).ok()),
            i16::try_from(attno),
        ) {
            (Some(rel), Ok(0)) => push(out, Source::WholeRow(rel)),
            (Some(rel), Ok(attnum)) if attnum > 0 => push(out, Source::Column { rel, attnum }),
            _ => push(out, Source::Opaque),
        },
        Some(1) => match rte.field("subquery") {
            Some(sub) => follow_output(sub, attno, scope, out, depth),
            None => push(out, Source::Opaque),
        },
        Some(2) => {
            let alias = usize::try_from(attno)
                .ok()
                .and_then(|a| a.checked_sub(1))
                .and_then(|i| rte.list("joinaliasvars")?.get(i));
            match alias {
                Some(expr) => collect(expr, scope, out, depth + 1),
                None => push(out, Source::Opaque),
            }
        }
        Some(6) => {
            let cte = rte.text("ctename").and_then(|name| {
                let levels = usize::try_from(rte.int("ctelevelsup")?).ok()?;
                let at = owner.checked_sub(levels)?;
                let def = stack[at]
                    .list("cteList")?
                    .iter()
                    .find(|c| c.text("ctename") == Some(name))?;
                Some((at, def.field("ctequery")?))
            });
            match cte {
                Some((at, q)) => follow_output(q, attno, &stack[..=at], out, depth),
                None => push(out, Source::Opaque),
            }
        }
        _ => push(out, Source::Opaque),
    }
}

/// The inputs of output column `attno` of subquery `sub` (0: all of them).
fn follow_output(sub: &Node, attno: i64, outer: &[&Node], out: &mut Vec<Source>, depth: usize) {
    if !sub.is_null("setOperations") {
        return push(out, Source::Opaque);
    }
    let mut stack = outer.to_vec();
    stack.push(sub);
    if attno == 0 {
        for te in sub.list("targetList").unwrap_or_default() {
            if let Some(expr) = te.field("expr") {
                collect(expr, &stack, out, depth + 1);
            }
        }
        return;
    }
    match output(sub, attno) {
        Some(expr) => collect(expr, &stack, out, depth + 1),
        None => push(out, Source::Opaque),
    }
}

#[cfg(test)]
#[path = "views_tests.rs"]
mod tests;
