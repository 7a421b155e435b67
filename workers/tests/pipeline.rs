//! The pipeline end to end: a stored Stripe event is relayed from the outbox to the queue, a worker credits the
//! purchase once, a permanent failure is not retried, emails and monitoring webhooks go out, a usage batch is
//! debited, and shutdown is graceful; with the ledger on each backend and the queue on SQLite or Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use creditflow_domain::{
    AccountId, AccountSettings, EntryKind, Millicredits, Overdraft, PackCatalog, Posting, RateCard, RateVersion,
    UsageEvent,
};
use creditflow_jobs::autoreload::AutoreloadDeps;
use creditflow_jobs::emails::{EmailDeps, Mailer};
use creditflow_jobs::scheduled::{AnomalyRule, ScheduledDeps};
use creditflow_jobs::stripe_events::Deps;
use creditflow_jobs::usage_batches::BatchDeps;
use creditflow_jobs::webhooks::{WebhookDeps, WebhookEndpoint, sign};
use creditflow_reports::{Emailed, ReportDeps, ReportSchedule, ReportSettings, ReportZone};
use creditflow_store::{BatchStatus, BatchSubmitted, JobState, NewAuditRecord, ReceivedEvent, Store};
use creditflow_testkit::{TestBackend, TestDatabase, redis_namespace, redis_url};
use creditflow_workers::{Handlers, Queues, WEBHOOKS_QUEUE, WorkerSettings, run};

const SECRET: &str = "monitoring-shared-secret";
const CARD: &str = "version = \"v1\"\nrounding = \"precise\"\n[models.m1]\ncalls = 1\n";

/// A monitoring endpoint that answers `status` and records the types of the events whose signature verifies.
struct Receiver {
    url: String,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
    status: Arc<std::sync::atomic::AtomicU16>,
}

