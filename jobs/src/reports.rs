//! The nightly reconciliation report's job payload (queue `reports`). The work itself is in `creditflow-reports`,
//! which the worker pools run; the payload lives here so that whatever only queues reports (the API, the
//! scheduler) does not carry the report's dependencies.

use serde::{Deserialize, Serialize};

pub use creditflow_store::REPORTS_QUEUE;

/// Build, store and email the report of one day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReportV1 {
    /// The day, `YYYY-MM-DD`, in the configured report time zone.
    pub date: String,
    /// Email it again even if it was emailed before.
    #[serde(default)]
    pub force: bool,
    /// Names an on-demand run (a uuid), so it is a job of its own beside the scheduled one of the same date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

impl BuildReportV1 {
    /// The outbox dedupe key: one scheduled report per date, and one job per on-demand run.
    pub fn dedupe_key(&self) -> String {
        match &self.request {
            None => format!("report:{}", self.date),
            Some(request) => format!("report:{}:{request}", self.date),
        }
    }
}
