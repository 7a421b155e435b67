//! Running an automatic top-up (queue `autoreloads`, written by the debit that left the balance under the account's
//! autoreload threshold).
//!
//! The job claims the reload (so two copies never charge at once), then buys as many of the account's autoreload
//! pack as close the gap to the threshold in one off-session charge of the saved card, within the monthly cap; what
//! it buys is fixed by the first attempt. Each attempt's Stripe idempotency key derives from the debit that asked
//! for the reload and the attempt's number, so a retried attempt replays its charge instead of repeating it. The
//! credit goes through the same fulfilment as a purchase (ledger key `payment:<PaymentIntent>`), which also settles
//! the reload, so the webhook announcing the same payment credits nothing more. A declined card is tried again with
//! backoff; after the configured number of attempts (3 by default) the reload has failed, autoreload is turned off
//! and the customer is emailed.

use std::collections::HashMap;
use std::sync::Arc;

use creditflow_domain::Millicredits;
use creditflow_payments::{OffSessionCharge, PaymentError, Stripe};
use creditflow_store::{AutoreloadClaim, AutoreloadOutcome, AutoreloadRecord, AutoreloadState, EMAILS_QUEUE};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::JobError;
use crate::emails::{AutoreloadDisabledEmailV1, EmailJob};
use crate::stripe_events::{
    ACCOUNT_METADATA_KEY, AUTORELOAD_METADATA_KEY, Deps, PACK_METADATA_KEY, Processed, QUANTITY_MAX,
    QUANTITY_METADATA_KEY, fulfil_payment,
};

/// Charge attempts of one reload after which it has failed and autoreload is turned off, unless configured otherwise.
pub const FAILURES_BEFORE_DISABLING: i64 = 3;

/// Run one reload. Never rename.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunAutoreloadV1 {
    /// The reload (`ar_...`).
    pub reload_id: String,
}

/// What the handler needs.
#[derive(Clone, Debug)]
pub struct AutoreloadDeps {
    /// Fulfilment (store and packs).
    pub fulfilment: Deps,
    /// Stripe, when configured (without it every reload fails, and autoreload ends up off).
    pub stripe: Option<Arc<Stripe>>,
    /// Charge attempts of one reload after which autoreload is turned off ([`FAILURES_BEFORE_DISABLING`] by default).
    pub failures_before_disabling: i64,
    /// How long a claim on a reload holds before another copy of the job may take it over ([`CLAIM_LEASE`] by
    /// default). Taking over resumes the holder's attempt with the same Stripe idempotency key, so it never charges
    /// twice; the lease only keeps two copies from calling Stripe at once, so it should outlast a charge (Stripe
    /// requests time out after 20 seconds).
    pub claim_lease: std::time::Duration,
}

/// How a reload ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// Charged and credited (the ledger entry id).
    Credited(String),
    /// Not charged, and why.
    Skipped(String),
    /// The charge failed, and why; `disabled` when this failure turned autoreload off.
    Failed {
        /// Why.
        reason: String,
        /// Whether autoreload is now off.
        disabled: bool,
    },
    /// Charged, but the payment is still processing: fulfilment credits it when Stripe says it succeeded.
    Processing(String),
    /// Settled before (a redelivery): nothing done.
    AlreadySettled(AutoreloadState),
}

