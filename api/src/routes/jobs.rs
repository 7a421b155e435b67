//! Queue inspection and repair for operators: counts per queue and state, failed and dead jobs with their attempts
//! and last error, one job, retry of a dead job, discard. Read from creditflow's job records, so the answers are the
//! same whatever broker runs the queues.

use creditflow_store::{JOB_QUEUES, JobActionRefused, JobRecord, JobState};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::admin::{audit, not_found, reader};
use super::{ApiTags, rfc3339};
use crate::AppState;
use crate::auth::Role;
use crate::errors::{ApiError, ErrorBody};
use crate::security::BearerAuth;

pub(crate) struct JobsApi;

/// Jobs of one queue by state.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct QueueCounts {
    /// The queue: `stripe_events`, `usage_batches`, `autoreloads`, `emails`, `webhooks` or `scheduled`.
    pub(crate) queue: String,
    /// Queued, not started.
    pub(crate) pending: i64,
    /// An attempt under way.
    pub(crate) running: i64,
    /// Failed; another attempt will come.
    pub(crate) retrying: i64,
    /// Failed for good; retry or discard them.
    pub(crate) dead: i64,
    /// Finished.
    pub(crate) done: i64,
    /// Given up by an operator.
    pub(crate) discarded: i64,
}

/// Every queue.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct QueuesBody {
    queues: Vec<QueueCounts>,
}

/// One job.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct JobView {
    /// `<queue>:<what it is about>`, such as `stripe_events:evt_123`.
    id: String,
    queue: String,
    /// `pending`, `running`, `retrying`, `dead`, `done` or `discarded`.
    state: String,
    /// Attempts started since it was (re)queued.
    attempts: i64,
    /// Why the last attempt failed.
    last_error: Option<String>,
    /// The job's payload (JSON text).
    payload: String,
    /// First queued (RFC 3339).
    created_at: String,
    /// Last change of state.
    updated_at: String,
}

/// A page of jobs.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct JobsBody {
    jobs: Vec<JobView>,
}

/// Why an operator discards a job.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct DiscardRequest {
    /// Recorded in the audit log (required).
    #[oai(validator(min_length = 1, max_length = 1000))]
    reason: String,
}

impl From<JobRecord> for JobView {
    fn from(job: JobRecord) -> Self {
        Self {
            id: job.id,
            queue: job.queue,
            state: job.state.as_str().to_owned(),
            attempts: job.attempts,
            last_error: job.last_error,
            payload: job.payload,
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
        }
    }
}

#[OpenApi(tag = "ApiTags::Admin")]
impl JobsApi {
    /// Jobs per queue and state (admin or finance).
    #[oai(path = "/api/admin/queues", method = "get")]
    async fn queues(&self, state: Data<&AppState>, auth: BearerAuth) -> Result<Json<QueuesBody>, ApiError> {
        reader(&auth.0)?;
        Ok(Json(QueuesBody { queues: queue_counts(&state).await? }))
    }

    /// Jobs in some states, most recently changed first (admin or finance). `state` is a comma-separated list
    /// (default `retrying,dead`); `limit` is 1 to 500 (default 50).
    #[oai(path = "/api/admin/jobs", method = "get")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        queue: Query<Option<String>>,
        #[oai(name = "state")] states: Query<Option<String>>,
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))] limit: Query<Option<i64>>,
    ) -> Result<Json<JobsBody>, ApiError> {
        reader(&auth.0)?;
        if let Some(queue) = queue.0.as_deref()
            && !JOB_QUEUES.contains(&queue)
        {
            return Err(ApiError::invalid(format!("unknown queue `{queue}`; queues: {}", JOB_QUEUES.join(", "))));
        }
        let wanted = parse_states(states.0.as_deref().unwrap_or("retrying,dead"))?;
        let jobs = state.store.jobs(queue.0.as_deref(), &wanted, limit.0.unwrap_or(50)).await?;
        Ok(Json(JobsBody { jobs: jobs.into_iter().map(JobView::from).collect() }))
    }

    /// One job (admin or finance).
    #[oai(path = "/api/admin/jobs/:job_id", method = "get")]
    async fn show(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        job_id: Path<String>,
    ) -> Result<Json<JobView>, ApiError> {
        reader(&auth.0)?;
        match state.store.job(&job_id.0).await? {
            Some(job) => Ok(Json(job.into())),
            None => Err(not_found(format!("no job `{}`", job_id.0))),
        }
    }

    /// Queue a dead (or discarded) job again with its attempts reset (admin). 409 `job_state` for other states.
    #[oai(path = "/api/admin/jobs/:job_id/retry", method = "post")]
    async fn retry(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        job_id: Path<String>,
    ) -> Result<Json<JobView>, ApiError> {
        auth.0.require(Role::Admin)?;
        let job = refused_to_error(state.store.retry_job(&job_id.0).await?)?;
        let record = audit(&auth.0, "job.retry", &job.id, None, &serde_json::json!({"queue": job.queue}));
        state.store.append_audit(&record).await?;
        Ok(Json(job.into()))
    }

    /// Give up on a job that has not finished (admin); a worker handed it later leaves it alone. 409 `job_state`
    /// for a job that is done or already discarded.
    #[oai(path = "/api/admin/jobs/:job_id/discard", method = "post")]
    async fn discard(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        job_id: Path<String>,
        body: Json<DiscardRequest>,
    ) -> Result<Json<JobView>, ApiError> {
        auth.0.require(Role::Admin)?;
        let job = refused_to_error(state.store.discard_job(&job_id.0).await?)?;
        let details = serde_json::json!({"queue": job.queue, "attempts": job.attempts});
        let record = audit(&auth.0, "job.discard", &job.id, Some(&body.0.reason), &details);
        state.store.append_audit(&record).await?;
        Ok(Json(job.into()))
    }
}

/// Counts for every known queue, zeros included.
pub(crate) async fn queue_counts(state: &AppState) -> Result<Vec<QueueCounts>, ApiError> {
    let counts = state.store.job_counts().await?;
    Ok(JOB_QUEUES
        .iter()
        .map(|queue| {
            let count = |wanted: JobState| {
                counts.iter().filter(|(q, s, _)| q == queue && *s == wanted).map(|(_, _, n)| *n).sum::<i64>()
            };
            QueueCounts {
                queue: (*queue).to_owned(),
                pending: count(JobState::Pending),
                running: count(JobState::Running),
                retrying: count(JobState::Retrying),
                dead: count(JobState::Dead),
                done: count(JobState::Done),
                discarded: count(JobState::Discarded),
            }
        })
        .collect())
}

fn parse_states(text: &str) -> Result<Vec<JobState>, ApiError> {
    text.split(',')
        .map(str::trim)
        .map(|name| {
            let names = JobState::ALL.map(JobState::as_str).join(", ");
            JobState::parse(name).ok_or_else(|| ApiError::invalid(format!("unknown state `{name}`; states: {names}")))
        })
        .collect()
}

fn refused_to_error(answer: Result<JobRecord, JobActionRefused>) -> Result<JobRecord, ApiError> {
    answer.map_err(|refused| match refused {
        JobActionRefused::NotFound(_) => not_found(refused.to_string()),
        JobActionRefused::WrongState { .. } => {
            ApiError::Conflict(Json(ErrorBody::new("job_state", refused.to_string())))
        }
    })
}
