//! Usage debits as a reconcile asks for them: priced with the card in force for the account, then posted.
//!
//! On PostgreSQL a group of debits to an account this process wrote to last costs one statement: the debits are
//! priced and decided from what the process knows of the account (`known.rs`), and the statement appends the
//! entries only if nothing that decision used has changed. Otherwise the group costs two statements on one
//! connection: one read returns the account, its settings, the usage it spent today (when it has a cap), the
//! entries already holding the debits' keys and the number of rate card activations (which says whether this
//! process's copy of them is current, see `activations.rs`); the debits are priced and decided in Rust; the same
//! conditional statement appends the entries. Anything else (a threshold crossing that queues a notice or a reload,
//! an account that moved, an account that does not exist yet) goes down the locking path of `posting.rs`, which
//! decides every posting again under the account's lock. SQLite prices from the same copy and always posts through
//! the locking path (its statements are calls into this process, and it has one writer anyway).

use std::collections::HashMap;

use creditflow_domain::{
    AccountId, AccountState, Entry, EntryKind, Millicredits, Overdraft, Posting, PostingInvalid, PostingOutcome,
    PricingError, RateCard, RateVersion, SpendCap, Usage, UsageRecord,
};
use sqlx::{FromRow as _, Row as _};
use time::OffsetDateTime;

use crate::activations::COUNT_ACTIVATIONS;
use crate::known::{DebitSettings, KnownAccount};
use crate::posting::{LockedAccount, plan_group};
use crate::rows::{EntryRow, entries_by_key};
use crate::unlocked::{DebitGuard, write_if_unmoved};
use crate::{PostgresStore, Store, StoreError, Timestamp};

/// A usage record to price and debit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDebit {
    /// The account to debit.
    pub account_id: AccountId,
    /// The ledger key of the debit (a retry carries the same).
    pub idempotency_key: String,
    /// Recorded on the entry.
    pub correlation_id: Option<String>,
    /// The model, as on the rate card.
    pub model: String,
    /// Quantities per unit kind.
    pub usage: Usage,
    /// What makes two requests the same, recorded as the entry's source reference: a retry of the same request
    /// priced under a newer card is still recognised.
    pub fingerprint: String,
}

/// What became of one [`UsageDebit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DebitAnswer {
    /// Priced and handed to the ledger: its outcome (created, a replay, or a refusal).
    Posted(PostingOutcome),
    /// The debit cannot be priced now or prices to nothing, but its key was used before: the first entry.
    Replay(Entry),
    /// Priced at zero: nothing written.
    Free {
        /// The account's balance.
        balance: Millicredits,
        /// The card that priced it.
        rate_version: RateVersion,
    },
    /// The account's card cannot price it.
    Unpriced(PricingError),
    /// No rate card is in force for the account.
    NoRateCard,
    /// The debit breaks a rule of postings (its key or correlation id, most likely): nothing was written.
    Invalid(PostingInvalid),
}

/// What the debits need to know of their account before they are priced.
struct Snapshot {
    state: Option<AccountState>,
    settings: DebitSettings,
    /// Usage debited today (known only when there is a cap).
    spent_today: Option<Millicredits>,
    existing: HashMap<String, Entry>,
    activation_rows: i64,
}

