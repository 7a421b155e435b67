//! Posting to the ledger: one transaction that locks the account, applies the domain's rules and appends the entry.

use creditflow_domain::{
    AccountId, AccountState, Decision, Entry, EntryKind, Millicredits, Posting, PostingOutcome, RateVersion, decide,
};
use std::collections::HashMap;

use time::OffsetDateTime;

use uuid::Uuid;

use crate::audit::{NewAuditRecord, insert_audit};
use crate::autoreloads::AUTORELOADS_QUEUE;
use crate::inbox::{WEBHOOK_EVENTS_QUEUE, webhook_event};
use crate::rows::{EntryRow, account_status, entry_columns};
use crate::unlocked::post_unlocked;
use crate::{Store, StoreError, Timestamp, on_backend};

/// Attempts before a posting that keeps meeting unique violations gives up with `Contention`. The account lock
/// makes a violation near impossible; this covers a writer outside creditflow's locking.
const POSTING_ATTEMPTS: u32 = 3;

/// How a transaction of postings learns which of their idempotency keys are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyLookup {
    /// Look every key up before writing: what a posting that may well be a replay needs.
    First,
    /// PostgreSQL: write as if every key were new, and look them up (in a new attempt) only when the insert meets
    /// one that is taken. For a usage batch, whose events are new unless the batch is being run again: the lookup
    /// is a probe of the key index per posting, about 16 ms per 5,000. The unique key on (account, key) makes the
    /// guess safe: an insert that succeeds proves every key was free. SQLite always looks first.
    OnConflict,
}

/// Sums that must agree: an account's balance and the sum of its entries, or all balances and all entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerTotals {
    /// Sum of the stored balances.
    pub balances: Millicredits,
    /// Sum of the entries' amounts.
    pub entries: Millicredits,
    /// Number of entries.
    pub entry_count: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct LockedAccount {
    balance_millicredits: i64,
    status: String,
    last_sequence: i64,
    low_balance_threshold_millicredits: Option<i64>,
    autoreload_enabled: Option<bool>,
    autoreload_threshold_millicredits: Option<i64>,
}

/// A locked account's state, low-balance threshold and (when autoreload is on) autoreload threshold.
pub(crate) type LockedState = (Option<AccountState>, Option<i64>, Option<Millicredits>);

impl LockedAccount {
    pub(crate) fn read(self, account_id: &str) -> Result<LockedState, StoreError> {
        let state = AccountState {
            balance: Millicredits::new(self.balance_millicredits),
            status: account_status(account_id, &self.status)?,
            last_sequence: self.last_sequence,
        };
        let reload_below = self
            .autoreload_threshold_millicredits
            .filter(|_| self.autoreload_enabled == Some(true))
            .map(Millicredits::new);
        Ok((Some(state), self.low_balance_threshold_millicredits, reload_below))
    }
}

/// SQLite: reads an account with its settings (the transaction's `BEGIN IMMEDIATE` already holds the write lock).
const LOCK_ACCOUNT_SQLITE: &str = "SELECT a.balance_millicredits, a.status, a.last_sequence, \
     s.low_balance_threshold_millicredits, s.autoreload_enabled, s.autoreload_threshold_millicredits \
     FROM accounts a LEFT JOIN account_settings s ON s.account_id = a.id WHERE a.id = $1";
/// SQLite: an account's entries whose idempotency key is in `$2`, a JSON array of strings.
const ENTRIES_BY_KEYS_SQLITE: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger_entries WHERE account_id = $1 AND idempotency_key IN (SELECT value FROM json_each($2))"
);
const SELECT_ENTRY_BY_KEY: &str =
    concat!("SELECT ", entry_columns!(), " FROM ledger_entries WHERE account_id = $1 AND idempotency_key = $2");
const INSERT_ENTRIES: &str = concat!("INSERT INTO ledger_entries (", entry_columns!(), ") VALUES ");
/// Columns bound per inserted entry.
const ENTRY_COLUMN_COUNT: usize = 14;
/// Entries per INSERT statement (14 parameters each, far under either backend's parameter limit).
pub(crate) const INSERT_ROWS_MAX: usize = 500;
/// Postings per transaction of [`Store::post_many`]: the account stays locked for one group at a time.
const GROUP_SIZE_MAX: usize = 5_000;
/// Usage debited since a time, as a positive amount (read under the account lock, so concurrent debits cannot both
/// fit under a cap that only one of them fits under).
const SPENT_SINCE: &str = "SELECT CAST(COALESCE(-SUM(amount_millicredits), 0) AS BIGINT) FROM ledger_entries \
     WHERE account_id = $1 AND kind = 'usage_debit' AND created_at >= $2";
const UPDATE_BALANCE: &str =
    "UPDATE accounts SET balance_millicredits = $2, last_sequence = $3, updated_at = $4 WHERE id = $1";

