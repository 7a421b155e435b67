//! Running an automatic top-up (queue `autoreloads`, written by the debit that left the balance under the account's
//! autoreload threshold).
//!
//! The job buys as many of the account's autoreload pack as close the gap to the threshold in one off-session
//! charge of the saved card, within the monthly cap. The charge's Stripe idempotency key derives from the debit that
//! asked for the reload, so a retried job never charges twice; the credit goes through the same fulfilment as a
//! purchase (ledger key `payment:<PaymentIntent>`), so the webhook that announces the same payment credits nothing
//! more. After a configured number of failed reloads in a row (3 by default), autoreload is turned off and the customer is
//! emailed.

use std::collections::HashMap;
use std::sync::Arc;

use creditflow_domain::Millicredits;
use creditflow_payments::{PaymentError, Stripe};
use creditflow_store::{AutoreloadOutcome, AutoreloadRecord, AutoreloadState, EMAILS_QUEUE};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::JobError;
use crate::emails::{AutoreloadDisabledEmailV1, EmailJob};
use crate::stripe_events::{
    ACCOUNT_METADATA_KEY, AUTORELOAD_METADATA_KEY, Deps, PACK_METADATA_KEY, Processed, QUANTITY_MAX,
    QUANTITY_METADATA_KEY, fulfil_payment,
};

/// Failed reloads in a row after which autoreload is turned off, unless configured otherwise.
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
    /// Failed reloads in a row after which autoreload is turned off ([`FAILURES_BEFORE_DISABLING`] by default).
    pub failures_before_disabling: i64,
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
    /// Settled before (a redelivery): nothing done.
    AlreadySettled(AutoreloadState),
}

/// Runs a reload. Idempotent.
pub async fn run_autoreload(job: &RunAutoreloadV1, deps: &AutoreloadDeps) -> Result<Reloaded, JobError> {
    let store = &deps.fulfilment.store;
    let Some(reload) = store.autoreload(&job.reload_id).await? else {
        return Err(JobError::Permanent(format!("no autoreload {}", job.reload_id)));
    };
    if reload.state != AutoreloadState::Pending {
        return Ok(Reloaded::AlreadySettled(reload.state));
    }
    let account = &reload.account_id;
    let settings = store.settings(account).await?.autoreload;
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
    let (true, Some(threshold), Some(pack_id)) = (settings.enabled, settings.threshold, settings.pack.as_deref())
    else {
        return skip("autoreload is off or incomplete for the account".to_owned()).await;
    };
    let Some(pack) = deps.fulfilment.packs.get(pack_id) else {
        return skip(format!("the autoreload pack `{pack_id}` is no longer sold")).await;
    };
    let balance = store.account(account).await?.map_or(Millicredits::ZERO, |account| account.balance);
    let Some(packs) = packs_to_close(balance, threshold, pack.grant) else {
        return skip(format!("the balance ({balance} credits) is no longer under the threshold")).await;
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
            let reason = format!("the monthly cap of {cap} US cents would be passed ({spent} spent, {amount} needed)");
            announce_failure(store, &reload, &reason, "monthly_cap").await?;
            return skip(reason).await;
        }
    }
    let Some(stripe) = deps.stripe.as_deref() else {
        return fail(deps, &reload, packs, amount, None, "payments are not configured (stripe.secret_key)").await;
    };
    let Some(customer) = store.stripe_customer(account).await? else {
        return fail(deps, &reload, packs, amount, None, "the account has no Stripe customer (no purchase yet)").await;
    };
    let metadata = HashMap::from([
        (ACCOUNT_METADATA_KEY.to_owned(), account.to_string()),
        (PACK_METADATA_KEY.to_owned(), pack.id.clone()),
        (QUANTITY_METADATA_KEY.to_owned(), packs.to_string()),
        (AUTORELOAD_METADATA_KEY.to_owned(), reload.id.clone()),
    ]);
    let key = format!("creditflow-autoreload-{}", reload.trigger_entry_id);
    let intent = match stripe.charge_off_session(&customer, amount, metadata.clone(), &key).await {
        Ok(intent) => intent,
        Err(error) if error.is_transient() => return Err(JobError::Transient(error.to_string())),
        Err(error) => {
            let intent = match &error {
                PaymentError::Declined { payment_intent, .. } => payment_intent.clone(),
                _ => None,
            };
            return fail(deps, &reload, packs, amount, intent.as_deref(), &error.to_string()).await;
        }
    };
    let metadata = serde_json::to_value(&metadata).unwrap_or_default();
    let entry = match fulfil_payment(&intent, amount, "usd", &metadata, &deps.fulfilment).await? {
        Processed::Credited(entry) | Processed::AlreadyCredited(entry) => entry,
        other => return Err(JobError::Permanent(format!("autoreload {} credited nothing: {other:?}", reload.id))),
    };
    let outcome = AutoreloadOutcome {
        state: AutoreloadState::Succeeded,
        packs: Some(packs),
        amount_usd_cents: Some(amount),
        payment_intent_id: Some(&intent),
        reason: None,
    };
    store.settle_autoreload(&reload.id, &outcome).await?;
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

/// Records a failed reload, announces it, and after too many in a row turns autoreload off and emails the customer.
async fn fail(
    deps: &AutoreloadDeps,
    reload: &AutoreloadRecord,
    packs: i64,
    amount: i64,
    intent: Option<&str>,
    reason: &str,
) -> Result<Reloaded, JobError> {
    let store = &deps.fulfilment.store;
    let outcome = AutoreloadOutcome {
        state: AutoreloadState::Failed,
        packs: Some(packs),
        amount_usd_cents: Some(amount),
        payment_intent_id: intent,
        reason: Some(reason),
    };
    store.settle_autoreload(&reload.id, &outcome).await?;
    announce_failure(store, reload, reason, "charge_failed").await?;
    let failures = store.autoreload_failures_in_a_row(&reload.account_id).await?;
    let disabled = failures >= deps.failures_before_disabling && store.disable_autoreload(&reload.account_id).await?;
    if disabled {
        tracing::warn!(account = %reload.account_id, failures, "autoreload turned off after repeated failures");
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
    });
    store.announce("autoreload.failed", &format!("evt_autoreload_failed_{}", reload.id), &data).await?;
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
