//! Job records: creditflow's own account of every job it queues, kept beside the ledger.
//!
//! Brokers differ in what they can tell an operator (apalis-redis 1.0 cannot list its own jobs correctly), so the
//! state operators see lives here, written by the relay when a job is queued and by the worker around each attempt.
//! A job's id is derived from what it does (`stripe_events:evt_...`), so a job relayed twice is one record.
//!
//! States: `pending` (queued), `running`, `retrying` (failed, another attempt will come), `dead` (failed for good or
//! out of attempts; an operator may retry it), `done`, `discarded` (an operator gave up on it). A worker handed a
//! job whose record is done, dead or discarded does not run it again.

use crate::{
    AUTORELOADS_QUEUE, EMAILS_QUEUE, STRIPE_EVENTS_QUEUE, Store, StoreError, Timestamp, USAGE_BATCHES_QUEUE, on_backend,
};

/// The queue delivering events to monitoring endpoints (one job per event and endpoint).
pub const WEBHOOKS_QUEUE: &str = "webhooks";

/// The queue of hourly jobs (rollup, anomaly check).
pub const SCHEDULED_QUEUE: &str = "scheduled";

/// Every queue, in the order operators read them.
pub const JOB_QUEUES: [&str; 7] = [
    STRIPE_EVENTS_QUEUE,
    USAGE_BATCHES_QUEUE,
    AUTORELOADS_QUEUE,
    EMAILS_QUEUE,
    WEBHOOKS_QUEUE,
    SCHEDULED_QUEUE,
    crate::REPORTS_QUEUE,
];

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobState {
    /// Queued, not yet started.
    Pending,
    /// An attempt is under way.
    Running,
    /// The last attempt failed; another will come.
    Retrying,
    /// Failed for good: permanently, or out of attempts.
    Dead,
    /// Finished.
    Done,
    /// An operator gave up on it.
    Discarded,
}

impl JobState {
    /// Every state, in the order operators read them.
    pub const ALL: [Self; 6] = [Self::Pending, Self::Running, Self::Retrying, Self::Dead, Self::Done, Self::Discarded];

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Dead => "dead",
            Self::Done => "done",
            Self::Discarded => "discarded",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// True when no worker will run the job again unless an operator retries it.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Dead | Self::Done | Self::Discarded)
    }
}

/// A job as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// `<queue>:<what it is about>`.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// The job payload (JSON), as queued.
    pub payload: String,
    /// Where it stands.
    pub state: JobState,
    /// Attempts started.
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was first queued.
    pub created_at: time::OffsetDateTime,
    /// When its state last changed.
    pub updated_at: time::OffsetDateTime,
}

/// A job to be queued: its id, queue and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    /// `<queue>:<what it is about>`.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// The payload (JSON).
    pub payload: String,
}

