//! The creditflow ledger store: accounts, the append-only ledger, rate card versions and the audit log, on SQLite
//! (the embedded default) and PostgreSQL (production).
//!
//! Both backends run the same SQL (SQLite reads `$1` placeholders too) through the [`on_backend!`] dispatch, which
//! expands one body of code once per backend. Where the dialects differ, [`Dialect`] holds the difference (how a
//! transaction begins, JSON functions). A few hot paths take PostgreSQL-only forms that save round trips (statements
//! with data-modifying CTEs, array parameters); their SQLite forms are plain transactions. The posting rules
//! themselves live in `creditflow_domain::ledger` and are the same for both.

mod accounts;
mod activations;
mod activity;
mod audit;
mod autoreloads;
mod batches;
mod coalesce;
mod connect;
mod debits;
mod error;
mod inbox;
mod jobs;
mod known;
mod posting;
mod purchases;
mod rate_cards;
mod reports;
mod rows;
mod settings;
mod stash;
mod timestamp;
mod unlocked;
mod wake;

use sqlx::{Pool, Postgres, Sqlite};

pub use accounts::Account;
pub use activity::{FailureCounts, KindTotal, ModelUsage};
pub use audit::{AuditRecord, NewAuditRecord};
pub use autoreloads::{AUTORELOADS_QUEUE, AutoreloadClaim, AutoreloadOutcome, AutoreloadRecord, AutoreloadState};
pub use batches::{BatchResult, BatchStatus, BatchSubmitted, USAGE_BATCHES_QUEUE, UsageBatch};
pub use coalesce::Coalescer;
pub use connect::redact_url;
pub use debits::{DebitAnswer, UsageDebit};
pub use error::StoreError;
pub use inbox::{OutboxMessage, Received, ReceivedEvent, STRIPE_EVENTS_QUEUE, WEBHOOK_EVENTS_QUEUE};
pub use jobs::{
    Attempt, AttemptEnd, JOB_QUEUES, JobActionRefused, JobRecord, JobState, QueuedJob, SCHEDULED_QUEUE, WEBHOOKS_QUEUE,
};
pub use posting::{EMAILS_QUEUE, LedgerTotals};
pub use purchases::{Purchase, PurchaseStatus};
pub use rate_cards::{RateCardAdded, RateCardSummary, Rollout, StoredRateCard};
pub use reports::{
    BalanceCheck, BalanceDisagreement, CreditedPayment, DISAGREEMENTS_LISTED, EntryColumns, LedgerDay, NewReport,
    REPORTS_QUEUE, ReportFile, StoredReport, UsageDetail,
};
pub use timestamp::Timestamp;

/// Which database a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: one SQLite file.
    Sqlite,
    /// PostgreSQL, shared by every process of a deployment.
    Postgres,
}

impl Backend {
    /// Lower-case name for logs and health output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The ledger store. Cheap to clone: it holds a connection pool.
#[derive(Clone, Debug)]
pub enum Store {
    /// SQLite pool plus an in-process write gate.
    Sqlite(SqliteStore),
    /// PostgreSQL pool.
    Postgres(PostgresStore),
}

/// The SQLite backend.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: Pool<Sqlite>,
    /// SQLite has one writer at a time. Queueing our own writers here is fairer and faster than letting them spin on
    /// `SQLITE_BUSY`; `BEGIN IMMEDIATE` and the busy timeout still protect against other processes.
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Rate card activations and parsed versions, copied once per process.
    cards: activations::CardCache,
    /// Wakes the outbox relay after a write (see `wake.rs`).
    wake: std::sync::Arc<wake::OutboxWake>,
}

/// The PostgreSQL backend.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: Pool<Postgres>,
    /// Connections the debit path keeps checked out between reconciles (see `stash.rs`).
    stash: std::sync::Arc<stash::Stash>,
    /// Rate card activations and parsed versions, copied once per process.
    cards: activations::CardCache,
    /// What this process's last write to each account left (see `known.rs`).
    known: std::sync::Arc<known::KnownAccounts>,
    /// Wakes the outbox relays after a write, this process's and the others' (see `wake.rs`).
    wake: std::sync::Arc<wake::OutboxWake>,
}

