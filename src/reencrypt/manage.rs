//! The admin side of jobs: validating and recording a new job, listing,
//! finding and cancelling jobs. Refusals are admin errors with stable codes
//! naming what was refused.

use super::table::{self, JobRow, JobSpec};
use super::{failure, table_exists, targets, throttle, Jobs};
use crate::admin::{codes, AdminError};
use crate::crypto::Keyring;
use std::sync::Arc;

impl Jobs {
    fn keyring(&self) -> Result<&Keyring, AdminError> {
        self.shared.keyring.as_deref().ok_or_else(|| {
            AdminError::new(
                codes::NOT_FOUND,
                "no column is classified: there is nothing to re-encrypt",
            )
        })
    }

    fn key_region(&self, region: &str) -> Result<&Keyring, AdminError> {
        let keyring = self.keyring()?;
        if keyring.kek(region).is_none() {
            return Err(AdminError::new(
                codes::NOT_FOUND,
                format!(
                    "region `{region}` has no root key on this proxy (regions with keys: {})",
                    keyring.regions().join(", ")
                ),
            ));
        }
        Ok(keyring)
    }

    /// Validates and records a new job, then starts running it here.
    pub async fn create(
        self: &Arc<Self>,
        region: &str,
        spec: JobSpec,
    ) -> Result<JobRow, AdminError> {
        let keyring = self.key_region(region)?;
        if !(1..=throttle::MAX_RATE).contains(&spec.rate) {
            return Err(AdminError::new(
                codes::BAD_ARGS,
                format!(
                    "rate {} is out of range: give 1 to {} rows per second",
                    spec.rate,
                    throttle::MAX_RATE
                ),
            ));
        }
        let connector = keyring.connector(region).ok_or_else(|| {
            AdminError::new(codes::NOT_FOUND, format!("region `{region}` has no keys"))
        })?;
        let mut client = connector.connect().await.map_err(|e| {
            AdminError::new(
                codes::REGION_UNAVAILABLE,
                format!("region `{region}`: {}", e.reason),
            )
        })?;
        crate::crypto::store::ensure_schema(&client, region)
            .await
            .map_err(|e| failure(&e))?;
        let spec = JobSpec {
            tenant: spec
                .tenant
                .map(|t| crate::crypto::aad::canonical_tenant(&t).into_owned()),
            table: spec.table.map(|t| t.replace('"', "").to_lowercase()),
            rate: spec.rate,
        };
        if let Some(tenant) = &spec.tenant {
            check_tenant(&client, region, tenant).await?;
        }
        if let Some(table) = &spec.table {
            let catalog = self
                .shared
                .refresh_catalog(region, &client)
                .await
                .map_err(|e| failure(&crate::crypto::store::store_error(region, &e)))?;
            let found = targets::discover(&client, region, &catalog)
                .await
                .map_err(|e| failure(&e))?;
            if !found.has_table(table) {
                return Err(AdminError::new(
                    codes::NOT_FOUND,
                    format!("table `{table}` has no classified column in region `{region}`"),
                ));
            }
        }
        table::ensure_schema(&client, region)
            .await
            .map_err(|e| failure(&e))?;
        let job = match table::insert(&mut client, region, &spec)
            .await
            .map_err(|e| failure(&e))?
        {
            Ok(job) => job,
            Err(clash) => {
                return Err(AdminError::new(
                    codes::CONFLICT,
                    format!(
                        "job {} (tenant {}, table {}) is already re-encrypting these rows; cancel it or wait for it",
                        clash.id,
                        clash.tenant.as_deref().unwrap_or("all"),
                        clash.table.as_deref().unwrap_or("all")
                    ),
                ))
            }
        };
        self.spawn_run(region, job.number);
        Ok(job)
    }

    /// Jobs of one region or all regions with keys (one job with `number`).
    pub async fn list(
        &self,
        region: Option<&str>,
        number: Option<i64>,
    ) -> Result<Vec<JobRow>, AdminError> {
        let keyring = self.keyring()?;
        let regions: Vec<String> = match region {
            Some(r) => {
                self.key_region(r)?;
                vec![r.to_string()]
            }
            None => keyring.regions().into_iter().map(str::to_string).collect(),
        };
        let mut out = Vec::new();
        for region in regions {
            let client = keyring
                .store_client(&region)
                .await
                .map_err(|e| failure(&e))?;
            if !table_exists(&client, &region)
                .await
                .map_err(|e| failure(&e))?
            {
                continue;
            }
            out.extend(
                table::list(&*client, &region, number)
                    .await
                    .map_err(|e| failure(&e))?,
            );
        }
        Ok(out)
    }

    /// Finds one job by its id (`<region>/<n>`, or `<n>` when only one
    /// region has a job `n`).
    pub async fn find(&self, id: &str) -> Result<JobRow, AdminError> {
        let Some((region, number)) = table::parse_job_id(id) else {
            return Err(AdminError::new(
                codes::BAD_ARGS,
                format!("`{id}` is not a job id (like eu/3, as `jobs` shows)"),
            ));
        };
        let found = self.list(region, Some(number)).await?;
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(AdminError::new(
                codes::NOT_FOUND,
                format!("no re-encryption job `{id}`"),
            )),
            _ => Err(AdminError::new(
                codes::BAD_ARGS,
                format!(
                    "job number {number} exists in several regions: name one ({})",
                    found
                        .iter()
                        .map(|j| j.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Cancels a running job (its runner stops within a batch).
    pub async fn cancel(&self, id: &str) -> Result<JobRow, AdminError> {
        let job = self.find(id).await?;
        let keyring = self.key_region(&job.region)?;
        let client = keyring
            .store_client(&job.region)
            .await
            .map_err(|e| failure(&e))?;
        match table::cancel(&*client, &job.region, job.number)
            .await
            .map_err(|e| failure(&e))?
        {
            Some((true, row)) => Ok(row),
            Some((false, row)) => Err(AdminError::new(
                codes::CONFLICT,
                format!(
                    "job {} is {}, not running: nothing to cancel",
                    row.id,
                    row.state.as_str()
                ),
            )),
            None => Err(AdminError::new(
                codes::NOT_FOUND,
                format!("no re-encryption job `{id}`"),
            )),
        }
    }
}

/// A tenant filter must name a tenant with an active key in the region.
async fn check_tenant(
    client: &tokio_postgres::Client,
    region: &str,
    tenant: &str,
) -> Result<(), AdminError> {
    let rows = client
        .query(
            "SELECT state FROM regionguard.data_keys WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .map_err(|e| failure(&crate::crypto::store::store_error(region, &e)))?;
    let states: Vec<String> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
    if states.is_empty() {
        return Err(AdminError::new(
            codes::NOT_FOUND,
            format!(
                "tenant `{tenant}` has no data keys in region `{region}`: nothing to re-encrypt"
            ),
        ));
    }
    if !states.iter().any(|s| s == "active") {
        return Err(AdminError::new(
            codes::TENANT_SHREDDED,
            format!("tenant `{tenant}` has no active data key in region `{region}` (shredded): its rows cannot be re-encrypted"),
        ));
    }
    Ok(())
}
