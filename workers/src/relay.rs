//! The outbox relay: outbox rows to queued jobs, at least once.

use std::time::Duration;

use creditflow_jobs::emails::EmailJob;
use creditflow_jobs::stripe_events::ProcessStripeEventV1;
use std::sync::Arc;

use creditflow_jobs::usage_batches::PriceUsageBatchV1;
use creditflow_jobs::webhooks::{WebhookEndpoint, fan_out};
use creditflow_store::{EMAILS_QUEUE, STRIPE_EVENTS_QUEUE, Store, USAGE_BATCHES_QUEUE, WEBHOOK_EVENTS_QUEUE};
use tokio::sync::watch;

use crate::Queues;

const BATCH: i64 = 100;
const IDLE_WAIT: Duration = Duration::from_millis(100);
const ERROR_WAIT: Duration = Duration::from_secs(1);

/// Relays every unrelayed outbox message once; returns how many were relayed.
pub async fn relay_once(store: &Store, queues: &Queues, endpoints: &[WebhookEndpoint]) -> Result<usize, String> {
    let messages = store.unrelayed_outbox(BATCH).await.map_err(|e| e.to_string())?;
    let mut relayed = 0;
    for message in messages {
        match message.queue.as_str() {
            STRIPE_EVENTS_QUEUE => {
                let job: ProcessStripeEventV1 = match serde_json::from_str(&message.payload) {
                    Ok(job) => job,
                    Err(error) => {
                        set_aside(store, message.id, &error.to_string()).await?;
                        continue;
                    }
                };
                queues
                    .push_stripe_event(job)
                    .await
                    .map_err(|e| format!("cannot queue outbox message {}: {e}", message.id))?;
            }
            USAGE_BATCHES_QUEUE => {
                let job: PriceUsageBatchV1 = match serde_json::from_str(&message.payload) {
                    Ok(job) => job,
                    Err(error) => {
                        set_aside(store, message.id, &error.to_string()).await?;
                        continue;
                    }
                };
                queues.push_batch(job).await.map_err(|e| format!("cannot queue outbox message {}: {e}", message.id))?;
            }
            EMAILS_QUEUE => {
                let job: EmailJob = match serde_json::from_str(&message.payload) {
                    Ok(job) => job,
                    Err(error) => {
                        set_aside(store, message.id, &error.to_string()).await?;
                        continue;
                    }
                };
                queues.push_email(job).await.map_err(|e| format!("cannot queue outbox message {}: {e}", message.id))?;
            }
            WEBHOOK_EVENTS_QUEUE => match fan_out(endpoints, &message.payload) {
                Ok(deliveries) => {
                    for delivery in deliveries {
                        queues
                            .push_webhook(delivery)
                            .await
                            .map_err(|e| format!("cannot queue a webhook delivery: {e}"))?;
                    }
                }
                Err(error) => {
                    set_aside(store, message.id, &error).await?;
                    continue;
                }
            },
            other => {
                set_aside(store, message.id, &format!("unknown queue `{other}`")).await?;
                continue;
            }
        }
        store.mark_outbox_relayed(message.id).await.map_err(|e| e.to_string())?;
        relayed += 1;
    }
    Ok(relayed)
}

/// Takes a message that cannot be relayed out of the way (it stays in the outbox, marked, for an operator), so it
/// never blocks the messages behind it. Only creditflow writes the outbox: this is a bug or version skew.
async fn set_aside(store: &Store, id: i64, why: &str) -> Result<(), String> {
    tracing::error!(id, why, "outbox message cannot be relayed; set aside (still in the outbox table)");
    store.mark_outbox_relayed(id).await.map_err(|e| e.to_string())
}

/// Relays until `stop` says so.
pub(crate) async fn run(
    store: Store,
    queues: Queues,
    endpoints: Arc<Vec<WebhookEndpoint>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let wait = match relay_once(&store, &queues, &endpoints).await {
            Ok(count) if count > 0 => Duration::ZERO,
            Ok(_) => IDLE_WAIT,
            Err(error) => {
                tracing::warn!(%error, "outbox relay failed; retrying");
                ERROR_WAIT
            }
        };
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}
