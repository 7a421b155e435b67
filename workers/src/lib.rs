//! creditflow's worker pools, on apalis, and the relay that feeds them from the outbox.
//!
//! Work that belongs to a database change is written to the outbox in the same transaction as the change (see the
//! store's inbox module). The relay reads unrelayed outbox rows, pushes each as a job to its queue, and only then
//! marks it relayed: a crash in between relays it again, never loses it, and every handler is idempotent, so a
//! second delivery changes nothing. Several relays (in several processes) may run at once for the same reason.
//!
//! The embedded queue is apalis-sqlite in a file of its own: apalis switches its connections to
//! `synchronous=OFF`, which the ledger's file must never have. In production the queue is apalis-redis, shared by
//! every worker process.

mod handlers;
mod poll;
mod relay;
mod scheduler;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use apalis::layers::limit::ConcurrencyLimitLayer;
use apalis::layers::retry::backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use apalis::layers::retry::{HasherRng, RetryLayer, RetryPolicy};
use apalis::prelude::*;
use apalis_core::backend::BackendConfig;
use apalis_redis::RedisStorage;
use apalis_sqlite::{Config as QueueConfig, SqliteStorage};
use creditflow_jobs::autoreload::{AutoreloadDeps, RunAutoreloadV1};
use creditflow_jobs::emails::{EmailDeps, EmailJob};
use creditflow_jobs::reports::BuildReportV1;
use creditflow_jobs::scheduled::{ScheduledDeps, ScheduledJob};
use creditflow_jobs::stripe_events::{Deps, ProcessStripeEventV1};
use creditflow_jobs::usage_batches::{BatchDeps, PriceUsageBatchV1};
use creditflow_jobs::webhooks::{DeliverWebhookV1, WebhookDeps};
use creditflow_reports::{ReportDeps, ReportSchedule};
use creditflow_store::{
    AUTORELOADS_QUEUE, EMAILS_QUEUE, REPORTS_QUEUE, SCHEDULED_QUEUE, STRIPE_EVENTS_QUEUE, Store, USAGE_BATCHES_QUEUE,
};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

pub use creditflow_jobs::webhooks::WEBHOOKS_QUEUE;
pub use poll::{IdlePoll, Nudge};
pub use relay::relay_once;
pub use scheduler::{schedule_hours, schedule_once, schedule_report};

/// How often workers tell the queue they are alive, unless configured otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// How long an idle worker waits before looking for new jobs again: a job waits half of it on average before it
/// starts, so it is most of the time from a Stripe event to its credit (about 70 Redis calls a second per idle worker
/// process, seven queues).
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Settings of the worker pools.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Concurrent Stripe events per worker.
    pub stripe_concurrency: usize,
    /// Concurrent emails per worker.
    pub email_concurrency: usize,
    /// Concurrent webhook deliveries per worker.
    pub webhook_concurrency: usize,
    /// Concurrent usage batches per worker (each already debits its accounts one transaction at a time).
    pub batch_concurrency: usize,
    /// Concurrent autoreloads per worker.
    pub autoreload_concurrency: usize,
    /// How often the scheduler looks for hourly jobs to record.
    pub schedule_interval: Duration,
    /// When nightly reports are due (`None`: never scheduled; they can still be queued on demand).
    pub report_schedule: Option<ReportSchedule>,
    /// Attempts after the first before a transient failure gives up.
    pub retries: usize,
    /// Backoff before the first retry; it doubles (with jitter) up to `retry_delay_max`.
    pub retry_delay_min: Duration,
    /// The longest backoff.
    pub retry_delay_max: Duration,
    /// How long graceful shutdown waits for jobs in flight.
    pub shutdown_grace: Duration,
    /// A job whose record says it is pending, running or retrying but has not changed for this long is queued
    /// again from the database: the broker may have lost it. Longer than the longest backoff and the longest job.
    pub requeue_after: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            stripe_concurrency: 4,
            email_concurrency: 4,
            webhook_concurrency: 8,
            batch_concurrency: 2,
            autoreload_concurrency: 4,
            schedule_interval: Duration::from_secs(30),
            report_schedule: None,
            retries: 5,
            retry_delay_min: Duration::from_millis(500),
            retry_delay_max: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            requeue_after: Duration::from_secs(300),
        }
    }
}

