//! `POST /api/usage/reconcile`: the 200 path, the 402 path with the exact shortfall, replays and races that debit
//! once, conflicting reuse of a key, rounding modes, bad usage, frozen accounts; on both backends.

use creditflow_domain::{AccountId, AccountStatus};
use creditflow_store::NewAuditRecord;
use creditflow_testkit::TestBackend;
use serde_json::json;

use crate::helpers::{PRECISE_CARD, TestApp, status_and_json};

fn usage(key: &str, input_tokens: u64) -> serde_json::Value {
    json!({"idempotencyKey": key, "correlationId": format!("trace-{key}"), "model": "gpt-4o", "usage": {"input_tokens": input_tokens}})
}

async fn debits_replays_and_refusals(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    app.fund("alice", 10_000).await;
    let alice = TestApp::token("alice", "customer");

    // 720 input tokens x 0.0025 = 1.8 credits; the v1 card rounds up to 2.000.
    let response = app.reconcile(&alice, &usage("A", 720)).await;
    assert_eq!(response.headers()["idempotent-replayed"], "false");
    let (status, first) = status_and_json(response).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["chargeMillicredits"], 2_000);
    assert_eq!(first["chargeCredits"], "2.000");
    assert_eq!((first["balanceMillicredits"].as_i64(), first["balanceCredits"].as_str()), (Some(8_000), Some("8.000")));
    assert_eq!((first["rateVersion"].as_str(), first["correlationId"].as_str()), (Some("v1"), Some("trace-A")));
    assert!(first["entryId"].as_str().is_some_and(|id| id.starts_with("ent_")));

    // The same key and body: the first answer again, nothing debited.
    let response = app.reconcile(&alice, &usage("A", 720)).await;
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let (status, replay) = status_and_json(response).await;
    assert_eq!((status, &replay), (200, &first));
    assert_eq!(app.balance("alice").await, 8_000);

    // The same key with another body is a conflict and changes nothing.
    let (status, body) = status_and_json(app.reconcile(&alice, &usage("A", 721)).await).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("idempotency_conflict")));
    assert_eq!(app.balance("alice").await, 8_000);
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("billing_reconcile_idempotency_conflicts_total 1"), "counted for alerts: {metrics}");

    // 4000 tokens = 10 credits against 8: short by exactly 2.000, and the key stays free.
    let (status, body) = status_and_json(app.reconcile(&alice, &usage("B", 4_000)).await).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["code"], "insufficient_funds");
    assert_eq!(
        (body["requiredAdditionalMillicredits"].as_i64(), body["requiredAdditionalCredits"].as_str()),
        (Some(2_000), Some("2.000"))
    );
    assert_eq!(body["balanceMillicredits"], 8_000);
    app.fund("alice", 2_000).await;
    let (status, body) = status_and_json(app.reconcile(&alice, &usage("B", 4_000)).await).await;
    assert_eq!((status, body["balanceMillicredits"].as_i64()), (200, Some(0)), "{body}");

    // Under a precise card the same 1.8 credits cost 1.800. A replay of A still answers as v1 priced it.
    app.add_and_activate(PRECISE_CARD).await;
    app.fund("alice", 5_000).await;
    let (status, body) = status_and_json(app.reconcile(&alice, &usage("C", 720)).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["chargeMillicredits"].as_i64(), body["rateVersion"].as_str()), (Some(1_800), Some("v2")));
    assert_eq!(body["balanceMillicredits"], 3_200);
    let (status, replay) = status_and_json(app.reconcile(&alice, &usage("A", 720)).await).await;
    assert_eq!((status, &replay), (200, &first), "a replay keeps its first answer under a new card");
    assert_eq!(app.balance("alice").await, 3_200);
    // Even when the newest card no longer has the model, a replay is answered from the first entry (not a 422).
    app.add_and_activate("version = \"v3\"\nrounding = \"ceil\"\n[models.other]\nx = 1\n").await;
    let (status, replay) = status_and_json(app.reconcile(&alice, &usage("A", 720)).await).await;
    assert_eq!((status, &replay), (200, &first));
}

