//! The nightly report on a generated day with known purchases (real charges through a localstripe of the test's
//! own), usage on several models, a refund and adjustments: every figure of the summary equals the one computed
//! here; a corrupted balance, a debit priced with the wrong rate and a Stripe charge without a purchase each fail
//! their check and are named; the email reaches maildev with its chart and CSVs, once however often the job runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use creditflow_domain::{
    AccountId, EntryKind, Millicredits, Overdraft, Posting, PostingOutcome, RateCard, RateVersion, UsageRecord,
};
use creditflow_jobs::emails::Mailer;
use creditflow_jobs::reports::BuildReportV1;
use creditflow_payments::{OffSessionCharge, Stripe};
use creditflow_reports::{Emailed, ReportDeps, ReportSettings, RunOptions, run_report};
use creditflow_store::{NewAuditRecord, Purchase, PurchaseStatus, Store};
use creditflow_testkit::{OwnLocalstripe, TestBackend, TestDatabase};
use serde_json::Value;

const CARD: &str = include_str!("../../config/rate-cards/v1.toml");
const KEY: &str = "sk_test_creditflow";

fn account(id: &str) -> AccountId {
    AccountId::new(id).expect("valid account id")
}

fn posting(account_id: &str, kind: EntryKind, amount: i64, key: &str) -> Posting {
    Posting {
        account_id: account(account_id),
        kind,
        amount: Millicredits::new(amount),
        idempotency_key: key.to_owned(),
        correlation_id: None,
        rate_version: None,
        source_ref: None,
        reason: None,
        overdraft: Overdraft::Allow,
        spend_cap: None,
        usage: None,
    }
}

async fn post(store: &Store, posting: &Posting) -> creditflow_domain::Entry {
    match store.post(posting).await.expect("posted") {
        PostingOutcome::Created(entry) => entry,
        other => panic!("{other:?}"),
    }
}

/// What the test knows about the day it generated.
#[derive(Debug, Default)]
struct Known {
    purchased: i64,
    autoreloaded: i64,
    adjustments_in: i64,
    adjustments_out: i64,
    usage: i64,
    refunds: i64,
    entries: i64,
    payments_cents: i64,
    payments: i64,
    /// Per model: debits and credits.
    models: BTreeMap<String, (i64, i64)>,
    /// Per model: the quantities priced, per unit kind.
    units: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per account: usage.
    spenders: BTreeMap<String, (i64, i64)>,
    usage_entries: Vec<String>,
}

struct World {
    database: TestDatabase,
    stripe_server: OwnLocalstripe,
    store: Store,
    stripe: Stripe,
    card: RateCard,
    known: Known,
    customers: HashMap<String, String>,
}

/// Waits out the last seconds of a UTC day, so the generated day is one day.
async fn not_at_midnight() {
    let now = time::OffsetDateTime::now_utc();
    let left = 86_400 - i64::from(now.hour()) * 3_600 - i64::from(now.minute()) * 60 - i64::from(now.second());
    if left < 90 {
        tokio::time::sleep(std::time::Duration::from_secs(u64::try_from(left + 2).unwrap_or(92))).await;
    }
}

impl World {
    async fn new(backend: TestBackend) -> Self {
        not_at_midnight().await;
        let database = TestDatabase::new(backend).await;
        let store = Store::connect(&database.url, 4).await.expect("connect");
        store.migrate().await.expect("migrate");
        let card = RateCard::from_toml(CARD).expect("card");
        store.add_rate_card(&card, CARD).await.expect("card stored");
        let audit = NewAuditRecord {
            actor: "test".into(),
            action: "rate_card.activate".into(),
            subject: "v1".into(),
            reason: None,
            details: "{}".into(),
        };
        let since = time::OffsetDateTime::now_utc() - time::Duration::days(40);
        store.activate_rate_card(card.version(), since, &audit).await.expect("activated");
        let server = OwnLocalstripe::start();
        let stripe = Stripe::new(KEY, Some(&server.url)).expect("stripe client");
        let world = Self {
            database,
            stripe_server: server,
            store,
            stripe,
            card,
            known: Known::default(),
            customers: HashMap::new(),
        };
        for id in ["acct_ada", "acct_bob", "acct_cy"] {
            world.store.create_account(&account(id)).await.expect("account");
        }
        world
    }