/// The job queues, on one backend.
#[derive(Clone, Debug)]
pub struct Queues {
    backend: QueueBackend,
    /// Each queue's nudge: the relay gives it after pushing to the queue, and that queue's pool in this process polls
    /// at once.
    nudges: Arc<HashMap<&'static str, Arc<Nudge>>>,
}

// One per process, created once and cloned rarely: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum QueueBackend {
    Sqlite {
        pool: SqlitePool,
        stripe_events: SqliteStorage<ProcessStripeEventV1>,
        emails: SqliteStorage<EmailJob>,
        webhooks: SqliteStorage<DeliverWebhookV1>,
        batches: SqliteStorage<PriceUsageBatchV1>,
        autoreloads: SqliteStorage<RunAutoreloadV1>,
        scheduled: SqliteStorage<ScheduledJob>,
        reports: SqliteStorage<BuildReportV1>,
    },
    Redis {
        /// For reading how many jobs wait in each queue.
        connection: apalis_redis::ConnectionManager,
        /// Each queue with its scheduled-jobs set and its ready list.
        keys: Vec<(&'static str, String, String)>,
        stripe_events: RedisStorage<ProcessStripeEventV1>,
        emails: RedisStorage<EmailJob>,
        webhooks: RedisStorage<DeliverWebhookV1>,
        batches: RedisStorage<PriceUsageBatchV1>,
        autoreloads: RedisStorage<RunAutoreloadV1>,
        scheduled: RedisStorage<ScheduledJob>,
        reports: RedisStorage<BuildReportV1>,
    },
}

/// What the handlers of every pool need.
#[derive(Clone, Debug)]
pub struct Handlers {
    /// Stripe event processing.
    pub stripe: Deps,
    /// Email sending.
    pub email: EmailDeps,
    /// Outgoing webhooks.
    pub webhooks: WebhookDeps,
    /// Usage batches.
    pub batches: BatchDeps,
    /// Autoreloads.
    pub autoreload: AutoreloadDeps,
    /// Hourly jobs.
    pub scheduled: ScheduledDeps,
    /// Nightly reports.
    pub reports: ReportDeps,
}

/// Key prefix of creditflow's queues in Redis.
const REDIS_QUEUE_PREFIX: &str = "creditflow";

/// A queue that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The URL names no supported queue backend.
    #[error("unsupported queue URL `{0}`: use sqlite://PATH or redis://HOST:PORT")]
    UnsupportedUrl(String),
    /// Redis cannot be reached.
    #[error("cannot reach the Redis job queue: {0}")]
    Redis(String),
    /// Opening it failed.
    #[error("cannot open the job queue: {0}")]
    Open(#[from] sqlx::Error),
    /// Creating its tables failed.
    #[error("cannot prepare the job queue: {0}")]
    Setup(String),
}

impl Queues {
    /// Opens the queues at `url`: `sqlite://PATH` (created and migrated if needed) or `redis://HOST:PORT`.
    pub async fn open(url: &str) -> Result<Self, QueueError> {
        Self::open_in(url, REDIS_QUEUE_PREFIX).await
    }

    /// Like [`Queues::open`], with the Redis keys under `namespace` (deployments or tests sharing one Redis).
    pub async fn open_in(url: &str, namespace: &str) -> Result<Self, QueueError> {
        Self::open_with(url, namespace, DEFAULT_HEARTBEAT).await
    }

