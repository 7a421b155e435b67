//! Probes, the OpenAPI document, and JSON errors for what no handler answers.

use creditflow_testkit::TestBackend;

use crate::helpers::{TestApp, status_and_json};

async fn probes_on(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    let (status, body) = status_and_json(app.client.get(app.url("/health")).send().await.expect("answered")).await;
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
    let (status, body) = status_and_json(app.client.get(app.url("/readyz")).send().await.expect("answered")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["rateCard"], "v1");
    assert_eq!(body["backend"], if backend == TestBackend::Sqlite { "sqlite" } else { "postgres" });
    // The database going away makes the app unready, without saying why.
    app.store.close().await;
    let (status, body) = status_and_json(app.client.get(app.url("/readyz")).send().await.expect("answered")).await;
    assert_eq!((status, body["checks"]["database"].as_str()), (503, Some("unreachable")));
    assert!(!body.to_string().to_lowercase().contains("pool"), "no internals in {body}");
}

#[tokio::test]
async fn probes_on_sqlite() {
    probes_on(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn probes_on_postgres() {
    probes_on(TestBackend::Postgres).await;
}

#[tokio::test]
async fn every_response_has_a_request_id_and_errors_are_json() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    let response =
        app.client.get(app.url("/no/such/route")).header("x-request-id", "trace-42").send().await.expect("ok");
    assert_eq!(response.headers()["x-request-id"], "trace-42", "a well-formed incoming id is kept");
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, body), (404, serde_json::json!({"code": "not_found", "message": "no such route"})));
    let response = app.client.post(app.url("/health")).header("x-request-id", "bad id!").send().await.expect("ok");
    let id = response.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    assert!(id.starts_with("req_"), "a malformed incoming id is replaced: {id}");
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, body["code"].as_str()), (405, Some("method_not_allowed")));
    let token = TestApp::token("alice", "customer");
    let oversized = vec![b'a'; creditflow_api::BODY_SIZE_MAX_BYTES + 1];
    let response = app.client.post(app.url("/api/usage/reconcile")).bearer_auth(&token).body(oversized).send().await;
    let (status, body) = status_and_json(response.expect("answered")).await;
    assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")));
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_the_app_serves() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    let (status, spec) = status_and_json(app.client.get(app.url("/openapi.json")).send().await.expect("ok")).await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", spec["openapi"]);
    let paths = spec["paths"].as_object().expect("paths");
    let token = TestApp::token("alice", "customer");
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().expect("operations") {
            assert!(
                operation["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents responses"
            );
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let response =
                app.client.request(method.clone(), app.url(path)).bearer_auth(&token).send().await.expect("ok");
            assert!(
                !matches!(response.status().as_u16(), 404 | 405),
                "{method} {path} is in the document but not served: {}",
                response.status()
            );
        }
    }
    for expected in
        ["/health", "/readyz", "/api/usage/reconcile", "/api/balance", "/api/ledger", "/billing/ledger/export.csv"]
    {
        assert!(paths.contains_key(expected), "{expected} is documented");
    }
    let docs = app.client.get(app.url("/docs/")).send().await.expect("ok");
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.expect("html").contains("swagger"), "Swagger UI is served at /docs");
}

#[tokio::test]
async fn metrics_count_debits_refusals_and_time_requests_by_route() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    app.fund("m", 2_000).await;
    let token = TestApp::token("m", "customer");
    let usage = |key: &str, tokens: u64| serde_json::json!({"idempotencyKey": key, "model": "gpt-4o", "usage": {"input_tokens": tokens}});
    assert_eq!(app.reconcile(&token, &usage("a", 400)).await.status(), 200);
    assert_eq!(app.reconcile(&token, &usage("a", 400)).await.status(), 200, "a replay is not a second debit");
    assert_eq!(app.reconcile(&token, &usage("b", 4_000)).await.status(), 402);
    let admin = TestApp::token("ops", "admin");
    let freeze = app.client.post(app.url("/api/admin/accounts/acct_777/freeze")).bearer_auth(&admin);
    assert_eq!(freeze.json(&serde_json::json!({"reason": "x"})).send().await.expect("ok").status(), 404);

    let response = app.client.get(app.url("/metrics")).send().await.expect("answered");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain"));
    let text = response.text().await.expect("text");
    // Counters here are small whole numbers, which Prometheus text writes exactly.
    let value = |series: &str| -> u64 {
        text.lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    };
    assert_eq!(value("billing_reconcile_debits_total"), 1);
    assert_eq!(value("billing_reconcile_insufficient_funds_total"), 1);
    let reconcile_402 =
        r#"http_server_request_duration_seconds_count{method="POST",route="/api/usage/reconcile",status="402"}"#;
    assert_eq!(value(reconcile_402), 1);
    assert!(
        text.contains(r#"route="/api/admin/accounts/{account_id}/freeze",status="404""#),
        "templated route: {text}"
    );
    assert!(!text.contains("acct_777"), "raw ids never become labels");
}
