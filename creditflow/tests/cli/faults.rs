//! Broker and database faults under load, with the real binary on PostgreSQL and Redis: a Redis that restarts empty
//! in the middle of a burst of payments, and a PostgreSQL that stops for a few seconds while clients keep calling.
//! Each test runs its own redis-server or PostgreSQL instance on a free port: the shared ones serve the other tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use creditflow_testkit::{TestBackend, TestDatabase};
use futures_util::StreamExt as _;

use super::{Server, creditflow, production_auth, run, starter_purchase_event};

/// A redis-server of the test's own that keeps nothing on disk, as production's default setup.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (install Debian's redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    /// SIGKILL: whatever it held is gone.
    fn kill(mut self) -> u16 {
        self.child.kill().expect("SIGKILL redis-server");
        self.child.wait().expect("reaped");
        self.port
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port()
}

pub(super) async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.expect("count")
}

/// Posts `events` signed payment events for accounts `<prefix>0..<prefix>accounts-1`, 16 at a time.
pub(super) async fn pay(
    client: &reqwest::Client,
    base_url: &str,
    secret: &str,
    prefix: &str,
    from: u64,
    events: u64,
    accounts: u64,
) {
    let sends = (from..from + events).map(|n| {
        let body = starter_purchase_event(&format!("evt_{prefix}{n}"), &format!("{prefix}{}", n % accounts));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = creditflow_api::sign_stripe_payload(body.as_bytes(), secret, now);
        let request = client.post(format!("{base_url}/webhooks/stripe")).header("stripe-signature", signature);
        async move { request.body(body).send().await.expect("answered").status() }
    });
    let statuses: Vec<_> = futures_util::stream::iter(sends).buffer_unordered(16).collect().await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
}

#[tokio::test]
async fn a_redis_restarted_empty_under_load_loses_no_job() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let database = TestDatabase::new(TestBackend::Postgres).await;
    let redis = OwnRedis::start(free_port());
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let secret = "whsec_redis_restart";
    let auth = production_auth();
    let mut envs: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    envs.extend([
        ("DATABASE_URL", database.url.as_str()),
        ("CREDITFLOW_QUEUE_URL", redis_url.as_str()),
        ("CREDITFLOW_QUEUE_HEARTBEAT_SECONDS", "1"),
        ("CREDITFLOW_QUEUE_REQUEUE_AFTER_SECONDS", "4"),
        ("CREDITFLOW_STRIPE__WEBHOOK_SECRET", secret),
        ("CREDITFLOW_LOG_FORMAT", "json"),
    ]);
    let (code, _, stderr) = run(dir.path(), &["migrate"], &envs);
    assert_eq!(code, 0, "{stderr}");
    let (api, _) = Server::start_role(dir.path(), "api", &envs);
    let worker_log = dir.path().join("worker.log");
    let mut worker = creditflow(dir.path())
        .arg("worker")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&worker_log).expect("log file"))
        .spawn()
        .expect("start a worker");
    let store = creditflow_store::Store::connect(&database.url, 2).await.expect("the ledger");
    let pool = sqlx::PgPool::connect(&database.url).await.expect("a connection for the checks");
    let client = reqwest::Client::new();
    let (prefix, accounts) = ("rr", 25);
    let credited = "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'purchase_credit'";
    let queued = "SELECT COUNT(*) FROM jobs WHERE queue = 'stripe_events' AND state = 'pending'";

    // Bursts of payments; Redis dies while jobs wait in it (relayed, recorded pending, not started) and comes back
    // empty. The API takes events all along: it needs only PostgreSQL.
    let mut sent: u64 = 0;
    let mut lost = 0;
    let as_count = |n: u64| i64::try_from(n).expect("small");
    let mut redis = Some(redis);
    while lost == 0 {
        assert!(sent < 6_000, "the worker kept up with every burst: no job was ever waiting in Redis");
        let burst = {
            let (client, base_url) = (client.clone(), api.base_url.clone());
            tokio::spawn(async move { pay(&client, &base_url, secret, prefix, sent, 1_000, accounts).await })
        };
        sent += 1_000;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if count(&pool, queued).await >= 20 {
                let port = redis.take().expect("running").kill();
                lost = count(&pool, queued).await;
                redis = Some(OwnRedis::start(port));
                break;
            }
            if (burst.is_finished() && count(&pool, credited).await == as_count(sent)) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        burst.await.expect("the burst was sent");
    }
    // Load goes on while the broker is back and empty.
    pay(&client, &api.base_url, secret, prefix, sent, 200, accounts).await;
    sent += 200;

    let deadline = Instant::now() + Duration::from_secs(90);
    while count(&pool, credited).await < as_count(sent) {
        let done = count(&pool, credited).await;
        let log = || std::fs::read_to_string(&worker_log).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "{done} of {sent} credited; {lost} jobs lost with Redis; worker:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every payment credited once, every balance the sum of its entries.
    let sent = as_count(sent);
    assert_eq!(count(&pool, credited).await, sent, "no double credit");
    let distinct = "SELECT COUNT(DISTINCT idempotency_key) FROM ledger_entries WHERE kind = 'purchase_credit'";
    assert_eq!(count(&pool, distinct).await, sent);
    let totals = store.ledger_totals(None).await.expect("totals");
    assert_eq!(totals.balances, totals.entries);
    assert_eq!(totals.balances.get(), sent * 5_000_000);
    let unfinished = "SELECT COUNT(*) FROM jobs WHERE state <> 'done'";
    assert_eq!(count(&pool, unfinished).await, 0, "every job record ends done");
    let status = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().expect("signal");
    assert!(status.success());
    let exit = worker.wait().expect("exits");
    let log = std::fs::read_to_string(&worker_log).expect("worker log");
    assert!(log.contains("stalled jobs queued again"), "the sweep brought the lost jobs back:\n{log}");
    assert!(exit.success(), "the worker survived the Redis restart and stopped cleanly: {exit}\n{log}");
    drop(client);
    api.terminate();
}

