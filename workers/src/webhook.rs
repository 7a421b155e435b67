//! The `webhooks` worker pool: deliveries to monitoring endpoints.

use apalis::prelude::*;
use creditflow_jobs::JobError;
use creditflow_jobs::webhooks::{DeliverWebhookV1, WebhookDeps, deliver};

/// Runs one delivery: a missing endpoint is aborted, a failed POST retried with backoff until the job is dead.
pub(crate) async fn handle(
    job: DeliverWebhookV1,
    deps: Data<WebhookDeps>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    match deliver(&job, &deps).await {
        Ok(status) => {
            tracing::info!(endpoint = %job.endpoint_id, status, "webhook delivered");
            Ok(())
        }
        Err(JobError::Permanent(reason)) => {
            tracing::error!(endpoint = %job.endpoint_id, %reason, "webhook undeliverable");
            Err(AbortError::new(std::io::Error::other(reason)).into())
        }
        Err(JobError::Transient(reason)) => {
            tracing::warn!(endpoint = %job.endpoint_id, attempt = attempt.current(), %reason, "webhook delivery failed; will retry");
            Err(reason.into())
        }
    }
}
