//! The residency audit: a seeded random workload (> 10,000 statements:
//! inserts, updates, deletes, selects, transactions committed and rolled
//! back, refused statements; simple and extended protocol; six concurrent
//! clients) for 60 tenants across the three regions, through the proxy.
//! Then direct reads of every regional database prove that no row of a
//! foreign tenant is there and that every committed row — and nothing else —
//! is where its tenant lives, with its last committed values.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use support::{start_proxy, tenant_client, within, TestRegions, REGIONS};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

const SEED: u64 = 0x5EED_2026;
const TENANTS: usize = 60;
const WORKERS: usize = 6;
const STATEMENTS_PER_WORKER: usize = 1750;

fn tenant(i: usize) -> String {
    format!("t{i:02}")
}

fn region_of(i: usize) -> &'static str {
    REGIONS[i % 3]
}

/// What the workload committed: customers (tenant, id) → email and orders
/// (tenant, id) → amount.
#[derive(Clone, Default)]
struct Model {
    customers: BTreeMap<(String, i64), String>,
    orders: BTreeMap<(String, i64), i64>,
}

struct Prepared {
    insert_customer: Statement,
    insert_order: Statement,
    update_customer: Statement,
    delete_customer: Statement,
    select_customer: Statement,
}

async fn prepare(client: &Client) -> Prepared {
    let p = |sql: &'static str, types: &'static [Type]| async move {
        client
            .prepare_typed(sql, types)
            .await
            .unwrap_or_else(|e| panic!("prepare {sql}: {e}"))
    };
    Prepared {
        insert_customer: p(
            "INSERT INTO customers (tenant_id, id, email) VALUES ($1, $2, $3)",
            &[Type::TEXT, Type::INT8, Type::TEXT],
        )
        .await,
        insert_order: p(
            "INSERT INTO orders (tenant_id, id, customer_id, amount) VALUES ($1, $2, $3, $4::bigint)",
            &[Type::TEXT, Type::INT8, Type::INT8, Type::INT8],
        )
        .await,
        update_customer: p(
            "UPDATE customers SET email = $3 WHERE tenant_id = $1 AND id = $2",
            &[Type::TEXT, Type::INT8, Type::TEXT],
        )
        .await,
        delete_customer: p(
            "DELETE FROM customers WHERE tenant_id = $1 AND id = $2",
            &[Type::TEXT, Type::INT8],
        )
        .await,
        select_customer: p(
            "SELECT email FROM customers WHERE tenant_id = $1 AND id = $2",
            &[Type::TEXT, Type::INT8],
        )
        .await,
    }
}

struct Worker {
    rng: StdRng,
    /// Tenant indexes this worker owns (no other worker touches them).
    owned: Vec<usize>,
    next_customer: BTreeMap<String, i64>,
    next_order: BTreeMap<String, i64>,
    statements: usize,
    refusals: usize,
    transactions: usize,
    rollbacks: usize,
}

fn rows_affected(msgs: &[SimpleQueryMessage]) -> u64 {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .sum()
}

impl Worker {
    fn pick(&mut self) -> usize {
        self.owned[self.rng.random_range(0..self.owned.len())]
    }

