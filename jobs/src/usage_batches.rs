//! Pricing and debiting a usage batch (queue `usage_batches`, written when a batch is accepted).
//!
//! Each event is priced with the rate card its account had when the batch was accepted, so a retry prices it the
//! same. Events are grouped by account and each account's debits are posted in one transaction
//! ([`Store::post_many_accounts`], which takes many accounts per transaction; a batch's transactions run two at a
//! time). Running the job again (a crash, a redelivery) debits nothing twice: an event's entry is
//! keyed by its id, and an entry already written by this batch counts as debited by it, not as a duplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use creditflow_domain::{AccountId, Millicredits, Posting, PostingOutcome, RateCard, Rejection, UsageEvent};
use creditflow_store::{BatchResult, BatchStatus, NewAuditRecord, Store};
use futures_util::{StreamExt as _, stream};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::JobError;

/// Price and debit one accepted batch. Never rename.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriceUsageBatchV1 {
    /// The batch (`ubt_...`).
    pub batch_id: String,
}

/// What the handler needs.
#[derive(Clone, Debug)]
pub struct BatchDeps {
    /// The ledger store.
    pub store: Store,
}

/// One rejected event in the batch's report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Rejected {
    index: usize,
    event_id: String,
    code: &'static str,
    reason: String,
}

impl Rejected {
    fn new(index: usize, event: Option<&UsageEvent>, rejection: Rejection) -> Self {
        let event_id = event.map_or_else(String::new, |event| event.event_id.clone());
        Self { index, event_id, code: rejection.code, reason: rejection.reason }
    }
}

/// The batch's events judged and priced, before anything is debited.
#[derive(Default)]
struct Priced {
    /// Debits per account, each with the event's index, in submission order.
    per_account: BTreeMap<AccountId, Vec<(usize, Posting)>>,
    rejected: Vec<Rejected>,
    duplicates: i64,
    free: i64,
}

/// An account and its priced debits, each with its event's index.
type AccountDebits<'a> = (&'a AccountId, &'a Vec<(usize, Posting)>);

/// Debits per transaction of a batch, about: accounts are added to a transaction until it holds this many.
const POSTINGS_PER_TRANSACTION: usize = 5_000;

/// Transactions of one batch in flight at once. They hold disjoint sets of accounts, so they never wait on each other;
/// on PostgreSQL each has a connection and a server process of its own, and a batch's debits use more than one core.
/// Every transaction locks its accounts in the same order, so these never deadlock with another batch's either.
const TRANSACTIONS_AT_ONCE: usize = 2;

/// Prices and debits a batch; returns its result. Idempotent: a completed batch is left as it is.
pub async fn price_usage_batch(job: &PriceUsageBatchV1, deps: &BatchDeps) -> Result<BatchResult, JobError> {
    let store = &deps.store;
    let Some((batch, events)) = store.start_usage_batch(&job.batch_id).await? else {
        return Err(JobError::Permanent(format!("no usage batch {}", job.batch_id)));
    };
    if let (BatchStatus::Completed, Some(result)) = (batch.status, batch.result) {
        return Ok(result);
    }
    let events: Vec<UsageEvent> = serde_json::from_str(&events)
        .map_err(|error| JobError::Permanent(format!("usage batch {} cannot be read: {error}", batch.id)))?;
    let batch_ref = format!("batch:{}", batch.id);
    let mut priced = price(store, &events, batch.created_at, &batch_ref).await?;
    let mut result = BatchResult { debited: priced.free, duplicates: priced.duplicates, ..BatchResult::default() };
    let mut debited = Millicredits::ZERO;
    let accounts: Vec<&AccountId> = priced.per_account.keys().collect();
    store.create_accounts(&accounts).await?;
    let mut failed = None;
    for (chunk, outcomes) in post_in_transactions(store, &priced.per_account).await {
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(error) => {
                failed.get_or_insert(error);
                continue;
            }
        };
        for ((account, postings), outcomes) in chunk.into_iter().zip(outcomes) {
            let mut overdrawn = 0_i64;
            for ((index, _), outcome) in postings.iter().zip(outcomes) {
                let index = *index;
                let entry = match outcome {
                    PostingOutcome::Created(entry) => entry,
                    // Written by an earlier run of this batch.
                    PostingOutcome::Exists(entry) | PostingOutcome::ExistsWithDifferentContent(entry)
                        if entry.source_ref.as_deref() == Some(batch_ref.as_str()) =>
                    {
                        entry
                    }
                    PostingOutcome::Exists(_) | PostingOutcome::ExistsWithDifferentContent(_) => {
                        result.duplicates += 1;
                        continue;
                    }
                    refused => {
                        let rejection = match refused {
                            PostingOutcome::AccountFrozen => Rejection::new("account_frozen", "the account is frozen"),
                            PostingOutcome::Overflow => {
                                Rejection::new("overflow", "the debit does not fit the balance")
                            }
                            other => Rejection::new("refused", format!("the ledger refused the debit: {other:?}")),
                        };
                        priced.rejected.push(Rejected::new(index, events.get(index), rejection));
                        continue;
                    }
                };
                result.debited += 1;
                if entry.balance_after.is_negative() {
                    result.overdrafts += 1;
                    overdrawn += 1;
                }
                debited = debited
                    .checked_sub(entry.amount)
                    .map_err(|_| JobError::Permanent(format!("batch {} debits more than fits", batch.id)))?;
            }
            if overdrawn > 0 {
                let record = NewAuditRecord {
                    actor: "system:usage-batches".to_owned(),
                    action: "account.flag_negative_balance".to_owned(),
                    subject: account.to_string(),
                    reason: Some(format!("usage batch {} took the balance below zero", batch.id)),
                    details: serde_json::json!({"batchId": batch.id, "overdrawnDebits": overdrawn}).to_string(),
                };
                // Counted over this batch's entries, new or written by an earlier run, so a run that follows a
                // crash between an account's commit and its flag raises the same flag, and only once.
                store.append_audit_once(&record).await?;
            }
        }
    }
    if let Some(error) = failed {
        return Err(error);
    }
    priced.rejected.sort_by_key(|rejection| rejection.index);
    result.rejected = i64::try_from(priced.rejected.len()).unwrap_or(i64::MAX);
    result.debited_millicredits = debited.get();
    result.rejections = serde_json::to_string(&priced.rejected).unwrap_or_else(|_| "[]".to_owned());
    store.complete_usage_batch(&batch.id, &result).await?;
    Ok(result)
}

