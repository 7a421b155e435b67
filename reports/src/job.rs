//! The `reports` queue's handler: builds the report of the job's date (see [`crate::nightly`]).

use creditflow_jobs::JobError;
use creditflow_jobs::reports::BuildReportV1;

use crate::nightly::{Built, ReportDeps, RunOptions, run_report};

/// Runs a report job. Idempotent: a date's report is stored again equal, announced once and emailed once (unless
/// the job is a forced on-demand run).
pub async fn build_report(job: &BuildReportV1, deps: &ReportDeps) -> Result<Built, JobError> {
    let date = crate::day::parse_date(&job.date).map_err(|error| JobError::Permanent(error.to_string()))?;
    let options = RunOptions { force: job.force, request: job.request.clone() };
    let built = run_report(date, &options, deps, &|stage| tracing::debug!(date = %job.date, ?stage, "report")).await;
    match built {
        Ok(built) => {
            tracing::info!(date = %built.date, passed = built.passed, emailed = ?built.emailed, "report ready");
            Ok(built)
        }
        Err(error) if error.is_transient() => Err(JobError::Transient(error.to_string())),
        Err(error) => Err(JobError::Permanent(error.to_string())),
    }
}
