//! What the nightly reconciliation report reads and keeps: a day's entries as columns, the daily ledger totals that
//! spare it from reading history, the payments credited in a window, the balances check, and the stored reports.
//!
//! Every read is bounded by time on the `created_at` index (a day, or a week for a few accounts) or by the number of
//! accounts, so a night's cost follows the day's activity; only the very first report reads the whole ledger once,
//! for the liability it opens with.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use time::OffsetDateTime;

use crate::{Backend, Store, StoreError, Timestamp, on_backend};

/// Queue of the report jobs.
pub const REPORTS_QUEUE: &str = "reports";

/// A window's ledger entries, column by column (the shape the report's data frames take).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryColumns {
    /// Entry ids.
    pub ids: Vec<String>,
    /// Accounts.
    pub accounts: Vec<String>,
    /// Kinds (`usage_debit`...).
    pub kinds: Vec<String>,
    /// Signed amounts.
    pub amounts: Vec<i64>,
    /// The model of usage debits.
    pub models: Vec<Option<String>>,
    /// The rate card version of usage debits.
    pub rate_versions: Vec<Option<String>>,
    /// When each was posted, Unix microseconds.
    pub created_at_us: Vec<i64>,
}

impl EntryColumns {
    /// How many entries.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The totals of one settled day of the ledger in a time zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerDay {
    /// The zone the day is in (`UTC`, `Europe/Paris`).
    pub time_zone: String,
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Its first instant.
    pub starts_at: OffsetDateTime,
    /// The first instant after it.
    pub ends_at: OffsetDateTime,
    /// Entries posted in it.
    pub entries: i64,
    /// Credits bought (purchases and autoreloads).
    pub purchased: i64,
    /// Credits granted (purchases, autoreloads, positive adjustments).
    pub granted: i64,
    /// Credits taken (usage, refunds, negative adjustments), positive.
    pub debited: i64,
    /// What the ledger owed its customers when the day ended.
    pub closing_liability: i64,
}

/// A payment whose credit was posted in a window: our side of the Stripe comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditedPayment {
    /// The Stripe PaymentIntent.
    pub payment_intent_id: String,
    /// The account credited.
    pub account_id: String,
    /// What the customer paid, USD cents.
    pub amount_usd_cents: i64,
    /// `purchase_credit` or `autoreload_credit`.
    pub kind: String,
    /// Credits granted.
    pub credited: i64,
    /// When it was credited.
    pub credited_at: OffsetDateTime,
}

/// A usage debit with what it paid for, to be priced again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDetail {
    /// The entry.
    pub entry_id: String,
    /// Its account.
    pub account_id: String,
    /// The model used (`None` when the debit recorded none).
    pub model: Option<String>,
    /// Quantities per unit kind (`None` when the debit recorded none, or they do not read).
    pub units: Option<BTreeMap<String, u64>>,
    /// The rate card version it recorded.
    pub rate_version: Option<String>,
    /// What it debited (negative).
    pub amount: i64,
}

/// An account whose balance is not the balance its last entry left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceDisagreement {
    /// The account.
    pub account_id: String,
    /// Its recorded balance.
    pub balance: i64,
    /// The balance after its last entry (the sum of its entries).
    pub ledger_balance: i64,
}

/// Balances against entries, read in one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalanceCheck {
    /// The sum of every account's balance now.
    pub balances: i64,
    /// The net of the entries posted at or after the instant asked about (to take the balances back to it).
    pub net_after: i64,
    /// Accounts whose balance disagrees with their entries (at most [`DISAGREEMENTS_LISTED`]).
    pub disagreeing: Vec<BalanceDisagreement>,
}

/// The most disagreeing accounts a balance check lists.
pub const DISAGREEMENTS_LISTED: i64 = 1_000;

/// A file of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFile {
    /// `summary.json`, `report.html`, `top_spenders.csv`...
    pub name: String,
    /// Its media type.
    pub content_type: String,
    /// Its bytes.
    pub body: Vec<u8>,
}

/// A stored report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReport {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The zone its day is in.
    pub time_zone: String,
    /// True when every check passed.
    pub passed: bool,
    /// The summary (JSON).
    pub summary: String,
    /// When it was computed.
    pub generated_at: OffsetDateTime,
    /// When it was emailed to finance.
    pub emailed_at: Option<OffsetDateTime>,
    /// Its files: name, media type, size in bytes.
    pub files: Vec<(String, String, i64)>,
}

