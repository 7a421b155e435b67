//! PostgreSQL's unlocked posting path: one account's postings decided from one read and written by one statement
//! that appends the entries only if the account has not moved since (its sequence, and for usage debits everything
//! else the decision read). A moved account writes nothing and the caller falls back to the locking path of
//! `posting.rs`.

use std::collections::HashMap;

use creditflow_domain::{AccountStatus, Entry, Millicredits, Posting, PostingOutcome};

use crate::known::DebitSettings;
use crate::posting::{INSERT_ROWS_MAX, LockedAccount, bind_entry, plan_group, push_entry_placeholders};
use crate::rows::{EntryRow, entries_by_key, entry_columns};
use crate::{StoreError, Timestamp};

/// PostgreSQL: an account with its settings, the usage debited since `$3` (when not null) and its entries whose key
/// is in `$2`; one row per entry found, or one row with null entry columns. No lock: [`post_unlocked`] writes only
/// if the account's sequence is still the one read here.
pub(crate) const READ_FOR_POSTING: &str = concat!(
    "SELECT a.balance_millicredits, a.status, a.last_sequence, \
     s.low_balance_threshold_millicredits, s.autoreload_enabled, s.autoreload_threshold_millicredits, \
     CASE WHEN $3::timestamptz IS NULL THEN NULL ELSE (SELECT CAST(COALESCE(-SUM(d.amount_millicredits), 0) AS BIGINT) \
       FROM ledger_entries d WHERE d.account_id = $1 AND d.kind = 'usage_debit' AND d.created_at >= $3) END \
       AS spent_millicredits, \
     e.id, e.account_id, e.sequence, e.kind, e.amount_millicredits, e.balance_after_millicredits, e.idempotency_key, \
     e.correlation_id, e.rate_version, e.source_ref, e.reason, e.model, e.units, e.created_at \
     FROM accounts a LEFT JOIN account_settings s ON s.account_id = a.id \
     LEFT JOIN LATERAL (",
    entries_by_key!("a.id", "$2"),
    ") AS e ON true WHERE a.id = $1"
);
/// Parameters before the entries' in [`conditional_insert_sql`]: without and with a [`DebitGuard`].
const CONDITIONAL_INSERT_PARAMETERS: [usize; 2] = [5, 11];

/// What a debit's conditional write checks besides the account's sequence: everything else its decision read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DebitGuard {
    pub(crate) status: AccountStatus,
    /// Rows of the rate card activations the debits were priced from (their number names them, see
    /// `activations.rs`).
    pub(crate) activation_rows: i64,
    pub(crate) settings: DebitSettings,
}

/// PostgreSQL, one statement: moves the account to its new balance and sequence if its sequence is still `$5` (and,
/// `guarded`, its status is `$6`, the activations still number `$7` and its settings are still `$8`-`$11`), and
/// appends `rows` entries only if it did (none otherwise).
fn conditional_insert_sql(rows: usize, guarded: bool) -> String {
    let mut sql = String::from(
        "WITH moved AS (UPDATE accounts a SET balance_millicredits = $1, last_sequence = $2, updated_at = $3 \
         WHERE a.id = $4 AND a.last_sequence = $5",
    );
    if guarded {
        // A missing settings row and a row of defaults decide alike: both pass.
        sql.push_str(
            " AND a.status = $6 AND (SELECT COUNT(*) FROM rate_card_activations) = $7 \
             AND NOT EXISTS (SELECT 1 FROM account_settings s WHERE s.account_id = a.id \
             AND (s.low_balance_threshold_millicredits, s.autoreload_enabled, s.autoreload_threshold_millicredits, \
             s.daily_spend_cap_millicredits) IS DISTINCT FROM ($8::bigint, $9::boolean, $10::bigint, $11::bigint))",
        );
    }
    sql.push_str(" RETURNING a.id) INSERT INTO ledger_entries (");
    sql.push_str(entry_columns!());
    sql.push_str(") SELECT * FROM (VALUES ");
    push_entry_placeholders(&mut sql, rows, CONDITIONAL_INSERT_PARAMETERS[usize::from(guarded)]);
    sql.push_str(") AS posted WHERE EXISTS (SELECT 1 FROM moved)");
    sql
}

