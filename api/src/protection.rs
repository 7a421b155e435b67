//! Cross-cutting protection: CORS for an allowlist of origins, and security headers on every response.
//!
//! CORS: a request whose `Origin` is on the allowlist gets `Access-Control-Allow-Origin` for that origin (and a
//! preflight `OPTIONS` gets 204 with the allowed methods and headers); any other origin gets no CORS headers at all,
//! so browsers refuse to hand the response to its page. Requests without `Origin` (servers, curl) are unaffected.

use std::collections::HashSet;
use std::sync::Arc;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response, Result};

const ALLOWED_METHODS: &str = "GET, POST, PUT, OPTIONS";
const ALLOWED_HEADERS: &str = "authorization, content-type, x-request-id";
const EXPOSED_HEADERS: &str = "x-request-id, idempotent-replayed, retry-after";

/// Origins allowed to call the API from a browser, as `scheme://host[:port]`.
#[derive(Clone, Debug, Default)]
pub struct CorsAllowlist(Arc<HashSet<String>>);

impl CorsAllowlist {
    /// Builds the allowlist; origins are compared exactly, without a trailing slash.
    pub fn new<I: IntoIterator<Item = String>>(origins: I) -> Self {
        Self(Arc::new(origins.into_iter().map(|origin| origin.trim_end_matches('/').to_owned()).collect()))
    }

    fn allows(&self, origin: &str) -> bool {
        self.0.contains(origin)
    }
}

/// Middleware: CORS for allowed origins, then security headers on whatever the endpoint answered.
pub(crate) async fn protect<E: Endpoint>(next: E, request: Request, cors: CorsAllowlist) -> Result<Response> {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        .filter(|origin| cors.allows(origin))
        .and_then(|origin| HeaderValue::from_str(origin).ok());
    let is_preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let path_is_docs = request.uri().path().starts_with("/docs");
    let mut response = match (&origin, is_preflight) {
        (Some(_), true) => {
            let mut preflight = StatusCode::NO_CONTENT.into_response();
            let headers = preflight.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            preflight
        }
        _ => next.call(request).await?.into_response(),
    };
    let headers = response.headers_mut();
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !path_is_docs {
        // API answers are data, never pages: nothing may run in them, and balances must not sit in caches.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
        headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    }
    Ok(response)
}
