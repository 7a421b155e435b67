//! The bearer-token security scheme of the OpenAPI document, checked by [`crate::auth::Authenticator`].

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use crate::AppState;
use crate::auth::Principal;
use crate::errors::ApiError;

/// A JWT bearer token (RS256, ES256 or EdDSA).
#[derive(Debug, SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub(crate) struct BearerAuth(pub(crate) Principal);

async fn check_bearer(request: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let Some(state) = request.data::<AppState>() else {
        return Err(ApiError::internal(&"application state missing").into());
    };
    match state.auth.authenticate(&bearer.token).await {
        Ok(principal) => Ok(principal),
        Err(refusal) => {
            tracing::debug!(%refusal, "token refused");
            Err(ApiError::unauthorized().into())
        }
    }
}
