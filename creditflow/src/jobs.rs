//! `creditflow jobs`: the operators' queue tools on the command line, reading and repairing the job records that
//! every queue backend shares (the same data as the admin API's `/api/admin/queues` and `/api/admin/jobs`).

use std::fmt::Write as _;

use anyhow::Context as _;
use creditflow_store::{JOB_QUEUES, JobRecord, JobState, NewAuditRecord, Store};
use time::format_description::well_known::Rfc3339;

use crate::cli::{JobsArgs, JobsCommand};
use crate::config::Loaded;

/// Runs one `creditflow jobs` subcommand, printing to stdout.
pub(crate) async fn run(loaded: &Loaded, args: &JobsArgs) -> anyhow::Result<()> {
    let store = crate::serve::open_store(loaded).await?;
    if loaded.config.auto_migrate {
        store.migrate().await.context("cannot apply migrations")?;
    }
    let output = match &args.command {
        JobsCommand::Queues => queues(&store, args.json).await?,
        JobsCommand::List { queue, state, limit } => {
            if let Some(queue) = queue
                && !JOB_QUEUES.contains(&queue.as_str())
            {
                anyhow::bail!("unknown queue `{queue}`; queues: {}", JOB_QUEUES.join(", "));
            }
            let states = state
                .split(',')
                .map(|name| {
                    JobState::parse(name.trim()).with_context(|| {
                        format!("unknown state `{name}`; states: {}", JobState::ALL.map(JobState::as_str).join(", "))
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let jobs = store.jobs(queue.as_deref(), &states, *limit).await?;
            if args.json { json_lines(&jobs) } else { table(&jobs) }
        }
        JobsCommand::Show { id } => {
            let job = store.job(id).await?.with_context(|| format!("no job `{id}`"))?;
            if args.json { json_lines(&[job]) } else { details(&job) }
        }
        JobsCommand::Retry { id } => {
            let job = store.retry_job(id).await??;
            store.append_audit(&audit("job.retry", &job, None)).await?;
            format!("{} queued again (attempts reset); a worker will pick it up\n", job.id)
        }
        JobsCommand::Discard { id, reason } => {
            let job = store.discard_job(id).await??;
            store.append_audit(&audit("job.discard", &job, Some(reason))).await?;
            format!("{} discarded\n", job.id)
        }
    };
    print!("{output}");
    store.close().await;
    Ok(())
}

async fn queues(store: &Store, json: bool) -> anyhow::Result<String> {
    let counts = store.job_counts().await?;
    let count = |queue: &str, state: JobState| -> i64 {
        counts.iter().filter(|(q, s, _)| q == queue && *s == state).map(|(_, _, n)| *n).sum()
    };
    let mut out = String::new();
    if json {
        for queue in JOB_QUEUES {
            let mut line = serde_json::Map::new();
            line.insert("queue".into(), queue.into());
            for state in JobState::ALL {
                line.insert(state.as_str().into(), count(queue, state).into());
            }
            let _ = writeln!(out, "{}", serde_json::Value::Object(line));
        }
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "{:<16}{:>9}{:>9}{:>10}{:>7}{:>9}{:>11}",
        "QUEUE", "PENDING", "RUNNING", "RETRYING", "DEAD", "DONE", "DISCARDED"
    );
    for queue in JOB_QUEUES {
        let _ = writeln!(
            out,
            "{queue:<16}{:>9}{:>9}{:>10}{:>7}{:>9}{:>11}",
            count(queue, JobState::Pending),
            count(queue, JobState::Running),
            count(queue, JobState::Retrying),
            count(queue, JobState::Dead),
            count(queue, JobState::Done),
            count(queue, JobState::Discarded),
        );
    }
    Ok(out)
}

fn table(jobs: &[JobRecord]) -> String {
    if jobs.is_empty() {
        return "no jobs in those states\n".to_owned();
    }
    let width = jobs.iter().map(|job| job.id.len()).max().unwrap_or(2).max(2);
    let mut out = format!("{:<width$}  {:<9}  {:>8}  {:<20}  LAST ERROR\n", "ID", "STATE", "ATTEMPTS", "UPDATED");
    for job in jobs {
        let error: String = job.last_error.as_deref().unwrap_or("").chars().take(80).collect();
        let _ = writeln!(
            out,
            "{:<width$}  {:<9}  {:>8}  {:<20}  {error}",
            job.id,
            job.state.as_str(),
            job.attempts,
            time_of(job.updated_at)
        );
    }
    out
}

fn details(job: &JobRecord) -> String {
    format!(
        "id:          {}\nqueue:       {}\nstate:       {}\nattempts:    {}\nlast error:  {}\ncreated at:  {}\nupdated at:  {}\npayload:     {}\n",
        job.id,
        job.queue,
        job.state.as_str(),
        job.attempts,
        job.last_error.as_deref().unwrap_or("-"),
        time_of(job.created_at),
        time_of(job.updated_at),
        job.payload
    )
}

fn json_lines(jobs: &[JobRecord]) -> String {
    let mut out = String::new();
    for job in jobs {
        let line = serde_json::json!({
            "id": job.id, "queue": job.queue, "state": job.state.as_str(), "attempts": job.attempts,
            "lastError": job.last_error, "payload": job.payload,
            "createdAt": time_of(job.created_at), "updatedAt": time_of(job.updated_at),
        });
        let _ = writeln!(out, "{line}");
    }
    out
}

fn time_of(at: time::OffsetDateTime) -> String {
    at.replace_nanosecond(0).unwrap_or(at).format(&Rfc3339).unwrap_or_default()
}

/// The audit record of an operator's action from the command line (actor `cli:<login>`).
fn audit(action: &str, job: &JobRecord, reason: Option<&str>) -> NewAuditRecord {
    let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "unknown".to_owned());
    NewAuditRecord {
        actor: format!("cli:{user}"),
        action: action.to_owned(),
        subject: job.id.clone(),
        reason: reason.map(str::to_owned),
        details: serde_json::json!({"queue": job.queue}).to_string(),
    }
}
