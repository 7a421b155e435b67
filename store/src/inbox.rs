//! The Stripe event inbox and the outbox.
//!
//! A received event is stored once (by its Stripe id) and, in the same transaction, an outbox row asks for it to be
//! processed. A crash after the commit loses nothing (the outbox row waits to be relayed to the job queue); a
//! rollback leaves no job behind; a redelivery of the event finds it stored and adds no second job.

use crate::{Store, StoreError, Timestamp, on_backend};

/// The queue that processes received Stripe events.
pub const STRIPE_EVENTS_QUEUE: &str = "stripe_events";
/// Events for monitoring endpoints (fanned out to one delivery job per endpoint by the relay).
pub const WEBHOOK_EVENTS_QUEUE: &str = "webhook_events";

/// The outbox payload announcing `event_type` with id `event_id` (also its dedupe key) and `data`.
pub(crate) fn webhook_event(event_type: &str, event_id: &str, data: &serde_json::Value) -> String {
    serde_json::json!({
        "id": event_id,
        "type": event_type,
        "created": time::OffsetDateTime::now_utc().unix_timestamp(),
        "data": data,
    })
    .to_string()
}

/// A Stripe event as received, already verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedEvent<'a> {
    /// Stripe's event id (`evt_...`).
    pub id: &'a str,
    /// Its type (`payment_intent.succeeded`...).
    pub event_type: &'a str,
    /// Live or test mode.
    pub livemode: bool,
    /// The body exactly as Stripe sent it.
    pub payload: &'a str,
}

/// Whether an event was new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Stored, and its processing recorded in the outbox.
    New,
    /// Already stored: nothing changed.
    Duplicate,
}

/// A row of the outbox.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxMessage {
    /// Position in the outbox.
    pub id: i64,
    /// The queue it is for.
    pub queue: String,
    /// The job payload (JSON).
    pub payload: String,
}

impl Store {
    /// Stores a verified Stripe event once and records its processing in the outbox, in one transaction.
    pub async fn receive_stripe_event(&self, event: &ReceivedEvent<'_>) -> Result<Received, StoreError> {
        let now = Timestamp::now();
        let insert = "INSERT INTO stripe_events (id, type, livemode, payload, received_at) VALUES ($1, $2, $3, $4, $5) \
                      ON CONFLICT (id) DO NOTHING";
        let job = serde_json::json!({"kind": "process_stripe_event", "version": 1, "eventId": event.id}).to_string();
        if let Self::Postgres(store) = self {
            // One statement, so one round trip and no explicit transaction: the outbox row is written only when the
            // event was new, and both commit together.
            let sql = "WITH stored AS (INSERT INTO stripe_events (id, type, livemode, payload, received_at) \
                       VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING RETURNING id) \
                       INSERT INTO outbox (queue, payload, created_at) SELECT $6, $7, $5 FROM stored";
            let queued = sqlx::query(sql)
                .bind(event.id)
                .bind(event.event_type)
                .bind(event.livemode)
                .bind(event.payload)
                .bind(now)
                .bind(STRIPE_EVENTS_QUEUE)
                .bind(job.as_str())
                .execute(&store.pool)
                .await?
                .rows_affected();
            if queued == 0 {
                return Ok(Received::Duplicate);
            }
            self.outbox_written();
            return Ok(Received::New);
        }
        on_backend!(write self, |tx, _dialect| {
            let inserted = sqlx::query(insert)
                .bind(event.id)
                .bind(event.event_type)
                .bind(event.livemode)
                .bind(event.payload)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted == 0 {
                return Ok(Received::Duplicate);
            }
            sqlx::query("INSERT INTO outbox (queue, payload, created_at) VALUES ($1, $2, $3)")
                .bind(STRIPE_EVENTS_QUEUE)
                .bind(job.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            self.outbox_written();
            Ok(Received::New)
        })
    }

    /// A stored Stripe event's type and payload.
    pub async fn stripe_event(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let sql = "SELECT type, payload FROM stripe_events WHERE id = $1";
        let row: Option<(String, String)> =
            on_backend!(self, |pool, _dialect| sqlx::query_as(sql).bind(id).fetch_optional(pool).await?);
        Ok(row)
    }

    /// Outbox messages not yet relayed, oldest first.
    pub async fn unrelayed_outbox(&self, limit: i64) -> Result<Vec<OutboxMessage>, StoreError> {
        self.unrelayed_outbox_except(&[], limit).await
    }

    /// Outbox messages not yet relayed, oldest first, leaving out those of the queues in `except`.
    pub async fn unrelayed_outbox_except(&self, except: &[&str], limit: i64) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut sql = String::from("SELECT id, queue, payload FROM outbox WHERE relayed_at IS NULL");
        if !except.is_empty() {
            // Only placeholders are generated; every value is bound.
            let placeholders: Vec<String> = (2..=except.len() + 1).map(|n| format!("${n}")).collect();
            sql.push_str(" AND queue NOT IN (");
            sql.push_str(&placeholders.join(", "));
            sql.push(')');
        }
        sql.push_str(" ORDER BY id LIMIT $1");
        let rows: Vec<OutboxMessage> = on_backend!(self, |pool, _dialect| {
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(limit);
            for queue in except {
                query = query.bind(*queue);
            }
            query.fetch_all(pool).await?
        });
        Ok(rows)
    }
}