/// Usage already debited from `$account_id` in each spend-cap window `$postings` name (one window in practice:
/// today), read in transaction `$tx` under the account's lock.
macro_rules! spent_in_windows {
    ($tx:ident, $postings:expr, $account_id:expr) => {{
        let mut spent: HashMap<OffsetDateTime, Millicredits> = HashMap::new();
        for cap in $postings.iter().filter_map(|posting| posting.spend_cap) {
            if let std::collections::hash_map::Entry::Vacant(slot) = spent.entry(cap.window_start) {
                let total: i64 = sqlx::query_scalar(SPENT_SINCE)
                    .bind($account_id)
                    .bind(Timestamp::from(cap.window_start))
                    .fetch_one(&mut *$tx)
                    .await?;
                slot.insert(Millicredits::new(total));
            }
        }
        spent
    }};
}

/// Binds the columns of `entry` to a multi-row INSERT built by [`insert_entries_sql`].
macro_rules! bind_entry {
    ($query:expr, $entry:expr, $account_id:expr, $now:expr) => {
        $query
            .bind($entry.id.as_str())
            .bind($account_id)
            .bind($entry.sequence)
            .bind($entry.kind.as_str())
            .bind($entry.amount.get())
            .bind($entry.balance_after.get())
            .bind($entry.idempotency_key.as_str())
            .bind($entry.correlation_id.as_deref())
            .bind($entry.rate_version.as_ref().map(creditflow_domain::RateVersion::as_str))
            .bind($entry.source_ref.as_deref())
            .bind($entry.reason.as_deref())
            .bind($entry.usage.as_ref().map(|usage| usage.model.as_str()))
            .bind($entry.usage.as_ref().map(|usage| serde_json::to_string(&usage.units).unwrap_or_default()))
            .bind($now)
    };
}
pub(crate) use bind_entry;

/// Asks for a reload; does nothing while one is pending for the account.
const REQUEST_AUTORELOAD: &str = "INSERT INTO autoreloads (id, account_id, trigger_entry_id, state, created_at, \
     updated_at) VALUES ($1, $2, $3, 'pending', $4, $4) ON CONFLICT DO NOTHING";

/// The queue that sends emails.
pub const EMAILS_QUEUE: &str = "emails";

/// The job announcing that `entry` took the balance from at or above `threshold` to below it: one per downward
/// crossing, so a top-up above the threshold re-arms the notice.
fn low_balance_notice(entry: &Entry, balance_before: Millicredits, threshold: Option<i64>) -> Option<String> {
    let threshold = Millicredits::new(threshold?);
    let crossed = balance_before >= threshold && entry.balance_after < threshold;
    crossed.then(|| {
        serde_json::json!({
            "kind": "low_balance_email",
            "version": 1,
            "accountId": entry.account_id.as_str(),
            "entryId": entry.id,
            "balanceMillicredits": entry.balance_after.get(),
            "thresholdMillicredits": threshold.get(),
        })
        .to_string()
    })
}

impl Store {
    /// Applies a posting and returns its outcome. Idempotent: the same key with the same content returns the first
    /// entry; nothing is written unless the outcome is `Created`.
    pub async fn post(&self, posting: &Posting) -> Result<PostingOutcome, StoreError> {
        self.post_with_audit(posting, None).await
    }

    /// Like [`Store::post`], and appends `audit` in the same transaction when the entry is created (adjustments).
    pub async fn post_with_audit(
        &self,
        posting: &Posting,
        audit: Option<&NewAuditRecord>,
    ) -> Result<PostingOutcome, StoreError> {
        posting.validate()?;
        let mut outcomes = self.post_group(std::slice::from_ref(posting), audit).await?;
        outcomes.pop().ok_or_else(|| StoreError::Corrupt("a posting produced no outcome".to_owned()))
    }

    /// Applies postings to one account in order, in one transaction, and returns one outcome per posting, as if
    /// each had been [`Store::post`]ed alone in that order (a later posting sees the balance the earlier ones left;
    /// a repeated key answers with the entry its first use created). Much faster than one transaction per posting:
    /// the account is locked once, the keys are looked up together and the entries inserted together.
    pub async fn post_many(&self, postings: &[Posting]) -> Result<Vec<PostingOutcome>, StoreError> {
        let Some(first) = postings.first() else { return Ok(Vec::new()) };
        for posting in postings {
            posting.validate()?;
            if posting.account_id != first.account_id {
                return Err(StoreError::InvalidPosting(creditflow_domain::PostingInvalid::AccountId));
            }
        }
        let mut outcomes = Vec::with_capacity(postings.len());
        for chunk in postings.chunks(GROUP_SIZE_MAX) {
            outcomes.extend(self.post_group(chunk, None).await?);
        }
        Ok(outcomes)
    }

