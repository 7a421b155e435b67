//! Processing received Stripe events: purchase fulfilment.
//!
//! A pack is credited exactly once per payment, whichever events announce it and however often: the ledger credit's
//! idempotency key is `payment:<PaymentIntent id>`, shared by `payment_intent.succeeded` and
//! `checkout.session.completed`. The PaymentIntent (or Checkout Session) carries the account and the pack in its
//! metadata, `creditflow_account_id` and `creditflow_pack_id`, as `POST /api/purchases` sets them.
//!
//! Handled: `payment_intent.succeeded`, `checkout.session.completed` (credit), `payment_intent.payment_failed`
//! (recorded), `charge.refunded` (debits the refunded share of the pack's credits; may take the balance below zero,
//! which is flagged in the audit log), `charge.dispute.created` (freezes the account when `freeze_on_dispute`, and
//! records the dispute in the audit log for operators). Every other type is acknowledged and left alone.

use creditflow_domain::{
    AccountId, AccountStatus, EntryKind, Millicredits, Overdraft, PackCatalog, Posting, PostingOutcome,
};
use creditflow_store::{NewAuditRecord, Purchase, PurchaseStatus, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::JobError;

/// Metadata key naming the account a payment is for.
pub const ACCOUNT_METADATA_KEY: &str = "creditflow_account_id";
/// Metadata key naming the pack a payment buys.
pub const PACK_METADATA_KEY: &str = "creditflow_pack_id";
/// Metadata key with how many of the pack a payment buys (`"1"` when absent; autoreload buys several to close the
/// gap in one charge).
pub const QUANTITY_METADATA_KEY: &str = "creditflow_quantity";
/// Metadata key naming the reload an off-session payment is for; its credit is an autoreload credit.
pub const AUTORELOAD_METADATA_KEY: &str = "creditflow_autoreload_id";
/// The most packs one payment may buy.
pub const QUANTITY_MAX: i64 = 100;

/// Process one stored Stripe event (queue `stripe_events`, written by the webhook receiver). Never rename.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStripeEventV1 {
    /// The Stripe event id (`evt_...`).
    pub event_id: String,
}

/// What processing did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Processed {
    /// The pack was credited now (the ledger entry id).
    Credited(String),
    /// The payment had been credited before: nothing changed.
    AlreadyCredited(String),
    /// A failed or unfinished payment was recorded.
    Recorded(PurchaseStatus),
    /// A refund was debited now (the ledger entry id).
    Refunded(String),
    /// A dispute was recorded; the account frozen when so configured.
    Disputed {
        /// Whether this event froze the account.
        froze: bool,
    },
    /// An event type creditflow does not act on.
    Ignored(String),
}

/// What the handler needs.
#[derive(Clone, Debug)]
pub struct Deps {
    /// The ledger store.
    pub store: Store,
    /// The packs on sale.
    pub packs: std::sync::Arc<PackCatalog>,
    /// Freeze an account when one of its payments is disputed.
    pub freeze_on_dispute: bool,
}

/// A payment as the events describe it.
struct Payment<'a> {
    intent_id: &'a str,
    amount_cents: i64,
    currency: &'a str,
    metadata: &'a Value,
}

