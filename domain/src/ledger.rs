//! Ledger posting rules: what a posting is, what an entry records, and the ordered outcome of applying one.
//!
//! Storage backends lock the account, look up the idempotency key, and then ask [`decide`] what to do, so every
//! backend follows the same rules. The rules, in order of precedence (the first that applies wins):
//!
//! 1. the account must exist ([`PostingOutcome::AccountNotFound`]);
//! 2. a key already used on the account answers with the entry it created: [`PostingOutcome::Exists`] when the
//!    content is the same, [`PostingOutcome::ExistsWithDifferentContent`] otherwise. This comes before every
//!    balance or status rule so a retry of a posting that succeeded always gets its first answer;
//! 3. a frozen account takes no usage debits ([`PostingOutcome::AccountFrozen`]); money that already moved
//!    (purchases, autoreload credits, refunds, adjustments) is still recorded;
//! 4. a usage debit with a spend cap may not take the day's usage past it ([`PostingOutcome::SpendCapExceeded`]);
//! 5. the new balance must fit an `i64` ([`PostingOutcome::Overflow`]);
//! 6. a debit may not take the balance below zero unless the posting allows overdraft
//!    ([`PostingOutcome::InsufficientFunds`] with the shortfall);
//! 7. otherwise the entry is created ([`PostingOutcome::Created`]).
//!
//! Only a created entry consumes its idempotency key: a posting refused for funds may be retried with the same key.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::money::Millicredits;
use crate::rate_card::RateVersion;

const KEY_LENGTH_MAX: usize = 255;
const REFERENCE_LENGTH_MAX: usize = 255;
const REASON_LENGTH_MAX: usize = 1_000;

/// Identifies an account: 1 to 64 of `A-Z a-z 0-9 _ -` (for example `acct_01J...` or a customer's own id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// Validates an account id.
    pub fn new(id: impl Into<String>) -> Result<Self, PostingInvalid> {
        let id = id.into();
        let valid =
            !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid { Ok(Self(id)) } else { Err(PostingInvalid::AccountId) }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AccountId {
    type Error = PostingInvalid;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<AccountId> for String {
    fn from(value: AccountId) -> Self {
        value.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether an account may spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Normal operation.
    Active,
    /// Usage debits are refused (an operator froze it, or a dispute did).
    Frozen,
}

impl AccountStatus {
    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Frozen => "frozen",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "frozen" => Some(Self::Frozen),
            _ => None,
        }
    }
}

/// What kind of money movement an entry records. Each kind has a fixed sign except adjustments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credits bought with a pack (positive).
    PurchaseCredit,
    /// Credits bought by an automatic reload (positive).
    AutoreloadCredit,
    /// Usage priced against a rate card (negative; needs the rate version).
    UsageDebit,
    /// Credits taken back after a refund (negative).
    RefundDebit,
    /// An operator's correction, either sign, with a required reason.
    Adjustment,
}

impl EntryKind {
    /// Every kind, for exhaustive tests and database checks.
    pub const ALL: [Self; 5] =
        [Self::PurchaseCredit, Self::AutoreloadCredit, Self::UsageDebit, Self::RefundDebit, Self::Adjustment];

    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PurchaseCredit => "purchase_credit",
            Self::AutoreloadCredit => "autoreload_credit",
            Self::UsageDebit => "usage_debit",
            Self::RefundDebit => "refund_debit",
            Self::Adjustment => "adjustment",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// May this posting take the balance below zero?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overdraft {
    /// No: a debit larger than the balance is refused with the shortfall.
    Forbid,
    /// Yes: for usage that already happened (batches) and refunds of spent credits.
    Allow,
}

/// A request to append one entry to an account's ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    /// The account to post to.
    pub account_id: AccountId,
    /// What the entry records.
    pub kind: EntryKind,
    /// Signed amount: credits positive, debits negative.
    pub amount: Millicredits,
    /// The caller's key; the same key with the same content returns the first result.
    pub idempotency_key: String,
    /// Ties the entry to a request or workflow across systems.
    pub correlation_id: Option<String>,
    /// The rate card version that priced a usage debit.
    pub rate_version: Option<RateVersion>,
    /// What caused the entry: a payment intent, a batch, an event.
    pub source_ref: Option<String>,
    /// Why an operator made an adjustment.
    pub reason: Option<String>,
    /// Whether the balance may go below zero.
    pub overdraft: Overdraft,
    /// A limit on usage debited per UTC day; only usage debits carry one.
    pub spend_cap: Option<SpendCap>,
    /// What a usage debit paid for (model and quantities), kept for usage reports; descriptive only, not part of
    /// what makes two postings the same.
    pub usage: Option<UsageRecord>,
}

