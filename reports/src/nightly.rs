//! The nightly report of one day: read what it needs from the store and from Stripe, compute with polars, check,
//! render, store, announce and email once.
//!
//! Cost: the day's entries, Stripe's charges of the day, a week of usage of ten accounts, one read of every
//! account's balance, and the stored totals of the 29 days before. A day whose totals are not stored yet (the first
//! report, or days no report ran for) is read from the ledger once, then stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::NaiveDate;
use creditflow_domain::RateCard;
use creditflow_jobs::emails::Mailer;
use creditflow_payments::Stripe;
use creditflow_store::{CreditedPayment, LedgerDay, NewReport, ReportFile, Store, StoreError};
use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use polars::prelude::*;
use serde_json::json;
use time::OffsetDateTime;

use crate::day::{Day, ReportZone};
use crate::frames;
use crate::render::{self, CheckLine, Page, Table};

/// Days in the series.
pub const SERIES_DAYS: usize = 30;
/// Usage debits re-priced per report.
pub const SAMPLE_SIZE: usize = 100;
/// Top spenders listed.
pub const TOP_SPENDERS: u32 = 10;
/// How long after a day ends its totals are final (an entry is stamped before its transaction commits).
const SETTLE: time::Duration = time::Duration::minutes(2);

/// What the report is configured with.
#[derive(Clone, Debug)]
pub struct ReportSettings {
    /// The zone days are counted in.
    pub zone: ReportZone,
    /// Finance's addresses (no email when empty).
    pub recipients: Vec<Mailbox>,
    /// The expected share of usage credits per model, in percent.
    pub expected_mix: BTreeMap<String, f64>,
    /// How many percentage points a model's share may stray from the expected before it is flagged.
    pub mix_tolerance_points: f64,
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            zone: ReportZone::UTC,
            recipients: Vec::new(),
            expected_mix: BTreeMap::new(),
            mix_tolerance_points: 10.0,
        }
    }
}

/// What a report needs.
#[derive(Clone, Debug)]
pub struct ReportDeps {
    /// The ledger store.
    pub store: Store,
    /// Stripe, when keys are configured.
    pub stripe: Option<Stripe>,
    /// Where email goes.
    pub mailer: Arc<Mailer>,
    /// The sender.
    pub from: Mailbox,
    /// The settings.
    pub settings: ReportSettings,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The day asked for has not begun.
    #[error("the day {0} has not begun in {1}")]
    Future(String, &'static str),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Stripe could not be read.
    #[error("Stripe: {0}")]
    Stripe(#[from] creditflow_payments::PaymentError),
    /// A computation failed.
    #[error("computing the report: {0}")]
    Compute(#[from] PolarsError),
    /// The chart could not be drawn.
    #[error("drawing the chart: {0}")]
    Chart(#[from] png::EncodingError),
    /// An amount overflowed.
    #[error("an amount of the report is out of range")]
    Overflow,
    /// The email could not be built or sent.
    #[error("email: {0}")]
    Email(String),
}

impl ReportError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(error) => !matches!(error, StoreError::Corrupt(_)),
            Self::Stripe(error) => error.is_transient(),
            Self::Email(_) => true,
            Self::Future(..) | Self::Compute(_) | Self::Chart(_) | Self::Overflow => false,
        }
    }
}

/// How the email went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emailed {
    /// Sent now.
    Sent,
    /// Sent before for this date (and not forced): not sent again.
    AlreadySent,
    /// No recipients are configured.
    NoRecipients,
}

/// A finished report.
#[derive(Clone, Debug)]
pub struct Built {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// True when every check passed.
    pub passed: bool,
    /// The summary.
    pub summary: serde_json::Value,
    /// The files stored.
    pub files: Vec<ReportFile>,
    /// How the email went.
    pub emailed: Emailed,
}

/// A stage of the work, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading the ledger.
    Ledger,
    /// Reading Stripe's charges.
    Stripe,
    /// Computing with polars.
    Compute,
    /// Re-pricing the sample.
    Reprice,
    /// Checking balances.
    Balances,
    /// Rendering and storing.
    Store,
    /// Emailing finance.
    Email,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Self; 7] =
        [Self::Ledger, Self::Stripe, Self::Compute, Self::Reprice, Self::Balances, Self::Store, Self::Email];

    /// What it does.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Ledger => "reading the day's ledger",
            Self::Stripe => "reading Stripe's charges",
            Self::Compute => "computing totals, mix and spenders",
            Self::Reprice => "re-pricing sampled debits",
            Self::Balances => "checking balances against entries",
            Self::Store => "rendering and storing",
            Self::Email => "emailing finance",
        }
    }
}

/// How a run was asked for.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Email again even if this date's report was emailed.
    pub force: bool,
    /// The on-demand run's id (its announcement and email are its own); `None` for the date's scheduled run.
    pub request: Option<String>,
}

fn check(name: &str, passed: bool, detail: String) -> CheckLine {
    CheckLine { name: name.to_owned(), status: if passed { "pass" } else { "fail" }.to_owned(), detail }
}

fn skipped(name: &str, detail: &str) -> CheckLine {
    CheckLine { name: name.to_owned(), status: "skipped".to_owned(), detail: detail.to_owned() }
}

fn add(a: i64, b: i64) -> Result<i64, ReportError> {
    a.checked_add(b).ok_or(ReportError::Overflow)
}

