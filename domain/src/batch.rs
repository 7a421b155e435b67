//! Usage batches: events that already happened, priced and debited together.
//!
//! A batch is accepted whole; each event is then judged alone, so one bad event is rejected with a reason and the
//! rest are debited. An event is debited at most once per account whatever batches repeat it: its ledger key is
//! `event:<event id>`. Usage that already happened is billed even past the balance (the account goes negative and the
//! overdraft is flagged) and past the daily spend cap, which guards interactive reconciles only.

use serde::{Deserialize, Serialize};

use crate::ledger::{AccountId, EntryKind, Overdraft, Posting, UsageRecord};
use crate::pricing::{PricingError, Usage};
use crate::rate_card::RateCard;

/// The most events one batch may hold.
pub const BATCH_EVENTS_MAX: usize = 10_000;
/// The longest event id.
pub const EVENT_ID_LENGTH_MAX: usize = 200;
/// Prefix of the ledger idempotency keys of batch events.
pub const EVENT_KEY_PREFIX: &str = "event:";

/// One usage event of a batch, as submitted and stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvent {
    /// The caller's id of the event, unique per account: a second event with it is a duplicate.
    pub event_id: String,
    /// The account to debit.
    pub account_id: String,
    /// A model on the account's rate card.
    pub model: String,
    /// Quantities per unit kind.
    pub usage: std::collections::BTreeMap<String, i64>,
    /// Ties the debit to the caller's records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// Why an event was not debited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code: `invalid_event_id`, `invalid_account_id`, `invalid_usage`, `unknown_model`, `unknown_unit`,
    /// `no_rate_card`, `account_frozen`, `overflow`.
    pub code: &'static str,
    /// The reason in words.
    pub reason: String,
}

impl Rejection {
    /// A rejection with `code` and `reason`.
    pub fn new(code: &'static str, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into() }
    }
}

impl UsageEvent {
    /// The event's account, if its id is valid.
    pub fn account(&self) -> Result<AccountId, Rejection> {
        AccountId::new(self.account_id.clone())
            .map_err(|_| Rejection::new("invalid_account_id", "accountId must be 1 to 64 of A-Z a-z 0-9 _ -"))
    }

    /// The event's ledger idempotency key, if its id is valid.
    pub fn ledger_key(&self) -> Result<String, Rejection> {
        let id = &self.event_id;
        let valid = !id.is_empty() && id.len() <= EVENT_ID_LENGTH_MAX && id.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(format!("{EVENT_KEY_PREFIX}{id}"))
        } else {
            Err(Rejection::new(
                "invalid_event_id",
                format!("eventId must be 1 to {EVENT_ID_LENGTH_MAX} printable ASCII characters"),
            ))
        }
    }

    /// The usage as quantities, if none is negative.
    pub fn quantities(&self) -> Result<Usage, Rejection> {
        self.usage
            .iter()
            .map(|(unit, quantity)| match u64::try_from(*quantity) {
                Ok(quantity) => Ok((unit.clone(), quantity)),
                Err(_) => Err(Rejection::new(
                    "invalid_usage",
                    format!("usage.{unit} is {quantity}: quantities are whole numbers of 0 or more"),
                )),
            })
            .collect()
    }

    /// The debit for this event priced with `card` (`None` when it costs nothing), as part of batch `batch_ref`.
    pub fn posting(&self, card: &RateCard, batch_ref: &str) -> Result<Option<Posting>, Rejection> {
        let account_id = self.account()?;
        let idempotency_key = self.ledger_key()?;
        let units = self.quantities()?;
        let charge = card.charge(&self.model, &units).map_err(|error| {
            let code = match error {
                PricingError::UnknownModel { .. } => "unknown_model",
                PricingError::UnknownUnit { .. } => "unknown_unit",
                PricingError::EmptyUsage => "invalid_usage",
                PricingError::Overflow => "overflow",
            };
            Rejection::new(code, error.to_string())
        })?;
        if charge.amount.is_negative() || charge.amount == crate::Millicredits::ZERO {
            return Ok(None);
        }
        let amount = charge.amount.checked_neg().map_err(|_| Rejection::new("overflow", "the charge is too large"))?;
        let correlation_id = self.correlation_id.clone();
        if correlation_id.as_ref().is_some_and(|id| id.len() > 255) {
            return Err(Rejection::new("invalid_event", "correlationId is at most 255 characters"));
        }
        Ok(Some(Posting {
            account_id,
            kind: EntryKind::UsageDebit,
            amount,
            idempotency_key,
            correlation_id,
            rate_version: Some(charge.rate_version),
            source_ref: Some(batch_ref.to_owned()),
            reason: None,
            overdraft: Overdraft::Allow,
            spend_cap: None,
            usage: Some(UsageRecord { model: self.model.clone(), units }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Millicredits;

    const CARD: &str = r#"
        version = "v1"
        rounding = "ceil"
        [models.m1]
        input_tokens = "0.001"
    "#;

    fn event(id: &str, account: &str, model: &str, usage: &[(&str, i64)]) -> UsageEvent {
        UsageEvent {
            event_id: id.to_owned(),
            account_id: account.to_owned(),
            model: model.to_owned(),
            usage: usage.iter().map(|(unit, n)| ((*unit).to_owned(), *n)).collect(),
            correlation_id: None,
        }
    }

    #[test]
    fn events_become_overdraft_debits_keyed_by_event_id() {
        let card = RateCard::from_toml(CARD).expect("card");
        let posting = event("e-1", "acct", "m1", &[("input_tokens", 1_500)])
            .posting(&card, "batch:ubt_1")
            .expect("valid")
            .expect("costs something");
        assert_eq!(posting.amount, Millicredits::new(-2_000), "1.5 credits, rounded up to whole credits");
        assert_eq!(posting.idempotency_key, "event:e-1");
        assert_eq!(posting.overdraft, Overdraft::Allow);
        assert_eq!(posting.source_ref.as_deref(), Some("batch:ubt_1"));
        assert_eq!(posting.spend_cap, None);
        posting.validate().expect("a valid posting");
        let free = event("e-2", "acct", "m1", &[("input_tokens", 0)]).posting(&card, "b").expect("valid");
        assert_eq!(free, None, "a zero charge writes nothing");
    }

    #[test]
    fn bad_events_are_rejected_with_a_code() {
        let card = RateCard::from_toml(CARD).expect("card");
        let long_id = "x".repeat(EVENT_ID_LENGTH_MAX + 1);
        let cases = [
            (event("", "acct", "m1", &[("input_tokens", 1)]), "invalid_event_id"),
            (event(&long_id, "acct", "m1", &[("input_tokens", 1)]), "invalid_event_id"),
            (event("e", "a b", "m1", &[("input_tokens", 1)]), "invalid_account_id"),
            (event("e", "acct", "m1", &[("input_tokens", -1)]), "invalid_usage"),
            (event("e", "acct", "m1", &[]), "invalid_usage"),
            (event("e", "acct", "nope", &[("input_tokens", 1)]), "unknown_model"),
            (event("e", "acct", "m1", &[("images", 1)]), "unknown_unit"),
        ];
        for (event, code) in cases {
            let rejection = event.posting(&card, "b").expect_err("rejected");
            assert_eq!(rejection.code, code, "{event:?}: {}", rejection.reason);
        }
    }
}
