//! `POST /webhooks/stripe`: verified events are stored once with one outbox job each, whatever the redeliveries;
//! forged or stale signatures are refused and store nothing; on both backends.

use creditflow_testkit::TestBackend;

use crate::helpers::{TestApp, WEBHOOK_SECRET, now};

fn event(id: &str, event_type: &str) -> String {
    serde_json::json!({
        "id": id,
        "object": "event",
        "type": event_type,
        "livemode": false,
        "created": now(),
        "data": {"object": {"id": "pi_123", "object": "payment_intent", "amount": 500, "currency": "usd"}}
    })
    .to_string()
}

async fn deliver(app: &TestApp, body: &str, signature: &str) -> (u16, serde_json::Value) {
    let response = app
        .client
        .post(app.url("/webhooks/stripe"))
        .header("stripe-signature", signature)
        .header("content-type", "application/json; charset=utf-8")
        .body(body.to_owned())
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

fn signed(body: &str) -> String {
    creditflow_api::sign_stripe_payload(body.as_bytes(), WEBHOOK_SECRET, now())
}

async fn events_are_stored_once(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    let body = event("evt_1", "payment_intent.succeeded");
    let (status, answer) = deliver(&app, &body, &signed(&body)).await;
    assert_eq!((status, answer), (200, serde_json::json!({"received": true, "duplicate": false})));
    // Twenty concurrent redeliveries change nothing.
    let signature = signed(&body);
    let redeliveries = (0..20).map(|_| deliver(&app, &body, &signature));
    for (status, answer) in futures_util::future::join_all(redeliveries).await {
        assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    }
    let stored = app.store.stripe_event("evt_1").await.expect("read").expect("stored");
    assert_eq!(stored, ("payment_intent.succeeded".to_owned(), body.clone()), "stored as received");
    let outbox = app.store.unrelayed_outbox(100).await.expect("outbox");
    assert_eq!(outbox.len(), 1, "one job for the event: {outbox:?}");
    assert_eq!(outbox[0].queue, "stripe_events");
    let job: serde_json::Value = serde_json::from_str(&outbox[0].payload).expect("json");
    assert_eq!(job, serde_json::json!({"kind": "process_stripe_event", "version": 1, "eventId": "evt_1"}));

    // Unknown types are stored and acknowledged too.
    let other = event("evt_2", "customer.tax_id.created");
    assert_eq!(deliver(&app, &other, &signed(&other)).await.0, 200);
    assert_eq!(app.store.unrelayed_outbox(100).await.expect("outbox").len(), 2);
}

#[tokio::test]
async fn events_are_stored_once_on_sqlite() {
    events_are_stored_once(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn events_are_stored_once_on_postgres() {
    events_are_stored_once(TestBackend::Postgres).await;
}

#[tokio::test]
async fn forged_or_stale_signatures_store_nothing() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    let body = event("evt_forged", "payment_intent.succeeded");
    let forged = creditflow_api::sign_stripe_payload(body.as_bytes(), "whsec_attacker", now());
    let stale = creditflow_api::sign_stripe_payload(body.as_bytes(), WEBHOOK_SECRET, now() - 3_600);
    let tampered_body = body.replace("500", "500000");
    for (case, body, signature) in [
        ("forged", body.as_str(), forged),
        ("stale", body.as_str(), stale),
        ("missing", body.as_str(), String::new()),
        ("body changed after signing", tampered_body.as_str(), signed(&body)),
    ] {
        let (status, answer) = deliver(&app, body, &signature).await;
        assert_eq!((status, answer["code"].as_str()), (400, Some("invalid_signature")), "{case}");
    }
    assert_eq!(app.store.stripe_event("evt_forged").await.expect("read"), None);
    assert!(app.store.unrelayed_outbox(10).await.expect("outbox").is_empty());
    let not_an_event = "[1, 2, 3]";
    let (status, answer) = deliver(&app, not_an_event, &signed(not_an_event)).await;
    assert_eq!((status, answer["code"].as_str()), (400, Some("bad_request")));
}
