//! `POST /api/usage/reconcile`: price one usage record against the account's rate card and debit it, atomically and
//! idempotently.
//!
//! The idempotency key is the caller's. The same key with the same body answers with the first result (the same
//! entry id, charge and balance) and an `Idempotent-Replayed: true` header, and debits nothing more; the same key with
//! a different body is a 409. A body is "the same" when its account, model, usage and correlation id are: its
//! fingerprint travels in the entry's source reference (`usage:<sha256>`), so a replay is recognised even after a
//! new rate card made the price differ. A refused request (402) does not use up its key.

use std::collections::BTreeMap;

use creditflow_domain::{Millicredits, PostingOutcome, PricingError, Usage};
use creditflow_store::{DebitAnswer, UsageDebit};
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sha2::{Digest as _, Sha256};

use super::{ApiTags, credits};
use crate::AppState;
use crate::errors::{ApiError, ErrorBody};
use crate::security::BearerAuth;

pub(crate) struct UsageApi;

/// One usage record to price and debit.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct ReconcileRequest {
    /// Your key for this request (1 to 240 printable ASCII characters); retries must reuse it.
    #[oai(validator(min_length = 1, max_length = 240))]
    idempotency_key: String,
    /// Ties the debit to your request or trace; recorded on the ledger line.
    #[oai(validator(max_length = 255))]
    correlation_id: Option<String>,
    /// The account to debit: required for service and admin callers, implied for customers.
    account_id: Option<String>,
    /// A model on the rate card, such as `gpt-4o`.
    #[oai(validator(min_length = 1, max_length = 128))]
    model: String,
    /// Quantities used per unit kind, whole numbers of 0 or more: `{"input_tokens": 1200, "output_tokens": 300}`.
    usage: BTreeMap<String, i64>,
}

/// A priced and debited usage record.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct Reconciled {
    /// The ledger line written (`null` when the charge was zero and nothing was written).
    entry_id: Option<String>,
    /// The account debited.
    account_id: String,
    /// The charge after rounding, in millicredits.
    charge_millicredits: i64,
    /// The charge in credits (`"2.000"`).
    charge_credits: String,
    /// The balance after the debit, in millicredits.
    balance_millicredits: i64,
    /// The balance in credits.
    balance_credits: String,
    /// The rate card version that priced it.
    rate_version: String,
    /// The correlation id recorded.
    correlation_id: Option<String>,
}

