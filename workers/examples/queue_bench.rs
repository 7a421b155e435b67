//! Times no-op jobs through creditflow's production Redis queue, enqueue and processing, for `bench/jobs`.
//!
//! What is production's here: the queue is opened with [`redis_queue_config`] (the apalis-redis settings
//! `Queues::open_with` gives every queue: key layout, heartbeat, missed beats, and apalis's defaults for batch size,
//! task locking, stored results and events) on a connection from `apalis_redis::connect`, jobs are pushed one at a
//! time as the outbox relay pushes them, and the worker pool is [`worker_builder`]'s (100 ms idle poll, concurrency
//! limit, in-process retry with production's default backoff) under a `Monitor` with the default shutdown grace, on
//! a multi-threaded tokio runtime with one thread per core like the `creditflow` binary's.
//!
//! What is not, by default: the job record. Production handlers run inside it (`Tracker` in `src/handlers.rs`),
//! which records the start of every attempt in the database before the work and its end after it; the Python
//! references have no such record, so the queue comparison leaves it out and the JSON says so
//! (`"job_records": "excluded"`). With `--records URL` (a PostgreSQL database, migrated here) every job does what
//! `Tracker` does around its work, with the store's own `start_job_attempt` and `end_job_attempt`: the rate a
//! production pool reaches (`"job_records": "postgres"`), and at the end every job must have a `done` record. No log
//! subscriber is installed. The job's work is to mark that it ran with one Redis command, `SETBIT` on a bitmap at its
//! index, which the references do too: at the end, the bitmap's population must equal the job count and no bit may
//! have been set twice.
//!
//! Two orders (`--mode`): `concurrent` (the default) starts the workers and pushes the jobs at the same time, as the
//! relay pushes while workers run; `backlog` pushes every job first, then starts the workers. Either way the clock
//! starts before the first push and stops when the monitor has shut down after every job ran, so the
//! acknowledgements (apalis's done set) are in. In `backlog` order apalis-redis 1.0 cannot go beyond about 8,000
//! jobs: it keeps every pushed job in its scheduled set until a fetch moves the due ones to the active list in one
//! Lua call, which fails above Lua's limit of about 8,000 values unpacked at once; the worker then stops and the run
//! fails with the jobs still scheduled.
//!
//! It prints one JSON line: `{"engine": "creditflow", "mode", "jobs", "concurrency", "seconds", "jobs_per_s",
//! "enqueue_seconds", "ran", "repeated", "acked", ...}`, and exits 1 if a job is missing, ran twice or was not
//! acknowledged.
//!
//! `cargo run --release -p creditflow-workers --example queue_bench -- --jobs 100000 --concurrency 8`
//! `... -- --jobs 20000 --records postgres://postgres@127.0.0.1:5432/creditflow_bench_jobs` (a database of its own)

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::{ConnectionManager, RedisStorage};
use creditflow_store::{Attempt, AttemptEnd, JobState, QueuedJob, Store};
use creditflow_workers::{DEFAULT_HEARTBEAT, WorkerSettings, redis_queue_config, retry_backoff, worker_builder};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

const USAGE_TEXT: &str = "usage: queue_bench [--jobs N] [--concurrency C] [--mode concurrent|backlog] \
                          [--redis-url URL] [--namespace PREFIX] [--records POSTGRES_URL]";
/// The queue's name under the namespace.
const QUEUE: &str = "noop";

