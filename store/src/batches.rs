//! Usage batches: a caller's events, stored whole when accepted and priced by a job afterwards.
//!
//! Accepting a batch writes the batch row and the outbox row that asks for its processing in one transaction, so an
//! accepted batch is always processed and a refused one never is. The job records its counts when it is done; the
//! debits themselves are ledger entries keyed by event id, so processing a batch twice debits nothing twice.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Store, StoreError, Timestamp, on_backend};

/// The queue that prices usage batches.
pub const USAGE_BATCHES_QUEUE: &str = "usage_batches";

/// Where a batch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchStatus {
    /// Stored; its job has not started.
    Accepted,
    /// Its job is pricing and debiting it.
    Processing,
    /// Every event was debited, found to be a duplicate, or rejected.
    Completed,
    /// Its job died (see `last_error`); the events it debited stay debited, and retrying the job finishes it.
    Failed,
}

impl BatchStatus {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Accepted, Self::Processing, Self::Completed, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// What processing a batch found, once it completed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchResult {
    /// Events debited (including those priced at zero).
    pub debited: i64,
    /// Events whose id was already debited for the account.
    pub duplicates: i64,
    /// Events refused, each with a reason in `rejections`.
    pub rejected: i64,
    /// Debits that left the balance below zero.
    pub overdrafts: i64,
    /// The sum debited, in millicredits.
    pub debited_millicredits: i64,
    /// `[{"index", "eventId", "code", "reason"}]`, as JSON.
    pub rejections: String,
}

/// A batch as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageBatch {
    /// `ubt_` and a time-ordered UUID.
    pub id: String,
    /// The token subject that submitted it.
    pub submitted_by: String,
    /// Where it stands.
    pub status: BatchStatus,
    /// How many events it holds.
    pub event_count: i64,
    /// The counts, once completed.
    pub result: Option<BatchResult>,
    /// When it was accepted (its events are priced with the rate cards in force then).
    pub created_at: OffsetDateTime,
    /// When its job finished.
    pub completed_at: Option<OffsetDateTime>,
    /// Why its job died, when it did.
    pub last_error: Option<String>,
}

/// The answer to submitting a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchSubmitted {
    /// Stored and queued.
    New(UsageBatch),
    /// The submitter already sent this batch under this key: the first one.
    Replayed(UsageBatch),
    /// The submitter used this key for different events.
    KeyReused,
}

#[derive(sqlx::FromRow)]
struct BatchRow {
    id: String,
    submitted_by: String,
    status: String,
    event_count: i64,
    debited_count: i64,
    duplicate_count: i64,
    rejected_count: i64,
    overdraft_count: i64,
    debited_millicredits: i64,
    rejections: Option<String>,
    last_error: Option<String>,
    created_at: Timestamp,
    completed_at: Option<Timestamp>,
}

macro_rules! batch_columns {
    () => {
        "id, submitted_by, status, event_count, debited_count, duplicate_count, rejected_count, overdraft_count, \
         debited_millicredits, rejections, last_error, created_at, completed_at"
    };
}
const SELECT_BATCH: &str = concat!("SELECT ", batch_columns!(), " FROM usage_batches WHERE id = $1");
const SELECT_BATCH_WITH_EVENTS: &str =
    concat!("SELECT ", batch_columns!(), ", events FROM usage_batches WHERE id = $1");
const SELECT_SUBMISSION: &str = concat!(
    "SELECT ",
    batch_columns!(),
    ", events FROM usage_batches WHERE submitted_by = $1 AND idempotency_key = $2"
);

/// A batch row with its events.
#[derive(sqlx::FromRow)]
struct WithEvents {
    #[sqlx(flatten)]
    batch: BatchRow,
    events: String,
}

impl TryFrom<BatchRow> for UsageBatch {
    type Error = StoreError;

    fn try_from(row: BatchRow) -> Result<Self, StoreError> {
        let status = BatchStatus::parse(&row.status)
            .ok_or_else(|| StoreError::Corrupt(format!("usage batch {}: status `{}`", row.id, row.status)))?;
        let result = (status == BatchStatus::Completed).then(|| BatchResult {
            debited: row.debited_count,
            duplicates: row.duplicate_count,
            rejected: row.rejected_count,
            overdrafts: row.overdraft_count,
            debited_millicredits: row.debited_millicredits,
            rejections: row.rejections.unwrap_or_else(|| "[]".to_owned()),
        });
        Ok(Self {
            id: row.id,
            submitted_by: row.submitted_by,
            status,
            event_count: row.event_count,
            result,
            created_at: row.created_at.get(),
            completed_at: row.completed_at.map(Timestamp::get),
            last_error: row.last_error,
        })
    }
}