    /// One write or read for `t` (tenant index) applied to `model`.
    async fn op(&mut self, client: &Client, prep: &Prepared, model: &mut Model, t: usize) {
        let tn = tenant(t);
        let simple = self.rng.random_bool(0.5);
        let existing: Vec<i64> = model
            .customers
            .range((tn.clone(), i64::MIN)..=(tn.clone(), i64::MAX))
            .map(|((_, id), _)| *id)
            .collect();
        let kind = self.rng.random_range(0..100);
        self.statements += 1;
        if kind < 35 || existing.is_empty() {
            let id = {
                let n = self.next_customer.entry(tn.clone()).or_insert(1);
                *n += 1;
                *n - 1
            };
            let email = format!("{tn}-{id}@{}", self.rng.random_range(0..1_000_000));
            if simple {
                let msgs = client
                    .simple_query(&format!(
                        "INSERT INTO customers (tenant_id, id, email) VALUES ('{tn}', {id}, '{email}')"
                    ))
                    .await
                    .unwrap_or_else(|e| panic!("insert customer {tn}: {e}"));
                assert_eq!(rows_affected(&msgs), 1);
            } else {
                client
                    .execute(&prep.insert_customer, &[&tn, &id, &email])
                    .await
                    .unwrap_or_else(|e| panic!("insert customer {tn}: {e}"));
            }
            model.customers.insert((tn, id), email);
            return;
        }
        let id = existing[self.rng.random_range(0..existing.len())];
        match kind {
            35..50 => {
                let oid = {
                    let n = self.next_order.entry(tn.clone()).or_insert(1);
                    *n += 1;
                    *n - 1
                };
                let amount: i64 = self.rng.random_range(1..10_000);
                if simple {
                    client
                        .simple_query(&format!(
                            "INSERT INTO orders (tenant_id, id, customer_id, amount) \
                             VALUES ('{tn}', {oid}, {id}, {amount})"
                        ))
                        .await
                        .unwrap_or_else(|e| panic!("insert order {tn}: {e}"));
                } else {
                    client
                        .execute(&prep.insert_order, &[&tn, &oid, &id, &amount])
                        .await
                        .unwrap_or_else(|e| panic!("insert order {tn}: {e}"));
                }
                model.orders.insert((tn, oid), amount);
            }
            50..68 => {
                let email = format!("{tn}-{id}@updated-{}", self.rng.random_range(0..1_000_000));
                let n = if simple {
                    let msgs = client
                        .simple_query(&format!(
                            "UPDATE customers SET email = '{email}' WHERE tenant_id = '{tn}' AND id = {id}"
                        ))
                        .await
                        .unwrap_or_else(|e| panic!("update {tn}: {e}"));
                    rows_affected(&msgs)
                } else {
                    client
                        .execute(&prep.update_customer, &[&tn, &id, &email])
                        .await
                        .unwrap_or_else(|e| panic!("update {tn}: {e}"))
                };
                assert_eq!(n, 1, "update {tn}/{id}");
                model.customers.insert((tn, id), email);
            }
            68..78 => {
                let n = if simple {
                    let msgs = client
                        .simple_query(&format!(
                            "DELETE FROM customers WHERE id = {id} AND tenant_id = '{tn}'"
                        ))
                        .await
                        .unwrap_or_else(|e| panic!("delete {tn}: {e}"));
                    rows_affected(&msgs)
                } else {
                    client
                        .execute(&prep.delete_customer, &[&tn, &id])
                        .await
                        .unwrap_or_else(|e| panic!("delete {tn}: {e}"))
                };
                assert_eq!(n, 1, "delete {tn}/{id}");
                model.customers.remove(&(tn, id));
            }
            _ => {
                // Reads see exactly the model (this worker owns the tenant).
                let want = model.customers.get(&(tn.clone(), id)).cloned();
                let got = if simple {
                    let msgs = client
                        .simple_query(&format!(
                            "SELECT email FROM customers WHERE tenant_id = '{tn}' AND id = {id}"
                        ))
                        .await
                        .unwrap_or_else(|e| panic!("select {tn}: {e}"));
                    msgs.iter().find_map(|m| match m {
                        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                        _ => None,
                    })
                } else {
                    client
                        .query_opt(&prep.select_customer, &[&tn, &id])
                        .await
                        .unwrap_or_else(|e| panic!("select {tn}: {e}"))
                        .map(|r| r.get(0))
                };
                assert_eq!(got, want, "read of {tn}/{id}");
            }
        }
    }

