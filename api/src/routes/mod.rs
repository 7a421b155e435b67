//! The API's operations, grouped by who uses them. Each group is a poem-openapi `OpenApi` implementation; together
//! they make the OpenAPI document served at `/openapi.json`.

pub(crate) mod account;
pub(crate) mod admin;
pub(crate) mod batches;
pub(crate) mod jobs;
pub(crate) mod probes;
pub(crate) mod purchases;
pub(crate) mod reports;
pub(crate) mod settings;
pub(crate) mod usage;
pub(crate) mod webhooks;

use creditflow_domain::{Entry, Millicredits};
use poem_openapi::{Object, Tags};

/// Operation groups in the OpenAPI document.
#[derive(Tags)]
pub(crate) enum ApiTags {
    /// Liveness and readiness.
    Probes,
    /// Pricing and debiting usage.
    Usage,
    /// Balances, ledger lines, exports and settings.
    Account,
    /// Operators: adjustments, freezes, rate cards, the audit log.
    Admin,
}

/// An amount both ways: exact millicredits for programs, credits as a decimal string for people.
pub(crate) fn credits(amount: Millicredits) -> String {
    amount.to_string()
}

/// One ledger line as the API shows it.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct LedgerLine {
    /// Entry id (`ent_...`).
    id: String,
    /// Position in the account's ledger, from 1.
    sequence: i64,
    /// `purchase_credit`, `autoreload_credit`, `usage_debit`, `refund_debit` or `adjustment`.
    kind: String,
    /// Signed amount: credits positive, debits negative.
    amount_millicredits: i64,
    /// The amount in credits (`"-2.000"`).
    amount_credits: String,
    /// Balance once this line applied.
    balance_after_millicredits: i64,
    /// That balance in credits.
    balance_after_credits: String,
    /// The caller's correlation id.
    correlation_id: Option<String>,
    /// Rate card version of a usage debit.
    rate_version: Option<String>,
    /// What caused the line: a payment, a usage record, a batch.
    source_ref: Option<String>,
    /// Why an operator adjusted.
    reason: Option<String>,
    /// The model a usage debit priced.
    model: Option<String>,
    /// The quantities per unit kind a usage debit priced.
    units: Option<std::collections::BTreeMap<String, u64>>,
    /// When it was written (RFC 3339, UTC).
    created_at: String,
}

impl From<Entry> for LedgerLine {
    fn from(entry: Entry) -> Self {
        Self {
            id: entry.id,
            sequence: entry.sequence,
            kind: entry.kind.as_str().to_owned(),
            amount_millicredits: entry.amount.get(),
            amount_credits: credits(entry.amount),
            balance_after_millicredits: entry.balance_after.get(),
            balance_after_credits: credits(entry.balance_after),
            model: entry.usage.as_ref().map(|usage| usage.model.clone()),
            units: entry.usage.map(|usage| usage.units),
            correlation_id: entry.correlation_id,
            rate_version: entry.rate_version.map(|version| version.to_string()),
            source_ref: entry.source_ref,
            reason: entry.reason,
            created_at: rfc3339(entry.created_at),
        }
    }
}

/// Formats a time as RFC 3339 in UTC.
pub(crate) fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
