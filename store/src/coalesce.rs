//! Coalescing concurrent usage debits of one account into one write.
//!
//! Postings to one account are serialised (by its row lock, or by the sequence check of the unlocked path), so
//! debits of one busy account would run one after another, each paying a whole read and write for one entry. A
//! [`Coalescer`] keeps a lane per account: a debit that finds its account idle is written at once; debits that
//! arrive while one is being written wait in the lane, and the next write takes all of them (up to [`GROUP_MAX`])
//! through [`Store::debit_usage`], which prices and decides each as if it had been posted alone, in arrival order.
//! Under contention one commit serves many requests; without it a debit pays one spawned task and a channel.
//!
//! Each debit's answer is exactly what [`Store::debit_usage`] would have given it alone, in that order. If a group's
//! write fails, its debits are retried one by one, so each caller gets its own answer or error and nothing is
//! written twice (the group's write wrote nothing; keys make every retry idempotent).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::{DebitAnswer, Store, StoreError, UsageDebit};

/// Most debits one coalesced write takes.
pub(crate) const GROUP_MAX: usize = 256;

struct Waiting {
    debit: UsageDebit,
    answer: oneshot::Sender<Result<DebitAnswer, StoreError>>,
}

/// The debits waiting for each account whose lane is being written; an account has an entry only while a writer
/// task runs for it.
type Lanes = HashMap<String, Vec<Waiting>>;

/// Coalesces concurrent usage debits per account (see the module's documentation). Cheap to clone; clones share lanes.
#[derive(Clone, Default)]
pub struct Coalescer {
    lanes: Arc<Mutex<Lanes>>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

impl Coalescer {
    /// A coalescer with no lanes.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Prices and posts `debit` like [`Store::debit_usage`], in one write with the debits of the same account that
    /// wait beside it, priced at the time of that write. The write runs in a task of its own, so it completes even if
    /// the caller stops waiting.
    pub async fn debit(&self, store: &Store, debit: UsageDebit) -> Result<DebitAnswer, StoreError> {
        let account = debit.account_id.as_str().to_owned();
        let (answer, answered) = oneshot::channel();
        let start_writer = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(waiting) = lanes.get_mut(&account) {
                waiting.push(Waiting { debit, answer });
                false
            } else {
                lanes.insert(account.clone(), vec![Waiting { debit, answer }]);
                true
            }
        };
        if start_writer {
            let (lanes, store) = (Arc::clone(&self.lanes), store.clone());
            tokio::spawn(write_lane(lanes, store, account));
        }
        answered.await.unwrap_or_else(|_| Err(StoreError::Corrupt("a coalesced debit went unanswered".to_owned())))
    }
}

/// Writes an account's lane group after group until it is empty, then removes it.
async fn write_lane(lanes: Arc<Mutex<Lanes>>, store: Store, account: String) {
    loop {
        let group: Vec<Waiting> = {
            let mut all = lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(waiting) = all.get_mut(&account) else { return };
            if waiting.is_empty() {
                all.remove(&account);
                return;
            }
            let take = waiting.len().min(GROUP_MAX);
            waiting.drain(..take).collect()
        };
        write_group(&store, group).await;
    }
}

async fn write_group(store: &Store, group: Vec<Waiting>) {
    if group.len() > 1 {
        let debits: Vec<UsageDebit> = group.iter().map(|waiting| waiting.debit.clone()).collect();
        if let Ok(answers) = store.debit_usage(&debits, OffsetDateTime::now_utc()).await
            && answers.len() == group.len()
        {
            for (waiting, answer) in group.into_iter().zip(answers) {
                let _ = waiting.answer.send(Ok(answer));
            }
            return;
        }
    }
    // One debit, or a group whose write failed (it wrote nothing): each alone, with its own answer.
    for waiting in group {
        let answer = store.debit_usage(std::slice::from_ref(&waiting.debit), OffsetDateTime::now_utc()).await;
        let answer = answer.and_then(|mut answers| {
            answers.pop().ok_or_else(|| StoreError::Corrupt("a debit went unanswered".to_owned()))
        });
        let _ = waiting.answer.send(answer);
    }
}
