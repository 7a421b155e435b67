//! Usage batches priced and debited by their job, on both backends: per-event rejections with reasons, duplicates
//! within and across batches, overdrafts allowed and flagged, a second run that changes nothing, and batches of
//! several transactions running side by side.

use creditflow_domain::{AccountId, Millicredits, PostingOutcome, RateCard, UsageEvent};
use creditflow_jobs::usage_batches::{BatchDeps, PriceUsageBatchV1, price_usage_batch};
use creditflow_store::{BatchStatus, BatchSubmitted, NewAuditRecord, Store};
use creditflow_testkit::{TestBackend, TestDatabase};
use time::{Duration, OffsetDateTime};

const CARD: &str = "version = \"v1\"\nrounding = \"precise\"\n[models.m1]\ninput_tokens = \"0.001\"\n";

async fn deps(backend: TestBackend) -> (BatchDeps, TestDatabase) {
    let database = TestDatabase::new(backend).await;
    let store = Store::connect(&database.url, 16).await.expect("connect");
    store.migrate().await.expect("migrate");
    let card = RateCard::from_toml(CARD).expect("card");
    store.add_rate_card(&card, CARD).await.expect("add");
    let actor = NewAuditRecord {
        actor: "test".into(),
        action: "rate_card.activate".into(),
        subject: "v1".into(),
        reason: None,
        details: "{}".into(),
    };
    let since = OffsetDateTime::now_utc() - Duration::hours(1);
    store.activate_rate_card(card.version(), since, &actor).await.expect("activate");
    (BatchDeps { store }, database)
}

fn event(id: &str, account: &str, model: &str, tokens: i64) -> UsageEvent {
    UsageEvent {
        event_id: id.to_owned(),
        account_id: account.to_owned(),
        model: model.to_owned(),
        usage: [("input_tokens".to_owned(), tokens)].into(),
        correlation_id: Some(format!("corr-{id}")),
    }
}

async fn submit(deps: &BatchDeps, key: Option<&str>, events: &[UsageEvent]) -> PriceUsageBatchV1 {
    let json = serde_json::to_string(events).expect("json");
    let count = i64::try_from(events.len()).expect("fits");
    match deps.store.submit_usage_batch("gateway", key, &json, count).await.expect("submitted") {
        BatchSubmitted::New(batch) | BatchSubmitted::Replayed(batch) => PriceUsageBatchV1 { batch_id: batch.id },
        BatchSubmitted::KeyReused => panic!("key reused"),
    }
}

async fn balance(deps: &BatchDeps, account: &str) -> i64 {
    let id = AccountId::new(account).expect("valid");
    deps.store.account(&id).await.expect("read").map_or(0, |account| account.balance.get())
}

