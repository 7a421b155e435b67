//! API errors. Every error response is JSON with a stable machine-readable `code` and a human `message`; server-side
//! failures never carry their cause (it goes to the log with the request id).
//!
//! Codes: `bad_request`, `unauthorized`, `forbidden`, `account_frozen`, `daily_spend_cap_exceeded`, `not_found`,
//! `method_not_allowed`, `idempotency_conflict`, `job_state`, `payload_too_large`, `invalid_request`, `unknown_model`,
//! `unknown_unit`, `insufficient_funds`, `rate_limited`, `internal`, `unavailable`, and for purchases `unknown_pack`,
//! `stripe_not_configured`, `payment_provider_unavailable`, `payment_provider_error`.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub struct ErrorBody {
    /// Stable identifier clients can branch on.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// With `insufficient_funds`: millicredits the account lacks for this request.
    pub required_additional_millicredits: Option<i64>,
    /// With `insufficient_funds`: the same in credits, as a decimal string (`"0.300"`).
    pub required_additional_credits: Option<String>,
    /// With `insufficient_funds`: the balance when the request was refused, in millicredits.
    pub balance_millicredits: Option<i64>,
}

impl ErrorBody {
    /// A body with just a code and a message.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            required_additional_millicredits: None,
            required_additional_credits: None,
            balance_millicredits: None,
        }
    }
}

/// An error answer of any endpoint.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or invalid credentials (one body for every reason).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// The balance does not cover the charge.
    #[oai(status = 402)]
    PaymentRequired(Json<ErrorBody>),
    /// Not allowed for this caller or account.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such thing.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The idempotency key was used for a different request.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The request is well-formed but its content is not acceptable.
    /// The body is over the size limit (1 MiB; 8 MiB for usage batches).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// Too many requests from this subject.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// Something failed on our side.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// A dependency refused a request it should have taken (the payment provider).
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// A dependency is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// The one 401 body, whatever was wrong with the credentials.
pub(crate) const UNAUTHORIZED_MESSAGE: &str = "missing or invalid credentials";

impl ApiError {
    /// 401 with the uniform body.
    pub fn unauthorized() -> Self {
        Self::Unauthorized(Json(ErrorBody::new("unauthorized", UNAUTHORIZED_MESSAGE)), "Bearer".to_owned())
    }

    /// 422 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Unprocessable(Json(ErrorBody::new("invalid_request", message)))
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(Json(ErrorBody::new("forbidden", message)))
    }

    /// 500 `internal`, logging the cause (which the caller never sees).
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, "request failed");
        Self::Internal(Json(ErrorBody::new("internal", "internal error")))
    }
}

impl From<creditflow_store::StoreError> for ApiError {
    fn from(error: creditflow_store::StoreError) -> Self {
        match error {
            creditflow_store::StoreError::Contention(_) => Self::Unavailable(Json(ErrorBody::new(
                "unavailable",
                "too many concurrent writes to this account; retry with the same idempotency key",
            ))),
            // Unreachable, or no connection in time (down, or every connection busy: the gate's probe, on a
            // connection of its own, tells which within a quarter of a second). The request may be retried as is.
            other if other.is_unavailable() || other.is_pool_timeout() => {
                crate::outage::mark_down();
                Self::Unavailable(Json(crate::outage::unavailable_body()))
            }
            other => Self::internal(&other),
        }
    }
}

impl From<crate::auth::Denied> for ApiError {
    fn from(denied: crate::auth::Denied) -> Self {
        match denied {
            // Malformed or missing input, not a permission problem.
            crate::auth::Denied::AccountRequired | crate::auth::Denied::BadAccountId => {
                Self::invalid(denied.to_string())
            }
            crate::auth::Denied::Role(_) | crate::auth::Denied::OtherAccount => Self::forbidden(denied.to_string()),
        }
    }
}

/// Turns errors raised outside handlers (unknown routes, unparsable bodies, failed auth, oversized bodies) into the
/// same JSON shape. Responses that already carry a JSON error body pass through unchanged.
pub(crate) async fn to_json(error: poem::Error) -> Response {
    // Handlers' own errors arrive as finished responses (`ApiError` above): keep their bodies.
    if error.is_from_response() {
        return error.into_response();
    }
    let status = error.status();
    let answer = |code: &str, message: String| ApiErrorResponse(status, ErrorBody::new(code, message));
    let response = match status {
        StatusCode::UNAUTHORIZED => return ApiError::unauthorized().into_response(),
        StatusCode::NOT_FOUND => answer("not_found", "no such route".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => {
            answer("method_not_allowed", "this route does not take that method".to_owned())
        }
        StatusCode::PAYLOAD_TOO_LARGE => answer("payload_too_large", "the request body is too large".to_owned()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            answer("unsupported_media_type", "send the body as JSON (Content-Type: application/json)".to_owned())
        }
        status if status.is_client_error() => answer("bad_request", error.to_string()),
        _ => {
            tracing::error!(%status, error = %error, "request failed");
            answer("internal", "internal error".to_owned())
        }
    };
    response.into_response()
}

struct ApiErrorResponse(StatusCode, ErrorBody);

impl IntoResponse for ApiErrorResponse {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.1.code, "message": self.1.message});
        Response::builder().status(self.0).content_type("application/json; charset=utf-8").body(body.to_string())
    }
}
