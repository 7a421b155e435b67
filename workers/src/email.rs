//! The `emails` worker pool.

use apalis::prelude::*;
use creditflow_jobs::JobError;
use creditflow_jobs::emails::{EmailDeps, EmailJob, send_email};

/// Runs one email job: permanent failures are aborted, transient ones (the mail server) retried with backoff.
pub(crate) async fn handle(job: EmailJob, deps: Data<EmailDeps>, attempt: Attempt) -> Result<(), BoxDynError> {
    match send_email(&job, &deps).await {
        Ok(emailed) => {
            tracing::info!(?emailed, "email job done");
            Ok(())
        }
        Err(JobError::Permanent(reason)) => {
            tracing::error!(%reason, "email job failed for good");
            Err(AbortError::new(std::io::Error::other(reason)).into())
        }
        Err(JobError::Transient(reason)) => {
            tracing::warn!(attempt = attempt.current(), %reason, "email job failed; will retry");
            Err(reason.into())
        }
    }
}
