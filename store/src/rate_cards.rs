//! Rate card versions: immutable documents, and append-only activations that say which version applies when.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use creditflow_domain::{AccountId, RateCard, RateVersion};
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
    /// The parsed card (shared: each version is parsed once per store).
    pub card: Arc<RateCard>,
    /// The TOML document as uploaded.
    pub document: String,
    /// When its activation took effect.
    pub effective_at: OffsetDateTime,
}

/// Who an activation applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Share of accounts by stable bucket, 0 to 100; 100 with no allowlist makes a global activation.
    pub percentage: u8,
    /// Accounts covered whatever their bucket.
    pub allowlist: Vec<AccountId>,
}

impl Rollout {
    /// Every account.
    pub fn everyone() -> Self {
        Self { percentage: 100, allowlist: Vec::new() }
    }
}

/// A stored version and its activations, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCardSummary {
    /// The version.
    pub version: String,
    /// `ceil` or `precise`.
    pub rounding: String,
    /// When it was uploaded.
    pub created_at: OffsetDateTime,
    /// Its activations: effective time, share, allowlist, actor.
    pub activations: Vec<(OffsetDateTime, u8, Vec<String>, String)>,
}

#[derive(Clone, sqlx::FromRow)]
struct ActiveRow {
    version: String,
    document: String,
    effective_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    version: String,
    rounding: String,
    created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct ActivationRow {
    version: String,
    effective_at: Timestamp,
    percentage: i32,
    allowlist: Option<String>,
    actor: String,
}

pub(crate) fn allowlist_from_json(text: Option<&str>) -> Result<Vec<String>, StoreError> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => parse_string_array(text).ok_or_else(|| StoreError::Corrupt(format!("rollout allowlist {text}"))),
    }
}

/// Reads a JSON array of plain strings (account ids never need escapes: they are `A-Z a-z 0-9 _ -`).
fn parse_string_array(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|item| item.trim().strip_prefix('"')?.strip_suffix('"').map(str::to_owned)).collect()
}

