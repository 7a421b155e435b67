//! Prometheus metrics at `GET /metrics`: request durations by route and status, and the billing counters operators
//! alert on. The route label is the OpenAPI path template (`/api/admin/accounts/{account_id}/freeze`), never the raw
//! path, so account ids cannot blow up the number of series.
//!
//! `/metrics` is not authenticated (scrapers rarely carry tokens) and is not in the OpenAPI document: expose it on
//! the internal network only.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::handler;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};

/// Debits written by reconcile (replays not counted).
pub(crate) const RECONCILE_DEBITS: &str = "billing_reconcile_debits_total";
/// Reconcile requests refused with 402.
pub(crate) const RECONCILE_INSUFFICIENT_FUNDS: &str = "billing_reconcile_insufficient_funds_total";
/// Reconcile requests refused because their idempotency key was used for a different body (409).
pub(crate) const RECONCILE_IDEMPOTENCY_CONFLICTS: &str = "billing_reconcile_idempotency_conflicts_total";
/// Usage batches accepted (replays not counted).
pub(crate) const USAGE_BATCHES_ACCEPTED: &str = "billing_usage_batches_accepted_total";
/// Postings that failed with a storage error (not a refusal).
pub(crate) const LEDGER_WRITE_FAILURES: &str = "billing_ledger_write_failures_total";
/// Jobs by `queue` and `state`, read from the job records at each scrape (the same on every queue backend).
pub(crate) const JOBS: &str = "billing_jobs";
/// Spend anomalies the hourly check flagged in the last 24 hours (read from the database at each scrape).
pub(crate) const ANOMALIES: &str = "billing_anomalies_last_24h";
/// Checks that failed in the latest nightly report (read from the database at each scrape).
pub(crate) const REPORT_CHECKS_FAILED: &str = "billing_report_checks_failed";
/// The latest report's drift between the ledger's liability and the sum of balances, in millicredits (must be 0).
pub(crate) const REPORT_LIABILITY_DRIFT: &str = "billing_report_liability_drift_millicredits";
/// The latest report's drift between our purchases and Stripe's charges, in USD cents (must be 0).
pub(crate) const REPORT_PURCHASES_DRIFT: &str = "billing_report_purchases_drift_cents";
/// Seconds since the latest report was computed (a report that stops coming is an alert too).
pub(crate) const REPORT_AGE: &str = "billing_report_age_seconds";
/// Request durations, by `method`, `route` and `status`.
pub(crate) const REQUEST_DURATION: &str = "http_server_request_duration_seconds";

/// Every metric creditflow exports at `/metrics` (histograms by their base name), for alert rules and dashboards.
pub const METRIC_NAMES: [&str; 13] = [
    RECONCILE_DEBITS,
    RECONCILE_INSUFFICIENT_FUNDS,
    RECONCILE_IDEMPOTENCY_CONFLICTS,
    USAGE_BATCHES_ACCEPTED,
    LEDGER_WRITE_FAILURES,
    JOBS,
    ANOMALIES,
    REPORT_CHECKS_FAILED,
    REPORT_LIABILITY_DRIFT,
    REPORT_PURCHASES_DRIFT,
    REPORT_AGE,
    REQUEST_DURATION,
    crate::routes::webhooks::WEBHOOK_EVENTS,
];

const DURATION_BUCKETS_SECONDS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The process-wide recorder; installed on first use (a process has one metrics registry).
pub(crate) fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), &DURATION_BUCKETS_SECONDS)
            .map(PrometheusBuilder::build_recorder);
        match recorder {
            Ok(recorder) => {
                let handle = recorder.handle();
                if metrics::set_global_recorder(recorder).is_err() {
                    tracing::warn!("another metrics recorder is installed; /metrics will be empty");
                }
                metrics::describe_counter!(RECONCILE_DEBITS, "Usage debits written by POST /api/usage/reconcile");
                metrics::describe_counter!(USAGE_BATCHES_ACCEPTED, "Usage batches accepted by POST /api/usage/batches");
                metrics::describe_counter!(
                    RECONCILE_IDEMPOTENCY_CONFLICTS,
                    "Reconciles refused for a reused key (409)"
                );
                metrics::describe_counter!(RECONCILE_INSUFFICIENT_FUNDS, "Reconcile requests refused for funds (402)");
                metrics::describe_counter!(LEDGER_WRITE_FAILURES, "Ledger postings that failed with a storage error");
                metrics::describe_gauge!(ANOMALIES, "Accounts flagged by the anomaly check in the last 24 hours");
                metrics::describe_gauge!(JOBS, "Jobs by queue and state (pending, running, retrying, dead, ...)");
                metrics::describe_histogram!(REQUEST_DURATION, metrics::Unit::Seconds, "HTTP request durations");
                handle
            }
            Err(error) => {
                tracing::error!(%error, "cannot build the metrics recorder");
                PrometheusBuilder::new().build_recorder().handle()
            }
        }
    })
}

