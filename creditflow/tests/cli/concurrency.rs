//! Concurrency across processes: two API processes and two worker processes share one PostgreSQL and one Redis, as a
//! scaled-out deployment does. Thousands of reconciles (each key sent to both APIs at once) and Stripe payments (each
//! delivered four times, to both APIs) land on the same accounts together; at the end the books hold: balances equal
//! their entries and the liability what was bought and spent, one entry per idempotency key and per payment, one
//! stored event per Stripe event, and every job done.

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use super::faults::{count, mint, pay};
use super::{Server, Shared, Worker, run, spawn_worker};

const ACCOUNTS: u64 = 40;
const FUNDING: i64 = 100_000_000;
/// Distinct reconcile keys; each is sent to both APIs at the same moment.
const KEYS: u64 = 2_000;
/// Distinct Stripe payments; each is delivered twice to each API.
const PAYMENTS: u64 = 400;
/// gpt-4o input at 0.0025 credits a token under the shipped `ceil` card: 1,000 tokens cost 3 credits.
const CHARGE: i64 = 3_000;

fn stop(mut worker: Worker, name: &str) {
    let status = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().expect("signal");
    assert!(status.success());
    assert!(worker.wait().expect("exits").success(), "{name} stopped cleanly");
}

/// Funds every account through the admin API, alternating between the two processes.
async fn fund(client: &reqwest::Client, bases: &[String], admin: &str) {
    for n in 0..ACCOUNTS {
        let base = &bases[usize::try_from(n % 2).expect("small")];
        let response = client
            .post(format!("{base}/api/admin/accounts/cc{n}/adjustments"))
            .bearer_auth(admin)
            .json(&serde_json::json!({"idempotencyKey": "fund", "amountMillicredits": FUNDING, "reason": "test"}))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    }
}

