//! The `creditflow` binary as a newcomer and an operator run it: zero-configuration serve on SQLite, serve on
//! PostgreSQL, migrate twice, configuration errors that name the key, help text, graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use creditflow_testkit::{TestBackend, TestDatabase};
use serde_json::json;

#[path = "cli/concurrency.rs"]
mod concurrency;
#[path = "cli/crashes.rs"]
mod crashes;
#[path = "cli/faults.rs"]
mod faults;

const BINARY: &str = env!("CARGO_BIN_EXE_creditflow");

/// Settings a production database needs beside it: a key to verify tokens (the API tests' RSA fixture).
fn production_auth() -> [(&'static str, String); 3] {
    let key = format!("{}/../api/tests/fixtures/rsa-1.pub", env!("CARGO_MANIFEST_DIR"));
    [
        ("CREDITFLOW_AUTH__PUBLIC_KEY_FILE", key),
        ("CREDITFLOW_AUTH__ISSUER", "https://issuer.test/".to_owned()),
        ("CREDITFLOW_AUTH__AUDIENCE", "creditflow-test".to_owned()),
    ]
}

/// What a test's processes share on PostgreSQL and Redis: a database and a Redis namespace of the test's own, and the
/// key settings a production database needs beside them.
struct Shared {
    database: TestDatabase,
    redis: String,
    namespace: String,
    auth: [(&'static str, String); 3],
}

impl Shared {
    async fn new() -> Self {
        Self {
            database: TestDatabase::new(TestBackend::Postgres).await,
            redis: creditflow_testkit::redis_url(),
            namespace: creditflow_testkit::redis_namespace(),
            auth: production_auth(),
        }
    }

    /// The settings that point `creditflow` at them, with 1-second worker heartbeats so a killed worker's jobs run
    /// again quickly.
    fn envs(&self) -> Vec<(&str, &str)> {
        let mut envs: Vec<(&str, &str)> = self.auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
        envs.extend([
            ("DATABASE_URL", self.database.url.as_str()),
            ("CREDITFLOW_QUEUE_URL", self.redis.as_str()),
            ("CREDITFLOW_QUEUE_NAMESPACE", self.namespace.as_str()),
            ("CREDITFLOW_QUEUE_HEARTBEAT_SECONDS", "1"),
        ]);
        envs
    }
}

/// A running `creditflow worker`. Dropping it kills the process, so a failing test leaves no worker behind holding
/// database connections.
struct Worker(Child);

impl std::ops::Deref for Worker {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `creditflow worker` in `dir` with `envs`, its output discarded.
fn spawn_worker(dir: &Path, envs: &[(&str, &str)]) -> Worker {
    let child = creditflow(dir)
        .arg("worker")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a worker");
    Worker(child)
}

/// A `creditflow` command in `dir` with none of the caller's creditflow settings. The nightly report's schedule is
/// off unless a test turns it on: at start a worker would build yesterday's report, and its writes on an embedded
/// ledger make a concurrent payment's job wait and retry, past the tests' deadlines on a loaded machine.
fn creditflow(dir: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command.current_dir(dir).env_remove("DATABASE_URL").env_remove("REDIS_URL").env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("CREDITFLOW_") {
            command.env_remove(key);
        }
    }
    command.env("CREDITFLOW_REPORT__ENABLED", "false");
    command
}

/// A running `creditflow serve` and the address it announced. Dropping it kills the process, so a failing test
/// leaves no server behind.
struct Server {
    child: Child,
    base_url: String,
    logs: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `serve` on a free port with JSON logs and waits for its "serving" line.
    fn start(dir: &Path, envs: &[(&str, &str)]) -> Self {
        Self::start_role(dir, "serve", envs).0
    }

    /// Starts `role` (`serve` or `api`) and returns it with its "serving" log event.
    fn start_role(dir: &Path, role: &str, envs: &[(&str, &str)]) -> (Self, serde_json::Value) {
        let child = creditflow(dir)
            .arg(role)
            .env("CREDITFLOW_LISTEN", "127.0.0.1:0")
            .env("CREDITFLOW_LOG_FORMAT", "json")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start creditflow serve");
        let (sender, logs) = mpsc::channel();
        let mut server = Self { child, base_url: String::new(), logs };
        let stderr = server.child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = server.logs.recv_timeout(remaining).expect("creditflow serve announced its address in time");
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["message"] == "creditflow is serving" {
                let address = event["address"].as_str().expect("address field");
                server.base_url = format!("http://{address}");
                return (server, event);
            }
        }
    }

    /// Sends SIGTERM and waits for a clean exit, returning the log lines written meanwhile.
    fn terminate(mut self) -> Vec<String> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("send SIGTERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().expect("poll child") {
                break exit;
            }
            assert!(Instant::now() < deadline, "creditflow did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "creditflow exits 0 after SIGTERM, got {exit}");
        self.logs.try_iter().collect()
    }
}

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.expect("request answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn serve_runs_on_sqlite_with_zero_configuration() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let server = Server::start(dir.path(), &[]);
    let (status, body) = get_json(&format!("{}/health", server.base_url)).await;
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
    let (status, body) = get_json(&format!("{}/readyz", server.base_url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backend"], "sqlite");
    assert_eq!(body["checks"]["rateCard"], "v1", "the shipped v1 card is active");
    let (status, body) = get_json(&format!("{}/no-such-thing", server.base_url)).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let logs = server.terminate();
    assert!(logs.iter().any(|line| line.contains("creditflow stopped")), "{logs:?}");
    assert!(dir.path().join("creditflow.db").is_file(), "the SQLite file lives in the working directory");

    // A second start on the same file keeps the data and needs no migration or activation.
    let server = Server::start(dir.path(), &[]);
    let (status, _) = get_json(&format!("{}/readyz", server.base_url)).await;
    assert_eq!(status, 200);
    server.terminate();
}

#[tokio::test]
async fn serve_runs_on_postgres_when_database_url_says_so() {
    let database = TestDatabase::new(TestBackend::Postgres).await;
    let dir = tempfile::tempdir().expect("temporary working directory");
    let auth = production_auth();
    let mut envs: Vec<(&str, &str)> = auth.iter().map(|(key, value)| (*key, value.as_str())).collect();
    envs.push(("DATABASE_URL", &database.url));
    let server = Server::start(dir.path(), &envs);
    let (status, body) = get_json(&format!("{}/readyz", server.base_url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["backend"].as_str(), body["checks"]["rateCard"].as_str()), (Some("postgres"), Some("v1")));
    server.terminate();
    assert!(!dir.path().join("creditflow.db").exists(), "no SQLite file when PostgreSQL is configured");
}

fn run(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let output = creditflow(dir).args(args).envs(envs.iter().copied()).output().expect("run creditflow");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[tokio::test]
async fn migrate_is_safe_to_run_twice_on_both_backends() {
    let postgres = TestDatabase::new(TestBackend::Postgres).await;
    let dir = tempfile::tempdir().expect("temporary working directory");
    let auth = production_auth();
    let mut on_postgres: Vec<(&str, &str)> = auth.iter().map(|(key, value)| (*key, value.as_str())).collect();
    on_postgres.push(("DATABASE_URL", postgres.url.as_str()));
    for envs in [vec![], on_postgres] {
        for round in 0..2 {
            let (code, _, stderr) = run(dir.path(), &["migrate"], &envs);
            assert_eq!(code, 0, "migrate round {round} {envs:?}: {stderr}");
            assert!(stderr.contains("migrations applied"), "{stderr}");
        }
    }
}

/// Arguments, environment, and the text the error must contain.
type ConfigCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_configuration_fails_fast_naming_the_key() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    std::fs::write(dir.path().join("bad.toml"), "listen = \"127.0.0.1:0\"\ncolour = \"blue\"\n").expect("write");
    std::fs::write(dir.path().join("card.toml"), "version = \"v2\"\nrounding = \"up\"\n").expect("write");
    let rows: [ConfigCase<'_>; 12] = [
        (&["serve"], &[("DATABASE_URL", "postgres://db/x")], "auth.jwks_url"),
        (&["serve"], &[("CREDITFLOW_AUTH__JWKS_URL", "https://idp.test/jwks.json")], "auth.issuer"),
        (&["serve"], &[("CREDITFLOW_LISTEN", "not-an-address")], "listen"),
        (&["serve"], &[("DATABASE_URL", "mysql://db/x")], "database_url"),
        (&["serve"], &[("REDIS_URL", "http://cache")], "redis_url"),
        (&["serve"], &[("CREDITFLOW_LISTENN", "127.0.0.1:1")], "listenn"),
        (&["--config", "bad.toml", "serve"], &[], "colour"),
        (&["--config", "missing.toml", "serve"], &[], "missing.toml"),
        (&["serve"], &[("CREDITFLOW_RATE_CARD_FILE", "card.toml")], "rate_card_file"),
        (&["serve"], &[("CREDITFLOW_REPORT__SCHEDULE", "every night")], "report.schedule"),
        (&["serve"], &[("CREDITFLOW_REPORT__RECIPIENTS", "finance@, ops@example.com")], "report.recipients"),
        (&["serve"], &[("CREDITFLOW_REPORT__EXPECTED_MIX", "{m1=60,m2=30}")], "report.expected_mix"),
    ];
    for (args, envs, expected) in rows {
        let (code, _, stderr) = run(dir.path(), args, envs);
        assert_eq!(code, 2, "{args:?} {envs:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} {envs:?}: `{stderr}` does not name `{expected}`");
    }
}

#[test]
fn config_prints_the_merged_settings_with_secrets_redacted() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    std::fs::write(dir.path().join("creditflow.toml"), "listen = \"0.0.0.0:9000\"\nauto_migrate = false\n")
        .expect("write");
    let auth = production_auth();
    let mut envs: Vec<(&str, &str)> = auth.iter().map(|(key, value)| (*key, value.as_str())).collect();
    envs.extend([("DATABASE_URL", "postgres://app:hunter2@db/creditflow"), ("CREDITFLOW_LOG_FORMAT", "json")]);
    let (code, stdout, stderr) = run(dir.path(), &["config"], &envs);
    assert_eq!(code, 0, "{stderr}");
    for expected in ["listen = \"0.0.0.0:9000\"", "auto_migrate = false", "log_format = \"json\"", "app:***@db"] {
        assert!(stdout.contains(expected), "`{expected}` missing from:\n{stdout}");
    }
    assert!(!stdout.contains("hunter2"), "the password leaked:\n{stdout}");
}

#[test]
fn help_explains_every_subcommand() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let (code, stdout, _) = run(dir.path(), &["--help"], &[]);
    assert_eq!(code, 0);
    for expected in ["prepaid-credits billing", "serve", "migrate", "config", "--config"] {
        assert!(stdout.contains(expected), "`{expected}` missing from --help:\n{stdout}");
    }
    let rows = [
        ("serve", "SIGTERM"),
        ("migrate", "Safe to run again"),
        ("config", "effective configuration"),
        ("jobs", "retry"),
    ];
    for (subcommand, expected) in rows {
        let (code, stdout, _) = run(dir.path(), &[subcommand, "--help"], &[]);
        assert_eq!(code, 0);
        assert!(stdout.contains(expected), "`{expected}` missing from {subcommand} --help:\n{stdout}");
    }
}

#[test]
fn an_unreachable_database_fails_start_with_the_reason() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let auth = production_auth();
    let mut envs: Vec<(&str, &str)> = auth.iter().map(|(key, value)| (*key, value.as_str())).collect();
    envs.push(("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:1/creditflow"));
    let (code, _, stderr) = run(dir.path(), &["serve"], &envs);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot open the database postgres://app:***@127.0.0.1:1/creditflow"), "{stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "the cause is shown: {stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[tokio::test]
async fn dev_mode_lets_a_newcomer_call_the_api_with_a_minted_token() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let server = Server::start(dir.path(), &[]);
    let (code, token, stderr) = run(dir.path(), &["token", "--sub", "alice", "--role", "customer"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let client = reqwest::Client::new();
    let response = client.get(format!("{}/api/balance", server.base_url)).bearer_auth(token.trim()).send().await;
    let response = response.expect("answered");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!((body["accountId"].as_str(), body["balanceMillicredits"].as_i64()), (Some("alice"), Some(0)));
    let logs = server.terminate();
    assert!(dir.path().join("creditflow-dev-key.pem").is_file());
    let _ = logs;
}

#[test]
fn token_refuses_outside_dev_mode_and_dev_mode_never_starts_beside_a_key() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let auth = production_auth();
    let envs: Vec<(&str, &str)> = auth.iter().map(|(key, value)| (*key, value.as_str())).collect();
    let (code, stdout, stderr) = run(dir.path(), &["token", "--sub", "alice", "--role", "admin"], &envs);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("not in dev mode"), "{stderr}");
    assert!(!dir.path().join("creditflow-dev-key.pem").exists(), "no dev key is made");
    let (code, _, stderr) = run(dir.path(), &["token", "--sub", "alice", "--role", "root"], &[]);
    assert_eq!(code, 2, "unknown roles are refused by the parser: {stderr}");
}

/// A signed `payment_intent.succeeded` for the Starter pack bought by `account`.
fn starter_purchase_event(id: &str, account: &str) -> String {
    serde_json::json!({
        "id": id, "object": "event", "type": "payment_intent.succeeded", "livemode": false,
        "data": {"object": {"id": format!("pi_{id}"), "amount_received": 500, "currency": "usd",
            "metadata": {"creditflow_account_id": account, "creditflow_pack_id": "starter"}}}
    })
    .to_string()
}

async fn wait_for_balance(client: &reqwest::Client, base_url: &str, token: &str, account: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = format!("{base_url}/api/balance?accountId={account}");
        if let Ok(response) = client.get(&url).bearer_auth(token).send().await
            && response.status() == 200
        {
            let body: serde_json::Value = response.json().await.expect("json");
            if body["balanceMillicredits"] == expected {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{account} never reached {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stripe_payment_is_credited_through_the_whole_pipeline() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let secret = "whsec_pipeline";
    let server = Server::start(dir.path(), &[("CREDITFLOW_STRIPE__WEBHOOK_SECRET", secret)]);
    let body = starter_purchase_event("evt_cli", "bea");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = creditflow_api::sign_stripe_payload(body.as_bytes(), secret, now);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let response = client
            .post(format!("{}/webhooks/stripe", server.base_url))
            .header("stripe-signature", &signature)
            .body(body.clone())
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200);
    }
    let (_, admin, _) = run(dir.path(), &["token", "--sub", "ops", "--role", "admin"], &[]);
    wait_for_balance(&client, &server.base_url, admin.trim(), "bea", 5_000_000).await;
    drop(client); // idle keep-alive connections would hold up graceful shutdown
    server.terminate();
}

#[tokio::test]
async fn a_worker_process_runs_the_queue_alone_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    // Migrate first so the test can write the event the way the API would.
    assert_eq!(run(dir.path(), &["migrate"], &[]).0, 0);
    let store =
        creditflow_store::Store::connect(&format!("sqlite://{}", dir.path().join("creditflow.db").display()), 2)
            .await
            .expect("open the ledger");
    let payload = starter_purchase_event("evt_worker", "cid");
    let event = creditflow_store::ReceivedEvent {
        id: "evt_worker",
        event_type: "payment_intent.succeeded",
        livemode: false,
        payload: &payload,
    };
    store.receive_stripe_event(&event).await.expect("stored");
    let mut worker = creditflow(dir.path())
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start creditflow worker");
    let account = creditflow_domain::AccountId::new("cid").expect("valid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.account(&account).await.expect("read").map(|a| a.balance.get()) != Some(5_000_000) {
        if Instant::now() >= deadline {
            let _ = worker.kill();
            panic!("the worker never credited the purchase");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().expect("signal");
    assert!(status.success());
    let exit = worker.wait().expect("worker exits");
    assert!(exit.success(), "creditflow worker exits 0 after SIGTERM, got {exit}");
}

#[tokio::test]
async fn the_api_role_serves_without_worker_pools() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let (server, serving) = Server::start_role(dir.path(), "api", &[]);
    assert_eq!(serving["workers"], false, "{serving}");
    let (status, _) = get_json(&format!("{}/readyz", server.base_url)).await;
    assert_eq!(status, 200);
    server.terminate();
    assert!(!dir.path().join("creditflow-queue.db").exists(), "the api role never opens the queue");
    let (server, serving) = Server::start_role(dir.path(), "serve", &[]);
    assert_eq!(serving["workers"], true, "{serving}");
    server.terminate();
}

#[tokio::test]
async fn jobs_lists_retries_and_discards_from_the_command_line() {
    use creditflow_store::{AttemptEnd, QueuedJob, Store};
    let dir = tempfile::tempdir().expect("temporary working directory");
    let (code, stdout, stderr) = run(dir.path(), &["jobs", "queues"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("QUEUE"), "{stdout}");
    assert!(stdout.contains("usage_batches"), "every queue listed: {stdout}");
    // A job that died, recorded as a worker would.
    let url = format!("sqlite://{}", dir.path().join("creditflow.db").display());
    let store = Store::connect(&url, 2).await.expect("the database `jobs queues` created");
    let job = QueuedJob { id: "stripe_events:evt_1".into(), queue: "stripe_events".into(), payload: "{}".into() };
    store.start_job_attempt(&job).await.expect("start");
    store.end_job_attempt(&job.id, 1, AttemptEnd::Dead("no account in metadata")).await.expect("end");
    store.close().await;

    let (code, stdout, _) = run(dir.path(), &["jobs", "list", "--state", "dead"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("stripe_events:evt_1") && stdout.contains("no account in metadata"), "{stdout}");
    let (code, stdout, _) = run(dir.path(), &["jobs", "show", "stripe_events:evt_1", "--json"], &[]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!((shown["state"].as_str(), shown["attempts"].as_i64()), (Some("dead"), Some(1)));
    let (code, stdout, _) = run(dir.path(), &["jobs", "retry", "stripe_events:evt_1"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("queued again"), "{stdout}");
    let (code, _, stderr) = run(dir.path(), &["jobs", "retry", "stripe_events:evt_1"], &[]);
    assert_eq!(code, 1, "a pending job cannot be retried");
    assert!(stderr.contains("is pending"), "{stderr}");
    let (code, stdout, _) = run(dir.path(), &["jobs", "discard", "stripe_events:evt_1", "--reason", "test"], &[]);
    assert_eq!((code, stdout.contains("discarded")), (0, true), "{stdout}");
    let (code, stdout, _) = run(dir.path(), &["jobs", "queues", "--json"], &[]);
    assert_eq!(code, 0);
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().expect("a line")).expect("JSON");
    assert_eq!((first["queue"].as_str(), first["discarded"].as_i64()), (Some("stripe_events"), Some(1)));
    let (code, _, stderr) = run(dir.path(), &["jobs", "list", "--state", "stuck"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown state `stuck`"), "{stderr}");
    let (code, _, stderr) = run(dir.path(), &["jobs", "show", "nope"], &[]);
    assert_eq!((code, stderr.contains("no job `nope`")), (1, true), "{stderr}");
}

/// Registers `url` at localstripe, as endpoint `id`, to receive payment events signed with `secret`. Each test uses
/// fixed ids, replaced by each run, so registrations do not pile up (`scripts/test` also starts a fresh localstripe).
async fn register_localstripe_webhook(client: &reqwest::Client, id: &str, url: &str, secret: &str) {
    let response = client
        .post(format!("{}/_config/webhooks/{id}", creditflow_testkit::stripe_url()))
        .form(&[
            ("url", url),
            ("secret", secret),
            ("events[]", "payment_intent.succeeded"),
            ("events[]", "payment_intent.payment_failed"),
        ])
        .send()
        .await
        .expect("localstripe answers (scripts/test starts it)");
    assert!(response.status().is_success(), "webhook registration: {}", response.status());
}

#[tokio::test]
async fn a_pack_bought_through_localstripe_is_credited_once() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let secret = "whsec_localstripe_e2e";
    let stripe_url = creditflow_testkit::stripe_url();
    let server = Server::start(
        dir.path(),
        &[
            ("CREDITFLOW_STRIPE__WEBHOOK_SECRET", secret),
            ("CREDITFLOW_STRIPE__SECRET_KEY", "sk_test_e2e"),
            ("CREDITFLOW_STRIPE__API_BASE", &stripe_url),
        ],
    );
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/stripe", server.base_url);
    register_localstripe_webhook(&client, "creditflow-cli-embedded", &url, secret).await;
    let account = format!("e2e{}", uuid::Uuid::new_v4().simple());
    let (_, token, _) = run(dir.path(), &["token", "--sub", &account, "--role", "customer"], &[]);
    let response = client
        .post(format!("{}/api/purchases", server.base_url))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"pack": "starter"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);
    let started: serde_json::Value = response.json().await.expect("json");
    let intent = started["paymentIntentId"].as_str().expect("id");
    // What Stripe.js does in the browser: confirm with a card. localstripe then sends payment_intent.succeeded,
    // signed, to creditflow's webhook. (localstripe takes the card as an update, not as a confirm parameter.)
    let stripe = |path: String| client.post(format!("{stripe_url}/v1/payment_intents/{intent}{path}"));
    let card = stripe(String::new()).basic_auth("sk_test_e2e", Some("")).form(&[("payment_method", "pm_card_visa")]);
    assert!(card.send().await.expect("localstripe answers").status().is_success());
    let confirmed =
        stripe("/confirm".to_owned()).basic_auth("sk_test_e2e", Some("")).send().await.expect("localstripe answers");
    assert!(confirmed.status().is_success(), "confirm: {}", confirmed.text().await.unwrap_or_default());
    wait_for_balance(&client, &server.base_url, token.trim(), &account, 5_000_000).await;
    drop(client); // idle keep-alive connections would hold up graceful shutdown
    server.terminate();
}

/// A server that records every request's `Stripe-Signature` and body (localstripe's own signed events).
async fn capture_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>) {
    use poem::listener::{Acceptor, Listener};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let endpoint = poem::endpoint::make(move |request: poem::Request| {
        let record = record.clone();
        async move {
            let signature = request.header("stripe-signature").unwrap_or("").to_owned();
            let body = request.into_body().into_string().await.unwrap_or_default();
            record.lock().expect("lock").push((signature, body));
            poem::http::StatusCode::OK
        }
    });
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind");
    let address = *acceptor.local_addr()[0].as_socket_addr().expect("address");
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(endpoint));
    (format!("http://{address}/capture"), seen)
}

/// Makes and confirms, at localstripe, a Starter payment for `account` (what `/api/purchases` and Stripe.js do).
async fn pay_starter_at_localstripe(client: &reqwest::Client, key: &str, account: &str) -> String {
    let stripe = creditflow_testkit::stripe_url();
    let post = |path: String, form: Vec<(&'static str, String)>| {
        client.post(format!("{stripe}/v1/{path}")).basic_auth(key, Some("")).form(&form).send()
    };
    let customer: serde_json::Value =
        post("customers".into(), vec![]).await.expect("localstripe").json().await.expect("json");
    let intent: serde_json::Value = post(
        "payment_intents".into(),
        vec![
            ("amount", "500".into()),
            ("currency", "usd".into()),
            ("customer", customer["id"].as_str().expect("id").to_owned()),
            ("metadata[creditflow_account_id]", account.to_owned()),
            ("metadata[creditflow_pack_id]", "starter".into()),
        ],
    )
    .await
    .expect("localstripe")
    .json()
    .await
    .expect("json");
    let id = intent["id"].as_str().expect("id").to_owned();
    let card = post(format!("payment_intents/{id}"), vec![("payment_method", "pm_card_visa".into())]);
    assert!(card.await.expect("localstripe").status().is_success());
    let confirmed = post(format!("payment_intents/{id}/confirm"), vec![]).await.expect("localstripe");
    assert!(confirmed.status().is_success());
    id
}

#[tokio::test]
async fn on_postgres_and_redis_a_payment_is_credited_once_despite_redeliveries_and_a_killed_worker() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let shared = Shared::new().await;
    let database = &shared.database;
    let secret = "whsec_localstripe_postgres";
    let mut envs = shared.envs();
    envs.push(("CREDITFLOW_STRIPE__WEBHOOK_SECRET", secret));
    let (api, _) = Server::start_role(dir.path(), "api", &envs);
    let mut first_worker = spawn_worker(dir.path(), &envs);
    let client = reqwest::Client::new();
    let (capture_url, captured) = capture_server().await;
    register_localstripe_webhook(
        &client,
        "creditflow-cli-postgres",
        &format!("{}/webhooks/stripe", api.base_url),
        secret,
    )
    .await;
    register_localstripe_webhook(&client, "creditflow-cli-capture", &capture_url, secret).await;

    let account = format!("pg{}", uuid::Uuid::new_v4().simple());
    let intent = pay_starter_at_localstripe(&client, "sk_test_pg", &account).await;
    let store = creditflow_store::Store::connect(&database.url, 2).await.expect("the ledger");
    // localstripe's own signed event, as it reached creditflow.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (signature, body) = loop {
        let found = captured.lock().expect("lock").iter().find(|(_, body)| body.contains(&intent)).cloned();
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "localstripe never sent the payment's event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let event_id =
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["id"].as_str().expect("id").to_owned();
    // The worker dies (SIGKILL) as soon as the event is stored: before, during or after fulfilment.
    while store.stripe_event(&event_id).await.expect("read").is_none() {
        assert!(Instant::now() < deadline, "creditflow never stored the event");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first_worker.kill().expect("SIGKILL");
    first_worker.wait().expect("reaped");
    // Stripe redelivers the same signed event 20 times at once.
    let redeliveries = (0..20).map(|_| {
        client
            .post(format!("{}/webhooks/stripe", api.base_url))
            .header("stripe-signature", signature.clone())
            .body(body.clone())
            .send()
    });
    for response in futures_util::future::join_all(redeliveries).await {
        assert_eq!(response.expect("answered").status(), 200);
    }
    let mut second_worker = spawn_worker(dir.path(), &envs);
    let id = creditflow_domain::AccountId::new(account.clone()).expect("valid");
    let balance = || async { store.account(&id).await.expect("read").map(|a| a.balance.get()) };
    while balance().await != Some(5_000_000) {
        assert!(Instant::now() < deadline + Duration::from_secs(30), "never credited: {:?}", balance().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(balance().await, Some(5_000_000), "credited exactly once");
    let entries = store.entries(&id, 0, 100).await.expect("entries");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].idempotency_key, format!("payment:{intent}"));
    let totals = store.ledger_totals(None).await.expect("totals");
    assert_eq!(totals.balances, totals.entries);
    let status = Command::new("kill").args(["-TERM", &second_worker.id().to_string()]).status().expect("signal");
    assert!(status.success());
    assert!(second_worker.wait().expect("exits").success());
    drop(client); // idle keep-alive connections would hold up graceful shutdown
    api.terminate();
}

#[test]
fn the_example_configuration_is_valid_and_the_tests_own_variables_are_ignored() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let example = format!("{}/../config/creditflow.example.toml", env!("CARGO_MANIFEST_DIR"));
    let envs =
        [("CREDITFLOW_TEST_STRIPE_URL", "http://127.0.0.1:8420"), ("CREDITFLOW_STRIPE__SECRET_KEY", "sk_test_x")];
    let (code, stdout, stderr) = run(dir.path(), &["--config", &example, "config"], &envs);
    assert_eq!(code, 0, "{stderr}");
    for key in ["queue_heartbeat_seconds = 30", "autoreload_failures_before_disabling = 3", "secret_key = \"sk_***\""] {
        assert!(stdout.contains(key), "`{key}` missing from:\n{stdout}");
    }
    assert!(!stdout.contains("sk_test_x"), "the Stripe key leaked:\n{stdout}");
}

#[tokio::test]
async fn stripe_trigger_credits_once_resends_and_refunds_offline() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let secret = "whsec_trigger";
    let server = Server::start(dir.path(), &[("CREDITFLOW_STRIPE__WEBHOOK_SECRET", secret)]);
    let to = format!("{}/webhooks/stripe", server.base_url);
    let trigger = |args: &[&str]| {
        let mut all = vec!["stripe", "trigger"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--to", &to, "--secret", secret]);
        run(dir.path(), &all, &[])
    };
    let (code, stdout, stderr) = trigger(&["payment_intent.succeeded", "--account", "tia", "--pack", "starter"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("payment_intent.succeeded evt_") && stdout.contains(": 200"), "{stdout}");
    let (_, admin, _) = run(dir.path(), &["token", "--sub", "ops", "--role", "admin"], &[]);
    let client = reqwest::Client::new();
    wait_for_balance(&client, &server.base_url, admin.trim(), "tia", 5_000_000).await;

    // The same event again: acknowledged as a duplicate, nothing credited.
    let kept: Vec<_> = std::fs::read_dir(dir.path().join(".creditflow/stripe-events")).expect("kept").collect();
    assert_eq!(kept.len(), 1);
    let id = kept[0].as_ref().expect("entry").path().file_stem().expect("name").to_string_lossy().to_string();
    let (code, stdout, _) = trigger(&["--resend", &id]);
    assert_eq!(code, 0);
    assert!(stdout.contains(r#""duplicate":true"#), "{stdout}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_balance(&client, &server.base_url, admin.trim(), "tia", 5_000_000).await;

    // A full refund of that payment takes the credits back.
    let (code, stdout, stderr) = trigger(&["charge.refunded", "--account", "tia"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    wait_for_balance(&client, &server.base_url, admin.trim(), "tia", 0).await;
    let nowhere = ["stripe", "trigger", "payment_intent.succeeded", "--to", "http://127.0.0.1:9/", "--secret", secret];
    let (code, _, stderr) = run(dir.path(), &nowhere, &[]);
    assert_eq!(code, 1, "an unreachable creditflow is an error");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    let (code, _, stderr) = trigger(&["--resend", "evt_never_sent"]);
    assert_eq!((code, stderr.contains("no event evt_never_sent")), (1, true), "{stderr}");
    drop(client); // idle keep-alive connections would hold up graceful shutdown
    server.terminate();
}

#[test]
fn report_recipients_can_be_a_comma_separated_variable() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let envs = [("CREDITFLOW_REPORT__RECIPIENTS", "finance@example.com, Audit <audit@example.com>")];
    let (code, stdout, stderr) = run(dir.path(), &["config"], &envs);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(r#"recipients = ["finance@example.com", "Audit <audit@example.com>"]"#), "{stdout}");
    let (code, stdout, _) = run(dir.path(), &["config"], &[("CREDITFLOW_REPORT__RECIPIENTS", "")]);
    assert_eq!(code, 0);
    assert!(stdout.contains("recipients = []"), "empty: nobody is emailed: {stdout}");
}

#[test]
fn empty_optional_settings_are_unset() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let envs = [("CREDITFLOW_STRIPE__WEBHOOK_SECRET", ""), ("CREDITFLOW_STRIPE__SECRET_KEY", ""), ("REDIS_URL", "")];
    let (code, stdout, stderr) = run(dir.path(), &["config"], &envs);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("secret_key") && !stdout.contains("webhook_secret"), "{stdout}");
}

#[test]
fn every_setting_compose_yaml_passes_is_one_creditflow_reads() {
    let compose = std::fs::read_to_string(format!("{}/../compose.yaml", env!("CARGO_MANIFEST_DIR"))).expect("compose");
    // `KEY: value` lines of the environment blocks (scripts/test checks the file is valid YAML).
    let settings: Vec<(String, String)> = compose
        .lines()
        .filter_map(|line| line.trim().split_once(": "))
        .filter(|(key, _)| key.starts_with("CREDITFLOW_") || *key == "DATABASE_URL" || *key == "REDIS_URL")
        .map(|(key, value)| {
            // `${VAR:?message}` must be given by the operator: a sample; `${VAR:-}` may stay empty.
            let value = if value.starts_with("${") && value.contains(":?") {
                match key {
                    "CREDITFLOW_AUTH__JWKS_URL" => "https://id.example.com/.well-known/jwks.json".to_owned(),
                    _ => "https://id.example.com/".to_owned(),
                }
            } else if let Some(default) = value.strip_prefix("${").and_then(|rest| rest.split_once(":-")) {
                // `${VAR:-default}`: the default stands when the operator sets nothing.
                default.1.trim_end_matches('}').to_owned()
            } else {
                value.trim_matches('"').to_owned()
            };
            (key.to_owned(), value)
        })
        .collect();
    assert!(settings.len() >= 10, "the environment blocks were read: {settings:?}");
    let dir = tempfile::tempdir().expect("temporary working directory");
    let envs: Vec<(&str, &str)> = settings.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    let (code, stdout, stderr) = run(dir.path(), &["config"], &envs);
    assert_eq!(code, 0, "a setting in compose.yaml is not one creditflow reads, or is invalid: {stderr}");
    assert!(stdout.contains("queue_url = \"redis://redis:6379\""), "{stdout}");
}

#[tokio::test]
async fn smoke_passes_on_the_embedded_setup_and_names_what_breaks() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let secret = "whsec_smoke";
    let origins = ("CREDITFLOW_CORS_ALLOWED_ORIGINS", r#"["https://app.example.com"]"#);
    let server = Server::start(dir.path(), &[("CREDITFLOW_STRIPE__WEBHOOK_SECRET", secret), origins]);
    let base = server.base_url.clone();
    let smoke = |dir: std::path::PathBuf, args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&dir, &args, &[])
        })
    };
    let canary = || ["--canary-account".to_owned(), "smoke-canary".to_owned()];
    let mut args = vec![
        "smoke".to_owned(),
        "--base-url".to_owned(),
        base.clone(),
        "--webhook-secret".to_owned(),
        secret.to_owned(),
        "--allowed-origin".to_owned(),
        "https://app.example.com".to_owned(),
    ];
    args.extend(canary());
    let (code, stdout, stderr) = smoke(dir.path().to_path_buf(), args).await.expect("ran");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.contains(" pass ")).count(), 13, "{stdout}");
    assert!(stdout.contains("https://app.example.com allowed"), "{stdout}");
    // Without the webhook secret the purchase cannot be sent: that row fails, the others pass (the canary still has
    // credits from the first run), and the exit status says so.
    let mut args = vec!["smoke".to_owned(), "--base-url".to_owned(), base.clone(), "--json".to_owned()];
    args.extend(canary());
    let (code, stdout, _) = smoke(dir.path().to_path_buf(), args).await.expect("ran");
    assert_eq!(code, 1);
    let rows: Vec<serde_json::Value> = stdout.lines().map(|line| serde_json::from_str(line).expect("json")).collect();
    let failed: Vec<&str> = rows.iter().filter(|r| r["passed"] == false).filter_map(|r| r["check"].as_str()).collect();
    assert_eq!(failed, ["purchase and redelivery"]);
    // An origin the deployment does not allow, given as allowed: the CORS row names it.
    let mut args = vec!["smoke".to_owned(), "--base-url".to_owned(), base.clone(), "--json".to_owned()];
    args.extend(["--allowed-origin".to_owned(), "https://other.example.com".to_owned()]);
    args.extend(["--webhook-secret".to_owned(), secret.to_owned()]);
    args.extend(canary());
    let (code, stdout, _) = smoke(dir.path().to_path_buf(), args).await.expect("ran");
    assert_eq!(code, 1);
    let rows: Vec<serde_json::Value> = stdout.lines().map(|line| serde_json::from_str(line).expect("json")).collect();
    let failed: Vec<&str> = rows.iter().filter(|r| r["passed"] == false).filter_map(|r| r["check"].as_str()).collect();
    // Other rows depend on timing under a loaded machine; this one must fail, naming the origin.
    assert!(failed.contains(&"CORS allowlist"), "{stdout}");
    let cors = rows.iter().find(|r| r["check"] == "CORS allowlist").expect("the CORS row");
    assert!(cors.to_string().contains("https://other.example.com"), "{cors}");
    server.terminate();
}

