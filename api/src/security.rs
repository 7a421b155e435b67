//! The bearer-token security scheme of the OpenAPI document: checked by [`crate::auth::Authenticator`], then
//! counted against the subject's rate limit.

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use poem_openapi::payload::Json;

use crate::AppState;
use crate::auth::Principal;
use crate::errors::{ApiError, ErrorBody};
use crate::limits::Verdict;

/// A JWT bearer token (RS256, ES256 or EdDSA).
#[derive(Debug, SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub(crate) struct BearerAuth(pub(crate) Principal);

async fn check_bearer(request: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let Some(state) = request.data::<AppState>() else {
        return Err(ApiError::internal(&"application state missing").into());
    };
    let principal = match state.auth.authenticate(&bearer.token).await {
        Ok(principal) => principal,
        Err(refusal) => {
            tracing::debug!(%refusal, "token refused");
            return Err(ApiError::unauthorized().into());
        }
    };
    match state.limiter.check(&principal.subject).await {
        Verdict::Allowed => Ok(principal),
        Verdict::Limited(wait) => {
            let retry_after_seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let body = ErrorBody::new("rate_limited", format!("too many requests; retry in {retry_after_seconds} s"));
            Err(ApiError::TooManyRequests(Json(body), retry_after_seconds.max(1)).into())
        }
    }
}