/// A PostgreSQL cluster of the test's own (initdb in a temporary directory, trust auth, no fsync), run by the
/// `postgres` user when the test runs as root, as PostgreSQL requires.
struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries in /usr/lib/postgresql (Debian's postgresql package)")
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("an initdb");
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        if running_as_root() {
            let status =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().expect("chown");
            assert!(status.success());
        }
        let cluster = Self { dir, bin, port: free_port() };
        let data = cluster.data();
        let output = cluster
            .command("initdb")
            .args(["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(output.status.success(), "initdb: {}", String::from_utf8_lossy(&output.stderr));
        cluster.pg_ctl_start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        let output = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"])
            .output()
            .expect("pg_ctl");
        assert!(output.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Stops at once, as a crash would: connections drop, nothing is flushed politely.
    fn stop_immediately(&self) {
        let output = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output()
            .expect("pg_ctl");
        assert!(output.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&output.stderr));
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-D", &self.data(), "-m", "immediate", "stop"]).output();
    }
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.starts_with(b"0\n"))
}

/// A token for the API tests' RSA key (the `production_auth` settings).
pub(super) fn mint(sub: &str, role: &str) -> String {
    let pem = std::fs::read(format!("{}/../api/tests/fixtures/rsa-1.key", env!("CARGO_MANIFEST_DIR"))).expect("key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("an RSA key");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "iss": "https://issuer.test/", "aud": "creditflow-test", "sub": sub, "role": [role],
        "iat": now, "nbf": now, "exp": now + 3_600,
    });
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).expect("signed")
}

/// What a client saw for one reconcile.
struct Outcome {
    key: String,
    account: u64,
    status: u16,
    code: String,
    latency: Duration,
    at: Instant,
}