/// The SQL that differs between backends.
#[derive(Debug)]
struct Dialect {
    /// Statement that opens a write transaction, when `BEGIN` is not enough.
    begin_write: Option<&'static str>,
    /// Statement that opens a read transaction whose queries all see one snapshot, when `BEGIN` is not enough.
    begin_snapshot: Option<&'static str>,
    /// Quantities per model and unit kind of the usage debits created in `[$1, $2)`.
    units_by_model: &'static str,
    /// Jobs of queue `$1` (all queues when null) whose state is in `$2` (a JSON array), newest change first, `$3` at
    /// most.
    jobs_in_states: &'static str,
}

/// SQLite: `BEGIN IMMEDIATE` takes the database write lock up front, so the read of the account and the writes that
/// follow cannot interleave with another writer (no lost update, no lock upgrade deadlock).
/// A deferred SQLite transaction reads one WAL snapshot from its first read on.
const SQLITE: Dialect = Dialect {
    begin_write: Some("BEGIN IMMEDIATE"),
    begin_snapshot: None,
    units_by_model: "SELECT COALESCE(e.model, 'unknown'), u.key, CAST(SUM(u.value) AS BIGINT) \
         FROM ledger_entries e, json_each(e.units) u \
         WHERE e.kind = 'usage_debit' AND e.created_at >= $1 AND e.created_at < $2 GROUP BY 1, 2 ORDER BY 1, 2",
    jobs_in_states: "SELECT id, queue, payload, state, attempts, last_error, created_at, updated_at FROM jobs \
         WHERE ($1 IS NULL OR queue = $1) AND state IN (SELECT value FROM json_each($2)) \
         ORDER BY updated_at DESC, id LIMIT $3",
};
/// PostgreSQL: read committed plus a row lock on the account serialises postings to one account only.
/// Read committed takes a new snapshot per statement, so multi-query reads ask for repeatable read.
const POSTGRES: Dialect = Dialect {
    // Explicit, so a server whose default is stricter cannot turn lock waits into serialization failures.
    begin_write: Some("BEGIN ISOLATION LEVEL READ COMMITTED"),
    begin_snapshot: Some("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
    units_by_model: "SELECT COALESCE(e.model, 'unknown'), u.key, CAST(SUM(u.value::bigint) AS BIGINT) \
         FROM ledger_entries e, jsonb_each_text(e.units::jsonb) u \
         WHERE e.kind = 'usage_debit' AND e.created_at >= $1 AND e.created_at < $2 GROUP BY 1, 2 ORDER BY 1, 2",
    jobs_in_states: "SELECT id, queue, payload, state, attempts, last_error, created_at, updated_at FROM jobs \
         WHERE ($1::text IS NULL OR queue = $1) AND state = ANY (SELECT jsonb_array_elements_text($2::jsonb)) \
         ORDER BY updated_at DESC, id LIMIT $3",
};

/// Runs `$body` with `$pool` bound to the backend's pool and `$dialect` to its [`Dialect`]; `$gate` is the write
/// gate guard (SQLite) or nothing (PostgreSQL) when the `write` form is used.
macro_rules! on_backend {
    ($store:expr, |$pool:ident, $dialect:ident| $body:expr) => {
        match $store {
            $crate::Store::Sqlite(store) => {
                let $pool = &store.pool;
                let $dialect = &$crate::SQLITE;
                let _ = $dialect;
                $body
            }
            $crate::Store::Postgres(store) => {
                let $pool = &store.pool;
                let $dialect = &$crate::POSTGRES;
                let _ = $dialect;
                $body
            }
        }
    };
    (write $store:expr, |$tx:ident, $dialect:ident| $body:expr) => {
        match $store {
            $crate::Store::Sqlite(store) => {
                let _gate = store.write_gate.lock().await;
                let $dialect = &$crate::SQLITE;
                let mut $tx = match $dialect.begin_write {
                    Some(statement) => store.pool.begin_with(statement).await?,
                    None => store.pool.begin().await?,
                };
                $body
            }
            $crate::Store::Postgres(store) => {
                let $dialect = &$crate::POSTGRES;
                let mut $tx = match $dialect.begin_write {
                    Some(statement) => store.pool.begin_with(statement).await?,
                    None => store.pool.begin().await?,
                };
                $body
            }
        }
    };
}
pub(crate) use on_backend;

impl Store {
    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }
}
