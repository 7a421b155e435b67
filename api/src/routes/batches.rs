//! `POST /api/usage/batches` and `GET /api/usage/batches/{id}`: usage that already happened, debited in bulk.
//!
//! A batch is validated as a whole (1 to 10,000 events, each of the documented shape), stored with its processing
//! job in one transaction and answered with 202. The job then prices and debits each event alone (see
//! `creditflow_domain::batch`): a bad event is rejected with a reason and the others go through.

use std::collections::BTreeMap;

use creditflow_domain::{BATCH_EVENTS_MAX, Millicredits, UsageEvent};
use creditflow_store::{BatchSubmitted, UsageBatch};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::{ApiTags, credits, rfc3339};
use crate::AppState;
use crate::auth::{Principal, Role};
use crate::errors::{ApiError, ErrorBody};
use crate::security::BearerAuth;

pub(crate) struct BatchesApi;

/// One usage event.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct BatchEvent {
    /// Your id of the event, unique per account (1 to 200 printable ASCII characters): an event id already
    /// debited for the account is counted as a duplicate and not debited again.
    event_id: String,
    /// The account to debit.
    account_id: String,
    /// A model on the account's rate card.
    model: String,
    /// Quantities used per unit kind, whole numbers of 0 or more.
    usage: BTreeMap<String, i64>,
    /// Recorded on the ledger line.
    correlation_id: Option<String>,
}

/// A batch of usage events.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct BatchRequest {
    /// Your key for this submission (1 to 240 characters): resubmitting the same events under it answers with the
    /// first batch; other events under it are a 409.
    #[oai(validator(min_length = 1, max_length = 240))]
    idempotency_key: Option<String>,
    /// 1 to 10,000 events.
    events: Vec<BatchEvent>,
}

/// An event that was not debited.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub(crate) struct BatchRejection {
    /// Position of the event in the batch, from 0.
    index: u64,
    /// Its event id.
    event_id: String,
    /// `invalid_event_id`, `invalid_account_id`, `invalid_usage`, `unknown_model`, `unknown_unit`, `no_rate_card`,
    /// `account_frozen` or `overflow`.
    code: String,
    /// Why, in words.
    reason: String,
}

/// A batch and, once completed, what its processing found.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct BatchView {
    /// Batch id (`ubt_...`).
    id: String,
    /// `accepted`, `processing`, `completed`, or `failed` (its job died: see `lastError`; an operator's retry of the
    /// job finishes it, and events already debited stay debited once).
    status: String,
    /// Why processing failed, when it did.
    last_error: Option<String>,
    /// Events in the batch.
    event_count: i64,
    /// Events debited (including any priced at zero). Set once completed.
    debited_count: Option<i64>,
    /// Events already debited before (same event id for the account). Set once completed.
    duplicate_count: Option<i64>,
    /// Events refused, listed in `rejections`. Set once completed.
    rejected_count: Option<i64>,
    /// Debits that left the balance below zero (usage that happened is billed; the overdraft is flagged).
    overdraft_count: Option<i64>,
    /// The total debited, in millicredits.
    debited_millicredits: Option<i64>,
    /// The same in credits.
    debited_credits: Option<String>,
    /// The refused events, in batch order.
    rejections: Vec<BatchRejection>,
    /// When it was accepted (RFC 3339); its events are priced with the rate cards in force then.
    created_at: String,
    /// When processing finished.
    completed_at: Option<String>,
}

