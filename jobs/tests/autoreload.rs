//! Autoreload against localstripe, on both backends: a debit under the threshold asks for one reload however many
//! debits follow; the job charges the saved card once (the webhook for the same payment credits nothing more),
//! buys enough packs to close the gap in one charge, respects the monthly cap, and after the configured failures in
//! a row turns autoreload off and emails the customer (through maildev).

use std::sync::Arc;

use creditflow_domain::{AccountId, AccountSettings, Autoreload, EntryKind, Millicredits, Overdraft, PackCatalog};
use creditflow_domain::{Posting, PostingOutcome, RateVersion};
use creditflow_jobs::JobError;
use creditflow_jobs::autoreload::{AutoreloadDeps, CLAIM_LEASE, Reloaded, RunAutoreloadV1, run_autoreload};
use creditflow_jobs::emails::{EmailDeps, EmailJob, Emailed, Mailer, send_email};
use creditflow_jobs::stripe_events::{Deps, Processed, fulfil_payment};
use creditflow_payments::Stripe;
use creditflow_store::{AUTORELOADS_QUEUE, AutoreloadState, EMAILS_QUEUE, Store, WEBHOOK_EVENTS_QUEUE};
use creditflow_testkit::{TestBackend, TestDatabase, stripe_url};

const KEY: &str = "sk_test_autoreload";