impl Receiver {
    async fn start(status: u16) -> Self {
        use poem::listener::{Acceptor, Listener};
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let answer = Arc::new(std::sync::atomic::AtomicU16::new(status));
        let (record, count, current) = (seen.clone(), attempts.clone(), answer.clone());
        let endpoint = poem::endpoint::make(move |request: poem::Request| {
            let (record, count, current) = (record.clone(), count.clone(), current.clone());
            async move {
                let status = current.load(std::sync::atomic::Ordering::SeqCst);
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let header = request.header("creditflow-signature").unwrap_or("").to_owned();
                let body = request.into_body().into_string().await.unwrap_or_default();
                let timestamp: i64 = header.split(',').find_map(|p| p.strip_prefix("t=")?.parse().ok()).unwrap_or(0);
                if header == sign(SECRET, timestamp, &body) {
                    let event: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    record.lock().expect("lock").push(event["type"].as_str().unwrap_or("").to_owned());
                }
                poem::http::StatusCode::from_u16(status).unwrap_or(poem::http::StatusCode::OK)
            }
        });
        let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind");
        let address = *acceptor.local_addr()[0].as_socket_addr().expect("address");
        tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(endpoint));
        Self { url: format!("http://{address}/hook"), seen, attempts, status: answer }
    }

    /// Answers `status` from now on.
    fn answer(&self, status: u16) {
        self.status.store(status, std::sync::atomic::Ordering::SeqCst);
    }

    fn types(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }

    fn attempts(&self) -> usize {
        self.attempts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn event(id: &str, metadata: &serde_json::Value) -> String {
    serde_json::json!({
        "id": id, "object": "event", "type": "payment_intent.succeeded", "livemode": false,
        "data": {"object": {"id": format!("pi_{id}"), "amount_received": 500, "currency": "usd", "metadata": metadata}}
    })
    .to_string()
}

async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn usage_debit(account: &AccountId, key: &str, millicredits: i64) -> Posting {
    Posting {
        account_id: account.clone(),
        kind: EntryKind::UsageDebit,
        amount: Millicredits::new(-millicredits),
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

/// Asks the workers `run` started to stop, and waits (30 s at most) for them to end cleanly.
async fn stop_workers(
    stop: tokio::sync::oneshot::Sender<()>,
    workers: tokio::task::JoinHandle<Result<(), std::io::Error>>,
) {
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), workers)
        .await
        .expect("stops in time")
        .expect("joined")
        .expect("clean");
}

/// The pools' dependencies: one pack on sale ("starter", 5,000 credits for $5), mail to `mail_folder`, monitoring
/// events to `endpoints`, no Stripe.
fn handlers(store: &Store, mail_folder: &std::path::Path, endpoints: Vec<WebhookEndpoint>) -> Handlers {
    let packs = PackCatalog::from_toml(
        "[[packs]]\nid = \"starter\"\nname = \"Starter\"\nprice_usd_cents = 500\ncredits = 5000\n",
    )
    .expect("packs");
    let stripe = Deps { store: store.clone(), packs: Arc::new(packs), freeze_on_dispute: true };
    Handlers {
        stripe: stripe.clone(),
        email: EmailDeps {
            store: store.clone(),
            mailer: Arc::new(Mailer::outbox(mail_folder.to_path_buf()).expect("outbox")),
            from: "creditflow <billing@creditflow.test>".parse().expect("mailbox"),
        },
        webhooks: WebhookDeps::new(endpoints).expect("client"),
        batches: BatchDeps { store: store.clone() },
        autoreload: AutoreloadDeps {
            fulfilment: stripe,
            stripe: None,
            failures_before_disabling: creditflow_jobs::autoreload::FAILURES_BEFORE_DISABLING,
            claim_lease: creditflow_jobs::autoreload::CLAIM_LEASE,
        },
        scheduled: ScheduledDeps { store: store.clone(), anomaly: AnomalyRule::default() },
        reports: report_deps(store, mail_folder, Vec::new()),
    }
}

/// The report's dependencies: mail to `mail_folder` for `recipients`, no Stripe.
fn report_deps(store: &Store, mail_folder: &std::path::Path, recipients: Vec<&str>) -> ReportDeps {
    ReportDeps {
        store: store.clone(),
        stripe: None,
        mailer: Arc::new(Mailer::outbox(mail_folder.to_path_buf()).expect("outbox")),
        from: "creditflow <billing@creditflow.test>".parse().expect("mailbox"),
        settings: ReportSettings {
            recipients: recipients.into_iter().map(|address| address.parse().expect("mailbox")).collect(),
            ..ReportSettings::default()
        },
    }
}

/// Where the test's queue lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueOn {
    Sqlite,
    Redis,
}