/// PostgreSQL: the account `$1` (or a row of nulls when it does not exist) with its settings, the usage debited
/// since `$3` when it has a daily cap, the number of rate card activations, and its entries whose key is in `$2`
/// (one row per entry found, else one row with null entry columns; see [`entries_by_key!`] for why the keys are
/// looked up one by one).
const READ_FOR_DEBIT: &str = concat!(
    "SELECT a.balance_millicredits, a.status, a.last_sequence, \
     s.low_balance_threshold_millicredits, s.autoreload_enabled, s.autoreload_threshold_millicredits, \
     s.daily_spend_cap_millicredits, \
     CASE WHEN s.daily_spend_cap_millicredits IS NULL THEN NULL ELSE \
       (SELECT CAST(COALESCE(-SUM(d.amount_millicredits), 0) AS BIGINT) FROM ledger_entries d \
        WHERE d.account_id = $1 AND d.kind = 'usage_debit' AND d.created_at >= $3) END AS spent_millicredits, ",
    "(SELECT COUNT(*) FROM rate_card_activations) AS activation_rows, \
     e.id, e.account_id, e.sequence, e.kind, e.amount_millicredits, e.balance_after_millicredits, e.idempotency_key, \
     e.correlation_id, e.rate_version, e.source_ref, e.reason, e.model, e.units, e.created_at \
     FROM (SELECT 1 AS one) AS always \
     LEFT JOIN accounts a ON a.id = $1 \
     LEFT JOIN account_settings s ON s.account_id = a.id \
     LEFT JOIN LATERAL (",
    entries_by_key!("a.id", "$2"),
    ") AS e ON true"
);

impl Snapshot {
    fn from_rows(account_id: &str, rows: &[sqlx::postgres::PgRow]) -> Result<Self, StoreError> {
        let mut snapshot = Self {
            state: None,
            settings: DebitSettings::default(),
            spent_today: None,
            existing: HashMap::new(),
            activation_rows: 0,
        };
        for (index, row) in rows.iter().enumerate() {
            if index == 0 {
                snapshot.activation_rows = row.try_get("activation_rows")?;
                if row.try_get::<Option<i64>, _>("last_sequence")?.is_some() {
                    (snapshot.state, ..) = LockedAccount::from_row(row)?.read(account_id)?;
                }
                snapshot.settings = DebitSettings {
                    low_balance_threshold: row.try_get("low_balance_threshold_millicredits")?,
                    autoreload_enabled: row.try_get::<Option<bool>, _>("autoreload_enabled")?.unwrap_or(false),
                    autoreload_threshold: row.try_get("autoreload_threshold_millicredits")?,
                    daily_spend_cap: row.try_get("daily_spend_cap_millicredits")?,
                };
                snapshot.spent_today = row.try_get::<Option<i64>, _>("spent_millicredits")?.map(Millicredits::new);
            }
            if row.try_get::<Option<String>, _>("id")?.is_some() {
                let entry = Entry::try_from(EntryRow::from_row(row)?)?;
                snapshot.existing.insert(entry.idempotency_key.clone(), entry);
            }
        }
        Ok(snapshot)
    }

    /// The posting `debit` asks for, priced by `card`; or, when there is nothing to post, its answer.
    fn price(&self, card: &RateCard, debit: &UsageDebit, at: OffsetDateTime) -> Priced {
        let charge = match card.charge(&debit.model, &debit.usage) {
            Ok(charge) if charge.amount != Millicredits::ZERO => charge,
            priced => {
                return Priced::Answered(match (self.existing.get(&debit.idempotency_key), priced) {
                    (Some(first), _) => DebitAnswer::Replay(first.clone()),
                    (None, Err(error)) => DebitAnswer::Unpriced(error),
                    (None, Ok(charge)) => DebitAnswer::Free {
                        balance: self.state.map_or(Millicredits::ZERO, |account| account.balance),
                        rate_version: charge.rate_version,
                    },
                });
            }
        };
        let Ok(amount) = charge.amount.checked_neg() else {
            return Priced::Answered(DebitAnswer::Invalid(PostingInvalid::AmountSign));
        };
        let spend_cap = self.settings.daily_spend_cap().map(|limit| SpendCap { limit, window_start: day_start(at) });
        let posting = Posting {
            account_id: debit.account_id.clone(),
            kind: EntryKind::UsageDebit,
            amount,
            idempotency_key: debit.idempotency_key.clone(),
            correlation_id: debit.correlation_id.clone(),
            rate_version: Some(charge.rate_version),
            source_ref: Some(debit.fingerprint.clone()),
            reason: None,
            overdraft: Overdraft::Forbid,
            spend_cap,
            usage: Some(UsageRecord { model: debit.model.clone(), units: debit.usage.clone() }),
        };
        match posting.validate() {
            Ok(()) => Priced::Posting(posting),
            Err(invalid) => Priced::Answered(DebitAnswer::Invalid(invalid)),
        }
    }

