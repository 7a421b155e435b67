//! Accounts: creation, reads and freezing.

use creditflow_domain::{AccountId, AccountStatus, Millicredits};
use time::OffsetDateTime;

use crate::audit::{NewAuditRecord, insert_audit};
use crate::rows::account_status;
use crate::{Store, StoreError, Timestamp, on_backend};

/// An account as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Its id.
    pub id: AccountId,
    /// Whether it may spend.
    pub status: AccountStatus,
    /// Current balance; always the sum of its entries.
    pub balance: Millicredits,
    /// Sequence of its last entry.
    pub last_sequence: i64,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct AccountRow {
    status: String,
    balance_millicredits: i64,
    last_sequence: i64,
    created_at: Timestamp,
}

impl Store {
    /// Creates an account with a zero balance; `false` when it already existed (nothing changes then).
    pub async fn create_account(&self, id: &AccountId) -> Result<bool, StoreError> {
        let now = Timestamp::now();
        let sql = "INSERT INTO accounts (id, status, balance_millicredits, last_sequence, created_at, updated_at) \
                   VALUES ($1, 'active', 0, 0, $2, $2) ON CONFLICT (id) DO NOTHING";
        let affected = on_backend!(self, |pool, _dialect| {
            sqlx::query(sql).bind(id.as_str()).bind(now).execute(pool).await?.rows_affected()
        });
        Ok(affected == 1)
    }

    /// Creates the accounts of `ids` that do not exist yet, a few hundred per statement.
    pub async fn create_accounts(&self, ids: &[&AccountId]) -> Result<(), StoreError> {
        let now = Timestamp::now();
        for chunk in ids.chunks(500) {
            let mut sql = String::from(
                "INSERT INTO accounts (id, status, balance_millicredits, last_sequence, created_at, updated_at) VALUES ",
            );
            let rows: Vec<String> =
                (0..chunk.len()).map(|index| format!("(${}, 'active', 0, 0, $1, $1)", index + 2)).collect();
            sql.push_str(&rows.join(", "));
            sql.push_str(" ON CONFLICT (id) DO NOTHING");
            on_backend!(self, |pool, _dialect| {
                // Only placeholders are generated; every value is bound.
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(now);
                for id in chunk {
                    query = query.bind(id.as_str());
                }
                query.execute(pool).await?;
            });
        }
        Ok(())
    }

    /// Reads an account.
    pub async fn account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        let sql = "SELECT status, balance_millicredits, last_sequence, created_at FROM accounts WHERE id = $1";
        let row: Option<AccountRow> =
            on_backend!(self, |pool, _dialect| sqlx::query_as(sql).bind(id.as_str()).fetch_optional(pool).await?);
        row.map(|row| {
            Ok(Account {
                id: id.clone(),
                status: account_status(id.as_str(), &row.status)?,
                balance: Millicredits::new(row.balance_millicredits),
                last_sequence: row.last_sequence,
                created_at: row.created_at.get(),
            })
        })
        .transpose()
    }

    /// Freezes or unfreezes an account and records who did it and why, in one transaction. Returns `false` when the
    /// account already had that status (the audit log still records the request).
    pub async fn set_account_status(
        &self,
        id: &AccountId,
        status: AccountStatus,
        audit: &NewAuditRecord,
    ) -> Result<bool, StoreError> {
        let now = Timestamp::now();
        let sql = "UPDATE accounts SET status = $2, updated_at = $3 WHERE id = $1 AND status <> $2";
        let exists_sql = "SELECT COUNT(*) FROM accounts WHERE id = $1";
        on_backend!(write self, |tx, _dialect| {
            let exists: i64 = sqlx::query_scalar(exists_sql).bind(id.as_str()).fetch_one(&mut *tx).await?;
            if exists == 0 {
                return Err(StoreError::AccountNotFound(id.to_string()));
            }
            let changed = sqlx::query(sql)
                .bind(id.as_str())
                .bind(status.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            insert_audit!(tx, audit, now).await?;
            tx.commit().await?;
            Ok(changed == 1)
        })
    }
}