fn sub(a: i64, b: i64) -> Result<i64, ReportError> {
    a.checked_sub(b).ok_or(ReportError::Overflow)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A stable pseudo-random rank of `id` for date `date` (FNV-1a): the sample is the same however often a day's
/// report runs, and differs from day to day.
fn sample_rank(date: &str, id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in date.bytes().chain([0]).chain(id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One day of the 30-day series.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SeriesDay {
    day: Day,
    entries: i64,
    purchased: i64,
    granted: i64,
    debited: i64,
    closing: i64,
    /// The stored closing against the previous closing plus the day's net (0 for days computed now).
    drift: i64,
}

/// Makes, stores and emails the report of `date`. Idempotent per date: a second run replaces the stored report
/// with an equal one and sends no second email unless `options.force`.
#[allow(clippy::too_many_lines)] // One night's steps in order; each block is commented.
pub async fn run_report(
    date: NaiveDate,
    options: &RunOptions,
    deps: &ReportDeps,
    progress: &(dyn Fn(Stage) + Send + Sync),
) -> Result<Built, ReportError> {
    let settings = &deps.settings;
    let zone = settings.zone;
    let day = zone.day(date);
    let label = day.label();
    let now = OffsetDateTime::now_utc();
    if day.start > now {
        return Err(ReportError::Future(label, zone.name()));
    }
    // A day still running is reported up to now, and its totals are not kept.
    let cut = day.end.min(now);
    let complete = day.end + SETTLE <= now;

    // 1. The ledger: stored totals of earlier days, entries of the days without.
    progress(Stage::Ledger);
    let days: Vec<Day> = (0..SERIES_DAYS as u64).rev().map(|back| zone.days_before(date, back)).collect();
    let first_label = days[0].label();
    let previous_label = days[SERIES_DAYS - 2].label();
    let stored: HashMap<String, LedgerDay> = deps
        .store
        .ledger_days(zone.name(), &first_label, &previous_label)
        .await?
        .into_iter()
        .map(|row| (row.day.clone(), row))
        .collect();
    // Entries are read from the first day (after the oldest) that is not stored.
    let first_read =
        (0..SERIES_DAYS).find(|index| !stored.contains_key(&days[*index].label())).unwrap_or(SERIES_DAYS - 1);
    let opening = match first_read.checked_sub(1).and_then(|index| stored.get(&days[index].label())) {
        Some(before) => before.closing_liability,
        None => deps.store.liability_before(days[first_read].start).await?,
    };
    let columns = deps.store.entries_between(days[first_read].start, cut).await?;
    let starts: Vec<i64> = days.iter().map(|d| micros(d.start)).collect();
    let entries = frames::entries_frame(columns, &starts)?;
    let today = i32::try_from(SERIES_DAYS - 1).unwrap_or(29);

    // 2. Stripe's charges of the day.
    progress(Stage::Stripe);
    let ours = deps.store.payments_credited_between(day.start, cut).await?;
    let charges = match &deps.stripe {
        // Stripe counts whole seconds: a day still running is read up to the end of the current second.
        Some(stripe) => {
            let to = if cut < day.end { cut.unix_timestamp() + 1 } else { day.end.unix_timestamp() };
            Some(stripe.charges_between(day.start.unix_timestamp(), to).await?)
        }
        None => None,
    };

    // 3. The computations, off the async runtime (polars blocks while it works).
    progress(Stage::Compute);
    let computed = off_runtime({
        let entries = entries.clone();
        move || computations(&entries, today)
    })
    .await?;
    let Computed { totals, kinds, models, spenders, usage_ids, adjustments_in, adjustments_out } = computed;
    let series = series(&days, &stored, first_read, opening, &totals)?;
    let payments = match &charges {
        Some(charges) => Some(match_payments(&deps.store, &ours, charges).await?),
        None => None,
    };
    let week_start = zone.days_before(date, 7).start;
    let top_accounts: Vec<String> = frames::strings(&spenders, "account_id")?.into_iter().flatten().collect();
    let week = deps.store.usage_spend_of(&top_accounts, week_start, day.start).await?;
    let units = deps.store.usage_units_between(day.start, cut).await?;

    // 4. Cost coverage.
    progress(Stage::Reprice);
    let mut sample: Vec<String> = frames::strings(&usage_ids, "id")?.into_iter().flatten().collect();
    let usage_today = sample.len();
    sample.sort_by_cached_key(|id| (sample_rank(&label, id), id.clone()));
    sample.truncate(SAMPLE_SIZE);
    let repriced = reprice(&deps.store, &sample).await?;

    // 5. Balances against entries, at the end of the day.
    progress(Stage::Balances);
    let balances = deps.store.balance_check(cut).await?;
    let balances_at_cut = sub(balances.balances, balances.net_after)?;
    let closing = series.last().map_or(opening, |last| last.closing);
    let liability_drift = sub(closing, balances_at_cut)?;
    if complete {
        let finished: Vec<LedgerDay> = series
            .iter()
            .skip(first_read)
            .map(|row| LedgerDay {
                time_zone: zone.name().to_owned(),
                day: row.day.label(),
                starts_at: row.day.start,
                ends_at: row.day.end,
                entries: row.entries,
                purchased: row.purchased,
                granted: row.granted,
                debited: row.debited,
                closing_liability: row.closing,
            })
            .collect();
        deps.store.save_ledger_days(&finished).await?;
    }

    // 6. Checks, tables, summary.
    progress(Stage::Store);
    let kind_rows = kind_rows(&kinds)?;
    let kind_amount = |kind: &str| kind_rows.iter().find(|row| row.0 == kind).map_or(0, |row| row.2);
    let day_row = series.last().cloned().ok_or(ReportError::Overflow)?;
    let usage_total = sub(0, kind_amount(frames::USAGE_DEBIT))?;

    let mut checks = Vec::new();
    let mut tables = Vec::new();
    let mut files = Vec::new();

    // Purchases against Stripe.
    #[allow(clippy::single_match_else)] // Two long arms read better as a match.
    let (purchases_json, payments_table) = match &payments {
        Some(rows) => {
            let our_count = i64::try_from(ours.len()).unwrap_or(i64::MAX);
            let our_cents = ours.iter().try_fold(0i64, |sum, p| add(sum, p.amount_usd_cents))?;
            let paid: Vec<_> = charges.iter().flatten().filter(|c| c.paid).collect();
            let stripe_count = i64::try_from(paid.len()).unwrap_or(i64::MAX);
            let stripe_cents = paid.iter().try_fold(0i64, |sum, c| add(sum, c.amount))?;
            let unmatched: Vec<&PaymentRow> = rows.iter().filter(|row| row.status != "matched").collect();
            let count_of = |status: &str| rows.iter().filter(|row| row.status == status).count();
            let drift = sub(stripe_cents, our_cents)?;
            let passed = drift == 0 && unmatched.is_empty();
            let detail = if passed {
                format!("{our_count} payments, {} both sides", render::usd_from_cents(our_cents))
            } else {
                let named: Vec<String> =
                    unmatched.iter().take(5).map(|row| format!("{} {}", row.key, row.status)).collect();
                format!(
                    "drift {} ({} ours, {} Stripe); unmatched: {}",
                    render::usd_from_cents(drift),
                    render::usd_from_cents(our_cents),
                    render::usd_from_cents(stripe_cents),
                    named.join(", ")
                )
            };
            checks.push(check("purchases_vs_stripe", passed, detail));
            let summary = json!({
                "count": our_count, "usdCents": our_cents, "stripeCount": stripe_count, "stripeGrossCents": stripe_cents,
                "driftCents": drift, "missingInStripe": count_of("missing_in_stripe"),
                "missingInLedger": count_of("missing_in_ledger"), "amountDiffers": count_of("amount_differs"),
                "unmatched": unmatched.iter().map(|row| json!({
                    "paymentIntent": row.payment_intent, "chargeId": row.charge_id, "status": row.status,
                    "oursCents": row.ours_cents, "stripeCents": row.stripe_cents, "note": row.note,
                })).collect::<Vec<_>>(),
            });
            (summary, Some(payments_frame(rows)?))
        }
        None => {
            checks.push(skipped("purchases_vs_stripe", "Stripe is not configured (stripe.secret_key)"));
            let our_cents = ours.iter().try_fold(0i64, |sum, p| add(sum, p.amount_usd_cents))?;
            (json!({ "count": ours.len(), "usdCents": our_cents, "stripe": null }), None)
        }
    };

    // Liability.
    let disagreeing = &balances.disagreeing;
    let liability_passed = liability_drift == 0 && disagreeing.is_empty();
    let liability_detail = if liability_passed {
        format!("ledger and balances agree at {} credits", render::credits(closing))
    } else {
        let named: Vec<String> = disagreeing
            .iter()
            .take(5)
            .map(|row| format!("{} (balance {}, entries {})", row.account_id, row.balance, row.ledger_balance))
            .collect();
        format!(
            "ledger total {} vs balances {}: drift {} millicredits; accounts disagreeing with their entries: {}",
            closing,
            balances_at_cut,
            liability_drift,
            if named.is_empty() { "none".to_owned() } else { named.join(", ") }
        )
    };
    checks.push(check("liability", liability_passed, liability_detail));

    // Series.
    let drifting: Vec<&SeriesDay> = series.iter().filter(|row| row.drift != 0).collect();
    let negative: Vec<&SeriesDay> = series.iter().filter(|row| row.closing < 0).collect();
    let series_passed = drifting.is_empty() && negative.is_empty() && liability_drift == 0;
    let series_detail = if series_passed {
        format!("{} days, each closing equal to the one before plus its net", series.len())
    } else {
        let named: Vec<String> = drifting
            .iter()
            .map(|row| format!("{} drift {}", row.day.label(), row.drift))
            .chain(negative.iter().map(|row| format!("{} negative liability {}", row.day.label(), row.closing)))
            .collect();
        if named.is_empty() { "the last closing disagrees with the balances".to_owned() } else { named.join(", ") }
    };
    checks.push(check("series_30d", series_passed, series_detail));

    // Usage mix.
    let mix = usage_mix(&models, &units, &settings.expected_mix, settings.mix_tolerance_points, usage_total)?;
    let flagged: Vec<&MixRow> = mix.iter().filter(|row| row.flagged).collect();
    if settings.expected_mix.is_empty() {
        checks.push(skipped("usage_mix", "no expected mix configured (report.expected_mix)"));
    } else {
        let detail = if flagged.is_empty() {
            format!("{} models within {} points of the expected mix", mix.len(), settings.mix_tolerance_points)
        } else {
            let named: Vec<String> = flagged
                .iter()
                .map(|row| format!("{} {:.1}% vs {:.1}% expected", row.model, row.share, row.expected.unwrap_or(0.0)))
                .collect();
            named.join(", ")
        };
        checks.push(check("usage_mix", flagged.is_empty(), detail));
    }

    // Cost coverage.
    let mismatches: Vec<&Repriced> = repriced.iter().filter(|row| row.repriced != Some(row.recorded)).collect();
    let coverage_detail = if mismatches.is_empty() {
        format!("{} of {} usage debits re-priced, all equal", repriced.len(), usage_today)
    } else {
        let named: Vec<String> = mismatches
            .iter()
            .take(5)
            .map(|row| {
                format!(
                    "{} recorded {} repriced {}",
                    row.entry_id,
                    row.recorded,
                    row.repriced.map_or("none".to_owned(), |v| v.to_string())
                )
            })
            .collect();
        format!("{} of {} sampled debits disagree: {}", mismatches.len(), repriced.len(), named.join(", "))
    };
    checks.push(check("cost_coverage", mismatches.is_empty(), coverage_detail));

    let passed = checks.iter().all(|line| line.status != "fail");
    let spender_rows = spender_rows(&spenders, &week, usage_total)?;

    let summary = json!({
        "date": label,
        "timeZone": zone.name(),
        "from": rfc3339(day.start),
        "to": rfc3339(day.end),
        "complete": complete,
        "generatedAt": rfc3339(now),
        "passed": passed,
        "checks": checks.iter().map(|line| json!({"name": line.name, "status": line.status, "detail": line.detail})).collect::<Vec<_>>(),
        "purchases": purchases_json,
        "credits": {
            "entries": day_row.entries,
            "grantedMillicredits": day_row.granted,
            "purchasedMillicredits": kind_amount(frames::PURCHASE_CREDIT),
            "autoreloadedMillicredits": kind_amount(frames::AUTORELOAD_CREDIT),
            "adjustmentsInMillicredits": adjustments_in,
            "debitedMillicredits": day_row.debited,
            "usageMillicredits": usage_total,
            "refundsMillicredits": sub(0, kind_amount("refund_debit"))?,
            "adjustmentsOutMillicredits": sub(0, adjustments_out)?,
            "netMillicredits": sub(day_row.granted, day_row.debited)?,
        },
        "liability": {
            "openingMillicredits": sub(closing, sub(day_row.granted, day_row.debited)?)?,
            "closingMillicredits": closing,
            "closingUsd": render::usd_from_millicredits(closing),
            "balancesMillicredits": balances_at_cut,
            "driftMillicredits": liability_drift,
            "accountsDisagreeing": disagreeing.iter().map(|row| json!({
                "accountId": row.account_id, "balanceMillicredits": row.balance, "entriesMillicredits": row.ledger_balance,
            })).collect::<Vec<_>>(),
        },
        "series": {
            "days": series.len(),
            "from": first_label,
            "driftDays": drifting.len(),
            "negativeLiabilityDays": negative.len(),
            "purchasedMillicredits": series.iter().try_fold(0i64, |sum, row| add(sum, row.purchased))?,
            "debitedMillicredits": series.iter().try_fold(0i64, |sum, row| add(sum, row.debited))?,
        },
        "usageMix": mix.iter().map(|row| json!({
            "model": row.model, "debits": row.debits, "units": row.units, "creditsMillicredits": row.credits,
            "sharePercent": row.share, "expectedPercent": row.expected, "flagged": row.flagged,
        })).collect::<Vec<_>>(),
        "topSpenders": spender_rows.iter().map(|row| json!({
            "accountId": row.account_id, "debits": row.debits, "spentMillicredits": row.spent,
            "sharePercent": row.share, "average7dMillicredits": row.average_7d, "ratioTo7dAverage": row.ratio,
        })).collect::<Vec<_>>(),
        "costCoverage": {
            "usageDebits": usage_today,
            "sampled": repriced.len(),
            "mismatches": mismatches.iter().map(|row| json!({
                "entryId": row.entry_id, "accountId": row.account_id, "rateVersion": row.rate_version,
                "recordedMillicredits": row.recorded, "repricedMillicredits": row.repriced, "reason": row.reason,
            })).collect::<Vec<_>>(),
        },
    });

    // Files.
    let csv = |name: &str, frame: &mut DataFrame| -> Result<ReportFile, ReportError> {
        Ok(ReportFile { name: name.to_owned(), content_type: "text/csv".to_owned(), body: frames::to_csv(frame)? })
    };
    let mut kinds_frame = kinds.clone();
    files.push(csv("credits_by_kind.csv", &mut kinds_frame)?);
    tables.push(table_of(
        "Credits by kind",
        "Entries of the day per kind; amounts in millicredits, debits negative.",
        &kinds_frame,
    )?);
    if let Some(mut frame) = payments_table {
        files.push(csv("purchases_vs_stripe.csv", &mut frame)?);
        let unmatched: Vec<PaymentRow> =
            payments.iter().flatten().filter(|row| row.status != "matched").cloned().collect();
        tables.push(table_of("Purchases against Stripe: unmatched", "Payments credited here without a Stripe charge of the day, charges without a credit, and amounts that differ (USD cents).", &payments_frame(&unmatched)?)?);
    }
    let mut balances_frame = df!(
        "account_id" => disagreeing.iter().map(|row| row.account_id.clone()).collect::<Vec<_>>(),
        "balance" => disagreeing.iter().map(|row| row.balance).collect::<Vec<_>>(),
        "entries_sum" => disagreeing.iter().map(|row| row.ledger_balance).collect::<Vec<_>>(),
    )?;
    files.push(csv("balance_disagreements.csv", &mut balances_frame)?);
    tables.push(table_of("Accounts whose balance disagrees with their entries", "Must be empty.", &balances_frame)?);
    let mut series_frame = df!(
        "date" => series.iter().map(|row| row.day.label()).collect::<Vec<_>>(),
        "entries" => series.iter().map(|row| row.entries).collect::<Vec<_>>(),
        "purchased" => series.iter().map(|row| row.purchased).collect::<Vec<_>>(),
        "granted" => series.iter().map(|row| row.granted).collect::<Vec<_>>(),
        "debited" => series.iter().map(|row| row.debited).collect::<Vec<_>>(),
        "closing_liability" => series.iter().map(|row| row.closing).collect::<Vec<_>>(),
        "drift" => series.iter().map(|row| row.drift).collect::<Vec<_>>(),
    )?;
    files.push(csv("series_30d.csv", &mut series_frame)?);
    let mut mix_frame = df!(
        "model" => mix.iter().map(|row| row.model.clone()).collect::<Vec<_>>(),
        "debits" => mix.iter().map(|row| row.debits).collect::<Vec<_>>(),
        "credits" => mix.iter().map(|row| row.credits).collect::<Vec<_>>(),
        "share_percent" => mix.iter().map(|row| row.share).collect::<Vec<_>>(),
        "expected_percent" => mix.iter().map(|row| row.expected).collect::<Vec<_>>(),
        "flagged" => mix.iter().map(|row| row.flagged).collect::<Vec<_>>(),
    )?;
    // A column per unit kind priced (`units_input_tokens`...), empty for models that do not price it.
    let kinds: std::collections::BTreeSet<&String> = mix.iter().flat_map(|row| row.units.keys()).collect();
    for kind in kinds {
        let quantities: Vec<Option<u64>> = mix.iter().map(|row| row.units.get(kind).copied()).collect();
        mix_frame.with_column(Column::new(format!("units_{kind}").into(), quantities))?;
    }
    files.push(csv("usage_mix.csv", &mut mix_frame)?);
    tables.push(table_of(
        "Usage mix per model",
        "Credits in millicredits; shares of the day's usage against the expected mix.",
        &mix_frame,
    )?);
    let mut spenders_frame = df!(
        "account_id" => spender_rows.iter().map(|row| row.account_id.clone()).collect::<Vec<_>>(),
        "debits" => spender_rows.iter().map(|row| row.debits).collect::<Vec<_>>(),
        "spent" => spender_rows.iter().map(|row| row.spent).collect::<Vec<_>>(),
        "share_percent" => spender_rows.iter().map(|row| row.share).collect::<Vec<_>>(),
        "average_7d" => spender_rows.iter().map(|row| row.average_7d).collect::<Vec<_>>(),
        "ratio_to_7d_average" => spender_rows.iter().map(|row| row.ratio).collect::<Vec<_>>(),
    )?;
    files.push(csv("top_spenders.csv", &mut spenders_frame)?);
    tables.push(table_of("Top spenders", "Usage of the day in millicredits, its share of all usage, and the account's daily average over the 7 days before.", &spenders_frame)?);
    let mut coverage_frame = df!(
        "entry_id" => repriced.iter().map(|row| row.entry_id.clone()).collect::<Vec<_>>(),
        "account_id" => repriced.iter().map(|row| row.account_id.clone()).collect::<Vec<_>>(),
        "model" => repriced.iter().map(|row| row.model.clone()).collect::<Vec<_>>(),
        "rate_version" => repriced.iter().map(|row| row.rate_version.clone()).collect::<Vec<_>>(),
        "recorded" => repriced.iter().map(|row| row.recorded).collect::<Vec<_>>(),
        "repriced" => repriced.iter().map(|row| row.repriced).collect::<Vec<_>>(),
        "matches" => repriced.iter().map(|row| row.repriced == Some(row.recorded)).collect::<Vec<_>>(),
        "reason" => repriced.iter().map(|row| row.reason.clone()).collect::<Vec<_>>(),
    )?;
    files.push(csv("cost_coverage.csv", &mut coverage_frame)?);
    let coverage_mismatches = coverage_frame.filter(&!coverage_frame.column("matches")?.bool()?.clone())?;
    tables.push(table_of("Cost coverage: mismatches", "Sampled usage debits whose recorded amount differs from their price on the rate card version they recorded (millicredits). Must be empty.", &coverage_mismatches)?);

    let bars: Vec<(i64, i64)> = series.iter().map(|row| (row.purchased, row.debited)).collect();
    let png = crate::chart::bars_png(&bars)?;
    let top = crate::chart::scale_top(&bars);
    let figures = vec![
        ("Credits granted".to_owned(), render::credits(day_row.granted)),
        ("Credits debited".to_owned(), render::credits(day_row.debited)),
        ("Outstanding liability (credits)".to_owned(), render::credits(closing)),
        ("Outstanding liability (USD)".to_owned(), format!("${}", render::usd_from_millicredits(closing))),
        ("Purchases (ours)".to_owned(), render::usd_from_cents(purchases_json["usdCents"].as_i64().unwrap_or(0))),
        (
            "Stripe gross".to_owned(),
            purchases_json["stripeGrossCents"].as_i64().map_or("not read".to_owned(), render::usd_from_cents),
        ),
    ];
    let title = format!("Reconciliation report {label} ({})", zone.name());
    let chart_top = render::credits(top);
    let page = |chart_src: &str| {
        render::html(&Page {
            title: &title,
            passed,
            checks: &checks,
            figures: &figures,
            chart_src,
            chart_top: &chart_top,
            chart_span: (&first_label, &label),
            tables: &tables,
        })
    };
    let summary_text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    files.push(ReportFile {
        name: "summary.json".into(),
        content_type: "application/json".into(),
        body: summary_text.clone().into_bytes(),
    });
    files.push(ReportFile {
        name: "report.html".into(),
        content_type: "text/html; charset=utf-8".into(),
        body: page(CHART_FILE).into_bytes(),
    });
    files.push(ReportFile { name: CHART_FILE.into(), content_type: "image/png".into(), body: png.clone() });
    let event_id = match &options.request {
        None => format!("evt_report_{}", label.replace('-', "")),
        Some(request) => format!("evt_report_{}_{request}", label.replace('-', "")),
    };
    let event_data = json!({ "date": label, "timeZone": zone.name(), "passed": passed, "complete": complete,
        "checks": summary["checks"].clone() });
    deps.store
        .save_report(&NewReport {
            date: &label,
            time_zone: zone.name(),
            passed,
            summary: &summary_text,
            files: &files,
            event_id: &event_id,
            event_data: &event_data,
        })
        .await?;

    // 7. Email, once per date unless forced.
    progress(Stage::Email);
    let emailed = if settings.recipients.is_empty() {
        Emailed::NoRecipients
    } else {
        let key = match (&options.request, options.force) {
            (Some(request), true) => format!("report:{label}:{request}"),
            _ => format!("report:{label}"),
        };
        let message = email(deps, &title, passed, &page(&format!("cid:{CHART_CID}")), &png, &files)?;
        if deps.store.claim_notification(&key, "finance").await? {
            if let Err(error) = deps.mailer.send(message).await {
                deps.store.release_notification(&key).await?;
                return Err(ReportError::Email(error));
            }
            deps.store.mark_report_emailed(&label).await?;
            Emailed::Sent
        } else {
            Emailed::AlreadySent
        }
    };
    Ok(Built { date: label, passed, summary, files, emailed })
}

/// The chart's file name beside the stored report.
pub const CHART_FILE: &str = "chart.png";
const CHART_CID: &str = "credits-30d";

fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

fn series(
    days: &[Day],
    stored: &HashMap<String, LedgerDay>,
    first_read: usize,
    opening: i64,
    totals: &DataFrame,
) -> Result<Vec<SeriesDay>, ReportError> {
    let index = frames::ints(totals, "day")?;
    let column = |name: &str| frames::ints(totals, name);
    let (entries, purchased, granted, debited, net) =
        (column("entries")?, column("purchased")?, column("granted")?, column("debited")?, column("net")?);
    let mut computed: HashMap<i64, (i64, i64, i64, i64, i64)> = HashMap::new();
    for row in 0..index.len() {
        let value = |values: &[Option<i64>]| values[row].unwrap_or(0);
        if let Some(day) = index[row] {
            computed.insert(day, (value(&entries), value(&purchased), value(&granted), value(&debited), value(&net)));
        }
    }
    let mut rows: Vec<SeriesDay> = Vec::with_capacity(days.len());
    let mut previous: Option<i64> = None;
    for (position, day) in days.iter().enumerate() {
        let row = if position < first_read {
            let kept = stored.get(&day.label()).ok_or(ReportError::Overflow)?;
            let expected = match previous {
                Some(before) => add(before, sub(kept.granted, kept.debited)?)?,
                None => kept.closing_liability,
            };
            SeriesDay {
                day: day.clone(),
                entries: kept.entries,
                purchased: kept.purchased,
                granted: kept.granted,
                debited: kept.debited,
                closing: kept.closing_liability,
                drift: sub(kept.closing_liability, expected)?,
            }
        } else {
            let key = i64::try_from(position).unwrap_or(i64::MAX);
            let (count, bought, given, taken, net) = computed.get(&key).copied().unwrap_or_default();
            let before = previous.unwrap_or(opening);
            SeriesDay {
                day: day.clone(),
                entries: count,
                purchased: bought,
                granted: given,
                debited: taken,
                closing: add(before, net)?,
                drift: 0,
            }
        };
        previous = Some(row.closing);
        rows.push(row);
    }
    Ok(rows)
}

fn kind_rows(kinds: &DataFrame) -> Result<Vec<(String, i64, i64)>, ReportError> {
    let names = frames::strings(kinds, "kind")?;
    let counts = frames::ints(kinds, "entries")?;
    let amounts = frames::ints(kinds, "amount")?;
    Ok(names
        .into_iter()
        .zip(counts)
        .zip(amounts)
        .map(|((name, count), amount)| (name.unwrap_or_default(), count.unwrap_or(0), amount.unwrap_or(0)))
        .collect())
}

/// What the polars computations of a night produce.
struct Computed {
    totals: DataFrame,
    kinds: DataFrame,
    models: DataFrame,
    spenders: DataFrame,
    usage_ids: DataFrame,
    adjustments_in: i64,
    adjustments_out: i64,
}

fn computations(entries: &DataFrame, today: i32) -> PolarsResult<Computed> {
    Ok(Computed {
        totals: frames::day_totals(entries, 0, today)?,
        kinds: frames::kind_totals(entries, today)?,
        models: frames::usage_by_model(entries, today)?,
        spenders: frames::spend_by_account(entries, today, today, Some(TOP_SPENDERS))?,
        usage_ids: frames::usage_ids(entries, today)?,
        adjustments_in: entries_sum(entries, today, "adjustment", true)?,
        adjustments_out: entries_sum(entries, today, "adjustment", false)?,
    })
}

/// Runs polars work on a blocking thread: lazy frames block while they compute, and would stall the async workers
/// (or, on a single-threaded runtime, refuse to run).
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> PolarsResult<T> + Send + 'static,
) -> Result<T, ReportError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => Ok(result?),
        Err(error) => {
            Err(ReportError::Compute(PolarsError::ComputeError(format!("the computation stopped: {error}").into())))
        }
    }
}

