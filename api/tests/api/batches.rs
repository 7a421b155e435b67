//! `POST /api/usage/batches` and `GET /api/usage/batches/{id}`: a 10,000-event batch (over the 1 MiB default body
//! limit, with repeated and invalid events) accepted with 202, replayed under its key, refused when empty, too large or under a reused key, and
//! reported with counts and per-event rejections once its job ran; on both backends.

use creditflow_jobs::usage_batches::{BatchDeps, PriceUsageBatchV1, price_usage_batch};
use creditflow_testkit::TestBackend;
use serde_json::json;

use crate::helpers::{TestApp, status_and_json};

fn events(count: usize, account: &str) -> Vec<serde_json::Value> {
    (0..count)
        .map(|n| {
            json!({
                "eventId": format!("evt-{n:05}"),
                "accountId": account,
                "model": "gpt-4o",
                "usage": {"input_tokens": 400},
                "correlationId": format!("request-{n:05}-with-some-padding-to-make-the-body-realistic"),
            })
        })
        .collect()
}

async fn submit(app: &TestApp, token: &str, body: &serde_json::Value) -> reqwest::Response {
    let url = app.url("/api/usage/batches");
    app.client.post(url).bearer_auth(token).json(body).send().await.expect("request answered")
}

async fn batches_are_accepted_then_reported(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    app.fund("alice", 1_000).await;
    let gateway = TestApp::token("gateway", "service");
    let mut list = events(10_000, "alice");
    list[17] = json!({"eventId": "bad", "accountId": "alice", "model": "no-such-model", "usage": {"input_tokens": 1}});
    // Two repeats of earlier events (a sender's retry inside one batch) and one negative quantity.
    list[100] = list[3].clone();
    list[9_999] = list[4_000].clone();
    list[500] = json!({"eventId": "neg", "accountId": "alice", "model": "gpt-4o", "usage": {"input_tokens": -5}});
    let body = json!({"idempotencyKey": "nightly-1", "events": list});
    assert!(body.to_string().len() > creditflow_api::BODY_SIZE_MAX_BYTES, "bigger than other routes accept");

    let response = submit(&app, &gateway, &body).await;
    assert_eq!(response.headers()["idempotent-replayed"], "false");
    let (status, accepted) = status_and_json(response).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!((accepted["status"].as_str(), accepted["eventCount"].as_i64()), (Some("accepted"), Some(10_000)));
    assert!(accepted["debitedCount"].is_null(), "no counts before processing");
    let id = accepted["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("ubt_"));

    // A retry of the submission answers with the same batch; other events under the key are refused.
    let response = submit(&app, &gateway, &body).await;
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let (status, replay) = status_and_json(response).await;
    assert_eq!((status, replay["id"].as_str()), (202, Some(id.as_str())));
    let other = json!({"idempotencyKey": "nightly-1", "events": events(3, "alice")});
    let (status, conflict) = status_and_json(submit(&app, &gateway, &other).await).await;
    assert_eq!((status, conflict["code"].as_str()), (409, Some("idempotency_conflict")));

    let (status, pending) = status_and_json(app.get(&format!("/api/usage/batches/{id}"), &gateway).await).await;
    assert_eq!((status, pending["status"].as_str()), (200, Some("accepted")));

    // The job (run here directly; the worker pools run it in production).
    let job = PriceUsageBatchV1 { batch_id: id.clone() };
    price_usage_batch(&job, &BatchDeps { store: app.store.clone() }).await.expect("processed");
    let finance = TestApp::token("fin", "finance");
    let (status, done) = status_and_json(app.get(&format!("/api/usage/batches/{id}"), &finance).await).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(
        (done["debitedCount"].as_i64(), done["duplicateCount"].as_i64(), done["rejectedCount"].as_i64()),
        (Some(9_996), Some(2), Some(2))
    );
    // 400 tokens x 0.0025 = 1 credit each.
    assert_eq!(
        (done["debitedMillicredits"].as_i64(), done["debitedCredits"].as_str()),
        (Some(9_996_000), Some("9996.000"))
    );
    assert_eq!(done["overdraftCount"].as_i64(), Some(9_995), "1 credit of balance covers the first debit only");
    assert_eq!(
        done["rejections"][0],
        json!({"index": 17, "eventId": "bad", "code": "unknown_model", "reason": "model `no-such-model` is not on rate card v1"})
    );
    let negative = &done["rejections"][1];
    assert_eq!((negative["index"].as_u64(), negative["code"].as_str()), (Some(500), Some("invalid_usage")));
    assert!(done["completedAt"].as_str().is_some());
    assert_eq!(app.balance("alice").await, 1_000 - 9_996_000);
}

async fn bad_batches_are_refused_whole(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    let gateway = TestApp::token("gateway", "service");
    let (status, body) = status_and_json(submit(&app, &gateway, &json!({"events": []})).await).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")), "{body}");
    let (status, body) = status_and_json(submit(&app, &gateway, &json!({"events": events(10_001, "a")})).await).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("10000")), "{body}");
    let customer = TestApp::token("alice", "customer");
    let (status, body) = status_and_json(submit(&app, &customer, &json!({"events": events(1, "alice")})).await).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = status_and_json(app.get("/api/usage/batches/ubt_nope", &customer).await).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = status_and_json(app.get("/api/usage/batches/ubt_nope", &gateway).await).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    // A declared length over the batch limit is refused before the body is read (sent by hand: a client that
    // streamed 8 MiB would see the connection close under it).
    let head = declared_length_answer(&app, creditflow_api::BATCH_BODY_SIZE_MAX_BYTES + 1, &gateway).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let head = declared_length_answer(&app, creditflow_api::BODY_SIZE_MAX_BYTES + 1, &gateway).await;
    assert!(!head.starts_with("HTTP/1.1 413"), "over the default limit is fine for batches: {head}");
}

/// The status line of the answer to a batch POST that declares `length` bytes and sends none.
async fn declared_length_answer(app: &TestApp, length: usize, token: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = app.base.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let request = format!(
        "POST /api/usage/batches HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_on_sqlite() {
    batches_are_accepted_then_reported(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_on_postgres() {
    batches_are_accepted_then_reported(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_on_sqlite() {
    bad_batches_are_refused_whole(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_on_postgres() {
    bad_batches_are_refused_whole(TestBackend::Postgres).await;
}