async fn pipeline(backend: TestBackend, queue_on: QueueOn) {
    let database = TestDatabase::new(backend).await;
    let store = Store::connect(&database.url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let queues = match queue_on {
        QueueOn::Sqlite => Queues::open(&format!("sqlite://{}", queue_dir.path().join("queue.db").display())).await,
        QueueOn::Redis => Queues::open_in(&redis_url(), &redis_namespace()).await,
    }
    .expect("queue");
    let mail_folder = tempfile::tempdir().expect("tempdir");
    let monitoring = Receiver::start(200).await;
    let broken = Receiver::start(500).await;
    let endpoints = vec![
        WebhookEndpoint { id: "ops".into(), url: monitoring.url.clone(), secret: SECRET.into(), events: vec![] },
        WebhookEndpoint {
            id: "broken".into(),
            url: broken.url.clone(),
            secret: SECRET.into(),
            events: vec!["purchase.succeeded".into()],
        },
    ];
    let handlers = handlers(&store, mail_folder.path(), endpoints);
    let settings = WorkerSettings {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        ..WorkerSettings::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let workers = tokio::spawn(run(store.clone(), handlers, queues.clone(), settings, async move {
        let _ = stopped.await;
    }));

    let good = serde_json::json!({"creditflow_account_id": "alice", "creditflow_pack_id": "starter"});
    for (id, metadata) in [("evt_good", good.clone()), ("evt_foreign", serde_json::json!({}))] {
        let payload = event(id, &metadata);
        let received = ReceivedEvent { id, event_type: "payment_intent.succeeded", livemode: false, payload: &payload };
        store.receive_stripe_event(&received).await.expect("stored");
    }
    let alice = AccountId::new("alice").expect("valid");
    wait_for("alice's credit", || async {
        store
            .account(&alice)
            .await
            .expect("read")
            .is_some_and(|account| account.balance == Millicredits::new(5_000_000))
    })
    .await;
    if queue_on == QueueOn::Sqlite {
        wait_for("both jobs to finish", || async {
            let counts = queues.counts("stripe_events").await.expect("counts").expect("embedded queue");
            counts.iter().map(|(_, n)| n).sum::<i64>() == 2
                && counts.iter().all(|(status, _)| status == "Done" || status == "Killed")
        })
        .await;
        let counts = queues.counts("stripe_events").await.expect("counts").expect("embedded queue");
        assert_eq!(counts, vec![("Done".to_owned(), 1), ("Killed".to_owned(), 1)], "the foreign event is not retried");
    }
    wait_for("everything to be relayed", || async { store.unrelayed_outbox(10).await.expect("outbox").is_empty() })
        .await;

    // A debit that crosses alice's low-balance threshold is emailed once, through the emails queue.
    let settings = AccountSettings {
        email: Some("alice@example.com".into()),
        low_balance_threshold: Some(Millicredits::new(1_000_000)),
        ..AccountSettings::default()
    };
    store.put_settings(&alice, &settings).await.expect("settings");
    let debit = usage_debit(&alice, "big-job", 4_500_000);
    store.post(&debit).await.expect("debited");
    let emails = || std::fs::read_dir(mail_folder.path()).expect("folder").count();
    wait_for("the low-balance email", || async { emails() == 1 }).await;
    // The two events once each, and the rollups of the last day the scheduler caught up on when the workers started.
    let kinds = || {
        let mut types = monitoring.types();
        types.sort();
        types.dedup();
        types
    };
    wait_for("each kind of event at the monitoring endpoint", || async { kinds().len() >= 3 }).await;
    assert_eq!(kinds(), ["balance.low", "billing.rollup", "purchase.succeeded"], "signatures verified");
    let once = |kind: &str| monitoring.types().iter().filter(|t| *t == kind).count();
    assert_eq!((once("balance.low"), once("purchase.succeeded")), (1, 1), "each event delivered once");
    a_failing_delivery_dies_after_its_attempts(&store, &broken).await;
    jobs_are_recorded_and_can_be_retried(&store).await;

    a_usage_batch_is_debited(&store).await;

    stop_workers(stop, workers).await;
    assert_eq!(store.account(&alice).await.expect("read").expect("exists").balance, Millicredits::new(500_000));
    assert_eq!(emails(), 1, "one email for one crossing");
}

/// The failing endpoint's delivery is tried 1 + `retries` times, then dead; a dead job is never run again.
async fn a_failing_delivery_dies_after_its_attempts(store: &Store, broken: &Receiver) {
    wait_for("the failing delivery to die", || async {
        !store.jobs(Some(WEBHOOKS_QUEUE), &[JobState::Dead], 10).await.expect("jobs").is_empty()
    })
    .await;
    let dead = store.jobs(Some(WEBHOOKS_QUEUE), &[JobState::Dead], 10).await.expect("jobs");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].id.starts_with("webhooks:broken:"), "{}", dead[0].id);
    assert_eq!(dead[0].attempts, 6);
    assert!(dead[0].last_error.as_deref().is_some_and(|e| e.contains("500")), "{:?}", dead[0].last_error);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broken.attempts(), 6, "no attempt after the job died");
    // The endpoint is fixed; an operator retries the dead delivery and it goes through, signed.
    broken.answer(200);
    store.retry_job(&dead[0].id).await.expect("answered").expect("a dead job can be retried");
    wait_for("the retried delivery", || async {
        store.job(&dead[0].id).await.expect("read").is_some_and(|job| job.state == JobState::Done)
    })
    .await;
    assert_eq!(broken.attempts(), 7, "one more attempt, answered 200");
    assert_eq!(broken.types().len(), 7, "every attempt carried a signature that verifies");
}

