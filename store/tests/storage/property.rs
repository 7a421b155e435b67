//! A property test in the manner of TigerBeetle's auditor: thousands of random postings (duplicates, conflicting
//! keys, shortfalls, overflows, freezes) are applied to the store and to a tiny in-memory reference model, and every
//! outcome and balance must agree. Accounts are worked on by concurrent tasks, one per account per round, so the
//! store sees parallel writers while each account's order stays deterministic for the model.

use std::collections::{BTreeMap, HashMap};

use creditflow_domain::{AccountId, AccountStatus, EntryKind, Millicredits, Overdraft, Posting, PostingOutcome};
use creditflow_domain::{RateVersion, SpendCap, UsageRecord};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use time::OffsetDateTime;

use super::helpers::{Db, audit};

const ACCOUNTS: usize = 4;
const KEYS_PER_ACCOUNT: u8 = 12;
/// Three of these fit an account; a fourth overflows.
const HUGE: i64 = i64::MAX / 3;

#[derive(Clone, Debug)]
enum Op {
    Post {
        account: usize,
        key: u8,
        kind: EntryKind,
        magnitude: i64,
        negative: bool,
        correlation: u8,
        overdraft: bool,
        /// A spend cap on usage since the epoch, in millicredits.
        cap: Option<i64>,
    },
    /// Repeat the n-th earlier posting of the case exactly (modulo how many there were).
    Replay(usize),
    SetFrozen {
        account: usize,
        frozen: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        1 => Just(EntryKind::PurchaseCredit),
        1 => Just(EntryKind::AutoreloadCredit),
        4 => Just(EntryKind::UsageDebit),
        1 => Just(EntryKind::RefundDebit),
        1 => Just(EntryKind::Adjustment),
    ];
    let cap = prop_oneof![3 => Just(None), 1 => (1i64..40_000).prop_map(Some)];
    let post = (
        0..ACCOUNTS,
        0..KEYS_PER_ACCOUNT,
        kind,
        1i64..4_000,
        any::<bool>(),
        0u8..2,
        prop::bool::weighted(0.2),
        0u8..40,
        cap,
    )
        .prop_map(|(account, key, kind, magnitude, negative, correlation, overdraft, huge, cap)| {
            let credit = matches!(kind, EntryKind::PurchaseCredit | EntryKind::AutoreloadCredit);
            let magnitude = if huge == 0 && credit { HUGE } else { magnitude };
            Op::Post { account, key, kind, magnitude, negative, correlation, overdraft, cap }
        });
    prop_oneof![
        12 => post,
        3 => any::<usize>().prop_map(Op::Replay),
        1 => (0..ACCOUNTS, prop::bool::weighted(0.6)).prop_map(|(account, frozen)| Op::SetFrozen { account, frozen }),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    Created { sequence: i64, balance_after: i64 },
    Exists { sequence: i64 },
    Conflict { sequence: i64 },
    Frozen,
    CapExceeded { spent: i64 },
    Overflow,
    Insufficient { shortfall: i64 },
}

#[derive(Default)]
struct ModelAccount {
    balance: i64,
    frozen: bool,
    /// Usage debited so far (every case runs within one spend-cap window: since the epoch).
    usage: i64,
    /// key -> (content, sequence); entries in order as `(key, amount, balance_after)`.
    keys: HashMap<String, (String, i64)>,
    entries: Vec<(String, i64, i64)>,
}

impl ModelAccount {
    fn apply(&mut self, posting: &Posting) -> Expected {
        let content = format!(
            "{:?}|{}|{:?}|{:?}|{:?}",
            posting.kind,
            posting.amount.get(),
            posting.correlation_id,
            posting.rate_version,
            posting.reason
        );
        if let Some((stored, sequence)) = self.keys.get(&posting.idempotency_key) {
            let sequence = *sequence;
            return if *stored == content { Expected::Exists { sequence } } else { Expected::Conflict { sequence } };
        }
        if self.frozen && posting.kind == EntryKind::UsageDebit {
            return Expected::Frozen;
        }
        let amount = posting.amount.get();
        if let Some(cap) = posting.spend_cap.filter(|_| posting.kind == EntryKind::UsageDebit)
            && self.usage - amount > cap.limit.get()
        {
            return Expected::CapExceeded { spent: self.usage };
        }
        let Some(balance_after) = self.balance.checked_add(amount) else { return Expected::Overflow };
        if amount < 0 && balance_after < 0 && posting.overdraft == Overdraft::Forbid {
            return Expected::Insufficient { shortfall: -balance_after };
        }
        self.balance = balance_after;
        if posting.kind == EntryKind::UsageDebit {
            self.usage -= amount;
        }
        self.entries.push((posting.idempotency_key.clone(), amount, balance_after));
        let sequence = i64::try_from(self.entries.len()).expect("fits");
        self.keys.insert(posting.idempotency_key.clone(), (content, sequence));
        Expected::Created { sequence, balance_after }
    }
}

fn observed(outcome: &PostingOutcome) -> Expected {
    match outcome {
        PostingOutcome::Created(entry) => {
            Expected::Created { sequence: entry.sequence, balance_after: entry.balance_after.get() }
        }
        PostingOutcome::Exists(entry) => Expected::Exists { sequence: entry.sequence },
        PostingOutcome::ExistsWithDifferentContent(entry) => Expected::Conflict { sequence: entry.sequence },
        PostingOutcome::AccountFrozen => Expected::Frozen,
        PostingOutcome::SpendCapExceeded { spent, .. } => Expected::CapExceeded { spent: spent.get() },
        PostingOutcome::Overflow => Expected::Overflow,
        PostingOutcome::InsufficientFunds { shortfall, .. } => Expected::Insufficient { shortfall: shortfall.get() },
        PostingOutcome::AccountNotFound => panic!("every account in the case exists"),
    }
}

/// What one account's task does in a round.
#[allow(clippy::large_enum_variant)] // a few hundred per case
#[derive(Clone, Debug)]
enum Step {
    Post(Posting),
    SetFrozen(bool),
}

fn posting_for(ids: &[AccountId], op: &Op) -> Option<Posting> {
    let Op::Post { account, key, kind, magnitude, negative, correlation, overdraft, cap } = op else { return None };
    let sign = match kind {
        EntryKind::PurchaseCredit | EntryKind::AutoreloadCredit => 1,
        EntryKind::UsageDebit | EntryKind::RefundDebit => -1,
        EntryKind::Adjustment => {
            if *negative {
                -1
            } else {
                1
            }
        }
    };
    Some(Posting {
        account_id: ids[*account].clone(),
        kind: *kind,
        amount: Millicredits::new(sign * magnitude),
        idempotency_key: format!("key-{key}"),
        correlation_id: (*correlation > 0).then(|| format!("corr-{correlation}")),
        rate_version: (*kind == EntryKind::UsageDebit).then(|| RateVersion::new("v1").expect("valid")),
        source_ref: None,
        reason: (*kind == EntryKind::Adjustment).then(|| "property test".to_owned()),
        overdraft: if *overdraft { Overdraft::Allow } else { Overdraft::Forbid },
        spend_cap: cap
            .map(|limit| SpendCap { limit: Millicredits::new(limit), window_start: OffsetDateTime::UNIX_EPOCH }),
        usage: (*kind == EntryKind::UsageDebit).then(|| UsageRecord {
            model: format!("model-{correlation}"),
            units: [("tokens".to_owned(), magnitude.unsigned_abs())].into(),
        }),
    })
}

async fn run_case(db: &Db, case: usize, rounds: Vec<Vec<Op>>, grouped: bool) -> Result<usize, TestCaseError> {
    let prefix = if grouped { "group" } else { "prop" };
    let ids: Vec<AccountId> =
        (0..ACCOUNTS).map(|n| AccountId::new(format!("{prefix}{case}_{n}")).expect("valid")).collect();
    for id in &ids {
        db.store.create_account(id).await.expect("create account");
    }
    let mut models: Vec<ModelAccount> = (0..ACCOUNTS).map(|_| ModelAccount::default()).collect();
    let mut history: Vec<Posting> = Vec::new();
    let mut postings_applied = 0;
    for round in rounds {
        let mut per_account: BTreeMap<usize, Vec<Step>> = BTreeMap::new();
        for op in &round {
            let (account, step) = match op {
                Op::SetFrozen { account, frozen } => (*account, Step::SetFrozen(*frozen)),
                Op::Replay(n) if !history.is_empty() => {
                    let posting = history[n % history.len()].clone();
                    let account = ids.iter().position(|id| *id == posting.account_id).expect("known account");
                    (account, Step::Post(posting))
                }
                Op::Replay(_) => continue,
                Op::Post { .. } => {
                    let posting = posting_for(&ids, op).expect("a post");
                    history.push(posting.clone());
                    let account = ids.iter().position(|id| *id == posting.account_id).expect("known account");
                    (account, Step::Post(posting))
                }
            };
            per_account.entry(account).or_default().push(step);
        }
        let tasks: Vec<_> = per_account
            .into_iter()
            .map(|(account, steps)| {
                let store = db.store.clone();
                let id = ids[account].clone();
                tokio::spawn(async move {
                    let mut results = Vec::new();
                    let mut steps = steps.into_iter().peekable();
                    while let Some(step) = steps.next() {
                        match step {
                            Step::Post(posting) if grouped => {
                                // This and the posts right after it, in one `post_many` call.
                                let mut group = vec![posting];
                                while let Some(Step::Post(next)) = steps.next_if(|s| matches!(s, Step::Post(_))) {
                                    group.push(next);
                                }
                                let outcomes = store.post_many(&group).await.expect("postings answered");
                                assert_eq!(outcomes.len(), group.len(), "one outcome per posting");
                                results.extend(group.into_iter().zip(outcomes).map(|(p, o)| (Step::Post(p), Some(o))));
                            }
                            Step::Post(posting) => {
                                let outcome = store.post(&posting).await.expect("posting answered");
                                results.push((Step::Post(posting), Some(outcome)));
                            }
                            Step::SetFrozen(frozen) => {
                                let status = if frozen { AccountStatus::Frozen } else { AccountStatus::Active };
                                store
                                    .set_account_status(&id, status, &audit("freeze", id.as_str()))
                                    .await
                                    .expect("status");
                                results.push((Step::SetFrozen(frozen), None));
                            }
                        }
                    }
                    (account, results)
                })
            })
            .collect();
        for task in tasks {
            let (account, results) = task.await.expect("task ran");
            for (step, outcome) in results {
                match (step, outcome) {
                    (Step::Post(posting), Some(outcome)) => {
                        let expected = models[account].apply(&posting);
                        prop_assert_eq!(observed(&outcome), expected, "{:?}", posting);
                        postings_applied += 1;
                    }
                    (Step::SetFrozen(frozen), None) => models[account].frozen = frozen,
                    other => panic!("step and outcome disagree: {other:?}"),
                }
            }
        }
    }
    check_accounts(db, &ids, &models).await?;
    Ok(postings_applied)
}

/// Each account's balance, sum of entries, entries and usage records agree with its model.
async fn check_accounts(db: &Db, ids: &[AccountId], models: &[ModelAccount]) -> Result<(), TestCaseError> {
    for (id, model) in ids.iter().zip(models) {
        let account = db.store.account(id).await.expect("read").expect("exists");
        prop_assert_eq!(account.balance.get(), model.balance, "balance of {}", id);
        let totals = db.store.ledger_totals(Some(id)).await.expect("totals");
        prop_assert_eq!(totals.entries, account.balance, "sum of entries of {}", id);
        let entries = db.store.entries(id, 0, i64::MAX).await.expect("entries");
        for entry in &entries {
            let recorded = entry.usage.as_ref().map(|usage| (usage.model.as_str(), usage.units.get("tokens").copied()));
            let expected = (entry.kind == EntryKind::UsageDebit).then(|| entry.amount.get().unsigned_abs());
            prop_assert_eq!(recorded.map(|(_, units)| units), expected.map(Some), "usage of {}", entry.id);
        }
        let stored: Vec<(String, i64, i64)> = entries
            .iter()
            .map(|entry| (entry.idempotency_key.clone(), entry.amount.get(), entry.balance_after.get()))
            .collect();
        prop_assert_eq!(&stored, &model.entries, "entries of {}", id);
    }
    Ok(())
}

/// Runs 40 random cases (several thousand postings, one `post` each) and checks each against the model.
pub(crate) fn check_against_reference_model(db: &Db) {
    check(db, false);
}

/// The same, with each run of consecutive postings to an account applied by one `post_many` (one transaction).
pub(crate) fn check_groups_against_reference_model(db: &Db) {
    check(db, true);
}

fn check(db: &Db, grouped: bool) {
    let config = Config { cases: 40, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let case = std::sync::atomic::AtomicUsize::new(0);
    let total = std::sync::atomic::AtomicUsize::new(0);
    let strategy = prop::collection::vec(prop::collection::vec(op(), 1..40), 2..8);
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |rounds| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let applied = handle.block_on(run_case(db, n, rounds, grouped))?;
            total.fetch_add(applied, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("the store disagrees with the reference model: {failure}");
    }
    let total = total.into_inner();
    assert!(total >= 2_000, "the property test should apply thousands of postings, applied {total}");
}
