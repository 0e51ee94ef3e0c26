//! `ev_action` texts captured from PostgreSQL 15.18 for:
//!
//! ```sql
//! create table customers(id int, tenant_id text, email bytea, full_name text); -- OID 16384
//! create table orders(id int, tenant_id text, customer_id int, total int);     -- OID 16389
//! create view v1 as select id, tenant_id, email as mail, upper(full_name) as up,
//!     email::text as et, 1 as k from customers;                                  -- 16394
//! create view v3 as with x as (select * from customers)
//!     select s.e, x.tenant_id from (select email as e, id from customers) s, x; -- 16402
//! create view v4 as select mail as m2, tenant_id from v1;                        -- 16406
//! create view v5 as select email from customers union select email from customers; -- 16410
//! create view v6 as select upper(s.n) as un, s.n
//!     from (select full_name as n from customers) s;                             -- 16422
//! create view v7 as select upper(tenant_id) as ut, length(email) as le
//!     from customers join orders using (tenant_id);                              -- 16426
//! create view v8 as with c as (select email as e from customers)
//!     select e, length(e) as l, (select count(*) from orders) as cnt from c;     -- 16430
//! ```

use super::*;

const CUSTOMERS: u32 = 16384;
const ORDERS: u32 = 16389;

fn col(rel: u32, attnum: i16) -> Origin {
    Origin::Column { rel, attnum }
}

fn src(rel: u32, attnum: i16) -> Source {
    Source::Column { rel, attnum }
}

fn origins(q: &ViewQuery) -> Vec<(i16, &str, &Origin)> {
    q.columns
        .iter()
        .map(|c| (c.attnum, c.name.as_str(), &c.origin))
        .collect()
}

#[test]
fn plain_renamed_computed_and_constant_columns() {
    let q = read(include_str!("testdata/v1.txt"), 16394).unwrap();
    assert_eq!(
        origins(&q),
        vec![
            (1, "id", &col(CUSTOMERS, 1)),
            (2, "tenant_id", &col(CUSTOMERS, 2)),
            (3, "mail", &col(CUSTOMERS, 3)),
            (4, "up", &Origin::Computed(vec![src(CUSTOMERS, 4)])),
            (5, "et", &Origin::Computed(vec![src(CUSTOMERS, 3)])),
            (6, "k", &Origin::Computed(vec![])),
        ]
    );
    assert_eq!(q.relations, vec![CUSTOMERS]);
}

#[test]
fn ctes_and_subqueries_pass_columns_through() {
    let q = read(include_str!("testdata/v3.txt"), 16402).unwrap();
    assert_eq!(
        origins(&q),
        vec![
            (1, "e", &col(CUSTOMERS, 3)),
            (2, "tenant_id", &col(CUSTOMERS, 2))
        ]
    );
}

#[test]
fn a_view_over_a_view_names_the_inner_view() {
    let q = read(include_str!("testdata/v4.txt"), 16406).unwrap();
    assert_eq!(
        origins(&q),
        vec![(1, "m2", &col(16394, 3)), (2, "tenant_id", &col(16394, 2))]
    );
    assert_eq!(q.relations, vec![16394]);
}

#[test]
fn set_operations_are_opaque() {
    let q = read(include_str!("testdata/v5.txt"), 16410).unwrap();
    assert_eq!(
        origins(&q),
        vec![(1, "email", &Origin::Computed(vec![Source::Opaque]))]
    );
}

#[test]
fn computed_columns_are_followed_through_subqueries_joins_and_ctes() {
    let q = read(include_str!("testdata/v6.txt"), 16422).unwrap();
    assert_eq!(
        origins(&q),
        vec![
            (1, "un", &Origin::Computed(vec![src(CUSTOMERS, 4)])),
            (2, "n", &col(CUSTOMERS, 4)),
        ]
    );
    let q = read(include_str!("testdata/v7.txt"), 16426).unwrap();
    assert_eq!(
        origins(&q),
        vec![
            // An inner join's USING column is its left input's column.
            (1, "ut", &Origin::Computed(vec![src(CUSTOMERS, 2)])),
            (2, "le", &Origin::Computed(vec![src(CUSTOMERS, 3)])),
        ]
    );
    assert_eq!(q.relations, vec![CUSTOMERS, ORDERS]);
    let q = read(include_str!("testdata/v8.txt"), 16430).unwrap();
    assert_eq!(
        origins(&q),
        vec![
            (1, "e", &col(CUSTOMERS, 3)),
            (2, "l", &Origin::Computed(vec![src(CUSTOMERS, 3)])),
            (3, "cnt", &Origin::Computed(vec![Source::Opaque])),
        ]
    );
}

#[test]
fn unreadable_actions_are_errors() {
    assert!(read("({QUERY :targetList <>} {QUERY :targetList <>})", 1).is_err());
    assert!(read("{QUERY :targetList <>}", 1).is_err());
    assert!(read("({QUERY :rtable <>})", 1).is_err());
}