/// Processes one stored event. Idempotent.
pub async fn process_stripe_event(job: &ProcessStripeEventV1, deps: &Deps) -> Result<Processed, JobError> {
    let Some((event_type, payload)) = deps.store.stripe_event(&job.event_id).await? else {
        return Err(JobError::Permanent(format!("no stored Stripe event {}", job.event_id)));
    };
    let event: Value = serde_json::from_str(&payload)
        .map_err(|error| JobError::Permanent(format!("event {} is not JSON: {error}", job.event_id)))?;
    let object = &event["data"]["object"];
    let text = |value: &Value, field: &str| -> Result<String, JobError> {
        value[field].as_str().map(str::to_owned).ok_or_else(|| {
            JobError::Permanent(format!("event {} ({event_type}) lacks data.object.{field}", job.event_id))
        })
    };
    match event_type.as_str() {
        "payment_intent.succeeded" => {
            let id = text(object, "id")?;
            let amount = object["amount_received"].as_i64().or_else(|| object["amount"].as_i64()).unwrap_or(0);
            let currency = text(object, "currency")?;
            let payment =
                Payment { intent_id: &id, amount_cents: amount, currency: &currency, metadata: &object["metadata"] };
            fulfil(&payment, deps).await
        }
        "checkout.session.completed" => {
            if object["payment_status"].as_str() != Some("paid") {
                return Ok(Processed::Ignored("checkout session not paid yet".to_owned()));
            }
            let id = text(object, "payment_intent")?;
            let currency = text(object, "currency")?;
            let amount = object["amount_total"].as_i64().unwrap_or(0);
            let payment =
                Payment { intent_id: &id, amount_cents: amount, currency: &currency, metadata: &object["metadata"] };
            fulfil(&payment, deps).await
        }
        "payment_intent.payment_failed" => {
            let id = text(object, "id")?;
            let currency = text(object, "currency")?;
            let amount = object["amount"].as_i64().unwrap_or(0);
            let payment =
                Payment { intent_id: &id, amount_cents: amount, currency: &currency, metadata: &object["metadata"] };
            let (account_id, pack_id) = buyer(&payment)?;
            let reason = object["last_payment_error"]["message"].as_str().unwrap_or("payment failed");
            deps.store.create_account(&account_id).await?;
            let purchase = purchase(&payment, account_id, pack_id, PurchaseStatus::Failed, None, Some(reason));
            deps.store.record_purchase(&purchase).await?;
            Ok(Processed::Recorded(PurchaseStatus::Failed))
        }
        "charge.refunded" => refund(object, &event["data"]["previous_attributes"], deps).await,
        "charge.dispute.created" => dispute(object, deps).await,
        other => Ok(Processed::Ignored(other.to_owned())),
    }
}

/// The purchase a charge belongs to, found through its PaymentIntent.
async fn purchase_of_charge(object: &Value, deps: &Deps, what: &str) -> Result<Purchase, JobError> {
    let Some(payment_intent) = object["payment_intent"].as_str() else {
        return Err(JobError::Permanent(format!("{what} has no payment_intent")));
    };
    // The purchase may not be recorded yet when Stripe's events arrive out of order: retry rather than drop it (a
    // charge that never becomes a creditflow purchase ends dead after the last attempt, for an operator to see).
    deps.store.purchase(payment_intent).await?.ok_or_else(|| {
        JobError::Transient(format!("{what} is for payment {payment_intent}, not (yet) a recorded creditflow purchase"))
    })
}

/// Millicredits a refund of `refunded_cents` out of `paid_cents` takes back from a `grant`: the same share, rounded
/// up to the millicredit so no refunded fraction stays spendable.
fn refunded_share(grant: Millicredits, refunded_cents: i64, paid_cents: i64) -> Option<Millicredits> {
    if paid_cents <= 0 || refunded_cents < 0 {
        return None;
    }
    let numerator = i128::from(grant.get()).checked_mul(i128::from(refunded_cents.min(paid_cents)))?;
    let share = numerator.checked_add(i128::from(paid_cents) - 1)? / i128::from(paid_cents);
    i64::try_from(share).ok().map(Millicredits::new)
}

async fn refund(charge: &Value, previous: &Value, deps: &Deps) -> Result<Processed, JobError> {
    let charge_id =
        charge["id"].as_str().ok_or_else(|| JobError::Permanent("charge.refunded without data.object.id".into()))?;
    let purchase = purchase_of_charge(charge, deps, &format!("refunded charge {charge_id}")).await?;
    // Take back a share of what was credited for this payment, not of today's catalogue (a pack can change).
    let credit_key = format!("payment:{}", purchase.payment_intent_id);
    let Some(credited) = deps.store.entry_by_key(&purchase.account_id, &credit_key).await? else {
        return Err(JobError::Transient(format!("refunded charge {charge_id}: its purchase is not credited yet")));
    };
    let paid = charge["amount"].as_i64().unwrap_or(purchase.amount_usd_cents);
    let refunded_now = charge["amount_refunded"].as_i64().unwrap_or(0);
    // Stripe reports the cumulative refund; the event's previous value makes the step this event adds.
    let refunded_before = previous["amount_refunded"].as_i64().unwrap_or(0);
    let overflow = || JobError::Permanent(format!("refunded charge {charge_id}: amounts out of range"));
    let debit = refunded_share(credited.amount, refunded_now, paid)
        .zip(refunded_share(credited.amount, refunded_before, paid))
        .and_then(|(now, before)| now.checked_sub(before).ok())
        .ok_or_else(overflow)?;
    if !debit.is_positive() {
        return Ok(Processed::Ignored(format!("refund of charge {charge_id} adds nothing")));
    }
    let posting = Posting {
        account_id: purchase.account_id.clone(),
        kind: EntryKind::RefundDebit,
        amount: debit.checked_neg().map_err(|_| overflow())?,
        idempotency_key: format!("refund:{charge_id}:{refunded_now}"),
        correlation_id: None,
        rate_version: None,
        source_ref: Some(charge_id.to_owned()),
        reason: None,
        // The money went back already: the credits go too, even if they were spent.
        overdraft: Overdraft::Allow,
        spend_cap: None,
        usage: None,
    };
    let entry = match deps.store.post(&posting).await? {
        PostingOutcome::Created(entry) | PostingOutcome::Exists(entry) => entry,
        other => return Err(JobError::Permanent(format!("refund of charge {charge_id} gave {other:?}"))),
    };
    if entry.balance_after.is_negative() {
        let record = NewAuditRecord {
            actor: "system:stripe".into(),
            action: "account.flag_negative_balance".into(),
            subject: purchase.account_id.to_string(),
            reason: Some(format!("refund of charge {charge_id} left the balance at {} credits", entry.balance_after)),
            details: serde_json::json!({"entryId": entry.id, "balanceMillicredits": entry.balance_after.get()})
                .to_string(),
        };
        // A redelivered refund finds its entry again and flags it once.
        if deps.store.append_audit_once(&record).await? {
            tracing::warn!(account = %purchase.account_id, entry = %entry.id, "refund left a negative balance");
        }
    }
    Ok(Processed::Refunded(entry.id))
}

