//! Usage debits priced and posted by the store (what a reconcile asks for), on every backend.

use creditflow_domain::{
    AccountId, AccountSettings, AccountStatus, Millicredits, PostingInvalid, PostingOutcome, PricingError, RateCard,
    RateVersion, Usage,
};
use creditflow_store::{Coalescer, DebitAnswer, EMAILS_QUEUE, Store, UsageDebit};
use time::{Duration, OffsetDateTime};

use super::helpers::{Db, audit, purchase};

/// Stores a card of `version` pricing model `m`: `x` at `x_credits` a unit, `free` at nothing; ceil rounding.
async fn card(db: &Db, version: &str, x_credits: u32) -> RateVersion {
    let text = format!("version = \"{version}\"\nrounding = \"ceil\"\n[models.m]\nx = {x_credits}\nfree = 0\n");
    db.store.add_rate_card(&RateCard::from_toml(&text).expect("card"), &text).await.expect("add");
    RateVersion::new(version).expect("valid")
}

async fn activate(db: &Db, version: &RateVersion, at: OffsetDateTime) {
    db.store.activate_rate_card(version, at, &audit("rate_card.activate", version.as_str())).await.expect("activate");
}

/// A debit of `units` of `x` on model `m` (`units` 0: of `free`).
fn debit(id: &AccountId, key: &str, units: u64) -> UsageDebit {
    let unit = if units == 0 { "free" } else { "x" };
    UsageDebit {
        account_id: id.clone(),
        idempotency_key: key.to_owned(),
        correlation_id: Some(format!("corr-{key}")),
        model: "m".to_owned(),
        usage: Usage::from([(unit.to_owned(), units.max(1))]),
        fingerprint: format!("usage:{key}:{units}"),
    }
}

async fn debit_one(db: &Db, request: UsageDebit) -> DebitAnswer {
    let mut answers = db.store.debit_usage(&[request], OffsetDateTime::now_utc()).await.expect("debited");
    assert_eq!(answers.len(), 1);
    answers.remove(0)
}

fn created(answer: DebitAnswer) -> creditflow_domain::Entry {
    match answer {
        DebitAnswer::Posted(PostingOutcome::Created(entry)) => entry,
        other => panic!("expected a created entry, got {other:?}"),
    }
}

pub(crate) async fn debits_are_priced_with_the_card_in_force_and_replayed_by_key(db: &Db) {
    let now = OffsetDateTime::now_utc();
    let id = db.account_with("acct_priced", 10_000).await;
    assert_eq!(debit_one(db, debit(&id, "k0", 1)).await, DebitAnswer::NoRateCard, "no card yet");
    let v1 = card(db, "v1", 1).await;
    activate(db, &v1, now - Duration::hours(1)).await;
    let first = created(debit_one(db, debit(&id, "k1", 2)).await);
    assert_eq!((first.amount, first.balance_after), (Millicredits::new(-2_000), Millicredits::new(8_000)));
    assert_eq!(first.rate_version.as_ref().map(RateVersion::as_str), Some("v1"));
    assert_eq!(first.source_ref.as_deref(), Some("usage:k1:2"));
    assert_eq!(first.correlation_id.as_deref(), Some("corr-k1"));
    // A new card activated now is seen by the very next debit (this process's copy notices the new activation).
    let v2 = card(db, "v2", 3).await;
    activate(db, &v2, OffsetDateTime::now_utc()).await;
    let second = created(debit_one(db, debit(&id, "k2", 1)).await);
    assert_eq!(
        (second.amount, second.rate_version.as_ref().map(RateVersion::as_str)),
        (Millicredits::new(-3_000), Some("v2"))
    );
    // A retry is answered with its first entry, though the new card prices it differently.
    assert_eq!(
        debit_one(db, debit(&id, "k1", 2)).await,
        DebitAnswer::Posted(PostingOutcome::ExistsWithDifferentContent(first.clone()))
    );
    // Usage the card cannot price: an error, unless its key was used before (then the first entry answers).
    let mut unknown = debit(&id, "k1", 2);
    "gone".clone_into(&mut unknown.model);
    assert_eq!(debit_one(db, unknown.clone()).await, DebitAnswer::Replay(first));
    "k3".clone_into(&mut unknown.idempotency_key);
    assert!(matches!(debit_one(db, unknown).await, DebitAnswer::Unpriced(PricingError::UnknownModel { .. })));
    // Free usage writes nothing and tells the balance.
    let free = debit_one(db, debit(&id, "k4", 0)).await;
    assert_eq!(free, DebitAnswer::Free { balance: Millicredits::new(5_000), rate_version: v2.clone() });
    // A key no posting may carry is refused alone, nothing written.
    let bad = debit(&id, "with space", 1);
    assert_eq!(debit_one(db, bad).await, DebitAnswer::Invalid(PostingInvalid::IdempotencyKey));
    // A debit the balance does not cover: the shortfall, and the key stays free.
    created(debit_one(db, debit(&id, "k5", 1)).await);
    let short =
        PostingOutcome::InsufficientFunds { balance: Millicredits::new(2_000), shortfall: Millicredits::new(1_000) };
    assert_eq!(debit_one(db, debit(&id, "k6", 1)).await, DebitAnswer::Posted(short));
    db.assert_balance(&id, 2_000).await;
    assert!(db.store.entry_by_key(&id, "k6").await.expect("read").is_none());
    // A first debit of an account nobody credited creates the account, with nothing to pay with.
    let nobody = AccountId::new("acct_priced_nobody").expect("valid");
    let answer = debit_one(db, debit(&nobody, "n1", 1)).await;
    let expected =
        PostingOutcome::InsufficientFunds { balance: Millicredits::ZERO, shortfall: Millicredits::new(3_000) };
    assert_eq!(answer, DebitAnswer::Posted(expected));
    db.assert_balance(&nobody, 0).await;
}

