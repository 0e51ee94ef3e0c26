//! COPY as the request pump sees it: planning a `COPY … FROM STDIN` into a
//! tenant-scoped table, or a `COPY … TO STDOUT` of a table with classified
//! columns, when its statement arrives (simple Query, or Parse); then
//! passing the client's CopyData through a [`CopyIn`] filter until CopyDone
//! or CopyFail (FROM), or registering the decryption of the rows with the
//! response side (TO). See [`crate::frontend::copy_in`] and
//! [`crate::frontend::copy_out`].
//!
//! A refused row fails the backend's COPY with CopyFail, so nothing of it
//! is committed; the backend's answer to that CopyFail is replaced by the
//! proxy's own error (through [`super::super::expect::BackendShared::override_error`]),
//! and what the client still sends of the COPY is dropped.

use super::{Quit, Requests};
use crate::copy::Direction;
use crate::frontend::copy_in::{self, CopyIn, CopyPlan};
use crate::frontend::copy_out::CopyOutRun;
use crate::frontend::encrypt;
use crate::frontend::route;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::framing::HEADER_LEN;
use crate::server::state::Shared;
use crate::sql::Analysis;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// The COPY FROM STDIN the client is sending data for.
pub(super) struct ActiveCopy {
    copy: CopyIn,
    /// Started by a simple Query (its answers are one batch that ended
    /// with the Query), rather than by Execute.
    simple: bool,
    /// A row was refused and the backend's COPY failed: drop the rest.
    failed: bool,
}

impl ActiveCopy {
    pub(super) fn new(copy: CopyIn, simple: bool) -> Self {
        ActiveCopy {
            copy,
            simple,
            failed: false,
        }
    }
}

/// What a portal's COPY needs from the proxy when it is executed.
#[derive(Clone)]
pub(super) enum PortalCopy {
    /// FROM STDIN: rows checked (and encrypted) with this plan.
    In(Arc<CopyPlan>),
    /// TO STDOUT: rows decrypted.
    Out(Arc<CopyOutRun>),
}

/// The statement of a query that is a COPY whose rows the proxy must see.
fn copy_plan(analysis: &Analysis) -> Option<&crate::sql::StatementPlan> {
    analysis.statements.iter().find(|p| copy_in::needs_plan(p))
}

/// A COPY ready to be sent, with the text to send instead of the client's
/// (column list written out) when it had none.
pub(super) enum PlannedCopy {
    /// FROM STDIN: the client's data goes through this filter.
    In(Box<CopyIn>, Option<String>),
    /// TO STDOUT of a table with classified columns: the response side
    /// decrypts the rows.
    Out(Arc<CopyOutRun>, Option<String>),
}

/// How a COPY TO STDOUT of `plan` in `region` decrypts its rows, with the
/// keys of the statement's tenant (`tenants`: the placement's) loaded.
pub(super) async fn copy_out_run(
    shared: &Shared,
    plan: Arc<CopyPlan>,
    region: &Arc<str>,
    tenants: &[String],
) -> Result<Arc<CopyOutRun>, PgError> {
    let tenant = match tenants {
        [t] => Some(t.clone()),
        _ => None,
    };
    if tenant.is_none() && plan.tenant_index.is_none() && !plan.classified.is_empty() {
        return Err(route::refusal(
            format!(
                "{}: RegionGuard cannot tell which tenant's key decrypts the rows",
                plan.what()
            ),
            format!(
                "copy the tenant column {} too, or SET regionguard.tenant",
                plan.tenant_column
            ),
        ));
    }
    let tenant = match tenant {
        Some(t) => {
            let Some(keyring) = shared.keyring.as_ref() else {
                return Err(PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    "classified columns are configured but no region key is loaded",
                ));
            };
            let keys = keyring
                .for_read(region, &t)
                .await
                .map_err(|e| encrypt::crypto_error(&e))?;
            Some((t, keys))
        }
        None => None,
    };
    Ok(Arc::new(CopyOutRun {
        plan,
        region: region.clone(),
        tenant,
    }))
}

impl Requests {
    /// Sends a planned COPY's statement (with its column list written out
    /// when it had none); a COPY FROM STDIN then filters the client's data,
    /// a COPY TO STDOUT has its rows decrypted on the way back.
    pub(super) async fn send_copy_query(
        &mut self,
        region: Arc<str>,
        msg: &Bytes,
        after: super::After,
        planned: PlannedCopy,
    ) -> Result<(), Quit> {
        let (copy, rewritten) = match planned {
            PlannedCopy::In(copy, rewritten) => (Some(*copy), rewritten),
            PlannedCopy::Out(run, rewritten) => {
                // Registered for the Query's batch, after a held BEGIN's.
                self.pin_held(&region).await?;
                let b = self.backend(&region).await?;
                if !run.plan.classified.is_empty() {
                    b.shared.expect_copy_out(b.batches, run);
                }
                (None, rewritten)
            }
        };
        let msg = match rewritten {
            Some(sql) => {
                let mut b = BytesMut::new();
                if postgres_protocol::message::frontend::query(&sql, &mut b).is_err() {
                    return self
                        .refuse_query(PgError::error(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            "the COPY statement with its column list is too long",
                        ))
                        .await;
                }
                b.freeze()
            }
            None => msg.clone(),
        };
        self.send_query(region, &msg, Some(after), None).await?;
        if let Some(copy) = copy {
            self.copy_in = Some(ActiveCopy::new(copy, true));
        }
        Ok(())
    }

