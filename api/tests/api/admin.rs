//! Operators and settings through the API: adjustments need a reason and land in the ledger and the audit log with
//! the actor; freezes; rate card uploads, activation and rollouts; settings and the daily spend cap.

use creditflow_testkit::TestBackend;
use serde_json::json;

use crate::helpers::{TestApp, status_and_json};

async fn post(app: &TestApp, path: &str, token: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let response = app.client.post(app.url(path)).bearer_auth(token).json(body).send().await.expect("answered");
    status_and_json(response).await
}

async fn adjustments_need_a_reason_and_are_audited(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    let admin = TestApp::token("ops-ann", "admin");
    let path = "/api/admin/accounts/alice/adjustments";
    let (status, body) =
        post(&app, path, &admin, &json!({"idempotencyKey": "adj-1", "amountMillicredits": 5_000})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "no reason: {body}");
    let blank = json!({"idempotencyKey": "adj-1", "amountMillicredits": 5_000, "reason": "   "});
    let (status, body) = post(&app, path, &admin, &blank).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")), "blank reason: {body}");
    let service = TestApp::token("gateway", "service");
    let response = app.get("/api/balance?accountId=alice", &service).await;
    assert_eq!(response.status(), 404, "nothing was written, not even the account");

    let good = json!({"idempotencyKey": "adj-1", "amountMillicredits": 5_000, "reason": "goodwill for ticket 42", "correlationId": "T-42"});
    let (status, line) = post(&app, path, &admin, &good).await;
    assert_eq!(status, 200, "{line}");
    assert_eq!((line["kind"].as_str(), line["amountMillicredits"].as_i64()), (Some("adjustment"), Some(5_000)));
    let (status, replay) = post(&app, path, &admin, &good).await;
    assert_eq!((status, replay["id"].as_str()), (200, line["id"].as_str()), "a retry changes nothing");
    assert_eq!(app.balance("alice").await, 5_000);

    let (_, ledger) = status_and_json(app.get("/api/ledger", &TestApp::token("alice", "customer")).await).await;
    assert_eq!(ledger["entries"][0]["reason"], "goodwill for ticket 42", "the customer sees it in the ledger");
    let finance = TestApp::token("fin", "finance");
    let (status, log) = status_and_json(app.get("/api/admin/audit-log", &finance).await).await;
    assert_eq!(status, 200, "{log}");
    let adjustments: Vec<&serde_json::Value> =
        log["records"].as_array().expect("records").iter().filter(|r| r["action"] == "ledger.adjust").collect();
    assert_eq!(adjustments.len(), 1, "one record for the adjustment and its replay: {log}");
    assert_eq!(
        (adjustments[0]["actor"].as_str(), adjustments[0]["subject"].as_str()),
        (Some("ops-ann"), Some("alice"))
    );
    assert_eq!(adjustments[0]["reason"], "goodwill for ticket 42");

    // Taking more than the balance needs an explicit flag; non-admins cannot adjust at all.
    let down = json!({"idempotencyKey": "adj-2", "amountMillicredits": -6_000, "reason": "chargeback"});
    let (status, body) = post(&app, path, &admin, &down).await;
    assert_eq!((status, body["requiredAdditionalMillicredits"].as_i64()), (402, Some(1_000)), "{body}");
    let forced = json!({"idempotencyKey": "adj-2", "amountMillicredits": -6_000, "reason": "chargeback", "allowNegativeBalance": true});
    assert_eq!(post(&app, path, &admin, &forced).await.0, 200);
    assert_eq!(app.balance("alice").await, -1_000);
    for role in ["finance", "service", "customer"] {
        let token = TestApp::token("alice", role);
        let other = json!({"idempotencyKey": format!("x-{role}"), "amountMillicredits": 1, "reason": "sneaky"});
        assert_eq!(post(&app, path, &token, &other).await.0, 403, "{role}");
    }
}