async fn deps(backend: TestBackend) -> (AutoreloadDeps, TestDatabase) {
    let database = TestDatabase::new(backend).await;
    let store = Store::connect(&database.url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    let packs = PackCatalog::from_toml(
        "[[packs]]\nid = \"starter\"\nname = \"Starter\"\nprice_usd_cents = 500\ncredits = 5000\n",
    )
    .expect("packs");
    let fulfilment = Deps { store, packs: Arc::new(packs), freeze_on_dispute: true };
    let stripe = Stripe::new(KEY, Some(&stripe_url())).expect("client");
    (
        AutoreloadDeps {
            fulfilment,
            stripe: Some(Arc::new(stripe)),
            failures_before_disabling: 3,
            claim_lease: CLAIM_LEASE,
        },
        database,
    )
}

/// An account with autoreload under 1,000 credits (Starter packs, `cap` US cents a month), a Stripe customer
/// holding `card`, and 2,000 credits.
async fn account(deps: &AutoreloadDeps, card: &str, cap: Option<i64>) -> AccountId {
    let store = &deps.fulfilment.store;
    let id = AccountId::new(format!("ar{}", uuid::Uuid::new_v4().simple())).expect("valid");
    store.create_account(&id).await.expect("account");
    let settings = AccountSettings {
        // An address of its own, so concurrent runs never read each other's mail in maildev.
        email: Some(format!("{id}@example.com")),
        autoreload: Autoreload {
            enabled: true,
            threshold: Some(Millicredits::new(1_000_000)),
            pack: Some("starter".into()),
            monthly_cap_usd_cents: cap,
        },
        ..AccountSettings::default()
    };
    store.put_settings(&id, &settings).await.expect("settings");
    let stripe = deps.stripe.as_deref().expect("stripe");
    let customer = stripe.create_customer(id.as_str(), None).await.expect("customer");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/payment_methods/{card}/attach", stripe_url()))
        .basic_auth(KEY, Some(""))
        .form(&[("customer", customer.as_str())])
        .send()
        .await
        .expect("localstripe answers (scripts/test starts it)");
    assert!(response.status().is_success());
    store.remember_stripe_customer(&id, &customer).await.expect("remembered");
    post(deps, &id, "seed", EntryKind::Adjustment, 2_000_000).await;
    id
}

async fn post(deps: &AutoreloadDeps, id: &AccountId, key: &str, kind: EntryKind, amount: i64) {
    let posting = Posting {
        account_id: id.clone(),
        kind,
        amount: Millicredits::new(amount),
        idempotency_key: key.into(),
        correlation_id: None,
        rate_version: (kind == EntryKind::UsageDebit).then(|| RateVersion::new("v1").expect("valid")),
        source_ref: None,
        reason: (kind == EntryKind::Adjustment).then(|| "test".to_owned()),
        overdraft: Overdraft::Allow,
        spend_cap: None,
        usage: None,
    };
    let outcome = deps.fulfilment.store.post(&posting).await.expect("posted");
    assert!(matches!(outcome, PostingOutcome::Created(_)), "{outcome:?}");
}

async fn debit(deps: &AutoreloadDeps, id: &AccountId, key: &str, millicredits: i64) {
    post(deps, id, key, EntryKind::UsageDebit, -millicredits).await;
}

/// The reload jobs waiting in the outbox for `id`, oldest first.
async fn reload_jobs(deps: &AutoreloadDeps, id: &AccountId) -> Vec<RunAutoreloadV1> {
    let store = &deps.fulfilment.store;
    let mut jobs = Vec::new();
    for message in store.unrelayed_outbox(1_000).await.expect("outbox") {
        if message.queue != AUTORELOADS_QUEUE {
            continue;
        }
        let job: RunAutoreloadV1 = serde_json::from_str(&message.payload).expect("job");
        let reload = store.autoreload(&job.reload_id).await.expect("read").expect("recorded");
        if reload.account_id == *id {
            jobs.push(job);
        }
    }
    jobs
}

async fn balance(deps: &AutoreloadDeps, id: &AccountId) -> i64 {
    deps.fulfilment.store.account(id).await.expect("read").expect("exists").balance.get()
}

async fn a_reload_closes_the_gap_once(backend: TestBackend) {
    let (deps, _database) = deps(backend).await;
    let id = account(&deps, "pm_card_visa", Some(1_500)).await;
    debit(&deps, &id, "d1", 1_500_000).await;
    debit(&deps, &id, "d2", 100_000).await;
    let jobs = reload_jobs(&deps, &id).await;
    assert_eq!(jobs.len(), 1, "one reload per crossing, however many debits follow");
    // Two copies of the job at once (two relays pushed it): one charges, the other stands aside.
    let (first, second) = tokio::join!(run_autoreload(&jobs[0], &deps), run_autoreload(&jobs[0], &deps));
    let mut credited = None;
    for outcome in [first, second] {
        match outcome {
            Ok(Reloaded::Credited(entry)) => assert!(credited.replace(entry).is_none(), "credited twice"),
            Ok(Reloaded::AlreadySettled(AutoreloadState::Succeeded)) | Err(JobError::Transient(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let entry = credited.expect("one copy credited");
    assert_eq!(balance(&deps, &id).await, 400_000 + 5_000_000, "one Starter pack closes a 600-credit gap");
    let reload = deps.fulfilment.store.autoreload(&jobs[0].reload_id).await.expect("read").expect("recorded");
    assert_eq!((reload.state, reload.packs, reload.amount_usd_cents), (AutoreloadState::Succeeded, Some(1), Some(500)));
    // The job again, and the webhook announcing the same payment: nothing more.
    assert_eq!(
        run_autoreload(&jobs[0], &deps).await.expect("ran"),
        Reloaded::AlreadySettled(AutoreloadState::Succeeded)
    );
    let intent = reload.payment_intent_id.clone().expect("intent");
    let metadata = serde_json::json!({
        "creditflow_account_id": id.as_str(), "creditflow_pack_id": "starter", "creditflow_quantity": "1",
        "creditflow_autoreload_id": reload.id,
    });
    let webhook = fulfil_payment(&intent, 500, "usd", &metadata, &deps.fulfilment).await.expect("fulfilled");
    assert_eq!(webhook, Processed::AlreadyCredited(entry.clone()));
    assert_eq!(balance(&deps, &id).await, 5_400_000);
    let credit = deps.fulfilment.store.entry_by_key(&id, &format!("payment:{intent}")).await.expect("read");
    assert_eq!(credit.map(|entry| entry.kind), Some(EntryKind::AutoreloadCredit));

    // A refund taking the balance under the threshold never asks for a reload (it would charge the card again).
    post(&deps, &id, "refund", EntryKind::RefundDebit, -5_000_000).await;
    assert_eq!(reload_jobs(&deps, &id).await.len(), 1);
    post(&deps, &id, "goodwill", EntryKind::Adjustment, 5_000_000).await;
    // A deep overdraft needs three packs in one charge: $15, over what is left of the $15 cap after $5.
    debit(&deps, &id, "d3", 17_400_000).await;
    let jobs = reload_jobs(&deps, &id).await;
    assert_eq!(jobs.len(), 2);
    let skipped = run_autoreload(&jobs[1], &deps).await.expect("ran");
    assert!(matches!(&skipped, Reloaded::Skipped(reason) if reason.contains("monthly cap")), "{skipped:?}");
    assert_eq!(balance(&deps, &id).await, -12_000_000, "nothing charged past the cap");
    let outbox = deps.fulfilment.store.unrelayed_outbox(1_000).await.expect("outbox");
    let events: Vec<&str> = outbox
        .iter()
        .filter(|m| m.queue == WEBHOOK_EVENTS_QUEUE && m.payload.contains(id.as_str()))
        .filter_map(|m| ["autoreload.succeeded", "autoreload.failed"].into_iter().find(|t| m.payload.contains(t)))
        .collect();
    assert_eq!(events, ["autoreload.succeeded", "autoreload.failed"]);
}

async fn repeated_failures_turn_autoreload_off(backend: TestBackend) {
    let (mut deps, _database) = deps(backend).await;
    deps.failures_before_disabling = 2;
    let id = account(&deps, "pm_card_chargeCustomerFail", None).await;
    debit(&deps, &id, "d1", 1_500_000).await;
    let jobs = reload_jobs(&deps, &id).await;
    assert_eq!(jobs.len(), 1);
    // The declined card is tried again (the job retried with backoff) until the configured attempts are used.
    let first = run_autoreload(&jobs[0], &deps).await;
    assert!(matches!(&first, Err(JobError::Transient(reason)) if reason.contains("declined")), "{first:?}");
    let last = run_autoreload(&jobs[0], &deps).await.expect("ran");
    let Reloaded::Failed { reason, disabled } = last else { panic!("the last attempt fails for good: {last:?}") };
    assert!(reason.contains("declined") && disabled, "{reason}");
    let reload = deps.fulfilment.store.autoreload(&jobs[0].reload_id).await.expect("read").expect("recorded");
    assert_eq!((reload.state, reload.attempts), (AutoreloadState::Failed, 2));
    let failures = deps.fulfilment.store.unrelayed_outbox(1_000).await.expect("outbox");
    let announced = failures.iter().filter(|m| m.payload.contains("autoreload.failed")).count();
    assert_eq!(announced, 2, "one autoreload.failed per attempt");
    let settings = deps.fulfilment.store.settings(&id).await.expect("settings");
    assert!(!settings.autoreload.enabled);
    let outbox = deps.fulfilment.store.unrelayed_outbox(1_000).await.expect("outbox");
    let emails: Vec<_> =
        outbox.iter().filter(|m| m.queue == EMAILS_QUEUE && m.payload.contains("autoreload_disabled_email")).collect();
    assert_eq!(emails.len(), 1, "the customer is told once");
    post(&deps, &id, "top-up", EntryKind::Adjustment, 5_000_000).await;
    debit(&deps, &id, "d2", 5_000_000).await;
    assert_eq!(reload_jobs(&deps, &id).await.len(), 1, "no reload is asked for once it is off");

    // The email job, sent as the emails pool would, arrives in maildev.
    let job: EmailJob = serde_json::from_str(&emails[0].payload).expect("an email job");
    let smtp = std::env::var("CREDITFLOW_TEST_SMTP_URL").unwrap_or_else(|_| "smtp://127.0.0.1:1025".into());
    let maildev = std::env::var("CREDITFLOW_TEST_MAILDEV_URL").unwrap_or_else(|_| "http://127.0.0.1:1080".into());
    let email_deps = EmailDeps {
        store: deps.fulfilment.store.clone(),
        mailer: Arc::new(Mailer::smtp(&smtp).expect("smtp url")),
        from: "creditflow <billing@creditflow.test>".parse().expect("mailbox"),
    };
    assert_eq!(send_email(&job, &email_deps).await.expect("sent (scripts/test starts maildev)"), Emailed::Sent);
    let inbox: Vec<serde_json::Value> =
        reqwest::get(format!("{maildev}/api/email")).await.expect("maildev answers").json().await.expect("json");
    let address = format!("{id}@example.com");
    let mine: Vec<_> = inbox.iter().filter(|e| e["to"][0]["address"].as_str() == Some(address.as_str())).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["subject"], "Autoreload is off: your card was not charged");
}

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(creditflow_testkit::TestBackend::Sqlite).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(creditflow_testkit::TestBackend::Postgres).await } )* }
    };
}

on_both_backends!(a_reload_closes_the_gap_once, repeated_failures_turn_autoreload_off);
