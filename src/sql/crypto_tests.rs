//! Tests of the crypto plan: which values get encrypted, what is refused.

use super::{
    analyze, Classification, CryptoPlan, Purpose, Shape, Tenancy, TenantSource, ValueSource,
};
use crate::config::Protection;
use crate::types::LogicalType;

fn tenancy() -> Tenancy {
    let mut t = Tenancy::new("tenant_id");
    t.add_scoped("customers", None);
    t.add_scoped("orders", None);
    t.add_scoped("leads", None);
    let mut c = Classification::default();
    c.add(
        "customers",
        "email",
        LogicalType::Text,
        Protection::Deterministic,
        Some("email"),
    );
    c.add(
        "customers",
        "full_name",
        LogicalType::Text,
        Protection::Randomized,
        None,
    );
    c.add(
        "customers",
        "born",
        LogicalType::Date,
        Protection::Deterministic,
        None,
    );
    c.add(
        "leads",
        "email",
        LogicalType::Text,
        Protection::Deterministic,
        Some("email"),
    );
    t.set_classification(c);
    t
}

fn plan(sql: &str) -> CryptoPlan {
    let a = analyze(sql, &tenancy());
    assert_eq!(a.statements.len(), 1, "{sql}");
    a.statements[0].crypto.clone()
}

fn accepted(sql: &str) -> CryptoPlan {
    let p = plan(sql);
    assert!(p.refusal.is_none(), "{sql}: {:?}", p.refusal);
    p
}

fn refused(sql: &str, needle: &str) {
    let p = plan(sql);
    let r = p.refusal.unwrap_or_else(|| panic!("{sql} was accepted"));
    assert!(
        r.reason.contains(needle),
        "{sql}: reason `{}` lacks `{needle}`",
        r.reason
    );
    assert!(!r.hint.is_empty());
}

/// The literal texts of a plan, as they appear in the SQL.
fn literal_slices<'a>(sql: &'a str, p: &CryptoPlan) -> Vec<&'a str> {
    p.targets
        .iter()
        .filter_map(|t| match &t.value {
            ValueSource::Literal { start, end, .. } => Some(&sql[*start..*end]),
            ValueSource::Param(_) => None,
        })
        .collect()
}

#[test]
fn unclassified_statements_have_empty_plans() {
    assert!(accepted("SELECT * FROM orders WHERE tenant_id = 'a'").is_empty());
    assert!(accepted("SELECT 1").is_empty());
}