    /// A real charge through localstripe for `account_id`; its PaymentIntent.
    async fn charge(&mut self, account_id: &str, cents: i64, key: &str) -> String {
        if !self.customers.contains_key(account_id) {
            let customer = self.stripe.create_customer(account_id, None).await.expect("customer");
            let url = format!("{}/v1/payment_methods/pm_card_visa/attach", self.stripe_server.url);
            let attached = reqwest::Client::new()
                .post(url)
                .basic_auth(KEY, Some(""))
                .form(&[("customer", customer.as_str())])
                .send()
                .await
                .expect("attach");
            assert!(attached.status().is_success());
            self.customers.insert(account_id.to_owned(), customer);
        }
        let customer = self.customers[account_id].clone();
        let metadata = HashMap::from([("creditflow_account_id".to_owned(), account_id.to_owned())]);
        match self.stripe.charge_off_session(&customer, cents, metadata, key).await.expect("charged") {
            OffSessionCharge::Succeeded(intent) => intent,
            other @ OffSessionCharge::Processing(_) => panic!("{other:?}"),
        }
    }

    /// A paid purchase, credited as fulfilment credits it.
    async fn purchase(&mut self, account_id: &str, cents: i64, grant: i64, kind: EntryKind) {
        let intent = self.charge(account_id, cents, &format!("buy-{account_id}-{cents}-{grant}")).await;
        let credit = Posting {
            source_ref: Some(intent.clone()),
            ..posting(account_id, kind, grant, &format!("payment:{intent}"))
        };
        let entry = post(&self.store, &credit).await;
        let record = Purchase {
            payment_intent_id: intent,
            account_id: account(account_id),
            pack_id: "starter".into(),
            amount_usd_cents: cents,
            currency: "usd".into(),
            status: PurchaseStatus::Succeeded,
            ledger_entry_id: Some(entry.id),
            last_error: None,
        };
        self.store.record_purchase(&record).await.expect("purchase recorded");
        match kind {
            EntryKind::AutoreloadCredit => self.known.autoreloaded += grant,
            _ => self.known.purchased += grant,
        }
        self.known.payments += 1;
        self.known.payments_cents += cents;
        self.known.entries += 1;
    }

    /// A usage debit priced by the card, plus `overcharge` millicredits (0 for an honest one); its entry id.
    async fn usage(&mut self, account_id: &str, model: &str, units: &[(&str, u64)], overcharge: i64) -> String {
        let units: BTreeMap<String, u64> = units.iter().map(|(unit, n)| ((*unit).to_owned(), *n)).collect();
        let price = self.card.charge(model, &units).expect("priced").amount.get() + overcharge;
        for (unit, quantity) in &units {
            *self.known.units.entry(model.to_owned()).or_default().entry(unit.clone()).or_default() += quantity;
        }
        let key = format!("use-{}", self.known.entries);
        let debit = Posting {
            rate_version: Some(RateVersion::new("v1").expect("version")),
            usage: Some(UsageRecord { model: model.to_owned(), units }),
            overdraft: Overdraft::Forbid,
            ..posting(account_id, EntryKind::UsageDebit, -price, &key)
        };
        let entry = post(&self.store, &debit).await;
        self.known.usage += price;
        self.known.entries += 1;
        let by_model = self.known.models.entry(model.to_owned()).or_default();
        *by_model = (by_model.0 + 1, by_model.1 + price);
        let by_account = self.known.spenders.entry(account_id.to_owned()).or_default();
        *by_account = (by_account.0 + 1, by_account.1 + price);
        self.known.usage_entries.push(entry.id.clone());
        entry.id
    }

    async fn refund(&mut self, account_id: &str, amount: i64) {
        post(&self.store, &posting(account_id, EntryKind::RefundDebit, -amount, "refund-1")).await;
        self.known.refunds += amount;
        self.known.entries += 1;
    }