    /// Like [`Queues::open_in`], with workers beating every `heartbeat`: a worker silent for two beats is taken for
    /// dead and its jobs in flight are queued again.
    pub async fn open_with(url: &str, namespace: &str, heartbeat: Duration) -> Result<Self, QueueError> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            let connection = apalis_redis::connect(url).await.map_err(|error| QueueError::Redis(error.to_string()))?;
            let config = |queue: &str| redis_queue_config(namespace, queue, heartbeat);
            let keys = creditflow_store::JOB_QUEUES
                .iter()
                .map(|queue| {
                    let config = config(queue);
                    (*queue, config.scheduled_jobs_set(), config.active_jobs_list())
                })
                .collect();
            let watcher = connection.clone();
            let stripe_events = RedisStorage::new(connection.clone()).with_config(config(STRIPE_EVENTS_QUEUE));
            let emails = RedisStorage::new(connection.clone()).with_config(config(EMAILS_QUEUE));
            let webhooks = RedisStorage::new(connection.clone()).with_config(config(WEBHOOKS_QUEUE));
            let batches = RedisStorage::new(connection.clone()).with_config(config(USAGE_BATCHES_QUEUE));
            let autoreloads = RedisStorage::new(connection.clone()).with_config(config(AUTORELOADS_QUEUE));
            let scheduled = RedisStorage::new(connection.clone()).with_config(config(SCHEDULED_QUEUE));
            let reports = RedisStorage::new(connection).with_config(config(REPORTS_QUEUE));
            let backend = QueueBackend::Redis {
                connection: watcher,
                keys,
                stripe_events,
                emails,
                webhooks,
                batches,
                autoreloads,
                scheduled,
                reports,
            };
            return Ok(Self::with_nudges(backend));
        }
        if !url.starts_with("sqlite:") || url.contains(":memory:") {
            return Err(QueueError::UnsupportedUrl(url.to_owned()));
        }
        let options =
            SqliteConnectOptions::from_str(url)?.create_if_missing(true).busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        SqliteStorage::setup(&pool).await.map_err(|error| QueueError::Setup(error.to_string()))?;
        let config =
            |queue: &str| QueueConfig::default().queue(queue).heartbeat_interval(heartbeat).missed_heartbeats(2);
        let stripe_events = SqliteStorage::new(&pool).with_config(config(STRIPE_EVENTS_QUEUE));
        let emails = SqliteStorage::new(&pool).with_config(config(EMAILS_QUEUE));
        let webhooks = SqliteStorage::new(&pool).with_config(config(WEBHOOKS_QUEUE));
        let batches = SqliteStorage::new(&pool).with_config(config(USAGE_BATCHES_QUEUE));
        let autoreloads = SqliteStorage::new(&pool).with_config(config(AUTORELOADS_QUEUE));
        let scheduled = SqliteStorage::new(&pool).with_config(config(SCHEDULED_QUEUE));
        let reports = SqliteStorage::new(&pool).with_config(config(REPORTS_QUEUE));
        let backend =
            QueueBackend::Sqlite { pool, stripe_events, emails, webhooks, batches, autoreloads, scheduled, reports };
        Ok(Self::with_nudges(backend))
    }

    fn with_nudges(backend: QueueBackend) -> Self {
        let nudges = creditflow_store::JOB_QUEUES.iter().map(|queue| (*queue, Arc::default())).collect();
        Self { backend, nudges: Arc::new(nudges) }
    }

    /// The nudge of `queue`'s pool in this process.
    fn nudge_for(&self, queue: &str) -> Option<Arc<Nudge>> {
        self.nudges.get(queue).cloned()
    }

    /// Wakes `queue`'s pool in this process: a job was just pushed to it.
    pub(crate) fn nudge(&self, queue: &str) {
        if let Some(nudge) = self.nudges.get(queue) {
            nudge.give();
        }
    }

    /// apalis's own task counts of `queue` by status, from the embedded queue's table (`None` on Redis, whose apalis
    /// 1.0 listing reads the wrong keys). Operators use the job records in the store instead, which every backend
    /// keeps the same way; this is for tests of apalis's side.
    pub async fn counts(&self, queue: &str) -> Result<Option<Vec<(String, i64)>>, sqlx::Error> {
        let QueueBackend::Sqlite { pool, .. } = &self.backend else { return Ok(None) };
        let sql = "SELECT status, COUNT(*) FROM Jobs WHERE job_type = $1 GROUP BY status ORDER BY status";
        sqlx::query_as(sql).bind(queue).fetch_all(pool).await.map(Some)
    }

    /// Jobs waiting in the broker per queue, pushed and not yet fetched by a worker: read from each queue's keys on
    /// Redis; empty on the embedded queue, which needs no such count.
    pub(crate) async fn waiting(&self) -> Result<HashMap<String, i64>, String> {
        let QueueBackend::Redis { connection, keys, .. } = &self.backend else { return Ok(HashMap::new()) };
        let mut pipe = redis::pipe();
        for (_, scheduled, ready) in keys {
            pipe.zcard(scheduled).llen(ready);
        }
        let counts: Vec<i64> = pipe.query_async(&mut connection.clone()).await.map_err(|e| e.to_string())?;
        Ok(keys
            .iter()
            .zip(counts.chunks(2))
            .map(|((queue, _, _), pair)| ((*queue).to_owned(), pair.iter().sum()))
            .collect())
    }

    /// How many pushes the relay keeps in flight: many on Redis (one connection pipelines them), one at a time on
    /// SQLite (a single writer, where concurrent pushes would only queue on its lock).
    pub(crate) fn pushes_at_once(&self) -> usize {
        match self.backend {
            QueueBackend::Sqlite { .. } => 1,
            QueueBackend::Redis { .. } => 64,
        }
    }

    /// Pushes a job to its queue.
    pub(crate) async fn push(&self, job: AnyJob) -> Result<(), String> {
        macro_rules! push {
            ($storage:expr, $job:expr) => {
                $storage.clone().push($job).await.map_err(|error| error.to_string())
            };
        }
        match (&self.backend, job) {
            (QueueBackend::Sqlite { stripe_events, .. }, AnyJob::StripeEvent(job)) => push!(stripe_events, job),
            (QueueBackend::Sqlite { emails, .. }, AnyJob::Email(job)) => push!(emails, job),
            (QueueBackend::Sqlite { webhooks, .. }, AnyJob::Webhook(job)) => push!(webhooks, job),
            (QueueBackend::Sqlite { batches, .. }, AnyJob::UsageBatch(job)) => push!(batches, job),
            (QueueBackend::Sqlite { autoreloads, .. }, AnyJob::Autoreload(job)) => push!(autoreloads, job),
            (QueueBackend::Sqlite { scheduled, .. }, AnyJob::Scheduled(job)) => push!(scheduled, job),
            (QueueBackend::Sqlite { reports, .. }, AnyJob::Report(job)) => push!(reports, job),
            (QueueBackend::Redis { stripe_events, .. }, AnyJob::StripeEvent(job)) => push!(stripe_events, job),
            (QueueBackend::Redis { emails, .. }, AnyJob::Email(job)) => push!(emails, job),
            (QueueBackend::Redis { webhooks, .. }, AnyJob::Webhook(job)) => push!(webhooks, job),
            (QueueBackend::Redis { batches, .. }, AnyJob::UsageBatch(job)) => push!(batches, job),
            (QueueBackend::Redis { autoreloads, .. }, AnyJob::Autoreload(job)) => push!(autoreloads, job),
            (QueueBackend::Redis { scheduled, .. }, AnyJob::Scheduled(job)) => push!(scheduled, job),
            (QueueBackend::Redis { reports, .. }, AnyJob::Report(job)) => push!(reports, job),
        }
    }
}