/// The positive (or negative) amounts of `kind` on day `day`.
fn entries_sum(entries: &DataFrame, day: i32, kind: &str, positive: bool) -> PolarsResult<i64> {
    let sign = if positive { col("amount").gt(lit(0i64)) } else { col("amount").lt(lit(0i64)) };
    let filtered = frames::days(entries, day, day)?.lazy().filter(col("kind").eq(lit(kind)).and(sign));
    frames::total(filtered)
}

/// One payment row of the Stripe comparison.
#[derive(Clone, Debug)]
struct PaymentRow {
    key: String,
    payment_intent: Option<String>,
    charge_id: Option<String>,
    account_id: Option<String>,
    ours_cents: Option<i64>,
    stripe_cents: Option<i64>,
    status: String,
    note: Option<String>,
}

async fn match_payments(
    store: &Store,
    ours: &[CreditedPayment],
    charges: &[creditflow_payments::ChargeSummary],
) -> Result<Vec<PaymentRow>, ReportError> {
    let paid: Vec<_> = charges.iter().filter(|charge| charge.paid).collect();
    let ours_frame = df!(
        "payment_intent" => ours.iter().map(|p| p.payment_intent_id.clone()).collect::<Vec<_>>(),
        "account_id" => ours.iter().map(|p| p.account_id.clone()).collect::<Vec<_>>(),
        "ours_cents" => ours.iter().map(|p| p.amount_usd_cents).collect::<Vec<_>>(),
    )?;
    let stripe_frame = df!(
        "charge_id" => paid.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        "payment_intent" => paid.iter().map(|c| c.payment_intent.clone()).collect::<Vec<_>>(),
        "stripe_cents" => paid.iter().map(|c| c.amount).collect::<Vec<_>>(),
    )?;
    let matched = off_runtime(move || frames::match_payments(ours_frame.lazy(), stripe_frame.lazy())).await?;
    let keys = frames::strings(&matched, "payment_intent")?;
    let charge_ids = frames::strings(&matched, "charge_id")?;
    let accounts = frames::strings(&matched, "account_id")?;
    let ours_cents = frames::ints(&matched, "ours_cents")?;
    let stripe_cents = frames::ints(&matched, "stripe_cents")?;
    let statuses = frames::strings(&matched, "status")?;
    let mut rows: Vec<PaymentRow> = (0..keys.len())
        .map(|row| {
            let key = keys[row].clone().unwrap_or_default();
            PaymentRow {
                payment_intent: (!key.starts_with("none:")).then(|| key.clone()),
                key,
                charge_id: charge_ids[row].clone(),
                account_id: accounts[row].clone(),
                ours_cents: ours_cents[row],
                stripe_cents: stripe_cents[row],
                status: statuses[row].clone().unwrap_or_default(),
                note: None,
            }
        })
        .collect();
    // A charge of the day credited on another day is a timing difference finance can see at a glance.
    let missing: Vec<String> = rows
        .iter()
        .filter(|row| row.status == "missing_in_ledger")
        .filter_map(|row| row.payment_intent.clone())
        .collect();
    let credited = store.credited_at(&missing).await?;
    for row in &mut rows {
        if let Some(at) = row.payment_intent.as_ref().and_then(|intent| credited.get(intent)) {
            row.note = Some(format!("credited at {}", rfc3339(*at)));
        }
    }
    Ok(rows)
}

