//! Purchase fulfilment driven directly, on both backends: one credit per payment whatever the events and however
//! often they run; failures recorded; events that are not creditflow purchases fail permanently.

use std::sync::Arc;

use creditflow_domain::{AccountId, Millicredits, PackCatalog};
use creditflow_jobs::JobError;
use creditflow_jobs::stripe_events::{Deps, ProcessStripeEventV1, Processed, process_stripe_event};
use creditflow_store::{PurchaseStatus, ReceivedEvent, Store};
use creditflow_testkit::{TestBackend, TestDatabase};
use serde_json::json;

async fn deps(backend: TestBackend) -> (Deps, TestDatabase) {
    let database = TestDatabase::new(backend).await;
    let store = Store::connect(&database.url, 16).await.expect("connect");
    store.migrate().await.expect("migrate");
    let packs = PackCatalog::from_toml(
        "[[packs]]\nid = \"starter\"\nname = \"Starter\"\nprice_usd_cents = 500\ncredits = 5000\n",
    )
    .expect("packs");
    (Deps { store, packs: Arc::new(packs), freeze_on_dispute: true }, database)
}

/// Stores an event as the webhook receiver would and returns its job.
async fn receive(deps: &Deps, id: &str, event_type: &str, object: serde_json::Value) -> ProcessStripeEventV1 {
    let payload =
        json!({"id": id, "object": "event", "type": event_type, "livemode": false, "data": {"object": object}})
            .to_string();
    let event = ReceivedEvent { id, event_type, livemode: false, payload: &payload };
    deps.store.receive_stripe_event(&event).await.expect("stored");
    ProcessStripeEventV1 { event_id: id.to_owned() }
}

fn metadata() -> serde_json::Value {
    json!({"creditflow_account_id": "alice", "creditflow_pack_id": "starter"})
}

async fn balance(deps: &Deps, account: &str) -> Millicredits {
    let id = AccountId::new(account).expect("valid");
    deps.store.account(&id).await.expect("read").map_or(Millicredits::ZERO, |account| account.balance)
}

async fn a_payment_is_credited_once(backend: TestBackend) {
    let (deps, _database) = deps(backend).await;
    let succeeded = json!({"id": "pi_1", "object": "payment_intent", "amount": 500, "amount_received": 500, "currency": "usd", "metadata": metadata()});
    let job = receive(&deps, "evt_pi", "payment_intent.succeeded", succeeded).await;
    let Processed::Credited(entry_id) = process_stripe_event(&job, &deps).await.expect("processed") else {
        panic!("credited")
    };
    assert_eq!(balance(&deps, "alice").await, Millicredits::new(5_000_000), "5,000 credits for the Starter pack");
    // The same job again, and the Checkout Session announcing the same payment: no second credit.
    assert_eq!(process_stripe_event(&job, &deps).await.expect("again"), Processed::AlreadyCredited(entry_id.clone()));
    let session = json!({"id": "cs_1", "object": "checkout.session", "payment_intent": "pi_1", "payment_status": "paid", "amount_total": 500, "currency": "usd", "metadata": metadata()});
    let checkout = receive(&deps, "evt_cs", "checkout.session.completed", session).await;
    assert_eq!(
        process_stripe_event(&checkout, &deps).await.expect("checkout"),
        Processed::AlreadyCredited(entry_id.clone())
    );
    // Twenty workers handed the same job at once still credit nothing more.
    let runs = (0..20).map(|_| process_stripe_event(&job, &deps));
    for result in futures_util::future::join_all(runs).await {
        assert_eq!(result.expect("processed"), Processed::AlreadyCredited(entry_id.clone()));
    }
    assert_eq!(balance(&deps, "alice").await, Millicredits::new(5_000_000));
    let purchase = deps.store.purchase("pi_1").await.expect("read").expect("recorded");
    assert_eq!((purchase.status, purchase.ledger_entry_id), (PurchaseStatus::Succeeded, Some(entry_id)));
    // A late failure event for the same payment does not undo it.
    let failed =
        json!({"id": "pi_1", "object": "payment_intent", "amount": 500, "currency": "usd", "metadata": metadata()});
    let late = receive(&deps, "evt_late", "payment_intent.payment_failed", failed).await;
    process_stripe_event(&late, &deps).await.expect("processed");
    assert_eq!(deps.store.purchase("pi_1").await.expect("read").expect("recorded").status, PurchaseStatus::Succeeded);
}

