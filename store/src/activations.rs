//! Which rate card applies to an account, answered from a per-process copy of the activation table.
//!
//! A reconcile must price with the card in force for its account, and reading the activations on every request cost
//! a statement per request. Activations are append-only (the database refuses UPDATE, DELETE and TRUNCATE), so the
//! rows visible to a reader only ever grow, and their count names the set exactly: a copy read when the table held
//! N rows is still the whole table while the table holds N rows. The ledger read that every debit makes anyway
//! carries the count beside the account (see `debits.rs`); the copy is read again only when the count moved. The
//! count, not the largest id: identities are handed out before commit, so a row with a smaller id can become visible
//! after a larger one, and the largest id would not move.

use std::sync::{Arc, Mutex, PoisonError};

use creditflow_domain::{AccountId, RateCard, RateVersion, rollout_covers};
use time::OffsetDateTime;

use crate::{Store, StoreError, Timestamp, on_backend};

/// One activation, as the walk needs it (the document stays in `rate_cards`, parsed once per version).
#[derive(Clone, Debug)]
struct Activation {
    version: RateVersion,
    effective_at: OffsetDateTime,
    percentage: u8,
    allowlist: Vec<AccountId>,
}

/// Every activation, newest first (by effective time, then id), and how many rows the table held when read.
#[derive(Debug)]
pub(crate) struct ActivationList {
    pub(crate) rows: i64,
    newest_first: Vec<Activation>,
}

impl ActivationList {
    /// The version in force for `account` at `at`: the newest activation by then that covers it.
    pub(crate) fn version_for(&self, account: &AccountId, at: OffsetDateTime) -> Option<&RateVersion> {
        self.newest_first
            .iter()
            .filter(|activation| activation.effective_at <= at)
            .find(|activation| {
                rollout_covers(&activation.version, activation.percentage, &activation.allowlist, account)
            })
            .map(|activation| &activation.version)
    }
}

/// The per-process copies: the activation list and parsed cards by version. Cheap to clone; clones share.
#[derive(Clone, Debug, Default)]
pub(crate) struct CardCache {
    activations: Arc<Mutex<Option<Arc<ActivationList>>>>,
    parsed: crate::rate_cards::ParsedCards,
}

impl CardCache {
    pub(crate) fn parsed(&self) -> &crate::rate_cards::ParsedCards {
        &self.parsed
    }

    /// The activation list as last read, if it was (whether it is still current is for the caller to check).
    pub(crate) fn current_activations(&self) -> Option<Arc<ActivationList>> {
        self.activations.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[derive(sqlx::FromRow)]
struct ActivationRow {
    version: String,
    effective_at: Timestamp,
    percentage: i32,
    allowlist: Option<String>,
}

const ALL_ACTIVATIONS: &str = "SELECT version, effective_at, percentage, allowlist FROM rate_card_activations \
     ORDER BY effective_at DESC, id DESC";
const DOCUMENT: &str = "SELECT document FROM rate_cards WHERE version = $1";
/// The number of activation rows (the ledger read of `debits.rs` carries the same as a subquery).
pub(crate) const COUNT_ACTIVATIONS: &str = "SELECT COUNT(*) FROM rate_card_activations";

impl Store {
    pub(crate) fn card_cache(&self) -> &CardCache {
        match self {
            Self::Sqlite(store) => &store.cards,
            Self::Postgres(store) => &store.cards,
        }
    }

    /// The activation list, read again when the table no longer holds `rows` rows (or when none was read yet), on
    /// `connection` when the caller holds one (taking a second from the pool could wait on the caller's own).
    pub(crate) async fn activations(
        &self,
        rows: i64,
        connection: Option<&mut sqlx::PgConnection>,
    ) -> Result<Arc<ActivationList>, StoreError> {
        let cache = self.card_cache();
        if let Some(list) = cache.activations.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
            && list.rows == rows
        {
            return Ok(Arc::clone(list));
        }
        let read: Vec<ActivationRow> = match connection {
            Some(connection) => sqlx::query_as(ALL_ACTIVATIONS).fetch_all(connection).await?,
            None => on_backend!(self, |pool, _dialect| sqlx::query_as(ALL_ACTIVATIONS).fetch_all(pool).await?),
        };
        let mut newest_first = Vec::with_capacity(read.len());
        for row in read {
            let version = RateVersion::new(row.version.clone())
                .map_err(|_| StoreError::Corrupt(format!("rate version {}", row.version)))?;
            let allowlist = crate::rate_cards::allowlist_from_json(row.allowlist.as_deref())?
                .into_iter()
                .filter_map(|id| AccountId::new(id).ok())
                .collect();
            let percentage = u8::try_from(row.percentage).unwrap_or(100);
            newest_first.push(Activation { version, effective_at: row.effective_at.get(), percentage, allowlist });
        }
        // One statement read them all: their number is the count of the snapshot they came from.
        let rows = i64::try_from(newest_first.len()).unwrap_or(i64::MAX);
        let list = Arc::new(ActivationList { rows, newest_first });
        *cache.activations.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&list));
        Ok(list)
    }

    /// The parsed card of `version`, read and parsed once per process (on `connection` when the caller holds one).
    pub(crate) async fn parsed_card(
        &self,
        version: &RateVersion,
        connection: Option<&mut sqlx::PgConnection>,
    ) -> Result<Arc<RateCard>, StoreError> {
        let parsed = self.card_cache().parsed();
        if let Some(card) = parsed.lock().unwrap_or_else(PoisonError::into_inner).get(version.as_str()) {
            return Ok(Arc::clone(card));
        }
        let document: String = match connection {
            Some(connection) => sqlx::query_scalar(DOCUMENT).bind(version.as_str()).fetch_one(connection).await?,
            None => on_backend!(self, |pool, _dialect| sqlx::query_scalar(DOCUMENT)
                .bind(version.as_str())
                .fetch_one(pool)
                .await?),
        };
        let card = RateCard::from_toml(&document)
            .map_err(|error| StoreError::Corrupt(format!("stored rate card does not parse: {error}")))?;
        let card = Arc::new(card);
        parsed.lock().unwrap_or_else(PoisonError::into_inner).insert(version.to_string(), Arc::clone(&card));
        Ok(card)
    }
}