#[derive(Debug, ApiResponse)]
pub(crate) enum ReconcileResponse {
    /// Debited (or replayed: see the `Idempotent-Replayed` header).
    #[oai(status = 200)]
    Ok(Json<Reconciled>, #[oai(header = "Idempotent-Replayed")] String),
}

#[OpenApi(tag = "ApiTags::Usage")]
impl UsageApi {
    /// Price a usage record and debit it from the account.
    ///
    /// 402 `insufficient_funds` carries `requiredAdditionalMillicredits`; 403 `account_frozen` and
    /// `daily_spend_cap_exceeded` refuse the debit; 409 `idempotency_conflict` means the key was used for a different
    /// body; 422 `unknown_model`, `unknown_unit` or `invalid_request` name what is wrong with the usage.
    #[oai(path = "/api/usage/reconcile", method = "post")]
    async fn reconcile(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        body: Json<ReconcileRequest>,
    ) -> Result<ReconcileResponse, ApiError> {
        let request = body.0;
        let account_id = auth.0.account(request.account_id.as_deref(), true)?;
        let fingerprint = fingerprint(account_id.as_str(), &request);
        let debit = UsageDebit {
            account_id: account_id.clone(),
            // Callers' keys live in their own namespace, apart from the keys creditflow's jobs use (`payment:...`).
            idempotency_key: format!("{CALLER_KEY_PREFIX}{}", request.idempotency_key),
            correlation_id: request.correlation_id.clone(),
            model: request.model.clone(),
            usage: quantities(&request)?,
            fingerprint: fingerprint.clone(),
        };
        let failed = |_: &creditflow_store::StoreError| {
            metrics::counter!(crate::metrics::LEDGER_WRITE_FAILURES).increment(1);
        };
        // Priced with the card in force for the account and debited; concurrent debits of one account share a write
        // (a hot account commits once for many requests). A retry is answered from its first entry, whatever
        // today's rate card says.
        let outcome = match state.debits.debit(&state.store, debit).await.inspect_err(failed)? {
            DebitAnswer::Posted(outcome) => outcome,
            DebitAnswer::Replay(first) => return replay(&account_id, &request, &fingerprint, first),
            DebitAnswer::Free { balance, rate_version } => {
                let body =
                    reconciled(&account_id, &request, None, Millicredits::ZERO, balance, rate_version.to_string());
                return Ok(ReconcileResponse::Ok(Json(body), "false".to_owned()));
            }
            DebitAnswer::Unpriced(error) => return Err(unpriced(&error)),
            DebitAnswer::NoRateCard => {
                return Err(ApiError::Unavailable(Json(ErrorBody::new("unavailable", "no rate card is active"))));
            }
            DebitAnswer::Invalid(invalid) => return Err(ApiError::invalid(invalid.to_string())),
        };
        let (entry, replayed) = match outcome {
            PostingOutcome::Created(entry) => {
                metrics::counter!(crate::metrics::RECONCILE_DEBITS).increment(1);
                (entry, false)
            }
            PostingOutcome::Exists(entry) => (entry, true),
            // Same body, priced again under a newer rate card: still a replay of the first request.
            PostingOutcome::ExistsWithDifferentContent(entry) if entry.source_ref.as_deref() == Some(&fingerprint) => {
                (entry, true)
            }
            PostingOutcome::ExistsWithDifferentContent(_) => {
                metrics::counter!(crate::metrics::RECONCILE_IDEMPOTENCY_CONFLICTS).increment(1);
                let message = "this idempotency key was already used for a different request";
                return Err(ApiError::Conflict(Json(ErrorBody::new("idempotency_conflict", message))));
            }
            PostingOutcome::InsufficientFunds { balance, shortfall } => {
                metrics::counter!(crate::metrics::RECONCILE_INSUFFICIENT_FUNDS).increment(1);
                let mut body = ErrorBody::new("insufficient_funds", "the balance does not cover this charge");
                body.required_additional_millicredits = Some(shortfall.get());
                body.required_additional_credits = Some(credits(shortfall));
                body.balance_millicredits = Some(balance.get());
                return Err(ApiError::PaymentRequired(Json(body)));
            }
            PostingOutcome::AccountFrozen => {
                let body = ErrorBody::new("account_frozen", "this account is frozen; contact support");
                return Err(ApiError::Forbidden(Json(body)));
            }
            PostingOutcome::SpendCapExceeded { limit, spent } => {
                let message = format!(
                    "the daily spend cap of {} credits would be exceeded ({} spent today); it resets at 00:00 UTC",
                    credits(limit),
                    credits(spent)
                );
                return Err(ApiError::Forbidden(Json(ErrorBody::new("daily_spend_cap_exceeded", message))));
            }
            PostingOutcome::Overflow => return Err(ApiError::invalid("the charge does not fit the balance")),
            PostingOutcome::AccountNotFound => return Err(ApiError::internal(&"account vanished after creation")),
        };
        let amount = entry.amount.checked_neg().unwrap_or(Millicredits::MAX);
        let version = entry.rate_version.as_ref().map_or_else(String::new, ToString::to_string);
        let body = reconciled(&account_id, &request, Some(entry.id), amount, entry.balance_after, version);
        Ok(ReconcileResponse::Ok(Json(body), replayed.to_string()))
    }
}

/// The answer to a request whose key was used before: the first result, or 409 when that was a different request.
fn replay(
    account_id: &creditflow_domain::AccountId,
    request: &ReconcileRequest,
    fingerprint: &str,
    first: creditflow_domain::Entry,
) -> Result<ReconcileResponse, ApiError> {
    if first.source_ref.as_deref() != Some(fingerprint) {
        metrics::counter!(crate::metrics::RECONCILE_IDEMPOTENCY_CONFLICTS).increment(1);
        let message = "this idempotency key was already used for a different request";
        return Err(ApiError::Conflict(Json(ErrorBody::new("idempotency_conflict", message))));
    }
    let amount = first.amount.checked_neg().unwrap_or(Millicredits::MAX);
    let version = first.rate_version.as_ref().map_or_else(String::new, ToString::to_string);
    let body = reconciled(account_id, request, Some(first.id), amount, first.balance_after, version);
    Ok(ReconcileResponse::Ok(Json(body), "true".to_owned()))
}

/// Prefix of callers' idempotency keys in the ledger.
pub(crate) const CALLER_KEY_PREFIX: &str = "api:";

fn reconciled(
    account_id: &creditflow_domain::AccountId,
    request: &ReconcileRequest,
    entry_id: Option<String>,
    amount: Millicredits,
    balance: Millicredits,
    rate_version: String,
) -> Reconciled {
    Reconciled {
        entry_id,
        account_id: account_id.to_string(),
        charge_millicredits: amount.get(),
        charge_credits: credits(amount),
        balance_millicredits: balance.get(),
        balance_credits: credits(balance),
        rate_version,
        correlation_id: request.correlation_id.clone(),
    }
}

/// The request's quantities, each a whole number of 0 or more.
fn quantities(request: &ReconcileRequest) -> Result<Usage, ApiError> {
    let mut usage = Usage::new();
    for (unit, quantity) in &request.usage {
        let quantity = u64::try_from(*quantity).map_err(|_| {
            ApiError::invalid(format!("usage.{unit} is {quantity}: quantities are whole numbers of 0 or more"))
        })?;
        usage.insert(unit.clone(), quantity);
    }
    Ok(usage)
}

/// The 422 for usage the account's card cannot price.
fn unpriced(error: &PricingError) -> ApiError {
    let code = match error {
        PricingError::UnknownModel { .. } => "unknown_model",
        PricingError::UnknownUnit { .. } => "unknown_unit",
        PricingError::EmptyUsage | PricingError::Overflow => "invalid_request",
    };
    ApiError::Unprocessable(Json(ErrorBody::new(code, error.to_string())))
}

/// `usage:` and the SHA-256 of what makes two reconcile bodies the same request.
fn fingerprint(account_id: &str, request: &ReconcileRequest) -> String {
    let canonical = serde_json::json!({
        "account": account_id,
        "model": request.model,
        "usage": request.usage,
        "correlation": request.correlation_id,
    });
    format!("usage:{:x}", Sha256::digest(canonical.to_string().as_bytes()))
}