impl Store {
    /// Stores a batch of `event_count` events (`events`, JSON) and queues its processing, in one transaction. With
    /// an `idempotency_key`, a second submission by the same submitter answers with the first batch.
    pub async fn submit_usage_batch(
        &self,
        submitted_by: &str,
        idempotency_key: Option<&str>,
        events: &str,
        event_count: i64,
    ) -> Result<BatchSubmitted, StoreError> {
        let id = format!("ubt_{}", Uuid::now_v7().simple());
        let now = Timestamp::now();
        let job = serde_json::json!({"kind": "price_usage_batch", "version": 1, "batchId": id}).to_string();
        let insert = "INSERT INTO usage_batches (id, submitted_by, idempotency_key, status, event_count, events, \
                      created_at) VALUES ($1, $2, $3, 'accepted', $4, $5, $6) \
                      ON CONFLICT (submitted_by, idempotency_key) DO NOTHING";
        on_backend!(write self, |tx, _dialect| {
            let inserted = sqlx::query(insert)
                .bind(id.as_str())
                .bind(submitted_by)
                .bind(idempotency_key)
                .bind(event_count)
                .bind(events)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted == 0 {
                let first: WithEvents = sqlx::query_as(SELECT_SUBMISSION)
                    .bind(submitted_by)
                    .bind(idempotency_key)
                    .fetch_one(&mut *tx)
                    .await?;
                if first.events != events {
                    return Ok(BatchSubmitted::KeyReused);
                }
                return Ok(BatchSubmitted::Replayed(first.batch.try_into()?));
            }
            sqlx::query("INSERT INTO outbox (queue, payload, created_at) VALUES ($1, $2, $3)")
                .bind(USAGE_BATCHES_QUEUE)
                .bind(job.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        self.outbox_written();
        let batch = UsageBatch {
            id,
            submitted_by: submitted_by.to_owned(),
            status: BatchStatus::Accepted,
            event_count,
            result: None,
            created_at: now.get(),
            completed_at: None,
            last_error: None,
        };
        Ok(BatchSubmitted::New(batch))
    }

    /// A batch's state and counts.
    pub async fn usage_batch(&self, id: &str) -> Result<Option<UsageBatch>, StoreError> {
        let row: Option<BatchRow> =
            on_backend!(self, |pool, _dialect| sqlx::query_as(SELECT_BATCH).bind(id).fetch_optional(pool).await?);
        row.map(UsageBatch::try_from).transpose()
    }

    /// A batch's events (JSON), for its job; marks it processing unless it has completed (a failed batch is being
    /// retried).
    pub async fn start_usage_batch(&self, id: &str) -> Result<Option<(UsageBatch, String)>, StoreError> {
        let update =
            "UPDATE usage_batches SET status = 'processing' WHERE id = $1 AND status IN ('accepted', 'failed')";
        let row: Option<WithEvents> = on_backend!(self, |pool, _dialect| {
            sqlx::query(update).bind(id).execute(pool).await?;
            sqlx::query_as(SELECT_BATCH_WITH_EVENTS).bind(id).fetch_optional(pool).await?
        });
        row.map(|row| Ok((UsageBatch::try_from(row.batch)?, row.events))).transpose()
    }

    /// Records what processing found and marks the batch completed (once: a later call changes nothing).
    pub async fn complete_usage_batch(&self, id: &str, result: &BatchResult) -> Result<(), StoreError> {
        let sql = "UPDATE usage_batches SET status = 'completed', debited_count = $2, duplicate_count = $3, \
                   rejected_count = $4, overdraft_count = $5, debited_millicredits = $6, rejections = $7, \
                   completed_at = $8 WHERE id = $1 AND status <> 'completed'";
        on_backend!(self, |pool, _dialect| {
            sqlx::query(sql)
                .bind(id)
                .bind(result.debited)
                .bind(result.duplicates)
                .bind(result.rejected)
                .bind(result.overdrafts)
                .bind(result.debited_millicredits)
                .bind(result.rejections.as_str())
                .bind(Timestamp::now())
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
