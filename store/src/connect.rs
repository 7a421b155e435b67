//! Opening a store from a URL, migrating it and checking it is reachable.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::{PostgresStore, SqliteStore, Store, StoreError, on_backend};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// How long a SQLite writer waits for another process's write lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a query waits for a SQLite pool connection (writers queue on the write gate, not here).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a query waits for a PostgreSQL pool connection. While the database is down sqlx retries a refused
/// connection until then, so this bounds how long a request caught by an outage waits for its 503; the API's outage
/// gate then refuses the others at once. A healthy pool this busy is overloaded: shedding load is the right answer.
const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// A PostgreSQL connection idle this long is pinged before it is used again (a server restart may have closed it).
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

impl Store {
    /// Opens a pool for `url`: `sqlite://PATH` (created if missing) or `postgres://...`/`postgresql://...`.
    ///
    /// One connection is made directly first: a pool retries until its acquire timeout and then reports only that
    /// it timed out, while a direct attempt fails at once with the cause (refused, unknown host, bad password).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            if url.contains(":memory:") || url.contains("mode=memory") {
                // Every pooled connection would get its own empty database, and all of it vanishes on exit.
                return Err(StoreError::UnsupportedUrl(format!("{url} (in-memory SQLite cannot hold a ledger)")));
            }
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a committed posting survives power loss, not only a process crash.
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            SqliteConnection::connect_with(&options).await?.close().await?;
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            Ok(Self::Sqlite(SqliteStore {
                pool,
                write_gate: Arc::default(),
                cards: crate::activations::CardCache::default(),
                wake: Arc::default(),
            }))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?.application_name("creditflow");
            PgConnection::connect_with(&options).await?.close().await?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
                // No ping before every use (a round trip per query, three per reconcile): only a connection that
                // sat idle for a while is pinged before it is handed out, which is what finds the connections a
                // restarted server left dead (requests wait out an outage without touching the pool). sqlx still
                // pings each connection as it is released, which drops one that failed.
                .test_before_acquire(false)
                .before_acquire(|connection, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= IDLE_BEFORE_PING {
                            connection.ping().await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(options)
                .await?;
            let stash = crate::stash::Stash::new(max_connections);
            Ok(Self::Postgres(PostgresStore {
                pool,
                stash,
                cards: crate::activations::CardCache::default(),
                known: std::sync::Arc::default(),
                wake: Arc::default(),
            }))
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// Applies pending migrations. Safe to run again, and from several processes at once on PostgreSQL (sqlx takes
    /// an advisory lock); on SQLite the write lock serialises them.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(store) => SQLITE_MIGRATIONS.run(&store.pool).await?,
            Self::Postgres(store) => POSTGRES_MIGRATIONS.run(&store.pool).await?,
        }
        Ok(())
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_backend!(self, |pool, _dialect| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Checks the database answers on a connection of its own, outside the pool: true even when every pooled
    /// connection is busy, so it tells a database that is down from one that is only loaded.
    pub async fn probe(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(_) => self.ping().await,
            Self::Postgres(store) => {
                let options = store.pool.connect_options();
                let mut connection = PgConnection::connect_with(&*options).await?;
                sqlx::query("SELECT 1").execute(&mut connection).await?;
                connection.close().await?;
                Ok(())
            }
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        if let Self::Postgres(store) = self {
            store.stash.drain();
        }
        on_backend!(self, |pool, _dialect| pool.close().await);
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.split_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use creditflow_testkit::{TestBackend, TestDatabase};
    use sqlx::Connection as _;

    use super::redact_url;
    use crate::Store;

    /// PostgreSQL checks the ledger chain once per statement (migration 0014) with a plan PL/pgSQL caches the first
    /// time the trigger runs. Made here on a nearly empty table, that plan must still find each new entry's
    /// predecessor with one index probe once a statement appends thousands of entries to one account: counted as
    /// the tuples the transaction read from `ledger_entries` by index and by scan. A lookup that let the planner
    /// choose the `(account_id, created_at)` index read half the account per entry: about 12.5 million here.
    #[tokio::test]
    async fn the_chain_check_probes_each_predecessor_under_a_plan_cached_on_a_small_table() {
        let database = TestDatabase::new(TestBackend::Postgres).await;
        Store::connect(&database.url, 1).await.expect("connect").migrate().await.expect("migrate");
        let mut connection = sqlx::PgConnection::connect(&database.url).await.expect("connect");
        let entries = |from: i64, to: i64| {
            format!(
                "INSERT INTO ledger_entries (id, account_id, sequence, kind, amount_millicredits, \
                 balance_after_millicredits, idempotency_key, created_at) \
                 SELECT 'ent-' || n, 'acct-1', n, 'adjustment', 1, n, 'key-' || n, now() \
                 FROM generate_series({from}, {to}) AS n ORDER BY n"
            )
        };
        for statement in [
            "ALTER TABLE ledger_entries SET (autovacuum_enabled = false)".to_owned(),
            "INSERT INTO accounts (id, status, balance_millicredits, last_sequence, created_at, updated_at) \
             VALUES ('acct-1', 'active', 0, 0, now(), now())"
                .to_owned(),
            // The trigger's first run, on a table of one entry, makes the plan kept for the connection.
            entries(1, 1),
            "BEGIN".to_owned(),
            entries(2, 5_001),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())).execute(&mut connection).await.expect(&statement);
        }
        let read: i64 = sqlx::query_scalar(
            "SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables \
             WHERE relname = 'ledger_entries'",
        )
        .fetch_one(&mut connection)
        .await
        .expect("counted");
        assert!(read <= 10_000, "{read} tuples read to check 5,000 entries");
        sqlx::raw_sql("COMMIT").execute(&mut connection).await.expect("committed");
        // The chain it checks is still the whole rule: a gap and a wrong balance are refused on this plan too.
        for broken in [
            entries(5_003, 5_003),
            "INSERT INTO ledger_entries (id, account_id, sequence, kind, \
             amount_millicredits, balance_after_millicredits, idempotency_key, created_at) \
             VALUES ('ent-x', 'acct-1', 5002, 'adjustment', 1, 1, 'key-x', now())"
                .to_owned(),
        ] {
            let error = sqlx::raw_sql(sqlx::AssertSqlSafe(broken.clone())).execute(&mut connection).await;
            let error = error.expect_err(&broken).to_string();
            assert!(error.contains("skips a sequence") || error.contains("breaks the balance chain"), "{error}");
        }
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("sqlite://creditflow.db"), "sqlite://creditflow.db");
    }
}
