//! Finance reads the nightly reports: the verdict, the summary and each file with its media type; roles enforced;
//! bad dates and missing reports answered with clear errors; the latest report's drift and failed checks in /metrics.

use creditflow_store::{NewReport, ReportFile};
use creditflow_testkit::TestBackend;
use serde_json::json;

use crate::helpers::{TestApp, status_and_json};

async fn store_report(app: &TestApp, date: &str, summary: &serde_json::Value) {
    let files = [
        ReportFile {
            name: "report.html".into(),
            content_type: "text/html; charset=utf-8".into(),
            body: b"<html>".to_vec(),
        },
        ReportFile { name: "chart.png".into(), content_type: "image/png".into(), body: b"\x89PNG".to_vec() },
        ReportFile {
            name: "top_spenders.csv".into(),
            content_type: "text/csv".into(),
            body: b"account_id\nann\n".to_vec(),
        },
        ReportFile {
            name: "summary.json".into(),
            content_type: "application/json".into(),
            body: summary.to_string().into_bytes(),
        },
    ];
    let report = NewReport {
        date,
        time_zone: "Europe/Paris",
        passed: summary["passed"].as_bool().unwrap_or(false),
        summary: &summary.to_string(),
        files: &files,
        event_id: &format!("evt_report_{}", date.replace('-', "")),
        event_data: &json!({"date": date}),
    };
    app.store.save_report(&report).await.expect("stored");
}

async fn finance_reads_reports(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    let finance = TestApp::token("fin", "finance");
    let (status, body) = status_and_json(app.get("/api/admin/reports/2026-11-22", &finance).await).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");

    let passing = json!({"passed": true, "checks": [{"name": "liability", "status": "pass", "detail": "agree"}],
        "liability": {"driftMillicredits": 0}, "purchases": {"driftCents": 0}});
    store_report(&app, "2026-11-22", &passing).await;
    let failing = json!({"passed": false, "checks": [
            {"name": "liability", "status": "fail", "detail": "drift"},
            {"name": "purchases_vs_stripe", "status": "fail", "detail": "drift"},
            {"name": "usage_mix", "status": "skipped", "detail": "no expected mix"}],
        "liability": {"driftMillicredits": -1_500}, "purchases": {"driftCents": 500}});
    store_report(&app, "2026-11-23", &failing).await;

    let (status, body) = status_and_json(app.get("/api/admin/reports/2026-11-23", &finance).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["date"].as_str(), body["timeZone"].as_str()), (Some("2026-11-23"), Some("Europe/Paris")));
    assert_eq!(body["passed"], false);
    assert_eq!(body["summary"], failing, "the summary as stored");
    assert!(body["emailedAt"].is_null());
    let files: Vec<(&str, &str)> = body["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|file| (file["name"].as_str().unwrap_or(""), file["href"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(files.len(), 4);
    assert!(files.contains(&("report.html", "/api/admin/reports/2026-11-23/files/report.html")), "{files:?}");

    let file = |name: &str| {
        let path = format!("/api/admin/reports/2026-11-23/files/{name}");
        let finance = finance.clone();
        let app = &app;
        async move { app.get(&path, &finance).await }
    };
    let html = file("report.html").await;
    assert_eq!(html.status(), 200);
    assert_eq!(html.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(html.text().await.expect("body"), "<html>");
    let png = file("chart.png").await;
    assert_eq!(png.headers()["content-type"], "image/png");
    let csv = file("top_spenders.csv").await;
    assert!(csv.headers()["content-type"].to_str().expect("text").starts_with("text/csv"));
    assert_eq!(csv.headers()["content-disposition"], "attachment; filename=\"2026-11-23-top_spenders.csv\"");
    assert_eq!(csv.text().await.expect("body"), "account_id\nann\n");
    let (status, body) = status_and_json(file("secrets.txt").await).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");

    let admin = TestApp::token("ops", "admin");
    assert_eq!(app.get("/api/admin/reports/2026-11-22", &admin).await.status(), 200);
    let customer = TestApp::token("ann", "customer");
    let (status, body) = status_and_json(app.get("/api/admin/reports/2026-11-22", &customer).await).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    for bad in ["yesterday", "2026-13-01", "2026-1-5"] {
        let (status, body) = status_and_json(app.get(&format!("/api/admin/reports/{bad}"), &finance).await).await;
        assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")), "{bad}: {body}");
    }

    // The latest report's findings, for the drift alerts.
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("billing_report_checks_failed 2"), "{metrics}");
    assert!(metrics.contains("billing_report_liability_drift_millicredits -1500"), "{metrics}");
    assert!(metrics.contains("billing_report_purchases_drift_cents 500"), "{metrics}");
    assert!(metrics.contains("billing_report_age_seconds "), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_sqlite() {
    finance_reads_reports(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_postgres() {
    finance_reads_reports(TestBackend::Postgres).await;
}