/// What a worker should do with a job it was handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Run it: this is attempt number `.0`, from 1.
    Run(i64),
    /// Leave it: its record is final (done, dead or discarded).
    Skip(JobState),
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd<'a> {
    /// It succeeded.
    Done,
    /// It failed; another attempt will come.
    Retrying(&'a str),
    /// It failed for good.
    Dead(&'a str),
}

/// Why an operator's action did not apply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobActionRefused {
    /// No job has this id.
    #[error("no job `{0}`")]
    NotFound(String),
    /// The job is in a state the action does not apply to.
    #[error("job `{id}` is {state}; {action} applies to {allowed} jobs")]
    WrongState {
        /// The job.
        id: String,
        /// Its state.
        state: &'static str,
        /// The action.
        action: &'static str,
        /// The states it applies to.
        allowed: &'static str,
    },
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    queue: String,
    payload: String,
    state: String,
    attempts: i64,
    last_error: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl TryFrom<JobRow> for JobRecord {
    type Error = StoreError;

    fn try_from(row: JobRow) -> Result<Self, StoreError> {
        let state = JobState::parse(&row.state)
            .ok_or_else(|| StoreError::Corrupt(format!("job {}: state `{}`", row.id, row.state)))?;
        Ok(Self {
            id: row.id,
            queue: row.queue,
            payload: row.payload,
            state,
            attempts: row.attempts,
            last_error: row.last_error,
            created_at: row.created_at.get(),
            updated_at: row.updated_at.get(),
        })
    }
}

const SELECT_JOB: &str =
    "SELECT id, queue, payload, state, attempts, last_error, created_at, updated_at FROM jobs WHERE id = $1";
const INSERT_QUEUED: &str = "INSERT INTO jobs (id, queue, payload, state, attempts, created_at, updated_at) \
     VALUES ($1, $2, $3, 'pending', 0, $4, $4) ON CONFLICT (id) DO NOTHING";

/// Settles what a job owned once it will not run again (dead, or discarded), so nothing waits on it forever: a usage
/// batch is marked failed (retrying the job finishes it), an autoreload in flight has failed (the account can ask
/// for a new one). Runs in the transaction that ends the job.
macro_rules! release_owned {
    ($tx:ident, $queue:expr, $payload:expr, $reason:expr, $now:expr) => {{
        let payload: serde_json::Value = serde_json::from_str($payload).unwrap_or_default();
        match $queue.as_str() {
            USAGE_BATCHES_QUEUE => {
                if let Some(batch) = payload["batchId"].as_str() {
                    sqlx::query(
                        "UPDATE usage_batches SET status = 'failed', last_error = $2 \
                         WHERE id = $1 AND status IN ('accepted', 'processing')",
                    )
                    .bind(batch)
                    .bind($reason)
                    .execute(&mut *$tx)
                    .await?;
                }
            }
            AUTORELOADS_QUEUE => {
                if let Some(reload) = payload["reloadId"].as_str() {
                    sqlx::query(
                        "UPDATE autoreloads SET state = 'failed', reason = $2, updated_at = $3 \
                         WHERE id = $1 AND state IN ('pending', 'charging')",
                    )
                    .bind(reload)
                    .bind($reason)
                    .bind($now)
                    .execute(&mut *$tx)
                    .await?;
                }
            }
            _ => {}
        }
    }};
}

impl Store {
    /// Marks an outbox message relayed and records the jobs it became, in one transaction.
    pub async fn mark_outbox_relayed_as(&self, outbox_id: i64, jobs: &[QueuedJob]) -> Result<(), StoreError> {
        self.mark_outbox_many_relayed_as(&[(outbox_id, jobs)]).await
    }

    /// Marks outbox messages relayed and records the jobs each became, all in one transaction (one statement on
    /// PostgreSQL): what a relay pass that pushed many messages' jobs records.
    pub async fn mark_outbox_many_relayed_as(&self, relayed: &[(i64, &[QueuedJob])]) -> Result<(), StoreError> {
        if relayed.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        if let Self::Postgres(store) = self {
            let outbox_ids: Vec<i64> = relayed.iter().map(|(id, _)| *id).collect();
            let jobs = relayed.iter().flat_map(|(_, jobs)| jobs.iter());
            let (mut ids, mut queues, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
            for job in jobs {
                ids.push(job.id.as_str());
                queues.push(job.queue.as_str());
                payloads.push(job.payload.as_str());
            }
            let sql = "WITH marked AS (UPDATE outbox SET relayed_at = $1 WHERE id = ANY ($2) AND relayed_at IS NULL) \
                       INSERT INTO jobs (id, queue, payload, state, attempts, created_at, updated_at) \
                       SELECT id, queue, payload, 'pending', 0, $1, $1 FROM UNNEST ($3::text[], $4::text[], $5::text[]) \
                       AS relayed (id, queue, payload) ON CONFLICT (id) DO NOTHING";
            sqlx::query(sql)
                .bind(now)
                .bind(&outbox_ids)
                .bind(&ids)
                .bind(&queues)
                .bind(&payloads)
                .execute(&store.pool)
                .await?;
            return Ok(());
        }
        on_backend!(write self, |tx, _dialect| {
            for (outbox_id, jobs) in relayed {
            for job in *jobs {
                sqlx::query(INSERT_QUEUED)
                    .bind(job.id.as_str())
                    .bind(job.queue.as_str())
                    .bind(job.payload.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("UPDATE outbox SET relayed_at = $2 WHERE id = $1 AND relayed_at IS NULL")
                .bind(outbox_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records the start of an attempt and says whether to run it. A job without a record (queued before records
    /// existed, or by hand) gets one.
    pub async fn start_job_attempt(&self, job: &QueuedJob) -> Result<Attempt, StoreError> {
        let now = Timestamp::now();
        let start = "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = $2 \
                     WHERE id = $1 AND state IN ('pending', 'running', 'retrying')";
        if let Self::Postgres(store) = self {
            // One statement: a job without a record starts as attempt 1; a record that can run moves to its next
            // attempt; a final one answers nothing, and is read for its state.
            let upsert = "INSERT INTO jobs (id, queue, payload, state, attempts, created_at, updated_at) \
                          VALUES ($1, $2, $3, 'running', 1, $4, $4) ON CONFLICT (id) DO UPDATE \
                          SET state = 'running', attempts = jobs.attempts + 1, updated_at = EXCLUDED.updated_at \
                          WHERE jobs.state IN ('pending', 'running', 'retrying') RETURNING attempts";
            let started: Option<i64> = sqlx::query_scalar(upsert)
                .bind(job.id.as_str())
                .bind(job.queue.as_str())
                .bind(job.payload.as_str())
                .bind(now)
                .fetch_optional(&store.pool)
                .await?;
            if let Some(attempts) = started {
                return Ok(Attempt::Run(attempts));
            }
            let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
                .bind(job.id.as_str())
                .fetch_one(&store.pool)
                .await?;
            let state = JobState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("job {}: state `{state}`", job.id)))?;
            return Ok(Attempt::Skip(state));
        }
        on_backend!(write self, |tx, _dialect| {
            sqlx::query(INSERT_QUEUED)
                .bind(job.id.as_str())
                .bind(job.queue.as_str())
                .bind(job.payload.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(start).bind(job.id.as_str()).bind(now).execute(&mut *tx).await?;
            let (state, attempts): (String, i64) =
                sqlx::query_as("SELECT state, attempts FROM jobs WHERE id = $1").bind(job.id.as_str()).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            let state = JobState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("job {}: state `{state}`", job.id)))?;
            Ok(if state == JobState::Running { Attempt::Run(attempts) } else { Attempt::Skip(state) })
        })
    }

    /// Records how attempt number `attempt` ended, unless the record moved on meanwhile (a later attempt started,
    /// another copy finished, an operator discarded it): a stale copy never overwrites a newer state.
    pub async fn end_job_attempt(&self, id: &str, attempt: i64, end: AttemptEnd<'_>) -> Result<(), StoreError> {
        let (state, error) = match end {
            AttemptEnd::Done => (JobState::Done, None),
            AttemptEnd::Retrying(error) => (JobState::Retrying, Some(error)),
            AttemptEnd::Dead(error) => (JobState::Dead, Some(error)),
        };
        let sql = "UPDATE jobs SET state = $2, last_error = COALESCE($3, last_error), updated_at = $4 \
                   WHERE id = $1 AND state = 'running' AND attempts = $5 RETURNING queue, payload";
        let now = Timestamp::now();
        if let (Self::Postgres(store), false) = (self, state == JobState::Dead) {
            // Nothing else to settle: one statement.
            sqlx::query(sql)
                .bind(id)
                .bind(state.as_str())
                .bind(error)
                .bind(now)
                .bind(attempt)
                .execute(&store.pool)
                .await?;
            return Ok(());
        }
        on_backend!(write self, |tx, _dialect| {
            let ended: Option<(String, String)> = sqlx::query_as(sql)
                .bind(id)
                .bind(state.as_str())
                .bind(error)
                .bind(now)
                .bind(attempt)
                .fetch_optional(&mut *tx)
                .await?;
            if let (Some((queue, payload)), JobState::Dead) = (&ended, state) {
                release_owned!(tx, queue, payload, error.unwrap_or("the job died"), now);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Queues again, through the outbox, the jobs that should be moving but whose records have not changed since
    /// `stalled_since` (pending, running or retrying), at most `limit` of them, oldest first; returns them.
    ///
    /// This is what recovers jobs a broker lost: a Redis that restarted without its data, or was flushed, no longer
    /// holds jobs the database says are queued. Each record's `updated_at` is moved to now in the same transaction,
    /// so concurrent sweeps (one per worker process) requeue a job once, and the next sweep waits a whole period
    /// again. A copy queued twice is harmless: every handler is idempotent and a worker skips a job whose record is
    /// final.
    pub async fn requeue_stalled_jobs(
        &self,
        stalled_since: time::OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<QueuedJob>, StoreError> {
        // The outer condition repeats the inner one: PostgreSQL re-checks it on the row a concurrent sweep just
        // updated, so the second sweep skips it.
        let sql = "UPDATE jobs SET updated_at = $2 \
                   WHERE state IN ('pending', 'running', 'retrying') AND updated_at < $1 AND id IN (\
                     SELECT id FROM jobs WHERE state IN ('pending', 'running', 'retrying') AND updated_at < $1 \
                     ORDER BY updated_at LIMIT $3) \
                   RETURNING id, queue, payload";
        let now = Timestamp::now();
        on_backend!(write self, |tx, _dialect| {
            let rows: Vec<(String, String, String)> = sqlx::query_as(sql)
                .bind(Timestamp::from(stalled_since))
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            for (_, queue, payload) in &rows {
                sqlx::query("INSERT INTO outbox (queue, payload, created_at) VALUES ($1, $2, $3)")
                    .bind(queue.as_str())
                    .bind(payload.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            if !rows.is_empty() {
                self.outbox_written();
            }
            Ok(rows.into_iter().map(|(id, queue, payload)| QueuedJob { id, queue, payload }).collect())
        })
    }

    /// Deletes the records of jobs done before `before` (the work they did is in the ledger and the audit log);
    /// returns how many. Failed, dead and discarded records stay for operators.
    pub async fn prune_done_jobs(&self, before: time::OffsetDateTime) -> Result<u64, StoreError> {
        let sql = "DELETE FROM jobs WHERE state = 'done' AND updated_at < $1";
        let deleted = on_backend!(self, |pool, _dialect| {
            sqlx::query(sql).bind(Timestamp::from(before)).execute(pool).await?.rows_affected()
        });
        Ok(deleted)
    }

    /// Jobs per queue and state.
    pub async fn job_counts(&self) -> Result<Vec<(String, JobState, i64)>, StoreError> {
        let sql = "SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state ORDER BY queue, state";
        let rows: Vec<(String, String, i64)> =
            on_backend!(self, |pool, _dialect| sqlx::query_as(sql).fetch_all(pool).await?);
        rows.into_iter()
            .map(|(queue, state, count)| {
                let parsed = JobState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("jobs of {queue}: state `{state}`")))?;
                Ok((queue, parsed, count))
            })
            .collect()
    }

    /// Jobs in `states` (of `queue`, when given), most recently changed first, at most `limit`.
    pub async fn jobs(
        &self,
        queue: Option<&str>,
        states: &[JobState],
        limit: i64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let names: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
        let names = serde_json::to_string(&names).unwrap_or_else(|_| "[]".to_owned());
        let rows: Vec<JobRow> = on_backend!(self, |pool, dialect| {
            sqlx::query_as(dialect.jobs_in_states).bind(queue).bind(names.as_str()).bind(limit).fetch_all(pool).await?
        });
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row: Option<JobRow> =
            on_backend!(self, |pool, _dialect| sqlx::query_as(SELECT_JOB).bind(id).fetch_optional(pool).await?);
        row.map(JobRecord::try_from).transpose()
    }

    /// Queues a dead or discarded job again, with its attempts reset: its payload goes back through the outbox in
    /// the same transaction as the state change.
    pub async fn retry_job(&self, id: &str) -> Result<Result<JobRecord, JobActionRefused>, StoreError> {
        self.act_on_job(id, "retry", "dead or discarded", &[JobState::Dead, JobState::Discarded], JobState::Pending)
            .await
    }

    /// Gives up on a job that has not finished: a worker handed it later leaves it alone.
    pub async fn discard_job(&self, id: &str) -> Result<Result<JobRecord, JobActionRefused>, StoreError> {
        let allowed = [JobState::Pending, JobState::Running, JobState::Retrying, JobState::Dead];
        self.act_on_job(id, "discard", "pending, running, retrying or dead", &allowed, JobState::Discarded).await
    }

    async fn act_on_job(
        &self,
        id: &str,
        action: &'static str,
        allowed_names: &'static str,
        allowed: &[JobState],
        to: JobState,
    ) -> Result<Result<JobRecord, JobActionRefused>, StoreError> {
        let now = Timestamp::now();
        on_backend!(write self, |tx, _dialect| {
            let row: Option<JobRow> = sqlx::query_as(SELECT_JOB).bind(id).fetch_optional(&mut *tx).await?;
            let Some(row) = row else { return Ok(Err(JobActionRefused::NotFound(id.to_owned()))) };
            let mut job = JobRecord::try_from(row)?;
            if !allowed.contains(&job.state) {
                let refused =
                    JobActionRefused::WrongState { id: id.to_owned(), state: job.state.as_str(), action, allowed: allowed_names };
                return Ok(Err(refused));
            }
            let attempts = if to == JobState::Pending { 0 } else { job.attempts };
            sqlx::query("UPDATE jobs SET state = $2, attempts = $3, updated_at = $4 WHERE id = $1")
                .bind(id)
                .bind(to.as_str())
                .bind(attempts)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if to == JobState::Discarded {
                release_owned!(tx, &job.queue, &job.payload, "an operator discarded the job", now);
            }
            if to == JobState::Pending {
                sqlx::query("INSERT INTO outbox (queue, payload, created_at) VALUES ($1, $2, $3)")
                    .bind(job.queue.as_str())
                    .bind(job.payload.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            if to == JobState::Pending {
                self.outbox_written();
            }
            job.state = to;
            job.attempts = attempts;
            job.updated_at = now.get();
            Ok(Ok(job))
        })
    }
}
