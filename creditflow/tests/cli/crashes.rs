//! Crash consistency of purchase fulfilment and autoreload: worker processes on PostgreSQL and Redis are killed with
//! SIGKILL again and again while they credit Stripe payments (each delivered twice) and charge saved cards through a
//! localstripe of the test's own; once one worker is left to finish, every payment is credited once, every reload
//! charged the card once and credited once, and balances equal the sum of their entries. (Usage batches have their
//! own crash test in `cli.rs`.)

use std::process::Command;
use std::time::{Duration, Instant};

use creditflow_testkit::OwnLocalstripe;

use super::faults::{count, pay};
use super::{Server, Shared, run, spawn_worker};

const KEY: &str = "sk_test_crashes";
/// Kill rounds; each brings new work so that every kill can land in the middle of some.
const ROUNDS: u64 = 7;
/// New payments per round (each sent twice: once before the round's worker starts, once while it runs).
const PAYMENTS: u64 = 40;
/// New accounts per round whose debit asks for an autoreload.
const RELOADS: u64 = 6;

/// An account with autoreload under 1,000 credits (Starter packs), a Stripe customer at `stripe` holding a card
/// that pays, and 2,000 credits; then a 1,500-credit debit, which asks for a reload (its job waits in the outbox).
async fn account_asking_for_a_reload(store: &creditflow_store::Store, stripe: &str, id: &str) {
    use creditflow_domain::{AccountId, AccountSettings, Autoreload, EntryKind, Millicredits, Overdraft, Posting};
    let account = AccountId::new(id.to_owned()).expect("valid");
    store.create_account(&account).await.expect("account");
    let settings = AccountSettings {
        autoreload: Autoreload {
            enabled: true,
            threshold: Some(Millicredits::new(1_000_000)),
            pack: Some("starter".into()),
            monthly_cap_usd_cents: None,
        },
        ..AccountSettings::default()
    };
    store.put_settings(&account, &settings).await.expect("settings");
    let client = reqwest::Client::new();
    let customer: serde_json::Value = client
        .post(format!("{stripe}/v1/customers"))
        .basic_auth(KEY, Some(""))
        .form(&[("metadata[creditflow_account_id]", id)])
        .send()
        .await
        .expect("localstripe answers")
        .json()
        .await
        .expect("a customer");
    let customer = customer["id"].as_str().expect("customer id").to_owned();
    let attached = client
        .post(format!("{stripe}/v1/payment_methods/pm_card_visa/attach"))
        .basic_auth(KEY, Some(""))
        .form(&[("customer", customer.as_str())])
        .send()
        .await
        .expect("localstripe answers");
    assert!(attached.status().is_success());
    store.remember_stripe_customer(&account, &customer).await.expect("remembered");
    for (key, kind, amount) in [("seed", EntryKind::Adjustment, 2_000_000), ("use", EntryKind::UsageDebit, -1_500_000)]
    {
        let posting = Posting {
            account_id: account.clone(),
            kind,
            amount: Millicredits::new(amount),
            idempotency_key: key.into(),
            correlation_id: None,
            rate_version: (kind == EntryKind::UsageDebit)
                .then(|| creditflow_domain::RateVersion::new("v1").expect("valid")),
            source_ref: None,
            reason: (kind == EntryKind::Adjustment).then(|| "test".to_owned()),
            overdraft: Overdraft::Allow,
            spend_cap: None,
            usage: None,
        };
        store.post(&posting).await.expect("posted");
    }
}

/// Every PaymentIntent localstripe holds, as (account, status) pairs.
async fn charges_at(stripe: &str) -> Vec<(String, String)> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", "100".to_owned())];
        if let Some(after) = &after {
            query.push(("starting_after", after.clone()));
        }
        let page: serde_json::Value = reqwest::Client::new()
            .get(format!("{stripe}/v1/payment_intents"))
            .basic_auth(KEY, Some(""))
            .query(&query)
            .send()
            .await
            .expect("localstripe answers")
            .json()
            .await
            .expect("a list");
        let data = page["data"].as_array().expect("data");
        for intent in data {
            let account = intent["metadata"]["creditflow_account_id"].as_str().unwrap_or_default().to_owned();
            all.push((account, intent["status"].as_str().unwrap_or_default().to_owned()));
        }
        if page["has_more"] != true || data.is_empty() {
            return all;
        }
        after = data.last().and_then(|intent| intent["id"].as_str()).map(str::to_owned);
    }
}

