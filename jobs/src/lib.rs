//! creditflow's jobs: versioned payload types and the handlers that do the work.
//!
//! A payload type is never renamed or changed once shipped; a new shape is a new version (`...V2`) beside the old,
//! so jobs already queued still run. Handlers are plain async functions of the payload and their dependencies,
//! idempotent (a job delivered twice changes nothing the second time), and they tell transient failures (retry
//! with backoff) from permanent ones (do not retry: an operator must look).
//!
//! The worker pools that run them are in `creditflow-workers` (apalis); tests here drive the handlers directly.

pub mod autoreload;
pub mod emails;
pub mod reports;
pub mod scheduled;
pub mod stripe_events;
pub mod usage_batches;
pub mod webhooks;

/// A job payload that belongs to a queue and knows its own id.
///
/// The id names what the job is about (`stripe_events:evt_...`), so two deliveries of one job share a record and an
/// operator can find a job by what it did.
pub trait Job: serde::Serialize {
    /// The queue that runs it.
    const QUEUE: &'static str;

    /// `<queue>:<what it is about>`.
    fn job_id(&self) -> String;

    /// The job as recorded when queued.
    fn queued(&self) -> creditflow_store::QueuedJob {
        creditflow_store::QueuedJob {
            id: self.job_id(),
            queue: Self::QUEUE.to_owned(),
            payload: serde_json::to_string(self).unwrap_or_default(),
        }
    }
}

impl Job for stripe_events::ProcessStripeEventV1 {
    const QUEUE: &'static str = creditflow_store::STRIPE_EVENTS_QUEUE;
    fn job_id(&self) -> String {
        format!("{}:{}", Self::QUEUE, self.event_id)
    }
}

impl Job for emails::EmailJob {
    const QUEUE: &'static str = creditflow_store::EMAILS_QUEUE;
    fn job_id(&self) -> String {
        match self {
            Self::LowBalance(notice) => format!("{}:low_balance:{}", Self::QUEUE, notice.entry_id),
            Self::AutoreloadDisabled(notice) => format!("{}:autoreload_disabled:{}", Self::QUEUE, notice.reload_id),
            Self::RateCardNotices(notices) => format!("{}:rate_card_notices:{}", Self::QUEUE, notices.activation_id),
            Self::RateCardNotice(notice) => {
                format!("{}:rate_card_notice:{}:{}", Self::QUEUE, notice.activation_id, notice.account_id)
            }
        }
    }
}

impl Job for webhooks::DeliverWebhookV1 {
    const QUEUE: &'static str = webhooks::WEBHOOKS_QUEUE;
    fn job_id(&self) -> String {
        let event: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        let event_id = event["id"].as_str().unwrap_or("unknown");
        format!("{}:{}:{event_id}", Self::QUEUE, self.endpoint_id)
    }
}

impl Job for autoreload::RunAutoreloadV1 {
    const QUEUE: &'static str = creditflow_store::AUTORELOADS_QUEUE;
    fn job_id(&self) -> String {
        format!("{}:{}", Self::QUEUE, self.reload_id)
    }
}

impl Job for scheduled::ScheduledJob {
    const QUEUE: &'static str = creditflow_store::SCHEDULED_QUEUE;
    fn job_id(&self) -> String {
        format!("{}:{}", Self::QUEUE, self.dedupe_key())
    }
}

impl Job for reports::BuildReportV1 {
    const QUEUE: &'static str = reports::REPORTS_QUEUE;
    fn job_id(&self) -> String {
        match &self.request {
            None => format!("{}:{}", Self::QUEUE, self.date),
            Some(request) => format!("{}:{}:{request}", Self::QUEUE, self.date),
        }
    }
}

impl Job for usage_batches::PriceUsageBatchV1 {
    const QUEUE: &'static str = creditflow_store::USAGE_BATCHES_QUEUE;
    fn job_id(&self) -> String {
        format!("{}:{}", Self::QUEUE, self.batch_id)
    }
}

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