#[tokio::test]
async fn smoke_passes_on_postgres_and_redis_with_a_signing_key() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let database = TestDatabase::new(TestBackend::Postgres).await;
    let secret = "whsec_smoke_pg";
    let namespace = creditflow_testkit::redis_namespace();
    let redis = creditflow_testkit::redis_url();
    let auth = production_auth();
    let mut envs: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    envs.extend([
        ("DATABASE_URL", database.url.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("CREDITFLOW_QUEUE_URL", redis.as_str()),
        ("CREDITFLOW_QUEUE_NAMESPACE", namespace.as_str()),
        ("CREDITFLOW_STRIPE__WEBHOOK_SECRET", secret),
    ]);
    let (api, _) = Server::start_role(dir.path(), "api", &envs);
    let mut worker = spawn_worker(dir.path(), &envs);
    let key = format!("{}/../api/tests/fixtures/rsa-1.key", env!("CARGO_MANIFEST_DIR"));
    let elsewhere = tempfile::tempdir().expect("the operator's directory");
    let args: Vec<String> = [
        "smoke",
        "--base-url",
        &api.base_url,
        "--signing-key",
        &key,
        "--issuer",
        "https://issuer.test/",
        "--audience",
        "creditflow-test",
        "--webhook-secret",
        secret,
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let path = elsewhere.path().to_path_buf();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&path, &args, &[])
    })
    .await
    .expect("ran");
    assert_eq!(code, 0, "{stdout}{stderr}");
    let _ = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    let _ = worker.wait();
    api.terminate();
}

