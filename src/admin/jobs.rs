//! The admin commands of re-encryption jobs: `reencrypt.start`,
//! `jobs.list`, `jobs.cancel`. The work is in [`crate::reencrypt`]; these
//! check arguments and shape replies.

use super::commands::{arg, required};
use super::{codes, AdminError, Ctx};
use crate::reencrypt::table::JobSpec;
use crate::reencrypt::throttle::DEFAULT_RATE;
use serde_json::{json, Value};

type Outcome = Result<(Value, Option<Value>), AdminError>;

/// `rate`: a positive integer (rows per second), [`DEFAULT_RATE`] when absent.
fn rate(args: &Value) -> Result<u32, AdminError> {
    match args.get("rate") {
        None | Some(Value::Null) => Ok(DEFAULT_RATE),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                AdminError::new(
                    codes::BAD_ARGS,
                    "`rate` must be a positive whole number of rows per second",
                )
            }),
    }
}

/// Starts a job; the reply and the audit event name the job.
pub(crate) async fn start(ctx: &Ctx, args: &Value) -> Outcome {
    let region = required(args, "region")?;
    let spec = JobSpec {
        tenant: arg(args, "tenant")?.map(str::to_string),
        table: arg(args, "table")?.map(str::to_string),
        rate: rate(args)?,
    };
    let job = ctx.jobs.create(region, spec).await?;
    let result = json!({ "job": job });
    let event = json!({"job": job.id, "region": job.region, "tenant": job.tenant,
        "table": job.table, "rate": job.rate});
    Ok((result, Some(event)))
}

/// Lists jobs (`region`, `id` optional filters).
pub(crate) async fn list(ctx: &Ctx, args: &Value) -> Result<Value, AdminError> {
    let jobs = match arg(args, "id")? {
        Some(id) => vec![ctx.jobs.find(id).await?],
        None => ctx.jobs.list(arg(args, "region")?, None).await?,
    };
    Ok(json!({ "jobs": jobs }))
}

/// Cancels a running job.
pub(crate) async fn cancel(ctx: &Ctx, args: &Value) -> Outcome {
    let id = required(args, "id")?;
    let job = ctx.jobs.cancel(id).await?;
    let event = json!({"job": job.id, "rows_done": job.rows_done});
    Ok((json!({ "job": job }), Some(event)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(rate(&json!({})).unwrap(), DEFAULT_RATE);
        assert_eq!(rate(&json!({"rate": 20})).unwrap(), 20);
        for bad in [json!(-1), json!("fast"), json!(1.5), json!(u64::MAX)] {
            let e = rate(&json!({ "rate": bad })).unwrap_err();
            assert_eq!(e.code, codes::BAD_ARGS);
        }
    }
}
