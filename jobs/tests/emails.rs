//! The low-balance email, driven directly from the outbox row a crossing debit wrote: sent once as a multipart
//! message through the file transport (the embedded default), not at all without an address.

use std::sync::Arc;

use creditflow_domain::{AccountId, AccountSettings, EntryKind, Millicredits, Overdraft, Posting, RateVersion};
use creditflow_jobs::emails::{EmailDeps, EmailJob, Emailed, Mailer, send_email};
use creditflow_store::{EMAILS_QUEUE, Store};
use creditflow_testkit::{TestBackend, TestDatabase};

fn debit(account: &AccountId, key: &str, amount: i64) -> Posting {
    Posting {
        account_id: account.clone(),
        kind: EntryKind::UsageDebit,
        amount: Millicredits::new(-amount),
        idempotency_key: key.into(),
        correlation_id: None,
        rate_version: Some(RateVersion::new("v1").expect("valid")),
        source_ref: None,
        reason: None,
        overdraft: Overdraft::Forbid,
        spend_cap: None,
        usage: None,
    }
}

async fn queued_email(store: &Store) -> EmailJob {
    let outbox = store.unrelayed_outbox(10).await.expect("outbox");
    let message = outbox.into_iter().find(|m| m.queue == EMAILS_QUEUE).expect("an email job was queued");
    serde_json::from_str(&message.payload).expect("an EmailJob")
}