/// Every job has a record; a dead job retried by an operator runs again (and dies again, here).
async fn jobs_are_recorded_and_can_be_retried(store: &Store) {
    let good = store.job("stripe_events:evt_good").await.expect("read").expect("recorded");
    assert_eq!((good.state, good.attempts), (JobState::Done, 1));
    let foreign = store.job("stripe_events:evt_foreign").await.expect("read").expect("recorded");
    assert_eq!((foreign.state, foreign.attempts), (JobState::Dead, 1), "a permanent failure is not retried");
    assert!(foreign.last_error.as_deref().is_some_and(|e| e.contains("creditflow_account_id")), "{foreign:?}");
    let retried = store.retry_job(&foreign.id).await.expect("answered").expect("a dead job can be retried");
    assert_eq!((retried.state, retried.attempts), (JobState::Pending, 0));
    wait_for("the retried job to run", || async {
        let job = store.job(&foreign.id).await.expect("read").expect("recorded");
        job.state == JobState::Dead && job.attempts == 1 && job.updated_at > retried.updated_at
    })
    .await;
    let refused = store.retry_job(&good.id).await.expect("answered").expect_err("done jobs are not retried");
    assert!(refused.to_string().contains("is done"), "{refused}");
}

/// Stores and activates `CARD` (version v1, one credit a call), active since an hour ago.
async fn activate_card(store: &Store) {
    let card = RateCard::from_toml(CARD).expect("card");
    store.add_rate_card(&card, CARD).await.expect("card stored");
    let activation = NewAuditRecord {
        actor: "test".into(),
        action: "rate_card.activate".into(),
        subject: "v1".into(),
        reason: None,
        details: "{}".into(),
    };
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    store.activate_rate_card(card.version(), since, &activation).await.expect("activated");
}

/// Submits a batch of `count` one-call events for `account` and waits until a worker has completed it.
async fn submit_batch_and_wait(store: &Store, account: &str, count: u16) {
    let events: Vec<UsageEvent> = (0..count)
        .map(|n| UsageEvent {
            event_id: format!("{account}-e{n}"),
            account_id: account.into(),
            model: "m1".into(),
            usage: [("calls".to_owned(), 1)].into(),
            correlation_id: None,
        })
        .collect();
    let events = serde_json::to_string(&events).expect("json");
    let submitted = store.submit_usage_batch("gateway", None, &events, i64::from(count)).await.expect("submitted");
    let BatchSubmitted::New(batch) = submitted else { panic!("a new batch") };
    wait_for("the batch to complete", || async {
        store.usage_batch(&batch.id).await.expect("read").is_some_and(|b| b.status == BatchStatus::Completed)
    })
    .await;
}