/// The apalis-redis settings of one of creditflow's queues: its keys under `{namespace}:{queue}`, and its workers
/// beating every `heartbeat` (one silent for two beats is taken for dead and its jobs in flight are queued again).
/// [`Queues::open_with`] opens every queue with these; they are public so that a benchmark can open a queue of its
/// own job type exactly as production opens its queues.
pub fn redis_queue_config(namespace: &str, queue: &str, heartbeat: Duration) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(format!("{namespace}:{queue}"))
        .heartbeat_interval(heartbeat)
        .missed_heartbeats(2)
}

/// The middleware of every worker [`run`] starts, outermost first: the limit on jobs run at once, then the in-process
/// retry with backoff (so a job waiting for its retry keeps its place in the limit).
pub type WorkerLayers =
    Stack<RetryLayer<BackoffRetryPolicy<ExponentialBackoff<HasherRng>>>, Stack<ConcurrencyLimitLayer, Identity>>;

/// The backoff between in-process retries that `settings` describe: from `retry_delay_min`, doubling with jitter, up
/// to `retry_delay_max`. Fails if those bounds are unusable (the minimum above the maximum, for instance).
pub fn retry_backoff(settings: &WorkerSettings) -> Result<ExponentialBackoffMaker, std::io::Error> {
    ExponentialBackoffMaker::new(settings.retry_delay_min, settings.retry_delay_max, 0.5, HasherRng::default())
        .map_err(|error| std::io::Error::other(format!("retry backoff settings: {error}")))
}

