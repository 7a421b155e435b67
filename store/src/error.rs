//! Store errors: operational failures, separate from posting outcomes (which are answers, not errors).

use creditflow_domain::PostingInvalid;

/// Something went wrong talking to the database, or the caller asked for something impossible.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no supported backend.
    #[error("unsupported database URL {0}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// A query or connection failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The posting breaks a rule of its own.
    #[error("invalid posting: {0}")]
    InvalidPosting(#[from] PostingInvalid),
    /// A rate card version that is not stored.
    #[error("rate card version `{0}` does not exist")]
    RateCardNotFound(String),
    /// An account that does not exist.
    #[error("account `{0}` does not exist")]
    AccountNotFound(String),
    /// A stored value that the code cannot read: a bug or a hand-edited database.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// Postings kept colliding with concurrent writers; safe to retry.
    #[error("too much contention on account `{0}`; retry")]
    Contention(String),
}

impl StoreError {
    /// True when no database connection could be had in time: the database is down, or every connection is busy.
    pub fn is_pool_timeout(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::PoolTimedOut))
    }

    /// True when the database could not be reached or dropped the connection (refused, reset, shutting down): the
    /// request may succeed later, unchanged. Not for errors the database answered with, nor for a pool that was
    /// only busy ([`StoreError::is_pool_timeout`]).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Io(_) | sqlx::Error::PoolClosed) => true,
            Self::Database(sqlx::Error::Database(error)) => error.code().is_some_and(|code| {
                // PostgreSQL: class 08 connection exceptions; 57P01-57P03 shutting down or starting up.
                code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
            }),
            _ => false,
        }
    }

    /// True for a unique-constraint violation, which a concurrent writer of the same key causes.
    pub(crate) fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::Database(error)) if error.is_unique_violation())
    }
}