fn allowlist_to_json(allowlist: &[AccountId]) -> Option<String> {
    if allowlist.is_empty() {
        return None;
    }
    let items: Vec<String> = allowlist.iter().map(|id| format!("\"{id}\"")).collect();
    Some(format!("[{}]", items.join(",")))
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
        self.roll_out_rate_card(version, effective_at, &Rollout::everyone(), audit).await
    }

    /// Makes `version` apply from `effective_at` on to the accounts `rollout` covers (all of them for
    /// [`Rollout::everyone`]), recording the actor in the audit log. Scheduled for later, it also queues (in the same
    /// transaction) the notices to the covered customers.
    pub async fn roll_out_rate_card(
        &self,
        version: &RateVersion,
        effective_at: OffsetDateTime,
        rollout: &Rollout,
        audit: &NewAuditRecord,
    ) -> Result<(), StoreError> {
        let now = Timestamp::now();
        let exists = "SELECT COUNT(*) FROM rate_cards WHERE version = $1";
        let insert = "INSERT INTO rate_card_activations (version, effective_at, actor, created_at, percentage, \
                      allowlist) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
        let percentage = i32::from(rollout.percentage.min(100));
        let allowlist = allowlist_to_json(&rollout.allowlist);
        on_backend!(write self, |tx, _dialect| {
            let count: i64 = sqlx::query_scalar(exists).bind(version.as_str()).fetch_one(&mut *tx).await?;
            if count == 0 {
                return Err(StoreError::RateCardNotFound(version.to_string()));
            }
            let activation: i64 = sqlx::query_scalar(insert)
                .bind(version.as_str())
                .bind(Timestamp::from(effective_at))
                .bind(audit.actor.as_str())
                .bind(now)
                .bind(percentage)
                .bind(allowlist.as_deref())
                .fetch_one(&mut *tx)
                .await?;
            insert_audit!(tx, audit, now).await?;
            // Scheduled ahead: the customers it covers are told before it takes effect.
            if Timestamp::from(effective_at) > now {
                let notices = serde_json::json!({
                    "kind": "rate_card_notices",
                    "activationId": activation,
                    "version": version.as_str(),
                    "effectiveAt": effective_at.unix_timestamp(),
                    "percentage": percentage,
                    "allowlist": rollout.allowlist.iter().map(AccountId::as_str).collect::<Vec<_>>(),
                });
                sqlx::query("INSERT INTO outbox (queue, payload, created_at) VALUES ($1, $2, $3)")
                    .bind(crate::EMAILS_QUEUE)
                    .bind(notices.to_string())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            if Timestamp::from(effective_at) > now {
                self.outbox_written();
            }
            Ok(())
        })
    }

    /// The card in force for everyone at `at`: the latest global activation that took effect by then.
    pub async fn active_rate_card(&self, at: OffsetDateTime) -> Result<Option<StoredRateCard>, StoreError> {
        let sql = "SELECT c.version, c.document, a.effective_at \
                   FROM rate_card_activations a JOIN rate_cards c ON c.version = a.version \
                   WHERE a.effective_at <= $1 AND a.percentage = 100 AND a.allowlist IS NULL \
                   ORDER BY a.effective_at DESC, a.id DESC LIMIT 1";
        let row: Option<ActiveRow> = on_backend!(self, |pool, _dialect| {
            sqlx::query_as(sql).bind(Timestamp::from(at)).fetch_optional(pool).await?
        });
        row.map(|row| self.stored(row)).transpose()
    }

    /// The card in force for `account` at `at`: the newest activation by then that covers it. A global activation
    /// covers everyone; a rollout covers its allowlist and its share of buckets. One account sees one version at a
    /// time, and the same one on every call until a newer activation takes effect.
    pub async fn rate_card_for(
        &self,
        account: &AccountId,
        at: OffsetDateTime,
    ) -> Result<Option<Arc<RateCard>>, StoreError> {
        let mut cards = self.rate_cards_for(&[account], at).await?;
        Ok(cards.remove(account).flatten())
    }

    /// The card in force for each of `accounts` at `at`, as [`Store::rate_card_for`] answers it, with one read of
    /// the activations for all of them (a usage batch spans many accounts).
    pub async fn rate_cards_for(
        &self,
        accounts: &[&AccountId],
        at: OffsetDateTime,
    ) -> Result<HashMap<AccountId, Option<Arc<RateCard>>>, StoreError> {
        let rows: i64 = on_backend!(self, |pool, _dialect| sqlx::query_scalar(crate::activations::COUNT_ACTIVATIONS)
            .fetch_one(pool)
            .await?);
        let activations = self.activations(rows, None).await?;
        let mut cards = HashMap::with_capacity(accounts.len());
        for account in accounts {
            let card = match activations.version_for(account, at) {
                Some(version) => Some(self.parsed_card(version, None).await?),
                None => None,
            };
            cards.insert((*account).clone(), card);
        }
        Ok(cards)
    }

    /// Every stored version with its activations, oldest first.
    pub async fn rate_cards(&self) -> Result<Vec<RateCardSummary>, StoreError> {
        let versions_sql = "SELECT version, rounding, created_at FROM rate_cards ORDER BY created_at, version";
        let activations_sql = "SELECT version, effective_at, percentage, allowlist, actor \
                               FROM rate_card_activations ORDER BY effective_at, id";
        let (versions, activations): (Vec<VersionRow>, Vec<ActivationRow>) = on_backend!(self, |pool, _dialect| {
            (
                sqlx::query_as(versions_sql).fetch_all(pool).await?,
                sqlx::query_as(activations_sql).fetch_all(pool).await?,
            )
        });
        let mut summaries = Vec::with_capacity(versions.len());
        for version in versions {
            let mut summary = RateCardSummary {
                version: version.version,
                rounding: version.rounding,
                created_at: version.created_at.get(),
                activations: Vec::new(),
            };
            for activation in activations.iter().filter(|a| a.version == summary.version) {
                let allowlist = allowlist_from_json(activation.allowlist.as_deref())?;
                let percentage = u8::try_from(activation.percentage).unwrap_or(100);
                summary.activations.push((
                    activation.effective_at.get(),
                    percentage,
                    allowlist,
                    activation.actor.clone(),
                ));
            }
            summaries.push(summary);
        }
        Ok(summaries)
    }
}

/// Parsed rate cards by version. A version's document never changes (the database refuses to update it), so a card
/// parsed once serves every later read; a store holds a few versions, so the map stays small.
pub(crate) type ParsedCards = Arc<Mutex<HashMap<String, Arc<RateCard>>>>;

impl Store {
    fn parsed_cards(&self) -> &ParsedCards {
        self.card_cache().parsed()
    }

    /// The stored card of `row`, parsed once per version.
    fn stored(&self, row: ActiveRow) -> Result<StoredRateCard, StoreError> {
        let cached = self.parsed_cards().lock().unwrap_or_else(PoisonError::into_inner).get(&row.version).cloned();
        let card = if let Some(card) = cached {
            card
        } else {
            let card = RateCard::from_toml(&row.document)
                .map_err(|error| StoreError::Corrupt(format!("stored rate card does not parse: {error}")))?;
            let card = Arc::new(card);
            let mut cards = self.parsed_cards().lock().unwrap_or_else(PoisonError::into_inner);
            cards.insert(row.version.clone(), Arc::clone(&card));
            card
        };
        Ok(StoredRateCard { card, document: row.document, effective_at: row.effective_at.get() })
    }
}

impl Store {
    /// Accounts with an email address, and the address.
    pub async fn accounts_with_email(&self) -> Result<Vec<(AccountId, String)>, StoreError> {
        let sql = "SELECT account_id, email FROM account_settings WHERE email IS NOT NULL ORDER BY account_id";
        let rows: Vec<(String, String)> =
            on_backend!(self, |pool, _dialect| sqlx::query_as(sql).fetch_all(pool).await?);
        rows.into_iter()
            .map(|(account, email)| {
                let id = AccountId::new(account.clone())
                    .map_err(|_| StoreError::Corrupt(format!("settings of account `{account}`")))?;
                Ok((id, email))
            })
            .collect()
    }
}