fn payments_frame(rows: &[PaymentRow]) -> Result<DataFrame, ReportError> {
    Ok(df!(
        "payment_intent" => rows.iter().map(|row| row.payment_intent.clone()).collect::<Vec<_>>(),
        "charge_id" => rows.iter().map(|row| row.charge_id.clone()).collect::<Vec<_>>(),
        "account_id" => rows.iter().map(|row| row.account_id.clone()).collect::<Vec<_>>(),
        "ours_cents" => rows.iter().map(|row| row.ours_cents).collect::<Vec<_>>(),
        "stripe_cents" => rows.iter().map(|row| row.stripe_cents).collect::<Vec<_>>(),
        "status" => rows.iter().map(|row| row.status.clone()).collect::<Vec<_>>(),
        "note" => rows.iter().map(|row| row.note.clone()).collect::<Vec<_>>(),
    )?)
}

/// One model of the usage mix.
#[derive(Clone, Debug)]
struct MixRow {
    model: String,
    debits: i64,
    /// The quantities priced, per unit kind.
    units: BTreeMap<String, u64>,
    credits: i64,
    share: f64,
    expected: Option<f64>,
    flagged: bool,
}

#[allow(clippy::cast_precision_loss)] // Shares are statistics, not money.
fn percent(part: i64, whole: i64) -> f64 {
    if whole == 0 { 0.0 } else { (part as f64) * 100.0 / (whole as f64) }
}