#[tokio::test]
async fn report_runs_now_with_progress_emails_once_and_shows_what_it_stored() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let secret = "whsec_report";
    let server = Server::start(dir.path(), &[("CREDITFLOW_STRIPE__WEBHOOK_SECRET", secret)]);
    let to = format!("{}/webhooks/stripe", server.base_url);
    let (_, admin, _) = run(dir.path(), &["token", "--sub", "ops", "--role", "admin"], &[]);
    let client = reqwest::Client::new();
    // The refund after the purchase is credited (a refund of an unknown payment waits for it).
    for (event, balance) in [("payment_intent.succeeded", 5_000_000), ("charge.refunded", 0)] {
        let args =
            ["stripe", "trigger", event, "--account", "rhea", "--pack", "starter", "--to", &to, "--secret", secret];
        let (code, stdout, stderr) = run(dir.path(), &args, &[]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        wait_for_balance(&client, &server.base_url, admin.trim(), "rhea", balance).await;
    }
    drop(client);
    server.terminate();

    // Today's report on demand: the purchase granted 5,000 credits, the refund took them back.
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let finance = [("CREDITFLOW_REPORT__RECIPIENTS", "[\"finance@example.com\"]")];
    let (code, stdout, stderr) = run(dir.path(), &["report", "--date", &today], &finance);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("[1/7]") && stderr.contains("[7/7]") && stderr.contains("emailing finance"), "{stderr}");
    assert!(stdout.contains(&format!("report {today} (UTC): PASSED")), "{stdout}");
    assert!(stdout.contains("purchases_vs_stripe   skipped"), "no Stripe key, no comparison: {stdout}");
    assert!(stdout.contains("email:  sent to finance@example.com"), "{stdout}");
    let outbox = || std::fs::read_dir(dir.path().join("outbox")).map_or(0, Iterator::count);
    assert_eq!(outbox(), 1);
    let (code, stdout, _) = run(dir.path(), &["report", "--date", &today, "--json"], &finance);
    assert_eq!(code, 0);
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("the summary is JSON");
    let figures = (&summary["credits"]["purchasedMillicredits"], &summary["credits"]["refundsMillicredits"]);
    assert_eq!(figures, (&json!(5_000_000), &json!(5_000_000)), "{summary:#}");
    assert_eq!(summary["liability"]["closingMillicredits"], 0, "{summary:#}");
    assert_eq!(outbox(), 1, "a second run of the date sends no second email");
    let (code, stdout, _) = run(dir.path(), &["report", "--date", &today, "--force"], &finance);
    assert_eq!((code, outbox()), (0, 2), "--force sends it again: {stdout}");

    let (code, stdout, _) = run(dir.path(), &["report", "show", "--date", &today], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("PASSED") && stdout.contains("report.html") && stdout.contains("chart.png"), "{stdout}");
    let out = dir.path().join("files");
    let (code, stdout, _) = run(dir.path(), &["report", "show", "--date", &today, "--out", "files"], &[]);
    assert_eq!(code, 0, "{stdout}");
    let html = std::fs::read_to_string(out.join("report.html")).expect("the HTML page");
    assert!(html.contains("chart.png"), "the page shows the chart beside it");
    assert!(std::fs::read(out.join("chart.png")).expect("chart").starts_with(b"\x89PNG"));
    let csv = std::fs::read_to_string(out.join("credits_by_kind.csv")).expect("a CSV table");
    assert!(csv.lines().count() >= 2, "{csv}");

    let (code, _, stderr) = run(dir.path(), &["report", "show", "--date", "2001-01-01"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no report is stored for 2001-01-01"), "{stderr}");
    let (code, _, stderr) = run(dir.path(), &["report", "--date", "2026-13-01"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("2026-13-01"), "the bad date is named: {stderr}");
    let (code, _, stderr) = run(dir.path(), &["report"], &[("CREDITFLOW_REPORT__TIME_ZONE", "Mars/Olympus")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("report.time_zone"), "{stderr}");
}

/// No Docker engine runs here, so the image is checked by reading the Dockerfile: a build stage and a separate slim
/// runtime stage that copies only the binary and runs it as an unprivileged user; and secrets stay out of the context.
#[test]
fn the_dockerfile_is_multi_stage_and_runs_unprivileged() {
    let root = format!("{}/..", env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).expect("Dockerfile");
    // Each stage from its `FROM` line on.
    let text = format!("\n{dockerfile}");
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).map(str::trim).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    assert!(stages[0].contains("cargo build --release --locked -p creditflow"), "{}", stages[0]);
    let runtime = stages[1];
    assert!(runtime.starts_with("debian:") && runtime.contains("-slim"), "a slim runtime: {runtime}");
    assert!(!runtime.contains("cargo") && runtime.contains("COPY --from=build /creditflow"), "{runtime}");
    let user = runtime.lines().find_map(|line| line.strip_prefix("USER ")).expect("a USER line");
    assert!(user != "root" && user != "0", "runs as {user}");
    let ignored = std::fs::read_to_string(format!("{root}/.dockerignore")).expect(".dockerignore");
    for path in ["target", ".git", "*.db", "creditflow-dev-key.pem"] {
        assert!(ignored.lines().any(|line| line == path), "{path} is kept out of the build context");
    }
}

const CRASH_CARD: &str = "version = \"crash-v1\"\nrounding = \"precise\"\n[models.m1]\ncalls = 1\n";
const CRASH_BATCHES: i64 = 6;
const CRASH_EVENTS: i64 = 5_000;
const CRASH_ACCOUNTS: i64 = 12;

/// Stores and activates the crash test's card, then submits its batches: event `n` of each is for account
/// `crash<n % accounts>` and uses `1 + n % 3` calls at 1 credit each. Returns the batch ids.
async fn submit_crash_batches(store: &creditflow_store::Store) -> Vec<String> {
    let card = creditflow_domain::RateCard::from_toml(CRASH_CARD).expect("card");
    store.add_rate_card(&card, CRASH_CARD).await.expect("stored");
    let audit = creditflow_store::NewAuditRecord {
        actor: "test".into(),
        action: "rate_card.activate".into(),
        subject: "crash-v1".into(),
        reason: None,
        details: "{}".into(),
    };
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    store.activate_rate_card(card.version(), since, &audit).await.expect("activated");
    let mut batch_ids = Vec::new();
    for batch in 0..CRASH_BATCHES {
        let events: Vec<serde_json::Value> = (0..CRASH_EVENTS)
            .map(|n| {
                json!({"eventId": format!("b{batch}-e{n}"), "accountId": format!("crash{}", n % CRASH_ACCOUNTS),
                    "model": "m1", "usage": {"calls": 1 + n % 3}})
            })
            .collect();
        let text = serde_json::to_string(&events).expect("json");
        let submitted = store.submit_usage_batch("gateway", None, &text, CRASH_EVENTS).await.expect("submitted");
        let creditflow_store::BatchSubmitted::New(batch) = submitted else { panic!("a new batch") };
        batch_ids.push(batch.id);
    }
    batch_ids
}

/// Every batch completed with each event debited once, and balances equal the sum of their entries.
async fn each_crash_event_is_debited_once(store: &creditflow_store::Store, batch_ids: &[String], kills: usize) {
    for id in batch_ids {
        let batch = store.usage_batch(id).await.expect("read").expect("exists");
        let result = batch.result.expect("a completed batch has its result");
        // A run cut short committed some accounts; the run that finished found those events already debited.
        assert_eq!((result.debited + result.duplicates, result.rejected), (CRASH_EVENTS, 0), "{id}: {result:?}");
    }
    let mut entries = 0;
    for account in 0..CRASH_ACCOUNTS {
        let id = creditflow_domain::AccountId::new(format!("crash{account}")).expect("valid");
        let lines = store.entries(&id, 0, 100_000).await.expect("entries");
        let mut keys: Vec<&str> = lines.iter().map(|entry| entry.idempotency_key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), lines.len(), "crash{account}: one entry per event");
        let per_batch: i64 =
            (0..CRASH_EVENTS).filter(|n| n % CRASH_ACCOUNTS == account).map(|n| -1_000 * (1 + n % 3)).sum();
        let balance = store.account(&id).await.expect("read").expect("exists").balance.get();
        assert_eq!(balance, per_batch * CRASH_BATCHES, "crash{account}: each event debited once");
        entries += lines.len();
    }
    assert_eq!(i64::try_from(entries).ok(), Some(CRASH_BATCHES * CRASH_EVENTS), "every event once after {kills} kills");
    let totals = store.ledger_totals(None).await.expect("totals");
    assert_eq!(totals.balances, totals.entries, "balances are the sum of their entries");
}

/// Crash consistency: worker processes on PostgreSQL and Redis are killed with SIGKILL in the middle of pricing and
/// debiting usage batches, again and again; once one is left to finish, every event is debited exactly once, every
/// batch completes, and balances equal the sum of their entries.
#[tokio::test]
async fn usage_batches_survive_workers_killed_again_and_again() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let shared = Shared::new().await;
    let envs = shared.envs();
    let (code, _, stderr) = run(dir.path(), &["migrate"], &envs);
    assert_eq!(code, 0, "{stderr}");
    let store = creditflow_store::Store::connect(&shared.database.url, 4).await.expect("the ledger");
    let batch_ids = submit_crash_batches(&store).await;
    // Each worker is killed 0 to 80 ms after it has debited something: in the middle of the batches' transactions.
    let entry_count = || async { store.ledger_totals(None).await.expect("totals").entry_count };
    let (mut kills, mut mid_work) = (0, 0);
    for round in 0..6u64 {
        let before = entry_count().await;
        if before == CRASH_BATCHES * CRASH_EVENTS {
            break;
        }
        let mut doomed = spawn_worker(dir.path(), &envs);
        let deadline = Instant::now() + Duration::from_secs(30);
        while entry_count().await == before {
            assert!(Instant::now() < deadline, "round {round}: the worker never debited anything");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let nanos = u64::from(time::OffsetDateTime::now_utc().nanosecond());
        tokio::time::sleep(Duration::from_millis((nanos / 1_000 + round * 37) % 80)).await;
        doomed.kill().expect("SIGKILL");
        doomed.wait().expect("reaped");
        kills += 1;
        if entry_count().await < CRASH_BATCHES * CRASH_EVENTS {
            mid_work += 1;
        }
    }
    assert!(mid_work >= 3, "only {mid_work} of {kills} kills landed before the work was done");
    let mut survivor = spawn_worker(dir.path(), &envs);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut done = 0;
        for id in &batch_ids {
            let batch = store.usage_batch(id).await.expect("read").expect("exists");
            done += usize::from(batch.status == creditflow_store::BatchStatus::Completed);
        }
        if done == batch_ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of {} batches completed after {kills} kills", batch_ids.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    each_crash_event_is_debited_once(&store, &batch_ids, kills).await;
    let status = Command::new("kill").args(["-TERM", &survivor.id().to_string()]).status().expect("signal");
    assert!(status.success());
    assert!(survivor.wait().expect("exits").success());
}
