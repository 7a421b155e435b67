//! The `stripe_events` worker pool.

use apalis::prelude::*;
use creditflow_jobs::JobError;
use creditflow_jobs::stripe_events::{Deps, ProcessStripeEventV1, process_stripe_event};

/// Runs one Stripe event job: permanent failures are aborted (no retry), transient ones retried with backoff.
pub(crate) async fn handle(job: ProcessStripeEventV1, deps: Data<Deps>, attempt: Attempt) -> Result<(), BoxDynError> {
    match process_stripe_event(&job, &deps).await {
        Ok(processed) => {
            tracing::info!(event = %job.event_id, ?processed, "Stripe event processed");
            Ok(())
        }
        Err(JobError::Permanent(reason)) => {
            tracing::error!(event = %job.event_id, %reason, "Stripe event failed for good");
            Err(AbortError::new(std::io::Error::other(reason)).into())
        }
        Err(JobError::Transient(reason)) => {
            tracing::warn!(event = %job.event_id, attempt = attempt.current(), %reason, "Stripe event failed; will retry");
            Err(reason.into())
        }
    }
}