    /// Decides `postings` (priced from `activation_rows` activations) as the locking path would at the moment of
    /// this snapshot. `None` when only the locking path may decide: the account does not exist, or a posting crosses
    /// a threshold that queues a notice or a reload (or, `only_created`, a posting would not be created).
    fn plan(
        self,
        postings: &[Posting],
        activation_rows: i64,
        at: OffsetDateTime,
        only_created: bool,
    ) -> Option<UnlockedPlan> {
        let state = self.state?;
        let mut spent = HashMap::new();
        if let Some(total) = self.spent_today {
            spent.insert(day_start(at), total);
        }
        let now = Timestamp::now();
        let plan = plan_group(postings, Some(state), self.existing, spent, self.settings.limits(), now.get());
        if !plan.notices.is_empty() || plan.reload.is_some() {
            return None;
        }
        if only_created && plan.outcomes.iter().any(|outcome| !matches!(outcome, PostingOutcome::Created(_))) {
            return None;
        }
        let known = KnownAccount {
            state,
            settings: self.settings,
            spent: self.settings.daily_spend_cap.map(|_| (day_start(at), self.spent_today.unwrap_or_default())),
        };
        let guard = DebitGuard { status: state.status, activation_rows, settings: self.settings };
        Some(UnlockedPlan { created: plan.created, outcomes: plan.outcomes, known, guard, now })
    }
}

/// A debit once priced: the posting to make, or its answer when there is none to make.
enum Priced {
    Posting(Posting),
    Answered(DebitAnswer),
}

/// A group of debits decided from a snapshot, to be written if nothing it read has changed.
struct UnlockedPlan {
    created: Vec<Entry>,
    outcomes: Vec<PostingOutcome>,
    /// The account as the snapshot showed it.
    known: KnownAccount,
    guard: DebitGuard,
    now: Timestamp,
}

impl UnlockedPlan {
    /// Appends the created entries (one statement, see [`write_if_unmoved`]); `false` when the account moved or a
    /// key is taken, and nothing was written.
    async fn write(&self, connection: &mut sqlx::PgConnection) -> Result<bool, StoreError> {
        let expected_sequence = self.known.state.last_sequence;
        write_if_unmoved(connection, &self.created, expected_sequence, Some(self.guard), self.now).await
    }

    /// The account as it is once the plan is written.
    fn known_after(&self) -> Option<KnownAccount> {
        self.known.after(&self.outcomes)
    }
}

/// Midnight UTC of `at`'s day: where the daily spend cap's window begins.
fn day_start(at: OffsetDateTime) -> OffsetDateTime {
    at.to_offset(time::UtcOffset::UTC).replace_time(time::Time::MIDNIGHT)
}

