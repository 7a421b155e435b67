//! Helpers for the storage suite: a migrated store on a fresh database, postings, and raw SQL that bypasses
//! creditflow's code to prove what the database itself allows.

use std::collections::BTreeSet;

use creditflow_domain::{AccountId, EntryKind, Millicredits, Overdraft, Posting, PostingOutcome, RateVersion};
use creditflow_store::{NewAuditRecord, Store};
use creditflow_testkit::{TestBackend, TestDatabase};
use sqlx::{Connection, Row};

/// A fresh database and a migrated store on it.
pub(crate) struct Db {
    pub(crate) store: Store,
    pub(crate) database: TestDatabase,
}

impl Db {
    pub(crate) async fn new(backend: TestBackend) -> Self {
        let database = TestDatabase::new(backend).await;
        let store = Store::connect(&database.url, 16).await.expect("connect to the test database");
        store.migrate().await.expect("migrate the test database");
        Self { store, database }
    }

    /// Creates an account and credits it with `balance` (when positive) through a purchase.
    pub(crate) async fn account_with(&self, name: &str, balance: i64) -> AccountId {
        let id = AccountId::new(name).expect("valid account id");
        assert!(self.store.create_account(&id).await.expect("create account"));
        if balance > 0 {
            let outcome = self.store.post(&purchase(&id, "opening", balance)).await.expect("opening credit");
            assert!(matches!(outcome, PostingOutcome::Created(_)), "{outcome:?}");
        }
        id
    }

    /// Executes SQL on a connection of its own, outside the store, returning the database's error text.
    pub(crate) async fn raw_execute(&self, sql: &str) -> Result<u64, String> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        let url = &self.database.url;
        if url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(url).await.map_err(|e| e.to_string())?;
            sqlx::query(sql).execute(&mut connection).await.map(|r| r.rows_affected()).map_err(|e| e.to_string())
        } else {
            let mut connection = sqlx::PgConnection::connect(url).await.map_err(|e| e.to_string())?;
            sqlx::query(sql).execute(&mut connection).await.map(|r| r.rows_affected()).map_err(|e| e.to_string())
        }
    }

    /// Asserts the account's balance is `expected` and equals the sum of its entries and its last `balance_after`.
    pub(crate) async fn assert_balance(&self, id: &AccountId, expected: i64) {
        let account = self.store.account(id).await.expect("read account").expect("account exists");
        assert_eq!(account.balance, Millicredits::new(expected), "balance of {id}");
        let totals = self.store.ledger_totals(Some(id)).await.expect("totals");
        assert_eq!(totals.entries, account.balance, "balance of {id} equals the sum of its entries");
        let entries = self.store.entries(id, 0, i64::MAX).await.expect("entries");
        let last = entries.last().map_or(Millicredits::ZERO, |entry| entry.balance_after);
        assert_eq!(last, account.balance, "last balance_after of {id}");
        assert_eq!(account.last_sequence, i64::try_from(entries.len()).expect("fits"), "sequence of {id}");
    }
}

fn posting(id: &AccountId, kind: EntryKind, key: &str, amount: i64) -> Posting {
    Posting {
        account_id: id.clone(),
        kind,
        amount: Millicredits::new(amount),
        idempotency_key: key.to_owned(),
        correlation_id: Some(format!("corr-{key}")),
        rate_version: (kind == EntryKind::UsageDebit).then(|| RateVersion::new("v1").expect("valid")),
        source_ref: None,
        reason: (kind == EntryKind::Adjustment).then(|| "test adjustment".to_owned()),
        overdraft: Overdraft::Forbid,
        spend_cap: None,
        usage: None,
    }
}

/// A purchase credit of `amount` millicredits.
pub(crate) fn purchase(id: &AccountId, key: &str, amount: i64) -> Posting {
    posting(id, EntryKind::PurchaseCredit, key, amount)
}

/// A usage debit of `amount` millicredits (pass a positive number).
pub(crate) fn usage(id: &AccountId, key: &str, amount: i64) -> Posting {
    posting(id, EntryKind::UsageDebit, key, -amount)
}

/// An adjustment of signed `amount` with a reason.
pub(crate) fn adjustment(id: &AccountId, key: &str, amount: i64) -> Posting {
    posting(id, EntryKind::Adjustment, key, amount)
}

/// An audit record by a test operator.
pub(crate) fn audit(action: &str, subject: &str) -> NewAuditRecord {
    NewAuditRecord {
        actor: "test-operator".into(),
        action: action.into(),
        subject: subject.into(),
        reason: Some("testing".into()),
        details: "{}".into(),
    }
}

/// Every `table.column` of creditflow's tables (migration bookkeeping excluded).
pub(crate) async fn columns(db: &Db) -> BTreeSet<String> {
    let url = &db.database.url;
    let mut columns = BTreeSet::new();
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.expect("connect");
        let sql = "SELECT m.name || '.' || p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                   WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%'";
        for row in sqlx::query(sql).fetch_all(&mut connection).await.expect("read schema") {
            columns.insert(row.get::<String, _>(0));
        }
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.expect("connect");
        let sql = "SELECT table_name || '.' || column_name FROM information_schema.columns \
                   WHERE table_schema = 'public' AND table_name NOT LIKE '_sqlx%'";
        for row in sqlx::query(sql).fetch_all(&mut connection).await.expect("read schema") {
            columns.insert(row.get::<String, _>(0));
        }
    }
    columns
}
