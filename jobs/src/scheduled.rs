//! Hourly jobs (queue `scheduled`): the `billing.rollup` announcement of the hour's money and usage, and the anomaly
//! check. The scheduler in every worker process records each hour's jobs in the outbox under a key per hour, so
//! however many workers run, each hour gets one rollup and one check.

use creditflow_domain::{EntryKind, Millicredits};
use creditflow_store::Store;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::JobError;

/// A job of the `scheduled` queue, told apart by `kind`. Variants are never renamed; new shapes get new kinds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum ScheduledJob {
    /// Announce the hour's activity to monitoring endpoints.
    #[serde(rename = "billing_rollup")]
    BillingRollup(HourV1),
    /// Flag accounts whose last 24 hours of spend are far over their usual.
    #[serde(rename = "anomaly_check")]
    AnomalyCheck(HourV1),
}

/// An hour, by its start (Unix seconds, UTC, on the hour).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HourV1 {
    /// Start of the hour, Unix seconds.
    pub hour_start: i64,
}

impl ScheduledJob {
    /// The outbox dedupe key: one job of each kind per hour.
    pub fn dedupe_key(&self) -> String {
        match self {
            Self::BillingRollup(hour) => format!("billing_rollup:{}", hour.hour_start),
            Self::AnomalyCheck(hour) => format!("anomaly_check:{}", hour.hour_start),
        }
    }
}

/// When an account's spend is an anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnomalyRule {
    /// Flag spend over this many times the 7-day daily average.
    pub ratio: i64,
    /// ... and at least this much in 24 hours (small accounts' noise is not an anomaly).
    pub floor: Millicredits,
}

impl Default for AnomalyRule {
    fn default() -> Self {
        Self { ratio: 3, floor: Millicredits::new(1_000_000) }
    }
}

impl AnomalyRule {
    /// True when `last_24h` of spend is over `ratio` times the daily average of `previous_7_days` (a total), and at
    /// least the floor.
    pub fn flags(self, last_24h: Millicredits, previous_7_days: Millicredits) -> bool {
        let spent = i128::from(last_24h.get());
        // spent > ratio * (previous / 7)  <=>  7 * spent > ratio * previous, without rounding the average.
        last_24h >= self.floor && 7 * spent > i128::from(self.ratio) * i128::from(previous_7_days.get())
    }
}

/// What the scheduled jobs need.
#[derive(Clone, Debug)]
pub struct ScheduledDeps {
    /// The ledger store.
    pub store: Store,
    /// The anomaly rule.
    pub anomaly: AnomalyRule,
}

/// What a scheduled job did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheduled {
    /// The rollup was announced.
    RolledUp,
    /// The check ran and flagged these many accounts (new flags only).
    Checked(usize),
}

fn hour_of(hour: HourV1) -> Result<(OffsetDateTime, OffsetDateTime), JobError> {
    let start = OffsetDateTime::from_unix_timestamp(hour.hour_start)
        .map_err(|_| JobError::Permanent(format!("hour {} is out of range", hour.hour_start)))?;
    Ok((start, start + Duration::HOUR))
}

/// Runs a scheduled job. Idempotent: announcements and flags are recorded once per hour.
pub async fn run_scheduled(job: &ScheduledJob, deps: &ScheduledDeps) -> Result<Scheduled, JobError> {
    match job {
        ScheduledJob::BillingRollup(hour) => billing_rollup(*hour, &deps.store).await.map(|()| Scheduled::RolledUp),
        ScheduledJob::AnomalyCheck(hour) => anomaly_check(*hour, deps).await.map(Scheduled::Checked),
    }
}

