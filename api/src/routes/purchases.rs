//! `POST /api/purchases`: start buying a credit pack.
//!
//! creditflow makes (once per account) a Stripe customer and a PaymentIntent for the pack's price, carrying the
//! account and pack in its metadata, and answers with the client secret the browser confirms the payment with
//! (Stripe.js). The credits arrive when Stripe's `payment_intent.succeeded` webhook is processed, exactly once per
//! payment. A retry with the same `idempotencyKey` answers with the same PaymentIntent.

use std::collections::HashMap;

use creditflow_payments::PaymentError;
use creditflow_store::{Purchase, PurchaseStatus};
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::{ApiTags, credits};
use crate::AppState;
use crate::errors::{ApiError, ErrorBody};
use crate::security::BearerAuth;

/// Metadata key naming the account a payment is for (read back by fulfilment).
const ACCOUNT_METADATA_KEY: &str = "creditflow_account_id";
/// Metadata key naming the pack a payment buys.
const PACK_METADATA_KEY: &str = "creditflow_pack_id";

pub(crate) struct PurchasesApi;

/// A pack to buy.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct PurchaseRequest {
    /// A pack id from the catalog, such as `starter`.
    #[oai(validator(min_length = 1, max_length = 64))]
    pack: String,
    /// The account buying: required for service and admin callers, implied for customers.
    account_id: Option<String>,
    /// Your key for this purchase (1 to 100 characters): a retry with it answers with the same payment.
    #[oai(validator(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9_.:-]+$"))]
    idempotency_key: Option<String>,
}

/// A payment to confirm in the browser.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct PurchaseStarted {
    /// Stripe's PaymentIntent id (`pi_...`).
    payment_intent_id: String,
    /// Pass to Stripe.js `confirmPayment`; never log or store it.
    client_secret: String,
    /// The account credited once the payment succeeds.
    account_id: String,
    /// The pack.
    pack: String,
    /// Its price, in US cents.
    amount_usd_cents: i64,
    /// `usd`.
    currency: String,
    /// Credits granted on payment, in millicredits.
    credits_millicredits: i64,
    /// The same in credits.
    credits: String,
}

#[derive(Debug, ApiResponse)]
pub(crate) enum PurchaseResponse {
    /// The PaymentIntent to confirm.
    #[oai(status = 201)]
    Created(Json<PurchaseStarted>),
}

#[OpenApi(tag = "ApiTags::Account")]
impl PurchasesApi {
    /// Start buying a credit pack: returns a Stripe PaymentIntent's client secret to confirm in the browser.
    ///
    /// 422 `unknown_pack` names the packs on sale; 409 `idempotency_conflict` when the key was used for another
    /// purchase; 503 `stripe_not_configured` when this deployment sells nothing, 503 `payment_provider_unavailable`
    /// when Stripe cannot be reached (retry with the same idempotency key), 502 `payment_provider_error` when Stripe
    /// refuses.
    #[oai(path = "/api/purchases", method = "post")]
    async fn purchase(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        body: Json<PurchaseRequest>,
    ) -> Result<PurchaseResponse, ApiError> {
        let request = body.0;
        let account_id = auth.0.account(request.account_id.as_deref(), true)?;
        let Some(pack) = state.packs.get(&request.pack) else {
            let names: Vec<&str> = state.packs.packs().iter().map(|pack| pack.id.as_str()).collect();
            let message = format!("no pack `{}`; packs on sale: {}", request.pack, names.join(", "));
            return Err(ApiError::Unprocessable(Json(ErrorBody::new("unknown_pack", message))));
        };
        let Some(stripe) = state.payments.as_deref() else {
            let message = "payments are not configured on this deployment (stripe.secret_key)";
            return Err(ApiError::Unavailable(Json(ErrorBody::new("stripe_not_configured", message))));
        };
        let store = &state.store;
        store.create_account(&account_id).await?;
        let customer = if let Some(customer) = store.stripe_customer(&account_id).await? {
            customer
        } else {
            let email = store.settings(&account_id).await?.email;
            let created = stripe.create_customer(account_id.as_str(), email.as_deref()).await.map_err(unavailable)?;
            store.remember_stripe_customer(&account_id, &created).await?
        };
        let metadata = HashMap::from([
            (ACCOUNT_METADATA_KEY.to_owned(), account_id.to_string()),
            (PACK_METADATA_KEY.to_owned(), pack.id.clone()),
        ]);
        let key = match &request.idempotency_key {
            Some(key) => format!("creditflow-purchase-{account_id}-{key}"),
            None => format!("creditflow-purchase-{}", uuid::Uuid::now_v7().simple()),
        };
        let intent =
            stripe.create_payment_intent(&customer, pack.price_usd_cents, metadata, &key).await.map_err(unavailable)?;
        store
            .record_purchase(&Purchase {
                payment_intent_id: intent.id.clone(),
                account_id: account_id.clone(),
                pack_id: pack.id.clone(),
                amount_usd_cents: pack.price_usd_cents,
                currency: "usd".to_owned(),
                status: PurchaseStatus::Pending,
                ledger_entry_id: None,
                last_error: None,
            })
            .await?;
        Ok(PurchaseResponse::Created(Json(PurchaseStarted {
            payment_intent_id: intent.id,
            client_secret: intent.client_secret,
            account_id: account_id.to_string(),
            pack: pack.id.clone(),
            amount_usd_cents: pack.price_usd_cents,
            currency: "usd".to_owned(),
            credits_millicredits: pack.grant.get(),
            credits: credits(pack.grant),
        })))
    }
}

/// Stripe failures as the caller sees them: never Stripe's own words (they may name our configuration).
#[allow(clippy::needless_pass_by_value)] // used as `map_err(unavailable)`
fn unavailable(error: PaymentError) -> ApiError {
    tracing::warn!(%error, "a Stripe call for a purchase failed");
    if matches!(error, PaymentError::KeyReused) {
        let message = "this idempotency key was already used for a different purchase";
        return ApiError::Conflict(Json(ErrorBody::new("idempotency_conflict", message)));
    }
    if matches!(error, PaymentError::Unavailable(_)) {
        let message = "the payment provider cannot be reached; retry with the same idempotency key";
        return ApiError::Unavailable(Json(ErrorBody::new("payment_provider_unavailable", message)));
    }
    let message = "the payment provider refused the request; contact support";
    ApiError::BadGateway(Json(ErrorBody::new("payment_provider_error", message)))
}
