//! `POST /api/purchases` against localstripe: a PaymentIntent for the pack's price with the account and pack in its
//! metadata, one Stripe customer per account, replays under an idempotency key, the pending purchase recorded, and
//! clear errors for unknown packs, other accounts, an unconfigured or unreachable Stripe.

use std::sync::Arc;

use creditflow_api::RateLimiter;
use creditflow_domain::AccountId;
use creditflow_store::PurchaseStatus;
use creditflow_testkit::{TestBackend, stripe_url};
use serde_json::json;

use crate::helpers::{Auth, STRIPE_KEY, TestApp, TestKey, status_and_json};

async fn buy(app: &TestApp, token: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let response = app.client.post(app.url("/api/purchases")).bearer_auth(token).json(body).send().await;
    status_and_json(response.expect("answered")).await
}

/// A PaymentIntent as localstripe holds it.
async fn intent(id: &str) -> serde_json::Value {
    let url = format!("{}/v1/payment_intents/{id}", stripe_url());
    let response = reqwest::Client::new().get(url).basic_auth(STRIPE_KEY, Some("")).send().await.expect("localstripe");
    response.json().await.expect("json")
}

async fn packs_are_bought_through_stripe(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    let account = format!("buyer{}", uuid::Uuid::new_v4().simple());
    let token = TestApp::token(&account, "customer");
    let (status, first) = buy(&app, &token, &json!({"pack": "starter", "idempotencyKey": "cart-1"})).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!((first["pack"].as_str(), first["amountUsdCents"].as_i64()), (Some("starter"), Some(500)));
    assert_eq!((first["creditsMillicredits"].as_i64(), first["credits"].as_str()), (Some(5_000_000), Some("5000.000")));
    let id = first["paymentIntentId"].as_str().expect("id").to_owned();
    assert!(first["clientSecret"].as_str().is_some_and(|secret| secret.starts_with(&format!("{id}_secret"))));
    let stored = intent(&id).await;
    assert_eq!((stored["amount"].as_i64(), stored["currency"].as_str()), (Some(500), Some("usd")));
    assert_eq!(stored["metadata"], json!({"creditflow_account_id": account, "creditflow_pack_id": "starter"}));
    let purchase = app.store.purchase(&id).await.expect("read").expect("recorded");
    assert_eq!((purchase.status, purchase.amount_usd_cents), (PurchaseStatus::Pending, 500));

    // A retry with the same key is the same payment; a new purchase reuses the account's customer.
    let (status, replay) = buy(&app, &token, &json!({"pack": "starter", "idempotencyKey": "cart-1"})).await;
    assert_eq!((status, replay["paymentIntentId"].as_str()), (201, Some(id.as_str())));
    let (status, second) = buy(&app, &token, &json!({"pack": "starter"})).await;
    assert_eq!(status, 201, "{second}");
    let second_id = second["paymentIntentId"].as_str().expect("id");
    assert_ne!(second_id, id);
    assert_eq!(intent(second_id).await["customer"], stored["customer"], "one Stripe customer per account");
    let customer = app.store.stripe_customer(&AccountId::new(account.clone()).expect("valid")).await.expect("read");
    assert_eq!(customer.as_deref(), stored["customer"].as_str());

    let (status, body) = buy(&app, &token, &json!({"pack": "mega"})).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("unknown_pack")), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("starter")), "names the packs on sale: {body}");
    let (status, _) = buy(&app, &token, &json!({"pack": "starter", "accountId": "someone-else"})).await;
    assert_eq!(status, 403);
    let gateway = TestApp::token("gateway", "service");
    let (status, body) = buy(&app, &gateway, &json!({"pack": "starter"})).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")), "a service names the account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_on_sqlite() {
    packs_are_bought_through_stripe(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_on_postgres() {
    packs_are_bought_through_stripe(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_stripe_purchases_answer_503() {
    let limiter = || RateLimiter::in_memory(1_000);
    let token = TestApp::token("alice", "customer");
    let unconfigured = TestApp::spawn_with(TestBackend::Sqlite, Auth::Pem(TestKey::Rsa1), limiter(), None).await;
    let (status, body) = buy(&unconfigured, &token, &json!({"pack": "starter"})).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("stripe_not_configured")), "{body}");
    let nowhere = creditflow_payments::Stripe::new(STRIPE_KEY, Some("http://127.0.0.1:9")).expect("client");
    let down =
        TestApp::spawn_with(TestBackend::Sqlite, Auth::Pem(TestKey::Rsa1), limiter(), Some(Arc::new(nowhere))).await;
    let (status, body) = buy(&down, &token, &json!({"pack": "starter"})).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("payment_provider_unavailable")), "{body}");
    assert!(!body["message"].as_str().unwrap_or_default().contains("127.0.0.1"), "no internals: {body}");
}