struct Args {
    jobs: u64,
    concurrency: usize,
    /// Push every job before the workers start, rather than while they run.
    backlog: bool,
    redis_url: String,
    namespace: String,
    /// A PostgreSQL database for the job records, when they are measured.
    records: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut parsed = Args {
        jobs: 100_000,
        concurrency: 8,
        backlog: false,
        redis_url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        namespace: "creditflow-bench-jobs:creditflow".to_owned(),
        records: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let count = |value: &str| value.parse::<u64>().ok().filter(|count| *count > 0);
        match flag.as_str() {
            "--jobs" => parsed.jobs = count(&value).ok_or("--jobs must be a positive integer")?,
            "--concurrency" => {
                parsed.concurrency = count(&value)
                    .and_then(|count| usize::try_from(count).ok())
                    .ok_or("--concurrency must be a positive integer")?;
            }
            "--mode" => {
                parsed.backlog = match value.as_str() {
                    "concurrent" => false,
                    "backlog" => true,
                    _ => return Err("--mode must be `concurrent` or `backlog`".to_owned()),
                };
            }
            "--redis-url" => parsed.redis_url = value,
            "--namespace" => parsed.namespace = value,
            "--records" => parsed.records = Some(value),
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    // The namespace becomes a SCAN pattern for the clean-up: no glob characters, and never empty.
    let plain = |character: char| character.is_ascii_alphanumeric() || "-_.:".contains(character);
    if parsed.namespace.is_empty() || !parsed.namespace.chars().all(plain) {
        return Err("--namespace must be letters, digits, `-`, `_`, `.` or `:`".to_owned());
    }
    Ok(parsed)
}

/// The benchmark's job: nothing to do but say that it ran.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NoopV1 {
    /// Its bit in the bitmap of jobs that ran.
    index: u64,
}

/// Where jobs record their runs, and how the last first run tells the benchmark that every job has run.
#[derive(Clone)]
struct RunLog {
    connection: ConnectionManager,
    ran_key: String,
    repeated_key: String,
    first_runs: Arc<AtomicU64>,
    jobs: u64,
    all_ran: Arc<Notify>,
    /// Where each job records its attempt, as production's `Tracker` does.
    records: Option<Store>,
}

async fn noop(job: NoopV1, log: Data<RunLog>) -> Result<(), BoxDynError> {
    let Some(store) = &log.records else { return mark(&job, &log).await };
    let queued = QueuedJob {
        id: format!("{QUEUE}:{}", job.index),
        queue: QUEUE.to_owned(),
        payload: serde_json::to_string(&job)?,
    };
    match store.start_job_attempt(&queued).await? {
        Attempt::Run(attempt) => {
            mark(&job, &log).await?;
            store.end_job_attempt(&queued.id, attempt, AttemptEnd::Done).await?;
        }
        // Its record is final: delivered again after it ran, so it counts as a repeat.
        Attempt::Skip(_) => {
            let mut connection = log.connection.clone();
            redis::cmd("INCR").arg(&log.repeated_key).query_async::<i64>(&mut connection).await?;
        }
    }
    Ok(())
}

/// The job's work: its bit set, and a repeat counted if the bit was set already.
async fn mark(job: &NoopV1, log: &RunLog) -> Result<(), BoxDynError> {
    let mut connection = log.connection.clone();
    let before: u8 = redis::cmd("SETBIT").arg(&log.ran_key).arg(job.index).arg(1).query_async(&mut connection).await?;
    if before == 1 {
        redis::cmd("INCR").arg(&log.repeated_key).query_async::<i64>(&mut connection).await?;
    } else if log.first_runs.fetch_add(1, Ordering::Relaxed) + 1 == log.jobs {
        log.all_ran.notify_one();
    }
    Ok(())
}

/// Deletes every key under `namespace` (left by an earlier run, or by this one once measured).
async fn clear(connection: &mut ConnectionManager, namespace: &str) -> redis::RedisResult<()> {
    let pattern = format!("{namespace}:*");
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK").arg(&keys).query_async::<u64>(connection).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// What one measured run found.
struct Measured {
    seconds: f64,
    enqueue_seconds: f64,
    ran: u64,
    repeated: u64,
    acked: u64,
    /// Jobs left in apalis's scheduled set and active list (both 0 after a complete run).
    left: (u64, u64),
    /// Jobs whose record says done, when records are kept.
    recorded_done: Option<u64>,
}

/// Pushes jobs `0..jobs` one at a time, as the relay pushes; returns the seconds since `started` when done.
async fn push_all(mut storage: RedisStorage<NoopV1>, jobs: u64, started: Instant) -> Result<f64, BoxDynError> {
    for index in 0..jobs {
        storage.push(NoopV1 { index }).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn measure(args: &Args, connection: ConnectionManager, records: Option<Store>) -> Result<Measured, BoxDynError> {
    let config = redis_queue_config(&args.namespace, QUEUE, DEFAULT_HEARTBEAT);
    let (done_set, scheduled_set, active_list) =
        (config.done_jobs_set(), config.scheduled_jobs_set(), config.active_jobs_list());
    let storage = RedisStorage::<NoopV1>::new(connection.clone()).with_config(config);
    let log = RunLog {
        connection: connection.clone(),
        ran_key: format!("{}:ran", args.namespace),
        repeated_key: format!("{}:repeated", args.namespace),
        first_runs: Arc::new(AtomicU64::new(0)),
        jobs: args.jobs,
        all_ran: Arc::new(Notify::new()),
        records: records.clone(),
    };
    let settings = WorkerSettings::default();
    let backoff = retry_backoff(&settings)?;

    let all_ran = log.all_ran.clone();
    let (concurrency, retries, worker_log, worker_storage) =
        (args.concurrency, settings.retries, log.clone(), storage.clone());
    // Futures do nothing until awaited: the workers start where `workers` is first polled.
    let workers = Monitor::new()
        .register(move |_restarts: usize| {
            worker_builder("bench-noop", worker_storage.clone(), None, concurrency, retries, &backoff)
                .data(worker_log.clone())
                .build(noop)
        })
        .shutdown_timeout(settings.shutdown_grace)
        .run_with_signal(async move {
            all_ran.notified().await;
            Ok(())
        });
    let workers = async { workers.await.map_err(BoxDynError::from) };

    let started = Instant::now();
    let enqueue_seconds = if args.backlog {
        let pushed = push_all(storage, args.jobs, started).await?;
        workers.await?;
        pushed
    } else {
        tokio::try_join!(push_all(storage, args.jobs, started), workers)?.0
    };
    // With a shutdown grace set, the monitor also returns when its worker stops on an error: the counts below tell.
    let seconds = started.elapsed().as_secs_f64();

    let mut connection = connection;
    let ran: u64 = redis::cmd("BITCOUNT").arg(&log.ran_key).query_async(&mut connection).await?;
    let repeated: Option<u64> = redis::cmd("GET").arg(&log.repeated_key).query_async(&mut connection).await?;
    let acked: u64 = redis::cmd("SCARD").arg(&done_set).query_async(&mut connection).await?;
    let scheduled: u64 = redis::cmd("ZCARD").arg(&scheduled_set).query_async(&mut connection).await?;
    let active: u64 = redis::cmd("LLEN").arg(&active_list).query_async(&mut connection).await?;
    let recorded_done = match &records {
        Some(store) => {
            let counts = store.job_counts().await?;
            let done = counts.iter().find(|(queue, state, _)| queue == QUEUE && *state == JobState::Done);
            Some(done.map_or(0, |(_, _, jobs)| u64::try_from(*jobs).unwrap_or(0)))
        }
        None => None,
    };
    Ok(Measured {
        seconds,
        enqueue_seconds,
        ran,
        repeated: repeated.unwrap_or(0),
        acked,
        left: (scheduled, active),
        recorded_done,
    })
}

async fn run(args: Args) -> Result<bool, BoxDynError> {
    let records = match &args.records {
        Some(url) => {
            // As many connections as jobs run at once, and as many again for the ends of attempts.
            let connections = u32::try_from(args.concurrency.saturating_mul(2)).unwrap_or(u32::MAX);
            let store = Store::connect(url, connections).await?;
            store.migrate().await?;
            Some(store)
        }
        None => None,
    };
    let mut connection = apalis_redis::connect(args.redis_url.as_str()).await?;
    clear(&mut connection, &args.namespace).await?;
    // The measurement must not hang if jobs go missing: a generous bound, far above any expected run.
    let bound = Duration::from_secs(600 + args.jobs / 100);
    let measured = tokio::time::timeout(bound, measure(&args, connection.clone(), records)).await;
    clear(&mut connection, &args.namespace).await?;
    let measured = measured.map_err(|_| format!("not every job ran within {} s", bound.as_secs()))??;
    #[allow(clippy::cast_precision_loss)] // Job counts are far below 2^52.
    let jobs_per_s = args.jobs as f64 / measured.seconds;
    let line = json!({
        "engine": "creditflow",
        "mode": if args.backlog { "backlog" } else { "concurrent" },
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "seconds": measured.seconds,
        "jobs_per_s": jobs_per_s,
        "enqueue_seconds": measured.enqueue_seconds,
        "ran": measured.ran,
        "repeated": measured.repeated,
        "acked": measured.acked,
        "setup": format!(
            "1 process, {} jobs at once, tokio runtime with {} threads",
            args.concurrency,
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        ),
        "job_records": if args.records.is_some() { "postgres" } else { "excluded" },
        "recorded_done": measured.recorded_done,
    });
    println!("{line}");
    let complete = measured.ran == args.jobs
        && measured.repeated == 0
        && measured.acked == args.jobs
        && measured.recorded_done.is_none_or(|done| done == args.jobs);
    if !complete {
        eprintln!(
            "queue_bench: {} jobs pushed, {} ran, {} ran more than once, {} acknowledged, {} recorded done; {} \
             still scheduled, {} still active (the worker stops if a fetch fails: more than about 8,000 scheduled \
             jobs due at once fail apalis-redis's fetch script)",
            args.jobs,
            measured.ran,
            measured.repeated,
            measured.acked,
            measured.recorded_done.map_or_else(|| "-".to_owned(), |done| done.to_string()),
            measured.left.0,
            measured.left.1
        );
    }
    Ok(complete)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("queue_bench: {error}\n{USAGE_TEXT}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("queue_bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("queue_bench: {error}");
            ExitCode::FAILURE
        }
    }
}