#[tokio::test]
async fn adjustments_need_a_reason_and_are_audited_on_sqlite() {
    adjustments_need_a_reason_and_are_audited(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn adjustments_need_a_reason_and_are_audited_on_postgres() {
    adjustments_need_a_reason_and_are_audited(TestBackend::Postgres).await;
}

#[tokio::test]
async fn freezing_stops_usage_until_unfrozen() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    app.fund("ice", 10_000).await;
    let admin = TestApp::token("ops", "admin");
    let customer = TestApp::token("ice", "customer");
    let usage = |key: &str| json!({"idempotencyKey": key, "model": "gpt-4o", "usage": {"input_tokens": 400}});
    let (status, body) = post(&app, "/api/admin/accounts/ice/freeze", &admin, &json!({"reason": "dispute dp_1"})).await;
    assert_eq!((status, body["status"].as_str(), body["changed"].as_bool()), (200, Some("frozen"), Some(true)));
    let (status, body) = status_and_json(app.reconcile(&customer, &usage("u1")).await).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("account_frozen")));
    let (status, body) = post(&app, "/api/admin/accounts/ice/unfreeze", &admin, &json!({"reason": "resolved"})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("active")));
    assert_eq!(app.reconcile(&customer, &usage("u1")).await.status(), 200);
    assert_eq!(post(&app, "/api/admin/accounts/nobody/freeze", &admin, &json!({"reason": "x"})).await.0, 404);
    assert_eq!(
        post(&app, "/api/admin/accounts/ice/freeze", &TestApp::token("f", "finance"), &json!({"reason": "x"})).await.0,
        403
    );
}

#[tokio::test]
async fn rate_cards_upload_activate_and_roll_out() {
    let app = TestApp::on(TestBackend::Postgres).await;
    let admin = TestApp::token("ops", "admin");
    let v2 = "version = \"v2\"\nrounding = \"precise\"\n[models.\"gpt-4o\"]\ninput_tokens = \"0.002\"\n";
    let (status, body) =
        post(&app, "/api/admin/rate-cards", &admin, &json!({"document": "version = \"v2\"\nrounding = \"up\"\n"}))
            .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")));
    assert!(body["message"].as_str().is_some_and(|m| m.contains("rounding")), "names the field: {body}");
    let (status, body) = post(&app, "/api/admin/rate-cards", &admin, &json!({"document": v2})).await;
    assert_eq!((status, body["version"].as_str()), (201, Some("v2")), "{body}");
    assert_eq!(post(&app, "/api/admin/rate-cards", &admin, &json!({"document": v2})).await.0, 200);
    let edited = v2.replace("0.002", "0.003");
    let (status, body) = post(&app, "/api/admin/rate-cards", &admin, &json!({"document": edited})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("rate_card_conflict")));
    assert_eq!(
        post(&app, "/api/admin/rate-cards", &TestApp::token("f", "finance"), &json!({"document": v2})).await.0,
        403
    );

    // Roll v2 out to alice only: her debits record v2, bob's stay on v1.
    app.fund("alice", 100_000).await;
    app.fund("bob", 100_000).await;
    let rollout = json!({"percentage": 0, "allowlist": ["alice"], "reason": "canary"});
    let (status, body) = post(&app, "/api/admin/rate-cards/v2/activations", &admin, &rollout).await;
    assert_eq!((status, body["allowlist"][0].as_str()), (200, Some("alice")), "{body}");
    let debit = |account: &str| json!({"idempotencyKey": "d1", "accountId": account, "model": "gpt-4o", "usage": {"input_tokens": 900}});
    let service = TestApp::token("gateway", "service");
    let (_, alice) = status_and_json(app.reconcile(&service, &debit("alice")).await).await;
    let (_, bob) = status_and_json(app.reconcile(&service, &debit("bob")).await).await;
    assert_eq!((alice["rateVersion"].as_str(), alice["chargeMillicredits"].as_i64()), (Some("v2"), Some(1_800)));
    assert_eq!((bob["rateVersion"].as_str(), bob["chargeMillicredits"].as_i64()), (Some("v1"), Some(3_000)));
    let (_, readyz) = status_and_json(app.client.get(app.url("/readyz")).send().await.expect("ok")).await;
    assert_eq!(readyz["checks"]["rateCard"], "v1", "the global card is still v1");

    let (status, _) = post(&app, "/api/admin/rate-cards/v9/activations", &admin, &json!({})).await;
    assert_eq!(status, 404);
    let (status, body) =
        post(&app, "/api/admin/rate-cards/v2/activations", &admin, &json!({"effectiveAt": "tomorrow"})).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")));
    let (status, listing) =
        status_and_json(app.get("/api/admin/rate-cards", &TestApp::token("f", "finance")).await).await;
    assert_eq!(status, 200);
    let versions: Vec<&str> = listing.as_array().expect("list").iter().filter_map(|c| c["version"].as_str()).collect();
    assert_eq!(versions, ["v1", "v2"]);
}

