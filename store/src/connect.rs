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
    use super::redact_url;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("sqlite://creditflow.db"), "sqlite://creditflow.db");
    }
}