async fn a_batch_debits_each_good_event_once(backend: TestBackend) {
    let (deps, _database) = deps(backend).await;
    let alice = AccountId::new("alice").expect("valid");
    deps.store.create_account(&alice).await.expect("account");
    let credit = creditflow_domain::Posting {
        account_id: alice.clone(),
        kind: creditflow_domain::EntryKind::PurchaseCredit,
        amount: Millicredits::new(10_000),
        idempotency_key: "payment:pi_seed".into(),
        correlation_id: None,
        rate_version: None,
        source_ref: None,
        reason: None,
        overdraft: creditflow_domain::Overdraft::Forbid,
        spend_cap: None,
        usage: None,
    };
    assert!(matches!(deps.store.post(&credit).await.expect("seed"), PostingOutcome::Created(_)));
    let events = vec![
        event("e1", "alice", "m1", 4_000),    // 4 credits
        event("e2", "alice", "m1", 5_000),    // 5 credits
        event("e3", "bob", "m1", 2_500),      // 2.5 credits, a new account goes negative
        event("e1", "alice", "m1", 4_000),    // duplicate within the batch
        event("e4", "alice", "nope", 1),      // unknown model
        event("e5", "alice", "m1", -3),       // negative usage
        event("e6", "bad account!", "m1", 1), // invalid account id
        event("e7", "alice", "m1", 3_000),    // 3 credits: alice to -2 credits, overdraft flagged
        event("e8", "alice", "m1", 0),        // free
        event("e5", "alice", "m1", 1_000),    // e5 corrected: the rejected copy does not shadow it
    ];
    let job = submit(&deps, Some("batch-1"), &events).await;
    let result = price_usage_batch(&job, &deps).await.expect("processed");
    assert_eq!(
        (result.debited, result.duplicates, result.rejected, result.overdrafts),
        (6, 1, 3, 3),
        "debited e1 e2 e3 e7 e8 and the corrected e5; e1 repeated; e4, the first e5 and e6 rejected; bob's and \
         alice's last two debits overdrawn"
    );
    assert_eq!(result.debited_millicredits, 15_500);
    assert_eq!(balance(&deps, "alice").await, 10_000 - 13_000);
    assert_eq!(balance(&deps, "bob").await, -2_500);
    let rejections: serde_json::Value = serde_json::from_str(&result.rejections).expect("json");
    let codes: Vec<(u64, &str, &str)> = rejections
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            (r["index"].as_u64().unwrap_or(99), r["eventId"].as_str().unwrap_or(""), r["code"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(codes, [(4, "e4", "unknown_model"), (5, "e5", "invalid_usage"), (6, "e6", "invalid_account_id")]);
    assert!(rejections[0]["reason"].as_str().is_some_and(|r| r.contains("nope")), "{rejections}");
    let stored = deps.store.usage_batch(&job.batch_id).await.expect("read").expect("exists");
    assert_eq!(stored.status, BatchStatus::Completed);
    assert_eq!(stored.result.as_ref(), Some(&result));
    let audit = deps.store.audit_log(None, 10).await.expect("audit");
    let flagged: Vec<&str> =
        audit.iter().filter(|r| r.action == "account.flag_negative_balance").map(|r| r.subject.as_str()).collect();
    assert_eq!(flagged.len(), 2, "one flag per overdrawn account: {flagged:?}");

    // The job again (a redelivery): the stored result, nothing debited twice.
    assert_eq!(price_usage_batch(&job, &deps).await.expect("again"), result);
    assert_eq!(balance(&deps, "alice").await, -3_000);

    // The same events in a new batch are duplicates; a new event is debited.
    let mut more = events[..3].to_vec();
    more.push(event("e9", "alice", "m1", 1_000));
    let second = submit(&deps, None, &more).await;
    let again = price_usage_batch(&second, &deps).await.expect("processed");
    assert_eq!((again.debited, again.duplicates, again.rejected), (1, 3, 0));
    assert_eq!(balance(&deps, "alice").await, -4_000);
    let totals = deps.store.ledger_totals(None).await.expect("totals");
    assert_eq!(totals.balances, totals.entries, "balances equal the sum of entries");

    // A resubmission under the first key answers with the first batch; other events under it are refused.
    let replay = submit(&deps, Some("batch-1"), &events).await;
    assert_eq!(replay.batch_id, job.batch_id);
    let json = serde_json::to_string(&more).expect("json");
    let reused = deps.store.submit_usage_batch("gateway", Some("batch-1"), &json, 4).await.expect("answered");
    assert_eq!(reused, BatchSubmitted::KeyReused);
}

async fn a_crash_mid_batch_is_finished_by_the_next_run(backend: TestBackend) {
    let (deps, _database) = deps(backend).await;
    let events: Vec<UsageEvent> =
        (0..3_000).map(|n| event(&format!("e{n}"), &format!("acct{}", n % 7), "m1", 1_000)).collect();
    let job = submit(&deps, None, &events).await;
    // A first run that died after debiting part of the batch: some accounts' debits are in the ledger.
    let partial: Vec<UsageEvent> = events.iter().filter(|e| e.account_id == "acct3").cloned().collect();
    let card = RateCard::from_toml(CARD).expect("card");
    let postings: Vec<_> = partial
        .iter()
        .map(|e| e.posting(&card, &format!("batch:{}", job.batch_id)).expect("valid").expect("costs"))
        .collect();
    deps.store.create_account(&AccountId::new("acct3").expect("valid")).await.expect("account");
    deps.store.post_many(&postings).await.expect("partial run");
    // It died after acct3's debits committed and before their flag (every account goes below zero here); and
    // acct5's debits are not written yet, but a flag that names this batch already exists for it (as a run that
    // died after flagging would leave it).
    let flag_of = |account: &str| NewAuditRecord {
        actor: "system:usage-batches".into(),
        action: "account.flag_negative_balance".into(),
        subject: account.into(),
        reason: Some(format!("usage batch {} took the balance below zero", job.batch_id)),
        details: "{}".into(),
    };
    assert!(deps.store.append_audit_once(&flag_of("acct5")).await.expect("flag"));
    assert!(!deps.store.append_audit_once(&flag_of("acct5")).await.expect("flag"), "a second copy is not appended");
    let result = price_usage_batch(&job, &deps).await.expect("processed");
    assert_eq!(
        (result.debited, result.duplicates, result.rejected, result.overdrafts),
        (3_000, 0, 0, 3_000),
        "the earlier debits are this batch's"
    );
    let audit = deps.store.audit_log(None, 100).await.expect("audit");
    let mut flagged: Vec<&str> =
        audit.iter().filter(|r| r.action == "account.flag_negative_balance").map(|r| r.subject.as_str()).collect();
    flagged.sort_unstable();
    assert_eq!(
        flagged,
        ["acct0", "acct1", "acct2", "acct3", "acct4", "acct5", "acct6"],
        "each account flagged once, acct3 too"
    );
    assert_eq!(result.debited_millicredits, 3_000_000);
    for n in 0..7 {
        let expected =
            -1_000 * i64::try_from(events.iter().filter(|e| e.account_id == format!("acct{n}")).count()).expect("fits");
        assert_eq!(balance(&deps, &format!("acct{n}")).await, expected, "acct{n}");
    }
}

async fn a_batch_whose_job_died_is_failed_until_retried(backend: TestBackend) {
    let (deps, _database) = deps(backend).await;
    let job = submit(&deps, None, &[event("x1", "carol", "m1", 2_000)]).await;
    let store = &deps.store;
    // What the worker's tracker records when the job runs out of attempts.
    let queued = creditflow_store::QueuedJob {
        id: format!("usage_batches:{}", job.batch_id),
        queue: "usage_batches".into(),
        payload: serde_json::json!({"batchId": job.batch_id}).to_string(),
    };
    assert_eq!(store.start_job_attempt(&queued).await.expect("start"), creditflow_store::Attempt::Run(1));
    store.end_job_attempt(&queued.id, 1, creditflow_store::AttemptEnd::Dead("database gone")).await.expect("end");
    let failed = store.usage_batch(&job.batch_id).await.expect("read").expect("exists");
    assert_eq!((failed.status, failed.last_error.as_deref()), (BatchStatus::Failed, Some("database gone")));
    // An operator retries the job; it runs and finishes the batch.
    store.retry_job(&queued.id).await.expect("answered").expect("retried");
    let result = price_usage_batch(&job, &deps).await.expect("processed");
    assert_eq!(result.debited, 1);
    let done = store.usage_batch(&job.batch_id).await.expect("read").expect("exists");
    assert_eq!(done.status, BatchStatus::Completed);
}

async fn batches_over_many_accounts_run_side_by_side(backend: TestBackend) {
    let (deps, _database) = deps(backend).await;
    // 12,000 events over 600 accounts: three transactions per batch, two of them at once; two batches over the
    // same accounts at the same time, as two workers would run them.
    let batch = |tag: &str| -> Vec<UsageEvent> {
        (0..12_000).map(|n| event(&format!("{tag}{n}"), &format!("acct{:03}", n % 600), "m1", 1_000)).collect()
    };
    let (first, second) = (batch("a"), batch("b"));
    let (first_job, second_job) = (submit(&deps, None, &first).await, submit(&deps, None, &second).await);
    // Part of the second batch's middle transaction was written by an earlier run that died.
    let card = RateCard::from_toml(CARD).expect("card");
    let earlier: Vec<_> = second
        .iter()
        .filter(|e| e.account_id == "acct300")
        .map(|e| e.posting(&card, &format!("batch:{}", second_job.batch_id)).expect("valid").expect("costs"))
        .collect();
    deps.store.create_account(&AccountId::new("acct300").expect("valid")).await.expect("account");
    deps.store.post_many(&earlier).await.expect("earlier run");
    let (a, b) = tokio::join!(price_usage_batch(&first_job, &deps), price_usage_batch(&second_job, &deps));
    for result in [a.expect("first processed"), b.expect("second processed")] {
        assert_eq!((result.debited, result.duplicates, result.rejected), (12_000, 0, 0));
        assert_eq!(result.debited_millicredits, 12_000_000);
    }
    for n in [0, 299, 300, 301, 599] {
        assert_eq!(balance(&deps, &format!("acct{n:03}")).await, -40_000, "acct{n:03}: 20 events of each batch");
    }
    let totals = deps.store.ledger_totals(None).await.expect("totals");
    assert_eq!((totals.balances.get(), totals.entries.get()), (-24_000_000, -24_000_000), "{totals:?}");
}

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(creditflow_testkit::TestBackend::Sqlite).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(creditflow_testkit::TestBackend::Postgres).await } )* }
    };
}

on_both_backends!(
    a_batch_debits_each_good_event_once,
    a_crash_mid_batch_is_finished_by_the_next_run,
    a_batch_whose_job_died_is_failed_until_retried,
    batches_over_many_accounts_run_side_by_side
);