    async fn adjust(&mut self, account_id: &str, amount: i64, key: &str) {
        let adjustment =
            Posting { reason: Some("goodwill".into()), ..posting(account_id, EntryKind::Adjustment, amount, key) };
        post(&self.store, &adjustment).await;
        if amount > 0 {
            self.known.adjustments_in += amount;
        } else {
            self.known.adjustments_out -= amount;
        }
        self.known.entries += 1;
    }

    /// The generated day: three payments (one an autoreload), usage on four models, a refund, two adjustments.
    async fn generate(&mut self) {
        self.purchase("acct_ada", 500, 5_000_000, EntryKind::PurchaseCredit).await;
        self.purchase("acct_bob", 2_000, 20_000_000, EntryKind::PurchaseCredit).await;
        self.purchase("acct_cy", 500, 5_000_000, EntryKind::AutoreloadCredit).await;
        self.usage("acct_ada", "gpt-4o", &[("input_tokens", 1_200), ("output_tokens", 340)], 0).await;
        self.usage("acct_ada", "gpt-4o-mini", &[("input_tokens", 50_000)], 0).await;
        self.usage("acct_bob", "image-gen-1", &[("images", 3)], 0).await;
        self.usage("acct_bob", "gpt-4o", &[("input_tokens", 90_000), ("output_tokens", 12_000)], 0).await;
        self.usage("acct_bob", "whisper-1", &[("seconds", 125)], 0).await;
        self.usage("acct_cy", "gpt-4o-mini", &[("input_tokens", 7), ("output_tokens", 3)], 0).await;
        self.usage("acct_cy", "image-gen-1", &[("images", 1)], 0).await;
        self.refund("acct_bob", 1_000_000).await;
        self.adjust("acct_ada", 250_000, "adj-1").await;
        self.adjust("acct_cy", -100_000, "adj-2").await;
    }

    fn deps(&self, settings: ReportSettings) -> ReportDeps {
        let outbox = std::env::temp_dir().join(format!("cf-report-outbox-{}", uuid::Uuid::new_v4().simple()));
        ReportDeps {
            store: self.store.clone(),
            stripe: Some(self.stripe.clone()),
            mailer: Arc::new(Mailer::outbox(outbox).expect("outbox")),
            from: "creditflow <billing@creditflow.test>".parse().expect("mailbox"),
            settings,
        }
    }

    fn expected_mix(&self) -> BTreeMap<String, f64> {
        self.known
            .models
            .iter()
            .map(|(model, (_, credits))| (model.clone(), share(*credits, self.known.usage)))
            .collect()
    }
}

#[allow(clippy::cast_precision_loss)]
fn share(part: i64, whole: i64) -> f64 {
    part as f64 * 100.0 / whole as f64
}

fn today() -> chrono::NaiveDate {
    let now = time::OffsetDateTime::now_utc();
    chrono::NaiveDate::from_ymd_opt(now.year(), u32::from(u8::from(now.month())), u32::from(now.day())).expect("date")
}

async fn report(deps: &ReportDeps) -> creditflow_reports::Built {
    run_report(today(), &RunOptions::default(), deps, &|_| {}).await.expect("report")
}

fn check<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["checks"].as_array().expect("checks").iter().find(|c| c["name"] == name).expect(name)
}

/// The mix's CSV has a column per unit kind, empty where a model does not price it.
async fn mix_csv_has_a_column_per_unit(store: &Store, date: &str) {
    let mix_csv = store.report_file(date, "usage_mix.csv").await.expect("read").expect("file");
    let text = String::from_utf8(mix_csv.body).expect("utf-8");
    let header: Vec<&str> = text.lines().next().expect("header").split(',').collect();
    for unit in ["units_images", "units_input_tokens", "units_output_tokens", "units_seconds"] {
        assert!(header.contains(&unit), "{unit} in {header:?}");
    }
    let whisper = text.lines().find(|line| line.starts_with("whisper-1,")).expect("whisper row");
    let column = |name: &str| header.iter().position(|h| *h == name).expect("column");
    let cells: Vec<&str> = whisper.split(',').collect();
    assert_eq!((cells[column("units_seconds")], cells[column("units_images")]), ("125", ""), "{whisper}");
}