/// How long a claim on a reload holds before another copy of the job may take it over (its holder vanished), unless
/// configured otherwise.
pub const CLAIM_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// How often a copy of the job that found the reload claimed looks again.
const CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs a reload. Idempotent: a settled reload is left alone, two copies never charge at once, and a retried
/// attempt replays its charge instead of repeating it.
pub async fn run_autoreload(job: &RunAutoreloadV1, deps: &AutoreloadDeps) -> Result<Reloaded, JobError> {
    let store = &deps.fulfilment.store;
    let reload = match claim(store, &job.reload_id, deps.claim_lease).await? {
        AutoreloadClaim::Claimed(reload) => reload,
        AutoreloadClaim::Settled(state) => return Ok(Reloaded::AlreadySettled(state)),
        AutoreloadClaim::Busy => {
            return Err(JobError::Transient(format!(
                "autoreload {} is being charged by another attempt",
                job.reload_id
            )));
        }
        AutoreloadClaim::Missing => return Err(JobError::Permanent(format!("no autoreload {}", job.reload_id))),
    };
    let account = &reload.account_id;
    let skip = |reason: String| async move {
        let outcome = AutoreloadOutcome {
            state: AutoreloadState::Skipped,
            packs: None,
            amount_usd_cents: None,
            payment_intent_id: None,
            reason: Some(&reason),
        };
        store.settle_autoreload(&job.reload_id, &outcome).await?;
        Ok::<_, JobError>(Reloaded::Skipped(reason))
    };
    let settings = store.settings(account).await?.autoreload;
    let (true, Some(threshold), Some(pack_id)) = (settings.enabled, settings.threshold, settings.pack.as_deref())
    else {
        return skip("autoreload is off or incomplete for the account".to_owned()).await;
    };
    let Some(pack) = deps.fulfilment.packs.get(pack_id) else {
        return skip(format!("the autoreload pack `{pack_id}` is no longer sold")).await;
    };
    let Some(state) = store.account(account).await? else {
        return Err(JobError::Permanent(format!("autoreload {}: no account {account}", reload.id)));
    };
    if state.status == creditflow_domain::AccountStatus::Frozen {
        return skip("the account is frozen".to_owned()).await;
    }
    // What the reload buys is fixed by its first attempt; later attempts charge the same (one idempotent intent).
    let (packs, amount) = if let (Some(packs), Some(amount)) = (reload.packs, reload.amount_usd_cents) {
        (packs, amount)
    } else {
        let Some(packs) = packs_to_close(state.balance, threshold, pack.grant) else {
            return skip(format!("the balance ({} credits) is no longer under the threshold", state.balance)).await;
        };
        let amount = pack
            .price_usd_cents
            .checked_mul(packs)
            .ok_or_else(|| JobError::Permanent(format!("autoreload {}: amount out of range", reload.id)))?;
        if let Some(cap) = settings.monthly_cap_usd_cents {
            let now = OffsetDateTime::now_utc();
            let month_start = now.replace_day(1).unwrap_or(now).replace_time(time::Time::MIDNIGHT);
            let spent = store.autoreload_spent_since(account, month_start).await?;
            if spent.saturating_add(amount) > cap {
                let reason =
                    format!("the monthly cap of {cap} US cents would be passed ({spent} spent, {amount} needed)");
                announce_failure(store, &reload, &reason, "monthly_cap").await?;
                return skip(reason).await;
            }
        }
        store.price_autoreload(&reload.id, packs, amount).await?
    };
    charge(deps, &reload, pack_id, packs, amount).await
}

/// Claims the reload. A copy of the job that finds it claimed waits, looking again every half second, until the
/// holder settles it or its claim lapses, instead of failing at once: a worker killed in the middle of a charge leaves
/// a claim that outlasts the job's quick retries, and spending them all would leave the reload unsettled for good.
async fn claim(
    store: &creditflow_store::Store,
    id: &str,
    lease: std::time::Duration,
) -> Result<AutoreloadClaim, JobError> {
    let lease_time = time::Duration::try_from(lease).map_err(|e| JobError::Permanent(format!("claim lease: {e}")))?;
    let give_up = tokio::time::Instant::now() + lease + CLAIM_POLL;
    loop {
        match store.claim_autoreload(id, lease_time).await? {
            AutoreloadClaim::Busy if tokio::time::Instant::now() < give_up => tokio::time::sleep(CLAIM_POLL).await,
            answer => return Ok(answer),
        }
    }
}

/// One charge attempt of a claimed reload, and what follows from its answer.
async fn charge(
    deps: &AutoreloadDeps,
    reload: &AutoreloadRecord,
    pack_id: &str,
    packs: i64,
    amount: i64,
) -> Result<Reloaded, JobError> {
    let store = &deps.fulfilment.store;
    let Some(stripe) = deps.stripe.as_deref() else {
        return fail(deps, reload, None, "payments are not configured (stripe.secret_key)").await;
    };
    let Some(customer) = store.stripe_customer(&reload.account_id).await? else {
        return fail(deps, reload, None, "the account has no Stripe customer (no purchase yet)").await;
    };
    let metadata = HashMap::from([
        (ACCOUNT_METADATA_KEY.to_owned(), reload.account_id.to_string()),
        (PACK_METADATA_KEY.to_owned(), pack_id.to_owned()),
        (QUANTITY_METADATA_KEY.to_owned(), packs.to_string()),
        (AUTORELOAD_METADATA_KEY.to_owned(), reload.id.clone()),
    ]);
    // One key per attempt: a retried attempt replays its charge; a new attempt after a decline is a new charge.
    let key = format!("creditflow-autoreload-{}-{}", reload.trigger_entry_id, reload.attempts);
    let intent = match stripe.charge_off_session(&customer, amount, metadata.clone(), &key).await {
        Ok(OffSessionCharge::Succeeded(intent)) => intent,
        Ok(OffSessionCharge::Processing(intent)) => {
            // Credited when Stripe's payment_intent.succeeded arrives (fulfilment settles the reload then).
            store.set_autoreload_intent(&reload.id, &intent).await?;
            return Ok(Reloaded::Processing(intent));
        }
        Err(error) if error.is_transient() => {
            // The charge may have reached Stripe: the same attempt (the same key) is resumed, never a new one.
            store.release_autoreload(&reload.id, false, &error.to_string()).await?;
            return Err(JobError::Transient(error.to_string()));
        }
        Err(error) => {
            let intent = match &error {
                PaymentError::Declined { payment_intent, .. } => payment_intent.clone(),
                _ => None,
            };
            return fail(deps, reload, intent.as_deref(), &error.to_string()).await;
        }
    };
    let metadata = serde_json::to_value(&metadata).unwrap_or_default();
    // Fulfilment credits once (ledger key `payment:<intent>`) and settles the reload.
    let entry = match fulfil_payment(&intent, amount, "usd", &metadata, &deps.fulfilment).await? {
        Processed::Credited(entry) | Processed::AlreadyCredited(entry) => entry,
        other => return Err(JobError::Permanent(format!("autoreload {} credited nothing: {other:?}", reload.id))),
    };
    Ok(Reloaded::Credited(entry))
}

