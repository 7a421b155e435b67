//! The Prometheus alert rules shipped in `deploy/prometheus/alerts.yml` name only metrics creditflow exports, and the
//! ones the runbook watches are there.

use std::collections::BTreeSet;

#[test]
fn alert_rules_use_only_exported_metrics() {
    let path = format!("{}/../deploy/prometheus/alerts.yml", env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(&path).expect("the alert rules");
    // Metric names in the `expr` lines: words made of [a-z0-9_] that start like creditflow's metrics.
    let expressions: String = rules
        .lines()
        .skip_while(|line| !line.contains("groups:"))
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let named: BTreeSet<String> = expressions
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| ["billing_", "webhook_events", "http_server_"].iter().any(|prefix| word.starts_with(prefix)))
        // A histogram is exported as <name>_bucket, _sum and _count.
        .map(|word| word.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count").to_owned())
        .collect();
    let exported: BTreeSet<String> = creditflow_api::METRIC_NAMES.iter().map(|name| (*name).to_owned()).collect();
    let unknown: Vec<&String> = named.difference(&exported).collect();
    assert!(unknown.is_empty(), "alert rules name metrics creditflow does not export: {unknown:?}");
    for watched in [
        "webhook_events_total",
        "billing_ledger_write_failures_total",
        "billing_reconcile_insufficient_funds_total",
        "billing_reconcile_idempotency_conflicts_total",
        "http_server_request_duration_seconds",
        "billing_jobs",
        "billing_report_liability_drift_millicredits",
        "billing_report_purchases_drift_cents",
        "billing_report_checks_failed",
        "billing_report_age_seconds",
    ] {
        assert!(named.contains(watched), "no alert watches {watched}");
    }
    assert!(rules.matches("- alert: ").count() >= 12, "one rule per watched risk");
}