fn usage_mix(
    models: &DataFrame,
    units: &BTreeMap<String, BTreeMap<String, u64>>,
    expected: &BTreeMap<String, f64>,
    tolerance: f64,
    total: i64,
) -> Result<Vec<MixRow>, ReportError> {
    let names = frames::strings(models, "model")?;
    let debits = frames::ints(models, "debits")?;
    let credits = frames::ints(models, "credits")?;
    let mut rows: Vec<MixRow> = names
        .into_iter()
        .zip(debits)
        .zip(credits)
        .map(|((model, debits), credits)| {
            let model = model.unwrap_or_default();
            let credits = credits.unwrap_or(0);
            let share = percent(credits, total);
            let expected_share = expected.get(&model).copied();
            let flagged = !expected.is_empty() && (share - expected_share.unwrap_or(0.0)).abs() > tolerance;
            let units = units.get(&model).cloned().unwrap_or_default();
            MixRow { model, debits: debits.unwrap_or(0), units, credits, share, expected: expected_share, flagged }
        })
        .collect();
    // Expected models with no usage at all are deviations too.
    for (model, share) in expected {
        if !rows.iter().any(|row| &row.model == model) {
            rows.push(MixRow {
                model: model.clone(),
                debits: 0,
                units: BTreeMap::new(),
                credits: 0,
                share: 0.0,
                expected: Some(*share),
                flagged: *share > tolerance,
            });
        }
    }
    Ok(rows)
}