async fn every_figure_equals_the_one_computed_here(backend: TestBackend) {
    let mut world = World::new(backend).await;
    world.generate().await;
    let settings = ReportSettings { expected_mix: world.expected_mix(), ..ReportSettings::default() };
    let built = report(&world.deps(settings)).await;
    let summary = &built.summary;
    let known = &world.known;
    assert!(built.passed, "{summary:#}");
    for name in ["purchases_vs_stripe", "liability", "series_30d", "usage_mix", "cost_coverage"] {
        assert_eq!(check(summary, name)["status"], "pass", "{name}: {summary:#}");
    }

    let purchases = &summary["purchases"];
    assert_eq!(purchases["count"], known.payments);
    assert_eq!(purchases["usdCents"], known.payments_cents);
    assert_eq!(purchases["stripeCount"], known.payments);
    assert_eq!(purchases["stripeGrossCents"], known.payments_cents);
    assert_eq!(purchases["driftCents"], 0);

    let granted = known.purchased + known.autoreloaded + known.adjustments_in;
    let debited = known.usage + known.refunds + known.adjustments_out;
    let credits = &summary["credits"];
    assert_eq!(credits["entries"], known.entries);
    assert_eq!(credits["grantedMillicredits"], granted);
    assert_eq!(credits["purchasedMillicredits"], known.purchased);
    assert_eq!(credits["autoreloadedMillicredits"], known.autoreloaded);
    assert_eq!(credits["adjustmentsInMillicredits"], known.adjustments_in);
    assert_eq!(credits["debitedMillicredits"], debited);
    assert_eq!(credits["usageMillicredits"], known.usage);
    assert_eq!(credits["refundsMillicredits"], known.refunds);
    assert_eq!(credits["adjustmentsOutMillicredits"], known.adjustments_out);
    assert_eq!(credits["netMillicredits"], granted - debited);

    // A fresh ledger: the liability is the day's net.
    let liability = &summary["liability"];
    let closing = granted - debited;
    assert_eq!(liability["openingMillicredits"], 0);
    assert_eq!(liability["closingMillicredits"], closing);
    assert_eq!(liability["closingUsd"], format!("{}.{:06}", closing / 1_000_000, closing % 1_000_000));
    assert_eq!(liability["balancesMillicredits"], closing);
    assert_eq!(liability["driftMillicredits"], 0);

    let series = &summary["series"];
    assert_eq!(series["days"], 30);
    assert_eq!(series["purchasedMillicredits"], known.purchased + known.autoreloaded);
    assert_eq!(series["debitedMillicredits"], debited);

    let mix = summary["usageMix"].as_array().expect("mix");
    assert_eq!(mix.len(), known.models.len());
    for row in mix {
        let model = row["model"].as_str().expect("model");
        let (debits, credits) = known.models[model];
        assert_eq!(
            (row["debits"].as_i64(), row["creditsMillicredits"].as_i64()),
            (Some(debits), Some(credits)),
            "{model}"
        );
        assert_eq!(row["units"], serde_json::json!(known.units[model]), "{model}");
        let expected = share(credits, known.usage);
        assert!((row["sharePercent"].as_f64().expect("share") - expected).abs() < 1e-9, "{row}");
        assert_eq!(row["flagged"], false);
    }

    let mut spenders: Vec<(&String, &(i64, i64))> = known.spenders.iter().collect();
    spenders.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(b.0)));
    let top = summary["topSpenders"].as_array().expect("spenders");
    assert_eq!(top.len(), spenders.len());
    for (row, (account_id, (debits, spent))) in top.iter().zip(spenders) {
        assert_eq!(row["accountId"], account_id.as_str());
        assert_eq!((row["debits"].as_i64(), row["spentMillicredits"].as_i64()), (Some(*debits), Some(*spent)));
        assert!((row["sharePercent"].as_f64().expect("share") - share(*spent, known.usage)).abs() < 1e-9);
        // Nothing was spent in the week before: no average to compare with.
        assert_eq!((row["average7dMillicredits"].as_i64(), row["ratioTo7dAverage"].is_null()), (Some(0), true));
    }

    let coverage = &summary["costCoverage"];
    assert_eq!(coverage["usageDebits"], known.usage_entries.len());
    assert_eq!(coverage["sampled"], known.usage_entries.len());
    assert_eq!(coverage["mismatches"].as_array().map(Vec::len), Some(0));

    // Stored with its files, and announced once.
    let stored = world.store.report(&built.date).await.expect("read").expect("stored");
    assert!(stored.passed);
    let names: Vec<&str> = stored.files.iter().map(|(name, _, _)| name.as_str()).collect();
    for name in [
        "summary.json",
        "report.html",
        "chart.png",
        "series_30d.csv",
        "usage_mix.csv",
        "top_spenders.csv",
        "cost_coverage.csv",
        "purchases_vs_stripe.csv",
        "credits_by_kind.csv",
        "balance_disagreements.csv",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    mix_csv_has_a_column_per_unit(&world.store, &built.date).await;
    let series_csv = world.store.report_file(&built.date, "series_30d.csv").await.expect("read").expect("file");
    let text = String::from_utf8(series_csv.body).expect("utf-8");
    let last = text.lines().last().expect("rows");
    assert_eq!(text.lines().count(), 31, "a header and 30 days");
    assert!(last.starts_with(&built.date) && last.contains(&format!(",{closing},0")), "{last}");
}