#[tokio::test]
async fn two_apis_and_two_workers_keep_the_books_under_concurrent_load() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let shared = Shared::new().await;
    let database = &shared.database;
    let secret = "whsec_concurrency";
    let mut envs = shared.envs();
    // Four processes of 8 connections each: what a scaled-out deployment budgets, and room on the test server's 100
    // connections for the tests running beside this one.
    envs.extend([
        ("CREDITFLOW_STRIPE__WEBHOOK_SECRET", secret),
        ("CREDITFLOW_RATE_LIMIT_PER_MINUTE", "100000000"),
        ("CREDITFLOW_DATABASE_MAX_CONNECTIONS", "8"),
    ]);
    let (code, _, stderr) = run(dir.path(), &["migrate"], &envs);
    assert_eq!(code, 0, "{stderr}");
    let apis = [Server::start_role(dir.path(), "api", &envs).0, Server::start_role(dir.path(), "api", &envs).0];
    let workers = [spawn_worker(dir.path(), &envs), spawn_worker(dir.path(), &envs)];
    let client = reqwest::Client::new();
    let (admin, service) = (mint("ops", "admin"), mint("billing", "service"));
    let bases: Vec<String> = apis.iter().map(|api| api.base_url.clone()).collect();
    fund(&client, &bases, &admin).await;

    // Payments for the same accounts, each delivered twice to each API, while the reconciles run.
    let payments = {
        let (client, bases) = (client.clone(), bases.clone());
        tokio::spawn(async move {
            let deliveries = (0..4).map(|n| pay(&client, &bases[n % 2], secret, "cc", 0, PAYMENTS, ACCOUNTS));
            futures_util::future::join_all(deliveries).await;
        })
    };
    // Each key goes to both APIs at the same moment; 16 keys are in flight at a time.
    let reconcile = |base: String, key: u64| {
        let request = client.post(format!("{base}/api/usage/reconcile")).bearer_auth(&service).json(
            &serde_json::json!({"idempotencyKey": format!("k{key}"), "accountId": format!("cc{}", key % ACCOUNTS),
                "model": "gpt-4o", "usage": {"input_tokens": 1_000}}),
        );
        async move {
            let response = request.send().await.expect("answered");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, body)
        }
    };
    let started = Instant::now();
    let answers: Vec<(u64, [(u16, serde_json::Value); 2])> = futures_util::stream::iter(0..KEYS)
        .map(|key| {
            let both = futures_util::future::join(reconcile(bases[0].clone(), key), reconcile(bases[1].clone(), key));
            async move {
                let (a, b) = both.await;
                (key, [a, b])
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let took = started.elapsed();
    payments.await.expect("every delivery answered 200");
    // Both answers to a key are the same debit: one entry, one charge.
    for (key, [a, b]) in &answers {
        assert_eq!((a.0, b.0), (200, 200), "k{key}: {a:?} {b:?}");
        assert_eq!(a.1["entryId"], b.1["entryId"], "k{key}: one entry for both answers");
        assert!(a.1["entryId"].is_string(), "k{key}: {a:?}");
        assert_eq!(
            (a.1["chargeMillicredits"].as_i64(), b.1["chargeMillicredits"].as_i64()),
            (Some(CHARGE), Some(CHARGE))
        );
    }

    let pool = &sqlx::PgPool::connect(&database.url).await.expect("a connection for the checks");
    let purchases = i64::try_from(PAYMENTS).expect("small");
    let credited = "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'purchase_credit'";
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(pool, credited).await < purchases {
        assert!(Instant::now() < deadline, "{} of {purchases} payments credited", count(pool, credited).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    the_books_hold(&database.url, pool).await;
    eprintln!("{} reconciles (2 per key) on two APIs in {took:?}", 2 * KEYS);

    let [first, second] = workers;
    stop(first, "the first worker");
    stop(second, "the second worker");
    drop(client);
    for api in apis {
        api.terminate();
    }
}

/// Balances equal their entries and the liability what was funded, bought and spent; one entry per key and per
/// payment, one stored event and one job per Stripe event, every job done.
async fn the_books_hold(url: &str, pool: &sqlx::PgPool) {
    let purchases = i64::try_from(PAYMENTS).expect("small");
    let keys = i64::try_from(KEYS).expect("small");
    let accounts = i64::try_from(ACCOUNTS).expect("small");
    let store = creditflow_store::Store::connect(url, 2).await.expect("the ledger");
    let totals = store.ledger_totals(None).await.expect("totals");
    assert_eq!(totals.entry_count, accounts + purchases + keys, "one entry per funding, payment and key");
    assert_eq!(totals.balances, totals.entries, "balances are the sum of their entries");
    assert_eq!(totals.balances.get(), accounts * FUNDING + purchases * 5_000_000 - keys * CHARGE, "the liability");
    let drifted = "SELECT COUNT(*) FROM accounts a WHERE balance_millicredits <> \
                   (SELECT COALESCE(SUM(amount_millicredits), 0) FROM ledger_entries e WHERE e.account_id = a.id)";
    assert_eq!(count(pool, drifted).await, 0, "each account's balance is the sum of its entries");
    let doubled = "SELECT COUNT(*) FROM (SELECT 1 FROM ledger_entries GROUP BY account_id, idempotency_key \
                   HAVING COUNT(*) > 1) d";
    assert_eq!(count(pool, doubled).await, 0, "no idempotency key twice on an account");
    let distinct_payments = "SELECT COUNT(DISTINCT idempotency_key) FROM ledger_entries WHERE kind = 'purchase_credit'";
    assert_eq!(count(pool, distinct_payments).await, purchases, "one credit per payment");
    assert_eq!(count(pool, "SELECT COUNT(*) FROM stripe_events").await, purchases, "each event stored once");
    let gaps = "SELECT COUNT(*) FROM accounts a WHERE last_sequence <> \
                (SELECT COUNT(*) FROM ledger_entries e WHERE e.account_id = a.id)";
    assert_eq!(count(pool, gaps).await, 0, "each account's sequence has no gap and no repeat");
    let unfinished = "SELECT COUNT(*) FROM jobs WHERE queue = 'stripe_events' AND state <> 'done'";
    assert_eq!(count(pool, unfinished).await, 0, "every payment's job done");
    let stripe_jobs = "SELECT COUNT(*) FROM jobs WHERE queue = 'stripe_events'";
    assert_eq!(count(pool, stripe_jobs).await, purchases, "one job per stored event, however often delivered");
}