/// One of the top spenders.
#[derive(Clone, Debug)]
struct SpenderRow {
    account_id: String,
    debits: i64,
    spent: i64,
    share: f64,
    average_7d: i64,
    ratio: Option<f64>,
}

#[allow(clippy::cast_precision_loss)] // A ratio, not money.
fn spender_rows(
    spenders: &DataFrame,
    week: &BTreeMap<String, i64>,
    total: i64,
) -> Result<Vec<SpenderRow>, ReportError> {
    let accounts = frames::strings(spenders, "account_id")?;
    let debits = frames::ints(spenders, "debits")?;
    let spent = frames::ints(spenders, "spent")?;
    Ok(accounts
        .into_iter()
        .zip(debits)
        .zip(spent)
        .map(|((account, debits), spent)| {
            let account_id = account.unwrap_or_default();
            let spent = spent.unwrap_or(0);
            let average_7d = week.get(&account_id).copied().unwrap_or(0) / 7;
            let ratio = (average_7d > 0).then(|| spent as f64 / average_7d as f64);
            SpenderRow {
                share: percent(spent, total),
                account_id,
                debits: debits.unwrap_or(0),
                spent,
                average_7d,
                ratio,
            }
        })
        .collect())
}

/// A sampled usage debit, re-priced.
#[allow(clippy::struct_field_names)] // `repriced` is the figure the table is about.
#[derive(Clone, Debug)]
struct Repriced {
    entry_id: String,
    account_id: String,
    model: Option<String>,
    rate_version: Option<String>,
    /// What it debited, positive.
    recorded: i64,
    /// Its price on the rate card it recorded (`None` when it cannot be priced).
    repriced: Option<i64>,
    /// Why it could not be priced.
    reason: Option<String>,
}

