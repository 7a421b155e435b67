//! Liveness and readiness probes.

use poem::handler;
use poem::http::StatusCode;
use poem::web::{Data, Json};
use serde::Serialize;
use time::OffsetDateTime;

use crate::AppState;

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// `GET /health`: the process is up and serving. It checks nothing else, so a slow database never gets a healthy
/// process restarted.
#[handler]
pub(crate) fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Readiness {
    status: &'static str,
    backend: &'static str,
    checks: Checks,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checks {
    /// `ok` or `unreachable`.
    database: &'static str,
    /// The active rate version, or `missing`/`unknown`.
    rate_card: String,
}

/// `GET /readyz`: 200 when the database answers and a rate card is active, 503 otherwise. The body names what
/// failed without saying why (that is in the log).
#[handler]
pub(crate) async fn readyz(state: Data<&AppState>) -> (StatusCode, Json<Readiness>) {
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
            Ok(Some(active)) => Some(active.card.version().to_string()),
            Ok(None) => None,
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
        status: if ready { "ready" } else { "unavailable" },
        backend: store.backend().as_str(),
        checks: Checks {
            database: if database_ok { "ok" } else { "unreachable" },
            rate_card: rate_card.unwrap_or_else(|| if database_ok { "missing" } else { "unknown" }.to_owned()),
        },
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}
