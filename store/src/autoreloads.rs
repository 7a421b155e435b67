//! Automatic top-ups: the record of each reload, from the debit that asked for it to its outcome.
//!
//! A usage debit that takes the balance under the account's autoreload threshold inserts a pending reload and its
//! job in the same transaction (see `posting`); a partial unique index keeps one reload in flight per account. The
//! job claims the reload before each charge attempt (pending -> charging, attempt number + 1), so two copies of the
//! job never charge at once; a claim whose holder vanished (a killed worker) can be resumed after a lease, with the
//! same attempt number and so the same Stripe idempotency key: the charge it may have made is replayed, not
//! repeated.

use creditflow_domain::AccountId;
use time::OffsetDateTime;

use crate::{Store, StoreError, Timestamp, on_backend};

/// The queue that runs reloads.
pub const AUTORELOADS_QUEUE: &str = "autoreloads";

/// Where a reload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoreloadState {
    /// Asked for, or waiting for its next attempt.
    Pending,
    /// An attempt holds it and may be charging the card.
    Charging,
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
            Self::Charging => "charging",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Charging, Self::Succeeded, Self::Failed, Self::Skipped]
            .into_iter()
            .find(|s| s.as_str() == text)
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
    /// Charge attempts claimed so far.
    pub attempts: i64,
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
    attempts: i64,
    packs: Option<i64>,
    amount_usd_cents: Option<i64>,
    payment_intent_id: Option<String>,
    reason: Option<String>,
    created_at: Timestamp,
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutoreloadClaim {
    /// This caller holds it now (its `attempts` is this attempt's number).
    Claimed(AutoreloadRecord),
    /// Another attempt holds it.
    Busy,
    /// It is settled.
    Settled(AutoreloadState),
    /// No such reload.
    Missing,
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
        let sql = "SELECT id, account_id, trigger_entry_id, state, attempts, packs, amount_usd_cents, payment_intent_id, \
                   reason, created_at FROM autoreloads WHERE id = $1";
        let row: Option<Row> =
            on_backend!(self, |pool, _dialect| sqlx::query_as(sql).bind(id).fetch_optional(pool).await?);
        row.map(|row| {
            let corrupt = |what: &str| StoreError::Corrupt(format!("autoreload {}: {what}", row.id));
            Ok(AutoreloadRecord {
                account_id: AccountId::new(row.account_id.clone()).map_err(|_| corrupt("account id"))?,
                state: AutoreloadState::parse(&row.state).ok_or_else(|| corrupt("state"))?,
                id: row.id,
                trigger_entry_id: row.trigger_entry_id,
                attempts: row.attempts,
                packs: row.packs,
                amount_usd_cents: row.amount_usd_cents,
                payment_intent_id: row.payment_intent_id,
                reason: row.reason,
                created_at: row.created_at.get(),
            })
        })
        .transpose()
    }

    /// Claims a reload for a charge attempt: a pending one gets the next attempt number; a charging one whose
    /// claim is older than `lease` (its holder vanished) is resumed with its attempt number.
    pub async fn claim_autoreload(&self, id: &str, lease: time::Duration) -> Result<AutoreloadClaim, StoreError> {
        let now = Timestamp::now();
        let stale = Timestamp::from(now.get() - lease);
        let fresh = "UPDATE autoreloads SET state = 'charging', attempts = attempts + 1, claimed_at = $2, \
                     updated_at = $2 WHERE id = $1 AND state = 'pending'";
        let resume = "UPDATE autoreloads SET claimed_at = $2, updated_at = $2 \
                      WHERE id = $1 AND state = 'charging' AND claimed_at < $3";
        let (fresh, resumed) = on_backend!(self, |pool, _dialect| {
            let fresh = sqlx::query(fresh).bind(id).bind(now).execute(pool).await?.rows_affected();
            let resumed = if fresh == 0 {
                sqlx::query(resume).bind(id).bind(now).bind(stale).execute(pool).await?.rows_affected()
            } else {
                0
            };
            (fresh, resumed)
        });
        let Some(reload) = self.autoreload(id).await? else { return Ok(AutoreloadClaim::Missing) };
        Ok(match (fresh, resumed, reload.state) {
            (1, _, _) | (_, 1, _) => AutoreloadClaim::Claimed(reload),
            (_, _, AutoreloadState::Charging | AutoreloadState::Pending) => AutoreloadClaim::Busy,
            (_, _, settled) => AutoreloadClaim::Settled(settled),
        })
    }

    /// Fixes what a reload buys (on its first attempt; later attempts keep the first answer) and returns it.
    pub async fn price_autoreload(
        &self,
        id: &str,
        packs: i64,
        amount_usd_cents: i64,
    ) -> Result<(i64, i64), StoreError> {
        let sql = "UPDATE autoreloads SET packs = COALESCE(packs, $2), amount_usd_cents = COALESCE(amount_usd_cents, $3) \
                   WHERE id = $1";
        let read = "SELECT packs, amount_usd_cents FROM autoreloads WHERE id = $1";
        let (packs, amount): (Option<i64>, Option<i64>) = on_backend!(self, |pool, _dialect| {
            sqlx::query(sql).bind(id).bind(packs).bind(amount_usd_cents).execute(pool).await?;
            sqlx::query_as(read).bind(id).fetch_one(pool).await?
        });
        packs.zip(amount).ok_or_else(|| StoreError::Corrupt(format!("autoreload {id} lost its price")))
    }

    /// Gives a claimed reload back: `retry_later` makes it pending for a new attempt (a decline); otherwise the
    /// claim is released at once for the same attempt to be resumed (a failure that may have reached Stripe).
    pub async fn release_autoreload(&self, id: &str, retry_later: bool, reason: &str) -> Result<(), StoreError> {
        let epoch = Timestamp::from(OffsetDateTime::UNIX_EPOCH);
        let sql = if retry_later {
            "UPDATE autoreloads SET state = 'pending', claimed_at = NULL, reason = $2, updated_at = $3 \
             WHERE id = $1 AND state = 'charging'"
        } else {
            "UPDATE autoreloads SET claimed_at = $4, reason = $2, updated_at = $3 WHERE id = $1 AND state = 'charging'"
        };
        on_backend!(self, |pool, _dialect| {
            sqlx::query(sql).bind(id).bind(reason).bind(Timestamp::now()).bind(epoch).execute(pool).await?;
        });
        Ok(())
    }

    /// Settles an unsettled reload (a settled one is left as it is); true when this call settled it.
    pub async fn settle_autoreload(&self, id: &str, outcome: &AutoreloadOutcome<'_>) -> Result<bool, StoreError> {
        let sql = "UPDATE autoreloads SET state = $2, packs = COALESCE($3, packs), \
                   amount_usd_cents = COALESCE($4, amount_usd_cents), payment_intent_id = COALESCE($5, payment_intent_id), \
                   reason = $6, updated_at = $7 WHERE id = $1 AND state IN ('pending', 'charging')";
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

    /// Records the PaymentIntent of a charge that is still processing (the reload stays charging until it settles).
    pub async fn set_autoreload_intent(&self, id: &str, payment_intent_id: &str) -> Result<(), StoreError> {
        let sql = "UPDATE autoreloads SET payment_intent_id = $2, updated_at = $3 WHERE id = $1";
        on_backend!(self, |pool, _dialect| {
            sqlx::query(sql).bind(id).bind(payment_intent_id).bind(Timestamp::now()).execute(pool).await?;
        });
        Ok(())
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