async fn billing_rollup(hour: HourV1, store: &Store) -> Result<(), JobError> {
    let (from, to) = hour_of(hour)?;
    let totals = store.totals_by_kind(from, to).await?;
    let sum = |kinds: &[EntryKind]| -> i64 {
        totals.iter().filter(|t| kinds.contains(&t.kind)).map(|t| t.amount.get()).fold(0, i64::saturating_add)
    };
    let count = |kinds: &[EntryKind]| -> i64 {
        totals.iter().filter(|t| kinds.contains(&t.kind)).map(|t| t.count).fold(0, i64::saturating_add)
    };
    let models = store.usage_by_model(from, to).await?;
    let failures = store.failures_between(from, to).await?;
    let rfc3339 = |at: OffsetDateTime| at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let data = serde_json::json!({
        "hourStart": rfc3339(from),
        "hourEnd": rfc3339(to),
        "creditsPurchasedMillicredits": sum(&[EntryKind::PurchaseCredit]),
        "creditsAutoreloadedMillicredits": sum(&[EntryKind::AutoreloadCredit]),
        "creditsDebitedMillicredits": sum(&[EntryKind::UsageDebit]).saturating_neg(),
        "refundsMillicredits": sum(&[EntryKind::RefundDebit]).saturating_neg(),
        "adjustmentsMillicredits": sum(&[EntryKind::Adjustment]),
        "purchases": count(&[EntryKind::PurchaseCredit, EntryKind::AutoreloadCredit]),
        "usageDebits": count(&[EntryKind::UsageDebit]),
        "usageByModel": models.iter().map(|m| serde_json::json!({
            "model": m.model, "debits": m.debits, "creditsMillicredits": m.credits.get(), "units": m.units,
        })).collect::<Vec<_>>(),
        "failures": {
            "payments": failures.payments, "autoreloads": failures.autoreloads, "deadJobs": failures.dead_jobs,
        },
    });
    store.announce("billing.rollup", &format!("evt_rollup_{}", hour.hour_start), &data).await?;
    Ok(())
}

async fn anomaly_check(hour: HourV1, deps: &ScheduledDeps) -> Result<usize, JobError> {
    let (start, end) = hour_of(hour)?;
    let day_ago = end - Duration::DAY;
    let last_24h = deps.store.spend_by_account(day_ago, end).await?;
    let previous = deps.store.spend_by_account(day_ago - Duration::days(7), day_ago).await?;
    let mut flagged = 0;
    for (account, spent) in last_24h {
        let before = previous.get(&account).copied().unwrap_or(Millicredits::ZERO);
        if !deps.anomaly.flags(spent, before) {
            continue;
        }
        let average = Millicredits::new(before.get() / 7);
        let data = serde_json::json!({
            "accountId": account.as_str(),
            "hourStart": hour.hour_start,
            "spentLast24hMillicredits": spent.get(),
            "dailyAverage7dMillicredits": average.get(),
            "ratio": deps.anomaly.ratio,
        });
        // Recorded and announced together; an account already flagged for this spike is not flagged again.
        if deps.store.record_anomaly(&account, start, spent, average, &data).await? {
            flagged += 1;
            tracing::warn!(%account, spent = %spent, daily_average = %average, "spend anomaly");
        }
    }
    Ok(flagged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomalies_are_over_three_times_the_average_and_over_the_floor() {
        let rule = AnomalyRule::default();
        let m = Millicredits::new;
        // (last 24 h, previous 7 days total, flagged)
        let rows = [
            (m(2_000_000), m(0), true),            // new spender over the floor
            (m(999_999), m(0), false),             // under the floor
            (m(3_000_001), m(7_000_000), true),    // just over 3 x 1,000,000 a day
            (m(3_000_000), m(7_000_000), false),   // exactly 3 x: not over
            (m(10_000_000), m(70_000_000), false), // a usual day for a big account
        ];
        for (last, previous, flagged) in rows {
            assert_eq!(rule.flags(last, previous), flagged, "{last:?} {previous:?}");
        }
    }

    #[test]
    fn each_hour_has_one_job_of_each_kind() {
        let hour = HourV1 { hour_start: 1_795_000_000 };
        assert_eq!(ScheduledJob::BillingRollup(hour).dedupe_key(), "billing_rollup:1795000000");
        assert_eq!(ScheduledJob::AnomalyCheck(hour).dedupe_key(), "anomaly_check:1795000000");
        let wire = serde_json::to_string(&ScheduledJob::AnomalyCheck(hour)).expect("json");
        assert_eq!(wire, r#"{"kind":"anomaly_check","hourStart":1795000000}"#);
    }
}