async fn reprice(store: &Store, sample: &[String]) -> Result<Vec<Repriced>, ReportError> {
    let details = store.usage_details(sample).await?;
    let mut cards: HashMap<String, Result<RateCard, String>> = HashMap::new();
    let mut rows = Vec::with_capacity(details.len());
    for detail in details {
        let recorded = detail.amount.checked_neg().ok_or(ReportError::Overflow)?;
        let priced: Result<i64, String> = match (&detail.model, &detail.units, &detail.rate_version) {
            (Some(model), Some(units), Some(version)) => {
                if !cards.contains_key(version) {
                    let card = match store.rate_card_document(version).await? {
                        Some(document) => RateCard::from_toml(&document).map_err(|error| error.to_string()),
                        None => Err(format!("rate card {version} is not stored")),
                    };
                    cards.insert(version.clone(), card);
                }
                match &cards[version] {
                    Ok(card) => card.charge(model, units).map(|charge| charge.amount.get()).map_err(|e| e.to_string()),
                    Err(reason) => Err(reason.clone()),
                }
            }
            _ => Err("the debit recorded no model, units or rate card version".to_owned()),
        };
        let (repriced, reason) = match priced {
            Ok(amount) => (Some(amount), None),
            Err(reason) => (None, Some(reason)),
        };
        rows.push(Repriced {
            entry_id: detail.entry_id,
            account_id: detail.account_id,
            model: detail.model,
            rate_version: detail.rate_version,
            recorded,
            repriced,
            reason,
        });
    }
    Ok(rows)
}