pub(crate) async fn debits_respect_the_daily_cap_and_queue_the_low_balance_notice(db: &Db) {
    let v1 = card(db, "v1", 1).await;
    activate(db, &v1, OffsetDateTime::now_utc() - Duration::hours(1)).await;
    let id = db.account_with("acct_capped", 10_000).await;
    let settings = AccountSettings {
        email: Some("owner@example.com".to_owned()),
        low_balance_threshold: Some(Millicredits::new(7_500)),
        daily_spend_cap: Some(Millicredits::new(3_500)),
        ..AccountSettings::default()
    };
    db.store.put_settings(&id, &settings).await.expect("settings");
    let group: Vec<UsageDebit> = (1..=4).map(|n| debit(&id, &format!("c{n}"), 1)).collect();
    let answers = db.store.debit_usage(&group, OffsetDateTime::now_utc()).await.expect("debited");
    let posted: Vec<_> =
        answers.iter().map(|answer| matches!(answer, DebitAnswer::Posted(PostingOutcome::Created(_)))).collect();
    assert_eq!(posted, [true, true, true, false], "{answers:?}");
    assert_eq!(
        answers[3],
        DebitAnswer::Posted(PostingOutcome::SpendCapExceeded {
            limit: Millicredits::new(3_500),
            spent: Millicredits::new(3_000)
        })
    );
    // One debit more, alone: today's spend is read from the ledger.
    let again = debit_one(db, debit(&id, "c5", 1)).await;
    assert!(matches!(again, DebitAnswer::Posted(PostingOutcome::SpendCapExceeded { .. })), "{again:?}");
    db.assert_balance(&id, 7_000).await;
    // The crossing under 7,500 queued one low-balance email.
    let emails = db.store.unrelayed_outbox(100).await.expect("outbox");
    let notices = emails
        .iter()
        .filter(|message| message.queue == EMAILS_QUEUE && message.payload.contains("low_balance"))
        .count();
    assert_eq!(notices, 1, "{emails:?}");
}