/// The model and quantities a usage debit priced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The model, as on the rate card.
    pub model: String,
    /// Quantities per unit kind.
    pub units: crate::pricing::Usage,
}

/// A ceiling on the usage an account may be debited in one window (a UTC day).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpendCap {
    /// The most usage the window may hold.
    pub limit: Millicredits,
    /// When the window began; usage debited since counts against the limit.
    pub window_start: OffsetDateTime,
}

/// A posting that breaks a rule before any storage is touched: a programming or input error, not an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PostingInvalid {
    /// The account id is malformed.
    #[error("account ids are 1 to 64 of A-Z a-z 0-9 _ -")]
    AccountId,
    /// The sign or size of the amount does not fit the kind.
    #[error("credits must be positive, debits negative and adjustments non-zero")]
    AmountSign,
    /// The idempotency key is empty, too long or not printable ASCII.
    #[error("idempotency keys are 1 to 255 printable ASCII characters")]
    IdempotencyKey,
    /// A usage debit must say which rate card priced it.
    #[error("a usage debit must name its rate version")]
    MissingRateVersion,
    /// An adjustment must say why, and a reason is 1 to 1000 characters.
    #[error("an adjustment needs a reason; reasons are 1 to 1000 characters")]
    Reason,
    /// The correlation id or source reference is too long.
    #[error("correlation ids and source references are at most 255 characters")]
    ReferenceTooLong,
}

impl Posting {
    /// Checks the rules a posting must meet on its own.
    pub fn validate(&self) -> Result<(), PostingInvalid> {
        let sign_ok = match self.kind {
            EntryKind::PurchaseCredit | EntryKind::AutoreloadCredit => self.amount.is_positive(),
            EntryKind::UsageDebit | EntryKind::RefundDebit => self.amount.is_negative(),
            EntryKind::Adjustment => self.amount != Millicredits::ZERO,
        };
        if !sign_ok {
            return Err(PostingInvalid::AmountSign);
        }
        let key = &self.idempotency_key;
        if key.is_empty() || key.len() > KEY_LENGTH_MAX || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(PostingInvalid::IdempotencyKey);
        }
        if self.kind == EntryKind::UsageDebit && self.rate_version.is_none() {
            return Err(PostingInvalid::MissingRateVersion);
        }
        let reason_ok = |r: &str| !r.trim().is_empty() && r.len() <= REASON_LENGTH_MAX;
        match self.reason.as_deref() {
            Some(reason) if !reason_ok(reason) => return Err(PostingInvalid::Reason),
            None if self.kind == EntryKind::Adjustment => return Err(PostingInvalid::Reason),
            _ => {}
        }
        let too_long = |text: &Option<String>| text.as_ref().is_some_and(|t| t.len() > REFERENCE_LENGTH_MAX);
        if too_long(&self.correlation_id) || too_long(&self.source_ref) {
            return Err(PostingInvalid::ReferenceTooLong);
        }
        Ok(())
    }

    /// True when `entry` records exactly this posting (the overdraft policy is how, not what, and is not compared).
    pub fn same_content_as(&self, entry: &Entry) -> bool {
        self.account_id == entry.account_id
            && self.kind == entry.kind
            && self.amount == entry.amount
            && self.correlation_id == entry.correlation_id
            && self.rate_version == entry.rate_version
            && self.source_ref == entry.source_ref
            && self.reason == entry.reason
    }
}

