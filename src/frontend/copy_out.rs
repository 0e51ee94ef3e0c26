//! `COPY … TO STDOUT` of a table with classified columns: every classified
//! field of every row is decrypted on its way to the client (DESIGN.md
//! promise 4), in text, CSV and binary format.
//!
//! `COPY` sends no RowDescription, so the fields to decrypt come from the
//! COPY's column list (or, without one, the table's columns read from the
//! catalog and written out as a list, as for COPY FROM: see
//! [`super::copy_in::plan`]). The request side registers a [`CopyOutRun`]
//! for the batch that executes the COPY; the response side picks it up at
//! CopyOutResponse and runs the server's CopyData through a [`CopyOut`]:
//! rows are split, decoded, their classified fields opened with the key of
//! the row's tenant — the tenant column when it is copied, else the
//! statement's (session or comment) tenant — and re-encoded in the COPY's
//! format (text and CSV: the logical type's text output with the session's
//! settings; binary: the logical type's binary form, which is the canonical
//! plaintext). NULL stays NULL.
//!
//! A value that does not decrypt (moved, altered, or plaintext written to
//! the column directly) ends the COPY for the client with an ErrorResponse
//! (XX001); nothing of the rest of the COPY output reaches it.

use super::copy_in::{self, CopyPlan, FieldKeys};
use super::encrypt::crypto_error;
use crate::copy::{CopyInFilter, CopyRow, FormatKind};
use crate::crypto::{CryptoError, Keyring, TenantKeys};
use crate::metrics::crypto::{CryptoMetrics, Op};
use crate::protocol::error::PgError;
use crate::types::SessionFormat;
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::Arc;

/// SQLSTATE of a value that cannot be decrypted: data corrupted.
const DATA_CORRUPTED: &str = "XX001";

/// One execution of a `COPY … TO STDOUT` whose rows need decrypting.
pub struct CopyOutRun {
    pub plan: Arc<CopyPlan>,
    pub region: Arc<str>,
    /// The statement's tenant (session or comment) and its read keys: they
    /// open the rows when the tenant column is not among the copied
    /// columns.
    pub tenant: Option<(String, Arc<TenantKeys>)>,
}

/// A `COPY … TO STDOUT` in progress on the response side.
pub struct CopyOut {
    run: Arc<CopyOutRun>,
    filter: CopyInFilter,
    keyring: Arc<Keyring>,
    session: SessionFormat,
    /// Read keys (and associated data) by tenant, loaded on first sight.
    keys: HashMap<String, FieldKeys>,
    metrics: CryptoMetrics,
}

impl CopyOut {
    /// Starts decrypting `run`; `session` are the session's text settings.
    pub fn new(
        run: Arc<CopyOutRun>,
        keyring: Arc<Keyring>,
        session: SessionFormat,
        metrics: CryptoMetrics,
    ) -> Self {
        let plan = &run.plan;
        let filter = CopyInFilter::new(
            plan.format.clone(),
            Some(plan.columns.len()),
            copy_in::MAX_ROW,
        );
        let mut keys = HashMap::new();
        if let Some((tenant, k)) = &run.tenant {
            keys.insert(
                tenant.clone(),
                FieldKeys::new(plan, &run.region, tenant, Arc::clone(k)),
            );
        }
        CopyOut {
            filter,
            keyring,
            session,
            keys,
            run,
            metrics,
        }
    }

    fn plan(&self) -> &CopyPlan {
        &self.run.plan
    }

    /// Checks the server's CopyOutResponse against the plan: the format and
    /// the number of columns must be the ones the rows are decoded with.
    pub fn check_response(&self, body: &[u8]) -> Result<(), PgError> {
        let plan = self.plan();
        let binary = body.first().copied();
        let count = body.get(1..3).map(|b| i16::from_be_bytes([b[0], b[1]]));
        let expected_binary = u8::from(plan.format.kind == FormatKind::Binary);
        if binary != Some(expected_binary)
            || count.and_then(|c| usize::try_from(c).ok()) != Some(plan.columns.len())
        {
            return Err(PgError::error(
                DATA_CORRUPTED,
                format!(
                    "{}: the server's COPY output does not have the columns RegionGuard planned to decrypt",
                    plan.what()
                ),
            )
            .with_hint("name the COPY's columns, or retry after schema changes settle"));
        }
        Ok(())
    }

    /// One CopyData payload from the server: appends the CopyData messages
    /// for the client to `out`.
    pub async fn data(&mut self, payload: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        self.filter.push(payload);
        self.drain(out).await
    }

    /// The server's CopyDone: appends what is left for the client.
    pub async fn done(&mut self, out: &mut BytesMut) -> Result<(), PgError> {
        self.filter.end_of_input();
        self.drain(out).await
    }

    /// Decrypts the complete rows received so far. Each row goes out in a
    /// CopyData message of its own, as Postgres sends them (the binary file
    /// header with the first row, the trailer alone): clients such as
    /// tokio-postgres' binary reader rely on it.
    async fn drain(&mut self, out: &mut BytesMut) -> Result<(), PgError> {
        loop {
            let row = self.filter.next_row().map_err(|e| self.corrupt(e))?;
            let Some(mut row) = row else { break };
            match self.decrypt(&mut row).await {
                Ok(n) => self
                    .metrics
                    .record_n(&self.run.region, Op::Decrypt, true, n),
                Err(e) => {
                    self.metrics.record_decrypt(&self.run.region, false);
                    return Err(e);
                }
            }
            self.filter.write_row(&row).map_err(|e| self.corrupt(e))?;
            copy_data(self.filter.take_output(), out);
        }
        copy_data(self.filter.take_output(), out);
        Ok(())
    }

