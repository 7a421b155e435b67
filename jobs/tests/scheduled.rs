//! The hourly jobs on both backends: the `billing.rollup` announcement sums the hour's credits, debits, per-model
//! usage and failures; the anomaly check flags a spender far over their usual (and over the floor) once.

use creditflow_domain::{AccountId, EntryKind, Millicredits, Overdraft, Posting, RateVersion, UsageRecord};
use creditflow_jobs::scheduled::{AnomalyRule, HourV1, Scheduled, ScheduledDeps, ScheduledJob, run_scheduled};
use creditflow_store::{Store, WEBHOOK_EVENTS_QUEUE};
use creditflow_testkit::{TestBackend, TestDatabase};
use time::OffsetDateTime;

async fn deps(backend: TestBackend) -> (ScheduledDeps, TestDatabase) {
    let database = TestDatabase::new(backend).await;
    let store = Store::connect(&database.url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    (ScheduledDeps { store, anomaly: AnomalyRule::default() }, database)
}

fn posting(account: &AccountId, key: &str, kind: EntryKind, amount: i64, model: Option<(&str, u64)>) -> Posting {
    Posting {
        account_id: account.clone(),
        kind,
        amount: Millicredits::new(amount),
        idempotency_key: key.into(),
        correlation_id: None,
        rate_version: (kind == EntryKind::UsageDebit).then(|| RateVersion::new("v1").expect("valid")),
        source_ref: None,
        reason: (kind == EntryKind::Adjustment).then(|| "goodwill".to_owned()),
        overdraft: Overdraft::Allow,
        spend_cap: None,
        usage: model.map(|(model, tokens)| UsageRecord {
            model: model.to_owned(),
            units: [("input_tokens".to_owned(), tokens)].into(),
        }),
    }
}

fn hour_of(at: OffsetDateTime) -> HourV1 {
    HourV1 { hour_start: at.unix_timestamp() - at.unix_timestamp().rem_euclid(3_600) }
}

/// The data of the announced events of `event_type`.
async fn announced(store: &Store, event_type: &str) -> Vec<serde_json::Value> {
    let outbox = store.unrelayed_outbox(1_000).await.expect("outbox");
    outbox
        .iter()
        .filter(|m| m.queue == WEBHOOK_EVENTS_QUEUE)
        .map(|m| serde_json::from_str::<serde_json::Value>(&m.payload).expect("json"))
        .filter(|event| event["type"] == event_type)
        .map(|event| event["data"].clone())
        .collect()
}

async fn the_rollup_sums_the_hour(backend: TestBackend) {
    let (deps, _database) = deps(backend).await;
    let store = &deps.store;
    let ada = AccountId::new("ada").expect("valid");
    store.create_account(&ada).await.expect("account");
    let postings = [
        posting(&ada, "p1", EntryKind::PurchaseCredit, 5_000_000, None),
        posting(&ada, "u1", EntryKind::UsageDebit, -2_000, Some(("m1", 800))),
        posting(&ada, "u2", EntryKind::UsageDebit, -3_000, Some(("m1", 1_200))),
        posting(&ada, "u3", EntryKind::UsageDebit, -7_000, Some(("m2", 10))),
        posting(&ada, "r1", EntryKind::RefundDebit, -1_000_000, None),
        posting(&ada, "a1", EntryKind::Adjustment, 500, None),
    ];
    let mut hours = Vec::new();
    for p in &postings {
        let creditflow_domain::PostingOutcome::Created(entry) = store.post(p).await.expect("posted") else {
            panic!("created")
        };
        let hour = hour_of(entry.created_at);
        if !hours.contains(&hour) {
            hours.push(hour);
        }
    }
    // Normally one hour; two when the test ran across the hour (the sums below add both up).
    for hour in &hours {
        assert_eq!(run_scheduled(&ScheduledJob::BillingRollup(*hour), &deps).await.expect("ran"), Scheduled::RolledUp);
        run_scheduled(&ScheduledJob::BillingRollup(*hour), &deps).await.expect("again");
    }
    let rollups = announced(store, "billing.rollup").await;
    assert_eq!(rollups.len(), hours.len(), "one announcement per hour, however often the job runs");
    let total = |field: &str| rollups.iter().map(|r| r[field].as_i64().expect(field)).sum::<i64>();
    assert_eq!(total("creditsPurchasedMillicredits"), 5_000_000);
    assert_eq!(total("creditsDebitedMillicredits"), 12_000);
    assert_eq!(total("refundsMillicredits"), 1_000_000);
    assert_eq!(total("adjustmentsMillicredits"), 500);
    assert_eq!(total("usageDebits"), 3);
    let mut by_model: Vec<(String, i64, i64, i64)> = rollups
        .iter()
        .flat_map(|r| r["usageByModel"].as_array().cloned().unwrap_or_default())
        .map(|m| {
            let number = |v: &serde_json::Value| v.as_i64().expect("number");
            let model = m["model"].as_str().expect("model").to_owned();
            (model, number(&m["debits"]), number(&m["creditsMillicredits"]), number(&m["units"]["input_tokens"]))
        })
        .collect();
    by_model.sort();
    if hours.len() == 1 {
        assert_eq!(by_model, [("m1".to_owned(), 2, 5_000, 2_000), ("m2".to_owned(), 1, 7_000, 10)]);
    }
    assert_eq!(total("purchases"), 1);
}

async fn a_spender_far_over_their_usual_is_flagged_once(backend: TestBackend) {
    let (deps, _database) = deps(backend).await;
    let store = &deps.store;
    let (big, small) = (AccountId::new("big").expect("valid"), AccountId::new("small").expect("valid"));
    for (account, spend) in [(&big, 2_000_000), (&small, 10_000)] {
        store.create_account(account).await.expect("account");
        store.post(&posting(account, "u", EntryKind::UsageDebit, -spend, Some(("m1", 1)))).await.expect("posted");
    }
    let hour = hour_of(OffsetDateTime::now_utc());
    let check = ScheduledJob::AnomalyCheck(hour);
    assert_eq!(run_scheduled(&check, &deps).await.expect("ran"), Scheduled::Checked(1));
    assert_eq!(run_scheduled(&check, &deps).await.expect("again"), Scheduled::Checked(0), "flagged once per hour");
    let anomalies = announced(store, "anomaly.detected").await;
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    assert_eq!(anomalies[0]["accountId"], "big");
    assert_eq!(anomalies[0]["spentLast24hMillicredits"], 2_000_000);
    let since = OffsetDateTime::now_utc() - time::Duration::HOUR;
    assert_eq!(store.anomalies_since(since).await.expect("count"), 1);
}

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(creditflow_testkit::TestBackend::Sqlite).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(creditflow_testkit::TestBackend::Postgres).await } )* }
    };
}

on_both_backends!(the_rollup_sums_the_hour, a_spender_far_over_their_usual_is_flagged_once);