#[tokio::test]
async fn a_payment_is_credited_once_on_sqlite() {
    a_payment_is_credited_once(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn a_payment_is_credited_once_on_postgres() {
    a_payment_is_credited_once(TestBackend::Postgres).await;
}

#[tokio::test]
async fn concurrent_first_runs_credit_once() {
    let (deps, _database) = deps(TestBackend::Postgres).await;
    let succeeded = json!({"id": "pi_race", "amount_received": 500, "currency": "usd", "metadata": metadata()});
    let job = receive(&deps, "evt_race", "payment_intent.succeeded", succeeded).await;
    let runs = (0..20).map(|_| process_stripe_event(&job, &deps));
    let results: Vec<Processed> =
        futures_util::future::join_all(runs).await.into_iter().map(|r| r.expect("ok")).collect();
    let credited = results.iter().filter(|r| matches!(r, Processed::Credited(_))).count();
    assert_eq!(credited, 1, "{results:?}");
    assert_eq!(balance(&deps, "alice").await, Millicredits::new(5_000_000));
}

#[tokio::test]
async fn failures_are_recorded_and_foreign_events_fail_permanently() {
    let (deps, _database) = deps(TestBackend::Sqlite).await;
    let failed = json!({"id": "pi_f", "amount": 500, "currency": "usd", "metadata": metadata(), "last_payment_error": {"message": "Your card was declined."}});
    let job = receive(&deps, "evt_f", "payment_intent.payment_failed", failed).await;
    assert_eq!(process_stripe_event(&job, &deps).await.expect("ok"), Processed::Recorded(PurchaseStatus::Failed));
    let purchase = deps.store.purchase("pi_f").await.expect("read").expect("recorded");
    assert_eq!(
        (purchase.status, purchase.last_error.as_deref()),
        (PurchaseStatus::Failed, Some("Your card was declined."))
    );
    assert_eq!(balance(&deps, "alice").await, Millicredits::ZERO);

    let ignored = receive(&deps, "evt_x", "customer.created", json!({"id": "cus_1"})).await;
    assert_eq!(process_stripe_event(&ignored, &deps).await.expect("ok"), Processed::Ignored("customer.created".into()));
    let unpaid = json!({"id": "cs_2", "payment_intent": "pi_2", "payment_status": "unpaid", "currency": "usd", "metadata": metadata()});
    let pending = receive(&deps, "evt_unpaid", "checkout.session.completed", unpaid).await;
    assert!(matches!(process_stripe_event(&pending, &deps).await.expect("ok"), Processed::Ignored(_)));

    let foreign = json!({"id": "pi_other", "amount_received": 500, "currency": "usd", "metadata": {}});
    let rows = [
        ("no metadata", foreign),
        (
            "unknown pack",
            json!({"id": "pi_u", "amount_received": 500, "currency": "usd", "metadata": {"creditflow_account_id": "alice", "creditflow_pack_id": "mega"}}),
        ),
        ("underpaid", json!({"id": "pi_p", "amount_received": 100, "currency": "usd", "metadata": metadata()})),
        ("other currency", json!({"id": "pi_e", "amount_received": 500, "currency": "eur", "metadata": metadata()})),
    ];
    for (n, (case, object)) in rows.into_iter().enumerate() {
        let job = receive(&deps, &format!("evt_bad{n}"), "payment_intent.succeeded", object).await;
        let error = process_stripe_event(&job, &deps).await.expect_err(case);
        assert!(matches!(error, JobError::Permanent(_)), "{case}: {error:?}");
    }
    let missing = ProcessStripeEventV1 { event_id: "evt_never_received".into() };
    assert!(matches!(process_stripe_event(&missing, &deps).await, Err(JobError::Permanent(_))));
    assert_eq!(balance(&deps, "alice").await, Millicredits::ZERO, "nothing was credited");
}

#[test]
fn the_payload_shape_is_stable() {
    let job: ProcessStripeEventV1 = serde_json::from_str(r#"{"eventId":"evt_1"}"#).expect("parses");
    assert_eq!(job.event_id, "evt_1");
    assert_eq!(serde_json::to_string(&job).expect("json"), r#"{"eventId":"evt_1"}"#);
}

#[tokio::test]
async fn refunds_take_back_the_refunded_share_once_and_disputes_freeze() {
    let (deps, _database) = deps(TestBackend::Postgres).await;
    let paid = json!({"id": "pi_r", "amount_received": 500, "currency": "usd", "metadata": metadata()});
    let job = receive(&deps, "evt_paid", "payment_intent.succeeded", paid).await;
    process_stripe_event(&job, &deps).await.expect("credited");
    // Alice spends 4,000 of her 5,000 credits.
    let id = AccountId::new("alice").expect("valid");
    let spend = creditflow_domain::Posting {
        account_id: id.clone(),
        kind: creditflow_domain::EntryKind::Adjustment,
        amount: Millicredits::new(-4_000_000),
        idempotency_key: "spend".into(),
        correlation_id: None,
        rate_version: None,
        source_ref: None,
        reason: Some("usage stand-in".into()),
        overdraft: creditflow_domain::Overdraft::Forbid,
        spend_cap: None,
        usage: None,
    };
    deps.store.post(&spend).await.expect("spent");
    // A partial refund of $2.50 takes back half the credits; a redelivery changes nothing.
    let half =
        json!({"id": "ch_1", "object": "charge", "payment_intent": "pi_r", "amount": 500, "amount_refunded": 250});
    let partial = receive_with_previous(&deps, "evt_r1", half, 0).await;
    assert!(matches!(process_stripe_event(&partial, &deps).await.expect("refunded"), Processed::Refunded(_)));
    process_stripe_event(&partial, &deps).await.expect("again");
    assert_eq!(balance(&deps, "alice").await, Millicredits::new(-1_500_000), "1,000 left minus 2,500 refunded");
    // The rest is refunded later: the second event debits only its own step.
    let full =
        json!({"id": "ch_1", "object": "charge", "payment_intent": "pi_r", "amount": 500, "amount_refunded": 500});
    let rest = receive_with_previous(&deps, "evt_r2", full, 250).await;
    process_stripe_event(&rest, &deps).await.expect("refunded");
    assert_eq!(balance(&deps, "alice").await, Millicredits::new(-4_000_000));
    let log = deps.store.audit_log(None, 10).await.expect("log");
    let flags = log.iter().filter(|r| r.action == "account.flag_negative_balance" && r.subject == "alice").count();
    assert_eq!(flags, 2, "one flag per refund that left the balance negative, none for the redelivery: {log:?}");

    let disputed =
        json!({"id": "dp_1", "object": "dispute", "payment_intent": "pi_r", "charge": "ch_1", "reason": "fraudulent"});
    let job = receive(&deps, "evt_dp", "charge.dispute.created", disputed).await;
    assert_eq!(process_stripe_event(&job, &deps).await.expect("disputed"), Processed::Disputed { froze: true });
    let account = deps.store.account(&id).await.expect("read").expect("exists");
    assert_eq!(account.status, creditflow_domain::AccountStatus::Frozen);
    assert_eq!(
        process_stripe_event(&job, &deps).await.expect("again"),
        Processed::Disputed { froze: false },
        "already frozen"
    );
    let log = deps.store.audit_log(None, 10).await.expect("log");
    let freeze = log.iter().find(|r| r.action == "account.freeze").expect("freeze audited");
    assert_eq!(freeze.actor, "system:stripe");
    assert!(freeze.reason.as_deref().is_some_and(|reason| reason.contains("dp_1") && reason.contains("fraudulent")));
}

/// Stores a `charge.refunded` event whose previous cumulative refund was `previous_refunded`.
async fn receive_with_previous(
    deps: &Deps,
    id: &str,
    charge: serde_json::Value,
    previous_refunded: i64,
) -> ProcessStripeEventV1 {
    let payload = json!({
        "id": id, "object": "event", "type": "charge.refunded", "livemode": false,
        "data": {"object": charge, "previous_attributes": {"amount_refunded": previous_refunded}}
    })
    .to_string();
    let event = ReceivedEvent { id, event_type: "charge.refunded", livemode: false, payload: &payload };
    deps.store.receive_stripe_event(&event).await.expect("stored");
    ProcessStripeEventV1 { event_id: id.to_owned() }
}
