//! The handlers of the worker pools: each runs its job through [`Tracker`], which keeps the job's record (see the
//! store's `jobs` module) and turns the job's result into what apalis should do next.

use std::fmt::Debug;

use apalis::prelude::*;
use creditflow_jobs::autoreload::{AutoreloadDeps, RunAutoreloadV1, run_autoreload};
use creditflow_jobs::emails::{EmailDeps, EmailJob, send_email};
use creditflow_jobs::reports::BuildReportV1;
use creditflow_jobs::scheduled::{ScheduledDeps, ScheduledJob, run_scheduled};
use creditflow_jobs::stripe_events::{Deps, ProcessStripeEventV1, process_stripe_event};
use creditflow_jobs::usage_batches::{BatchDeps, PriceUsageBatchV1, price_usage_batch};
use creditflow_jobs::webhooks::{DeliverWebhookV1, WebhookDeps, deliver};
use creditflow_jobs::{Job, JobError};
use creditflow_reports::ReportDeps;
use creditflow_store::{Attempt, AttemptEnd, Store};

/// Records each attempt of a job and decides between done, retry and dead.
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    pub(crate) store: Store,
    /// Attempts before a job that keeps failing transiently is dead.
    pub(crate) max_attempts: i64,
}

impl Tracker {
    /// Runs `work` for `job` unless the job's record is final, and records how it ended. A transient failure is
    /// returned to apalis (which retries with backoff) until the attempts run out; then, like a permanent failure,
    /// the job is dead and aborted. Because the record counts attempts, apalis's own retry counters (which differ
    /// between backends) never decide when a job dies.
    async fn run<J: Job, T: Debug>(
        &self,
        job: &J,
        work: impl Future<Output = Result<T, JobError>>,
    ) -> Result<(), BoxDynError> {
        let queued = job.queued();
        let attempt = match self.store.start_job_attempt(&queued).await {
            Ok(Attempt::Run(attempt)) => attempt,
            Ok(Attempt::Skip(state)) => {
                tracing::info!(job = %queued.id, state = state.as_str(), "job already final; not run again");
                return Ok(());
            }
            // Without a record the job must not run (it could not be stopped or seen); apalis retries it.
            Err(error) => return Err(format!("cannot record the job's attempt: {error}").into()),
        };
        let abort = |reason: &str| -> BoxDynError { AbortError::new(std::io::Error::other(reason.to_owned())).into() };
        match work.await {
            Ok(outcome) => {
                tracing::info!(job = %queued.id, attempt, ?outcome, "job done");
                self.finish(&queued.id, attempt, AttemptEnd::Done, Ok(())).await
            }
            Err(JobError::Permanent(reason)) => {
                tracing::error!(job = %queued.id, attempt, %reason, "job failed for good");
                self.finish(&queued.id, attempt, AttemptEnd::Dead(&reason), Err(abort(&reason))).await
            }
            Err(JobError::Transient(reason)) if attempt >= self.max_attempts => {
                tracing::error!(job = %queued.id, attempt, %reason, "job out of attempts; dead");
                self.finish(&queued.id, attempt, AttemptEnd::Dead(&reason), Err(abort(&reason))).await
            }
            Err(JobError::Transient(reason)) => {
                tracing::warn!(job = %queued.id, attempt, %reason, "job failed; will retry");
                self.finish(&queued.id, attempt, AttemptEnd::Retrying(&reason), Err(reason.clone().into())).await
            }
        }
    }

    async fn finish(
        &self,
        id: &str,
        attempt: i64,
        end: AttemptEnd<'_>,
        answer: Result<(), BoxDynError>,
    ) -> Result<(), BoxDynError> {
        if let Err(error) = self.store.end_job_attempt(id, attempt, end).await {
            // The work is done or failed either way; the record stays `running` until the job's next delivery (a
            // retry, or an operator's) records again. Operators see it as running with its last update time.
            tracing::warn!(job = %id, %error, "cannot record the end of the job's attempt");
        }
        answer
    }
}

/// `stripe_events`.
pub(crate) async fn stripe_event(
    job: ProcessStripeEventV1,
    deps: Data<Deps>,
    tracker: Data<Tracker>,
) -> Result<(), BoxDynError> {
    Box::pin(tracker.run(&job, process_stripe_event(&job, &deps))).await
}

/// `emails`.
pub(crate) async fn email(job: EmailJob, deps: Data<EmailDeps>, tracker: Data<Tracker>) -> Result<(), BoxDynError> {
    Box::pin(tracker.run(&job, send_email(&job, &deps))).await
}

/// `webhooks`.
pub(crate) async fn webhook(
    job: DeliverWebhookV1,
    deps: Data<WebhookDeps>,
    tracker: Data<Tracker>,
) -> Result<(), BoxDynError> {
    Box::pin(tracker.run(&job, deliver(&job, &deps))).await
}

/// `usage_batches`.
pub(crate) async fn usage_batch(
    job: PriceUsageBatchV1,
    deps: Data<BatchDeps>,
    tracker: Data<Tracker>,
) -> Result<(), BoxDynError> {
    Box::pin(tracker.run(&job, price_usage_batch(&job, &deps))).await
}

/// `autoreloads`.
pub(crate) async fn autoreload(
    job: RunAutoreloadV1,
    deps: Data<AutoreloadDeps>,
    tracker: Data<Tracker>,
) -> Result<(), BoxDynError> {
    Box::pin(tracker.run(&job, run_autoreload(&job, &deps))).await
}

/// `scheduled`.
pub(crate) async fn scheduled(
    job: ScheduledJob,
    deps: Data<ScheduledDeps>,
    tracker: Data<Tracker>,
) -> Result<(), BoxDynError> {
    Box::pin(tracker.run(&job, run_scheduled(&job, &deps))).await
}

/// `reports`.
pub(crate) async fn report(
    job: BuildReportV1,
    deps: Data<ReportDeps>,
    tracker: Data<Tracker>,
) -> Result<(), BoxDynError> {
    let work = async {
        creditflow_reports::job::build_report(&job, &deps).await.map(|built| (built.date, built.passed, built.emailed))
    };
    Box::pin(tracker.run(&job, work)).await
}