    /// For a simple Query that is a COPY whose rows the proxy must see
    /// (FROM STDIN into a tenant-scoped table, TO STDOUT of a table with
    /// classified columns) placed in `region` with the statement tenants
    /// `tenants`: how to run it.
    pub(super) async fn plan_copy_query(
        &self,
        analysis: &Analysis,
        sql: &str,
        region: &Arc<str>,
        tenants: &[Vec<String>],
    ) -> Result<Option<PlannedCopy>, PgError> {
        let Some(plan) = copy_plan(analysis) else {
            return Ok(None);
        };
        if analysis.statements.len() != 1 {
            return Err(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "a COPY into a tenant-scoped table, or of a table with classified columns, must be sent on its own, not with other statements in one query",
            )
            .with_hint("send the COPY as a separate query"));
        }
        if let Some(e) = encrypt::refusal(&plan.crypto) {
            return Err(e);
        }
        let planned = Arc::new(copy_in::plan(&self.shared, plan, sql, region).await?);
        let rewritten = planned.rewritten.clone();
        if planned.format.direction == Direction::To {
            let tenants = tenants.first().map(Vec::as_slice).unwrap_or_default();
            let run = copy_out_run(&self.shared, planned, region, tenants).await?;
            return Ok(Some(PlannedCopy::Out(run, rewritten)));
        }
        let session = self.format.lock().map(|f| f.clone()).unwrap_or_default();
        Ok(Some(PlannedCopy::In(
            Box::new(CopyIn::new(planned, region.clone(), session)),
            rewritten,
        )))
    }

    /// For a Parse of a COPY whose rows the proxy must see: its plan
    /// (columns read in the region the batch is headed for) and the Parse
    /// message to send and keep (with the column list written out when the
    /// statement had none).
    pub(super) async fn plan_copy_parse(
        &self,
        analysis: &Analysis,
        parse: &crate::protocol::frontend_msg::Parse<'_>,
        msg: &Bytes,
    ) -> Result<(Bytes, Option<Arc<CopyPlan>>), PgError> {
        let Some(plan) = copy_plan(analysis) else {
            return Ok((msg.clone(), None));
        };
        let region = match (&self.batch.region, &self.batch.hint) {
            (Some(r), _) | (None, Some(r)) => r.clone(),
            _ => self.neutral_region(&self.tenant),
        };
        let plan = copy_in::plan(&self.shared, plan, parse.query, &region).await?;
        let msg = match &plan.rewritten {
            Some(sql) => {
                let mut b = BytesMut::new();
                postgres_protocol::message::frontend::parse(
                    parse.name,
                    sql,
                    parse.param_types.iter().copied(),
                    &mut b,
                )
                .map_err(|e| PgError::error(sqlstate::INTERNAL_ERROR, e.to_string()))?;
                b.freeze()
            }
            None => msg.clone(),
        };
        Ok((msg, Some(Arc::new(plan))))
    }

    /// The client sent something other than COPY data while a checked COPY
    /// was running (or after one that failed to start): fail the backend's
    /// COPY, so that data sent later can never reach it unchecked. A
    /// backend not in COPY mode ignores the CopyFail.
    pub(super) async fn end_copy_in(&mut self) -> Result<(), Quit> {
        let Some(active) = self.copy_in.take() else {
            return Ok(());
        };
        self.batch.copy_pending = false;
        if !active.failed {
            let b = self.backend(active.copy.region()).await?;
            b.push(&copy_in::copy_fail(copy_in::INTERRUPTED));
        }
        Ok(())
    }

    /// CopyData, CopyDone or CopyFail while a checked COPY is running.
    pub(super) async fn copy_in_message(&mut self, tag: u8, msg: Bytes) -> Result<(), Quit> {
        let shared = self.shared.clone();
        let Some(active) = self.copy_in.as_mut() else {
            return Ok(());
        };
        let region = active.copy.region().clone();
        if tag != b'd' {
            self.batch.copy_pending = false;
        }
        if active.failed {
            if tag != b'd' {
                self.copy_in = None;
            }
            return Ok(());
        }
        let result = match tag {
            b'd' => active.copy.data(&shared, &msg[HEADER_LEN..]).await,
            b'c' => active.copy.done(&shared).await,
            _ => {
                // The client gave up: pass its CopyFail on.
                self.copy_in = None;
                let b = self.backend(&region).await?;
                b.push(&msg);
                return Ok(());
            }
        };
        let simple = active.simple;
        match result {
            Ok(out) => {
                if tag == b'c' {
                    self.copy_in = None;
                }
                let b = self.backend(&region).await?;
                b.push(&out);
                if tag == b'c' {
                    b.push(&msg);
                }
            }
            Err(err) => {
                tracing::info!(code = err.code, reason = %err.message, "COPY refused");
                if tag == b'c' {
                    self.copy_in = None;
                } else {
                    active.failed = true;
                }
                let b = self.backend(&region).await?;
                // The backend answers the CopyFail in the batch it is in: the
                // Query's (already counted) or, after Execute, the current one.
                let batch = if simple {
                    b.batches.saturating_sub(1)
                } else {
                    b.batches
                };
                b.shared.override_error(batch, err);
                b.push(&copy_in::copy_fail(copy_in::REFUSED_ROW));
            }
        }
        Ok(())
    }
}