    async fn run(mut self, client: Client, ids: usize) -> (Model, Worker) {
        let prep = prepare(&client).await;
        let mut model = Model::default();
        while self.statements < STATEMENTS_PER_WORKER {
            let dice = self.rng.random_range(0..100);
            if dice < 80 {
                let t = self.pick();
                self.op(&client, &prep, &mut model, t).await;
            } else if dice < 92 {
                // A transaction for one tenant (or two of the same region).
                self.transactions += 1;
                let t = self.pick();
                let mut tx_model = model.clone();
                let begin = if self.rng.random_bool(0.5) {
                    "BEGIN"
                } else {
                    "START TRANSACTION ISOLATION LEVEL READ COMMITTED"
                };
                client.simple_query(begin).await.expect("BEGIN");
                self.statements += 1;
                if self.rng.random_bool(0.4) {
                    client
                        .simple_query(&format!("SET LOCAL regionguard.tenant = '{}'", tenant(t)))
                        .await
                        .expect("SET LOCAL");
                    self.statements += 1;
                }
                for _ in 0..self.rng.random_range(1..5) {
                    self.op(&client, &prep, &mut tx_model, t).await;
                }
                let end = self.rng.random_range(0..100);
                if end < 8 {
                    // A statement for a tenant of another region fails it.
                    let other = (0..TENANTS)
                        .find(|o| region_of(*o) != region_of(t))
                        .expect("another region's tenant");
                    let r = client
                        .simple_query(&format!(
                            "DELETE FROM customers WHERE tenant_id = '{}'",
                            tenant(other)
                        ))
                        .await;
                    assert_eq!(support::expect_sqlstate(r, "other region in tx"), "42501");
                    self.refusals += 1;
                    let r = client.simple_query("SELECT 1").await;
                    assert_eq!(support::expect_sqlstate(r, "failed tx"), "25P02");
                    client.simple_query("ROLLBACK").await.expect("ROLLBACK");
                    self.statements += 3;
                    self.rollbacks += 1;
                } else if end < 25 {
                    client.simple_query("ROLLBACK").await.expect("ROLLBACK");
                    self.statements += 1;
                    self.rollbacks += 1;
                } else {
                    client.simple_query("COMMIT").await.expect("COMMIT");
                    self.statements += 1;
                    model = tx_model;
                }
            } else if dice < 96 {
                // A multi-row INSERT for two tenants of one region.
                let t = self.pick();
                let u = *self
                    .owned
                    .iter()
                    .find(|u| **u != t && region_of(**u) == region_of(t))
                    .expect("a second tenant in the region");
                let (a, b) = (tenant(t), tenant(u));
                let mut rows = Vec::new();
                for tn in [&a, &b] {
                    let n = self.next_customer.entry(tn.clone()).or_insert(1);
                    *n += 1;
                    rows.push((tn.clone(), *n - 1, format!("{tn}-multi-{}", *n - 1)));
                }
                let sql = format!(
                    "INSERT INTO customers (tenant_id, id, email) VALUES ('{}', {}, '{}'), ('{}', {}, '{}')",
                    rows[0].0, rows[0].1, rows[0].2, rows[1].0, rows[1].1, rows[1].2
                );
                if self.rng.random_bool(0.5) {
                    client.simple_query(&sql).await.expect("multi-row insert");
                } else {
                    client
                        .execute(sql.as_str(), &[])
                        .await
                        .expect("multi-row insert");
                }
                self.statements += 1;
                for (tn, id, email) in rows {
                    model.customers.insert((tn, id), email);
                }
            } else {
                // Refused: a cross-region IN list or no tenant at all.
                let t = self.pick();
                let other = (0..TENANTS)
                    .find(|o| region_of(*o) != region_of(t))
                    .expect("another region's tenant");
                let sql = if self.rng.random_bool(0.5) {
                    format!(
                        "UPDATE customers SET email = 'leak' WHERE tenant_id IN ('{}', '{}')",
                        tenant(t),
                        tenant(other)
                    )
                } else {
                    format!("DELETE FROM orders WHERE customer_id = {}", ids % 7)
                };
                let r = client.simple_query(&sql).await;
                assert_eq!(support::expect_sqlstate(r, &sql), "42501");
                self.statements += 1;
                self.refusals += 1;
            }
        }
        (model, self)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_audit() {
    let regions = TestRegions::start().await;
    regions.create_routing_schema().await;
    let tenants: Vec<(String, &str)> = (0..TENANTS).map(|i| (tenant(i), region_of(i))).collect();
    let tenant_refs: Vec<(&str, &str)> = tenants.iter().map(|(t, r)| (t.as_str(), *r)).collect();
    let proxy = start_proxy(regions.routing_config(&tenant_refs)).await;
    let started = std::time::Instant::now();
    let results = within(90, "the audit workload", async {
        let mut handles = Vec::new();
        for w in 0..WORKERS {
            let client = tenant_client(&proxy, None).await;
            let per = TENANTS / WORKERS;
            let worker = Worker {
                rng: StdRng::seed_from_u64(SEED + w as u64),
                owned: (w * per..(w + 1) * per).collect(),
                next_customer: BTreeMap::new(),
                next_order: BTreeMap::new(),
                statements: 0,
                refusals: 0,
                transactions: 0,
                rollbacks: 0,
            };
            handles.push(tokio::spawn(worker.run(client, w)));
        }
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.expect("worker"));
        }
        results
    })
    .await;
    let elapsed = started.elapsed();
    let mut model = Model::default();
    let (mut statements, mut refusals, mut transactions, mut rollbacks) = (0, 0, 0, 0);
    for (m, w) in results {
        model.customers.extend(m.customers);
        model.orders.extend(m.orders);
        statements += w.statements;
        refusals += w.refusals;
        transactions += w.transactions;
        rollbacks += w.rollbacks;
    }
    eprintln!(
        "audit: {statements} statements ({refusals} refused, {transactions} transactions, \
         {rollbacks} rolled back) in {elapsed:?}; {} customers, {} orders committed",
        model.customers.len(),
        model.orders.len()
    );
    assert!(statements >= 10_000, "{statements} statements");
    let home: BTreeMap<String, &str> = tenants.iter().map(|(t, r)| (t.clone(), *r)).collect();

