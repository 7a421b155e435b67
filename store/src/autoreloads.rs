//! Automatic top-ups: the record of each reload, from the debit that asked for it to its outcome.
//!
//! A posting that leaves the balance under the account's autoreload threshold inserts a pending reload and its job
//! in the same transaction (see `posting`); a partial unique index keeps one pending reload per account, so a burst
//! of debits asks once. The job charges the saved card and settles the record here.

use creditflow_domain::AccountId;
use time::OffsetDateTime;

use crate::{Store, StoreError, Timestamp, on_backend};

/// The queue that runs reloads.
pub const AUTORELOADS_QUEUE: &str = "autoreloads";

/// Where a reload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoreloadState {
    /// Asked for; its job has not settled it.
    Pending,
    /// Charged and credited.
    Succeeded,
    /// The charge failed (declined, no saved card).
    Failed,
    /// Not charged: disabled meanwhile, the balance recovered, or the monthly cap would be passed.
    Skipped,
}

impl AutoreloadState {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed, Self::Skipped].into_iter().find(|s| s.as_str() == text)
    }
}

/// A reload as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoreloadRecord {
    /// `ar_...`.
    pub id: String,
    /// The account topped up.
    pub account_id: AccountId,
    /// The debit that asked for it (the Stripe idempotency key derives from it).
    pub trigger_entry_id: String,
    /// Where it stands.
    pub state: AutoreloadState,
    /// Packs bought.
    pub packs: Option<i64>,
    /// Charged, in US cents.
    pub amount_usd_cents: Option<i64>,
    /// The off-session PaymentIntent.
    pub payment_intent_id: Option<String>,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// When it was asked for.
    pub created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    account_id: String,
    trigger_entry_id: String,
    state: String,
    packs: Option<i64>,
    amount_usd_cents: Option<i64>,
    payment_intent_id: Option<String>,
    reason: Option<String>,
    created_at: Timestamp,
}

/// How a reload settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoreloadOutcome<'a> {
    /// Succeeded, failed or skipped.
    pub state: AutoreloadState,
    /// Packs bought (or that would have been).
    pub packs: Option<i64>,
    /// Charged (or that would have been), in US cents.
    pub amount_usd_cents: Option<i64>,
    /// The PaymentIntent, when one was made.
    pub payment_intent_id: Option<&'a str>,
    /// Why it failed or was skipped.
    pub reason: Option<&'a str>,
}

impl Store {
    /// One reload.
    pub async fn autoreload(&self, id: &str) -> Result<Option<AutoreloadRecord>, StoreError> {
        let sql = "SELECT id, account_id, trigger_entry_id, state, packs, amount_usd_cents, payment_intent_id, reason, \
                   created_at FROM autoreloads WHERE id = $1";
        let row: Option<Row> =
            on_backend!(self, |pool, _dialect| sqlx::query_as(sql).bind(id).fetch_optional(pool).await?);
        row.map(|row| {
            let corrupt = |what: &str| StoreError::Corrupt(format!("autoreload {}: {what}", row.id));
            Ok(AutoreloadRecord {
                account_id: AccountId::new(row.account_id.clone()).map_err(|_| corrupt("account id"))?,
                state: AutoreloadState::parse(&row.state).ok_or_else(|| corrupt("state"))?,
                id: row.id,
                trigger_entry_id: row.trigger_entry_id,
                packs: row.packs,
                amount_usd_cents: row.amount_usd_cents,
                payment_intent_id: row.payment_intent_id,
                reason: row.reason,
                created_at: row.created_at.get(),
            })
        })
        .transpose()
    }

    /// Settles a pending reload (a settled one is left as it is); true when this call settled it.
    pub async fn settle_autoreload(&self, id: &str, outcome: &AutoreloadOutcome<'_>) -> Result<bool, StoreError> {
        let sql = "UPDATE autoreloads SET state = $2, packs = $3, amount_usd_cents = $4, payment_intent_id = $5, \
                   reason = $6, updated_at = $7 WHERE id = $1 AND state = 'pending'";
        let changed = on_backend!(self, |pool, _dialect| {
            sqlx::query(sql)
                .bind(id)
                .bind(outcome.state.as_str())
                .bind(outcome.packs)
                .bind(outcome.amount_usd_cents)
                .bind(outcome.payment_intent_id)
                .bind(outcome.reason)
                .bind(Timestamp::now())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(changed == 1)
    }

    /// US cents charged by the account's successful reloads since `since`.
    pub async fn autoreload_spent_since(
        &self,
        account_id: &AccountId,
        since: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let sql = "SELECT CAST(COALESCE(SUM(amount_usd_cents), 0) AS BIGINT) FROM autoreloads \
                   WHERE account_id = $1 AND state = 'succeeded' AND created_at >= $2";
        let spent: i64 = on_backend!(self, |pool, _dialect| sqlx::query_scalar(sql)
            .bind(account_id.as_str())
            .bind(Timestamp::from(since))
            .fetch_one(pool)
            .await?);
        Ok(spent)
    }

    /// Failed reloads of the account since its last successful one.
    pub async fn autoreload_failures_in_a_row(&self, account_id: &AccountId) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM autoreloads WHERE account_id = $1 AND state = 'failed' AND created_at > \
                   COALESCE((SELECT MAX(created_at) FROM autoreloads WHERE account_id = $1 AND state = 'succeeded'), \
                   $2)";
        let epoch = Timestamp::from(OffsetDateTime::UNIX_EPOCH);
        let count: i64 = on_backend!(self, |pool, _dialect| sqlx::query_scalar(sql)
            .bind(account_id.as_str())
            .bind(epoch)
            .fetch_one(pool)
            .await?);
        Ok(count)
    }

    /// Turns the account's autoreload off; true when it was on.
    pub async fn disable_autoreload(&self, account_id: &AccountId) -> Result<bool, StoreError> {
        let sql = "UPDATE account_settings SET autoreload_enabled = $2, updated_at = $3 \
                   WHERE account_id = $1 AND autoreload_enabled = $4";
        let changed = on_backend!(self, |pool, _dialect| {
            sqlx::query(sql)
                .bind(account_id.as_str())
                .bind(false)
                .bind(Timestamp::now())
                .bind(true)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(changed == 1)
    }
}
