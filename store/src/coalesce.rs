//! Coalescing concurrent postings to one account into one transaction.
//!
//! Every posting locks its account's row, so postings to one busy account run one after another, each paying a
//! whole transaction (lock, key lookup, insert, balance update, commit) for one entry. A [`Coalescer`] keeps a lane
//! per account: a posting that finds its account idle is written at once; postings that arrive while one is being
//! written wait in the lane, and the next transaction takes all of them (up to [`GROUP_MAX`]) through
//! [`Store::post_many`], which decides each as if it had been posted alone, in arrival order. Under contention one
//! commit serves many requests; without it a posting pays one spawned task and a channel.
//!
//! Each posting's outcome is exactly what [`Store::post`] would have answered in that order. If a group's
//! transaction fails, its postings are retried one by one, so each caller gets its own answer or error and nothing
//! is written twice (the group's transaction wrote nothing; keys make every retry idempotent).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use creditflow_domain::{Posting, PostingOutcome};
use tokio::sync::oneshot;

use crate::{Store, StoreError};

/// Most postings one coalesced transaction takes.
pub(crate) const GROUP_MAX: usize = 256;

struct Waiting {
    posting: Posting,
    answer: oneshot::Sender<Result<PostingOutcome, StoreError>>,
}

/// The postings waiting for each account whose lane is being written; an account has an entry only while a writer
/// task runs for it.
type Lanes = HashMap<String, Vec<Waiting>>;

/// Coalesces concurrent postings per account (see the module's documentation). Cheap to clone; clones share lanes.
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

    /// Posts `posting` like [`Store::post`], in one transaction with the postings to the same account that wait
    /// beside it. The write runs in a task of its own, so it completes even if the caller stops waiting.
    pub async fn post(&self, store: &Store, posting: Posting) -> Result<PostingOutcome, StoreError> {
        posting.validate()?;
        let account = posting.account_id.as_str().to_owned();
        let (answer, answered) = oneshot::channel();
        let start_writer = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(waiting) = lanes.get_mut(&account) {
                waiting.push(Waiting { posting, answer });
                false
            } else {
                lanes.insert(account.clone(), vec![Waiting { posting, answer }]);
                true
            }
        };
        if start_writer {
            let (lanes, store) = (Arc::clone(&self.lanes), store.clone());
            tokio::spawn(write_lane(lanes, store, account));
        }
        answered.await.unwrap_or_else(|_| Err(StoreError::Corrupt("a coalesced posting went unanswered".to_owned())))
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
        let postings: Vec<Posting> = group.iter().map(|waiting| waiting.posting.clone()).collect();
        if let Ok(outcomes) = store.post_many(&postings).await
            && outcomes.len() == group.len()
        {
            for (waiting, outcome) in group.into_iter().zip(outcomes) {
                let _ = waiting.answer.send(Ok(outcome));
            }
            return;
        }
    }
    // One posting, or a group whose transaction failed (it wrote nothing): each alone, with its own answer.
    for waiting in group {
        let _ = waiting.answer.send(store.post(&waiting.posting).await);
    }
}