/// Packs of `grant` that bring `balance` back to at least `threshold` (at least one), or `None` when the balance is
/// not under the threshold.
fn packs_to_close(balance: Millicredits, threshold: Millicredits, grant: Millicredits) -> Option<i64> {
    if balance >= threshold || !grant.is_positive() {
        return None;
    }
    let gap = threshold.get().checked_sub(balance.get())?;
    let packs = gap.checked_add(grant.get() - 1)? / grant.get();
    Some(packs.clamp(1, QUANTITY_MAX))
}

/// Records a failed attempt and announces it. Before the last attempt the reload waits for the next one (the job is
/// retried with backoff); after it, the reload has failed and autoreload is turned off, with an email to the owner.
async fn fail(
    deps: &AutoreloadDeps,
    reload: &AutoreloadRecord,
    intent: Option<&str>,
    reason: &str,
) -> Result<Reloaded, JobError> {
    let store = &deps.fulfilment.store;
    announce_failure(store, reload, reason, "charge_failed").await?;
    if reload.attempts < deps.failures_before_disabling {
        store.release_autoreload(&reload.id, true, reason).await?;
        return Err(JobError::Transient(format!(
            "autoreload {} attempt {} of {} failed: {reason}",
            reload.id, reload.attempts, deps.failures_before_disabling
        )));
    }
    let outcome = AutoreloadOutcome {
        state: AutoreloadState::Failed,
        packs: None,
        amount_usd_cents: None,
        payment_intent_id: intent,
        reason: Some(reason),
    };
    store.settle_autoreload(&reload.id, &outcome).await?;
    let disabled = store.disable_autoreload(&reload.account_id).await?;
    if disabled {
        tracing::warn!(account = %reload.account_id, attempts = reload.attempts, "autoreload turned off after repeated failures");
        let email = EmailJob::AutoreloadDisabled(AutoreloadDisabledEmailV1 {
            account_id: reload.account_id.to_string(),
            reload_id: reload.id.clone(),
            reason: reason.to_owned(),
        });
        let payload = serde_json::to_string(&email).map_err(|e| JobError::Permanent(e.to_string()))?;
        store.enqueue_once(EMAILS_QUEUE, &payload, &format!("autoreload_disabled:{}", reload.id)).await?;
    }
    Ok(Reloaded::Failed { reason: reason.to_owned(), disabled })
}

async fn announce_failure(
    store: &creditflow_store::Store,
    reload: &AutoreloadRecord,
    reason: &str,
    code: &str,
) -> Result<(), JobError> {
    let data = serde_json::json!({
        "accountId": reload.account_id.as_str(),
        "autoreloadId": reload.id,
        "code": code,
        "reason": reason,
        "attempt": reload.attempts,
    });
    let event_id = format!("evt_autoreload_failed_{}_{}", reload.id, reload.attempts);
    store.announce("autoreload.failed", &event_id, &data).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_charge_closes_the_gap() {
        let m = Millicredits::new;
        // (balance, threshold, grant, packs)
        let rows = [
            (m(900), m(1_000), m(5_000), Some(1)),
            (m(-12_000), m(1_000), m(5_000), Some(3)),
            (m(-14_000), m(1_000), m(5_000), Some(3)),
            (m(-14_001), m(1_000), m(5_000), Some(4)),
            (m(1_000), m(1_000), m(5_000), None),
            (m(-1_000_000_000), m(0), m(1), Some(QUANTITY_MAX)),
        ];
        for (balance, threshold, grant, packs) in rows {
            assert_eq!(packs_to_close(balance, threshold, grant), packs, "{balance:?} {threshold:?} {grant:?}");
        }
    }
}
