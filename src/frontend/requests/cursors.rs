//! Cursors over classified columns (ADR 14).
//!
//! `FETCH n FROM c` names no table and no tenant, so nothing in it says
//! which keys decrypt its rows. The session remembers, per cursor name,
//! the region and keys of the `DECLARE` that opened it, and a FETCH of a
//! known cursor is decrypted with them. A cursor is forgotten when it
//! ends: CLOSE, the end of its transaction (COMMIT keeps `WITH HOLD`
//! cursors; ROLLBACK drops those declared in it), DISCARD ALL. A FETCH of
//! a cursor the session does not know (declared through a server-side
//! function, or forgotten) gets no keys: classified values in its rows
//! are refused (XX001), never shown as ciphertext.

use super::{Requests, Txn};
use crate::frontend::encrypt::StatementKeys;
use crate::sql::{CursorOp, StatementKind, StatementPlan};
use std::sync::Arc;

/// A cursor declared over classified columns.
pub(super) struct Cursor {
    keys: Arc<StatementKeys>,
    hold: bool,
    /// Its transaction committed (a WITH HOLD cursor now outlives it).
    committed: bool,
}

impl Requests {
    /// Follows one statement's effect on the session's cursors; `keys`
    /// are the statement's keys (a DECLARE over classified columns has
    /// some), `in_txn` whether it runs in an explicit transaction.
    pub(super) fn track_cursor(
        &mut self,
        plan: &StatementPlan,
        keys: Option<&Arc<StatementKeys>>,
        in_txn: bool,
    ) {
        match (&plan.kind, &plan.cursor) {
            (StatementKind::Commit, _) => self.cursors_survive_commit(),
            (StatementKind::Rollback, _) => self.cursors.retain(|_, c| c.committed),
            (
                StatementKind::SessionState {
                    resets_tenant: true,
                },
                _,
            ) => self.cursors.clear(),
            (_, Some(CursorOp::Declare { name, hold })) => match keys {
                Some(keys) if plan.crypto.touches_classified => {
                    self.cursors.insert(
                        name.clone(),
                        Cursor {
                            keys: Arc::clone(keys),
                            hold: *hold,
                            committed: *hold && !in_txn,
                        },
                    );
                }
                _ => {
                    self.cursors.remove(name);
                }
            },
            (_, Some(CursorOp::Close { name: Some(name) })) => {
                self.cursors.remove(name);
            }
            (_, Some(CursorOp::Close { name: None })) => self.cursors.clear(),
            _ => {}
        }
    }

    /// The end of a transaction that committed (explicitly, or the
    /// implicit one of a query outside a transaction): only WITH HOLD
    /// cursors remain.
    pub(super) fn cursors_survive_commit(&mut self) {
        self.cursors.retain(|_, c| c.hold);
        for c in self.cursors.values_mut() {
            c.committed = true;
        }
    }

    /// Follows a simple query's statements in order, then ends its
    /// implicit transaction if it ran outside one.
    pub(super) fn track_query_cursors(
        &mut self,
        plans: &[StatementPlan],
        keys: Option<&Arc<StatementKeys>>,
    ) {
        if self.cursors.is_empty() && plans.iter().all(|p| p.cursor.is_none()) {
            return;
        }
        let mut in_txn = self.txn != Txn::Idle;
        for p in plans {
            match p.kind {
                StatementKind::Begin => in_txn = true,
                StatementKind::Commit | StatementKind::Rollback => in_txn = false,
                _ => {}
            }
            self.track_cursor(p, keys, in_txn);
        }
        if !in_txn {
            self.cursors_survive_commit();
        }
    }

    /// The keys and region of the cursor a FETCH reads, when the session
    /// declared it over classified columns.
    pub(super) fn fetch_keys(&self, plan: &StatementPlan) -> Option<Arc<StatementKeys>> {
        match &plan.cursor {
            Some(CursorOp::Fetch { name }) => self.cursors.get(name).map(|c| Arc::clone(&c.keys)),
            _ => None,
        }
    }

    /// The keys a simple query's rows decrypt with: its own, plus those of
    /// the cursors its FETCHes read (in the same region).
    pub(super) fn with_fetch_keys(
        &self,
        plans: &[StatementPlan],
        keys: Option<Arc<StatementKeys>>,
        region: &Arc<str>,
    ) -> Option<Arc<StatementKeys>> {
        let mut merged: Option<StatementKeys> = None;
        for k in plans.iter().filter_map(|p| self.fetch_keys(p)) {
            if k.region != *region {
                continue;
            }
            let m = merged.get_or_insert_with(|| StatementKeys {
                region: region.clone(),
                tenants: Vec::new(),
            });
            for (t, tk) in &k.tenants {
                if m.get(t).is_none() {
                    m.tenants.push((t.clone(), Arc::clone(tk)));
                }
            }
        }
        let Some(mut m) = merged else {
            return keys;
        };
        if let Some(own) = &keys {
            for (t, tk) in &own.tenants {
                if m.get(t).is_none() {
                    m.tenants.push((t.clone(), Arc::clone(tk)));
                }
            }
        }
        Some(Arc::new(m))
    }

    /// The region of the cursor a query FETCHes from, for a query placed
    /// nowhere in particular (a WITH HOLD cursor read outside a transaction).
    pub(super) fn fetch_region(&self, plans: &[StatementPlan]) -> Option<Arc<str>> {
        plans
            .iter()
            .find_map(|p| self.fetch_keys(p))
            .map(|k| k.region.clone())
    }
}