/// A report to store, with the `report.ready` announcement that goes with it.
#[derive(Clone, Debug)]
pub struct NewReport<'a> {
    /// `YYYY-MM-DD`.
    pub date: &'a str,
    /// The zone its day is in.
    pub time_zone: &'a str,
    /// True when every check passed.
    pub passed: bool,
    /// The summary (JSON).
    pub summary: &'a str,
    /// Its files (replacing those of an earlier run of the same date).
    pub files: &'a [ReportFile],
    /// The `report.ready` event's id (one per run).
    pub event_id: &'a str,
    /// The `report.ready` event's data.
    pub event_data: &'a serde_json::Value,
}

type EntryRow = (String, String, String, i64, Option<String>, Option<String>, Timestamp);
type PaymentRow = (String, String, i64, String, i64, Timestamp);
type DetailRow = (String, String, Option<String>, Option<String>, Option<String>, i64);
type DayRow = (String, String, Timestamp, Timestamp, i64, i64, i64, i64, i64);
type ReportRow = (String, String, bool, String, Timestamp, Option<Timestamp>);

/// `$n` holds a JSON array of strings: the SQL that reads it as a set, per backend.
fn json_strings(backend: Backend, parameter: &str) -> String {
    match backend {
        Backend::Sqlite => format!("(SELECT value FROM json_each({parameter}))"),
        Backend::Postgres => format!("(SELECT jsonb_array_elements_text({parameter}::jsonb))"),
    }
}

