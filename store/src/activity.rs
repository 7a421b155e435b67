//! Activity over a time window, across accounts: what the hourly rollup and the anomaly check read. Every query
//! is bounded by time on the `created_at` index, so its cost follows the window's activity, not the ledger's size.

use std::collections::BTreeMap;

use creditflow_domain::{AccountId, EntryKind, Millicredits};
use time::OffsetDateTime;

use crate::{Store, StoreError, Timestamp, on_backend};

/// Entries of one kind in a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindTotal {
    /// The kind.
    pub kind: EntryKind,
    /// How many entries.
    pub count: i64,
    /// Their signed sum.
    pub amount: Millicredits,
}

/// Usage debits of one model in a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelUsage {
    /// The model (`unknown` for debits recorded without one).
    pub model: String,
    /// Debits.
    pub debits: i64,
    /// Credits debited (positive).
    pub credits: Millicredits,
    /// Quantities per unit kind.
    pub units: BTreeMap<String, i64>,
}

/// Failures in a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailureCounts {
    /// Payments that failed.
    pub payments: i64,
    /// Autoreloads that failed.
    pub autoreloads: i64,
    /// Jobs that died.
    pub dead_jobs: i64,
}

/// Usage per model: (model, debits, credits) rows and (model, unit, quantity) rows.
type UsageRows = (Vec<(String, i64, i64)>, Vec<(String, String, i64)>);

impl Store {
    /// Entries per kind created in `[from, to)`.
    pub async fn totals_by_kind(&self, from: OffsetDateTime, to: OffsetDateTime) -> Result<Vec<KindTotal>, StoreError> {
        let sql = "SELECT kind, COUNT(*), CAST(COALESCE(SUM(amount_millicredits), 0) AS BIGINT) FROM ledger_entries \
                   WHERE created_at >= $1 AND created_at < $2 GROUP BY kind ORDER BY kind";
        let rows: Vec<(String, i64, i64)> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(Timestamp::from(from)).bind(Timestamp::from(to)).fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|(kind, count, amount)| {
                let kind = EntryKind::parse(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("ledger entries of kind `{kind}`")))?;
                Ok(KindTotal { kind, count, amount: Millicredits::new(amount) })
            })
            .collect()
    }

    /// Usage debits per model created in `[from, to)`, with their quantities per unit kind.
    pub async fn usage_by_model(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<ModelUsage>, StoreError> {
        let totals = "SELECT COALESCE(model, 'unknown'), COUNT(*), CAST(-COALESCE(SUM(amount_millicredits), 0) AS BIGINT) \
                      FROM ledger_entries WHERE kind = 'usage_debit' AND created_at >= $1 AND created_at < $2 \
                      GROUP BY COALESCE(model, 'unknown') ORDER BY 1";
        let (from, to) = (Timestamp::from(from), Timestamp::from(to));
        let (rows, units): UsageRows = on_backend!(self, |pool, dialect| {
            let rows = sqlx::query_as(totals).bind(from).bind(to).fetch_all(pool).await?;
            let units = sqlx::query_as(dialect.units_by_model).bind(from).bind(to).fetch_all(pool).await?;
            (rows, units)
        });
        Ok(rows
            .into_iter()
            .map(|(model, debits, credits)| {
                let units = units
                    .iter()
                    .filter(|(unit_model, _, _)| *unit_model == model)
                    .map(|(_, unit, quantity)| (unit.clone(), *quantity))
                    .collect();
                ModelUsage { model, debits, credits: Millicredits::new(credits), units }
            })
            .collect())
    }

    /// Payments, autoreloads and jobs that failed in `[from, to)`.
    pub async fn failures_between(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<FailureCounts, StoreError> {
        let sql = "SELECT \
                   (SELECT COUNT(*) FROM purchases WHERE status = 'failed' AND updated_at >= $1 AND updated_at < $2), \
                   (SELECT COUNT(*) FROM autoreloads WHERE state = 'failed' AND updated_at >= $1 AND updated_at < $2), \
                   (SELECT COUNT(*) FROM jobs WHERE state = 'dead' AND updated_at >= $1 AND updated_at < $2)";
        let (payments, autoreloads, dead_jobs): (i64, i64, i64) = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(Timestamp::from(from)).bind(Timestamp::from(to)).fetch_one(pool).await?
        });
        Ok(FailureCounts { payments, autoreloads, dead_jobs })
    }

    /// Usage debited per account in `[from, to)` (positive amounts), for accounts with any.
    pub async fn spend_by_account(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<BTreeMap<AccountId, Millicredits>, StoreError> {
        let sql = "SELECT account_id, CAST(-SUM(amount_millicredits) AS BIGINT) FROM ledger_entries \
                   WHERE kind = 'usage_debit' AND created_at >= $1 AND created_at < $2 GROUP BY account_id";
        let rows: Vec<(String, i64)> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(Timestamp::from(from)).bind(Timestamp::from(to)).fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|(account, spent)| {
                let id = AccountId::new(account.clone())
                    .map_err(|_| StoreError::Corrupt(format!("ledger entries of account `{account}`")))?;
                Ok((id, Millicredits::new(spent)))
            })
            .collect()
    }

    /// Records an anomaly unless the account was flagged in the 24 hours before `hour_start` (one spike stays in the
    /// sliding 24-hour window for a day: it is one anomaly), and in the same transaction announces it to the
    /// monitoring webhooks as `anomaly.detected` with `data`; true when it is new.
    pub async fn record_anomaly(
        &self,
        account_id: &AccountId,
        hour_start: OffsetDateTime,
        spent_24h: Millicredits,
        daily_average: Millicredits,
        data: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let sql = "INSERT INTO anomalies (account_id, hour_start, spent_24h_millicredits, daily_average_millicredits, \
                   detected_at) SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM anomalies \
                   WHERE account_id = $1 AND hour_start > $6 AND hour_start <= $2) \
                   ON CONFLICT (account_id, hour_start) DO NOTHING";
        let announce = "INSERT INTO outbox (queue, payload, created_at, dedupe_key) VALUES ($1, $2, $3, $4) \
                        ON CONFLICT (dedupe_key) DO NOTHING";
        let event_id = format!("evt_anomaly_{}_{}", account_id.as_str(), hour_start.unix_timestamp());
        let payload = crate::inbox::webhook_event("anomaly.detected", &event_id, data);
        let now = Timestamp::now();
        on_backend!(write self, |tx, _dialect| {
            let inserted = sqlx::query(sql)
                .bind(account_id.as_str())
                .bind(Timestamp::from(hour_start))
                .bind(spent_24h.get())
                .bind(daily_average.get())
                .bind(now)
                .bind(Timestamp::from(hour_start - time::Duration::DAY))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted == 1 {
                sqlx::query(announce)
                    .bind(crate::inbox::WEBHOOK_EVENTS_QUEUE)
                    .bind(payload.as_str())
                    .bind(now)
                    .bind(event_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.outbox_written();
            }
            Ok(inserted == 1)
        })
    }

    /// Accounts flagged as anomalies since `since`.
    pub async fn anomalies_since(&self, since: OffsetDateTime) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(DISTINCT account_id) FROM anomalies WHERE detected_at >= $1";
        let count: i64 = on_backend!(self, |pool, _dialect| {
            sqlx::query_scalar(sql).bind(Timestamp::from(since)).fetch_one(pool).await?
        });
        Ok(count)
    }
}