impl Store {
    /// Prices each debit (all to one account) with the card in force for the account at `at` and posts it, in
    /// order, as if each were posted alone: a later debit sees the balance the earlier ones left. Idempotent per key.
    pub async fn debit_usage(&self, debits: &[UsageDebit], at: OffsetDateTime) -> Result<Vec<DebitAnswer>, StoreError> {
        let Some(first) = debits.first() else { return Ok(Vec::new()) };
        if debits.iter().any(|debit| debit.account_id != first.account_id) {
            return Err(StoreError::InvalidPosting(creditflow_domain::PostingInvalid::AccountId));
        }
        if let Self::Postgres(store) = self
            && let Some(answers) = self.debit_known(store, debits, at).await?
        {
            return Ok(answers);
        }
        let account_id = first.account_id.as_str();
        let keys: Vec<&str> = debits.iter().map(|debit| debit.idempotency_key.as_str()).collect();
        let mut connection = match self {
            Self::Postgres(store) => Some(match store.stash.take() {
                Some(connection) => connection,
                None => store.pool.acquire().await?,
            }),
            Self::Sqlite(_) => None,
        };
        let snapshot = match connection.as_mut() {
            Some(connection) => {
                let rows = sqlx::query(READ_FOR_DEBIT)
                    .bind(account_id)
                    .bind(&keys)
                    .bind(Timestamp::from(day_start(at)))
                    .fetch_all(&mut **connection)
                    .await?;
                Snapshot::from_rows(account_id, &rows)?
            }
            None => self.sqlite_snapshot(&first.account_id, &keys).await?,
        };
        let activations = self.activations(snapshot.activation_rows, connection.as_deref_mut()).await?;
        let Some(version) = activations.version_for(&first.account_id, at).cloned() else {
            return Ok(debits.iter().map(|_| DebitAnswer::NoRateCard).collect());
        };
        let card = self.parsed_card(&version, connection.as_deref_mut()).await?;
        let mut answers: Vec<Option<DebitAnswer>> = Vec::with_capacity(debits.len());
        let (mut postings, mut posted_at) = (Vec::with_capacity(debits.len()), Vec::with_capacity(debits.len()));
        for debit in debits {
            match snapshot.price(&card, debit, at) {
                Priced::Posting(posting) => {
                    postings.push(posting);
                    posted_at.push(answers.len());
                    answers.push(None);
                }
                Priced::Answered(answer) => answers.push(Some(answer)),
            }
        }
        let unlocked = match (self, connection) {
            (Self::Postgres(store), Some(mut connection)) => {
                let plan = snapshot.plan(&postings, activations.rows, at, false);
                let outcomes = match plan {
                    // Nothing to post: every debit is answered already.
                    _ if postings.is_empty() => Some(Vec::new()),
                    Some(plan) if plan.write(&mut connection).await? => {
                        match plan.known_after() {
                            Some(known) => store.known.remember(account_id, known),
                            None => store.known.forget(account_id),
                        }
                        Some(plan.outcomes)
                    }
                    _ => None,
                };
                // Every statement on it succeeded: kept for the next debit (an error above dropped it instead).
                store.stash.put(connection);
                outcomes
            }
            _ if postings.is_empty() => Some(Vec::new()),
            _ => None,
        };
        // The connection went back to the pool above: the locking path takes one of its own, and holding two per
        // request could exhaust a small pool under contention.
        let outcomes = if let Some(outcomes) = unlocked {
            outcomes
        } else {
            if let Self::Postgres(store) = self {
                store.known.forget(account_id);
            }
            self.post_locked(&postings).await?
        };
        for (index, outcome) in posted_at.into_iter().zip(outcomes) {
            answers[index] = Some(DebitAnswer::Posted(outcome));
        }
        answers
            .into_iter()
            .map(|answer| answer.ok_or_else(|| StoreError::Corrupt("a debit went unanswered".to_owned())))
            .collect()
    }

    /// PostgreSQL: the debits decided from what this process knows of their account (`known.rs`) and written in one
    /// statement, when every one of them is created. `None` when they must be decided from a read instead: nothing
    /// is known, a debit would be refused, replayed or answered without a posting, or the write found that what was
    /// known is out of date (and wrote nothing).
    async fn debit_known(
        &self,
        store: &PostgresStore,
        debits: &[UsageDebit],
        at: OffsetDateTime,
    ) -> Result<Option<Vec<DebitAnswer>>, StoreError> {
        let Some(first) = debits.first() else { return Ok(None) };
        let account_id = first.account_id.as_str();
        let Some(known) = store.known.get(account_id) else { return Ok(None) };
        if !known.covers_day(day_start(at)) {
            return Ok(None);
        }
        let Some(activations) = store.cards.current_activations() else { return Ok(None) };
        let Some(version) = activations.version_for(&first.account_id, at).cloned() else { return Ok(None) };
        let card = self.parsed_card(&version, None).await?;
        let snapshot = Snapshot {
            state: Some(known.state),
            settings: known.settings,
            spent_today: known.spent_today(),
            existing: HashMap::new(),
            activation_rows: activations.rows,
        };
        let mut postings = Vec::with_capacity(debits.len());
        for debit in debits {
            let Priced::Posting(posting) = snapshot.price(&card, debit, at) else { return Ok(None) };
            postings.push(posting);
        }
        let Some(plan) = snapshot.plan(&postings, activations.rows, at, true) else { return Ok(None) };
        let mut connection = match store.stash.take() {
            Some(connection) => connection,
            None => store.pool.acquire().await?,
        };
        let written = plan.write(&mut connection).await?;
        store.stash.put(connection);
        if !written {
            store.known.missed(account_id);
            return Ok(None);
        }
        match plan.known_after() {
            Some(known) => store.known.remember(account_id, known),
            None => store.known.forget(account_id),
        }
        Ok(Some(plan.outcomes.into_iter().map(DebitAnswer::Posted).collect()))
    }