    /// Applies each group of postings (each group to one account, no account in two groups) in one transaction, and
    /// returns one list of outcomes per group, in the order given, each as [`Store::post_many`] would answer it. The
    /// accounts are locked in the order of their ids, so two such transactions never wait on each other in a cycle.
    /// One commit for many accounts: what a usage batch, spread over many accounts, needs.
    pub async fn post_many_accounts(&self, groups: &[Vec<Posting>]) -> Result<Vec<Vec<PostingOutcome>>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        for group in groups {
            let Some(first) = group.first() else { continue };
            if !seen.insert(first.account_id.as_str()) {
                return Err(StoreError::InvalidPosting(creditflow_domain::PostingInvalid::AccountId));
            }
            for posting in group {
                posting.validate()?;
                if posting.account_id != first.account_id {
                    return Err(StoreError::InvalidPosting(creditflow_domain::PostingInvalid::AccountId));
                }
            }
        }
        if groups.iter().any(|group| group.len() > GROUP_SIZE_MAX) {
            // A group that large gets transactions of its own, as `post_many` gives it.
            let mut all = Vec::with_capacity(groups.len());
            for group in groups {
                all.push(self.post_many(group).await?);
            }
            return Ok(all);
        }
        let mut order: Vec<usize> = (0..groups.len()).filter(|&index| !groups[index].is_empty()).collect();
        order.sort_by(|&a, &b| groups[a][0].account_id.as_str().cmp(groups[b][0].account_id.as_str()));
        let sorted: Vec<&[Posting]> = order.iter().map(|&index| groups[index].as_slice()).collect();
        let mut outcomes = self.post_groups(&sorted, None, KeyLookup::OnConflict).await?;
        let mut all = vec![Vec::new(); groups.len()];
        for index in order.into_iter().rev() {
            all[index] = outcomes.pop().unwrap_or_default();
        }
        Ok(all)
    }

    /// One transaction of [`Store::post_many`].
    async fn post_group(
        &self,
        postings: &[Posting],
        audit: Option<&NewAuditRecord>,
    ) -> Result<Vec<PostingOutcome>, StoreError> {
        let mut outcomes = self.post_groups(&[postings], audit, KeyLookup::First).await?;
        outcomes.pop().ok_or_else(|| StoreError::Corrupt("a posting group produced no outcome".to_owned()))
    }

    /// One transaction for `groups` (one account each, locked in the order given), retried when a concurrent writer
    /// of a key got there first.
    async fn post_groups(
        &self,
        groups: &[&[Posting]],
        audit: Option<&NewAuditRecord>,
        lookup: KeyLookup,
    ) -> Result<Vec<Vec<PostingOutcome>>, StoreError> {
        if let (Self::Postgres(store), [postings], None) = (self, groups, audit)
            && let Some(outcomes) = post_unlocked(&store.pool, postings).await?
        {
            return Ok(vec![outcomes]);
        }
        self.post_groups_locked(groups, audit, lookup).await
    }

    /// Like [`Store::post_many`], always under the account's lock (the caller already tried without).
    pub(crate) async fn post_many_locked(&self, postings: &[Posting]) -> Result<Vec<PostingOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(postings.len());
        for chunk in postings.chunks(GROUP_SIZE_MAX) {
            let mut group = self.post_groups_locked(&[chunk], None, KeyLookup::First).await?;
            outcomes.extend(group.pop().unwrap_or_default());
        }
        Ok(outcomes)
    }

    /// [`Store::post_groups`] under the accounts' locks, retried when a concurrent writer of a key got there first
    /// (or, with [`KeyLookup::OnConflict`], when a key was taken: the next attempts look the keys up first).
    async fn post_groups_locked(
        &self,
        groups: &[&[Posting]],
        audit: Option<&NewAuditRecord>,
        lookup: KeyLookup,
    ) -> Result<Vec<Vec<PostingOutcome>>, StoreError> {
        let guessed = u32::from(lookup == KeyLookup::OnConflict);
        for attempt in 0..POSTING_ATTEMPTS + guessed {
            let look_first = attempt >= guessed;
            match self.post_groups_once(groups, audit, look_first).await {
                Err(error) if error.is_unique_violation() => {}
                result => return result,
            }
        }
        let account = groups.first().and_then(|group| group.first()).map(|posting| posting.account_id.to_string());
        Err(StoreError::Contention(account.unwrap_or_default()))
    }

    /// One attempt of [`Store::post_groups_locked`]: one transaction for every group. Without `look_first`,
    /// PostgreSQL writes as if no key were taken (SQLite looks keys up either way).
    async fn post_groups_once(
        &self,
        groups: &[&[Posting]],
        audit: Option<&NewAuditRecord>,
        look_first: bool,
    ) -> Result<Vec<Vec<PostingOutcome>>, StoreError> {
        match self {
            Self::Postgres(store) => {
                let (outcomes, queued) = post_groups_postgres(&store.pool, groups, audit, look_first).await?;
                if queued {
                    self.outbox_written();
                }
                Ok(outcomes)
            }
            Self::Sqlite(store) => self.post_groups_sqlite(store, groups, audit).await,
        }
    }

    /// [`Store::post_groups_once`] on SQLite, whose statements are calls into this process: a few per account cost
    /// little.
    async fn post_groups_sqlite(
        &self,
        store: &crate::SqliteStore,
        groups: &[&[Posting]],
        audit: Option<&NewAuditRecord>,
    ) -> Result<Vec<Vec<PostingOutcome>>, StoreError> {
        let _gate = store.write_gate.lock().await;
        let mut tx = store.pool.begin_with(crate::SQLITE.begin_write.unwrap_or("BEGIN")).await?;
        {
            let mut all = Vec::with_capacity(groups.len());
            let (mut wrote, mut queued) = (false, false);
            for postings in groups {
                let Some(first) = postings.first() else {
                    all.push(Vec::new());
                    continue;
                };
                let account_id = first.account_id.as_str();
                let locked: Option<LockedAccount> =
                    sqlx::query_as(LOCK_ACCOUNT_SQLITE).bind(account_id).fetch_optional(&mut *tx).await?;
                let (state, threshold, reload_below) = match locked {
                    Some(row) => row.read(account_id)?,
                    None => (None, None, None),
                };
                let mut existing: HashMap<String, Entry> = HashMap::new();
                if state.is_some() {
                    let rows: Vec<EntryRow> = if postings.len() == 1 {
                        sqlx::query_as(SELECT_ENTRY_BY_KEY)
                            .bind(account_id)
                            .bind(first.idempotency_key.as_str())
                            .fetch_all(&mut *tx)
                            .await?
                    } else {
                        let keys: Vec<&str> = postings.iter().map(|p| p.idempotency_key.as_str()).collect();
                        let keys = serde_json::Value::from(keys).to_string();
                        sqlx::query_as(ENTRIES_BY_KEYS_SQLITE)
                            .bind(account_id)
                            .bind(keys.as_str())
                            .fetch_all(&mut *tx)
                            .await?
                    };
                    for row in rows {
                        let entry = Entry::try_from(row)?;
                        existing.insert(entry.idempotency_key.clone(), entry);
                    }
                }
                let spent = spent_in_windows!(tx, postings, account_id);
                let now = Timestamp::now();
                let GroupPlan { outcomes, created, mut notices, reload } =
                    plan_group(postings, state, existing, spent, (threshold, reload_below), now.get());
                all.push(outcomes);
                let Some(last) = created.last() else {
                    // Nothing to write for this account.
                    continue;
                };
                wrote = true;
                let (last_sequence, last_balance) = (last.sequence, last.balance_after);
                for chunk in created.chunks(INSERT_ROWS_MAX) {
                    let insert = insert_entries_sql(chunk.len());
                    // Only placeholders are generated; every value is bound.
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
                    for entry in chunk {
                        query = bind_entry!(query, entry, account_id, now);
                    }
                    query.execute(&mut *tx).await?;
                }
                sqlx::query(UPDATE_BALANCE)
                    .bind(account_id)
                    .bind(last_balance.get())
                    .bind(last_sequence)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if let Some(audit) = audit {
                    insert_audit!(tx, audit, now).await?;
                }
                if let Some(trigger) = reload {
                    let id = format!("ar_{}", Uuid::now_v7().simple());
                    let asked = sqlx::query(REQUEST_AUTORELOAD)
                        .bind(id.as_str())
                        .bind(account_id)
                        .bind(trigger.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if asked == 1 {
                        let job = serde_json::json!({"reloadId": id}).to_string();
                        notices.push((AUTORELOADS_QUEUE, job, None));
                    }
                }
                let insert = "INSERT INTO outbox (queue, payload, created_at, dedupe_key) VALUES ($1, $2, $3, $4)";
                for (queue, payload, dedupe_key) in notices {
                    queued = true;
                    sqlx::query(insert).bind(queue).bind(payload).bind(now).bind(dedupe_key).execute(&mut *tx).await?;
                }
            }
            if wrote {
                tx.commit().await?;
                if queued {
                    self.outbox_written();
                }
            }
            // Otherwise dropping the transaction rolls it back: nothing was written.
            Ok(all)
        }
    }

    /// The entry created under `idempotency_key` on the account, if any.
    pub async fn entry_by_key(
        &self,
        account_id: &AccountId,
        idempotency_key: &str,
    ) -> Result<Option<Entry>, StoreError> {
        let row: Option<EntryRow> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(SELECT_ENTRY_BY_KEY)
                .bind(account_id.as_str())
                .bind(idempotency_key)
                .fetch_optional(pool)
                .await?
        });
        row.map(Entry::try_from).transpose()
    }

    /// An account's entries with a sequence above `after_sequence`, oldest first, at most `limit`.
    pub async fn entries(
        &self,
        account_id: &AccountId,
        after_sequence: i64,
        limit: i64,
    ) -> Result<Vec<Entry>, StoreError> {
        let sql = concat!(
            "SELECT ",
            entry_columns!(),
            " FROM ledger_entries WHERE account_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
        );
        let rows: Vec<EntryRow> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(account_id.as_str()).bind(after_sequence).bind(limit).fetch_all(pool).await?
        });
        rows.into_iter().map(Entry::try_from).collect()
    }

    /// An account's entries with a sequence below `before_sequence` (or its newest), newest first, at most `limit`.
    /// Entries of one account are appended under its lock, so a page never changes once read and a cursor never
    /// skips an entry that commits later.
    pub async fn entries_newest_first(
        &self,
        account_id: &AccountId,
        before_sequence: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Entry>, StoreError> {
        let sql = concat!(
            "SELECT ",
            entry_columns!(),
            " FROM ledger_entries WHERE account_id = $1 AND sequence < $2 ORDER BY sequence DESC LIMIT $3"
        );
        let before = before_sequence.unwrap_or(i64::MAX);
        let rows: Vec<EntryRow> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(account_id.as_str()).bind(before).bind(limit).fetch_all(pool).await?
        });
        rows.into_iter().map(Entry::try_from).collect()
    }

    /// The balance of one account beside the sum of its entries (`None` account: all accounts).
    pub async fn ledger_totals(&self, account_id: Option<&AccountId>) -> Result<LedgerTotals, StoreError> {
        // CAST: PostgreSQL sums BIGINT into NUMERIC. SQLite sums integers exactly and raises an error on overflow, so
        // entries are summed in sequence order: each partial sum of one account is a balance it really had.
        let balances_sql = "SELECT CAST(COALESCE(SUM(balance_millicredits), 0) AS BIGINT) FROM accounts \
                            WHERE $1 IS NULL OR id = $1";
        let entries_sql = "SELECT CAST(COALESCE(SUM(amount_millicredits), 0) AS BIGINT), COUNT(*) FROM \
                           (SELECT amount_millicredits FROM ledger_entries WHERE $1 IS NULL OR account_id = $1 \
                            ORDER BY account_id, sequence) AS ordered";
        let id = account_id.map(AccountId::as_str);
        // One read transaction so both sums see the same snapshot.
        let (balances, (entries, entry_count)): (i64, (i64, i64)) = on_backend!(self, |pool, dialect| {
            let mut tx = match dialect.begin_snapshot {
                Some(statement) => pool.begin_with(statement).await?,
                None => pool.begin().await?,
            };
            let balances = sqlx::query_scalar(balances_sql).bind(id).fetch_one(&mut *tx).await?;
            let entries = sqlx::query_as(entries_sql).bind(id).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            (balances, entries)
        });
        Ok(LedgerTotals { balances: Millicredits::new(balances), entries: Millicredits::new(entries), entry_count })
    }
}