async fn dispute(dispute: &Value, deps: &Deps) -> Result<Processed, JobError> {
    let dispute_id = dispute["id"].as_str().unwrap_or("unknown dispute");
    let purchase = purchase_of_charge(dispute, deps, &format!("dispute {dispute_id}")).await?;
    let reason = format!(
        "dispute {dispute_id} ({}) on payment {}",
        dispute["reason"].as_str().unwrap_or("no reason given"),
        purchase.payment_intent_id
    );
    let record = |action: &str| NewAuditRecord {
        actor: "system:stripe".into(),
        action: action.into(),
        subject: purchase.account_id.to_string(),
        reason: Some(reason.clone()),
        details: serde_json::json!({"disputeId": dispute_id, "paymentIntentId": purchase.payment_intent_id})
            .to_string(),
    };
    tracing::error!(account = %purchase.account_id, dispute = dispute_id, "payment disputed: an operator must look");
    if deps.freeze_on_dispute {
        let froze = deps
            .store
            .set_account_status(&purchase.account_id, AccountStatus::Frozen, &record("account.freeze"))
            .await?;
        return Ok(Processed::Disputed { froze });
    }
    deps.store.append_audit(&record("account.dispute")).await?;
    Ok(Processed::Disputed { froze: false })
}

fn buyer(payment: &Payment<'_>) -> Result<(AccountId, String), JobError> {
    let field = |key: &str| payment.metadata[key].as_str().map(str::to_owned);
    let (Some(account), Some(pack)) = (field(ACCOUNT_METADATA_KEY), field(PACK_METADATA_KEY)) else {
        return Err(JobError::Permanent(format!(
            "payment {} has no {ACCOUNT_METADATA_KEY}/{PACK_METADATA_KEY} metadata: not a creditflow purchase",
            payment.intent_id
        )));
    };
    let account = AccountId::new(account)
        .map_err(|_| JobError::Permanent(format!("payment {}: bad account id in metadata", payment.intent_id)))?;
    Ok((account, pack))
}

fn purchase(
    payment: &Payment<'_>,
    account_id: AccountId,
    pack_id: String,
    status: PurchaseStatus,
    ledger_entry_id: Option<String>,
    last_error: Option<&str>,
) -> Purchase {
    Purchase {
        payment_intent_id: payment.intent_id.to_owned(),
        account_id,
        pack_id,
        amount_usd_cents: payment.amount_cents,
        currency: payment.currency.to_owned(),
        status,
        ledger_entry_id,
        last_error: last_error.map(str::to_owned),
    }
}

/// Credits a paid payment (a purchase or an autoreload) once: the same entry whoever asks first, the webhook or the
/// autoreload job that made the payment.
pub async fn fulfil_payment(
    intent_id: &str,
    amount_cents: i64,
    currency: &str,
    metadata: &Value,
    deps: &Deps,
) -> Result<Processed, JobError> {
    fulfil(&Payment { intent_id, amount_cents, currency, metadata }, deps).await
}