/// One immutable ledger line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `ent_` followed by a time-ordered UUID.
    pub id: String,
    /// The account it belongs to.
    pub account_id: AccountId,
    /// Position in the account's ledger: 1, 2, 3... without gaps.
    pub sequence: i64,
    /// What it records.
    pub kind: EntryKind,
    /// Signed amount.
    pub amount: Millicredits,
    /// The account balance once this entry applied.
    pub balance_after: Millicredits,
    /// The key that created it.
    pub idempotency_key: String,
    /// Correlation id, if any.
    pub correlation_id: Option<String>,
    /// Rate card version of a usage debit.
    pub rate_version: Option<RateVersion>,
    /// Source reference, if any.
    pub source_ref: Option<String>,
    /// Adjustment reason, if any.
    pub reason: Option<String>,
    /// The model and quantities of a usage debit.
    pub usage: Option<UsageRecord>,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What an account looks like to a posting, read under its lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountState {
    /// Current balance.
    pub balance: Millicredits,
    /// Whether it may spend.
    pub status: AccountStatus,
    /// Sequence of its last entry (0 when it has none).
    pub last_sequence: i64,
}

/// The result of a posting, in order of precedence (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostingOutcome {
    /// The entry was appended.
    Created(Entry),
    /// The key was already used by a posting with the same content; this is its entry.
    Exists(Entry),
    /// The key was already used by a posting with different content.
    ExistsWithDifferentContent(Entry),
    /// No such account.
    AccountNotFound,
    /// The account is frozen and the posting is a usage debit.
    AccountFrozen,
    /// The new balance would not fit.
    Overflow,
    /// The usage debit would take the day's usage past the account's spend cap.
    SpendCapExceeded {
        /// The cap.
        limit: Millicredits,
        /// Usage already debited in the window.
        spent: Millicredits,
    },
    /// The debit is larger than the balance; `shortfall` more millicredits would let it through.
    InsufficientFunds {
        /// The balance when the posting was refused.
        balance: Millicredits,
        /// What the account lacks.
        shortfall: Millicredits,
    },
}

/// What a backend should do with a posting. Built once per posting and consumed at once, so the size of the
/// `Refuse` variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write nothing and answer with this outcome.
    Refuse(PostingOutcome),
    /// Append the entry with this sequence and balance, and move the account to them.
    Append {
        /// The new entry's sequence.
        sequence: i64,
        /// The balance after it.
        balance_after: Millicredits,
    },
}

/// Applies the posting rules to an account read under lock, the entry already holding the key (if any), and the
/// usage already debited in the spend cap's window (read under the same lock when the posting has a cap).
pub fn decide(
    posting: &Posting,
    account: Option<AccountState>,
    existing: Option<Entry>,
    spent_in_window: Millicredits,
) -> Decision {
    let Some(account) = account else {
        return Decision::Refuse(PostingOutcome::AccountNotFound);
    };
    if let Some(entry) = existing {
        return Decision::Refuse(if posting.same_content_as(&entry) {
            PostingOutcome::Exists(entry)
        } else {
            PostingOutcome::ExistsWithDifferentContent(entry)
        });
    }
    if account.status == AccountStatus::Frozen && posting.kind == EntryKind::UsageDebit {
        return Decision::Refuse(PostingOutcome::AccountFrozen);
    }
    if let Some(cap) = posting.spend_cap.filter(|_| posting.kind == EntryKind::UsageDebit) {
        let charge = posting.amount.checked_neg().unwrap_or(Millicredits::MAX);
        let over = spent_in_window.checked_add(charge).map_or(true, |total| total > cap.limit);
        if over {
            return Decision::Refuse(PostingOutcome::SpendCapExceeded { limit: cap.limit, spent: spent_in_window });
        }
    }
    let Ok(balance_after) = account.balance.checked_add(posting.amount) else {
        return Decision::Refuse(PostingOutcome::Overflow);
    };
    if posting.amount.is_negative() && balance_after.is_negative() && posting.overdraft == Overdraft::Forbid {
        // The shortfall is what the account lacks from where it stands; an account already below zero lacks the
        // whole debit plus its debt. Negating a negative balance_after cannot overflow: it is above i64::MIN.
        let shortfall = balance_after.checked_neg().unwrap_or(Millicredits::MAX);
        return Decision::Refuse(PostingOutcome::InsufficientFunds { balance: account.balance, shortfall });
    }
    let Some(sequence) = account.last_sequence.checked_add(1) else {
        return Decision::Refuse(PostingOutcome::Overflow);
    };
    Decision::Append { sequence, balance_after }
}

#[cfg(test)]
mod tests;
