//! Purchases: the state of each Stripe PaymentIntent creditflow sells a pack through.
//!
//! A purchase row is a record of the payment, kept current; the money itself moves only through the ledger, whose
//! idempotency key makes the credit happen once per payment. Recording is an upsert that never moves a purchase
//! back from `succeeded`, so events arriving out of order cannot undo a fulfilment.

use creditflow_domain::AccountId;

use crate::{Store, StoreError, Timestamp, on_backend};

/// Where a payment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurchaseStatus {
    /// Created or processing.
    Pending,
    /// Paid (and credited).
    Succeeded,
    /// The payment failed.
    Failed,
}

impl PurchaseStatus {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// A purchase as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purchase {
    /// Stripe's PaymentIntent id (`pi_...`).
    pub payment_intent_id: String,
    /// The account buying.
    pub account_id: AccountId,
    /// The pack bought.
    pub pack_id: String,
    /// The price charged, in US cents.
    pub amount_usd_cents: i64,
    /// ISO currency code, lower case.
    pub currency: String,
    /// Where it stands.
    pub status: PurchaseStatus,
    /// The ledger credit, once fulfilled.
    pub ledger_entry_id: Option<String>,
    /// Why it failed, when it did.
    pub last_error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct PurchaseRow {
    payment_intent_id: String,
    account_id: String,
    pack_id: String,
    amount_usd_cents: i64,
    currency: String,
    status: String,
    ledger_entry_id: Option<String>,
    last_error: Option<String>,
}

impl Store {
    /// Records a purchase's state. A purchase that succeeded stays succeeded; otherwise the new state replaces the old.
    pub async fn record_purchase(&self, purchase: &Purchase) -> Result<(), StoreError> {
        let now = Timestamp::now();
        let sql = "INSERT INTO purchases (payment_intent_id, account_id, pack_id, amount_usd_cents, currency, status, \
                   ledger_entry_id, last_error, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
                   ON CONFLICT (payment_intent_id) DO UPDATE SET \
                   status = excluded.status, \
                   ledger_entry_id = COALESCE(excluded.ledger_entry_id, purchases.ledger_entry_id), \
                   last_error = excluded.last_error, updated_at = excluded.updated_at \
                   WHERE purchases.status <> 'succeeded'";
        on_backend!(self, |pool, _dialect| {
            sqlx::query(sql)
                .bind(purchase.payment_intent_id.as_str())
                .bind(purchase.account_id.as_str())
                .bind(purchase.pack_id.as_str())
                .bind(purchase.amount_usd_cents)
                .bind(purchase.currency.as_str())
                .bind(purchase.status.as_str())
                .bind(purchase.ledger_entry_id.as_deref())
                .bind(purchase.last_error.as_deref())
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The purchase made through a PaymentIntent.
    pub async fn purchase(&self, payment_intent_id: &str) -> Result<Option<Purchase>, StoreError> {
        let sql = "SELECT payment_intent_id, account_id, pack_id, amount_usd_cents, currency, status, ledger_entry_id, \
                   last_error FROM purchases WHERE payment_intent_id = $1";
        let row: Option<PurchaseRow> = on_backend!(self, |pool, _dialect| sqlx::query_as(sql)
            .bind(payment_intent_id)
            .fetch_optional(pool)
            .await?);
        row.map(|row| {
            let corrupt = |what: &str| StoreError::Corrupt(format!("purchase {}: {what}", row.payment_intent_id));
            let status = match row.status.as_str() {
                "pending" => PurchaseStatus::Pending,
                "succeeded" => PurchaseStatus::Succeeded,
                "failed" => PurchaseStatus::Failed,
                _ => return Err(corrupt("status")),
            };
            Ok(Purchase {
                account_id: AccountId::new(row.account_id.clone()).map_err(|_| corrupt("account id"))?,
                payment_intent_id: row.payment_intent_id,
                pack_id: row.pack_id,
                amount_usd_cents: row.amount_usd_cents,
                currency: row.currency,
                status,
                ledger_entry_id: row.ledger_entry_id,
                last_error: row.last_error,
            })
        })
        .transpose()
    }
}

impl Store {
    /// The Stripe customer of an account, once one was made.
    pub async fn stripe_customer(&self, account_id: &AccountId) -> Result<Option<String>, StoreError> {
        let sql = "SELECT customer_id FROM stripe_customers WHERE account_id = $1";
        let id: Option<String> = on_backend!(self, |pool, _dialect| sqlx::query_scalar(sql)
            .bind(account_id.as_str())
            .fetch_optional(pool)
            .await?);
        Ok(id)
    }

    /// Remembers `customer_id` as the account's Stripe customer unless one is already remembered; returns the one
    /// that stands (so two racing first purchases agree on one customer).
    pub async fn remember_stripe_customer(
        &self,
        account_id: &AccountId,
        customer_id: &str,
    ) -> Result<String, StoreError> {
        let insert = "INSERT INTO stripe_customers (account_id, customer_id, created_at) VALUES ($1, $2, $3) \
                      ON CONFLICT (account_id) DO NOTHING";
        on_backend!(self, |pool, _dialect| {
            sqlx::query(insert)
                .bind(account_id.as_str())
                .bind(customer_id)
                .bind(Timestamp::now())
                .execute(pool)
                .await?;
        });
        self.stripe_customer(account_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("the Stripe customer of {account_id} vanished")))
    }
}
