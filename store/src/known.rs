//! What this process knows of the accounts it debited: the state its last write to each left behind.
//!
//! A debit needs the account's balance, sequence, status and settings, and (with a daily cap) its usage today.
//! Right after this process wrote to an account it knows all of them exactly, and they stay true until some other
//! posting or a change of status or settings. The next debit of that account is decided from what is known here and
//! written with one statement whose conditions are everything the decision used: the sequence (every posting moves
//! it, so it stands for the balance and the usage today too), the status, the settings and the number of rate card
//! activations the price came from. If any of them moved, or a key is already taken (the unique index refuses it),
//! the statement writes nothing and the debit is decided again from a fresh read (`debits.rs`).
//!
//! Only a debit whose every posting is created takes this path: a refusal or a replay decided from a remembered
//! state could be out of date, so those are always answered from a read. An account another process also writes to
//! would miss here more often than not, so after a miss the account is not tried this way for [`AFTER_MISS`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use creditflow_domain::{AccountState, EntryKind, Millicredits, PostingOutcome};
use time::OffsetDateTime;

/// Accounts remembered at most; one more forgets an arbitrary other (about 200 bytes each).
const CAPACITY: usize = 50_000;
/// How long an account whose remembered state was out of date is debited through reads only.
const AFTER_MISS: Duration = Duration::from_secs(1);

/// An account's settings as a debit's decision reads them (a missing settings row reads as the defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DebitSettings {
    pub(crate) low_balance_threshold: Option<i64>,
    pub(crate) autoreload_enabled: bool,
    pub(crate) autoreload_threshold: Option<i64>,
    pub(crate) daily_spend_cap: Option<i64>,
}

impl DebitSettings {
    /// The low-balance threshold and, when autoreload is on, the autoreload threshold.
    pub(crate) fn limits(self) -> (Option<i64>, Option<Millicredits>) {
        let reload_below = self.autoreload_threshold.filter(|_| self.autoreload_enabled).map(Millicredits::new);
        (self.low_balance_threshold, reload_below)
    }

    pub(crate) fn daily_spend_cap(self) -> Option<Millicredits> {
        self.daily_spend_cap.map(Millicredits::new)
    }
}

/// An account as this process's last write to it left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KnownAccount {
    pub(crate) state: AccountState,
    pub(crate) settings: DebitSettings,
    /// When the account has a daily cap: the start of the day and the usage debited since.
    pub(crate) spent: Option<(OffsetDateTime, Millicredits)>,
}

impl KnownAccount {
    /// The account after `outcomes` were written to it (usage created since `window` counts towards its day).
    /// `None` when the usage today no longer fits a number.
    pub(crate) fn after(mut self, outcomes: &[PostingOutcome]) -> Option<Self> {
        for outcome in outcomes {
            let PostingOutcome::Created(entry) = outcome else { continue };
            self.state.balance = entry.balance_after;
            self.state.last_sequence = entry.sequence;
            if let Some((window, spent)) = self.spent.as_mut()
                && entry.kind == EntryKind::UsageDebit
                && entry.created_at >= *window
            {
                *spent = spent.checked_add(entry.amount.checked_neg().ok()?).ok()?;
            }
        }
        Some(self)
    }

    /// Whether what is known covers a debit on the day starting at `window`: the account has no daily cap, or its
    /// usage known is that day's.
    pub(crate) fn covers_day(&self, window: OffsetDateTime) -> bool {
        self.settings.daily_spend_cap.is_none() || self.spent.is_some_and(|(day, _)| day == window)
    }

    /// The usage debited on the known day, when the account has a daily cap.
    pub(crate) fn spent_today(&self) -> Option<Millicredits> {
        self.spent.map(|(_, spent)| spent)
    }
}

enum Slot {
    Known(KnownAccount),
    /// What was known turned out to be out of date at this instant.
    Missed(Instant),
}

/// The accounts this process debited last, by id (see the module's documentation).
#[derive(Default)]
pub(crate) struct KnownAccounts {
    slots: Mutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for KnownAccounts {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("KnownAccounts").finish_non_exhaustive()
    }
}