#[tokio::test]
async fn settings_are_validated_and_the_daily_cap_is_enforced() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    app.fund("cap", 1_000_000).await;
    let customer = TestApp::token("cap", "customer");
    let put = |body: serde_json::Value, token: String, query: &'static str| {
        let request = app.client.put(app.url(&format!("/api/settings{query}"))).bearer_auth(token).json(&body);
        async move { status_and_json(request.send().await.expect("answered")).await }
    };
    let (status, body) = status_and_json(app.get("/api/settings", &customer).await).await;
    assert_eq!((status, body["autoreload"]["enabled"].as_bool()), (200, Some(false)), "defaults: {body}");
    let settings = json!({
        "email": "cap@example.com",
        "lowBalanceThresholdMillicredits": 10_000,
        "autoreload": {"enabled": true, "thresholdMillicredits": 5_000, "pack": "starter", "monthlyCapUsdCents": 2_000},
        "dailySpendCapMillicredits": 5_000
    });
    let (status, body) = put(settings.clone(), customer.clone(), "").await;
    assert_eq!((status, &body), (200, &settings));
    assert_eq!(status_and_json(app.get("/api/settings", &customer).await).await.1, settings);
    let bad_rows = [
        (
            json!({"autoreload": {"enabled": true, "pack": "mega", "thresholdMillicredits": 1}, "email": "a@b.co"}),
            "autoreload.pack",
        ),
        (json!({"email": "nope"}), "email"),
        (json!({"dailySpendCapMillicredits": 0}), "dailySpendCapMillicredits"),
        (
            json!({"autoreload": {"enabled": true, "pack": "starter"}, "email": "a@b.co"}),
            "autoreload.thresholdMillicredits",
        ),
    ];
    for (bad, field) in bad_rows {
        let (status, body) = put(bad.clone(), customer.clone(), "").await;
        assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")), "{bad}");
        assert!(body["message"].as_str().is_some_and(|m| m.contains(field)), "{bad}: {body} names {field}");
    }
    assert_eq!(put(json!({}), TestApp::token("x", "customer"), "?accountId=cap").await.0, 403, "not your account");
    assert_eq!(put(json!({}), TestApp::token("f", "finance"), "?accountId=cap").await.0, 403, "finance reads only");

    // A 5-credit cap: two 2-credit debits fit, the third would make 6.
    let usage = |key: &str| json!({"idempotencyKey": key, "model": "gpt-4o", "usage": {"input_tokens": 800}});
    for key in ["c1", "c2"] {
        assert_eq!(app.reconcile(&customer, &usage(key)).await.status(), 200, "{key}");
    }
    let (status, body) = status_and_json(app.reconcile(&customer, &usage("c3")).await).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("daily_spend_cap_exceeded")), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("5.000")), "{body}");
    assert_eq!(app.balance("cap").await, 996_000);
}