/// A usage batch is priced and debited by the `usage_batches` pool.
async fn a_usage_batch_is_debited(store: &Store) {
    activate_card(store).await;
    submit_batch_and_wait(store, "bob", 500).await;
    let bob = AccountId::new("bob").expect("valid");
    let bob_balance = store.account(&bob).await.expect("read").expect("created by the batch").balance;
    assert_eq!(bob_balance, Millicredits::new(-500_000), "500 calls at 1 credit, overdraft allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_on_sqlite_with_the_embedded_queue() {
    pipeline(TestBackend::Sqlite, QueueOn::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_on_postgres_with_the_embedded_queue() {
    pipeline(TestBackend::Postgres, QueueOn::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_on_postgres_with_the_redis_queue() {
    pipeline(TestBackend::Postgres, QueueOn::Redis).await;
}

#[tokio::test]
async fn rows_that_cannot_be_relayed_are_set_aside_not_blocking_the_rest() {
    use sqlx::Connection as _;
    let database = TestDatabase::new(TestBackend::Sqlite).await;
    let store = Store::connect(&database.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let queues =
        Queues::open(&format!("sqlite://{}", queue_dir.path().join("queue.db").display())).await.expect("queue");
    // Rows only a bug or a newer version would write, ahead of a good one.
    let mut raw = sqlx::SqliteConnection::connect(&database.url).await.expect("connect");
    for (queue, payload) in
        [("stripe_events", "{not json"), ("emails", r#"{"kind":"from_the_future"}"#), ("nowhere", "{}")]
    {
        sqlx::query("INSERT INTO outbox (queue, payload, created_at) VALUES ($1, $2, '2026-01-01T00:00:00.000000Z')")
            .bind(queue)
            .bind(payload)
            .execute(&mut raw)
            .await
            .expect("insert");
    }
    let payload = event("evt_after", &serde_json::json!({}));
    let good =
        ReceivedEvent { id: "evt_after", event_type: "payment_intent.succeeded", livemode: false, payload: &payload };
    store.receive_stripe_event(&good).await.expect("stored");

    let relayed = creditflow_workers::relay_once(&store, &queues, &[]).await.expect("relay");
    assert_eq!(relayed, 1, "the good row is relayed");
    assert!(store.unrelayed_outbox(10).await.expect("outbox").is_empty(), "bad rows no longer stand in the way");
    let counts = queues.counts("stripe_events").await.expect("counts").expect("embedded queue");
    assert_eq!(counts, vec![("Pending".to_owned(), 1)]);
}

#[tokio::test]
async fn the_scheduler_records_each_hour_once_whatever_the_workers() {
    let database = TestDatabase::new(TestBackend::Postgres).await;
    let store = Store::connect(&database.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let now = time::macros::datetime!(2026-11-24 16:20:05 UTC);
    // Three worker processes' schedulers at about the same time, one of them a tick later.
    for at in [now, now, now + time::Duration::seconds(30)] {
        let jobs = creditflow_workers::schedule_once(&store, at).await.expect("scheduled");
        assert_eq!(jobs.len(), 2);
    }
    let outbox = store.unrelayed_outbox(10).await.expect("outbox");
    let mut scheduled: Vec<&str> =
        outbox.iter().filter(|m| m.queue == "scheduled").map(|m| m.payload.as_str()).collect();
    scheduled.sort_unstable();
    // 15:00 UTC, the last finished hour.
    assert_eq!(
        scheduled,
        [r#"{"kind":"anomaly_check","hourStart":1795532400}"#, r#"{"kind":"billing_rollup","hourStart":1795532400}"#]
    );
    let next = creditflow_workers::schedule_once(&store, now + time::Duration::HOUR).await.expect("scheduled");
    assert_eq!(next.len(), 2);
    assert_eq!(store.unrelayed_outbox(10).await.expect("outbox").len(), 4, "the next hour gets its own pair");
    // Two minutes into an hour, the hour before it is not scheduled yet: debits stamped at its end may still commit.
    let early = time::macros::datetime!(2026-11-24 18:01:00 UTC);
    let jobs = creditflow_workers::schedule_once(&store, early).await.expect("scheduled");
    assert!(jobs.iter().all(|job| job.dedupe_key().ends_with("1795536000")), "16:00, not 17:00: {jobs:?}");
    // A worker starting after a pause catches up on the hours it missed, the ones already done skipped.
    let caught_up = creditflow_workers::schedule_hours(&store, early + time::Duration::HOUR, 24).await.expect("ok");
    assert_eq!(caught_up.len(), 48);
    let scheduled = store.unrelayed_outbox(1_000).await.expect("outbox");
    assert_eq!(scheduled.len(), 48, "24 hours, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_report_is_queued_once_per_date_and_emailed_once() {
    let database = TestDatabase::new(TestBackend::Postgres).await;
    let store = Store::connect(&database.url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    let alice = AccountId::new("alice").expect("valid");
    let opening = Posting {
        kind: EntryKind::Adjustment,
        amount: Millicredits::new(2_000_000),
        reason: Some("opening balance".into()),
        rate_version: None,
        ..usage_debit(&alice, "opening", 0)
    };
    store.post(&opening).await.expect("credited");

    // Several schedulers (worker processes) tick after 00:30: one job for yesterday, whatever their number.
    let schedule = ReportSchedule::parse("30 0 * * *", ReportZone::UTC).expect("schedule");
    let now = time::OffsetDateTime::now_utc();
    let today = now.date();
    let before_half_past = now.time() < time::macros::time!(00:30);
    for _ in 0..3 {
        let jobs = creditflow_workers::schedule_report(&store, &schedule, now).await.expect("scheduled");
        let expected =
            if before_half_past { today - time::Duration::days(2) } else { today.previous_day().expect("day") };
        let dates: Vec<&str> = jobs.iter().map(|job| job.date.as_str()).collect();
        assert_eq!(dates, [expected.to_string()], "no stored report yet: only the day due");
    }
    let outbox = store.unrelayed_outbox(10).await.expect("outbox");
    let reports: Vec<_> = outbox.iter().filter(|m| m.queue == "reports").collect();
    assert_eq!(reports.len(), 1, "one report job per date: {outbox:?}");
    let date = serde_json::from_str::<serde_json::Value>(&reports[0].payload).expect("json")["date"]
        .as_str()
        .expect("date")
        .to_owned();

    let queue_dir = tempfile::tempdir().expect("tempdir");
    let queues =
        Queues::open(&format!("sqlite://{}", queue_dir.path().join("queue.db").display())).await.expect("queue");
    let mail_folder = tempfile::tempdir().expect("tempdir");
    let report_mail = tempfile::tempdir().expect("tempdir");
    let mut handlers = handlers(&store, mail_folder.path(), Vec::new());
    handlers.reports = report_deps(&store, report_mail.path(), vec!["finance@example.com"]);
    let deps = handlers.reports.clone();
    // Each worker process's scheduler records the job too: still one.
    let settings = WorkerSettings { report_schedule: Some(schedule.clone()), ..WorkerSettings::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let workers = tokio::spawn(run(store.clone(), handlers, queues, settings, async move {
        let _ = stopped.await;
    }));
    let emails = || std::fs::read_dir(report_mail.path()).expect("folder").count();
    // The email is written, then recorded as sent.
    let emailed = || async { store.report(&date).await.expect("read").is_some_and(|r| r.emailed_at.is_some()) };
    wait_for("the report's email", || async { emails() == 1 && emailed().await }).await;
    let stored = store.report(&date).await.expect("read").expect("stored");
    assert!(stored.files.iter().any(|(name, _, _)| name == "report.html"), "{:?}", stored.files);

    // The same job again (a redelivery, an operator's retry): the report is rebuilt, the email not sent again.
    let job = creditflow_jobs::reports::BuildReportV1 { date: date.clone(), force: false, request: None };
    let again = creditflow_reports::job::build_report(&job, &deps).await.expect("built");
    assert_eq!(again.emailed, Emailed::AlreadySent);
    stop_workers(stop, workers).await;
    assert_eq!(emails(), 1, "one email per date");
    let done = store.jobs(Some("reports"), &[JobState::Done], 10).await.expect("jobs");
    assert_eq!(done.len(), 1, "one job for the date: {done:?}");

    // No worker ran for three nights: the first scheduler up records the three reports missed since the stored one.
    let stored_day = time::Date::parse(&date, time::macros::format_description!("[year]-[month]-[day]")).expect("date");
    let day = |after: i64| (stored_day + time::Duration::days(after)).to_string();
    let later = now + time::Duration::days(3);
    let missed = creditflow_workers::schedule_report(&store, &schedule, later).await.expect("scheduled");
    let dates: Vec<String> = missed.iter().map(|job| job.date.clone()).collect();
    assert_eq!(dates, [day(1), day(2), day(3)]);
    let report_jobs = || async {
        let outbox = store.unrelayed_outbox(100).await.expect("outbox");
        outbox.iter().filter(|m| m.queue == "reports").count()
    };
    assert_eq!(report_jobs().await, 3);
    creditflow_workers::schedule_report(&store, &schedule, later).await.expect("scheduled again");
    assert_eq!(report_jobs().await, 3, "each date once");
    // After a month away, the last week is caught up, not the whole month.
    let month = creditflow_workers::schedule_report(&store, &schedule, now + time::Duration::days(30)).await;
    let dates: Vec<String> = month.expect("scheduled").iter().map(|job| job.date.clone()).collect();
    assert_eq!(dates, (23..=30).map(day).collect::<Vec<_>>(), "the due day and the 7 before it");
}

/// apalis-redis 1.0 moves every due job of a queue to its ready list in one Lua call, which fails past about 8,000
/// jobs ("too many results to unpack") and then on every poll: the relay must never let a queue's backlog in Redis
/// grow that far. A burst of 2,500 jobs with no worker taking them: 2,000 are pushed, the rest wait in the outbox,
/// and the queues behind it are not held up.
#[tokio::test]
async fn the_relay_keeps_a_burst_in_the_outbox_rather_than_overfilling_redis() {
    let database = TestDatabase::new(TestBackend::Postgres).await;
    let store = Store::connect(&database.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let queues = Queues::open_in(&redis_url(), &redis_namespace()).await.expect("queue");
    // 1,250 hours of rollup and anomaly jobs: 2,500 jobs for the `scheduled` queue.
    let jobs = creditflow_workers::schedule_hours(&store, time::OffsetDateTime::now_utc(), 1_250).await.expect("jobs");
    assert_eq!(jobs.len(), 2_500);
    let payload = event("evt_behind_the_burst", &serde_json::json!({}));
    let behind = ReceivedEvent {
        id: "evt_behind_the_burst",
        event_type: "payment_intent.succeeded",
        livemode: false,
        payload: &payload,
    };
    store.receive_stripe_event(&behind).await.expect("stored");
    let mut relayed = 0;
    loop {
        let pass = creditflow_workers::relay_once(&store, &queues, &[]).await.expect("relay");
        if pass == 0 {
            break;
        }
        relayed += pass;
    }
    assert_eq!(relayed, 2_001, "2,000 scheduled jobs and the Stripe event behind them");
    assert_eq!(store.unrelayed_outbox(1_000).await.expect("outbox").len(), 500, "the rest wait in the outbox");
    let counts = store.job_counts().await.expect("counts");
    let pending = |queue: &str| {
        counts.iter().find(|(q, state, _)| q == queue && *state == JobState::Pending).map_or(0, |(_, _, n)| *n)
    };
    assert_eq!((pending("scheduled"), pending("stripe_events")), (2_000, 1));
}

/// Idle workers keep looking for jobs: with a heartbeat of 5 minutes, each batch submitted after the pools have sat
/// idle for a while must complete within `wait_for`'s 30 s. The API benchmark found every pool of a worker process
/// silent from about 1.5 s after start until its first heartbeat while apalis's own interval polled it (see
/// `IdlePoll`); this test guards the liveness that fix restored, but it did not reproduce that stall with the old
/// polling (it passed with it too), so the benchmark's batch case remains the place where the stall shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_take_new_jobs_long_before_their_heartbeat() {
    let database = TestDatabase::new(TestBackend::Postgres).await;
    let store = Store::connect(&database.url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    activate_card(&store).await;
    let queues = Queues::open_with(&redis_url(), &redis_namespace(), Duration::from_secs(300)).await.expect("queue");
    let mail_folder = tempfile::tempdir().expect("tempdir");
    let handlers = handlers(&store, mail_folder.path(), Vec::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let workers = tokio::spawn(run(store.clone(), handlers, queues, WorkerSettings::default(), async move {
        let _ = stopped.await;
    }));
    for round in 0..3 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        submit_batch_and_wait(&store, &format!("idle-{round}"), 10).await;
    }
    stop_workers(stop, workers).await;
}