fn json_array(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

impl Store {
    /// The entries posted in `[from, to)`, as columns, read as a stream (a day of millions of entries never sits in
    /// memory twice).
    pub async fn entries_between(&self, from: OffsetDateTime, to: OffsetDateTime) -> Result<EntryColumns, StoreError> {
        let sql = "SELECT id, account_id, kind, amount_millicredits, model, rate_version, created_at \
                   FROM ledger_entries WHERE created_at >= $1 AND created_at < $2";
        let mut columns = EntryColumns::default();
        let mut push = |(id, account, kind, amount, model, version, at): EntryRow| {
            columns.ids.push(id);
            columns.accounts.push(account);
            columns.kinds.push(kind);
            columns.amounts.push(amount);
            columns.models.push(model);
            columns.rate_versions.push(version);
            let micros = at.get().unix_timestamp_nanos() / 1_000;
            columns.created_at_us.push(i64::try_from(micros).unwrap_or(i64::MAX));
        };
        on_backend!(self, |pool, _dialect| {
            let mut rows =
                sqlx::query_as::<_, EntryRow>(sql).bind(Timestamp::from(from)).bind(Timestamp::from(to)).fetch(pool);
            while let Some(row) = rows.try_next().await? {
                push(row);
            }
        });
        Ok(columns)
    }

    /// The net of every entry posted before `at`: what the ledger owed then. Reads the whole history before `at`;
    /// the report asks once, then keeps daily totals.
    pub async fn liability_before(&self, at: OffsetDateTime) -> Result<i64, StoreError> {
        let sql =
            "SELECT CAST(COALESCE(SUM(amount_millicredits), 0) AS BIGINT) FROM ledger_entries WHERE created_at < $1";
        let total: i64 = on_backend!(self, |pool, _dialect| {
            sqlx::query_scalar(sql).bind(Timestamp::from(at)).fetch_one(pool).await?
        });
        Ok(total)
    }

    /// The stored totals of the days `first` to `last` (`YYYY-MM-DD`, inclusive) in `time_zone`, oldest first.
    pub async fn ledger_days(&self, time_zone: &str, first: &str, last: &str) -> Result<Vec<LedgerDay>, StoreError> {
        let sql = "SELECT time_zone, day, starts_at, ends_at, entries, purchased_millicredits, granted_millicredits, \
                   debited_millicredits, closing_liability_millicredits FROM ledger_days \
                   WHERE time_zone = $1 AND day >= $2 AND day <= $3 ORDER BY day";
        let rows: Vec<DayRow> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(time_zone).bind(first).bind(last).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(time_zone, day, starts_at, ends_at, entries, purchased, granted, debited, closing)| LedgerDay {
                time_zone,
                day,
                starts_at: starts_at.get(),
                ends_at: ends_at.get(),
                entries,
                purchased,
                granted,
                debited,
                closing_liability: closing,
            })
            .collect())
    }

    /// Keeps the totals of finished days, in one transaction (one short hold of SQLite's writer however many days);
    /// a day already kept is left as it was.
    pub async fn save_ledger_days(&self, days: &[LedgerDay]) -> Result<(), StoreError> {
        if days.is_empty() {
            return Ok(());
        }
        let sql = "INSERT INTO ledger_days (time_zone, day, starts_at, ends_at, entries, purchased_millicredits, \
                   granted_millicredits, debited_millicredits, closing_liability_millicredits, computed_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (time_zone, day) DO NOTHING";
        let now = Timestamp::now();
        on_backend!(write self, |tx, _dialect| {
            for day in days {
                sqlx::query(sql)
                    .bind(&day.time_zone)
                    .bind(&day.day)
                    .bind(Timestamp::from(day.starts_at))
                    .bind(Timestamp::from(day.ends_at))
                    .bind(day.entries)
                    .bind(day.purchased)
                    .bind(day.granted)
                    .bind(day.debited)
                    .bind(day.closing_liability)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The payments whose credit was posted in `[from, to)`, by PaymentIntent.
    pub async fn payments_credited_between(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<CreditedPayment>, StoreError> {
        let sql = "SELECT p.payment_intent_id, p.account_id, p.amount_usd_cents, e.kind, e.amount_millicredits, \
                   e.created_at FROM ledger_entries e JOIN purchases p ON p.ledger_entry_id = e.id \
                   WHERE e.created_at >= $1 AND e.created_at < $2 \
                   AND e.kind IN ('purchase_credit', 'autoreload_credit') ORDER BY p.payment_intent_id";
        let rows: Vec<PaymentRow> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(Timestamp::from(from)).bind(Timestamp::from(to)).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(payment_intent_id, account_id, amount_usd_cents, kind, credited, at)| CreditedPayment {
                payment_intent_id,
                account_id,
                amount_usd_cents,
                kind,
                credited,
                credited_at: at.get(),
            })
            .collect())
    }

    /// When each of `payment_intents` was credited, for those that were (whatever the day).
    pub async fn credited_at(
        &self,
        payment_intents: &[String],
    ) -> Result<BTreeMap<String, OffsetDateTime>, StoreError> {
        if payment_intents.is_empty() {
            return Ok(BTreeMap::new());
        }
        let sql = format!(
            "SELECT p.payment_intent_id, e.created_at FROM purchases p JOIN ledger_entries e ON e.id = p.ledger_entry_id \
             WHERE p.payment_intent_id IN {}",
            json_strings(self.backend(), "$1")
        );
        let rows: Vec<(String, Timestamp)> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(json_array(payment_intents)).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(|(intent, at)| (intent, at.get())).collect())
    }

    /// Usage debited in `[from, to)` by each of `accounts` that had any (positive amounts).
    pub async fn usage_spend_of(
        &self,
        accounts: &[String],
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        if accounts.is_empty() {
            return Ok(BTreeMap::new());
        }
        let sql = format!(
            "SELECT account_id, CAST(-SUM(amount_millicredits) AS BIGINT) FROM ledger_entries \
             WHERE kind = 'usage_debit' AND created_at >= $1 AND created_at < $2 AND account_id IN {} \
             GROUP BY account_id",
            json_strings(self.backend(), "$3")
        );
        let rows: Vec<(String, i64)> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(Timestamp::from(from))
                .bind(Timestamp::from(to))
                .bind(json_array(accounts))
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// The quantities the usage debits posted in `[from, to)` priced, summed per model (`unknown` when none was
    /// recorded) and unit kind, read as a stream. Debits recorded before units were kept count for nothing here.
    pub async fn usage_units_between(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<BTreeMap<String, BTreeMap<String, u64>>, StoreError> {
        let sql = "SELECT model, units FROM ledger_entries \
                   WHERE kind = 'usage_debit' AND created_at >= $1 AND created_at < $2 AND units IS NOT NULL";
        let mut totals: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut add = |(model, units): (Option<String>, String)| -> Result<(), StoreError> {
            let units: BTreeMap<String, u64> = serde_json::from_str(&units)
                .map_err(|error| StoreError::Corrupt(format!("units of a usage debit: {error}")))?;
            let per_model = totals.entry(model.unwrap_or_else(|| "unknown".to_owned())).or_default();
            for (unit, quantity) in units {
                let sum = per_model.entry(unit).or_insert(0);
                *sum = sum.checked_add(quantity).ok_or_else(|| StoreError::Corrupt("units overflow u64".to_owned()))?;
            }
            Ok(())
        };
        on_backend!(self, |pool, _dialect| {
            let mut rows = sqlx::query_as::<_, (Option<String>, String)>(sql)
                .bind(Timestamp::from(from))
                .bind(Timestamp::from(to))
                .fetch(pool);
            while let Some(row) = rows.try_next().await? {
                add(row)?;
            }
        });
        Ok(totals)
    }

    /// The usage debits among `entry_ids`, with their model, units and rate card version.
    pub async fn usage_details(&self, entry_ids: &[String]) -> Result<Vec<UsageDetail>, StoreError> {
        if entry_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, account_id, model, units, rate_version, amount_millicredits FROM ledger_entries \
             WHERE kind = 'usage_debit' AND id IN {} ORDER BY id",
            json_strings(self.backend(), "$1")
        );
        let rows: Vec<DetailRow> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(json_array(entry_ids)).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(entry_id, account_id, model, units, rate_version, amount)| UsageDetail {
                entry_id,
                account_id,
                model,
                units: units.and_then(|text| serde_json::from_str(&text).ok()),
                rate_version,
                amount,
            })
            .collect())
    }

    /// The stored document of rate card `version`.
    pub async fn rate_card_document(&self, version: &str) -> Result<Option<String>, StoreError> {
        let sql = "SELECT document FROM rate_cards WHERE version = $1";
        let document: Option<String> =
            on_backend!(self, |pool, _dialect| sqlx::query_scalar(sql).bind(version).fetch_optional(pool).await?);
        Ok(document)
    }

    /// Balances against entries in one snapshot: the sum of balances, the net posted at or after `at`, and the
    /// accounts whose balance is not what their last entry left (their entries' sum: the database keeps each
    /// entry's balance the previous one's plus its amount). Reads every account once and the entries since `at`.
    pub async fn balance_check(&self, at: OffsetDateTime) -> Result<BalanceCheck, StoreError> {
        let balances_sql = "SELECT CAST(COALESCE(SUM(balance_millicredits), 0) AS BIGINT) FROM accounts";
        let after_sql = "SELECT CAST(COALESCE(SUM(amount_millicredits), 0) AS BIGINT) FROM ledger_entries \
                         WHERE created_at >= $1";
        let disagreeing_sql = "SELECT a.id, a.balance_millicredits, \
                               CAST(COALESCE(e.balance_after_millicredits, 0) AS BIGINT) FROM accounts a \
                               LEFT JOIN ledger_entries e ON e.account_id = a.id AND e.sequence = a.last_sequence \
                               WHERE a.balance_millicredits <> COALESCE(e.balance_after_millicredits, 0) \
                               ORDER BY a.id LIMIT $1";
        let (balances, net_after, rows): (i64, i64, Vec<(String, i64, i64)>) = on_backend!(self, |pool, dialect| {
            let mut tx = match dialect.begin_snapshot {
                Some(statement) => pool.begin_with(statement).await?,
                None => pool.begin().await?,
            };
            let balances = sqlx::query_scalar(balances_sql).fetch_one(&mut *tx).await?;
            let after = sqlx::query_scalar(after_sql).bind(Timestamp::from(at)).fetch_one(&mut *tx).await?;
            let rows = sqlx::query_as(disagreeing_sql).bind(DISAGREEMENTS_LISTED).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            (balances, after, rows)
        });
        let disagreeing = rows
            .into_iter()
            .map(|(account_id, balance, ledger_balance)| BalanceDisagreement { account_id, balance, ledger_balance })
            .collect();
        Ok(BalanceCheck { balances, net_after, disagreeing })
    }

    /// Stores a report (replacing an earlier run of its date) and, in the same transaction, announces it as
    /// `report.ready` to the monitoring webhooks.
    pub async fn save_report(&self, report: &NewReport<'_>) -> Result<(), StoreError> {
        let upsert = "INSERT INTO reports (report_date, time_zone, passed, summary, generated_at) \
                      VALUES ($1, $2, $3, $4, $5) ON CONFLICT (report_date) DO UPDATE SET \
                      time_zone = excluded.time_zone, passed = excluded.passed, summary = excluded.summary, \
                      generated_at = excluded.generated_at";
        let clear = "DELETE FROM report_files WHERE report_date = $1";
        let file = "INSERT INTO report_files (report_date, name, content_type, body) VALUES ($1, $2, $3, $4)";
        let announce = "INSERT INTO outbox (queue, payload, created_at, dedupe_key) VALUES ($1, $2, $3, $4) \
                        ON CONFLICT (dedupe_key) DO NOTHING";
        let payload = crate::inbox::webhook_event("report.ready", report.event_id, report.event_data);
        let now = Timestamp::now();
        on_backend!(write self, |tx, _dialect| {
            sqlx::query(upsert)
                .bind(report.date)
                .bind(report.time_zone)
                .bind(report.passed)
                .bind(report.summary)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(clear).bind(report.date).execute(&mut *tx).await?;
            for item in report.files {
                sqlx::query(file)
                    .bind(report.date)
                    .bind(&item.name)
                    .bind(&item.content_type)
                    .bind(&item.body)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(announce)
                .bind(crate::inbox::WEBHOOK_EVENTS_QUEUE)
                .bind(payload.as_str())
                .bind(now)
                .bind(report.event_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        self.outbox_written();
        Ok(())
    }

    /// Records that the report of `date` was emailed now.
    pub async fn mark_report_emailed(&self, date: &str) -> Result<(), StoreError> {
        on_backend!(self, |pool, _dialect| {
            sqlx::query("UPDATE reports SET emailed_at = $2 WHERE report_date = $1")
                .bind(date)
                .bind(Timestamp::now())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The stored report of `date`.
    pub async fn report(&self, date: &str) -> Result<Option<StoredReport>, StoreError> {
        let sql = "SELECT report_date, time_zone, passed, summary, generated_at, emailed_at FROM reports \
                   WHERE report_date = $1";
        let files_sql = "SELECT name, content_type, CAST(LENGTH(body) AS BIGINT) FROM report_files \
                         WHERE report_date = $1 ORDER BY name";
        let (row, files): (Option<ReportRow>, Vec<(String, String, i64)>) = on_backend!(self, |pool, _dialect| {
            let row = sqlx::query_as(sql).bind(date).fetch_optional(pool).await?;
            let files = sqlx::query_as(files_sql).bind(date).fetch_all(pool).await?;
            (row, files)
        });
        Ok(row.map(|(date, time_zone, passed, summary, generated_at, emailed_at)| StoredReport {
            date,
            time_zone,
            passed,
            summary,
            generated_at: generated_at.get(),
            emailed_at: emailed_at.map(Timestamp::get),
            files,
        }))
    }

    /// The latest date with a stored report (`YYYY-MM-DD`), if any.
    pub async fn latest_report_date(&self) -> Result<Option<String>, StoreError> {
        let sql = "SELECT MAX(report_date) FROM reports";
        Ok(on_backend!(self, |pool, _dialect| sqlx::query_scalar(sql).fetch_one(pool).await?))
    }

    /// The stored report of the latest date, if any.
    pub async fn latest_report(&self) -> Result<Option<StoredReport>, StoreError> {
        match self.latest_report_date().await? {
            Some(date) => self.report(&date).await,
            None => Ok(None),
        }
    }

    /// One file of the stored report of `date`.
    pub async fn report_file(&self, date: &str, name: &str) -> Result<Option<ReportFile>, StoreError> {
        let sql = "SELECT name, content_type, body FROM report_files WHERE report_date = $1 AND name = $2";
        let row: Option<(String, String, Vec<u8>)> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(date).bind(name).fetch_optional(pool).await?
        });
        Ok(row.map(|(name, content_type, body)| ReportFile { name, content_type, body }))
    }
}