/// What a group of postings does to one account: an outcome per posting, the entries to insert (in sequence
/// order) and the outbox rows their threshold crossings call for.
pub(crate) struct GroupPlan {
    pub(crate) outcomes: Vec<PostingOutcome>,
    pub(crate) created: Vec<Entry>,
    pub(crate) notices: Vec<(&'static str, String, Option<String>)>,
    /// The usage debit that took the balance under the autoreload threshold, when one did.
    pub(crate) reload: Option<String>,
}

/// `INSERT INTO ledger_entries ... VALUES (...), (...)` with placeholders for `rows` entries.
fn insert_entries_sql(rows: usize) -> String {
    let mut insert = String::from(INSERT_ENTRIES);
    push_entry_placeholders(&mut insert, rows, 0);
    insert
}

/// Appends `(...), (...)`: placeholders for `rows` entries, numbered from `$(before + 1)`.
pub(crate) fn push_entry_placeholders(sql: &mut String, rows: usize, before: usize) {
    for index in 0..rows {
        let base = before + index * ENTRY_COLUMN_COUNT;
        let placeholders: Vec<String> = (1..=ENTRY_COLUMN_COUNT).map(|n| format!("${}", base + n)).collect();
        sql.push_str(if index == 0 { "(" } else { ", (" });
        sql.push_str(&placeholders.join(", "));
        sql.push(')');
    }
}

/// A locked account and its id ([`LOCK_ACCOUNTS`]).
#[derive(sqlx::FromRow)]
struct LockedAccountRow {
    id: String,
    #[sqlx(flatten)]
    account: LockedAccount,
}

/// PostgreSQL: reads and locks the accounts in `$1`, in byte order of their ids (the order every multi-account
/// transaction locks in, so two never wait on each other in a cycle).
const LOCK_ACCOUNTS: &str = "SELECT a.id, a.balance_millicredits, a.status, a.last_sequence, \
     s.low_balance_threshold_millicredits, s.autoreload_enabled, s.autoreload_threshold_millicredits \
     FROM accounts a LEFT JOIN account_settings s ON s.account_id = a.id WHERE a.id = ANY ($1) \
     ORDER BY a.id COLLATE \"C\" FOR UPDATE OF a";
/// PostgreSQL: the entries whose (account, key) pair is in `$1` x `$2` (paired arrays), one `LIMIT 1` probe of the
/// unique index per pair. A plain join on the pairs got a generic plan, made while the table was small, that hashed
/// the pairs and scanned every entry of every account (311 buffers for 4 pairs once one account held 20,000 entries,
/// against 12 this way; see `entries_by_key!`).
pub(crate) const ENTRIES_BY_ACCOUNT_KEYS: &str = concat!(
    "SELECT f.* FROM UNNEST ($1::text[], $2::text[]) AS k (account_id, idempotency_key) \
     CROSS JOIN LATERAL (SELECT ",
    entry_columns!(),
    " FROM ledger_entries e WHERE e.account_id = k.account_id AND e.idempotency_key = k.idempotency_key LIMIT 1) AS f"
);
/// PostgreSQL: appends entries given as parallel arrays, in array order, all created at `$14`.
const INSERT_ENTRY_ARRAYS: &str = concat!(
    "INSERT INTO ledger_entries (",
    entry_columns!(),
    ") SELECT id, account_id, sequence, kind, amount, balance_after, idempotency_key, correlation_id, \
     rate_version, source_ref, reason, model, units, $14 \
     FROM UNNEST ($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], \
     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[]) \
     AS e (id, account_id, sequence, kind, amount, balance_after, idempotency_key, correlation_id, rate_version, \
     source_ref, reason, model, units)"
);
/// PostgreSQL: sets the balances and sequences given as parallel arrays.
const UPDATE_BALANCES: &str = "UPDATE accounts a SET balance_millicredits = v.balance, last_sequence = v.sequence, \
     updated_at = $4 FROM UNNEST ($1::text[], $2::bigint[], $3::bigint[]) AS v (id, balance, sequence) \
     WHERE a.id = v.id";
/// PostgreSQL: appends outbox messages given as parallel arrays, in array order.
const INSERT_OUTBOX_ARRAYS: &str = "INSERT INTO outbox (queue, payload, created_at, dedupe_key) \
     SELECT queue, payload, $4, dedupe_key FROM UNNEST ($1::text[], $2::text[], $3::text[]) \
     AS o (queue, payload, dedupe_key)";

/// The entries of a plan as parallel arrays, one per column of [`INSERT_ENTRY_ARRAYS`].
#[derive(Default)]
struct EntryArrays<'a> {
    ids: Vec<&'a str>,
    accounts: Vec<&'a str>,
    sequences: Vec<i64>,
    kinds: Vec<&'static str>,
    amounts: Vec<i64>,
    balances: Vec<i64>,
    keys: Vec<&'a str>,
    correlations: Vec<Option<&'a str>>,
    versions: Vec<Option<&'a str>>,
    sources: Vec<Option<&'a str>>,
    reasons: Vec<Option<&'a str>>,
    models: Vec<Option<&'a str>>,
    units: Vec<Option<String>>,
}

