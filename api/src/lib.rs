//! creditflow's HTTP API, built on poem and poem-openapi.
//!
//! Every operation is typed and documented in the OpenAPI document served at `/openapi.json`, with Swagger UI at
//! `/docs`. Every error, including unknown routes, unparsable bodies and failed authentication, is JSON with a stable
//! `code` (see [`errors`]). Each response carries an `X-Request-Id`, which also tags the request's log lines.

// Handlers return `ApiError` by value: poem-openapi renders the `Err` side of a handler's `Result` as a documented
// response, and an error body is a few strings, built once per failed request.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod errors;
mod limits;
mod metrics;
mod outage;
mod protection;
mod request_id;
mod routes;
mod security;

use std::sync::Arc;

use creditflow_domain::PackCatalog;
use creditflow_store::Store;
use poem::http::StatusCode;
use poem::middleware::CatchPanic;
use poem::{Body, Endpoint, EndpointExt, IntoEndpoint, Request, Response, Route};
use poem_openapi::OpenApiService;
use tokio::io::AsyncReadExt as _;

pub use auth::{AuthSettings, Authenticator, DevKey};
pub use creditflow_domain::signature::{
    SignatureError, sign as sign_stripe_payload, verify as verify_stripe_signature,
};
pub use errors::{ApiError, ErrorBody};
pub use limits::{RateLimiter, Verdict};
pub use metrics::METRIC_NAMES;
pub use protection::CorsAllowlist;
pub use request_id::{REQUEST_ID_HEADER, RequestId};
pub use routes::webhooks::StripeWebhookSettings;

/// Largest request body accepted (1 MiB); larger bodies get 413 `payload_too_large`.
pub const BODY_SIZE_MAX_BYTES: usize = 1 << 20;
/// Largest usage batch body accepted (8 MiB: 10,000 events of a few hundred bytes each).
pub const BATCH_BODY_SIZE_MAX_BYTES: usize = 8 << 20;
/// The route that takes usage batches, and so the larger body limit.
const BATCHES_PATH: &str = "/api/usage/batches";

/// What every request handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The ledger store.
    pub store: Store,
    /// Coalesces concurrent reconcile debits of one account into one transaction.
    pub debits: creditflow_store::Coalescer,
    /// Verifies bearer tokens.
    pub auth: Arc<Authenticator>,
    /// The packs on sale.
    pub packs: Arc<PackCatalog>,
    /// The per-subject rate limit.
    pub limiter: Arc<RateLimiter>,
    /// Origins allowed to call from a browser.
    pub cors: CorsAllowlist,
    /// Stripe webhook verification.
    pub stripe: StripeWebhookSettings,
    /// Stripe's API, when this deployment sells packs (`None`: purchases answer 503 `stripe_not_configured`).
    pub payments: Option<Arc<creditflow_payments::Stripe>>,
}

type Operations = (
    routes::probes::ProbesApi,
    routes::usage::UsageApi,
    routes::batches::BatchesApi,
    routes::purchases::PurchasesApi,
    routes::account::AccountApi,
    routes::settings::SettingsApi,
    routes::admin::AdminApi,
    routes::jobs::JobsApi,
    routes::reports::ReportsApi,
);

fn service() -> OpenApiService<Operations, ()> {
    OpenApiService::new(
        (
            routes::probes::ProbesApi,
            routes::usage::UsageApi,
            routes::batches::BatchesApi,
            routes::purchases::PurchasesApi,
            routes::account::AccountApi,
            routes::settings::SettingsApi,
            routes::admin::AdminApi,
            routes::jobs::JobsApi,
            routes::reports::ReportsApi,
        ),
        "creditflow",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Prepaid-credits billing for usage-based APIs: balances, usage debits and the ledger.")
}

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    service().spec()
}

/// The complete API as one endpoint.
pub fn app(state: AppState) -> impl Endpoint {
    let cors = state.cors.clone();
    let api = service();
    let routes = metrics::Routes::from_spec(&api.spec());
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    metrics::handle();
    Route::new()
        .at("/openapi.json", spec)
        .at("/metrics", poem::get(metrics::render))
        .at("/webhooks/stripe", poem::post(routes::webhooks::stripe))
        .nest("/docs", docs)
        .nest("/", api.into_endpoint())
        .around(check_body)
        .around(outage::gate)
        .data(state)
        .catch_all_error(errors::to_json)
        .with(CatchPanic::new())
        .around(move |next, request| request_id::with_request_id(next, request, routes.clone()))
        .around(move |next, request| protection::protect(next, request, cors.clone()))
}

/// Checks bodies before any handler reads them. Refuses bodies over [`BODY_SIZE_MAX_BYTES`]
/// ([`BATCH_BODY_SIZE_MAX_BYTES`] for usage batches): at once with 413 when `Content-Length` says so, and by reading at
/// most one byte past the limit when the body is chunked (the truncated body then fails to parse with 400). Refuses
/// JSON that spells the NUL character with 422.
async fn check_body<E: Endpoint>(next: E, mut request: Request) -> poem::Result<Response> {
    let declared = request
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let limit = if request.uri().path() == BATCHES_PATH { BATCH_BODY_SIZE_MAX_BYTES } else { BODY_SIZE_MAX_BYTES };
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    match declared {
        Some(length) if length > limit => return Err(poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE)),
        Some(_) => {}
        None => {
            let body = request.take_body().into_async_read().take(limit.saturating_add(1));
            request.set_body(Body::from_async_read(body));
        }
    }
    // JSON may spell the NUL character (`\u0000`), which PostgreSQL cannot store in text: refused up front, on every
    // backend alike, rather than failing deep in a write.
    if request.content_type().is_some_and(|kind| kind.starts_with("application/json")) {
        let body = request.take_body().into_bytes().await?;
        if escapes_nul(&body) {
            let error = errors::ApiError::invalid("text fields may not contain the NUL character (\\u0000)");
            return Ok(poem::IntoResponse::into_response(error));
        }
        request.set_body(body);
    }
    next.call(request).await.map(poem::IntoResponse::into_response)
}

/// True when JSON text holds the escape `\u0000` (a backslash that is not itself escaped, then `u0000`).
fn escapes_nul(json: &[u8]) -> bool {
    json.windows(6).enumerate().any(|(at, window)| {
        window.eq_ignore_ascii_case(b"\\u0000")
            && json[..at].iter().rev().take_while(|byte| **byte == b'\\').count() % 2 == 0
    })
}

#[cfg(test)]
mod tests {
    use super::escapes_nul;

    #[test]
    fn only_an_unescaped_backslash_before_u0000_is_a_nul() {
        assert!(escapes_nul(br#"{"key":"a\u0000b"}"#));
        assert!(escapes_nul(br#"{"key":"\\\U0000"}"#), "three backslashes: an escaped one, then the escape");
        assert!(!escapes_nul(br#"{"key":"\\u0000"}"#), "an escaped backslash followed by the text u0000");
        assert!(!escapes_nul(br#"{"key":"u0000 \u0001"}"#));
        assert!(!escapes_nul(b""));
    }
}