/// Credits the packs of a paid payment, once.
async fn fulfil(payment: &Payment<'_>, deps: &Deps) -> Result<Processed, JobError> {
    let (account_id, pack_id) = buyer(payment)?;
    let Some(pack) = deps.packs.get(&pack_id) else {
        return Err(JobError::Permanent(format!("payment {} is for unknown pack {pack_id}", payment.intent_id)));
    };
    let quantity = match payment.metadata[QUANTITY_METADATA_KEY].as_str() {
        None => 1,
        Some(text) => text.parse::<i64>().ok().filter(|n| (1..=QUANTITY_MAX).contains(n)).ok_or_else(|| {
            JobError::Permanent(format!("payment {}: bad {QUANTITY_METADATA_KEY} `{text}`", payment.intent_id))
        })?,
    };
    let price = pack.price_usd_cents.checked_mul(quantity);
    let grant = pack.grant.get().checked_mul(quantity).map(Millicredits::new);
    let (Some(price), Some(grant)) = (price, grant) else {
        return Err(JobError::Permanent(format!("payment {}: amounts out of range", payment.intent_id)));
    };
    if payment.currency != "usd" || payment.amount_cents < price {
        return Err(JobError::Permanent(format!(
            "payment {} paid {} {} for {quantity} x pack {pack_id} priced {price} usd cents: an operator must look",
            payment.intent_id, payment.amount_cents, payment.currency
        )));
    }
    let reload = payment.metadata[AUTORELOAD_METADATA_KEY].as_str();
    deps.store.create_account(&account_id).await?;
    let posting = Posting {
        account_id: account_id.clone(),
        kind: if reload.is_some() { EntryKind::AutoreloadCredit } else { EntryKind::PurchaseCredit },
        amount: grant,
        idempotency_key: format!("payment:{}", payment.intent_id),
        correlation_id: reload.map(str::to_owned),
        rate_version: None,
        source_ref: Some(payment.intent_id.to_owned()),
        reason: None,
        overdraft: Overdraft::Forbid,
        spend_cap: None,
        usage: None,
    };
    let (entry, fresh) = match deps.store.post(&posting).await? {
        PostingOutcome::Created(entry) => (entry, true),
        PostingOutcome::Exists(entry) => (entry, false),
        other => {
            return Err(JobError::Permanent(format!("crediting payment {} gave {other:?}", payment.intent_id)));
        }
    };
    let record =
        purchase(payment, account_id.clone(), pack_id.clone(), PurchaseStatus::Succeeded, Some(entry.id.clone()), None);
    deps.store.record_purchase(&record).await?;
    // Announced on every run, recorded once (by event id): a crash after the credit cannot lose the announcement.
    let mut data = serde_json::json!({
        "accountId": account_id.as_str(),
        "packId": pack_id,
        "quantity": quantity,
        "paymentIntentId": payment.intent_id,
        "amountUsdCents": payment.amount_cents,
        "creditsMillicredits": entry.amount.get(),
        "balanceMillicredits": entry.balance_after.get(),
    });
    if let Some(reload_id) = reload {
        let outcome = creditflow_store::AutoreloadOutcome {
            state: creditflow_store::AutoreloadState::Succeeded,
            packs: Some(quantity),
            amount_usd_cents: Some(payment.amount_cents),
            payment_intent_id: Some(payment.intent_id),
            reason: None,
        };
        deps.store.settle_autoreload(reload_id, &outcome).await?;
    }
    let (event_type, event_id) = match reload {
        Some(reload_id) => {
            data["autoreloadId"] = reload_id.into();
            ("autoreload.succeeded", format!("evt_autoreload_{}", payment.intent_id))
        }
        None => ("purchase.succeeded", format!("evt_purchase_{}", payment.intent_id)),
    };
    deps.store.announce(event_type, &event_id, &data).await?;
    if fresh {
        tracing::info!(payment = payment.intent_id, entry = %entry.id, event_type, "payment credited");
        Ok(Processed::Credited(entry.id))
    } else {
        Ok(Processed::AlreadyCredited(entry.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refunded_shares_round_up_and_never_exceed_the_grant() {
        let grant = Millicredits::new(5_000_000);
        // (refunded cents, paid cents, millicredits taken back)
        let rows = [
            (500, 500, 5_000_000),
            (250, 500, 2_500_000),
            (1, 500, 10_000),
            (1, 3, 1_666_667),
            (900, 500, 5_000_000),
            (0, 500, 0),
        ];
        for (refunded, paid, expected) in rows {
            assert_eq!(refunded_share(grant, refunded, paid), Some(Millicredits::new(expected)), "{refunded}/{paid}");
        }
        assert_eq!(refunded_share(grant, 1, 0), None);
    }
}
