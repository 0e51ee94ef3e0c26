//! Analyzer cases, one form each. Tables: `customers`, `orders` (tenant_id),
//! `app.invoices` (column `org_id`), globals `countries`, `plans`; anything
//! else is an ordinary table.

use super::*;

fn tenancy() -> Tenancy {
    let mut t = Tenancy::new("tenant_id");
    t.add_scoped("customers", None);
    t.add_scoped("orders", None);
    t.add_scoped("app.invoices", Some("org_id"));
    t.add_global("countries");
    t.add_global("plans");
    t
}

fn plan(sql: &str) -> StatementPlan {
    let a = analyze(sql, &tenancy());
    assert_eq!(a.statements.len(), 1, "{sql}: {a:?}");
    a.statements.into_iter().next().expect("one statement")
}

fn lit(s: &str) -> TenantSource {
    TenantSource::Literal(s.to_string())
}

fn param(n: usize) -> TenantSource {
    TenantSource::Param(n)
}

fn values(sql: &str) -> Vec<TenantSource> {
    match plan(sql).tenant {
        TenantRequirement::Values(v) => v,
        other => panic!("{sql}: expected Values, got {other:?}"),
    }
}

fn unconstrained(sql: &str) -> String {
    match plan(sql).tenant {
        TenantRequirement::Unconstrained { table, .. } => table,
        other => panic!("{sql}: expected Unconstrained, got {other:?}"),
    }
}

fn refusal(sql: &str) -> (Option<String>, String) {
    match plan(sql).tenant {
        TenantRequirement::Refuse { table, reason, .. } => (table, reason),
        other => panic!("{sql}: expected Refuse, got {other:?}"),
    }
}

fn kind(sql: &str) -> StatementKind {
    plan(sql).kind
}

// ----- simple predicates ---------------------------------------------------

#[test]
fn no_tenant_tables_need_nothing() {
    assert_eq!(plan("SELECT 1").tenant, TenantRequirement::None);
    assert_eq!(plan("SELECT now()").kind, StatementKind::Read);
    assert_eq!(
        plan("SELECT * FROM pgbench_accounts WHERE aid = 1").tenant,
        TenantRequirement::None
    );
}

#[test]
fn where_equality_either_side() {
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id = 'acme'"),
        vec![lit("acme")]
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE 'acme' = tenant_id"),
        vec![lit("acme")]
    );
}

#[test]
fn and_chains_and_parentheses() {
    assert_eq!(
        values("SELECT * FROM customers WHERE id = 4 AND (name = 'x' AND (tenant_id = 'acme'))"),
        vec![lit("acme")]
    );
}

#[test]
fn qualified_and_aliased_columns() {
    assert_eq!(
        values("SELECT * FROM customers c WHERE c.tenant_id = 'acme'"),
        vec![lit("acme")]
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE customers.tenant_id = 'acme'"),
        vec![lit("acme")]
    );
    assert_eq!(
        values("SELECT * FROM public.customers WHERE public.customers.tenant_id = 'acme'"),
        vec![lit("acme")]
    );
    // Once aliased, the table name no longer qualifies its columns.
    assert_eq!(
        unconstrained("SELECT * FROM customers AS c WHERE customers.tenant_id = 'x'"),
        "customers"
    );
}

#[test]
fn parameters_and_casts() {
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id = $1"),
        vec![param(1)]
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id = $2::bigint AND id = $1"),
        vec![param(2)]
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id = CAST($1 AS uuid)"),
        vec![param(1)]
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id = 'acme'::text"),
        vec![lit("acme")]
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id::text = 'acme'"),
        vec![lit("acme")]
    );
    assert_eq!(
        values(
            "SELECT * FROM customers WHERE tenant_id = uuid '1b4e28ba-2fa1-11d2-883f-0016d3cca427'"
        ),
        vec![lit("1b4e28ba-2fa1-11d2-883f-0016d3cca427")]
    );
}

#[test]
fn numeric_tenant_ids_are_canonical_text() {
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id = 42"),
        vec![lit("42")]
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id = 0042"),
        vec![lit("42")]
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id = -3"),
        vec![lit("-3")]
    );
}

#[test]
fn in_lists() {
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id IN ('a', 'b')"),
        vec![lit("a"), lit("b")]
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id IN ($1, $2)"),
        vec![param(1), param(2)]
    );
    assert_eq!(
        unconstrained("SELECT * FROM customers WHERE tenant_id NOT IN ('a')"),
        "customers"
    );
    assert_eq!(
        unconstrained("SELECT * FROM customers WHERE tenant_id IN ('a', lower(name))"),
        "customers"
    );
}

#[test]
fn missing_or_non_equality_predicates_are_unconstrained() {
    assert_eq!(unconstrained("SELECT * FROM customers"), "customers");
    assert_eq!(
        unconstrained("SELECT * FROM customers WHERE id = 1"),
        "customers"
    );
    assert_eq!(
        unconstrained("SELECT * FROM customers WHERE tenant_id <> 'a'"),
        "customers"
    );
    assert_eq!(
        unconstrained("SELECT * FROM customers WHERE tenant_id LIKE 'a%'"),
        "customers"
    );
    assert_eq!(
        unconstrained("SELECT * FROM customers WHERE NOT (tenant_id = 'a')"),
        "customers"
    );
    assert_eq!(
        unconstrained("SELECT * FROM customers WHERE tenant_id = name"),
        "customers"
    );
}

#[test]
fn or_constrains_only_when_every_branch_does() {
    assert_eq!(
        unconstrained("SELECT * FROM customers WHERE tenant_id = 'a' OR id = 1"),
        "customers"
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE tenant_id = 'a' OR (tenant_id = 'b' AND id = 1)"),
        vec![lit("a"), lit("b")]
    );
    assert_eq!(
        values("SELECT * FROM customers WHERE (tenant_id = 'a' OR tenant_id = $1) AND id = 2"),
        vec![lit("a"), param(1)]
    );
}

