//! The scheduler: records each finished hour's rollup and anomaly check in the outbox, once per hour whatever the
//! number of worker processes (the outbox's dedupe key), and catches up on the last hour after a restart.

use std::time::Duration;

use creditflow_jobs::scheduled::{HourV1, ScheduledJob};
use creditflow_store::{SCHEDULED_QUEUE, Store};
use time::OffsetDateTime;
use tokio::sync::watch;

/// Records the jobs of the last finished hour before `now`; returns them.
pub async fn schedule_once(store: &Store, now: OffsetDateTime) -> Result<Vec<ScheduledJob>, String> {
    let this_hour = now.unix_timestamp() - now.unix_timestamp().rem_euclid(3_600);
    let hour = HourV1 { hour_start: this_hour - 3_600 };
    let jobs = vec![ScheduledJob::BillingRollup(hour), ScheduledJob::AnomalyCheck(hour)];
    for job in &jobs {
        let payload = serde_json::to_string(job).map_err(|error| error.to_string())?;
        store.enqueue_once(SCHEDULED_QUEUE, &payload, &job.dedupe_key()).await.map_err(|error| error.to_string())?;
    }
    Ok(jobs)
}

/// Schedules every `interval` until `stop` says so.
pub(crate) async fn run(store: Store, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(error) = schedule_once(&store, OffsetDateTime::now_utc()).await {
            tracing::warn!(%error, "cannot record the hourly jobs; retrying");
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
            () = tokio::time::sleep(interval) => {}
        }
    }
}