/// Posts a batch's debits in transactions of about [`POSTINGS_PER_TRANSACTION`] (one commit for many accounts),
/// [`TRANSACTIONS_AT_ONCE`] at a time; returns each transaction's accounts with its outcomes, in order.
///
/// Each transaction commits on its own. All of them run before the caller reads any answer: the audit records it
/// appends are writes too, and awaiting one while a transaction's future sat unpolled in the stream could leave that
/// transaction holding what the record waits for (SQLite's write gate). If one fails, the caller still accounts for
/// and flags those that committed, then fails the job: its next run finds their debits already written by this batch.
async fn post_in_transactions<'a>(
    store: &Store,
    per_account: &'a BTreeMap<AccountId, Vec<(usize, Posting)>>,
) -> Vec<(Vec<AccountDebits<'a>>, Result<Vec<Vec<PostingOutcome>>, JobError>)> {
    let mut chunks: Vec<Vec<AccountDebits>> = vec![Vec::new()];
    let mut filled = 0;
    for (account, postings) in per_account {
        if filled >= POSTINGS_PER_TRANSACTION {
            chunks.push(Vec::new());
            filled = 0;
        }
        filled += postings.len();
        if let Some(chunk) = chunks.last_mut() {
            chunk.push((account, postings));
        }
    }
    let transactions: Vec<_> = chunks
        .iter()
        .map(|chunk| {
            let groups: Vec<Vec<Posting>> = chunk
                .iter()
                .map(|(_, postings)| postings.iter().map(|(_, posting)| posting.clone()).collect())
                .collect();
            post_transaction(store, groups)
        })
        .collect();
    let mut posted: Vec<_> = stream::iter(transactions).buffered(TRANSACTIONS_AT_ONCE).collect().await;
    // The stream answers every transaction; should one ever go missing, its accounts fail rather than vanish.
    posted.resize_with(chunks.len(), || Err(JobError::Transient("a batch transaction went unanswered".to_owned())));
    chunks.into_iter().zip(posted).collect()
}

/// One transaction of a batch: its accounts' debits, one group per account.
async fn post_transaction(store: &Store, groups: Vec<Vec<Posting>>) -> Result<Vec<Vec<PostingOutcome>>, JobError> {
    Ok(store.post_many_accounts(&groups).await?)
}

/// Judges and prices every event with its account's rate card at `accepted_at`.
async fn price(
    store: &Store,
    events: &[UsageEvent],
    accepted_at: OffsetDateTime,
    batch_ref: &str,
) -> Result<Priced, JobError> {
    // Every account's card at acceptance, the activations read once for the whole batch.
    let accounts: BTreeSet<AccountId> = events.iter().filter_map(|event| event.account().ok()).collect();
    let accounts: Vec<&AccountId> = accounts.iter().collect();
    let cards: HashMap<AccountId, Option<std::sync::Arc<RateCard>>> =
        store.rate_cards_for(&accounts, accepted_at).await?;
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut priced = Priced::default();
    for (index, event) in events.iter().enumerate() {
        let account = match event.account() {
            Ok(account) => account,
            Err(rejection) => {
                priced.rejected.push(Rejected::new(index, Some(event), rejection));
                continue;
            }
        };
        // An id counts as seen once one of its events was accepted: a rejected event does not shadow a valid one.
        if seen.contains(&(event.account_id.as_str(), event.event_id.as_str())) {
            priced.duplicates += 1;
            continue;
        }
        let Some(Some(card)) = cards.get(&account) else {
            let rejection = Rejection::new("no_rate_card", "no rate card was active for the account");
            priced.rejected.push(Rejected::new(index, Some(event), rejection));
            continue;
        };
        match event.posting(card, batch_ref) {
            Ok(Some(posting)) => {
                seen.insert((event.account_id.as_str(), event.event_id.as_str()));
                priced.per_account.entry(account).or_default().push((index, posting));
            }
            Ok(None) => {
                seen.insert((event.account_id.as_str(), event.event_id.as_str()));
                priced.free += 1;
            }
            Err(rejection) => priced.rejected.push(Rejected::new(index, Some(event), rejection)),
        }
    }
    Ok(priced)
}
