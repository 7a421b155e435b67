//! Request ids: taken from a well-formed incoming `X-Request-Id`, or made up (`req_<uuid>`), returned in the
//! response's `X-Request-Id`, and recorded on the request's tracing span so every log line of a request carries it.

use poem::{Endpoint, IntoResponse, Request, Response, Result};
use tracing::Instrument as _;

use crate::metrics::Routes;

/// The header carrying the id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request's id, available to handlers as request data.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Middleware function: wraps every request in a span with its id and echoes the id back.
pub(crate) async fn with_request_id<E: Endpoint>(next: E, mut request: Request, routes: Routes) -> Result<Response> {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| acceptable(id))
        .map_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()), str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let method = request.method().to_string();
    let route = routes.label(request.uri().path());
    let result = async {
        let started = std::time::Instant::now();
        let result = next.call(request).await;
        let response = match result {
            Ok(response) => response.into_response(),
            Err(error) => error.into_response(),
        };
        let elapsed = started.elapsed();
        tracing::info!(status = response.status().as_u16(), duration_ms = elapsed.as_millis(), "answered");
        crate::metrics::observe_request(&method, route, response.status().as_u16(), elapsed);
        response
    }
    .instrument(span)
    .await;
    let mut response = result;
    if let Ok(value) = id.parse() {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}
