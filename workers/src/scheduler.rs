//! The scheduler: records each finished hour's rollup and anomaly check in the outbox, once per hour whatever the
//! number of worker processes (the outbox's dedupe key). An hour is scheduled a little after it ends, so debits
//! stamped in its last moments but committed just after are in it; on start, the last day is caught up (hours that
//! passed while no worker ran), the dedupe keys skipping those already done. It also deletes the records of jobs
//! done more than 30 days ago. When a report schedule is set, it also records the nightly report's job of the day
//! the schedule last made due (`report:<date>` dedupe key: one per date across every scheduler), and of the days
//! before it back to the latest stored report (at most a week) that no worker was up to record.
use chrono::Days;
use creditflow_jobs::reports::BuildReportV1;
use creditflow_jobs::scheduled::{HourV1, ScheduledJob};
use creditflow_reports::ReportSchedule;
use creditflow_store::{REPORTS_QUEUE, SCHEDULED_QUEUE, Store};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::WorkerSettings;

/// How long after an hour ends its jobs are recorded.
const SETTLE: time::Duration = time::Duration::minutes(2);
/// Hours caught up on start.
const CATCH_UP_HOURS: i64 = 24;
/// How long the records of done jobs are kept.
const DONE_JOBS_KEPT: time::Duration = time::Duration::days(30);
/// Days before the latest due one whose missed reports are recorded too (when a stored report is older than that).
const CATCH_UP_REPORT_DAYS: u64 = 7;
/// Stalled jobs queued again per sweep: a broker that lost a large backlog is refilled over several sweeps.
const REQUEUE_BATCH: i64 = 1_000;

/// Records the jobs of the last `hours` finished hours before `now` (oldest first); returns them.
pub async fn schedule_hours(store: &Store, now: OffsetDateTime, hours: i64) -> Result<Vec<ScheduledJob>, String> {
    let ready = (now - SETTLE).unix_timestamp();
    let current = ready - ready.rem_euclid(3_600);
    let mut jobs = Vec::new();
    for back in (1..=hours.max(1)).rev() {
        let hour = HourV1 { hour_start: current - back * 3_600 };
        for job in [ScheduledJob::BillingRollup(hour), ScheduledJob::AnomalyCheck(hour)] {
            let payload = serde_json::to_string(&job).map_err(|error| error.to_string())?;
            store.enqueue_once(SCHEDULED_QUEUE, &payload, &job.dedupe_key()).await.map_err(|e| e.to_string())?;
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// Records the jobs of the last finished hour before `now`; returns them.
pub async fn schedule_once(store: &Store, now: OffsetDateTime) -> Result<Vec<ScheduledJob>, String> {
    schedule_hours(store, now, 1).await
}

/// Records the report job of the day the schedule last made due before `now`, and of the days between the latest
/// stored report and it (at most [`CATCH_UP_REPORT_DAYS`] before it): reports whose night passed while no worker
/// ran. With no stored report (a new installation) only the due day is recorded. Once per date whatever the number
/// of schedulers (the outbox's dedupe key, kept as long as the job's record); returns the jobs, oldest first.
pub async fn schedule_report(
    store: &Store,
    schedule: &ReportSchedule,
    now: OffsetDateTime,
) -> Result<Vec<BuildReportV1>, String> {
    let Some(due) = schedule.due(now) else { return Ok(Vec::new()) };
    let latest = store.latest_report_date().await.map_err(|error| error.to_string())?;
    let earliest = due.checked_sub_days(Days::new(CATCH_UP_REPORT_DAYS)).unwrap_or(due);
    let first = latest
        .as_deref()
        .and_then(|date| creditflow_reports::parse_date(date).ok())
        .and_then(|latest| latest.succ_opt())
        .map_or(due, |next| next.clamp(earliest, due));
    let mut jobs = Vec::new();
    for date in first.iter_days().take_while(|date| *date <= due) {
        let job = BuildReportV1 { date: date.format("%Y-%m-%d").to_string(), force: false, request: None };
        let payload = serde_json::to_string(&job).map_err(|error| error.to_string())?;
        store.enqueue_once(REPORTS_QUEUE, &payload, &job.dedupe_key()).await.map_err(|e| e.to_string())?;
        jobs.push(job);
    }
    Ok(jobs)
}

/// Schedules every `interval` until `stop` says so, catching up on the last day first.
pub(crate) async fn run(store: Store, settings: WorkerSettings, mut stop: watch::Receiver<bool>) {
    let (interval, reports) = (settings.schedule_interval, settings.report_schedule);
    let mut hours = CATCH_UP_HOURS;
    loop {
        let now = OffsetDateTime::now_utc();
        match schedule_hours(&store, now, hours).await {
            Ok(_) => hours = 1,
            Err(error) => tracing::warn!(%error, "cannot record the hourly jobs; retrying"),
        }
        if let Some(schedule) = &reports
            && let Err(error) = schedule_report(&store, schedule, now).await
        {
            tracing::warn!(%error, "cannot record the nightly report's job; retrying");
        }
        match store.prune_done_jobs(now - DONE_JOBS_KEPT).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "records of old done jobs deleted"),
            Err(error) => tracing::warn!(%error, "cannot prune old job records"),
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Every `after / 4` (at least a second), queues again the jobs whose records say they should be moving but have
/// not changed for `after`: the jobs a broker lost (a Redis restarted without its data) are relayed again from the
/// database. Runs until `stop` says so.
pub(crate) async fn requeue_stalled(store: Store, after: std::time::Duration, mut stop: watch::Receiver<bool>) {
    let every = (after / 4).max(std::time::Duration::from_secs(1));
    let Ok(after) = time::Duration::try_from(after) else { return };
    loop {
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
            () = tokio::time::sleep(every) => {}
        }
        loop {
            match store.requeue_stalled_jobs(OffsetDateTime::now_utc() - after, REQUEUE_BATCH).await {
                Ok(jobs) if jobs.is_empty() => break,
                Ok(jobs) => {
                    let first = jobs.first().map(|job| job.id.as_str()).unwrap_or_default();
                    tracing::warn!(count = jobs.len(), first, "stalled jobs queued again (lost by the broker?)");
                    if jobs.len() < usize::try_from(REQUEUE_BATCH).unwrap_or(usize::MAX) {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot look for stalled jobs; retrying");
                    break;
                }
            }
        }
    }
}
