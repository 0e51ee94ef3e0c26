//! The example multi-tenant schema and data: one tenant per region, each
//! tenant's rows only in its own region's database.

use crate::localpg::quote_literal;
use std::fmt::Write;

/// Tables every region has (`customers.email` and `customers.full_name`
/// hold ciphertext, written through the proxy); `tenant_id` leads every primary key, as
/// RegionGuard expects of tenant-scoped tables.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS customers (
    tenant_id text NOT NULL,
    id bigint,
    email bytea,
    full_name bytea,
    created_at timestamptz DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE IF NOT EXISTS orders (
    tenant_id text NOT NULL,
    id bigint,
    customer_id bigint,
    amount numeric(12,2),
    status text,
    created_at timestamptz,
    PRIMARY KEY (tenant_id, id)
);
";

/// A tenant and the rows it owns.
struct Tenant {
    region: &'static str,
    name: &'static str,
    /// `(id, email, full name)`
    customers: &'static [(i64, &'static str, &'static str)],
    /// `(id, customer id, amount, status, days ago)`
    orders: &'static [(i64, i64, &'static str, &'static str, u32)],
}

const TENANTS: [Tenant; 3] = [
    Tenant {
        region: "eu",
        name: "acme",
        customers: &[
            (1, "anna.schmidt@acme.example", "Anna Schmidt"),
            (2, "luc.martin@acme.example", "Luc Martin"),
            (3, "sofia.rossi@acme.example", "Sofia Rossi"),
        ],
        orders: &[
            (1, 1, "129.90", "paid", 12),
            (2, 1, "45.00", "shipped", 5),
            (3, 2, "310.25", "paid", 3),
            (4, 3, "18.50", "pending", 0),
        ],
    },
    Tenant {
        region: "us",
        name: "globex",
        customers: &[
            (1, "hank.scorpio@globex.example", "Hank Scorpio"),
            (2, "homer.simpson@globex.example", "Homer Simpson"),
            (3, "frank.grimes@globex.example", "Frank Grimes"),
        ],
        orders: &[
            (1, 1, "9999.99", "paid", 30),
            (2, 2, "12.00", "refunded", 8),
            (3, 2, "64.75", "shipped", 2),
            (4, 3, "250.00", "pending", 1),
        ],
    },
    Tenant {
        region: "apac",
        name: "initech",
        customers: &[
            (1, "peter.gibbons@initech.example", "Peter Gibbons"),
            (2, "milton.waddams@initech.example", "Milton Waddams"),
            (3, "samir.n@initech.example", "Samir Nagheenanajar"),
        ],
        orders: &[
            (1, 2, "7.49", "paid", 20),
            (2, 1, "1200.00", "shipped", 9),
            (3, 3, "88.10", "paid", 4),
            (4, 2, "15.99", "pending", 0),
        ],
    },
];

/// SQL creating the tables and loading `region`'s tenant. Safe to run again:
/// existing tables and rows are left as they are.
/// The customers of every tenant, inserted through the proxy so that
/// their classified columns are encrypted. Safe to run again.
pub(crate) fn customer_inserts() -> String {
    let mut sql = String::new();
    for tenant in &TENANTS {
        let tenant_id = quote_literal(tenant.name);
        for (id, email, full_name) in tenant.customers {
            // Writing to a String cannot fail.
            let _ = writeln!(
                sql,
                "INSERT INTO customers (tenant_id, id, email, full_name) \
                 VALUES ({tenant_id}, {id}, {}, {}) ON CONFLICT DO NOTHING;",
                quote_literal(email),
                quote_literal(full_name)
            );
        }
    }
    sql
}

/// `(tenant, region)` of the example tenants, for the demo's `[tenants]`.
pub(crate) fn tenant_regions() -> impl Iterator<Item = (&'static str, &'static str)> {
    TENANTS.iter().map(|t| (t.name, t.region))
}

pub(crate) fn sql_for(region: &str) -> String {
    let mut sql = SCHEMA.to_string();
    for tenant in TENANTS.iter().filter(|t| t.region == region) {
        let tenant_id = quote_literal(tenant.name);
        for (id, customer_id, amount, status, days_ago) in tenant.orders {
            let _ = writeln!(
                sql,
                "INSERT INTO orders (tenant_id, id, customer_id, amount, status, created_at) \
                 VALUES ({tenant_id}, {id}, {customer_id}, {amount}, {}, \
                 now() - interval '{days_ago} days') ON CONFLICT DO NOTHING;",
                quote_literal(status)
            );
        }
    }
    sql
}
