//! `POST /webhooks/stripe`: Stripe's events in. The signature is checked against the raw body before anything is
//! parsed or stored; a verified event is stored once by its id with its processing recorded in the outbox (one
//! transaction), and answered at once: the work happens in the job queue, not in Stripe's request.
//!
//! Answers: 200 `{"received": true, "duplicate": bool}`; 400 `invalid_signature` (nothing stored) or
//! `bad_request` (signed but not an event); 503 `stripe_not_configured` when no webhook secret is set. Unknown event
//! types are stored and acknowledged like the others.
//!
//! Not in the OpenAPI document: Stripe is its only caller, and it must see the exact bytes Stripe signed.

use creditflow_store::{Received, ReceivedEvent};
use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{Body, IntoResponse, Request, Response, handler};
use serde::Deserialize;

use crate::AppState;
use crate::errors::ErrorBody;
use creditflow_domain::signature as stripe_signature;

/// Counted by `source` and `status` (`ok`, `duplicate`, `invalid_signature`, `malformed`, `not_configured`, `error`).
pub(crate) const WEBHOOK_EVENTS: &str = "webhook_events_total";

/// Stripe webhook settings.
#[derive(Clone, Debug, Default)]
pub struct StripeWebhookSettings {
    /// The endpoint's signing secret (`whsec_...`); without it events are refused with 503.
    pub secret: Option<String>,
    /// Largest accepted difference between the signature's time and now, in seconds.
    pub tolerance_seconds: i64,
}

#[derive(Deserialize)]
struct EventHead {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    livemode: bool,
}

fn answer(status: StatusCode, code: &str, message: &str, outcome: &'static str) -> Response {
    metrics::counter!(WEBHOOK_EVENTS, "source" => "stripe", "status" => outcome).increment(1);
    let body = serde_json::json!({"code": code, "message": message});
    (status, Json(body)).into_response()
}

#[handler]
pub(crate) async fn stripe(request: &Request, body: Body, state: Data<&AppState>) -> Response {
    let Some(secret) = state.stripe.secret.as_deref() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "stripe_not_configured",
            "no Stripe webhook secret is configured",
            "not_configured",
        );
    };
    let Ok(bytes) = body.into_vec().await else {
        return answer(StatusCode::BAD_REQUEST, "bad_request", "the body could not be read", "malformed");
    };
    let header = request.headers().get("stripe-signature").and_then(|value| value.to_str().ok()).unwrap_or("");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(error) = stripe_signature::verify(header, &bytes, secret, now, state.stripe.tolerance_seconds) {
        tracing::warn!(%error, "Stripe webhook refused");
        return answer(
            StatusCode::BAD_REQUEST,
            "invalid_signature",
            "the Stripe-Signature does not verify",
            "invalid_signature",
        );
    }
    let (Ok(text), Ok(head)) = (std::str::from_utf8(&bytes), serde_json::from_slice::<EventHead>(&bytes)) else {
        return answer(StatusCode::BAD_REQUEST, "bad_request", "the body is not a Stripe event", "malformed");
    };
    let event = ReceivedEvent { id: &head.id, event_type: &head.event_type, livemode: head.livemode, payload: text };
    match state.store.receive_stripe_event(&event).await {
        Ok(received) => {
            let duplicate = received == Received::Duplicate;
            let status = if duplicate { "duplicate" } else { "ok" };
            metrics::counter!(WEBHOOK_EVENTS, "source" => "stripe", "status" => status).increment(1);
            tracing::info!(event_id = %head.id, event_type = %head.event_type, duplicate, "Stripe event received");
            Json(serde_json::json!({"received": true, "duplicate": duplicate})).into_response()
        }
        Err(error) => {
            // Stripe retries non-2xx answers, so a failed write is retried rather than lost.
            metrics::counter!(WEBHOOK_EVENTS, "source" => "stripe", "status" => "error").increment(1);
            let (status, body) = if error.is_unavailable() || error.is_pool_timeout() {
                crate::outage::mark_down();
                (StatusCode::SERVICE_UNAVAILABLE, crate::outage::unavailable_body())
            } else {
                tracing::error!(%error, event_id = %head.id, "cannot store a Stripe event");
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorBody::new("internal", "internal error"))
            };
            (status, Json(serde_json::json!({"code": body.code, "message": body.message}))).into_response()
        }
    }
}