#[tokio::test]
async fn a_low_balance_email_is_written_once_with_text_and_html() {
    let database = TestDatabase::new(TestBackend::Sqlite).await;
    let store = Store::connect(&database.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let account = AccountId::new("ada").expect("valid");
    store.create_account(&account).await.expect("create");
    let credit = Posting {
        kind: EntryKind::PurchaseCredit,
        amount: Millicredits::new(10_000),
        rate_version: None,
        ..debit(&account, "fund", 0)
    };
    store.post(&credit).await.expect("funded");
    let settings = AccountSettings {
        email: Some("ada@example.com".into()),
        low_balance_threshold: Some(Millicredits::new(5_000)),
        ..AccountSettings::default()
    };
    store.put_settings(&account, &settings).await.expect("settings");
    store.post(&debit(&account, "d1", 6_500)).await.expect("debited");

    let folder = tempfile::tempdir().expect("tempdir");
    let deps = EmailDeps {
        store: store.clone(),
        mailer: Arc::new(Mailer::outbox(folder.path().to_path_buf()).expect("outbox")),
        from: "creditflow <billing@creditflow.test>".parse().expect("mailbox"),
    };
    let job = queued_email(&store).await;
    // Two deliveries of the job at once (two relays pushed it) still send one email.
    let (first, second) = tokio::join!(send_email(&job, &deps), send_email(&job, &deps));
    let mut results = [first.expect("ok"), second.expect("ok")];
    results.sort_by_key(|emailed| format!("{emailed:?}"));
    assert_eq!(results, [Emailed::AlreadySent, Emailed::Sent]);
    assert_eq!(send_email(&job, &deps).await.expect("again"), Emailed::AlreadySent, "a redelivered job sends nothing");
    let files: Vec<_> = std::fs::read_dir(folder.path()).expect("folder").map(|e| e.expect("entry").path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let eml = std::fs::read_to_string(&files[0]).expect("eml");
    assert!(eml.contains("To: ada@example.com"), "{eml}");
    assert!(eml.contains("Subject: Your balance is low: 3.500 credits"), "{eml}");
    assert!(eml.contains("multipart/alternative") && eml.contains("text/plain") && eml.contains("text/html"), "{eml}");
    assert!(eml.contains("below the 5.000 credits"), "{eml}");
    assert!(!eml.contains("\\n"), "real line breaks, not backslash-n: {eml}");

    // Without an address there is nothing to send.
    store.put_settings(&account, &AccountSettings { email: None, ..settings }).await.expect("settings");
    let other = serde_json::from_str::<EmailJob>(
        r#"{"kind":"low_balance_email","version":1,"accountId":"ada","entryId":"ent_x","balanceMillicredits":1,"thresholdMillicredits":5}"#,
    )
    .expect("the wire shape parses");
    assert_eq!(send_email(&other, &deps).await.expect("ok"), Emailed::NoAddress);
}

#[tokio::test]
async fn a_low_balance_email_arrives_over_smtp_in_maildev() {
    let smtp = std::env::var("CREDITFLOW_TEST_SMTP_URL").unwrap_or_else(|_| "smtp://127.0.0.1:1025".into());
    let maildev = std::env::var("CREDITFLOW_TEST_MAILDEV_URL").unwrap_or_else(|_| "http://127.0.0.1:1080".into());
    let database = TestDatabase::new(TestBackend::Postgres).await;
    let store = Store::connect(&database.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let account = AccountId::new("grace").expect("valid");
    store.create_account(&account).await.expect("create");
    // A recipient of its own, so concurrent test runs never read each other's mail.
    let address = format!("grace-{}@example.com", uuid::Uuid::new_v4().simple());
    let settings = AccountSettings {
        email: Some(address.clone()),
        low_balance_threshold: Some(Millicredits::new(5_000)),
        ..AccountSettings::default()
    };
    store.put_settings(&account, &settings).await.expect("settings");
    let credit = Posting {
        kind: EntryKind::PurchaseCredit,
        amount: Millicredits::new(6_000),
        rate_version: None,
        ..debit(&account, "fund", 0)
    };
    store.post(&credit).await.expect("funded");
    store.post(&debit(&account, "d1", 2_000)).await.expect("debited");
    let deps = EmailDeps {
        store: store.clone(),
        mailer: Arc::new(Mailer::smtp(&smtp).expect("smtp url")),
        from: "creditflow <billing@creditflow.test>".parse().expect("mailbox"),
    };
    let job = queued_email(&store).await;
    let sent = send_email(&job, &deps).await.unwrap_or_else(|error| {
        panic!("cannot send through {smtp} ({error:?}); run scripts/test, which starts maildev")
    });
    assert_eq!(sent, Emailed::Sent);
    assert_eq!(send_email(&job, &deps).await.expect("again"), Emailed::AlreadySent);

    let inbox: Vec<serde_json::Value> =
        reqwest::get(format!("{maildev}/api/email")).await.expect("maildev answers").json().await.expect("json");
    let mine: Vec<&serde_json::Value> =
        inbox.iter().filter(|email| email["to"][0]["address"].as_str() == Some(address.as_str())).collect();
    assert_eq!(mine.len(), 1, "exactly one email for one crossing");
    assert_eq!(mine[0]["subject"], "Your balance is low: 4.000 credits");
    assert!(mine[0]["text"].as_str().is_some_and(|text| text.contains("below the 5.000 credits")), "{}", mine[0]);
    assert!(
        mine[0]["html"].as_str().is_some_and(|html| html.contains("<strong>4.000 credits</strong>")),
        "{}",
        mine[0]
    );
}

#[tokio::test]
async fn the_autoreload_disabled_email_names_the_failure_and_escapes_it() {
    let database = TestDatabase::new(TestBackend::Sqlite).await;
    let store = Store::connect(&database.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let account = AccountId::new("lin").expect("valid");
    store.create_account(&account).await.expect("create");
    let settings = AccountSettings { email: Some("lin@example.com".into()), ..AccountSettings::default() };
    store.put_settings(&account, &settings).await.expect("settings");
    let folder = tempfile::tempdir().expect("tempdir");
    let deps = EmailDeps {
        store: store.clone(),
        mailer: Arc::new(Mailer::outbox(folder.path().to_path_buf()).expect("outbox")),
        from: "creditflow <billing@creditflow.test>".parse().expect("mailbox"),
    };
    let job: EmailJob = serde_json::from_value(serde_json::json!({
        "kind": "autoreload_disabled_email", "accountId": "lin", "reloadId": "ar_1",
        "reason": "the card was declined: <generic_decline>",
    }))
    .expect("the wire shape parses");
    assert_eq!(send_email(&job, &deps).await.expect("sent"), Emailed::Sent);
    assert_eq!(send_email(&job, &deps).await.expect("again"), Emailed::AlreadySent);
    let files: Vec<_> = std::fs::read_dir(folder.path()).expect("folder").map(|e| e.expect("entry").path()).collect();
    let eml = std::fs::read_to_string(&files[0]).expect("eml");
    assert!(eml.contains("Subject: Autoreload is off"), "{eml}");
    assert!(eml.contains("declined: <generic_decline>"), "the text part as written: {eml}");
    assert!(eml.contains("&lt;generic_decline&gt;"), "the HTML part escaped: {eml}");
}

#[tokio::test]
async fn a_scheduled_rate_card_is_announced_once_to_each_covered_customer() {
    let database = TestDatabase::new(TestBackend::Postgres).await;
    let store = Store::connect(&database.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    for (name, email) in [("early", Some("early@example.com")), ("late", Some("late@example.com")), ("mute", None)] {
        let account = AccountId::new(name).expect("valid");
        store.create_account(&account).await.expect("create");
        let settings = AccountSettings { email: email.map(str::to_owned), ..AccountSettings::default() };
        store.put_settings(&account, &settings).await.expect("settings");
    }
    let document = "version = \"v2\"\nrounding = \"ceil\"\n[models.m1]\ninput_tokens = \"0.002\"\n";
    let card = creditflow_domain::RateCard::from_toml(document).expect("card");
    store.add_rate_card(&card, document).await.expect("card stored");
    let audit = creditflow_store::NewAuditRecord {
        actor: "ops".into(),
        action: "rate_card.rollout".into(),
        subject: "v2".into(),
        reason: None,
        details: "{}".into(),
    };
    // Effective now: nothing to announce. Tomorrow, for the allowlisted `early` and `mute` only (0% by bucket).
    let now = time::OffsetDateTime::now_utc();
    store.activate_rate_card(card.version(), now, &audit).await.expect("activated");
    assert!(store.unrelayed_outbox(10).await.expect("outbox").iter().all(|m| m.queue != EMAILS_QUEUE));
    let rollout = creditflow_store::Rollout {
        percentage: 0,
        allowlist: vec![AccountId::new("early").expect("valid"), AccountId::new("mute").expect("valid")],
    };
    let tomorrow = now + time::Duration::DAY;
    store.roll_out_rate_card(card.version(), tomorrow, &rollout, &audit).await.expect("scheduled");

    let folder = tempfile::tempdir().expect("tempdir");
    let deps = EmailDeps {
        store: store.clone(),
        mailer: Arc::new(Mailer::outbox(folder.path().to_path_buf()).expect("outbox")),
        from: "creditflow <billing@creditflow.test>".parse().expect("mailbox"),
    };
    let fan_out = queued_email(&store).await;
    assert!(matches!(fan_out, EmailJob::RateCardNotices(_)), "{fan_out:?}");
    assert_eq!(
        send_email(&fan_out, &deps).await.expect("queued"),
        Emailed::Queued(1),
        "early only: mute has no address"
    );
    assert_eq!(send_email(&fan_out, &deps).await.expect("again"), Emailed::Queued(1));
    let outbox = store.unrelayed_outbox(10).await.expect("outbox");
    let notices: Vec<EmailJob> = outbox
        .iter()
        .filter(|m| m.queue == EMAILS_QUEUE && m.payload.contains("rate_card_notice_email"))
        .map(|m| serde_json::from_str(&m.payload).expect("job"))
        .collect();
    assert_eq!(notices.len(), 1, "queued once however often the fan-out runs");
    assert_eq!(send_email(&notices[0], &deps).await.expect("sent"), Emailed::Sent);
    assert_eq!(send_email(&notices[0], &deps).await.expect("again"), Emailed::AlreadySent);
    let files: Vec<_> = std::fs::read_dir(folder.path()).expect("folder").map(|e| e.expect("entry").path()).collect();
    let eml = std::fs::read_to_string(&files[0]).expect("eml");
    assert!(eml.contains("To: early@example.com"), "{eml}");
    assert!(eml.contains("Subject: New prices from"), "{eml}");
    assert!(eml.contains("<strong>v2</strong>"), "{eml}");
}
