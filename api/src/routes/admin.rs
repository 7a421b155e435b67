//! Operator endpoints (admin role; finance may read): adjustments with a reason, freezing accounts, rate card
//! versions and their rollout, and the audit log. Every change names its actor (the token's subject) in the audit
//! log, in the same transaction as the change.

use creditflow_domain::{AccountId, AccountStatus, EntryKind, Millicredits, Overdraft, Posting, PostingOutcome};
use creditflow_domain::{RateCard, RateVersion};
use creditflow_store::{NewAuditRecord, RateCardAdded, Rollout, StoreError};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use time::OffsetDateTime;

use super::{ApiTags, LedgerLine, rfc3339};
use crate::AppState;
use crate::auth::{Principal, Role};
use crate::errors::{ApiError, ErrorBody};
use crate::security::BearerAuth;

pub(crate) struct AdminApi;

/// A balance correction.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct AdjustmentRequest {
    /// Your key for this adjustment; a retry with the same key and content changes nothing.
    #[oai(validator(min_length = 1, max_length = 240))]
    idempotency_key: String,
    /// Signed amount in millicredits: positive credits the account, negative debits it.
    amount_millicredits: i64,
    /// Why: recorded on the ledger line and in the audit log (required).
    #[oai(validator(max_length = 1000))]
    reason: String,
    /// Ties the adjustment to a ticket or incident.
    #[oai(validator(max_length = 255))]
    correlation_id: Option<String>,
    /// Let a negative adjustment take the balance below zero.
    #[oai(default)]
    allow_negative_balance: bool,
}

/// Why an account is frozen or unfrozen.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct StatusChange {
    /// Recorded in the audit log (required).
    #[oai(validator(min_length = 1, max_length = 1000))]
    reason: String,
}

/// An account's status after a freeze or unfreeze.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct AccountStatusBody {
    account_id: String,
    /// `active` or `frozen`.
    status: String,
    /// False when the account already had this status.
    changed: bool,
}

/// A rate card document to store as a new version.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct RateCardUpload {
    /// The rate card in TOML (`version`, `rounding`, `[models."name"]` prices in credits per unit).
    #[oai(validator(max_length = 262_144))]
    document: String,
}

/// A stored rate card version.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct RateCardInfo {
    version: String,
    /// `ceil` or `precise`.
    rounding: String,
    /// Upload time (RFC 3339).
    created_at: String,
    /// When and to whom it applies.
    activations: Vec<ActivationInfo>,
}

/// One activation of a version.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct ActivationInfo {
    /// When it takes effect (RFC 3339).
    effective_at: String,
    /// Share of accounts covered, 0 to 100.
    percentage: u8,
    /// Accounts covered whatever their share.
    allowlist: Vec<String>,
    /// Who scheduled it.
    actor: String,
}

/// When and to whom a version applies.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct ActivationRequest {
    /// When it takes effect (RFC 3339); now when absent.
    effective_at: Option<String>,
    /// Share of accounts, 0 to 100 (default 100: everyone). Each account's share is stable per version, so raising
    /// it keeps the accounts already moved.
    #[oai(validator(minimum(value = "0"), maximum(value = "100")))]
    percentage: Option<u8>,
    /// Accounts to move first, whatever the share.
    #[oai(validator(max_items = 10000))]
    allowlist: Option<Vec<String>>,
    /// Why, for the audit log.
    #[oai(validator(max_length = 1000))]
    reason: Option<String>,
}

/// A page of the audit log, newest first.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct AuditPage {
    records: Vec<AuditLine>,
    /// Pass as `before` for older records; absent on the last page.
    next_cursor: Option<String>,
}

/// One audit record.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct AuditLine {
    id: i64,
    /// RFC 3339.
    at: String,
    /// Who acted.
    actor: String,
    /// What was done (`ledger.adjust`, `account.freeze`, `rate_card.activate`...).
    action: String,
    /// To what.
    subject: String,
    /// Why.
    reason: Option<String>,
    /// Details as a JSON object, in text.
    details: String,
}