#[test]
fn unconstrained_carries_other_values() {
    match plan("SELECT * FROM customers c, orders o WHERE c.tenant_id = 'a'").tenant {
        TenantRequirement::Unconstrained { table, values } => {
            assert_eq!(table, "orders");
            assert_eq!(values, vec![lit("a")]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn schema_qualified_and_quoted_names() {
    assert_eq!(
        values("SELECT * FROM public.customers WHERE tenant_id = 'a'"),
        vec![lit("a")]
    );
    assert_eq!(
        values("SELECT * FROM \"Customers\" WHERE \"tenant_id\" = 'a'"),
        vec![lit("a")]
    );
    assert_eq!(
        unconstrained("SELECT * FROM app.invoices WHERE tenant_id = 'a'"),
        "app.invoices"
    );
    assert_eq!(
        values("SELECT * FROM app.invoices WHERE org_id = 'a'"),
        vec![lit("a")]
    );
    assert_eq!(
        plan("SELECT * FROM other.invoices").tenant,
        TenantRequirement::None
    );
}

#[test]
fn unqualified_column_is_ambiguous_between_two_scoped_tables() {
    assert_eq!(
        unconstrained("SELECT * FROM customers c, orders o WHERE tenant_id = 'a'"),
        "customers"
    );
}

// ----- joins ----------------------------------------------------------------

#[test]
fn join_on_tenant_equality_carries_the_constraint() {
    assert_eq!(
        values("SELECT * FROM customers c JOIN orders o ON o.tenant_id = c.tenant_id AND o.customer_id = c.id WHERE c.tenant_id = $1"),
        vec![param(1)]
    );
    assert_eq!(
        values("SELECT * FROM customers c, orders o WHERE c.tenant_id = o.tenant_id AND o.tenant_id = 'a'"),
        vec![lit("a")]
    );
}

#[test]
fn join_without_tenant_equality_is_unconstrained() {
    assert_eq!(
        unconstrained("SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.tenant_id = 'a'"),
        "orders"
    );
}

#[test]
fn join_using_tenant_column() {
    assert_eq!(
        values(
            "SELECT * FROM customers JOIN orders USING (tenant_id) WHERE customers.tenant_id = 'a'"
        ),
        vec![lit("a")]
    );
    assert_eq!(
        values("SELECT * FROM customers NATURAL JOIN orders WHERE customers.tenant_id = 'a'"),
        vec![lit("a")]
    );
}

#[test]
fn joins_with_each_table_constrained_report_all_values() {
    assert_eq!(
        values(
            "SELECT * FROM customers c JOIN orders o ON o.tenant_id = 'b' WHERE c.tenant_id = 'a'"
        ),
        vec![lit("a"), lit("b")]
    );
}

#[test]
fn outer_join_on_only_constrains_the_nullable_side() {
    // The ON of a LEFT JOIN does not filter the left side.
    assert_eq!(
        unconstrained("SELECT * FROM customers c LEFT JOIN orders o ON c.tenant_id = 'a' AND o.tenant_id = c.tenant_id"),
        "customers"
    );
    assert_eq!(
        values("SELECT * FROM customers c LEFT JOIN orders o ON o.tenant_id = c.tenant_id WHERE c.tenant_id = 'a'"),
        vec![lit("a")]
    );
    assert_eq!(
        unconstrained("SELECT * FROM customers c FULL JOIN orders o ON o.tenant_id = c.tenant_id WHERE c.tenant_id = 'a'"),
        "orders"
    );
    assert_eq!(
        values("SELECT * FROM orders o RIGHT JOIN customers c ON o.tenant_id = c.tenant_id WHERE c.tenant_id = 'a'"),
        vec![lit("a")]
    );
}

#[test]
fn joins_with_ordinary_and_global_tables() {
    let p = plan(
        "SELECT * FROM customers c JOIN countries k ON k.code = c.country WHERE c.tenant_id = 'a'",
    );
    assert_eq!(p.tenant, TenantRequirement::Values(vec![lit("a")]));
    assert!(p.reads_global);
    assert!(!p.writes_global);
    assert_eq!(p.scoped_tables, vec!["customers".to_string()]);
}

// ----- subqueries, CTEs, set operations -------------------------------------

#[test]
fn subqueries_in_where_are_analysed() {
    assert_eq!(
        unconstrained("SELECT * FROM customers c WHERE c.tenant_id = 'a' AND c.id IN (SELECT customer_id FROM orders)"),
        "orders"
    );
    assert_eq!(
        values("SELECT * FROM customers c WHERE c.tenant_id = 'a' AND c.id IN (SELECT customer_id FROM orders o WHERE o.tenant_id = 'a')"),
        vec![lit("a")]
    );
}

#[test]
fn correlated_exists_carries_the_outer_constraint() {
    assert_eq!(
        values("SELECT * FROM customers c WHERE c.tenant_id = $1 AND EXISTS (SELECT 1 FROM orders o WHERE o.tenant_id = c.tenant_id AND o.customer_id = c.id)"),
        vec![param(1)]
    );
    // The inner predicate does not constrain the outer table.
    assert_eq!(
        unconstrained("SELECT * FROM customers c WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE c.tenant_id = 'a' AND o.tenant_id = 'a')"),
        "customers"
    );
}

#[test]
fn tenant_in_subquery_carries_the_inner_constraint() {
    assert_eq!(
        values("SELECT * FROM orders WHERE tenant_id IN (SELECT tenant_id FROM customers WHERE tenant_id = 'a')"),
        vec![lit("a")]
    );
    assert_eq!(
        values("SELECT * FROM orders WHERE tenant_id = (SELECT tenant_id FROM customers WHERE tenant_id = $1 LIMIT 1)"),
        vec![param(1)]
    );
}

#[test]
fn scalar_subqueries_in_projection() {
    assert_eq!(
        unconstrained("SELECT (SELECT count(*) FROM orders) FROM customers WHERE tenant_id = 'a'"),
        "orders"
    );
    assert_eq!(
        values("SELECT c.id, (SELECT count(*) FROM orders o WHERE o.tenant_id = c.tenant_id) FROM customers c WHERE c.tenant_id = 'a'"),
        vec![lit("a")]
    );
}

#[test]
fn derived_tables_expose_their_tenant_column() {
    assert_eq!(
        values("SELECT * FROM (SELECT * FROM customers WHERE tenant_id = 'a') s JOIN orders o ON o.tenant_id = s.tenant_id"),
        vec![lit("a")]
    );
    assert_eq!(
        values("SELECT * FROM (SELECT c.tenant_id AS t FROM customers c WHERE c.tenant_id = 'a') s JOIN orders o ON o.tenant_id = s.t"),
        vec![lit("a")]
    );
    assert_eq!(
        unconstrained("SELECT * FROM (SELECT * FROM customers) s WHERE s.tenant_id = 'a'"),
        "customers"
    );
}

#[test]
fn ctes() {
    assert_eq!(
        values("WITH c AS (SELECT * FROM customers WHERE tenant_id = $1) SELECT * FROM c JOIN orders o ON o.tenant_id = c.tenant_id"),
        vec![param(1)]
    );
    assert_eq!(
        unconstrained("WITH c AS (SELECT * FROM customers) SELECT * FROM c WHERE id = 1"),
        "customers"
    );
    // A CTE named like a scoped table shadows it.
    assert_eq!(
        plan("WITH customers AS (SELECT 1 AS x) SELECT * FROM customers").tenant,
        TenantRequirement::None
    );
}

#[test]
fn data_modifying_ctes_are_writes() {
    let p = plan("WITH moved AS (DELETE FROM orders WHERE tenant_id = 'a' AND id = 1 RETURNING *) SELECT * FROM moved");
    assert_eq!(p.kind, StatementKind::Write);
    assert_eq!(p.tenant, TenantRequirement::Values(vec![lit("a")]));
    assert_eq!(
        unconstrained("WITH x AS (UPDATE orders SET total = 0 RETURNING id) SELECT * FROM x"),
        "orders"
    );
}

#[test]
fn union_and_intersect_analyse_each_branch() {
    assert_eq!(
        values("SELECT id FROM customers WHERE tenant_id = 'a' UNION ALL SELECT id FROM orders WHERE tenant_id = 'b'"),
        vec![lit("a"), lit("b")]
    );
    assert_eq!(
        unconstrained(
            "SELECT id FROM customers WHERE tenant_id = 'a' INTERSECT SELECT id FROM orders"
        ),
        "orders"
    );
}

#[test]
fn views_and_functions_are_opaque() {
    assert_eq!(
        plan("SELECT * FROM customer_view WHERE tenant_id = 'a'").tenant,
        TenantRequirement::None
    );
    assert_eq!(
        plan("SELECT * FROM generate_series(1, 3)").tenant,
        TenantRequirement::None
    );
}

// ----- INSERT -----------------------------------------------------------------

#[test]
fn insert_values_single_and_multi_row() {
    assert_eq!(
        values("INSERT INTO customers (id, tenant_id, name) VALUES (1, 'acme', 'x')"),
        vec![lit("acme")]
    );
    assert_eq!(
        values("INSERT INTO customers (tenant_id, id) VALUES ($1, 1), ('b', 2), ($1, 3)"),
        vec![param(1), lit("b")]
    );
    assert_eq!(
        plan("INSERT INTO customers (tenant_id) VALUES ('a')").kind,
        StatementKind::Write
    );
}

#[test]
fn insert_without_column_list_is_refused() {
    let (table, reason) = refusal("INSERT INTO customers VALUES (1, 'acme', 'x')");
    assert_eq!(table.as_deref(), Some("customers"));
    assert!(reason.contains("column list"), "{reason}");
    assert!(!reason.contains("acme"));
}

#[test]
fn insert_without_tenant_column_or_with_computed_value_is_refused() {
    assert!(refusal("INSERT INTO customers (id, name) VALUES (1, 'x')")
        .1
        .contains("tenant_id"));
    let (_, reason) = refusal("INSERT INTO customers (tenant_id, id) VALUES (lower('ACME'), 1)");
    assert!(reason.contains("not a literal"), "{reason}");
    assert!(!reason.contains("ACME"));
    refusal("INSERT INTO customers (tenant_id, id) VALUES (DEFAULT, 1)");
    refusal("INSERT INTO customers DEFAULT VALUES");
}

#[test]
fn insert_on_conflict() {
    assert_eq!(
        values("INSERT INTO customers (tenant_id, id, name) VALUES ($1, $2, $3) ON CONFLICT (tenant_id, id) DO UPDATE SET name = EXCLUDED.name"),
        vec![param(1)]
    );
    assert_eq!(
        values("INSERT INTO customers (tenant_id, id) VALUES ('a', 1) ON CONFLICT DO NOTHING"),
        vec![lit("a")]
    );
    assert_eq!(
        values("INSERT INTO customers (tenant_id, id) VALUES ('a', 1) ON CONFLICT (tenant_id, id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id"),
        vec![lit("a")]
    );
    let (_, reason) = refusal("INSERT INTO customers (tenant_id, id) VALUES ('a', 1) ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id");
    assert!(reason.contains("ON CONFLICT"), "{reason}");
}

#[test]
fn insert_select_from_literal_param_or_constrained_source() {
    assert_eq!(
        values("INSERT INTO orders (tenant_id, total) SELECT 'a', 10"),
        vec![lit("a")]
    );
    assert_eq!(
        values("INSERT INTO orders (tenant_id, customer_id) SELECT c.tenant_id, c.id FROM customers c WHERE c.tenant_id = $1"),
        vec![param(1)]
    );
    assert_eq!(
        values("INSERT INTO orders (customer_id, tenant_id) SELECT id, $1 FROM pgbench_accounts"),
        vec![param(1)]
    );
    assert_eq!(
        unconstrained(
            "INSERT INTO orders (tenant_id, customer_id) SELECT tenant_id, id FROM customers"
        ),
        "customers"
    );
}

#[test]
fn insert_select_with_unknown_tenant_source_is_refused() {
    refusal("INSERT INTO orders (tenant_id, customer_id) SELECT t, id FROM pgbench_accounts");
    refusal(
        "INSERT INTO orders (tenant_id, customer_id) SELECT * FROM customers WHERE tenant_id = 'a'",
    );
    refusal("INSERT INTO orders (tenant_id) SELECT upper(tenant_id) FROM customers WHERE tenant_id = 'a'");
}

#[test]
fn insert_select_union_uses_every_branch() {
    assert_eq!(
        values("INSERT INTO orders (tenant_id, id) SELECT 'a', 1 UNION ALL SELECT $1, 2"),
        vec![lit("a"), param(1)]
    );
}

#[test]
fn insert_into_ordinary_table_reading_scoped_data() {
    assert_eq!(
        unconstrained("INSERT INTO report (id) SELECT id FROM customers"),
        "customers"
    );
    assert_eq!(
        plan("INSERT INTO report (id) VALUES (1)").tenant,
        TenantRequirement::None
    );
}

// ----- UPDATE / DELETE ---------------------------------------------------------

#[test]
fn update_and_delete_with_where() {
    assert_eq!(
        values("UPDATE customers SET name = $1 WHERE tenant_id = $2 AND id = $3"),
        vec![param(2)]
    );
    assert_eq!(
        values("DELETE FROM customers WHERE tenant_id = 'a' AND id = 1"),
        vec![lit("a")]
    );
    assert_eq!(
        unconstrained("UPDATE customers SET name = 'x'"),
        "customers"
    );
    assert_eq!(
        unconstrained("DELETE FROM customers WHERE id = 1"),
        "customers"
    );
    assert_eq!(
        values("UPDATE customers AS c SET name = 'x' WHERE c.tenant_id = 'a'"),
        vec![lit("a")]
    );
}

#[test]
fn update_from_and_delete_using() {
    assert_eq!(
        values("UPDATE orders o SET total = 0 FROM customers c WHERE c.id = o.customer_id AND c.tenant_id = o.tenant_id AND o.tenant_id = 'a'"),
        vec![lit("a")]
    );
    assert_eq!(
        unconstrained("UPDATE orders o SET total = 0 FROM customers c WHERE c.id = o.customer_id AND o.tenant_id = 'a'"),
        "customers"
    );
    assert_eq!(
        values("DELETE FROM orders o USING customers c WHERE c.tenant_id = o.tenant_id AND c.tenant_id = $1"),
        vec![param(1)]
    );
}

#[test]
fn update_moving_rows_between_tenants_is_refused() {
    let (table, reason) =
        refusal("UPDATE customers SET tenant_id = lower(name) WHERE tenant_id = 'a'");
    assert_eq!(table.as_deref(), Some("customers"));
    assert!(reason.contains("tenant_id"));
    refusal("UPDATE customers SET (tenant_id, name) = ('b', 'x') WHERE tenant_id = 'a'");
}

#[test]
fn update_setting_tenant_column_records_the_assignment() {
    // Same literal as the predicate: nothing to check.
    let p = plan("UPDATE customers SET tenant_id = 'a', name = 'x' WHERE tenant_id = 'a'");
    assert_eq!(p.tenant, TenantRequirement::Values(vec![lit("a")]));
    assert!(p.tenant_assignments.is_empty());
    // ORMs that write every column: the proxy checks $2 equals the tenant.
    let p = plan("UPDATE customers SET name = $1, tenant_id = $2 WHERE id = $3 AND tenant_id = $4");
    assert_eq!(p.tenant, TenantRequirement::Values(vec![param(4)]));
    assert_eq!(p.tenant_assignments, vec![param(2)]);
    let p = plan("UPDATE customers SET tenant_id = tenant_id WHERE tenant_id = 'a'");
    assert!(p.tenant_assignments.is_empty());
}

#[test]
fn truncate() {
    let (table, _) = refusal("TRUNCATE customers");
    assert_eq!(table.as_deref(), Some("customers"));
    let p = plan("TRUNCATE plans");
    assert!(p.writes_global);
    assert_eq!(p.kind, StatementKind::Write);
    assert_eq!(
        plan("TRUNCATE pgbench_history").tenant,
        TenantRequirement::None
    );
}

// ----- global tables -------------------------------------------------------------

#[test]
fn global_reads_and_writes() {
    let p = plan("SELECT * FROM countries");
    assert!(p.reads_global && !p.writes_global);
    assert_eq!(p.tenant, TenantRequirement::None);
    for sql in [
        "INSERT INTO plans (id, name) VALUES (1, 'x')",
        "UPDATE plans SET name = 'y' WHERE id = 1",
        "DELETE FROM public.plans WHERE id = 1",
        "COPY plans FROM STDIN",
    ] {
        assert!(plan(sql).writes_global, "{sql}");
    }
}

#[test]
fn writing_tenant_data_into_global_tables_is_refused() {
    let (_, reason) =
        refusal("INSERT INTO plans (id) SELECT id FROM customers WHERE tenant_id = 'a'");
    assert!(reason.contains("global"), "{reason}");
    refusal("UPDATE plans SET n = (SELECT count(*) FROM orders WHERE tenant_id = 'a')");
}

// ----- COPY ------------------------------------------------------------------------

#[test]
fn copy_from_stdin_is_per_row() {
    let p = plan("COPY customers (id, tenant_id, name) FROM STDIN");
    assert_eq!(
        p.kind,
        StatementKind::Copy {
            table: Some("customers".into()),
            from_stdin: true,
            columns: vec!["id".into(), "tenant_id".into(), "name".into()],
            tenant_column: Some(1),
        }
    );
    assert_eq!(
        p.tenant,
        TenantRequirement::PerRow {
            table: "customers".into()
        }
    );
    assert!(matches!(
        plan("COPY customers FROM STDIN").kind,
        StatementKind::Copy {
            tenant_column: None,
            ..
        }
    ));
}

#[test]
fn copy_out_and_from_files() {
    assert_eq!(unconstrained("COPY customers TO STDOUT"), "customers");
    refusal("COPY customers FROM '/tmp/x.csv'");
    let p =
        plan("COPY (SELECT * FROM customers WHERE tenant_id = 'a') TO STDOUT WITH (FORMAT csv)");
    assert_eq!(p.tenant, TenantRequirement::Values(vec![lit("a")]));
    assert!(matches!(
        p.kind,
        StatementKind::Copy {
            table: None,
            from_stdin: false,
            ..
        }
    ));
    assert_eq!(
        plan("COPY pgbench_history FROM STDIN").tenant,
        TenantRequirement::None
    );
}

// ----- session and transaction statements -----------------------------------------------

#[test]
fn set_tenant_forms() {
    let set = |local, v: &str| StatementKind::SetTenant {
        local,
        value: Some(lit(v)),
    };
    assert_eq!(kind("SET regionguard.tenant = 'acme'"), set(false, "acme"));
    assert_eq!(kind("SET regionguard.tenant TO 'acme'"), set(false, "acme"));
    assert_eq!(
        kind("SET SESSION regionguard.tenant = 'acme'"),
        set(false, "acme")
    );
    assert_eq!(
        kind("SET LOCAL regionguard.tenant = 'acme'"),
        set(true, "acme")
    );
    assert_eq!(kind("SET regionguard.tenant = acme"), set(false, "acme"));
    assert_eq!(kind("SET regionguard.tenant = 42"), set(false, "42"));
    assert_eq!(kind("set RegionGuard.Tenant = 'Acme'"), set(false, "Acme"));
}

#[test]
fn reset_tenant_forms() {
    let reset = StatementKind::SetTenant {
        local: false,
        value: None,
    };
    assert_eq!(kind("RESET regionguard.tenant"), reset);
    assert_eq!(kind("SET regionguard.tenant TO DEFAULT"), reset);
    assert_eq!(
        kind("RESET ALL"),
        StatementKind::SessionState {
            resets_tenant: true
        }
    );
    assert_eq!(
        kind("DISCARD ALL"),
        StatementKind::SessionState {
            resets_tenant: true
        }
    );
    assert_eq!(
        kind("RESET search_path"),
        StatementKind::SessionState {
            resets_tenant: false
        }
    );
}

#[test]
fn set_config_and_current_setting() {
    assert_eq!(
        kind("SELECT set_config('regionguard.tenant', 'acme', false)"),
        StatementKind::SetTenant {
            local: false,
            value: Some(lit("acme"))
        }
    );
    assert_eq!(
        kind("SELECT set_config('regionguard.tenant', $1, true)"),
        StatementKind::SetTenant {
            local: true,
            value: Some(param(1))
        }
    );
    assert_eq!(
        kind("SELECT current_setting('regionguard.tenant')"),
        StatementKind::ShowTenant
    );
    assert_eq!(
        kind("SELECT current_setting('regionguard.tenant', true) AS t"),
        StatementKind::ShowTenant
    );
    // Inside a bigger statement the backend cannot answer it.
    refusal("SELECT * FROM customers WHERE tenant_id = current_setting('regionguard.tenant')");
    refusal("SELECT set_config('regionguard.tenant', 'a', false), 1");
}

#[test]
fn show_tenant_and_other_settings() {
    assert_eq!(kind("SHOW regionguard.tenant"), StatementKind::ShowTenant);
    assert_eq!(kind("SHOW search_path"), StatementKind::Other);
    assert_eq!(plan("SHOW search_path").tenant, TenantRequirement::None);
}

#[test]
fn unknown_regionguard_settings_are_refused() {
    refusal("SET regionguard.tennant = 'acme'");
    refusal("RESET regionguard.tennant");
    refusal("SHOW regionguard.region");
    refusal("SET regionguard.tenant = 'a', 'b'");
}

#[test]
fn session_state_statements() {
    for sql in [
        "SET search_path TO app, public",
        "SET TIME ZONE 'UTC'",
        "SET application_name = 'x'",
        "SET LOCAL statement_timeout = 5",
        "DISCARD PLANS",
        "DEALLOCATE stmt1",
        "LISTEN chan",
        "UNLISTEN chan",
        "NOTIFY chan, 'hello'",
        "PREPARE q1 (int) AS SELECT $1",
    ] {
        assert_eq!(
            kind(sql),
            StatementKind::SessionState {
                resets_tenant: false
            },
            "{sql}"
        );
    }
}

#[test]
fn sql_prepare_carries_the_inner_requirement_and_execute_is_refused() {
    let p = plan("PREPARE q (text) AS SELECT * FROM customers WHERE tenant_id = $1");
    assert_eq!(p.tenant, TenantRequirement::Values(vec![param(1)]));
    refusal("EXECUTE q('acme')");
}

#[test]
fn transaction_control() {
    assert_eq!(kind("BEGIN"), StatementKind::Begin);
    assert_eq!(
        kind("BEGIN ISOLATION LEVEL SERIALIZABLE"),
        StatementKind::Begin
    );
    assert_eq!(kind("START TRANSACTION READ ONLY"), StatementKind::Begin);
    assert_eq!(kind("COMMIT"), StatementKind::Commit);
    assert_eq!(kind("END"), StatementKind::Commit);
    assert_eq!(kind("ROLLBACK"), StatementKind::Rollback);
    assert_eq!(kind("ABORT"), StatementKind::Rollback);
    assert_eq!(kind("SAVEPOINT s1"), StatementKind::Savepoint);
    assert_eq!(kind("RELEASE SAVEPOINT s1"), StatementKind::Release);
    assert_eq!(
        kind("ROLLBACK TO SAVEPOINT s1"),
        StatementKind::RollbackToSavepoint
    );
}

#[test]
fn two_phase_commit_statements() {
    assert_eq!(kind("PREPARE TRANSACTION 'x'"), StatementKind::TwoPhase);
    assert_eq!(kind("COMMIT PREPARED 'x'"), StatementKind::TwoPhase);
    assert_eq!(kind("rollback prepared 'x'"), StatementKind::TwoPhase);
}

#[test]
fn ddl_goes_everywhere_without_a_tenant() {
    for sql in [
        "CREATE TABLE t (id int)",
        "ALTER TABLE customers ADD COLUMN x int",
        "DROP TABLE t",
        "CREATE INDEX ON customers (tenant_id, id)",
        "COMMENT ON TABLE customers IS 'x'",
        "GRANT SELECT ON customers TO app",
        "REVOKE SELECT ON customers FROM app",
        "CREATE VIEW v AS SELECT * FROM customers",
    ] {
        let p = plan(sql);
        assert_eq!(p.kind, StatementKind::Ddl, "{sql}");
        assert_eq!(p.tenant, TenantRequirement::None, "{sql}");
    }
}

#[test]
fn explain_analyses_the_inner_statement() {
    let p = plan("EXPLAIN SELECT * FROM customers WHERE tenant_id = 'a'");
    assert_eq!(p.kind, StatementKind::Read);
    assert_eq!(p.tenant, TenantRequirement::Values(vec![lit("a")]));
    assert_eq!(
        kind("EXPLAIN ANALYZE DELETE FROM customers WHERE tenant_id = 'a'"),
        StatementKind::Write
    );
    assert_eq!(
        kind("EXPLAIN DELETE FROM customers WHERE tenant_id = 'a'"),
        StatementKind::Read
    );
    assert_eq!(
        unconstrained("EXPLAIN SELECT * FROM customers"),
        "customers"
    );
}

#[test]
fn declare_cursor_analyses_its_query() {
    assert_eq!(
        values("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM customers WHERE tenant_id = 'a'"),
        vec![lit("a")]
    );
}

#[test]
fn other_statements() {
    assert_eq!(kind("VACUUM"), StatementKind::Other);
}

// ----- comments ----------------------------------------------------------------------

#[test]
fn comment_tenant_block_and_line_forms() {
    let p = plan("/* regionguard.tenant = 'acme' */ SELECT * FROM customers");
    assert_eq!(p.comment_tenant.as_deref(), Some("acme"));
    assert_eq!(
        p.tenant,
        TenantRequirement::Unconstrained {
            table: "customers".into(),
            values: vec![]
        }
    );
    let p = plan("SELECT * FROM customers -- regionguard.tenant = 'globex'\n");
    assert_eq!(p.comment_tenant.as_deref(), Some("globex"));
    // A string literal is not a comment.
    assert_eq!(
        plan("SELECT '/* regionguard.tenant = ''x'' */'").comment_tenant,
        None
    );
}

#[test]
fn disagreeing_comments_are_refused() {
    refusal("/* regionguard.tenant='a' */ SELECT 1 /* regionguard.tenant='b' */");
    refusal("/* regionguard.tenant */ SELECT 1");
}

#[test]
fn comments_stay_with_their_statement() {
    let a = analyze(
        "SELECT 1; /* regionguard.tenant = 'b' */ SELECT 2",
        &tenancy(),
    );
    assert_eq!(a.statements.len(), 2);
    assert_eq!(a.statements[0].comment_tenant, None);
    assert_eq!(a.statements[1].comment_tenant.as_deref(), Some("b"));
}

// ----- multiple statements, params, parse failures ----------------------------------------

#[test]
fn several_statements_in_one_text() {
    let a = analyze(
        "BEGIN; UPDATE customers SET n = 1 WHERE tenant_id = 'a'; COMMIT;",
        &tenancy(),
    );
    let kinds: Vec<_> = a.statements.iter().map(|s| s.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            StatementKind::Begin,
            StatementKind::Write,
            StatementKind::Commit
        ]
    );
    assert_eq!(analyze("", &tenancy()).statements.len(), 0);
}

#[test]
fn param_count_is_the_highest_placeholder() {
    assert_eq!(
        analyze(
            "SELECT * FROM customers WHERE tenant_id = $3 AND id = $1",
            &tenancy()
        )
        .param_count,
        3
    );
    assert_eq!(analyze("SELECT '$5'", &tenancy()).param_count, 0);
}

#[test]
fn unparseable_statements_naming_no_tenant_table_pass() {
    let p = plan("FROBNICATE the_thing");
    assert!(matches!(
        p.kind,
        StatementKind::Unparsed {
            mentions_scoped: false,
            mentions_global: false,
            ..
        }
    ));
    assert_eq!(p.tenant, TenantRequirement::None);
}

#[test]
fn unparseable_statements_naming_tenant_or_global_tables_are_refused() {
    let p = plan("FROBNICATE Customers WITH 'secret'");
    match (&p.kind, &p.tenant) {
        (
            StatementKind::Unparsed {
                message,
                mentions_scoped: true,
                ..
            },
            TenantRequirement::Refuse { reason, .. },
        ) => {
            assert!(!message.contains("secret"), "{message}");
            assert!(!reason.contains("secret"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        plan("FROBNICATE plans").kind,
        StatementKind::Unparsed {
            mentions_global: true,
            ..
        }
    ));
    refusal("FROBNICATE plans");
}

#[test]
fn unterminated_literal_is_unparsed() {
    let a = analyze(
        "SELECT * FROM customers WHERE tenant_id = 'acme",
        &tenancy(),
    );
    assert_eq!(a.statements.len(), 1);
    assert!(matches!(
        a.statements[0].kind,
        StatementKind::Unparsed {
            mentions_scoped: true,
            ..
        }
    ));
}

#[test]
fn one_bad_statement_does_not_hide_the_others() {
    let a = analyze(
        "SELECT 1; FROB customers; SELECT * FROM orders WHERE tenant_id = 'a'",
        &tenancy(),
    );
    assert_eq!(a.statements.len(), 3);
    assert!(matches!(
        a.statements[1].tenant,
        TenantRequirement::Refuse { .. }
    ));
    assert_eq!(
        a.statements[2].tenant,
        TenantRequirement::Values(vec![lit("a")])
    );
}

#[test]
fn refusal_messages_never_echo_values() {
    for sql in [
        "INSERT INTO customers (tenant_id) VALUES (md5('secret-value'))",
        "UPDATE customers SET tenant_id = 'secret-value' || 'x' WHERE tenant_id = 'a'",
        "INSERT INTO customers VALUES ('secret-value')",
        "FROBNICATE customers 'secret-value'",
    ] {
        let p = plan(sql);
        let text = format!("{:?}", p.tenant);
        assert!(!text.contains("secret-value"), "{sql}: {text}");
    }
}

// ----- cache -------------------------------------------------------------------------------

#[test]
fn cache_returns_the_same_analysis() {
    let cache = AnalysisCache::new(10);
    let t = tenancy();
    let a = cache.get_or_analyze("SELECT * FROM customers WHERE tenant_id = $1", &t);
    let b = cache.get_or_analyze("SELECT * FROM customers WHERE tenant_id = $1", &t);
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(cache.len(), 1);
}

#[test]
fn cache_is_bounded() {
    let cache = AnalysisCache::new(3);
    let t = tenancy();
    for i in 0..10 {
        cache.get_or_analyze(
            &format!("SELECT * FROM customers WHERE tenant_id = '{i}'"),
            &t,
        );
        assert!(cache.len() <= 3);
    }
    assert!(!cache.is_empty());
    // Plain statements are analysed by a text scan and not cached at all.
    cache.invalidate();
    cache.get_or_analyze("SELECT 42", &t);
    assert!(cache.is_empty());
}

#[test]
fn cache_invalidation_uses_the_new_tenancy() {
    let cache = AnalysisCache::default();
    let before = Tenancy::new("tenant_id");
    let sql = "SELECT * FROM customers";
    assert_eq!(
        cache.get_or_analyze(sql, &before).statements[0].tenant,
        TenantRequirement::None
    );
    let generation = cache.generation();
    cache.invalidate();
    assert_eq!(cache.generation(), generation + 1);
    assert!(cache.is_empty());
    let after = tenancy();
    assert!(matches!(
        cache.get_or_analyze(sql, &after).statements[0].tenant,
        TenantRequirement::Unconstrained { .. }
    ));
}

#[test]
fn needs_no_tenant_quick_path() {
    assert!(analyze("SELECT 1; SET search_path = x", &tenancy()).needs_no_tenant());
    assert!(!analyze("SELECT 1; SELECT * FROM customers", &tenancy()).needs_no_tenant());
    assert!(!analyze("/* regionguard.tenant = 'a' */ SELECT 1", &tenancy()).needs_no_tenant());
}

#[test]
fn plain_statements_skip_the_parser_only_when_nothing_matters() {
    let t = tenancy();
    let plain = |sql: &str| analyze_plain(sql, &t).map(|a| a.statements[0].kind.clone());
    assert_eq!(
        plain("SELECT abalance FROM pgbench_accounts WHERE aid = 7;"),
        Some(StatementKind::Read)
    );
    assert_eq!(
        plain("  update pgbench_tellers set tbalance = 1 where tid = 2"),
        Some(StatementKind::Write)
    );
    // Anything that may matter goes to the full analysis.
    for sql in [
        "SELECT * FROM customers WHERE tenant_id = 'acme'",
        "SELECT * FROM Public.CUSTOMERS",
        "SELECT * FROM countries",
        "SELECT current_setting('regionguard.tenant')",
        "SELECT 1 /* regionguard.tenant = 'acme' */",
        "SELECT 1 -- comment",
        "SELECT $1",
        "SELECT 1; SELECT 2",
        "BEGIN",
        "SET search_path = x",
        "CREATE TABLE t (a int)",
        "WITH x AS (SELECT 1) SELECT * FROM x",
    ] {
        assert_eq!(plain(sql), None, "{sql}");
    }
    // And the shortcut agrees with the full analysis.
    for sql in ["SELECT 1", "DELETE FROM pgbench_history WHERE 1 = 1"] {
        let full = analyze(sql, &t);
        assert_eq!(analyze_plain(sql, &t).as_ref(), Some(&full), "{sql}");
    }
}

#[test]
fn plain_statements_without_tenancy_still_see_regionguard_names() {
    let t = Tenancy::new("tenant_id");
    let plain = |sql: &str| analyze_plain(sql, &t).map(|a| a.statements[0].kind.clone());
    assert_eq!(plain("SELECT * FROM customers"), Some(StatementKind::Read));
    assert_eq!(plain("SELECT 'Ré' FROM t"), Some(StatementKind::Read));
    for sql in [
        "SELECT current_setting('regionguard.tenant')",
        "SELECT current_setting('RegionGuard.Tenant')",
        "SELECT set_config('REGIONGUARD.tenant', 'x', false), 'é'",
    ] {
        assert_eq!(plain(sql), None, "{sql}");
    }
    // Comments, parameters and several statements are never plain.
    for sql in [
        "SELECT 1 -- x",
        "SELECT 1 /* x */",
        "SELECT $1",
        "SELECT 1; SELECT 2",
    ] {
        assert_eq!(plain(sql), None, "{sql}");
    }
    for sql in ["SELECT 1 - -1", "SELECT 4 / 2 * 3", "SELECT 'a-b/c' FROM t"] {
        assert_eq!(plain(sql), Some(StatementKind::Read), "{sql}");
    }
    // A name inside a word is not a `regionguard…` word: still plain.
    assert_eq!(
        plain("SELECT xregionguard FROM t"),
        Some(StatementKind::Read)
    );
    // Discovering tables, any unknown table may be tenant-scoped.
    let mut d = Tenancy::new("tenant_id");
    d.enable_discovery();
    assert_eq!(analyze_plain("SELECT * FROM customers", &d), None);
}

// ----- reads a standby may answer (read_from_standbys) ---------------------

fn on_standby(sql: &str) -> bool {
    standby_safe(sql, &analyze(sql, &tenancy()).statements)
}

#[test]
fn plain_reads_may_run_on_a_standby() {
    for sql in [
        "SELECT pg_is_in_recovery()",
        "SELECT * FROM customers WHERE tenant_id = 'acme'",
        "SELECT id FROM orders WHERE tenant_id = $1 ORDER BY id",
        "SELECT c.name FROM countries c JOIN plans p ON p.id = c.id",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "VALUES (1), (2)",
        "EXPLAIN SELECT * FROM countries",
        "SELECT 1; SELECT 2",
        "TABLE countries",
    ] {
        assert!(on_standby(sql), "{sql}");
    }
}

#[test]
fn locking_writing_and_session_reads_need_the_primary() {
    for sql in [
        "SELECT * FROM customers WHERE tenant_id = 'acme' FOR UPDATE",
        "SELECT * FROM customers WHERE tenant_id = 'acme' FOR NO KEY UPDATE",
        "SELECT * FROM customers WHERE tenant_id = 'acme' FOR SHARE",
        "SELECT * FROM customers WHERE tenant_id = 'acme' FOR KEY SHARE",
        "SELECT * INTO copy_of FROM countries",
        "WITH d AS (DELETE FROM countries RETURNING *) SELECT * FROM d",
        "DECLARE c CURSOR FOR SELECT * FROM countries",
        "SELECT nextval('ids')",
        "SELECT setval('ids', 5)",
        "SELECT currval('ids')",
        "SELECT lastval()",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_xact_lock(1)",
        "SELECT pg_notify('ch', 'x')",
        "SELECT set_config('search_path', 'app', false)",
        "SELECT txid_current()",
        "SELECT pg_current_xact_id()",
        "SELECT lo_create(0)",
        "SELECT 1; SELECT nextval('ids')",
        "SELECT 1; INSERT INTO countries VALUES (1)",
    ] {
        assert!(!on_standby(sql), "{sql}");
    }
}

#[test]
fn statements_other_than_reads_need_the_primary() {
    for sql in [
        "INSERT INTO customers (tenant_id, id) VALUES ('acme', 1)",
        "UPDATE customers SET name = 'x' WHERE tenant_id = 'acme'",
        "BEGIN",
        "SET search_path = app",
        "SHOW search_path",
        "CREATE TABLE t (id int)",
        "EXPLAIN ANALYZE DELETE FROM countries",
        "",
    ] {
        assert!(!on_standby(sql), "{sql}");
    }
}

#[test]
fn plain_fast_path_reads_are_judged_by_their_text() {
    let t = tenancy();
    let plain = |sql: &str| {
        let a = analyze_plain(sql, &t).expect("takes the fast path");
        standby_safe(sql, &a.statements)
    };
    assert!(plain("SELECT pg_is_in_recovery()"));
    assert!(!plain("SELECT nextval('ids')"));
    assert!(!plain("SELECT * FROM items FOR UPDATE"));
}

#[test]
fn set_config_is_found_in_any_statement() {
    assert!(sets_config(
        "SELECT set_config('search_path', 'app', false)"
    ));
    assert!(sets_config("UPDATE t SET a = SET_CONFIG('x', 'y', true)"));
    assert!(!sets_config("SELECT current_setting('search_path')"));
}

#[test]
fn table_statements_are_read_as_select_star() {
    let t = tenancy();
    let global = analyze("TABLE countries", &t);
    assert_eq!(global.statements[0].kind, StatementKind::Read);
    let scoped = analyze("table customers", &t);
    assert_eq!(scoped.statements[0].kind, StatementKind::Read);
    assert!(
        matches!(
            &scoped.statements[0].tenant,
            TenantRequirement::Unconstrained { table, .. } if table == "customers"
        ),
        "a tenant-scoped table read whole needs the session's tenant: {:?}",
        scoped.statements[0].tenant
    );
    assert!(matches!(
        analyze("TABLEx", &t).statements[0].kind,
        StatementKind::Unparsed { .. }
    ));
}

#[test]
fn statements_that_leave_session_state_keep_the_backend() {
    let keeps = |sql: &str| keeps_session_state(sql, &analyze(sql, &tenancy()).statements);
    for sql in [
        "SET statement_timeout = '5s'",
        "SET LOCAL work_mem = '64MB'",
        "RESET ALL",
        "LISTEN jobs",
        "PREPARE q AS SELECT 1",
        "CREATE TEMP TABLE scratch (x int)",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "SELECT pg_advisory_lock(1)",
        "SELECT PG_TRY_ADVISORY_LOCK(1, 2)",
        "SELECT set_config('search_path', 'app', false)",
        "SELECT currval('ids')",
        "SELECT lastval()",
        "LOAD 'auto_explain'",
        "SELECT 1; SET search_path = app",
        "this is not sql",
    ] {
        assert!(keeps(sql), "{sql}");
    }
    for sql in [
        "SELECT * FROM customers WHERE tenant_id = 'acme'",
        "INSERT INTO countries VALUES (1)",
        "BEGIN",
        "COMMIT",
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT nextval('ids')",
        "SET regionguard.tenant = 'acme'",
        "DECLARE c CURSOR FOR SELECT 1",
        "SELECT 1",
    ] {
        assert!(!keeps(sql), "{sql}");
    }
}
