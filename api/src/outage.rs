//! Fast 503s while the database is unreachable.
//!
//! When a request meets a connection-class database failure (refused, reset, shut down) or gets no connection in
//! time, the process marks the database down. From then on, requests that need it are answered at once with 503
//! `database_unavailable` and `Retry-After: 1`, instead of each waiting out the pool's acquire timeout, and a single
//! probe pings the database every 250 ms on a connection of its own (outside the pool, so a pool that was only busy
//! reopens at once); the first answer reopens the gate. Probes, `/metrics` and the OpenAPI
//! document never pass through the gate. One ledger database per process, so the state is the process's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use creditflow_store::Store;
use poem::http::StatusCode;
use poem::{Endpoint, IntoResponse, Request, Response};

use crate::AppState;
use crate::errors::ErrorBody;

static DOWN: AtomicBool = AtomicBool::new(false);
static PROBING: AtomicBool = AtomicBool::new(false);

const PROBE_EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Records that a request found the database unreachable.
pub(crate) fn mark_down() {
    if !DOWN.swap(true, Ordering::SeqCst) {
        tracing::error!("the database is unreachable: answering 503 database_unavailable until it answers again");
    }
}

/// The answer given while the database is down.
pub(crate) fn unavailable_body() -> ErrorBody {
    let message = "the ledger database cannot be reached; retry shortly with the same idempotency key";
    ErrorBody::new("database_unavailable", message)
}

/// Paths that need the database: the API and the Stripe webhook.
fn gated(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/webhooks/") || path.starts_with("/billing/")
}

/// Middleware: answers at once while the database is down (and makes sure one probe is looking for its return).
pub(crate) async fn gate<E: Endpoint>(next: E, request: Request) -> poem::Result<Response> {
    if DOWN.load(Ordering::SeqCst) && gated(request.uri().path()) {
        if let Some(state) = request.data::<AppState>() {
            start_probe(state.store.clone());
        }
        let body = unavailable_body();
        let body = serde_json::json!({"code": body.code, "message": body.message}).to_string();
        let response = Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("retry-after", "1")
            .content_type("application/json; charset=utf-8")
            .body(body);
        return Ok(response);
    }
    next.call(request).await.map(IntoResponse::into_response)
}

fn start_probe(store: Store) {
    if PROBING.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, store.probe()).await {
                DOWN.store(false, Ordering::SeqCst);
                PROBING.store(false, Ordering::SeqCst);
                tracing::warn!("the database answers again: requests pass");
                return;
            }
        }
    });
}
