//! The outbox relay: outbox rows to queued jobs, at least once.

use std::sync::Arc;
use std::time::Duration;

use creditflow_jobs::webhooks::{WEBHOOKS_QUEUE, WebhookEndpoint, fan_out};
use creditflow_store::{
    AUTORELOADS_QUEUE, EMAILS_QUEUE, REPORTS_QUEUE, SCHEDULED_QUEUE, STRIPE_EVENTS_QUEUE, Store, USAGE_BATCHES_QUEUE,
    WEBHOOK_EVENTS_QUEUE,
};
use tokio::sync::watch;

use crate::{AnyJob, Queues};

const BATCH: i64 = 100;
const IDLE_WAIT: Duration = Duration::from_millis(100);
const ERROR_WAIT: Duration = Duration::from_secs(1);

/// Relays every unrelayed outbox message once; returns how many were relayed.
pub async fn relay_once(store: &Store, queues: &Queues, endpoints: &[WebhookEndpoint]) -> Result<usize, String> {
    let messages = store.unrelayed_outbox(BATCH).await.map_err(|e| e.to_string())?;
    let mut relayed = 0;
    for message in messages {
        let jobs = match jobs_for(&message.queue, &message.payload, endpoints) {
            Ok(jobs) => jobs,
            Err(why) => {
                set_aside(store, message.id, &why).await?;
                continue;
            }
        };
        let records: Vec<_> = jobs.iter().map(AnyJob::queued).collect();
        for job in jobs {
            queues.push(job).await.map_err(|e| format!("cannot queue outbox message {}: {e}", message.id))?;
        }
        store.mark_outbox_relayed_as(message.id, &records).await.map_err(|e| e.to_string())?;
        relayed += 1;
    }
    Ok(relayed)
}

/// The jobs an outbox message becomes: one, or one delivery per interested endpoint for a monitoring event.
fn jobs_for(queue: &str, payload: &str, endpoints: &[WebhookEndpoint]) -> Result<Vec<AnyJob>, String> {
    fn decode<T: serde::de::DeserializeOwned>(payload: &str) -> Result<T, String> {
        serde_json::from_str(payload).map_err(|error| error.to_string())
    }
    Ok(match queue {
        STRIPE_EVENTS_QUEUE => vec![AnyJob::StripeEvent(decode(payload)?)],
        EMAILS_QUEUE => vec![AnyJob::Email(decode(payload)?)],
        USAGE_BATCHES_QUEUE => vec![AnyJob::UsageBatch(decode(payload)?)],
        AUTORELOADS_QUEUE => vec![AnyJob::Autoreload(decode(payload)?)],
        SCHEDULED_QUEUE => vec![AnyJob::Scheduled(decode(payload)?)],
        REPORTS_QUEUE => vec![AnyJob::Report(decode(payload)?)],
        // A delivery an operator retried.
        WEBHOOKS_QUEUE => vec![AnyJob::Webhook(decode(payload)?)],
        WEBHOOK_EVENTS_QUEUE => fan_out(endpoints, payload)?.into_iter().map(AnyJob::Webhook).collect(),
        other => return Err(format!("unknown queue `{other}`")),
    })
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