fn table_of(title: &str, note: &str, frame: &DataFrame) -> Result<Table, ReportError> {
    let names: Vec<String> = frame.get_column_names().iter().map(ToString::to_string).collect();
    let mut rows = vec![names.clone()];
    for index in 0..frame.height() {
        let mut cells = Vec::with_capacity(names.len());
        for name in &names {
            let value = frame.column(name)?.get(index)?;
            cells.push(match value {
                AnyValue::Null => String::new(),
                AnyValue::String(text) => text.to_owned(),
                AnyValue::StringOwned(text) => text.to_string(),
                AnyValue::Float64(number) => format!("{number:.2}"),
                other => other.to_string(),
            });
        }
        rows.push(cells);
    }
    Ok(Table { title: title.to_owned(), note: note.to_owned(), rows })
}

fn email(
    deps: &ReportDeps,
    title: &str,
    passed: bool,
    html: &str,
    png: &[u8],
    files: &[ReportFile],
) -> Result<Message, ReportError> {
    let bad = |error: &dyn std::fmt::Display| ReportError::Email(error.to_string());
    let subject = format!("{title}: {}", if passed { "all checks passed" } else { "CHECKS FAILED" });
    let text = format!(
        "{subject}\n\nThe report is in the HTML part of this email; every table is attached as CSV, with the summary \
         as JSON.\n"
    );
    let image_type = ContentType::parse("image/png").map_err(|e| bad(&e))?;
    let related = MultiPart::related()
        .singlepart(SinglePart::html(html.to_owned()))
        .singlepart(Attachment::new_inline(CHART_CID.to_owned()).body(png.to_vec(), image_type));
    let body = MultiPart::alternative().singlepart(SinglePart::plain(text)).multipart(related);
    let mut mixed = MultiPart::mixed().multipart(body);
    for file in files.iter().filter(|file| file.content_type == "text/csv" || file.content_type == "application/json") {
        let kind = ContentType::parse(&file.content_type).map_err(|e| bad(&e))?;
        mixed = mixed.singlepart(Attachment::new(file.name.clone()).body(file.body.clone(), kind));
    }
    let mut builder = Message::builder().from(deps.from.clone()).subject(subject);
    for recipient in &deps.settings.recipients {
        builder = builder.to(recipient.clone());
    }
    builder.multipart(mixed).map_err(|e| bad(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_stable_for_a_date_and_differs_between_dates() {
        assert_eq!(sample_rank("2026-11-23", "ent_1"), sample_rank("2026-11-23", "ent_1"));
        assert_ne!(sample_rank("2026-11-23", "ent_1"), sample_rank("2026-11-24", "ent_1"));
        assert_ne!(sample_rank("2026-11-23", "ent_1"), sample_rank("2026-11-23", "ent_2"));
    }

    #[test]
    fn mix_flags_models_off_their_expected_share() {
        let models = df!("model" => ["a", "b"], "debits" => [3i64, 1], "credits" => [700i64, 300]).expect("frame");
        let expected = BTreeMap::from([("a".to_owned(), 50.0), ("b".to_owned(), 45.0), ("c".to_owned(), 5.0)]);
        let rows = usage_mix(&models, &BTreeMap::new(), &expected, 10.0, 1_000).expect("mix");
        let flags: Vec<(&str, bool)> = rows.iter().map(|row| (row.model.as_str(), row.flagged)).collect();
        // a: 70% vs 50% (flagged); b: 30% vs 45% (flagged); c: 0% vs 5% (within 10 points).
        assert_eq!(flags, [("a", true), ("b", true), ("c", false)]);
        let none = usage_mix(&models, &BTreeMap::new(), &BTreeMap::new(), 10.0, 1_000).expect("mix");
        assert!(none.iter().all(|row| !row.flagged));
    }
}
