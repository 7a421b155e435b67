//! The audit log: who did what to which subject, why and when. Append-only in the database.

use time::OffsetDateTime;

use crate::{Store, StoreError, Timestamp, on_backend};

/// An audit record to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAuditRecord {
    /// Who acted (a token subject, `system`, `cli:<user>`).
    pub actor: String,
    /// What was done (`account.freeze`, `ledger.adjust`, `rate_card.activate`...).
    pub action: String,
    /// What it was done to (an account id, a rate version).
    pub subject: String,
    /// Why, when a reason is required.
    pub reason: Option<String>,
    /// Further details as a JSON object.
    pub details: String,
}

/// An audit record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the log.
    pub id: i64,
    /// When it was written.
    pub at: OffsetDateTime,
    /// Who acted.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Why.
    pub reason: Option<String>,
    /// Details (JSON).
    pub details: String,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: Timestamp,
    actor: String,
    action: String,
    subject: String,
    reason: Option<String>,
    details: String,
}

pub(crate) const INSERT_AUDIT: &str =
    "INSERT INTO audit_log (at, actor, action, subject, reason, details) VALUES ($1, $2, $3, $4, $5, $6)";

/// [`INSERT_AUDIT`] unless a record with the same action, subject and reason exists (index `audit_log_subject_action`).
const INSERT_AUDIT_ONCE: &str = "INSERT INTO audit_log (at, actor, action, subject, reason, details) \
     SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM audit_log \
     WHERE subject = $4 AND action = $3 AND reason IS NOT DISTINCT FROM $5)";

/// Appends `$record` at `$now` inside the open transaction `$tx` (a macro so one body serves both backends), with
/// [`INSERT_AUDIT`] or another statement taking the same six parameters.
macro_rules! insert_audit {
    ($tx:expr, $record:expr, $now:expr) => {
        $crate::audit::insert_audit!($tx, $record, $now, $crate::audit::INSERT_AUDIT)
    };
    ($tx:expr, $record:expr, $now:expr, $sql:expr) => {
        sqlx::query($sql)
            .bind($now)
            .bind($record.actor.as_str())
            .bind($record.action.as_str())
            .bind($record.subject.as_str())
            .bind($record.reason.as_deref())
            .bind($record.details.as_str())
            .execute(&mut *$tx)
    };
}
pub(crate) use insert_audit;

impl Store {
    /// Appends a record to the audit log.
    pub async fn append_audit(&self, record: &NewAuditRecord) -> Result<(), StoreError> {
        let now = Timestamp::now();
        on_backend!(write self, |tx, _dialect| {
            insert_audit!(tx, record, now).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Appends a record unless one with the same action, subject and reason is already in the log; says whether it
    /// appended. For flags a job may raise again when it runs a second time (after a crash between its write and
    /// the flag, or a redelivery): the reason names the cause (the batch, the charge), so each cause is flagged
    /// once. On PostgreSQL two writers of the same record wait for each other, so they cannot both append it.
    pub async fn append_audit_once(&self, record: &NewAuditRecord) -> Result<bool, StoreError> {
        let now = Timestamp::now();
        let appended = on_backend!(write self, |tx, _dialect| {
            if matches!(self, Self::Postgres(_)) {
                // Read committed: the insert below runs after the lock is held, so it sees what a writer before
                // it committed. SQLite's writers already take turns.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(format!("audit:{}:{}", record.action, record.subject))
                    .execute(&mut *tx)
                    .await?;
            }
            let inserted = insert_audit!(tx, record, now, INSERT_AUDIT_ONCE).await?.rows_affected();
            tx.commit().await?;
            inserted == 1
        });
        Ok(appended)
    }

    /// The newest `limit` records before `before_id` (or the newest of all), newest first.
    pub async fn audit_log(&self, before_id: Option<i64>, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = "SELECT id, at, actor, action, subject, reason, details FROM audit_log \
                   WHERE id < $1 ORDER BY id DESC LIMIT $2";
        let rows: Vec<AuditRow> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(before_id.unwrap_or(i64::MAX)).bind(limit).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|row| AuditRecord {
                id: row.id,
                at: row.at.get(),
                actor: row.actor,
                action: row.action,
                subject: row.subject,
                reason: row.reason,
                details: row.details,
            })
            .collect())
    }
}
