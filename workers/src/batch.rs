//! The `usage_batches` worker pool.

use apalis::prelude::*;
use creditflow_jobs::JobError;
use creditflow_jobs::usage_batches::{BatchDeps, PriceUsageBatchV1, price_usage_batch};

/// Runs one batch: a missing or unreadable batch is aborted, a database failure retried with backoff (the retry
/// debits nothing twice).
pub(crate) async fn handle(job: PriceUsageBatchV1, deps: Data<BatchDeps>, attempt: Attempt) -> Result<(), BoxDynError> {
    match price_usage_batch(&job, &deps).await {
        Ok(result) => {
            tracing::info!(
                batch = %job.batch_id,
                debited = result.debited,
                duplicates = result.duplicates,
                rejected = result.rejected,
                "usage batch processed"
            );
            Ok(())
        }
        Err(JobError::Permanent(reason)) => {
            tracing::error!(batch = %job.batch_id, %reason, "usage batch failed for good");
            Err(AbortError::new(std::io::Error::other(reason)).into())
        }
        Err(JobError::Transient(reason)) => {
            tracing::warn!(batch = %job.batch_id, attempt = attempt.current(), %reason, "usage batch failed; will retry");
            Err(reason.into())
        }
    }
}
