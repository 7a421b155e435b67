//! creditflow's HTTP API, built on poem.
//!
//! This crate holds the routes and their state; the binary binds, serves and shuts down. So far it serves the probes
//! an orchestrator needs — `GET /health` (the process is alive) and `GET /readyz` (the database answers and a rate
//! card is active) — and answers every other path with a JSON error that has a stable `code`.

mod errors;
mod probes;

use creditflow_store::Store;
use poem::middleware::Tracing;
use poem::{Endpoint, EndpointExt, Route, get};

pub use errors::ErrorBody;

/// What every request handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The ledger store.
    pub store: Store,
}

/// The complete API as one endpoint.
pub fn app(state: AppState) -> impl Endpoint {
    Route::new()
        .at("/health", get(probes::health))
        .at("/readyz", get(probes::readyz))
        .data(state)
        .catch_all_error(errors::to_json)
        .with(Tracing)
}