/// A worker as [`run`] builds one for each queue, up to its handler's data and the handler: named `name` plus a
/// fresh unique suffix (apalis refuses a name it saw within the heartbeat window, so a restarted worker needs a new
/// one), polling `storage` again every 100 ms when it finds nothing and whenever `nudge` is given (see [`IdlePoll`]),
/// running at most `concurrency` jobs at once and retrying a failed job up to `retries` times in process with
/// `backoff`. Public so that a benchmark runs a job of its own through the same worker as production's.
pub fn worker_builder<S>(
    name: &str,
    storage: S,
    nudge: Option<Arc<Nudge>>,
    concurrency: usize,
    retries: usize,
    backoff: &ExponentialBackoffMaker,
) -> WorkerBuilder<S::Args, PollWith<S, IdlePoll>, WorkerLayers>
where
    S: Backend + BackendConfig,
{
    let poll = match nudge {
        Some(nudge) => IdlePoll::every(POLL_INTERVAL).nudged_by(nudge),
        None => IdlePoll::every(POLL_INTERVAL),
    };
    WorkerBuilder::new(format!("{name}-{}", uuid::Uuid::new_v4().simple()))
        .backend(storage.poll_with_strategy(poll))
        .concurrency(concurrency)
        .retry(RetryPolicy::retries(retries).with_backoff(backoff.clone().make_backoff()))
}

/// A job of any queue.
#[derive(Clone, Debug)]
pub(crate) enum AnyJob {
    StripeEvent(ProcessStripeEventV1),
    Email(EmailJob),
    Webhook(DeliverWebhookV1),
    UsageBatch(PriceUsageBatchV1),
    Autoreload(RunAutoreloadV1),
    Scheduled(ScheduledJob),
    Report(BuildReportV1),
}

impl AnyJob {
    /// The job as its record holds it.
    fn queued(&self) -> creditflow_store::QueuedJob {
        use creditflow_jobs::Job as _;
        match self {
            Self::StripeEvent(job) => job.queued(),
            Self::Email(job) => job.queued(),
            Self::Webhook(job) => job.queued(),
            Self::UsageBatch(job) => job.queued(),
            Self::Autoreload(job) => job.queued(),
            Self::Scheduled(job) => job.queued(),
            Self::Report(job) => job.queued(),
        }
    }
}

/// A pool whose worker ended with an error is started again (under a fresh name). Without this, a Redis that restarts
/// empty ends every pool for good ("worker not registered") while the process lives on, taking no jobs. The short
/// pause keeps a broker that stays down from turning restarts into a busy loop. apalis asks from inside its monitor's
/// poll and restarts at once, so the pause has to block; on a multi-threaded runtime the thread is handed over first
/// (`block_in_place`), so the other pools, the relay and the API keep running meanwhile.
fn restart_failed_pool(worker: &WorkerContext, error: &WorkerError) -> bool {
    tracing::warn!(worker = worker.name(), restarts = worker.restarts(), %error, "a worker pool failed; restarting it");
    let pause = || std::thread::sleep(Duration::from_millis(200));
    match tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(pause),
        _ => pause(),
    }
    true
}

