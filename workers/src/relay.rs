//! The outbox relay: outbox rows to queued jobs, at least once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use creditflow_jobs::webhooks::{WEBHOOKS_QUEUE, WebhookEndpoint, fan_out};
use creditflow_store::{
    AUTORELOADS_QUEUE, EMAILS_QUEUE, REPORTS_QUEUE, SCHEDULED_QUEUE, STRIPE_EVENTS_QUEUE, Store, USAGE_BATCHES_QUEUE,
    WEBHOOK_EVENTS_QUEUE,
};
use futures_util::StreamExt as _;
use tokio::sync::watch;

use crate::{AnyJob, Queues};

/// Outbox messages read per pass.
const BATCH: i64 = 500;
/// Jobs of one queue waiting in the broker (pushed, not yet fetched) past which the relay holds that queue's outbox
/// messages back. apalis-redis 1.0 moves every due job of a queue to its ready list in one Lua call, which
/// fails with "too many results to unpack" past about 8,000 jobs and then fails again on every poll: a burst larger
/// than that, pushed faster than the workers take it, would stop the queue for good. Held back, the burst waits in
/// the outbox (in the database, safe) and is relayed as the workers take jobs.
const WAITING_MAX: i64 = 2_000;
/// How long the relay waits after a pass that found nothing, unless a write of this process, or a notification of
/// another's, wakes it earlier (`Store::outbox_written_or`): the fallback for a notification that was lost.
const IDLE_WAIT: Duration = Duration::from_millis(50);
const ERROR_WAIT: Duration = Duration::from_secs(1);

/// Relays every unrelayed outbox message once; returns how many were relayed.
pub async fn relay_once(store: &Store, queues: &Queues, endpoints: &[WebhookEndpoint]) -> Result<usize, String> {
    let mut messages = store.unrelayed_outbox(BATCH).await.map_err(|e| e.to_string())?;
    // An idle pass (most of them) stops here, without asking the broker anything.
    if messages.is_empty() {
        return Ok(0);
    }
    let mut waiting = queues.waiting().await?;
    // The outbox queues whose jobs would land in a queue that is full: left out of this pass, so that they neither
    // overfill it nor stand in front of the other queues' messages.
    let mut held: Vec<&str> = Vec::new();
    for (queue, count) in &waiting {
        if *count >= WAITING_MAX {
            held.push(queue.as_str());
            if queue == WEBHOOKS_QUEUE {
                held.push(WEBHOOK_EVENTS_QUEUE);
            }
        }
    }
    if !held.is_empty() {
        messages = store.unrelayed_outbox_except(&held, BATCH).await.map_err(|e| e.to_string())?;
    }
    let mut pass = Vec::with_capacity(messages.len());
    for message in messages {
        let jobs = match jobs_for(&message.queue, &message.payload, endpoints) {
            Ok(jobs) => jobs,
            Err(why) => {
                set_aside(store, message.id, &why).await?;
                continue;
            }
        };
        let records: Vec<_> = jobs.iter().map(AnyJob::queued).collect();
        if records.iter().any(|job| waiting.get(&job.queue).copied().unwrap_or(0) >= WAITING_MAX) {
            // Its queue has enough waiting in the broker; the message stays in the outbox for a later pass.
            continue;
        }
        for job in &records {
            *waiting.entry(job.queue.clone()).or_default() += 1;
        }
        pass.push((message.id, jobs, records));
    }
    // Every message's jobs are pushed at once (the broker connection pipelines them), then every message whose jobs
    // all went out is marked relayed in one write. A crash in between relays those messages again: at least once.
    let sends: Vec<_> =
        pass.iter_mut().map(|(id, jobs, _)| push_all(queues.clone(), *id, std::mem::take(jobs))).collect();
    let pushed: Vec<Result<(), String>> =
        futures_util::stream::iter(sends).buffered(queues.pushes_at_once()).collect().await;
    let mut failure = None;
    let mut relayed = Vec::with_capacity(pass.len());
    let mut pushed_to = HashSet::new();
    for ((id, _, records), result) in pass.iter().zip(pushed) {
        match result {
            Ok(()) => {
                relayed.push((*id, records.as_slice()));
                pushed_to.extend(records.iter().map(|job| job.queue.as_str()));
            }
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    // This process's pools of those queues look for the jobs now rather than on their next tick.
    for queue in pushed_to {
        queues.nudge(queue);
    }
    store.mark_outbox_many_relayed_as(&relayed).await.map_err(|e| e.to_string())?;
    match failure {
        Some(error) => Err(error),
        None => Ok(relayed.len()),
    }
}

/// Pushes the jobs of outbox message `id`, in order.
async fn push_all(queues: Queues, id: i64, jobs: Vec<AnyJob>) -> Result<(), String> {
    for job in jobs {
        queues.push(job).await.map_err(|e| format!("cannot queue outbox message {id}: {e}"))?;
    }
    Ok(())
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

/// Relays until `stop` says so. Other processes' outbox writes wake it through the store's listener, which runs
/// beside it for as long.
pub(crate) async fn run(
    store: Store,
    queues: Queues,
    endpoints: Arc<Vec<WebhookEndpoint>>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = {
        let (store, mut stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            store
                .listen_for_outbox(async move {
                    while !*stop.borrow_and_update() {
                        if stop.changed().await.is_err() {
                            return;
                        }
                    }
                })
                .await;
        })
    };
    loop {
        if *stop.borrow() {
            break;
        }
        let wait: std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> =
            match relay_once(&store, &queues, &endpoints).await {
                Ok(count) if count > 0 => continue,
                Ok(_) => Box::pin(store.outbox_written_or(IDLE_WAIT)),
                // Not cut short by writes: a broker that is down would be asked again at the rate of the writes.
                Err(error) => {
                    tracing::warn!(%error, "outbox relay failed; retrying");
                    Box::pin(tokio::time::sleep(ERROR_WAIT))
                }
            };
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
            () = wait => {}
        }
    }
    if let Err(error) = listener.await {
        tracing::error!(%error, "the outbox listener ended abnormally");
    }
}