#[derive(Debug, ApiResponse)]
pub(crate) enum AdjustmentResponse {
    /// The ledger line (or the first one, on a replay: see `Idempotent-Replayed`).
    #[oai(status = 200)]
    Ok(Json<LedgerLine>, #[oai(header = "Idempotent-Replayed")] String),
}

#[derive(Debug, ApiResponse)]
pub(crate) enum UploadResponse {
    /// Stored as a new version.
    #[oai(status = 201)]
    Created(Json<RateCardInfo>),
    /// The same document was already stored under this version.
    #[oai(status = 200)]
    Exists(Json<RateCardInfo>),
}

pub(super) fn audit(
    principal: &Principal,
    action: &str,
    subject: &str,
    reason: Option<&str>,
    details: &serde_json::Value,
) -> NewAuditRecord {
    NewAuditRecord {
        actor: principal.subject.clone(),
        action: action.to_owned(),
        subject: subject.to_owned(),
        reason: reason.map(str::to_owned),
        details: details.to_string(),
    }
}

fn account_id(path: &str) -> Result<AccountId, ApiError> {
    AccountId::new(path).map_err(|_| ApiError::invalid("account ids are 1 to 64 of A-Z a-z 0-9 _ -"))
}

pub(super) fn not_found(what: String) -> ApiError {
    ApiError::NotFound(Json(ErrorBody::new("not_found", what)))
}

pub(super) fn reader(principal: &Principal) -> Result<(), ApiError> {
    if principal.has(Role::Admin) || principal.has(Role::Finance) {
        Ok(())
    } else {
        Err(ApiError::forbidden("this needs the admin or finance role"))
    }
}

fn card_info(summary: creditflow_store::RateCardSummary) -> RateCardInfo {
    RateCardInfo {
        version: summary.version,
        rounding: summary.rounding,
        created_at: rfc3339(summary.created_at),
        activations: summary
            .activations
            .into_iter()
            .map(|(effective_at, percentage, allowlist, actor)| ActivationInfo {
                effective_at: rfc3339(effective_at),
                percentage,
                allowlist,
                actor,
            })
            .collect(),
    }
}

impl AdminApi {
    async fn set_status(
        state: &AppState,
        principal: &Principal,
        account: &str,
        status: AccountStatus,
        reason: &str,
    ) -> Result<Json<AccountStatusBody>, ApiError> {
        principal.require(Role::Admin)?;
        let id = account_id(account)?;
        let action = if status == AccountStatus::Frozen { "account.freeze" } else { "account.unfreeze" };
        let record = audit(principal, action, id.as_str(), Some(reason), &serde_json::json!({}));
        let changed = match state.store.set_account_status(&id, status, &record).await {
            Ok(changed) => changed,
            Err(StoreError::AccountNotFound(_)) => return Err(not_found(format!("no account `{id}`"))),
            Err(error) => return Err(error.into()),
        };
        Ok(Json(AccountStatusBody { account_id: id.to_string(), status: status.as_str().to_owned(), changed }))
    }
}

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// Adjust an account's balance, with a reason. The ledger line and an audit record naming the actor are written
    /// in one transaction.
    #[oai(path = "/api/admin/accounts/:account_id/adjustments", method = "post")]
    async fn adjust(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        account_id: Path<String>,
        body: Json<AdjustmentRequest>,
    ) -> Result<AdjustmentResponse, ApiError> {
        auth.0.require(Role::Admin)?;
        let id = self::account_id(&account_id.0)?;
        let request = body.0;
        let posting = Posting {
            account_id: id.clone(),
            kind: EntryKind::Adjustment,
            amount: Millicredits::new(request.amount_millicredits),
            // Operators' keys live in their own namespace, apart from callers' and creditflow's jobs'.
            idempotency_key: format!("admin:{}", request.idempotency_key),
            correlation_id: request.correlation_id,
            rate_version: None,
            source_ref: Some(format!("admin:{}", auth.0.subject)),
            reason: Some(request.reason.trim().to_owned()),
            overdraft: if request.allow_negative_balance { Overdraft::Allow } else { Overdraft::Forbid },
            spend_cap: None,
            usage: None,
        };
        posting.validate().map_err(|invalid| ApiError::invalid(invalid.to_string()))?;
        state.store.create_account(&id).await?;
        let details = serde_json::json!({"amountMillicredits": request.amount_millicredits});
        let record = audit(&auth.0, "ledger.adjust", id.as_str(), posting.reason.as_deref(), &details);
        let outcome = state.store.post_with_audit(&posting, Some(&record)).await.inspect_err(|_| {
            metrics::counter!(crate::metrics::LEDGER_WRITE_FAILURES).increment(1);
        })?;
        let (entry, replayed) = match outcome {
            PostingOutcome::Created(entry) => (entry, false),
            PostingOutcome::Exists(entry) => (entry, true),
            PostingOutcome::ExistsWithDifferentContent(_) => {
                let message = "this idempotency key was already used for a different adjustment";
                return Err(ApiError::Conflict(Json(ErrorBody::new("idempotency_conflict", message))));
            }
            PostingOutcome::InsufficientFunds { balance, shortfall } => {
                let mut body = ErrorBody::new(
                    "insufficient_funds",
                    "the adjustment would take the balance below zero; set allowNegativeBalance to do so",
                );
                body.required_additional_millicredits = Some(shortfall.get());
                body.balance_millicredits = Some(balance.get());
                return Err(ApiError::PaymentRequired(Json(body)));
            }
            PostingOutcome::Overflow => return Err(ApiError::invalid("the adjustment does not fit the balance")),
            other => return Err(ApiError::internal(&format!("unexpected adjustment outcome {other:?}"))),
        };
        Ok(AdjustmentResponse::Ok(Json(entry.into()), replayed.to_string()))
    }

