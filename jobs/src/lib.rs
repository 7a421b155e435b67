//! creditflow's jobs: versioned payload types and the handlers that do the work.
//!
//! A payload type is never renamed or changed once shipped; a new shape is a new version (`...V2`) beside the old,
//! so jobs already queued still run. Handlers are plain async functions of the payload and their dependencies,
//! idempotent (a job delivered twice changes nothing the second time), and they tell transient failures (retry
//! with backoff) from permanent ones (do not retry: an operator must look).
//!
//! The worker pools that run them (apalis) are the next step; tests drive the handlers directly.

pub mod emails;
pub mod stripe_events;
pub mod usage_batches;
pub mod webhooks;

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth retrying later (the database was unreachable, a dependency timed out).
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help (the input is malformed or refers to nothing); the job is dead at once.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<creditflow_store::StoreError> for JobError {
    fn from(error: creditflow_store::StoreError) -> Self {
        match error {
            // A stored value the code cannot read will not read better on the next attempt.
            creditflow_store::StoreError::Corrupt(what) => Self::Permanent(what),
            other => Self::Transient(other.to_string()),
        }
    }
}