/// Runs the relay and the worker pools until `shutdown` resolves, then lets jobs in flight finish.
pub async fn run(
    store: Store,
    handlers: Handlers,
    queues: Queues,
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), std::io::Error> {
    let (stop_relay, relay_stopped) = tokio::sync::watch::channel(false);
    let backoff = retry_backoff(&settings)?;
    let endpoints = handlers.webhooks.endpoints.clone();
    let store_for_tracker = store.clone();
    let scheduler = tokio::spawn(scheduler::run(store.clone(), settings.clone(), relay_stopped.clone()));
    let requeue =
        tokio::spawn(scheduler::requeue_stalled(store.clone(), settings.requeue_after, relay_stopped.clone()));
    let relay = tokio::spawn(relay::run(store, queues.clone(), endpoints, relay_stopped));
    let retry = settings.clone();
    let max_attempts = i64::try_from(settings.retries.saturating_add(1)).unwrap_or(i64::MAX);
    let tracker = handlers::Tracker { store: store_for_tracker, max_attempts };
    // The same workers on either storage; a fresh, unique name on every (re)start (see `worker_builder`).
    macro_rules! worker {
        ($storage:expr, $queue:expr, $handler:path, $data:expr, $concurrency:expr) => {{
            let (storage, data, backoff, retry) = ($storage, $data, backoff.clone(), retry.clone());
            let (tracker, nudge) = (tracker.clone(), queues.nudge_for($queue));
            move |_restarts: usize| {
                worker_builder($queue, storage.clone(), nudge.clone(), $concurrency, retry.retries, &backoff)
                    .data(data.clone())
                    .data(tracker.clone())
                    .build($handler)
            }
        }};
    }
    let (stripe_deps, email_deps, webhook_deps, batch_deps, autoreload_deps, scheduled_deps, report_deps) = (
        handlers.stripe,
        handlers.email,
        handlers.webhooks,
        handlers.batches,
        handlers.autoreload,
        handlers.scheduled,
        handlers.reports,
    );
    // One pool per queue, named after it, the same on either storage.
    macro_rules! pools {
        ($stripe_events:expr, $emails:expr, $webhooks:expr, $batches:expr, $autoreloads:expr, $scheduled:expr,
         $reports:expr) => {
            Monitor::new()
                .register(worker!(
                    $stripe_events.clone(),
                    STRIPE_EVENTS_QUEUE,
                    handlers::stripe_event,
                    stripe_deps,
                    retry.stripe_concurrency
                ))
                .register(worker!($emails.clone(), EMAILS_QUEUE, handlers::email, email_deps, retry.email_concurrency))
                .register(worker!(
                    $webhooks.clone(),
                    WEBHOOKS_QUEUE,
                    handlers::webhook,
                    webhook_deps,
                    retry.webhook_concurrency
                ))
                .register(worker!(
                    $batches.clone(),
                    USAGE_BATCHES_QUEUE,
                    handlers::usage_batch,
                    batch_deps,
                    retry.batch_concurrency
                ))
                .register(worker!(
                    $autoreloads.clone(),
                    AUTORELOADS_QUEUE,
                    handlers::autoreload,
                    autoreload_deps,
                    retry.autoreload_concurrency
                ))
                .register(worker!($scheduled.clone(), SCHEDULED_QUEUE, handlers::scheduled, scheduled_deps, 1))
                // One report at a time per worker: a report is heavy, and one date's is one job.
                .register(worker!($reports.clone(), REPORTS_QUEUE, handlers::report, report_deps, 1))
        };
    }
    let monitor = match &queues.backend {
        QueueBackend::Sqlite { stripe_events, emails, webhooks, batches, autoreloads, scheduled, reports, .. } => {
            pools!(stripe_events, emails, webhooks, batches, autoreloads, scheduled, reports)
        }
        QueueBackend::Redis { stripe_events, emails, webhooks, batches, autoreloads, scheduled, reports, .. } => {
            pools!(stripe_events, emails, webhooks, batches, autoreloads, scheduled, reports)
        }
    }
    .shutdown_timeout(settings.shutdown_grace)
    .should_restart(restart_failed_pool);
    let signal = async move {
        shutdown.await;
        let _ = stop_relay.send(true);
        Ok(())
    };
    let result = monitor.run_with_signal(signal).await.map_err(std::io::Error::other);
    for (task, name) in [(relay, "the outbox relay"), (scheduler, "the scheduler"), (requeue, "the stalled-job sweep")]
    {
        if let Err(error) = task.await {
            tracing::error!(%error, "{name} ended abnormally");
        }
    }
    result
}