impl<'a> EntryArrays<'a> {
    fn push(&mut self, entry: &'a Entry) {
        self.ids.push(&entry.id);
        self.accounts.push(entry.account_id.as_str());
        self.sequences.push(entry.sequence);
        self.kinds.push(entry.kind.as_str());
        self.amounts.push(entry.amount.get());
        self.balances.push(entry.balance_after.get());
        self.keys.push(&entry.idempotency_key);
        self.correlations.push(entry.correlation_id.as_deref());
        self.versions.push(entry.rate_version.as_ref().map(RateVersion::as_str));
        self.sources.push(entry.source_ref.as_deref());
        self.reasons.push(entry.reason.as_deref());
        self.models.push(entry.usage.as_ref().map(|usage| usage.model.as_str()));
        self.units.push(entry.usage.as_ref().map(|usage| serde_json::to_string(&usage.units).unwrap_or_default()));
    }
}

/// PostgreSQL: one transaction for `groups` (one account each, no account twice) with the same few statements
/// however many accounts and postings it holds: lock every account, look up every key, append every entry, set
/// every balance, then the outbox messages and autoreload requests the plans call for. A usage batch spread over a
/// thousand accounts costs a handful of round trips, not four per account. Also says whether it wrote outbox
/// messages. Without `look_first` the key lookup is skipped and every posting is planned as new; if a key was
/// taken after all, the insert fails with a unique violation and nothing is written.
async fn post_groups_postgres(
    pool: &sqlx::PgPool,
    groups: &[&[Posting]],
    audit: Option<&NewAuditRecord>,
    look_first: bool,
) -> Result<(Vec<Vec<PostingOutcome>>, bool), StoreError> {
    let mut tx = pool.begin_with(crate::POSTGRES.begin_write.unwrap_or("BEGIN")).await?;
    let ids: Vec<&str> = groups.iter().filter_map(|group| group.first()).map(|p| p.account_id.as_str()).collect();
    let locked: Vec<LockedAccountRow> = sqlx::query_as(LOCK_ACCOUNTS).bind(&ids).fetch_all(&mut *tx).await?;
    let mut accounts: HashMap<String, LockedState> = HashMap::with_capacity(locked.len());
    for row in locked {
        let state = row.account.read(&row.id)?;
        accounts.insert(row.id, state);
    }
    let (mut key_accounts, mut keys) = (Vec::new(), Vec::new());
    for posting in groups.iter().flat_map(|group| group.iter()).filter(|_| look_first) {
        if accounts.contains_key(posting.account_id.as_str()) {
            key_accounts.push(posting.account_id.as_str());
            keys.push(posting.idempotency_key.as_str());
        }
    }
    let mut existing: HashMap<String, HashMap<String, Entry>> = HashMap::new();
    if !keys.is_empty() {
        let rows: Vec<EntryRow> =
            sqlx::query_as(ENTRIES_BY_ACCOUNT_KEYS).bind(&key_accounts).bind(&keys).fetch_all(&mut *tx).await?;
        for row in rows {
            let entry = Entry::try_from(row)?;
            existing.entry(entry.account_id.to_string()).or_default().insert(entry.idempotency_key.clone(), entry);
        }
    }
    let now = Timestamp::now();
    let mut all = Vec::with_capacity(groups.len());
    let mut plans = Vec::with_capacity(groups.len());
    for postings in groups {
        let Some(first) = postings.first() else {
            all.push(Vec::new());
            continue;
        };
        let account_id = first.account_id.as_str();
        let (state, threshold, reload_below) = accounts.remove(account_id).unwrap_or((None, None, None));
        let spent = if state.is_some() { spent_in_windows!(tx, postings, account_id) } else { HashMap::new() };
        let known = existing.remove(account_id).unwrap_or_default();
        let GroupPlan { outcomes, created, notices, reload } =
            plan_group(postings, state, known, spent, (threshold, reload_below), now.get());
        all.push(outcomes);
        plans.push((created, notices, reload));
    }
    let mut entries = EntryArrays::default();
    let (mut moved, mut balances, mut sequences) = (Vec::new(), Vec::new(), Vec::new());
    for (created, _, _) in &plans {
        let Some(last) = created.last() else { continue };
        moved.push(last.account_id.as_str());
        balances.push(last.balance_after.get());
        sequences.push(last.sequence);
        for entry in created {
            entries.push(entry);
        }
    }
    if moved.is_empty() {
        // Nothing to write; dropping the transaction rolls it back.
        return Ok((all, false));
    }
    let queued = write_postgres_plans(&mut tx, &plans, (&entries, &moved, &balances, &sequences), audit, now).await?;
    tx.commit().await?;
    Ok((all, queued))
}