#[tokio::test]
async fn purchases_and_autoreloads_survive_workers_killed_again_and_again() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let shared = Shared::new().await;
    let database = &shared.database;
    let stripe = OwnLocalstripe::start();
    let secret = "whsec_crashes";
    let mut envs = shared.envs();
    envs.extend([
        ("CREDITFLOW_QUEUE_REQUEUE_AFTER_SECONDS", "5"),
        // A killed worker's claim on a reload lapses in 2 s (60 by default), so the test does not wait for it.
        ("CREDITFLOW_AUTORELOAD_CLAIM_LEASE_SECONDS", "2"),
        ("CREDITFLOW_STRIPE__WEBHOOK_SECRET", secret),
        ("CREDITFLOW_STRIPE__SECRET_KEY", KEY),
        ("CREDITFLOW_STRIPE__API_BASE", stripe.url.as_str()),
    ]);
    let (code, _, stderr) = run(dir.path(), &["migrate"], &envs);
    assert_eq!(code, 0, "{stderr}");
    let (api, _) = Server::start_role(dir.path(), "api", &envs);
    let store = creditflow_store::Store::connect(&database.url, 4).await.expect("the ledger");
    let pool = sqlx::PgPool::connect(&database.url).await.expect("a connection for the checks");
    let client = reqwest::Client::new();
    // Progress: a credit written, or a reload claimed (its charge may be under way).
    let progress = "SELECT (SELECT COUNT(*) FROM ledger_entries WHERE kind IN ('purchase_credit', 'autoreload_credit')) \
                    + (SELECT CAST(COALESCE(SUM(attempts), 0) AS BIGINT) FROM autoreloads)";
    let credits = "SELECT COUNT(*) FROM ledger_entries WHERE kind IN ('purchase_credit', 'autoreload_credit')";
    let (mut kills, mut mid_work, mut mid_charge) = (0, 0, 0);
    for round in 0..ROUNDS {
        for n in 0..RELOADS {
            account_asking_for_a_reload(&store, &stripe.url, &format!("ar{round}-{n}")).await;
        }
        let prefix = format!("buy{round}-");
        pay(&client, &api.base_url, secret, &prefix, 0, PAYMENTS, PAYMENTS / 2).await;
        let before = count(&pool, progress).await;
        let mut doomed = spawn_worker(dir.path(), &envs);
        // Stripe delivers the round's payments again while the worker credits them.
        let redelivery = {
            let (client, base_url) = (client.clone(), api.base_url.clone());
            tokio::spawn(async move { pay(&client, &base_url, secret, &prefix, 0, PAYMENTS, PAYMENTS / 2).await })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&pool, progress).await == before {
            assert!(Instant::now() < deadline, "round {round}: the worker never made progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Somewhere in the next 0 to 120 ms: before, during or after a charge, a credit or a job's record.
        let nanos = u64::from(time::OffsetDateTime::now_utc().nanosecond());
        tokio::time::sleep(Duration::from_millis((nanos / 1_000 + round * 41) % 120)).await;
        doomed.kill().expect("SIGKILL");
        doomed.wait().expect("reaped");
        kills += 1;
        // A reload claimed but not settled: the worker died between its claim and its credit.
        mid_charge += count(&pool, "SELECT COUNT(*) FROM autoreloads WHERE state = 'charging'").await;
        let expected = i64::try_from((round + 1) * (PAYMENTS + RELOADS)).expect("small");
        if count(&pool, credits).await < expected {
            mid_work += 1;
        }
        redelivery.await.expect("redelivered");
    }
    assert!(mid_work >= 4, "only {mid_work} of {kills} kills landed before the work was done");
    assert!(mid_charge >= 1, "no kill left a reload between its claim and its credit");
    eprintln!("{kills} kills, {mid_work} before the round's work was done, {mid_charge} reloads left mid-charge");

    let mut survivor = spawn_worker(dir.path(), &envs);
    let purchases = i64::try_from(ROUNDS * PAYMENTS).expect("small");
    let reloads = i64::try_from(ROUNDS * RELOADS).expect("small");
    let settled = "SELECT COUNT(*) FROM autoreloads WHERE state = 'succeeded'";
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&pool, credits).await < purchases + reloads || count(&pool, settled).await < reloads {
        let states: Vec<(String, i64)> = sqlx::query_as("SELECT state, COUNT(*) FROM autoreloads GROUP BY state")
            .fetch_all(&pool)
            .await
            .expect("read");
        let jobs: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state")
                .fetch_all(&pool)
                .await
                .expect("read");
        assert!(
            Instant::now() < deadline,
            "after {kills} kills: {} credits of {}; reloads {states:?}; jobs {jobs:?}",
            count(&pool, credits).await,
            purchases + reloads
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    each_payment_and_reload_counted_once(&store, &pool, &stripe.url, kills).await;
    let status = Command::new("kill").args(["-TERM", &survivor.id().to_string()]).status().expect("signal");
    assert!(status.success());
    assert!(survivor.wait().expect("exits").success());
    drop(client);
    api.terminate();
}

/// Each payment credited once, however often it was delivered and whenever its worker died; each reload charged the
/// card once and credited once (one PaymentIntent per account at Stripe, succeeded); balances the sum of entries.
async fn each_payment_and_reload_counted_once(
    store: &creditflow_store::Store,
    pool: &sqlx::PgPool,
    stripe: &str,
    kills: usize,
) {
    let purchases = i64::try_from(ROUNDS * PAYMENTS).expect("small");
    let reloads = i64::try_from(ROUNDS * RELOADS).expect("small");
    let bought = "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'purchase_credit'";
    assert_eq!(count(pool, bought).await, purchases, "one credit per payment after {kills} kills");
    let distinct = "SELECT COUNT(DISTINCT idempotency_key) FROM ledger_entries WHERE kind = 'purchase_credit'";
    assert_eq!(count(pool, distinct).await, purchases);
    // Each reload charged the card once and credited once: one PaymentIntent per account at Stripe, succeeded.
    let charges = charges_at(stripe).await;
    assert_eq!(i64::try_from(charges.len()).expect("small"), reloads, "one charge per reload: {charges:?}");
    for round in 0..ROUNDS {
        for n in 0..RELOADS {
            let account = format!("ar{round}-{n}");
            let at_stripe: Vec<&(String, String)> = charges.iter().filter(|(a, _)| *a == account).collect();
            assert_eq!(at_stripe.len(), 1, "{account}: charged once");
            assert_eq!(at_stripe[0].1, "succeeded");
            let id = creditflow_domain::AccountId::new(account.clone()).expect("valid");
            let balance = store.account(&id).await.expect("read").expect("exists").balance.get();
            assert_eq!(balance, 500_000 + 5_000_000, "{account}: one Starter pack credited once");
        }
    }
    let reloaded = "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'autoreload_credit'";
    assert_eq!(count(pool, reloaded).await, reloads);
    let totals = store.ledger_totals(None).await.expect("totals");
    assert_eq!(totals.balances, totals.entries, "balances are the sum of their entries");
    let expected = purchases * 5_000_000 + reloads * (500_000 + 5_000_000);
    assert_eq!(totals.balances.get(), expected);
    let unfinished = "SELECT COUNT(*) FROM jobs WHERE state <> 'done' AND queue IN ('stripe_events', 'autoreloads')";
    assert_eq!(count(pool, unfinished).await, 0, "every job of the payments and reloads ends done");
}
