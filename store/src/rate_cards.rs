//! Rate card versions: immutable documents, and append-only activations that say which version applies when.

use creditflow_domain::{RateCard, RateVersion};
use time::OffsetDateTime;

use crate::audit::{NewAuditRecord, insert_audit};
use crate::{Store, StoreError, Timestamp, on_backend};

/// The result of storing a rate card document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateCardAdded {
    /// Stored as a new version.
    Created,
    /// The same document was already stored under this version.
    Exists,
    /// A different document already holds this version; versions are immutable.
    Conflict,
}

/// A rate card read back from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRateCard {
    /// The parsed card.
    pub card: RateCard,
    /// The TOML document as uploaded.
    pub document: String,
    /// When its activation took effect.
    pub effective_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct ActiveRow {
    document: String,
    effective_at: Timestamp,
}

impl Store {
    /// Stores a validated rate card under its version. The document must be the text `card` was parsed from.
    pub async fn add_rate_card(&self, card: &RateCard, document: &str) -> Result<RateCardAdded, StoreError> {
        debug_assert_eq!(RateCard::from_toml(document).as_ref(), Ok(card), "document and card must agree");
        let now = Timestamp::now();
        let insert = "INSERT INTO rate_cards (version, rounding, document, created_at) VALUES ($1, $2, $3, $4) \
                      ON CONFLICT (version) DO NOTHING";
        let select = "SELECT document FROM rate_cards WHERE version = $1";
        let version = card.version().as_str();
        on_backend!(write self, |tx, _dialect| {
            let inserted = sqlx::query(insert)
                .bind(version)
                .bind(card.rounding().as_str())
                .bind(document)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let stored: String = sqlx::query_scalar(select).bind(version).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(match (inserted, stored == document) {
                (1, _) => RateCardAdded::Created,
                (_, true) => RateCardAdded::Exists,
                (_, false) => RateCardAdded::Conflict,
            })
        })
    }

    /// Makes `version` the active card from `effective_at` on, recording the actor in the audit log.
    pub async fn activate_rate_card(
        &self,
        version: &RateVersion,
        effective_at: OffsetDateTime,
        audit: &NewAuditRecord,
    ) -> Result<(), StoreError> {
        let now = Timestamp::now();
        let exists = "SELECT COUNT(*) FROM rate_cards WHERE version = $1";
        let insert = "INSERT INTO rate_card_activations (version, effective_at, actor, created_at) \
                      VALUES ($1, $2, $3, $4)";
        on_backend!(write self, |tx, _dialect| {
            let count: i64 = sqlx::query_scalar(exists).bind(version.as_str()).fetch_one(&mut *tx).await?;
            if count == 0 {
                return Err(StoreError::RateCardNotFound(version.to_string()));
            }
            sqlx::query(insert)
                .bind(version.as_str())
                .bind(Timestamp::from(effective_at))
                .bind(audit.actor.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            insert_audit!(tx, audit, now).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The card in force at `at`: the latest activation that took effect by then.
    pub async fn active_rate_card(&self, at: OffsetDateTime) -> Result<Option<StoredRateCard>, StoreError> {
        let sql = "SELECT c.document, a.effective_at FROM rate_card_activations a \
                   JOIN rate_cards c ON c.version = a.version \
                   WHERE a.effective_at <= $1 ORDER BY a.effective_at DESC, a.id DESC LIMIT 1";
        let row: Option<ActiveRow> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(Timestamp::from(at)).fetch_optional(pool).await?
        });
        row.map(|row| {
            let card = RateCard::from_toml(&row.document)
                .map_err(|error| StoreError::Corrupt(format!("stored rate card does not parse: {error}")))?;
            Ok(StoredRateCard { card, document: row.document, effective_at: row.effective_at.get() })
        })
        .transpose()
    }
}