#[tokio::test]
async fn a_postgres_stopped_under_load_gets_fast_503s_and_recovers_with_nothing_half_written() {
    let dir = tempfile::tempdir().expect("temporary working directory");
    let postgres = OwnPostgres::start();
    let url = postgres.url();
    let auth = production_auth();
    let mut envs: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    envs.extend([("DATABASE_URL", url.as_str()), ("CREDITFLOW_RATE_LIMIT_PER_MINUTE", "1000000")]);
    let (api, _) = Server::start_role(dir.path(), "api", &envs);
    let client = reqwest::Client::new();
    let (admin, service) = (mint("ops", "admin"), mint("billing", "service"));
    let accounts = 8_u64;
    for n in 0..accounts {
        let response = client
            .post(format!("{}/api/admin/accounts/pg-out-{n}/adjustments", api.base_url))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"idempotencyKey": "fund", "amountMillicredits": 1_000_000_000, "reason": "test"}))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    }

    // 8 clients reconcile without pause; PostgreSQL stops 1.5 s in, for 3 s, then the load goes on for 6 s.
    let start = Instant::now();
    let stop_at = start + Duration::from_millis(1_500);
    let back_at = stop_at + Duration::from_secs(3);
    let end = back_at + Duration::from_secs(6);
    let clients = (0..8_u64).map(|c| {
        let (client, base_url, token) = (client.clone(), api.base_url.clone(), service.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0_u64;
            while Instant::now() < end {
                let (key, account) = (format!("c{c}-{n}"), (c + n) % accounts);
                let body = serde_json::json!({"idempotencyKey": key, "accountId": format!("pg-out-{account}"),
                    "model": "gpt-4o", "usage": {"input_tokens": 1_000}});
                let sent = Instant::now();
                let response = client
                    .post(format!("{base_url}/api/usage/reconcile"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .expect("creditflow answers even without its database");
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
                let answer: serde_json::Value = response.json().await.unwrap_or_default();
                let code = answer["code"].as_str().unwrap_or_default().to_owned();
                seen.push(Outcome { key, account, status, code, latency: sent.elapsed(), at: sent });
                n += 1;
                // A well-behaved client waits as long as a 503's Retry-After says.
                tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(0))).await;
            }
            seen
        })
    });
    let clients: Vec<_> = clients.collect();
    tokio::time::sleep_until(stop_at.into()).await;
    postgres.stop_immediately();
    let stopped = Instant::now();
    tokio::time::sleep_until(back_at.into()).await;
    postgres.pg_ctl_start();
    let restarted = Instant::now();
    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.extend(client.await.expect("client"));
    }

    // Every answer was a 200 or a 503 database_unavailable; never a 500.
    let refused: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    for outcome in &refused {
        assert_eq!((outcome.status, outcome.code.as_str()), (503, "database_unavailable"), "{}", outcome.key);
    }
    assert!(refused.len() >= 8, "the outage was felt: {} refusals", refused.len());
    // Fast: once a request has found the database gone, the others are refused at once. A request already waiting
    // for a connection when it went waits at most the pool's acquire timeout (1 s).
    let mut latencies: Vec<Duration> = refused.iter().map(|o| o.latency).collect();
    latencies.sort();
    let p90 = latencies[latencies.len() * 9 / 10];
    assert!(p90 < Duration::from_millis(100), "90% of the 503s within 100 ms; p90 was {p90:?}");
    let slowest = latencies.last().copied().unwrap_or_default();
    assert!(slowest < Duration::from_millis(2_500), "no 503 waits long past the acquire timeout: {slowest:?}");
    // It recovered by itself: every request sent 3 s after PostgreSQL was back succeeded.
    let late_failures = refused.iter().filter(|o| o.at > restarted + Duration::from_secs(3)).count();
    assert_eq!(late_failures, 0, "requests still refused 3 s after PostgreSQL came back");
    let during = outcomes.iter().filter(|o| o.at > stopped + Duration::from_millis(1_500) && o.at < back_at);
    assert!(during.clone().count() > 0 && during.clone().all(|o| o.status == 503), "while it was down: 503s");

    // Nothing half-written: a retry of every refused request, with its key, is debited once; the ledger holds one
    // entry per key and every balance is its funding minus its debits.
    for outcome in &refused {
        let body = serde_json::json!({"idempotencyKey": outcome.key, "accountId": format!("pg-out-{}", outcome.account),
            "model": "gpt-4o", "usage": {"input_tokens": 1_000}});
        let response = client
            .post(format!("{}/api/usage/reconcile", api.base_url))
            .bearer_auth(&service)
            .json(&body)
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200, "retry of {}", outcome.key);
    }
    let store = creditflow_store::Store::connect(&url, 2).await.expect("the ledger");
    let totals = store.ledger_totals(None).await.expect("totals");
    let requests = i64::try_from(outcomes.len()).expect("small");
    let accounts_i64 = i64::try_from(accounts).expect("small");
    assert_eq!(totals.entry_count, accounts_i64 + requests, "one entry per funding and per request");
    assert_eq!(totals.balances, totals.entries);
    // gpt-4o input at 0.0025 credits: 1,000 tokens = 2.5 credits, charged 3 under the ceil card.
    assert_eq!(totals.balances.get(), accounts_i64 * 1_000_000_000 - requests * 3_000);
    drop(client);
    api.terminate();
}
