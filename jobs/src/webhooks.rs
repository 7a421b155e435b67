//! Outgoing webhooks to monitoring endpoints: `balance.low`, `purchase.succeeded`, `autoreload.succeeded`,
//! `autoreload.failed`, `anomaly.detected` and `billing.rollup`.
//!
//! Each event (recorded once in the outbox) is fanned out by the relay to one [`DeliverWebhookV1`] job per
//! subscribed endpoint. A delivery POSTs `{"id", "type", "created", "data"}` with
//! `Creditflow-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">` under the endpoint's secret; any answer but
//! 2xx is retried with backoff, and the job is dead after the last attempt. Receivers should deduplicate by `id`:
//! delivery is at least once.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::JobError;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Creditflow-Signature";
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A monitoring endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    /// Stable name, used by jobs to find the endpoint.
    pub id: String,
    /// Where events are sent (HTTP POST).
    pub url: String,
    /// The HMAC secret shared with the receiver.
    pub secret: String,
    /// Event types delivered; all of them when empty.
    #[serde(default)]
    pub events: Vec<String>,
}

impl WebhookEndpoint {
    /// True when the endpoint takes `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|wanted| wanted == event_type)
    }
}

pub use creditflow_store::WEBHOOKS_QUEUE;

/// Deliver one event to one endpoint (queue `webhooks`). Never rename.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverWebhookV1 {
    /// The endpoint's id.
    pub endpoint_id: String,
    /// The event body, exactly as it will be sent and signed.
    pub body: String,
}

/// The delivery jobs for an event (the outbox payload), one per endpoint that wants its type.
pub fn fan_out(endpoints: &[WebhookEndpoint], event: &str) -> Result<Vec<DeliverWebhookV1>, String> {
    let parsed: serde_json::Value = serde_json::from_str(event).map_err(|e| format!("event is not JSON: {e}"))?;
    let event_type = parsed["type"].as_str().ok_or("event has no type")?;
    Ok(endpoints
        .iter()
        .filter(|endpoint| endpoint.wants(event_type))
        .map(|endpoint| DeliverWebhookV1 { endpoint_id: endpoint.id.clone(), body: event.to_owned() })
        .collect())
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">` (the scheme of [`creditflow_domain::signature`]).
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    creditflow_domain::signature::sign(body.as_bytes(), secret, timestamp)
}

/// What deliveries need.
#[derive(Clone, Debug)]
pub struct WebhookDeps {
    /// The configured endpoints.
    pub endpoints: Arc<Vec<WebhookEndpoint>>,
    /// The HTTP client.
    pub client: reqwest::Client,
}

impl WebhookDeps {
    /// Deliveries to `endpoints` with a client that gives up on a request after ten seconds.
    pub fn new(endpoints: Vec<WebhookEndpoint>) -> Result<Self, String> {
        let client = reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build().map_err(|e| e.to_string())?;
        Ok(Self { endpoints: Arc::new(endpoints), client })
    }
}

/// Delivers one event to one endpoint.
pub async fn deliver(job: &DeliverWebhookV1, deps: &WebhookDeps) -> Result<u16, JobError> {
    let Some(endpoint) = deps.endpoints.iter().find(|endpoint| endpoint.id == job.endpoint_id) else {
        return Err(JobError::Permanent(format!("no webhook endpoint `{}` is configured", job.endpoint_id)));
    };
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let response = deps
        .client
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, sign(&endpoint.secret, timestamp, &job.body))
        .body(job.body.clone())
        .send()
        .await
        .map_err(|error| JobError::Transient(format!("POST {} failed: {error}", endpoint.url)))?;
    let status = response.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(JobError::Transient(format!("POST {} answered {status}", endpoint.url)))
    }
}