#[tokio::test]
async fn callers_cannot_take_the_keys_creditflow_uses_for_payments() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    app.fund("mal", 10_000).await;
    let mallory = TestApp::token("mal", "customer");
    // A debit under the key a purchase credit for pi_X would use...
    assert_eq!(app.reconcile(&mallory, &usage("payment:pi_X", 4)).await.status(), 200);
    // ...does not stop that purchase from being credited.
    let credit = creditflow_domain::Posting {
        account_id: creditflow_domain::AccountId::new("mal").expect("valid"),
        kind: creditflow_domain::EntryKind::PurchaseCredit,
        amount: creditflow_domain::Millicredits::new(5_000),
        idempotency_key: "payment:pi_X".into(),
        correlation_id: None,
        rate_version: None,
        source_ref: Some("pi_X".into()),
        reason: None,
        overdraft: creditflow_domain::Overdraft::Forbid,
        spend_cap: None,
        usage: None,
    };
    let outcome = app.store.post(&credit).await.expect("posted");
    assert!(matches!(outcome, creditflow_domain::PostingOutcome::Created(_)), "{outcome:?}");
}

#[tokio::test]
async fn debits_replays_and_refusals_on_sqlite() {
    debits_replays_and_refusals(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn debits_replays_and_refusals_on_postgres() {
    debits_replays_and_refusals(TestBackend::Postgres).await;
}

async fn racing_replays_debit_once(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    app.fund("racer", 100_000).await;
    let token = TestApp::token("racer", "customer");
    let body = usage("same", 720);
    let requests = (0..20).map(|_| app.reconcile(&token, &body));
    let answers = futures_util::future::join_all(requests).await;
    let mut bodies = Vec::new();
    for response in answers {
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, 200, "{body}");
        bodies.push(body);
    }
    assert!(bodies.iter().all(|body| body == &bodies[0]), "all 20 see the same entry: {bodies:?}");
    assert_eq!(app.balance("racer").await, 98_000, "debited exactly once");
}

#[tokio::test]
async fn racing_replays_debit_once_on_sqlite() {
    racing_replays_debit_once(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn racing_replays_debit_once_on_postgres() {
    racing_replays_debit_once(TestBackend::Postgres).await;
}

#[tokio::test]
async fn bad_usage_is_a_client_error_naming_the_problem() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    app.fund("alice", 10_000).await;
    let alice = TestApp::token("alice", "customer");
    let rows = [
        (json!({"idempotencyKey": "k", "model": "gpt-9", "usage": {"input_tokens": 1}}), 422, "unknown_model", "gpt-9"),
        (json!({"idempotencyKey": "k", "model": "gpt-4o", "usage": {"pixels": 1}}), 422, "unknown_unit", "pixels"),
        (json!({"idempotencyKey": "k", "model": "gpt-4o", "usage": {}}), 422, "invalid_request", "no units"),
        (
            json!({"idempotencyKey": "k", "model": "gpt-4o", "usage": {"input_tokens": -5}}),
            422,
            "invalid_request",
            "usage.input_tokens",
        ),
        (
            json!({"idempotencyKey": "", "model": "gpt-4o", "usage": {"input_tokens": 1}}),
            400,
            "bad_request",
            "idempotencyKey",
        ),
        (
            json!({"idempotencyKey": "a key", "model": "gpt-4o", "usage": {"input_tokens": 1}}),
            422,
            "invalid_request",
            "idempotency",
        ),
        // poem-openapi names the object, not the missing field, in this message.
        (json!({"model": "gpt-4o", "usage": {"input_tokens": 1}}), 400, "bad_request", "ReconcileRequest"),
    ];
    for (body, expected_status, expected_code, named) in rows {
        let (status, answer) = status_and_json(app.reconcile(&alice, &body).await).await;
        assert_eq!((status, answer["code"].as_str()), (expected_status, Some(expected_code)), "{body}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| m.contains(named)), "{body}: {answer} names {named}");
    }
    let response = app
        .client
        .post(app.url("/api/usage/reconcile"))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("answered");
    let (status, answer) = status_and_json(response).await;
    assert_eq!((status, answer["code"].as_str()), (400, Some("bad_request")));
    assert_eq!(app.balance("alice").await, 10_000, "nothing was debited");
}

#[tokio::test]
async fn frozen_accounts_are_refused() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    app.fund("ice", 10_000).await;
    let audit = NewAuditRecord {
        actor: "ops".into(),
        action: "account.freeze".into(),
        subject: "ice".into(),
        reason: Some("dispute".into()),
        details: "{}".into(),
    };
    let id = AccountId::new("ice").expect("valid");
    app.store.set_account_status(&id, AccountStatus::Frozen, &audit).await.expect("freeze");
    let (status, body) = status_and_json(app.reconcile(&TestApp::token("ice", "customer"), &usage("F", 1)).await).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("account_frozen")));
    assert_eq!(app.balance("ice").await, 10_000);
}