#[test]
fn insert_values_encrypts_literals_and_params_per_row_tenant() {
    let sql = "INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('a', 1, 'x@y', $1), ('b', 2, E'é\\n', NULL)";
    let p = accepted(sql);
    assert!(p.touches_classified);
    assert_eq!(literal_slices(sql, &p), vec!["'x@y'", "E'é\\n'"]);
    assert_eq!(p.targets.len(), 3);
    assert_eq!(
        p.targets[0].row_tenant,
        Some(TenantSource::Literal("a".into()))
    );
    assert_eq!(p.targets[1].value, ValueSource::Param(1));
    assert_eq!(p.targets[1].column.column, "full_name");
    assert_eq!(
        p.targets[2].row_tenant,
        Some(TenantSource::Literal("b".into()))
    );
    match &p.targets[2].value {
        ValueSource::Literal { text, .. } => assert_eq!(text, "é\n"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn multi_statement_offsets_are_absolute() {
    let sql = "SELECT 1; UPDATE customers SET full_name = 'N' WHERE tenant_id = 'a'";
    let a = analyze(sql, &tenancy());
    let p = &a.statements[1].crypto;
    assert_eq!(literal_slices(sql, p), vec!["'N'"]);
}

#[test]
fn negative_numbers_and_multiline_spans() {
    let mut c = Classification::default();
    c.add("t", "n", LogicalType::Int4, Protection::Deterministic, None);
    let mut t = Tenancy::new("tenant_id");
    t.add_scoped("t", None);
    t.set_classification(c);
    let sql = "INSERT INTO t (tenant_id, n)\n  VALUES ('a',\n   - 42)";
    let a = analyze(sql, &t);
    let p = &a.statements[0].crypto;
    assert!(p.refusal.is_none());
    assert_eq!(literal_slices(sql, p), vec!["- 42"]);
    let sql = "SELECT * FROM t WHERE tenant_id = 'a' AND n = 7";
    let a = analyze(sql, &t);
    assert_eq!(literal_slices(sql, &a.statements[0].crypto), vec!["7"]);
}

#[test]
fn updates_and_upserts() {
    let sql =
        "UPDATE customers SET email = $2, full_name = 'z' WHERE tenant_id = $1 AND email = 'old'";
    let p = accepted(sql);
    assert_eq!(p.targets.len(), 3);
    accepted("INSERT INTO customers (tenant_id, id, email) VALUES ('a', 1, 'e') ON CONFLICT (tenant_id, id) DO UPDATE SET email = EXCLUDED.email");
    let p = accepted("INSERT INTO customers (tenant_id, id, email) VALUES ('a', 1, 'e') ON CONFLICT (tenant_id, id) DO UPDATE SET full_name = 'q'");
    assert_eq!(p.targets.len(), 2);
    assert_eq!(
        p.targets[1].row_tenant,
        Some(TenantSource::Literal("a".into()))
    );
    refused(
        "UPDATE customers SET email = lower($1) WHERE tenant_id = 'a'",
        "computed value",
    );
    refused(
        "UPDATE customers SET email = full_name WHERE tenant_id = 'a'",
        "computed value",
    );
    refused(
        "UPDATE customers SET (email, id) = ('a', 1) WHERE tenant_id = 'a'",
        "tuple",
    );
    refused(
        "INSERT INTO customers (tenant_id, email) SELECT tenant_id, email FROM leads",
        "INSERT … SELECT",
    );
    refused("INSERT INTO customers VALUES ('a', 1, 'x')", "column list");
}

#[test]
fn reads_and_equality() {
    let p = accepted("SELECT id, email, c.full_name AS n FROM customers c WHERE tenant_id = 'a' AND c.email IN ('a', $1) AND full_name IS NOT NULL");
    assert_eq!(p.targets.len(), 2);
    accepted("SELECT count(email), count(DISTINCT email), count(full_name) FROM customers WHERE tenant_id = $1");
    accepted("SELECT email, count(*) FROM customers WHERE tenant_id = $1 GROUP BY email");
    accepted("SELECT DISTINCT email FROM customers WHERE tenant_id = $1");
    accepted("SELECT * FROM customers c JOIN leads l ON c.email = l.email AND c.tenant_id = l.tenant_id WHERE c.tenant_id = 'a'");
    accepted("SELECT * FROM customers WHERE tenant_id = 'a' AND email <> 'x' AND email = NULL");
    accepted("SELECT e FROM (SELECT email AS e FROM customers WHERE tenant_id = 'a') s");
    accepted(
        "INSERT INTO customers (tenant_id, email) VALUES ('a', 'b') RETURNING email, full_name",
    );
}

#[test]
fn operations_over_ciphertext_are_refused() {
    refused(
        "SELECT * FROM customers WHERE tenant_id = 'a' AND email LIKE 'x%'",
        "LIKE",
    );
    refused(
        "SELECT * FROM customers WHERE tenant_id = 'a' AND born < '2000-01-01'",
        "operator <",
    );
    refused(
        "SELECT * FROM customers WHERE tenant_id = 'a' ORDER BY email",
        "ORDER BY",
    );
    refused(
        "SELECT max(email) FROM customers WHERE tenant_id = 'a'",
        "function max",
    );
    refused(
        "SELECT lower(c.email) FROM customers c WHERE tenant_id = 'a'",
        "function lower",
    );
    refused(
        "SELECT email::text FROM customers WHERE tenant_id = 'a'",
        "cast",
    );
    refused(
        "SELECT * FROM customers WHERE tenant_id = 'a' AND full_name = 'x'",
        "random nonce",
    );
    refused(
        "SELECT DISTINCT full_name FROM customers WHERE tenant_id = 'a'",
        "DISTINCT",
    );
    refused(
        "SELECT full_name FROM customers WHERE tenant_id = 'a' GROUP BY 1",
        "GROUP BY",
    );
    refused(
        "SELECT count(DISTINCT full_name) FROM customers WHERE tenant_id = 'a'",
        "count(DISTINCT",
    );
    refused(
        "SELECT * FROM customers c JOIN customers d ON c.email = d.born WHERE c.tenant_id = 'a'",
        "bound to different",
    );
    refused(
        "SELECT * FROM customers WHERE tenant_id = 'a' AND email = id::text",
        "computed value",
    );
    refused(
        "SELECT * FROM (SELECT email AS e FROM customers WHERE tenant_id = 'a') s WHERE e LIKE 'a'",
        "LIKE",
    );
    refused(
        "SELECT * FROM customers WHERE tenant_id = $1 AND email = $2 AND id = $2",
        "elsewhere",
    );
    refused("CREATE TABLE x AS SELECT email FROM customers", "copying");
    refused(
        "INSERT INTO orders (tenant_id, note) SELECT tenant_id, email FROM customers",
        "copying",
    );
    refused(
        "SELECT email INTO x FROM customers WHERE tenant_id = 'a'",
        "SELECT INTO",
    );
    refused(
        "SELECT full_name FROM customers UNION SELECT full_name FROM customers",
        "UNION",
    );
}

#[test]
fn unqualified_names_of_other_tables_stay_unclassified_when_qualified() {
    // orders has no classified columns: `o.email` is plain.
    accepted("SELECT o.email FROM orders o JOIN customers c ON c.tenant_id = o.tenant_id WHERE o.tenant_id = 'a' AND o.email LIKE 'x%'");
}

#[test]
fn copy_of_classified_tables() {
    // Rows are encrypted and decrypted by the COPY filters, row by row.
    for sql in [
        "COPY customers FROM STDIN",
        "COPY customers (tenant_id, email) FROM STDIN WITH (FORMAT csv)",
        "COPY customers TO STDOUT",
        "COPY customers (tenant_id, email, full_name) TO STDOUT (FORMAT binary)",
        "COPY (SELECT tenant_id, id FROM customers) TO STDOUT",
    ] {
        let p = accepted(sql);
        assert!(p.touches_classified, "{sql}");
        assert!(p.targets.is_empty(), "{sql}");
    }
    // Server files and programs never see plaintext, and COPY (query) TO
    // has no row description to find the columns to decrypt.
    refused("COPY customers TO '/tmp/x'", "server file");
    refused("COPY customers FROM PROGRAM 'cat x'", "server file");
    refused(
        "COPY (SELECT email FROM customers) TO STDOUT",
        "customers.email",
    );
    refused(
        "COPY (SELECT c.full_name AS n FROM customers c) TO STDOUT",
        "customers.full_name",
    );
    refused("COPY (SELECT * FROM customers) TO STDOUT", "COPY (query)");
    refused(
        "COPY (SELECT x FROM (SELECT email AS x FROM customers) s) TO STDOUT",
        "customers.email",
    );
    // Tables without classified columns are untouched.
    assert!(plan("COPY orders TO '/tmp/x'").refusal.is_none());
}

/// The shape, column-on-the-right flag and texts (whole comparison,
/// column, each compared operand) of comparison `i`.
fn comparison<'a>(
    sql: &'a str,
    p: &CryptoPlan,
    i: usize,
) -> (Shape, bool, &'a str, &'a str, Vec<&'a str>) {
    let c = &p.comparisons[i];
    let spans = c
        .spans
        .unwrap_or_else(|| panic!("{sql}: comparison {i} unlocated"));
    let operands = p
        .compared_in(i)
        .map(|t| match t.purpose {
            Purpose::Compare {
                operand: Some((s, e)),
                ..
            } => &sql[s..e],
            ref other => panic!("{sql}: {other:?}"),
        })
        .collect();
    (
        c.shape,
        c.column_right,
        &sql[spans.whole.0..spans.whole.1],
        &sql[spans.column.0..spans.column.1],
        operands,
    )
}

#[test]
fn stored_and_compared_values_are_marked() {
    let sql =
        "UPDATE customers SET email = $2, full_name = 'z' WHERE tenant_id = $1 AND email = 'old'";
    let p = accepted(sql);
    let purposes: Vec<&Purpose> = p.targets.iter().map(|t| &t.purpose).collect();
    assert_eq!(purposes[0], &Purpose::Store);
    assert_eq!(purposes[1], &Purpose::Store);
    assert!(matches!(
        purposes[2],
        Purpose::Compare { comparison: 0, .. }
    ));
    assert_eq!(
        comparison(sql, &p, 0),
        (Shape::Eq, false, "email = 'old'", "email", vec!["'old'"])
    );
    let p = accepted("INSERT INTO customers (tenant_id, email) VALUES ('a', $1)");
    assert_eq!(p.targets[0].purpose, Purpose::Store);
    assert!(p.comparisons.is_empty());
}

#[test]
fn comparison_shapes_and_spans() {
    let sql = "SELECT 1 FROM customers c WHERE tenant_id = 'a' AND 'x' = c.email";
    let p = accepted(sql);
    assert_eq!(
        comparison(sql, &p, 0),
        (Shape::Eq, true, "'x' = c.email", "c.email", vec!["'x'"])
    );
    let sql = "SELECT 1 FROM customers WHERE tenant_id = 'a' AND (email) <> ( ($1) )";
    let p = accepted(sql);
    assert_eq!(
        comparison(sql, &p, 0),
        (
            Shape::NotEq,
            false,
            "(email) <> ( ($1) )",
            "(email)",
            vec!["( ($1) )"]
        )
    );
    let sql = "SELECT 1 FROM customers WHERE tenant_id = 'a' AND email IN ('a', ('b'), $1, NULL )";
    let p = accepted(sql);
    let c = &p.comparisons[0];
    assert!(c.null_item);
    assert_eq!(
        comparison(sql, &p, 0),
        (
            Shape::In,
            false,
            "email IN ('a', ('b'), $1, NULL )",
            "email",
            vec!["'a'", "('b')", "$1"]
        )
    );
    let sql = "DELETE FROM customers WHERE tenant_id = 'a' AND born NOT IN (-1, '2020-01-01')";
    let p = accepted(sql);
    let (shape, _, whole, _, operands) = comparison(sql, &p, 0);
    assert_eq!(shape, Shape::NotIn);
    assert!(shape.negated());
    assert_eq!(whole, "born NOT IN (-1, '2020-01-01')");
    assert_eq!(operands, vec!["-1", "'2020-01-01'"]);
}

#[test]
fn comparison_spans_follow_multi_statement_offsets() {
    let sql = "SELECT 1; SELECT 1 FROM customers WHERE tenant_id = 'a' AND email = 'q'";
    let a = analyze(sql, &tenancy());
    let p = &a.statements[1].crypto;
    assert_eq!(comparison(sql, p, 0).2, "email = 'q'");
}

#[test]
fn a_comment_inside_parentheses_leaves_literals_unlocated_and_refuses_params() {
    let sql = "SELECT 1 FROM customers WHERE tenant_id = 'a' AND email = ( /* c */ 'x')";
    let p = accepted(sql);
    assert!(p.comparisons[0].spans.is_none());
    refused(
        "SELECT 1 FROM customers WHERE tenant_id = 'a' AND email = ( /* c */ $1)",
        "could not be located",
    );
}

#[test]
fn a_parameter_both_stored_and_compared_is_refused() {
    refused(
        "UPDATE customers SET email = $1 WHERE tenant_id = 'a' AND email = $1",
        "both stored in and compared",
    );
    accepted("UPDATE customers SET email = $1 WHERE tenant_id = 'a' AND email = $2");
}