/// `GET /metrics`: the counters, and the job gauges read now (a database that cannot answer leaves them as they were).
#[handler]
pub(crate) async fn render(state: poem::web::Data<&crate::AppState>) -> Response {
    if let Ok(queues) = crate::routes::jobs::queue_counts(&state).await {
        for queue in queues {
            let gauge = |state: &'static str, count: i64| {
                #[allow(clippy::cast_precision_loss)] // job counts are far below 2^52
                metrics::gauge!(JOBS, "queue" => queue.queue.clone(), "state" => state).set(count as f64);
            };
            gauge("pending", queue.pending);
            gauge("running", queue.running);
            gauge("retrying", queue.retrying);
            gauge("dead", queue.dead);
            gauge("done", queue.done);
            gauge("discarded", queue.discarded);
        }
    } else {
        tracing::warn!("cannot read job counts for /metrics");
    }
    let day_ago = time::OffsetDateTime::now_utc() - time::Duration::DAY;
    match state.store.anomalies_since(day_ago).await {
        #[allow(clippy::cast_precision_loss)] // far below 2^52
        Ok(count) => metrics::gauge!(ANOMALIES).set(count as f64),
        Err(error) => tracing::warn!(%error, "cannot read anomalies for /metrics"),
    }
    match state.store.latest_report().await {
        Ok(Some(report)) => report_gauges(&report),
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "cannot read the latest report for /metrics"),
    }
    (StatusCode::OK, handle().render()).with_content_type("text/plain; version=0.0.4; charset=utf-8").into_response()
}

/// The latest nightly report's verdict as gauges: failed checks, the two drifts, and its age.
#[allow(clippy::cast_precision_loss)] // counts, cents and millicredits of drift are far below 2^52
fn report_gauges(report: &creditflow_store::StoredReport) {
    let summary: serde_json::Value = serde_json::from_str(&report.summary).unwrap_or_default();
    let failed =
        summary["checks"].as_array().map_or(0, |checks| checks.iter().filter(|c| c["status"] == "fail").count());
    metrics::gauge!(REPORT_CHECKS_FAILED).set(failed as f64);
    let drift = |value: &serde_json::Value| value.as_i64().unwrap_or(0) as f64;
    metrics::gauge!(REPORT_LIABILITY_DRIFT).set(drift(&summary["liability"]["driftMillicredits"]));
    metrics::gauge!(REPORT_PURCHASES_DRIFT).set(drift(&summary["purchases"]["driftCents"]));
    let age = time::OffsetDateTime::now_utc() - report.generated_at;
    metrics::gauge!(REPORT_AGE).set(age.as_seconds_f64().max(0.0));
}

/// Matches request paths to the OpenAPI path templates.
#[derive(Clone, Debug)]
pub(crate) struct Routes(std::sync::Arc<Vec<Vec<String>>>);

impl Routes {
    /// Reads the templates from the OpenAPI document.
    pub(crate) fn from_spec(spec: &str) -> Self {
        let document: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut templates: Vec<Vec<String>> = document["paths"]
            .as_object()
            .map(|paths| paths.keys().map(|path| split(path)).collect())
            .unwrap_or_default();
        templates.extend([split("/openapi.json"), split("/metrics")]);
        Self(std::sync::Arc::new(templates))
    }

    /// The template `path` matches, `/docs` for the documentation, or `unmatched`.
    pub(crate) fn label(&self, path: &str) -> String {
        if path == "/docs" || path.starts_with("/docs/") {
            return "/docs".to_owned();
        }
        let segments = split(path);
        let matches = |template: &&Vec<String>| {
            template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        };
        self.0
            .iter()
            .find(matches)
            .map_or_else(|| "unmatched".to_owned(), |template| format!("/{}", template.join("/")))
    }
}

fn split(path: &str) -> Vec<String> {
    path.split('/').filter(|segment| !segment.is_empty()).map(str::to_owned).collect()
}

/// Records one request's duration.
pub(crate) fn observe_request(method: &str, route: String, status: u16, elapsed: Duration) {
    let labels = [("method", method.to_owned()), ("route", route), ("status", status.to_string())];
    metrics::histogram!(REQUEST_DURATION, &labels).record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_templates() {
        let spec = r#"{"paths": {"/api/balance": {}, "/api/admin/accounts/{account_id}/freeze": {}}}"#;
        let routes = Routes::from_spec(spec);
        assert_eq!(routes.label("/api/balance"), "/api/balance");
        assert_eq!(routes.label("/api/admin/accounts/acct_9/freeze"), "/api/admin/accounts/{account_id}/freeze");
        assert_eq!(routes.label("/api/admin/accounts/acct_9/steal"), "unmatched");
        assert_eq!(routes.label("/docs/index.css"), "/docs");
        assert_eq!(routes.label("/metrics"), "/metrics");
    }
}