/// What [`post_groups_postgres`] planned for one account: its entries, outbox messages and autoreload trigger.
type PlannedWrites = (Vec<Entry>, Vec<(&'static str, String, Option<String>)>, Option<String>);

/// The writes of [`post_groups_postgres`]: every entry, every balance, the audit record, autoreload requests and
/// outbox messages; true when it wrote outbox messages.
async fn write_postgres_plans(
    tx: &mut sqlx::PgConnection,
    plans: &[PlannedWrites],
    (entries, moved, balances, sequences): (&EntryArrays<'_>, &[&str], &[i64], &[i64]),
    audit: Option<&NewAuditRecord>,
    now: Timestamp,
) -> Result<bool, StoreError> {
    sqlx::query(INSERT_ENTRY_ARRAYS)
        .bind(&entries.ids)
        .bind(&entries.accounts)
        .bind(&entries.sequences)
        .bind(&entries.kinds)
        .bind(&entries.amounts)
        .bind(&entries.balances)
        .bind(&entries.keys)
        .bind(&entries.correlations)
        .bind(&entries.versions)
        .bind(&entries.sources)
        .bind(&entries.reasons)
        .bind(&entries.models)
        .bind(&entries.units)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(UPDATE_BALANCES).bind(moved).bind(balances).bind(sequences).bind(now).execute(&mut *tx).await?;
    if let Some(audit) = audit {
        insert_audit!(tx, audit, now).await?;
    }
    let mut notices = Vec::new();
    for (created, planned, reload) in plans {
        notices.extend(planned.iter().cloned());
        let (Some(trigger), Some(entry)) = (reload, created.first()) else { continue };
        let id = format!("ar_{}", Uuid::now_v7().simple());
        let asked = sqlx::query(REQUEST_AUTORELOAD)
            .bind(id.as_str())
            .bind(entry.account_id.as_str())
            .bind(trigger.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if asked == 1 {
            notices.push((AUTORELOADS_QUEUE, serde_json::json!({"reloadId": id}).to_string(), None));
        }
    }
    if !notices.is_empty() {
        let queues: Vec<&str> = notices.iter().map(|(queue, _, _)| *queue).collect();
        let payloads: Vec<&str> = notices.iter().map(|(_, payload, _)| payload.as_str()).collect();
        let dedupe: Vec<Option<&str>> = notices.iter().map(|(_, _, key)| key.as_deref()).collect();
        sqlx::query(INSERT_OUTBOX_ARRAYS)
            .bind(&queues)
            .bind(&payloads)
            .bind(&dedupe)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    Ok(!notices.is_empty())
}

/// Applies the domain's rules to each posting in order, as if each were posted alone: a later posting sees the
/// balance, sequence, keys and spent usage the earlier ones left.
pub(crate) fn plan_group(
    postings: &[Posting],
    mut state: Option<AccountState>,
    mut existing: HashMap<String, Entry>,
    mut spent: HashMap<OffsetDateTime, Millicredits>,
    (threshold, reload_below): (Option<i64>, Option<Millicredits>),
    now: OffsetDateTime,
) -> GroupPlan {
    let mut plan = GroupPlan {
        outcomes: Vec::with_capacity(postings.len()),
        created: Vec::new(),
        notices: Vec::new(),
        reload: None,
    };
    let mut reload_crossing = None;
    for posting in postings {
        let previous = existing.get(&posting.idempotency_key).cloned();
        let spent_now = posting.spend_cap.and_then(|cap| spent.get(&cap.window_start).copied());
        let (sequence, balance_after) = match decide(posting, state, previous, spent_now.unwrap_or(Millicredits::ZERO))
        {
            Decision::Refuse(outcome) => {
                plan.outcomes.push(outcome);
                continue;
            }
            Decision::Append { sequence, balance_after } => (sequence, balance_after),
        };
        let entry = Entry {
            id: format!("ent_{}", Uuid::now_v7().simple()),
            account_id: posting.account_id.clone(),
            sequence,
            kind: posting.kind,
            amount: posting.amount,
            balance_after,
            idempotency_key: posting.idempotency_key.clone(),
            correlation_id: posting.correlation_id.clone(),
            rate_version: posting.rate_version.clone(),
            source_ref: posting.source_ref.clone(),
            reason: posting.reason.clone(),
            usage: posting.usage.clone(),
            created_at: now,
        };
        let balance_before = state.map_or(Millicredits::ZERO, |account| account.balance);
        // A usage debit that takes the balance from at or above the autoreload threshold to under it asks for one
        // reload (the store refuses a second while one is in flight). Refunds and adjustments never do: a refunded
        // reload must not charge the card again.
        if let Some(below) = reload_below
            && entry.kind == EntryKind::UsageDebit
            && balance_before >= below
            && entry.balance_after < below
        {
            reload_crossing = Some(entry.id.clone());
        }
        if let Some(notice) = low_balance_notice(&entry, balance_before, threshold) {
            let event_id = format!("evt_low_{}", entry.id);
            let data = serde_json::from_str(&notice).unwrap_or_default();
            let event = webhook_event("balance.low", &event_id, &data);
            plan.notices.push((EMAILS_QUEUE, notice, None));
            plan.notices.push((WEBHOOK_EVENTS_QUEUE, event, Some(event_id)));
        }
        if entry.kind == EntryKind::UsageDebit {
            // Usage debited now counts in every window already begun.
            for (window_start, total) in &mut spent {
                if *window_start <= now {
                    *total = total.checked_sub(entry.amount).unwrap_or(Millicredits::MAX);
                }
            }
        }
        state = state.map(|account| AccountState { balance: balance_after, last_sequence: sequence, ..account });
        existing.insert(entry.idempotency_key.clone(), entry.clone());
        plan.created.push(entry.clone());
        plan.outcomes.push(PostingOutcome::Created(entry));
    }
    plan.reload = reload_crossing;
    plan
}