    // Direct reads of every region.
    let mut found_customers = 0;
    let mut found_orders = 0;
    for region in REGIONS {
        let direct = regions.client(region).await;
        let customers: BTreeMap<(String, i64), String> = direct
            .query("SELECT tenant_id, id, email FROM customers", &[])
            .await
            .expect("read customers")
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let orders: BTreeMap<(String, i64), i64> = direct
            .query("SELECT tenant_id, id, amount::bigint FROM orders", &[])
            .await
            .expect("read orders")
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        // No row of a foreign tenant.
        for (t, id) in customers.keys() {
            assert_eq!(
                home.get(t).copied(),
                Some(region),
                "customer {t}/{id} found in {region}"
            );
        }
        for (t, id) in orders.keys() {
            assert_eq!(
                home.get(t).copied(),
                Some(region),
                "order {t}/{id} found in {region}"
            );
        }
        // Exactly the committed rows of this region's tenants, with their
        // last committed values.
        let want_customers: BTreeMap<(String, i64), String> = model
            .customers
            .iter()
            .filter(|((t, _), _)| home[t] == region)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let want_orders: BTreeMap<(String, i64), i64> = model
            .orders
            .iter()
            .filter(|((t, _), _)| home[t] == region)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_eq!(
            customers.len(),
            want_customers.len(),
            "customer count in {region}"
        );
        assert!(
            customers == want_customers,
            "customers in {region} differ from the model"
        );
        assert_eq!(orders.len(), want_orders.len(), "order count in {region}");
        assert!(
            orders == want_orders,
            "orders in {region} differ from the model"
        );
        assert!(!customers.values().any(|e| e == "leak"));
        found_customers += customers.len();
        found_orders += orders.len();
    }
    assert_eq!(found_customers, model.customers.len());
    assert_eq!(found_orders, model.orders.len());
    proxy.shutdown().await;
}
