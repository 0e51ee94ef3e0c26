//! `COPY … FROM STDIN` into tenant-scoped tables, as the request pump sees
//! it: planning the COPY when its statement arrives (simple Query, or
//! Parse), then passing the client's CopyData through a [`CopyIn`] filter
//! until CopyDone or CopyFail. See [`crate::frontend::copy_in`].
//!
//! A refused row fails the backend's COPY with CopyFail, so nothing of it
//! is committed; the backend's answer to that CopyFail is replaced by the
//! proxy's own error (through [`super::super::expect::BackendShared::override_error`]),
//! and what the client still sends of the COPY is dropped.

use super::{Quit, Requests};
use crate::frontend::copy_in::{self, CopyIn, CopyPlan};
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::framing::HEADER_LEN;
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

fn per_row_plan(analysis: &Analysis) -> Option<&crate::sql::StatementPlan> {
    analysis.statements.iter().find(|p| copy_in::is_per_row(p))
}

/// Whether a query holds a COPY FROM STDIN whose rows need checking.
pub(super) fn has_per_row_copy(analysis: &Analysis) -> bool {
    per_row_plan(analysis).is_some()
}

/// A COPY FROM STDIN into a table with classified columns: its rows would
/// have to be encrypted on their way, which [`CopyIn::process_row`] does
/// not do yet.
pub(super) fn classified_copy_refusal() -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "COPY FROM STDIN into a table with classified columns is not supported yet",
    )
    .with_hint("insert the rows with INSERT statements")
}

impl Requests {
    /// Sends a checked COPY's statement (with its column list written out
    /// when it had none) and starts filtering the client's COPY data.
    pub(super) async fn send_copy_query(
        &mut self,
        region: Arc<str>,
        msg: &Bytes,
        after: super::After,
        copy: CopyIn,
        rewritten: Option<String>,
    ) -> Result<(), Quit> {
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
        self.send_query(region, &msg, after, None).await?;
        self.copy_in = Some(ActiveCopy::new(copy, true));
        Ok(())
    }

    /// For a simple Query that is a COPY FROM STDIN into a tenant-scoped
    /// table placed in `region`: its filter, and the text to send instead.
    pub(super) async fn plan_copy_query(
        &self,
        analysis: &Analysis,
        sql: &str,
        region: &Arc<str>,
    ) -> Result<Option<(CopyIn, Option<String>)>, PgError> {
        let Some(plan) = per_row_plan(analysis) else {
            return Ok(None);
        };
        if analysis.statements.len() != 1 {
            return Err(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "a COPY FROM STDIN into a tenant-scoped table must be sent on its own, not with other statements in one query",
            )
            .with_hint("send the COPY as a separate query"));
        }
        let plan = copy_in::plan(&self.shared, plan, sql, region).await?;
        let rewritten = plan.rewritten.clone();
        Ok(Some((
            CopyIn::new(Arc::new(plan), region.clone()),
            rewritten,
        )))
    }

    /// For a Parse of a COPY FROM STDIN into a tenant-scoped table: its
    /// plan (columns read in the region the batch is headed for) and the
    /// Parse message to send and keep (with the column list written out
    /// when the statement had none).
    pub(super) async fn plan_copy_parse(
        &self,
        analysis: &Analysis,
        parse: &crate::protocol::frontend_msg::Parse<'_>,
        msg: &Bytes,
    ) -> Result<(Bytes, Option<Arc<CopyPlan>>), PgError> {
        let Some(plan) = per_row_plan(analysis) else {
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