#[derive(Debug, ApiResponse)]
pub(crate) enum SubmitResponse {
    /// Accepted: the batch is stored and will be processed; poll its URL for the outcome.
    #[oai(status = 202)]
    Accepted(Json<BatchView>, #[oai(header = "Idempotent-Replayed")] String),
}

#[OpenApi(tag = "ApiTags::Usage")]
impl BatchesApi {
    /// Submit a batch of usage events (service or admin role).
    ///
    /// 422 `invalid_request` when the batch is empty or holds more than 10,000 events; 409 `idempotency_conflict`
    /// when the key was used for other events. Individual events are judged later, each alone.
    #[oai(path = "/api/usage/batches", method = "post")]
    async fn submit(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        body: Json<BatchRequest>,
    ) -> Result<SubmitResponse, ApiError> {
        let principal = auth.0;
        if !(principal.has(Role::Service) || principal.has(Role::Admin)) {
            return Err(ApiError::forbidden("this needs the service or admin role"));
        }
        let request = body.0;
        if request.events.is_empty() || request.events.len() > BATCH_EVENTS_MAX {
            let got = request.events.len();
            return Err(ApiError::invalid(format!("a batch holds 1 to {BATCH_EVENTS_MAX} events, not {got}")));
        }
        let count = i64::try_from(request.events.len()).unwrap_or(i64::MAX);
        let events: Vec<UsageEvent> = request
            .events
            .into_iter()
            .map(|event| UsageEvent {
                event_id: event.event_id,
                account_id: event.account_id,
                model: event.model,
                usage: event.usage,
                correlation_id: event.correlation_id,
            })
            .collect();
        let events = serde_json::to_string(&events).map_err(|error| ApiError::internal(&error))?;
        let key = request.idempotency_key.as_deref();
        match state.store.submit_usage_batch(&principal.subject, key, &events, count).await? {
            BatchSubmitted::New(batch) => {
                metrics::counter!(crate::metrics::USAGE_BATCHES_ACCEPTED).increment(1);
                Ok(SubmitResponse::Accepted(Json(view(batch)?), "false".to_owned()))
            }
            BatchSubmitted::Replayed(batch) => Ok(SubmitResponse::Accepted(Json(view(batch)?), "true".to_owned())),
            BatchSubmitted::KeyReused => {
                let message = "this idempotency key was already used for a different batch";
                Err(ApiError::Conflict(Json(ErrorBody::new("idempotency_conflict", message))))
            }
        }
    }

    /// A batch's status and counts (service, admin or finance role).
    #[oai(path = "/api/usage/batches/:batch_id", method = "get")]
    async fn status(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        batch_id: Path<String>,
    ) -> Result<Json<BatchView>, ApiError> {
        require_reader(&auth.0)?;
        let Some(batch) = state.store.usage_batch(&batch_id.0).await? else {
            return Err(ApiError::NotFound(Json(ErrorBody::new("not_found", format!("no batch `{}`", batch_id.0)))));
        };
        Ok(Json(view(batch)?))
    }
}

fn require_reader(principal: &Principal) -> Result<(), ApiError> {
    if [Role::Service, Role::Admin, Role::Finance].iter().any(|role| principal.has(*role)) {
        Ok(())
    } else {
        Err(ApiError::forbidden("this needs the service, admin or finance role"))
    }
}

fn view(batch: UsageBatch) -> Result<BatchView, ApiError> {
    let result = batch.result;
    let rejections = match &result {
        Some(result) => serde_json::from_str(&result.rejections).map_err(|error| ApiError::internal(&error))?,
        None => Vec::new(),
    };
    Ok(BatchView {
        id: batch.id,
        status: batch.status.as_str().to_owned(),
        last_error: batch.last_error,
        event_count: batch.event_count,
        debited_count: result.as_ref().map(|r| r.debited),
        duplicate_count: result.as_ref().map(|r| r.duplicates),
        rejected_count: result.as_ref().map(|r| r.rejected),
        overdraft_count: result.as_ref().map(|r| r.overdrafts),
        debited_millicredits: result.as_ref().map(|r| r.debited_millicredits),
        debited_credits: result.as_ref().map(|r| credits(Millicredits::new(r.debited_millicredits))),
        rejections,
        created_at: rfc3339(batch.created_at),
        completed_at: batch.completed_at.map(rfc3339),
    })
}
