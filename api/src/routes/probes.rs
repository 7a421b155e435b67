//! Liveness and readiness probes.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use time::OffsetDateTime;

use super::ApiTags;
use crate::AppState;

pub(crate) struct ProbesApi;

/// Liveness.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct Health {
    /// Always `ok`.
    status: String,
}

/// Readiness and what it depends on.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct Readiness {
    /// `ready` or `unavailable`.
    status: String,
    /// `sqlite` or `postgres`.
    backend: String,
    /// Each dependency's state.
    checks: Checks,
}

/// Dependency states.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct Checks {
    /// `ok` or `unreachable`.
    database: String,
    /// The active rate version, or `missing` / `unknown`.
    rate_card: String,
}

#[derive(Debug, ApiResponse)]
pub(crate) enum ReadinessResponse {
    /// The database answers and a rate card is active.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// A dependency is missing; the body says which, the log says why.
    #[oai(status = 503)]
    Unavailable(Json<Readiness>),
}

#[OpenApi(tag = "ApiTags::Probes")]
impl ProbesApi {
    /// The process is up and serving. Checks nothing else, so a slow database never gets a healthy process restarted.
    #[oai(path = "/health", method = "get")]
    #[allow(clippy::unused_async, reason = "poem-openapi operations are async")]
    async fn health(&self) -> Json<Health> {
        Json(Health { status: "ok".to_owned() })
    }

    /// Ready to serve: the database answers and a rate card is active.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self, state: Data<&AppState>) -> ReadinessResponse {
        let store = &state.store;
        let database_ok = match store.ping().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(error = %error, cause = ?error, "readiness: database unreachable");
                false
            }
        };
        let rate_card = if database_ok {
            match store.active_rate_card(OffsetDateTime::now_utc()).await {
                Ok(active) => active.map(|active| active.card.version().to_string()),
                Err(error) => {
                    tracing::warn!(error = %error, cause = ?error, "readiness: cannot read the active rate card");
                    None
                }
            }
        } else {
            None
        };
        let ready = database_ok && rate_card.is_some();
        let body = Readiness {
            status: if ready { "ready" } else { "unavailable" }.to_owned(),
            backend: store.backend().as_str().to_owned(),
            checks: Checks {
                database: if database_ok { "ok" } else { "unreachable" }.to_owned(),
                rate_card: rate_card.unwrap_or_else(|| if database_ok { "missing" } else { "unknown" }.to_owned()),
            },
        };
        if ready { ReadinessResponse::Ready(Json(body)) } else { ReadinessResponse::Unavailable(Json(body)) }
    }
}