pub(crate) async fn coalesced_debits_answer_as_if_posted_alone(db: &Db) {
    let v1 = card(db, "v1", 1).await;
    activate(db, &v1, OffsetDateTime::now_utc() - Duration::hours(1)).await;
    // 96 concurrent debits of 1,000 through one coalescer on 40,500: 40 fit; 16 of them repeat a key another uses.
    let id = db.account_with("acct_coalesced", 40_500).await;
    let coalescer = Coalescer::new();
    let tasks: Vec<_> = (0..96)
        .map(|task| {
            let (coalescer, store, id) = (coalescer.clone(), db.store.clone(), id.clone());
            let key = if task < 32 { format!("same-{}", task % 16) } else { format!("co-{task}") };
            tokio::spawn(async move { (key.clone(), coalescer.debit(&store, debit(&id, &key, 1)).await) })
        })
        .collect();
    let (mut entries, mut replayed, mut refused) = (Vec::new(), 0, 0);
    for task in tasks {
        let (key, answer) = task.await.expect("task ran");
        match answer.expect("debit answered") {
            DebitAnswer::Posted(PostingOutcome::Created(entry)) => {
                assert_eq!(entry.idempotency_key, key);
                assert!(!entry.balance_after.is_negative(), "{entry:?}");
                entries.push(entry);
            }
            DebitAnswer::Posted(PostingOutcome::Exists(entry)) => {
                assert_eq!(entry.idempotency_key, key);
                replayed += 1;
            }
            DebitAnswer::Posted(PostingOutcome::InsufficientFunds { balance, shortfall }) => {
                assert_eq!(balance.checked_add(shortfall).expect("small"), Millicredits::new(1_000));
                refused += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // Exactly what one transaction per debit gives: 40 entries, each repeated key answered by its first entry (or
    // refused like it, when the funds had run out before it), the rest refused for funds.
    assert_eq!(entries.len(), 40, "{replayed} replayed, {refused} refused");
    assert_eq!(entries.len() + replayed + refused, 96);
    let mut keys: Vec<&str> = entries.iter().map(|entry| entry.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 40, "no key debited twice");
    db.assert_balance(&id, 500).await;
    let stored = db.store.entries(&id, 0, 100).await.expect("entries");
    let sequences: Vec<i64> = stored.iter().map(|entry| entry.sequence).collect();
    assert_eq!(sequences, (1..=41).collect::<Vec<_>>(), "no gaps, no duplicates");
    // Debits of other accounts through the same coalescer get their own answers.
    let other = db.account_with("acct_coalesced_other", 5_000).await;
    let poor = db.account_with("acct_coalesced_poor", 500).await;
    let (a, b) = tokio::join!(
        coalescer.debit(&db.store, debit(&other, "o-1", 2)),
        coalescer.debit(&db.store, debit(&poor, "p-1", 2))
    );
    assert!(matches!(a.expect("answered"), DebitAnswer::Posted(PostingOutcome::Created(_))));
    let expected =
        PostingOutcome::InsufficientFunds { balance: Millicredits::new(500), shortfall: Millicredits::new(1_500) };
    assert_eq!(b.expect("answered"), DebitAnswer::Posted(expected));
    db.assert_balance(&other, 3_000).await;
}

/// A second store on the same database stands for another process. For each thing another process may change, an
/// account is debited once through the first store (which then knows the state its write left), the change is made
/// through the second, and the next debit through the first must answer what a fresh read gives.
pub(crate) async fn debits_notice_what_another_process_changed(db: &Db) {
    let v1 = card(db, "v1", 1).await;
    activate(db, &v1, OffsetDateTime::now_utc() - Duration::hours(1)).await;
    let other = Store::connect(&db.database.url, 4).await.expect("a second store");
    let first_debit = |name: &'static str| async move {
        let id = db.account_with(name, 10_000).await;
        created(debit_one(db, debit(&id, &format!("{name}-1"), 1)).await);
        id
    };

    // Another posting moved the balance and the sequence.
    let moved = first_debit("acct_known_moved").await;
    let credit = other.post(&purchase(&moved, "elsewhere", 5_000)).await.expect("posted elsewhere");
    assert!(matches!(credit, PostingOutcome::Created(_)), "{credit:?}");
    let entry = created(debit_one(db, debit(&moved, "moved-2", 1)).await);
    assert_eq!((entry.sequence, entry.balance_after), (4, Millicredits::new(13_000)));
    db.assert_balance(&moved, 13_000).await;

    // The account was frozen.
    let frozen = first_debit("acct_known_frozen").await;
    let freeze = audit("account.freeze", frozen.as_str());
    other.set_account_status(&frozen, AccountStatus::Frozen, &freeze).await.expect("frozen elsewhere");
    let answer = debit_one(db, debit(&frozen, "frozen-2", 1)).await;
    assert_eq!(answer, DebitAnswer::Posted(PostingOutcome::AccountFrozen));
    db.assert_balance(&frozen, 9_000).await;

    // A daily cap was set under what the next debit would make today's usage.
    let capped = first_debit("acct_known_capped").await;
    let cap = AccountSettings { daily_spend_cap: Some(Millicredits::new(1_500)), ..AccountSettings::default() };
    other.put_settings(&capped, &cap).await.expect("capped elsewhere");
    let answer = debit_one(db, debit(&capped, "capped-2", 1)).await;
    let refused = PostingOutcome::SpendCapExceeded { limit: Millicredits::new(1_500), spent: Millicredits::new(1_000) };
    assert_eq!(answer, DebitAnswer::Posted(refused));
    db.assert_balance(&capped, 9_000).await;

    // A low-balance threshold was set that the next debit crosses: it queues the notice.
    let notified = first_debit("acct_known_notified").await;
    let threshold = AccountSettings {
        email: Some("owner@example.com".to_owned()),
        low_balance_threshold: Some(Millicredits::new(8_500)),
        ..AccountSettings::default()
    };
    other.put_settings(&notified, &threshold).await.expect("threshold set elsewhere");
    created(debit_one(db, debit(&notified, "notified-2", 1)).await);
    let outbox = db.store.unrelayed_outbox(100).await.expect("outbox");
    let notices = outbox
        .iter()
        .filter(|message| message.queue == EMAILS_QUEUE && message.payload.contains("acct_known_notified"))
        .count();
    assert_eq!(notices, 1, "{outbox:?}");

    // A new rate card was activated.
    let repriced = first_debit("acct_known_repriced").await;
    let v2 = card(db, "v2", 3).await;
    other.activate_rate_card(&v2, OffsetDateTime::now_utc(), &audit("rate_card.activate", "v2")).await.expect("v2");
    let entry = created(debit_one(db, debit(&repriced, "repriced-2", 1)).await);
    assert_eq!((entry.amount, entry.rate_version), (Millicredits::new(-3_000), Some(v2)));
    db.assert_balance(&repriced, 6_000).await;

    // The key was used by a debit elsewhere: answered with that entry, not written twice.
    let replayed = first_debit("acct_known_replayed").await;
    let elsewhere = other.debit_usage(&[debit(&replayed, "replayed-2", 1)], OffsetDateTime::now_utc()).await;
    let first = created(elsewhere.expect("debited elsewhere").remove(0));
    let answer = debit_one(db, debit(&replayed, "replayed-2", 1)).await;
    assert_eq!(answer, DebitAnswer::Posted(PostingOutcome::Exists(first)));
    db.assert_balance(&replayed, 4_000).await;
    other.close().await;
}