impl Store {
    /// Marks an outbox message relayed (after its job was pushed to the queue).
    pub async fn mark_outbox_relayed(&self, id: i64) -> Result<(), StoreError> {
        let sql = "UPDATE outbox SET relayed_at = $2 WHERE id = $1 AND relayed_at IS NULL";
        on_backend!(self, |pool, _dialect| {
            sqlx::query(sql).bind(id).bind(Timestamp::now()).execute(pool).await?;
        });
        Ok(())
    }
}

impl Store {
    /// Claims the notification `key` for sending: true for the one caller that claims it first, false for every
    /// later one (so two deliveries of one job cannot both send).
    pub async fn claim_notification(&self, key: &str, account_id: &str) -> Result<bool, StoreError> {
        let sql = "INSERT INTO notifications_sent (key, account_id, sent_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING";
        let inserted = on_backend!(self, |pool, _dialect| {
            sqlx::query(sql).bind(key).bind(account_id).bind(Timestamp::now()).execute(pool).await?.rows_affected()
        });
        Ok(inserted == 1)
    }

    /// Gives a claim back after sending failed, so a retry can send.
    pub async fn release_notification(&self, key: &str) -> Result<(), StoreError> {
        on_backend!(self, |pool, _dialect| {
            sqlx::query("DELETE FROM notifications_sent WHERE key = $1").bind(key).execute(pool).await?;
        });
        Ok(())
    }
}

impl Store {
    /// Records an event for the monitoring webhooks once: a second call with the same `event_id` changes nothing.
    pub async fn announce(&self, event_type: &str, event_id: &str, data: &serde_json::Value) -> Result<(), StoreError> {
        self.enqueue_once(WEBHOOK_EVENTS_QUEUE, &webhook_event(event_type, event_id, data), event_id).await
    }

    /// Records a job for `queue` once per `dedupe_key`: a second call with the same key changes nothing.
    pub async fn enqueue_once(&self, queue: &str, payload: &str, dedupe_key: &str) -> Result<(), StoreError> {
        let sql = "INSERT INTO outbox (queue, payload, created_at, dedupe_key) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (dedupe_key) DO NOTHING";
        let inserted = on_backend!(self, |pool, _dialect| {
            let query = sqlx::query(sql).bind(queue).bind(payload).bind(Timestamp::now()).bind(dedupe_key);
            query.execute(pool).await?.rows_affected()
        });
        if inserted > 0 {
            self.outbox_written();
        }
        Ok(())
    }
}