    /// COPY output the proxy cannot read or write back: never passed on.
    fn corrupt(&self, e: crate::copy::CopyError) -> PgError {
        // A row over the proxy's limit keeps its own code (54000).
        let code = if e.code == crate::copy::BAD_COPY_FILE_FORMAT {
            DATA_CORRUPTED
        } else {
            e.code
        };
        let err = PgError::error(
            code,
            format!(
                "{}: unreadable COPY output: {}",
                self.plan().what(),
                e.message
            ),
        );
        match e.hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }

    /// The keys of the row's tenant, loaded (read-only) on first sight.
    async fn keys_for(&mut self, row: &CopyRow) -> Result<(String, &FieldKeys), PgError> {
        let run = Arc::clone(&self.run);
        let plan = &run.plan;
        let tenant = match (&plan.tenant_index, &run.tenant) {
            (Some(_), _) => copy_in::row_tenant(plan, row).map_err(|e| PgError {
                code: DATA_CORRUPTED,
                ..e
            })?,
            (None, Some((t, _))) => t.clone(),
            (None, None) => {
                return Err(PgError::error(
                    DATA_CORRUPTED,
                    format!(
                        "{}: RegionGuard cannot tell which tenant's key decrypts the rows",
                        plan.what()
                    ),
                )
                .with_hint(format!(
                    "copy the tenant column {} too, or SET regionguard.tenant",
                    plan.tenant_column
                )))
            }
        };
        if !self.keys.contains_key(&tenant) {
            let keys = self
                .keyring
                .for_read(&run.region, &tenant)
                .await
                .map_err(|e| crypto_error(&e))?;
            self.keys.insert(
                tenant.clone(),
                FieldKeys::new(plan, &run.region, &tenant, keys),
            );
        }
        match self.keys.get(&tenant) {
            Some(k) => Ok((tenant, k)),
            None => Err(PgError::error(DATA_CORRUPTED, "tenant keys missing")),
        }
    }

    /// Replaces the row's non-NULL classified fields with their plaintext
    /// in the COPY's format; returns how many were decrypted.
    async fn decrypt(&mut self, row: &mut CopyRow) -> Result<u64, PgError> {
        let run = Arc::clone(&self.run);
        let plan = &run.plan;
        if plan
            .classified
            .iter()
            .all(|f| matches!(row.fields.get(f.index), Some(None) | None))
        {
            return Ok(0);
        }
        let binary = plan.format.kind == FormatKind::Binary;
        let keyring = Arc::clone(&self.keyring);
        let session = self.session.clone();
        let (tenant, keys) = self.keys_for(row).await?;
        let at = |e: PgError| PgError {
            message: format!("{}, data row {}: {}", plan.what(), row.number, e.message),
            ..e
        };
        let mut plain_fields = Vec::with_capacity(plan.classified.len());
        for (field, aad) in plan.classified.iter().zip(&keys.aads) {
            let Some(Some(stored)) = row.fields.get(field.index) else {
                plain_fields.push(None);
                continue;
            };
            let class = &field.class;
            let envelope = super::decrypt::stored_envelope(stored, field.storage, binary).map_err(|reason| {
                at(PgError::error(
                    DATA_CORRUPTED,
                    format!(
                        "cannot decrypt a value of column {} in region {}: it is not a RegionGuard ciphertext ({reason})",
                        class.qualified(),
                        run.region
                    ),
                ))
            })?;
            let canonical = match keys.keys.open(aad, &envelope) {
                // A key version created since the keys were loaded.
                Err(CryptoError::UnknownKeyVersion { .. }) => {
                    keyring.open(&run.region, &tenant, aad, &envelope).await
                }
                other => other,
            }
            .map_err(|e| at(crypto_error(&e)))?;
            let plain = if binary {
                canonical.to_vec()
            } else {
                class
                    .logical
                    .binary_to_text(&canonical, &session)
                    .map_err(|e| {
                        at(PgError::error(
                            DATA_CORRUPTED,
                            format!(
                                "decrypted value of column {} does not decode as {}: {}",
                                class.qualified(),
                                class.logical.name(),
                                e.message()
                            ),
                        ))
                    })?
            };
            plain_fields.push(Some(plain));
        }
        let mut opened = 0;
        for (field, plain) in plan.classified.iter().zip(plain_fields) {
            if let (Some(slot), Some(plain)) = (row.fields.get_mut(field.index), plain) {
                *slot = Some(plain);
                opened += 1;
            }
        }
        Ok(opened)
    }
}

/// Appends `bytes` as one CopyData message.
fn copy_data(bytes: Option<bytes::Bytes>, out: &mut BytesMut) {
    if let Some(bytes) = bytes {
        out.extend_from_slice(b"d");
        out.extend_from_slice(&((bytes.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
}