/// Posts one account's group on PostgreSQL in two round trips and no explicit transaction, when it can: one read
/// (account, settings, spent usage, keys) and one statement that writes only if no other posting to the account
/// committed in between (its sequence is unchanged). `None` sends the group down the locking path instead: a
/// concurrent posting moved the account, or the group asks for more than entries (a threshold notice, an
/// autoreload, a second spend-cap window). The outcomes are those the locking path would give at the moment of the
/// read: refusals and replays read from one snapshot, created entries from the same snapshot the write confirmed.
pub(crate) async fn post_unlocked(
    pool: &sqlx::PgPool,
    postings: &[Posting],
) -> Result<Option<Vec<PostingOutcome>>, StoreError> {
    use sqlx::{FromRow as _, Row as _};
    let Some(first) = postings.first() else { return Ok(Some(Vec::new())) };
    let mut windows = postings.iter().filter_map(|posting| posting.spend_cap.map(|cap| cap.window_start));
    let window = windows.next();
    if windows.any(|other| Some(other) != window) || postings.len() > INSERT_ROWS_MAX {
        return Ok(None);
    }
    let account_id = first.account_id.as_str();
    let keys: Vec<&str> = postings.iter().map(|posting| posting.idempotency_key.as_str()).collect();
    // Both statements on one connection: sqlx checks a connection with a round trip each time it goes back to the
    // pool, and a second acquisition could wait behind other requests.
    let mut connection = pool.acquire().await?;
    let rows = sqlx::query(READ_FOR_POSTING)
        .bind(account_id)
        .bind(&keys)
        .bind(window.map(Timestamp::from))
        .fetch_all(&mut *connection)
        .await?;
    let (mut state, mut limits, mut spent) = (None, (None, None), HashMap::new());
    let mut existing = HashMap::new();
    for row in &rows {
        if state.is_none() {
            let (read, threshold, reload_below) = LockedAccount::from_row(row)?.read(account_id)?;
            (state, limits) = (read, (threshold, reload_below));
            if let (Some(window), Some(total)) = (window, row.try_get::<Option<i64>, _>("spent_millicredits")?) {
                spent.insert(window, Millicredits::new(total));
            }
        }
        if row.try_get::<Option<String>, _>("id")?.is_some() {
            let entry = Entry::try_from(EntryRow::from_row(row)?)?;
            existing.insert(entry.idempotency_key.clone(), entry);
        }
    }
    let expected_sequence = state.map(|account| account.last_sequence);
    let now = Timestamp::now();
    let plan = plan_group(postings, state, existing, spent, limits, now.get());
    if !plan.notices.is_empty() || plan.reload.is_some() {
        return Ok(None);
    }
    let (Some(_), Some(expected_sequence)) = (plan.created.last(), expected_sequence) else {
        // Nothing to write: every posting was refused or replayed.
        return Ok(Some(plan.outcomes));
    };
    let written = write_if_unmoved(&mut connection, &plan.created, expected_sequence, None, now).await?;
    Ok(written.then_some(plan.outcomes))
}

/// PostgreSQL, one statement: appends `created` (one account's entries, in sequence order) and moves the account to
/// the last one's balance and sequence, if the account's sequence is still `expected_sequence` and what `guard`
/// names has not changed either. `false` (nothing written) when it has, or when a key is taken.
pub(crate) async fn write_if_unmoved(
    connection: &mut sqlx::PgConnection,
    created: &[Entry],
    expected_sequence: i64,
    guard: Option<DebitGuard>,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let Some(last) = created.last() else { return Ok(true) };
    let account_id = last.account_id.as_str();
    let sql = conditional_insert_sql(created.len(), guard.is_some());
    // Only placeholders are generated; every value is bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(last.balance_after.get())
        .bind(last.sequence)
        .bind(now)
        .bind(account_id)
        .bind(expected_sequence);
    if let Some(guard) = guard {
        let settings = guard.settings;
        query = query
            .bind(guard.status.as_str())
            .bind(guard.activation_rows)
            .bind(settings.low_balance_threshold)
            .bind(settings.autoreload_enabled)
            .bind(settings.autoreload_threshold)
            .bind(settings.daily_spend_cap);
    }
    for entry in created {
        query = bind_entry!(query, entry, account_id, now);
    }
    match query.execute(&mut *connection).await {
        Ok(done) => Ok(done.rows_affected() == created.len() as u64),
        Err(error) => {
            let error = StoreError::from(error);
            if error.is_unique_violation() { Ok(false) } else { Err(error) }
        }
    }
}
