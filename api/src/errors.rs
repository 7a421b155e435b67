//! JSON error bodies. Every error the API returns has a stable machine-readable `code` and a human `message`;
//! server-side failures never carry their cause (it goes to the log).

use poem::http::StatusCode;
use poem::web::Json;
use poem::{IntoResponse, Response};
use serde::Serialize;

/// The body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// Stable identifier clients can branch on (`not_found`, `method_not_allowed`...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

/// Turns any error that escaped a handler into a JSON response with the same status.
pub(crate) async fn to_json(error: poem::Error) -> Response {
    let status = error.status();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this route does not take that method".to_owned()),
        status if status.is_client_error() => ("bad_request", error.to_string()),
        _ => {
            tracing::error!(%status, error = %error, "request failed");
            ("internal", "internal error".to_owned())
        }
    };
    (status, Json(ErrorBody { code, message })).into_response()
}