    /// Posts through the locking path, creating the account first when it does not exist yet (a first debit of an
    /// account nobody credited: it exists from then on, with nothing to pay with).
    async fn post_locked(&self, postings: &[Posting]) -> Result<Vec<PostingOutcome>, StoreError> {
        let Some(first) = postings.first() else { return Ok(Vec::new()) };
        let outcomes = self.post_many_locked(postings).await?;
        if outcomes.iter().any(|outcome| matches!(outcome, PostingOutcome::AccountNotFound)) {
            self.create_account(&first.account_id).await?;
            return self.post_many_locked(postings).await;
        }
        Ok(outcomes)
    }

    /// SQLite: what [`READ_FOR_DEBIT`] reads that pricing and replays need, in a few statements (calls into this
    /// process). The posting itself decides again under the write lock.
    async fn sqlite_snapshot(&self, account: &AccountId, keys: &[&str]) -> Result<Snapshot, StoreError> {
        let Self::Sqlite(store) = self else {
            return Err(StoreError::Corrupt("the SQLite snapshot was asked of another backend".to_owned()));
        };
        let activation_rows: i64 = sqlx::query_scalar(COUNT_ACTIVATIONS).fetch_one(&store.pool).await?;
        let state = self.account(account).await?.map(|row| AccountState {
            balance: row.balance,
            status: row.status,
            last_sequence: row.last_sequence,
        });
        let mut existing = HashMap::new();
        for key in keys {
            if let Some(entry) = self.entry_by_key(account, key).await? {
                existing.insert(entry.idempotency_key.clone(), entry);
            }
        }
        Ok(Snapshot {
            state,
            // Only what pricing reads: the locking path decides everything else again.
            settings: DebitSettings {
                daily_spend_cap: self.settings(account).await?.daily_spend_cap.map(Millicredits::get),
                ..DebitSettings::default()
            },
            spent_today: None,
            existing,
            activation_rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use creditflow_testkit::{TestBackend, TestDatabase};
    use sqlx::Connection as _;

    use super::READ_FOR_DEBIT;
    use crate::Store;
    use crate::posting::ENTRIES_BY_ACCOUNT_KEYS;
    use crate::unlocked::READ_FOR_POSTING;

    /// Buffers the top node of `plan` (EXPLAIN's text lines) touched: shared hits plus reads.
    fn buffers(plan: &[String]) -> u64 {
        let line = plan.iter().find(|line| line.contains("Buffers:")).expect("EXPLAIN (BUFFERS) reports buffers");
        let count = |what: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(what))
                .map_or(0, |n| n.parse::<u64>().expect("a count"))
        };
        count("hit=") + count("read=")
    }

    /// A debit of an account this store wrote to last is decided from what the store knows of it, with no read:
    /// shown by changing the stored balance behind the store's back without moving the sequence (no posting does
    /// that). The store that knows the account writes the entry the chain expects (and the balance that goes with
    /// it); a store that has to read the account takes the changed balance, and the chain check refuses its entry.
    /// What other processes may change is covered in the storage suite (`debits_notice_what_another_process_changed`).
    #[tokio::test]
    async fn a_known_account_is_debited_without_reading_it() {
        use creditflow_domain::{AccountId, Millicredits, Posting, PostingOutcome, RateCard, RateVersion, Usage};

        use super::{DebitAnswer, UsageDebit};
        use crate::NewAuditRecord;

        let database = TestDatabase::new(TestBackend::Postgres).await;
        let store = Store::connect(&database.url, 4).await.expect("connect");
        store.migrate().await.expect("migrate");
        let audit = NewAuditRecord {
            actor: "test".into(),
            action: "rate_card.activate".into(),
            subject: "v1".into(),
            reason: None,
            details: "{}".into(),
        };
        let text = "version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = 1\n";
        store.add_rate_card(&RateCard::from_toml(text).expect("card"), text).await.expect("added");
        let v1 = RateVersion::new("v1").expect("version");
        let an_hour_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        store.activate_rate_card(&v1, an_hour_ago, &audit).await.expect("activated");
        let id = AccountId::new("acct_known").expect("id");
        store.create_account(&id).await.expect("created");
        let opening = Posting {
            account_id: id.clone(),
            kind: creditflow_domain::EntryKind::PurchaseCredit,
            amount: Millicredits::new(10_000),
            idempotency_key: "opening".to_owned(),
            correlation_id: None,
            rate_version: None,
            source_ref: None,
            reason: None,
            overdraft: creditflow_domain::Overdraft::Forbid,
            spend_cap: None,
            usage: None,
        };
        assert!(matches!(store.post(&opening).await.expect("posted"), PostingOutcome::Created(_)));
        let debit = |key: &str| UsageDebit {
            account_id: id.clone(),
            idempotency_key: key.to_owned(),
            correlation_id: None,
            model: "m".to_owned(),
            usage: Usage::from([("x".to_owned(), 1)]),
            fingerprint: key.to_owned(),
        };
        let balance_after = |answers: Vec<DebitAnswer>| match answers.as_slice() {
            [DebitAnswer::Posted(PostingOutcome::Created(entry))] => entry.balance_after,
            other => panic!("expected one created entry, got {other:?}"),
        };
        let now = time::OffsetDateTime::now_utc;
        // Read, written, and known from then on.
        assert_eq!(
            balance_after(store.debit_usage(&[debit("k1")], now()).await.expect("k1")),
            Millicredits::new(9_000)
        );
        let tamper = "UPDATE accounts SET balance_millicredits = 1000000 WHERE id = 'acct_known'";
        let mut connection = sqlx::PgConnection::connect(&database.url).await.expect("connect");
        sqlx::raw_sql(tamper).execute(&mut connection).await.expect("tampered");
        assert_eq!(
            balance_after(store.debit_usage(&[debit("k2")], now()).await.expect("k2")),
            Millicredits::new(8_000)
        );
        let account = store.account(&id).await.expect("read").expect("exists");
        assert_eq!((account.balance, account.last_sequence), (Millicredits::new(8_000), 3));
        // The same change, seen by a store that reads the account.
        sqlx::raw_sql(tamper).execute(&mut connection).await.expect("tampered");
        let reader = Store::connect(&database.url, 2).await.expect("connect");
        let refused = reader.debit_usage(&[debit("k3")], now()).await;
        assert!(refused.is_err(), "the chain check refuses an entry built on the changed balance: {refused:?}");
    }

    /// The reads before a posting look an account's keys up one by one, whatever plan PostgreSQL cached: the generic
    /// plan is made while the table holds 1,000 accounts of one entry each and is not analysed (so the statistics
    /// give an account a handful of entries), then one account grows to 20,000 entries. Looking 8 of its keys up
    /// must touch a few dozen buffers (about 30), not the pages of all the account's entries: with the keys in a
    /// plain `= ANY ($2)`, the cached plan read every one of them through the `(account_id, created_at)` index. The
    /// locking path's lookup of (account, key) pairs (`ENTRIES_BY_ACCOUNT_KEYS`) is held to the same: as a plain join
    /// its cached plan scanned the whole table.
    #[tokio::test]
    async fn key_lookups_stay_probes_as_an_account_grows_under_a_cached_plan() {
        let database = TestDatabase::new(TestBackend::Postgres).await;
        let store = Store::connect(&database.url, 2).await.expect("connect");
        store.migrate().await.expect("migrate");
        let mut connection = sqlx::PgConnection::connect(&database.url).await.expect("connect");
        for statement in [
            "ALTER TABLE ledger_entries SET (autovacuum_enabled = false)",
            "INSERT INTO accounts (id, status, balance_millicredits, last_sequence, created_at, updated_at) \
             SELECT 'acct-' || n, 'active', 1000, 1, now(), now() FROM generate_series(1, 1000) AS n",
            "INSERT INTO ledger_entries (id, account_id, sequence, kind, amount_millicredits, \
             balance_after_millicredits, idempotency_key, created_at) \
             SELECT 'ent-' || n, 'acct-' || n, 1, 'adjustment', 1000, 1000, 'fund-' || n, now() \
             FROM generate_series(1, 1000) AS n",
            "SET plan_cache_mode = force_generic_plan",
        ] {
            sqlx::raw_sql(statement).execute(&mut connection).await.expect(statement);
        }
        let one_account = "(text, text[], timestamptz)";
        for (name, sql, types, first) in [
            ("debit", READ_FOR_DEBIT, one_account, "('acct-1', ARRAY['fund-1'], NULL)"),
            ("posting", READ_FOR_POSTING, one_account, "('acct-1', ARRAY['fund-1'], NULL)"),
            ("pairs", ENTRIES_BY_ACCOUNT_KEYS, "(text[], text[])", "(ARRAY['acct-1'], ARRAY['fund-1'])"),
        ] {
            let prepare = format!("PREPARE {name} {types} AS {sql}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut connection).await.expect("prepared");
            // The first execution makes the generic plan, on the small table.
            let first = format!("EXECUTE {name} {first}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(first)).execute(&mut connection).await.expect("executed");
        }
        sqlx::raw_sql(
            "INSERT INTO ledger_entries (id, account_id, sequence, kind, amount_millicredits, \
             balance_after_millicredits, idempotency_key, created_at) \
             SELECT 'use-' || n, 'acct-1', n, 'adjustment', 1, 1000 + n - 1, 'use-' || n, now() \
             FROM generate_series(2, 20001) AS n ORDER BY n; \
             UPDATE accounts SET balance_millicredits = 21000, last_sequence = 20001 WHERE id = 'acct-1'",
        )
        .execute(&mut connection)
        .await
        .expect("grown");
        let keys = "ARRAY['use-10', 'use-3000', 'use-6000', 'use-9000', 'use-12000', 'use-15000', 'use-20001', 'none']";
        let accounts = "ARRAY['acct-1', 'acct-1', 'acct-1', 'acct-1', 'acct-1', 'acct-1', 'acct-1', 'acct-1']";
        for (name, arguments) in [
            ("debit", format!("('acct-1', {keys}, NULL)")),
            ("posting", format!("('acct-1', {keys}, NULL)")),
            ("pairs", format!("({accounts}, {keys})")),
        ] {
            let explain = format!("EXPLAIN (ANALYZE, BUFFERS) EXECUTE {name} {arguments}");
            let plan: Vec<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(explain)).fetch_all(&mut connection).await.expect("explained");
            let touched = buffers(&plan);
            assert!(touched < 100, "{name}: {touched} buffers for 8 keys:\n{}", plan.join("\n"));
            assert!(
                plan.iter().any(|line| line.contains("rows=7 ")),
                "{name}: 7 of the 8 keys found:\n{}",
                plan.join("\n")
            );
        }
    }
}