impl KnownAccounts {
    /// What is known of `account`, unless nothing is or it missed a moment ago.
    pub(crate) fn get(&self, account: &str) -> Option<KnownAccount> {
        match self.slots.lock().unwrap_or_else(PoisonError::into_inner).get(account) {
            Some(Slot::Known(known)) => Some(*known),
            Some(Slot::Missed(_)) | None => None,
        }
    }

    /// Remembers `account` as `known` (the state a write of this process just left), unless it missed a moment ago.
    pub(crate) fn remember(&self, account: &str, known: KnownAccount) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get_mut(account) {
            match slot {
                Slot::Missed(at) if at.elapsed() < AFTER_MISS => {}
                _ => *slot = Slot::Known(known),
            }
            return;
        }
        if slots.len() >= CAPACITY
            && let Some(other) = slots.keys().next().cloned()
        {
            slots.remove(&other);
        }
        slots.insert(account.to_owned(), Slot::Known(known));
    }

    /// Records that what was known of `account` was out of date.
    pub(crate) fn missed(&self, account: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get_mut(account) {
            *slot = Slot::Missed(Instant::now());
        }
    }

    /// Forgets `account` (a write this process cannot follow changed it).
    pub(crate) fn forget(&self, account: &str) {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).remove(account);
    }
}

#[cfg(test)]
mod tests {
    use creditflow_domain::{AccountId, AccountStatus, Entry};

    use super::*;

    fn known(cap: Option<i64>, spent: Option<(OffsetDateTime, Millicredits)>) -> KnownAccount {
        KnownAccount {
            state: AccountState { balance: Millicredits::new(1_000), status: AccountStatus::Active, last_sequence: 3 },
            settings: DebitSettings { daily_spend_cap: cap, ..DebitSettings::default() },
            spent,
        }
    }

    fn created(sequence: i64, amount: i64, balance_after: i64, at: OffsetDateTime) -> PostingOutcome {
        PostingOutcome::Created(Entry {
            id: format!("ent-{sequence}"),
            account_id: AccountId::new("acct-1".to_owned()).expect("id"),
            sequence,
            kind: EntryKind::UsageDebit,
            amount: Millicredits::new(amount),
            balance_after: Millicredits::new(balance_after),
            idempotency_key: format!("key-{sequence}"),
            correlation_id: None,
            rate_version: None,
            source_ref: None,
            reason: None,
            usage: None,
            created_at: at,
        })
    }

    #[test]
    fn a_write_moves_balance_sequence_and_usage_of_the_day() {
        let day = time::macros::datetime!(2026-12-06 00:00 UTC);
        let noon = time::macros::datetime!(2026-12-06 12:00 UTC);
        let before = known(Some(500), Some((day, Millicredits::new(40))));
        let outcomes = [
            created(4, -100, 900, noon),
            PostingOutcome::InsufficientFunds { balance: Millicredits::new(900), shortfall: Millicredits::new(1) },
            created(5, -50, 850, noon),
        ];
        let after = before.after(&outcomes).expect("fits");
        assert_eq!(after.state.balance, Millicredits::new(850));
        assert_eq!(after.state.last_sequence, 5);
        assert_eq!(after.spent, Some((day, Millicredits::new(190))));
        assert!(after.covers_day(day));
        assert_eq!(after.spent_today(), Some(Millicredits::new(190)));
        // Another day's usage is not known: the debit reads it.
        assert!(!after.covers_day(day + time::Duration::DAY));
        // Without a cap there is nothing to know.
        assert!(known(None, None).covers_day(day));
    }

    #[test]
    fn a_missed_account_is_not_remembered_again_at_once() {
        let accounts = KnownAccounts::default();
        let state = known(None, None);
        accounts.remember("acct-1", state);
        assert_eq!(accounts.get("acct-1"), Some(state));
        accounts.missed("acct-1");
        assert_eq!(accounts.get("acct-1"), None);
        accounts.remember("acct-1", state);
        assert_eq!(accounts.get("acct-1"), None, "remembered again within a second of the miss");
        accounts.forget("acct-1");
        accounts.remember("acct-1", state);
        assert_eq!(accounts.get("acct-1"), Some(state));
    }
}
