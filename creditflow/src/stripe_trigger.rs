//! `creditflow stripe trigger`: a realistic Stripe event, signed exactly as Stripe signs it, posted to a running
//! creditflow — the Stripe CLI's `trigger`, offline.
//!
//! Each event sent is kept in `.creditflow/stripe-events/<id>.json` in the working directory, so `--resend ID`
//! delivers the very same bytes again (a fresh signature, as Stripe's redeliveries have), and a refund or dispute
//! finds the payment it is about: the one named with `--payment-intent`, or the last payment triggered here.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::cli::StripeTriggerArgs;
use crate::config::Loaded;

/// Where sent events are kept, relative to the working directory.
const SENT_DIR: &str = ".creditflow/stripe-events";
/// The events `trigger` can build.
pub(crate) const EVENT_TYPES: [&str; 5] = [
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "checkout.session.completed",
    "charge.refunded",
    "charge.dispute.created",
];

fn random_id(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..24])
}

/// Runs `creditflow stripe trigger`, printing what was sent and the answer.
pub(crate) async fn run(loaded: &Loaded, args: &StripeTriggerArgs) -> anyhow::Result<()> {
    let secret = args
        .secret
        .clone()
        .or_else(|| loaded.config.stripe.webhook_secret.clone())
        .context("no webhook secret: pass --secret whsec_... or set stripe.webhook_secret")?;
    let url = args.to.clone().unwrap_or_else(|| format!("http://{}/webhooks/stripe", loaded.config.listen));
    let dir = PathBuf::from(SENT_DIR);
    let body = match (&args.resend, &args.event) {
        (Some(id), _) => std::fs::read_to_string(dir.join(format!("{id}.json")))
            .with_context(|| format!("no event {id} was sent from this directory ({SENT_DIR})"))?,
        (None, Some(event_type)) => {
            let event = build(event_type, args, loaded, &dir)?;
            let body = serde_json::to_string_pretty(&event)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {SENT_DIR}"))?;
            let id = event["id"].as_str().unwrap_or_default();
            std::fs::write(dir.join(format!("{id}.json")), &body).with_context(|| format!("cannot keep event {id}"))?;
            body
        }
        (None, None) => anyhow::bail!("name an event ({}) or --resend EVENT_ID", EVENT_TYPES.join(", ")),
    };
    let event: Value = serde_json::from_str(&body).context("the kept event is not JSON")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = creditflow_domain::signature::sign(body.as_bytes(), &secret, now);
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let answer = response.text().await.unwrap_or_default();
    println!(
        "{} {} -> {url}: {} {answer}",
        event["type"].as_str().unwrap_or("?"),
        event["id"].as_str().unwrap_or("?"),
        status.as_u16()
    );
    if !status.is_success() {
        anyhow::bail!("creditflow answered {status}");
    }
    Ok(())
}

/// A Stripe event of `event_type`, shaped as Stripe sends it (the fields creditflow and most integrations read).
fn build(event_type: &str, args: &StripeTriggerArgs, loaded: &Loaded, dir: &Path) -> anyhow::Result<Value> {
    let pack = loaded.packs.get(&args.pack).with_context(|| format!("no pack `{}` in the catalog", args.pack))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let metadata = json!({"creditflow_account_id": args.account, "creditflow_pack_id": pack.id});
    let amount = pack.price_usd_cents;
    let object = match event_type {
        "payment_intent.succeeded" | "payment_intent.payment_failed" => {
            let failed = event_type.ends_with("failed");
            let intent = random_id("pi");
            json!({
                "id": intent, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
                "amount_received": if failed { 0 } else { amount }, "currency": "usd", "created": now,
                "customer": random_id("cus"), "livemode": false, "metadata": metadata,
                "status": if failed { "requires_payment_method" } else { "succeeded" },
                "latest_charge": random_id("ch"), "payment_method": random_id("pm"),
                "last_payment_error": if failed {
                    json!({"type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
                           "message": "Your card was declined."})
                } else { Value::Null },
            })
        }
        "checkout.session.completed" => json!({
            "id": random_id("cs"), "object": "checkout.session", "amount_total": amount, "currency": "usd",
            "created": now, "livemode": false, "metadata": metadata, "mode": "payment",
            "payment_intent": random_id("pi"), "payment_status": "paid", "status": "complete",
        }),
        "charge.refunded" | "charge.dispute.created" => {
            let intent = match &args.payment_intent {
                Some(intent) => intent.clone(),
                None => last_payment(dir)?,
            };
            if event_type == "charge.refunded" {
                json!({
                    "id": random_id("ch"), "object": "charge", "amount": amount, "amount_captured": amount,
                    "amount_refunded": amount, "currency": "usd", "created": now, "livemode": false,
                    "paid": true, "refunded": true, "payment_intent": intent, "metadata": metadata,
                })
            } else {
                json!({
                    "id": random_id("dp"), "object": "dispute", "amount": amount, "currency": "usd",
                    "charge": random_id("ch"), "payment_intent": intent, "created": now, "livemode": false,
                    "reason": "fraudulent", "status": "needs_response", "metadata": metadata,
                })
            }
        }
        other => anyhow::bail!("cannot trigger `{other}`; events: {}", EVENT_TYPES.join(", ")),
    };
    let mut event = json!({
        "id": random_id("evt"), "object": "event", "api_version": "2026-09-30", "created": now,
        "type": event_type, "livemode": false, "pending_webhooks": 1,
        "request": {"id": Value::Null, "idempotency_key": Value::Null},
        "data": {"object": object},
    });
    if event_type == "charge.refunded" {
        event["data"]["previous_attributes"] = json!({"amount_refunded": 0});
    }
    Ok(event)
}

/// The PaymentIntent of the newest `payment_intent.succeeded` sent from this directory.
fn last_payment(dir: &Path) -> anyhow::Result<String> {
    let mut newest: Option<(i64, String)> = None;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let Ok(event) = serde_json::from_str::<Value>(&text) else { continue };
        if event["type"] != "payment_intent.succeeded" {
            continue;
        }
        let created = event["created"].as_i64().unwrap_or(0);
        if let Some(intent) = event["data"]["object"]["id"].as_str()
            && newest.as_ref().is_none_or(|(at, _)| created >= *at)
        {
            newest = Some((created, intent.to_owned()));
        }
    }
    newest
        .map(|(_, intent)| intent)
        .context("no payment to refer to: trigger payment_intent.succeeded first, or pass --payment-intent pi_...")
}