    /// Freeze an account: usage debits are refused until it is unfrozen; money that moves is still recorded.
    #[oai(path = "/api/admin/accounts/:account_id/freeze", method = "post")]
    async fn freeze(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        account_id: Path<String>,
        body: Json<StatusChange>,
    ) -> Result<Json<AccountStatusBody>, ApiError> {
        Self::set_status(&state, &auth.0, &account_id.0, AccountStatus::Frozen, &body.0.reason).await
    }

    /// Unfreeze an account.
    #[oai(path = "/api/admin/accounts/:account_id/unfreeze", method = "post")]
    async fn unfreeze(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        account_id: Path<String>,
        body: Json<StatusChange>,
    ) -> Result<Json<AccountStatusBody>, ApiError> {
        Self::set_status(&state, &auth.0, &account_id.0, AccountStatus::Active, &body.0.reason).await
    }

    /// The audit log, newest first (admin and finance).
    #[oai(path = "/api/admin/audit-log", method = "get")]
    async fn audit_log(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        /// `nextCursor` of the previous page.
        before: Query<Option<i64>>,
        /// Records per page, 1 to 500 (default 100).
        limit: Query<Option<i64>>,
    ) -> Result<Json<AuditPage>, ApiError> {
        reader(&auth.0)?;
        let limit = limit.0.unwrap_or(100);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::invalid("limit must be 1 to 500"));
        }
        let records = state.store.audit_log(before.0, limit).await?;
        let full = records.len() == usize::try_from(limit).unwrap_or(usize::MAX);
        let next_cursor = records.last().filter(|_| full).map(|record| record.id.to_string());
        let records = records
            .into_iter()
            .map(|record| AuditLine {
                id: record.id,
                at: rfc3339(record.at),
                actor: record.actor,
                action: record.action,
                subject: record.subject,
                reason: record.reason,
                details: record.details,
            })
            .collect();
        Ok(Json(AuditPage { records, next_cursor }))
    }

    /// Every rate card version and its activations (admin and finance).
    #[oai(path = "/api/admin/rate-cards", method = "get")]
    async fn rate_cards(&self, state: Data<&AppState>, auth: BearerAuth) -> Result<Json<Vec<RateCardInfo>>, ApiError> {
        reader(&auth.0)?;
        Ok(Json(state.store.rate_cards().await?.into_iter().map(card_info).collect()))
    }

    /// Upload a rate card version. It applies to nobody until activated. 422 `invalid_request` names the field at
    /// fault; 409 `rate_card_conflict` when the version exists with another document (versions are immutable).
    #[oai(path = "/api/admin/rate-cards", method = "post")]
    async fn upload_rate_card(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        body: Json<RateCardUpload>,
    ) -> Result<UploadResponse, ApiError> {
        auth.0.require(Role::Admin)?;
        let document = body.0.document;
        let card = RateCard::from_toml(&document).map_err(|error| ApiError::invalid(error.to_string()))?;
        let added = state.store.add_rate_card(&card, &document).await?;
        if added == RateCardAdded::Created {
            let details = serde_json::json!({"rounding": card.rounding().as_str()});
            let record = audit(&auth.0, "rate_card.upload", card.version().as_str(), None, &details);
            state.store.append_audit(&record).await?;
        }
        let version = card.version().to_string();
        let summary = state.store.rate_cards().await?.into_iter().find(|summary| summary.version == version);
        let info = card_info(summary.ok_or_else(|| ApiError::internal(&"uploaded rate card not listed"))?);
        match added {
            RateCardAdded::Created => Ok(UploadResponse::Created(Json(info))),
            RateCardAdded::Exists => Ok(UploadResponse::Exists(Json(info))),
            RateCardAdded::Conflict => Err(ApiError::Conflict(Json(ErrorBody::new(
                "rate_card_conflict",
                format!("version {version} exists with another document; versions are immutable, use a new one"),
            )))),
        }
    }

    /// Activate a version at a time, for everyone or first for a share of accounts and an allowlist. Each account
    /// sees one version at a time: the newest activation in force that covers it. Its debits record which.
    #[oai(path = "/api/admin/rate-cards/:version/activations", method = "post")]
    async fn activate_rate_card(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        version: Path<String>,
        body: Json<ActivationRequest>,
    ) -> Result<Json<ActivationInfo>, ApiError> {
        auth.0.require(Role::Admin)?;
        let version = RateVersion::new(version.0).map_err(ApiError::invalid)?;
        let request = body.0;
        let effective_at = match request.effective_at.as_deref() {
            None => OffsetDateTime::now_utc(),
            Some(text) => OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ApiError::invalid("effectiveAt must be an RFC 3339 time such as 2026-12-01T00:00:00Z"))?,
        };
        let allowlist = request.allowlist.unwrap_or_default();
        let allowlist: Vec<AccountId> = allowlist
            .iter()
            .map(|id| {
                AccountId::new(id.as_str())
                    .map_err(|_| ApiError::invalid(format!("allowlist: `{id}` is not an account id")))
            })
            .collect::<Result<_, _>>()?;
        let rollout = Rollout { percentage: request.percentage.unwrap_or(100), allowlist };
        let details = serde_json::json!({
            "effectiveAt": rfc3339(effective_at),
            "percentage": rollout.percentage,
            "allowlist": rollout.allowlist.iter().map(AccountId::as_str).collect::<Vec<_>>(),
        });
        let action = if rollout == Rollout::everyone() { "rate_card.activate" } else { "rate_card.rollout" };
        let record = audit(&auth.0, action, version.as_str(), request.reason.as_deref(), &details);
        match state.store.roll_out_rate_card(&version, effective_at, &rollout, &record).await {
            Ok(()) => {}
            Err(StoreError::RateCardNotFound(_)) => return Err(not_found(format!("no rate card version {version}"))),
            Err(error) => return Err(error.into()),
        }
        Ok(Json(ActivationInfo {
            effective_at: rfc3339(effective_at),
            percentage: rollout.percentage,
            allowlist: rollout.allowlist.iter().map(ToString::to_string).collect(),
            actor: auth.0.subject.clone(),
        }))
    }
}