#[tokio::test]
async fn every_figure_equals_the_one_computed_here_on_sqlite() {
    every_figure_equals_the_one_computed_here(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn every_figure_equals_the_one_computed_here_on_postgres() {
    every_figure_equals_the_one_computed_here(TestBackend::Postgres).await;
}

#[tokio::test]
async fn corrupted_rows_fail_their_checks_and_are_named() {
    let mut world = World::new(TestBackend::Postgres).await;
    world.generate().await;
    // A debit priced with the wrong rate, a charge nobody credited, and a balance that disagrees with its entries.
    let overpriced = world.usage("acct_cy", "gpt-4o", &[("input_tokens", 400)], 3_000).await;
    let orphan = world.charge("acct_ada", 1_500, "orphan-charge").await;
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&world.database.url).await.expect("connect");
    sqlx::query("UPDATE accounts SET balance_millicredits = balance_millicredits + 7 WHERE id = 'acct_bob'")
        .execute(&mut connection)
        .await
        .expect("corrupted");

    let built = report(&world.deps(ReportSettings::default())).await;
    let summary = &built.summary;
    assert!(!built.passed);

    let coverage = check(summary, "cost_coverage");
    assert_eq!(coverage["status"], "fail");
    assert!(coverage["detail"].as_str().expect("detail").contains(&overpriced), "{coverage}");
    let mismatches = summary["costCoverage"]["mismatches"].as_array().expect("mismatches");
    assert_eq!(mismatches.len(), 1);
    let recorded = mismatches[0]["recordedMillicredits"].as_i64().expect("recorded");
    assert_eq!(mismatches[0]["repricedMillicredits"].as_i64(), Some(recorded - 3_000));

    let stripe = check(summary, "purchases_vs_stripe");
    assert_eq!(stripe["status"], "fail");
    assert!(stripe["detail"].as_str().expect("detail").contains(&orphan), "{stripe}");
    assert_eq!(summary["purchases"]["driftCents"], 1_500);
    let unmatched = summary["purchases"]["unmatched"].as_array().expect("unmatched");
    assert_eq!(unmatched.len(), 1);
    assert_eq!(
        (unmatched[0]["paymentIntent"].as_str(), unmatched[0]["status"].as_str()),
        (Some(orphan.as_str()), Some("missing_in_ledger"))
    );

    let liability = check(summary, "liability");
    assert_eq!(liability["status"], "fail");
    assert!(liability["detail"].as_str().expect("detail").contains("acct_bob"), "{liability}");
    assert_eq!(summary["liability"]["driftMillicredits"], -7);
    let disagreeing = summary["liability"]["accountsDisagreeing"].as_array().expect("accounts");
    assert_eq!(disagreeing.len(), 1);
    assert_eq!(disagreeing[0]["accountId"], "acct_bob");

    // The usage mix was not configured: skipped, not failed.
    assert_eq!(check(summary, "usage_mix")["status"], "skipped");
}

#[tokio::test]
async fn the_email_reaches_maildev_once_with_its_chart_and_csvs() {
    let smtp = std::env::var("CREDITFLOW_TEST_SMTP_URL").unwrap_or_else(|_| "smtp://127.0.0.1:1025".into());
    let maildev = std::env::var("CREDITFLOW_TEST_MAILDEV_URL").unwrap_or_else(|_| "http://127.0.0.1:1080".into());
    let mut world = World::new(TestBackend::Postgres).await;
    world.generate().await;
    let address = format!("finance-{}@example.com", uuid::Uuid::new_v4().simple());
    let settings = ReportSettings { recipients: vec![address.parse().expect("mailbox")], ..ReportSettings::default() };
    let deps = ReportDeps { mailer: Arc::new(Mailer::smtp(&smtp).expect("smtp")), ..world.deps(settings) };

    // The scheduled job, delivered twice: one email.
    let job = BuildReportV1 { date: today().format("%Y-%m-%d").to_string(), force: false, request: None };
    let first = creditflow_reports::job::build_report(&job, &deps).await.expect("first run");
    let second = creditflow_reports::job::build_report(&job, &deps).await.expect("second run");
    assert_eq!((first.emailed, second.emailed), (Emailed::Sent, Emailed::AlreadySent));

    let inbox: Vec<Value> =
        reqwest::get(format!("{maildev}/api/email")).await.expect("maildev").json().await.expect("json");
    let mine: Vec<&Value> = inbox.iter().filter(|email| email["to"][0]["address"] == address.as_str()).collect();
    assert_eq!(mine.len(), 1, "one email for two runs");
    let email = mine[0];
    let subject = email["subject"].as_str().expect("subject");
    assert!(subject.contains(&job.date) && subject.contains("all checks passed"), "{subject}");
    let html = email["html"].as_str().expect("an HTML body");
    assert!(html.contains("Credits purchased and debited, last 30 days") && html.contains("Top spenders"), "{html}");
    let attachments = email["attachments"].as_array().expect("attachments");
    let chart = attachments.iter().find(|a| a["contentType"] == "image/png").expect("the chart");
    assert_eq!(chart["contentDisposition"], "inline");
    let cid = chart["contentId"].as_str().expect("inline").trim_matches(|c| c == '<' || c == '>').to_owned();
    let id = email["id"].as_str().expect("id");
    // The HTML part names the inline image by its Content-ID (maildev shows it resolved, as a data URI).
    let source =
        reqwest::get(format!("{maildev}/api/email/{id}/source")).await.expect("source").text().await.expect("text");
    let unfolded = source.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
    assert!(unfolded.contains(&format!("src=\"cid:{cid}\"")), "the HTML shows the chart: {source}");
    assert!(html.contains("<img src=\"data:image/png;base64,"), "maildev resolved the chart: {html}");
    let mut csvs = 0;
    let mut top = String::new();
    for attachment in attachments.iter().filter(|a| a["contentType"] == "text/csv") {
        let name = attachment["filename"].as_str().expect("name");
        let stored = attachment["generatedFileName"].as_str().expect("stored as");
        let body = reqwest::get(format!("{maildev}/api/email/{id}/attachment/{stored}"))
            .await
            .expect("attachment")
            .text()
            .await
            .expect("text");
        if name == "top_spenders.csv" {
            top.clone_from(&body);
        }
        let mut lines = body.lines();
        let columns = lines.next().expect("a header").split(',').count();
        assert!(columns >= 2, "{name}: {body}");
        for line in lines {
            assert_eq!(split_csv(line).len(), columns, "{name}: {line}");
        }
        csvs += 1;
    }
    assert_eq!(csvs, 7, "every table attached");
    assert!(top.lines().nth(1).is_some_and(|row| row.starts_with("acct_bob,")), "{top}");

    // An operator's forced run sends it again.
    let forced = BuildReportV1 { force: true, request: Some("run-2".into()), ..job };
    let third = creditflow_reports::job::build_report(&forced, &deps).await.expect("forced run");
    assert_eq!(third.emailed, Emailed::Sent);
    let stored = world.store.report(&forced.date).await.expect("read").expect("stored");
    assert!(stored.emailed_at.is_some());
}

/// Splits one CSV line (fields may be quoted, with doubled quotes inside).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("field").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().expect("field").push(c),
        }
    }
    fields
}
