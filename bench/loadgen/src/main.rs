//! `creditflow-loadgen`: the load generator of creditflow's benchmarks (`bench/`). It runs outside the server, as a
//! client would: a fixed number of connections each sending its next request as soon as the last one is answered
//! (closed loop), or requests at a fixed rate whatever the answers (open loop, latency counted from when each request
//! was due, so a slow server cannot hide its queueing). It prints one JSON line of results.
//!
//! Subcommands: `mint` (an RS256 token from a PEM key), `fund` (credit accounts through the admin API), `reconcile`,
//! `webhook` (signed Stripe events) and `batches` (usage batches, waited for until processed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "creditflow-loadgen", about = "Load for creditflow's benchmarks; prints one JSON line of results")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print an RS256 token signed with a PEM private key.
    Mint(MintArgs),
    /// Credit accounts `<prefix>0..<prefix>N-1` through `POST /api/admin/accounts/{id}/adjustments`.
    Fund(FundArgs),
    /// `POST /api/usage/reconcile` across accounts (one account: the hot-account case).
    Reconcile(ReconcileArgs),
    /// `POST /webhooks/stripe` with signed `payment_intent.succeeded` events, each a new payment.
    Webhook(WebhookArgs),
    /// `POST /api/usage/batches`, then poll each batch until it is completed.
    Batches(BatchArgs),
}

#[derive(Debug, Args)]
struct MintArgs {
    /// PEM file of an RSA private key.
    #[arg(long)]
    key: String,
    #[arg(long)]
    sub: String,
    /// Roles (repeat).
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    #[arg(long)]
    issuer: String,
    #[arg(long)]
    audience: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
}

#[derive(Debug, Args)]
struct Target {
    /// The server's base URL, such as `http://127.0.0.1:8080`.
    #[arg(long)]
    url: String,
    /// Account ids are this prefix followed by 0..accounts.
    #[arg(long, default_value = "bench-")]
    prefix: String,
    /// Number of accounts the load spreads over.
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
}

#[derive(Debug, Args)]
struct FundArgs {
    #[command(flatten)]
    target: Target,
    /// An admin token.
    #[arg(long)]
    token: String,
    /// Millicredits granted to each account.
    #[arg(long, default_value_t = 1_000_000_000_000)]
    millicredits: i64,
}

#[derive(Debug, Args)]
struct Load {
    /// Concurrent connections (closed loop), or the most requests in flight (open loop).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds of load before measuring starts (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Requests per second, open loop (latency counted from when each request was due); unset: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Makes idempotency keys and event ids unique to this run.
    #[arg(long, default_value = "run")]
    run_id: String,
}

#[derive(Debug, Args)]
struct ReconcileArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    load: Load,
    /// A service (or admin) token; the account is named in each body.
    #[arg(long)]
    token: String,
}

#[derive(Debug, Args)]
struct WebhookArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    load: Load,
    /// The webhook signing secret the server has.
    #[arg(long)]
    secret: String,
    /// The pack each payment buys, and its price in cents.
    #[arg(long, default_value = "starter")]
    pack: String,
    #[arg(long, default_value_t = 500)]
    price_cents: i64,
}

#[derive(Debug, Args)]
struct BatchArgs {
    #[command(flatten)]
    target: Target,
    /// A service (or admin) token.
    #[arg(long)]
    token: String,
    /// Batches to submit.
    #[arg(long, default_value_t = 10)]
    batches: u64,
    /// Events per batch.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Batches submitted at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    #[arg(long, default_value = "run")]
    run_id: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mint(args) => mint(&args).map(|token| println!("{token}")),
        Command::Fund(args) => fund(&args).await,
        Command::Reconcile(args) => reconcile(args).await,
        Command::Webhook(args) => webhook(args).await,
        Command::Batches(args) => batches(&args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("creditflow-loadgen: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn mint(args: &MintArgs) -> Result<String, String> {
    let pem = std::fs::read(&args.key).map_err(|e| format!("cannot read {}: {e}", args.key))?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| format!("{}: {e}", args.key))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let claims = json!({
        "iss": args.issuer, "aud": args.audience, "sub": args.sub, "role": args.roles,
        "iat": now, "nbf": now, "exp": now + args.ttl,
    });
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
        .map_err(|e| e.to_string())
}

fn client(connections: usize) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}

async fn fund(args: &FundArgs) -> Result<(), String> {
    let http = client(16)?;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, next) = (http.clone(), next.clone());
        let (url, prefix, token) = (args.target.url.clone(), args.target.prefix.clone(), args.token.clone());
        let (accounts, amount) = (args.target.accounts, args.millicredits);
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= accounts {
                    return Ok::<(), String>(());
                }
                let body = json!({"idempotencyKey": "bench-fund", "amountMillicredits": amount, "reason": "benchmark"});
                let response = http
                    .post(format!("{url}/api/admin/accounts/{prefix}{n}/adjustments"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    let status = response.status();
                    return Err(format!("funding {prefix}{n}: {status} {}", response.text().await.unwrap_or_default()));
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    println!("{}", json!({"mode": "fund", "accounts": args.target.accounts}));
    Ok(())
}

/// What one request is: its method, path, headers and body, built from its sequence number.
type Build = Arc<dyn Fn(u64) -> (String, Vec<(&'static str, String)>, String) + Send + Sync>;

/// Latencies and answers of the measured window.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    failures: u64,
}

impl Tally {
    fn merge(&mut self, other: Self) {
        self.latencies_us.extend(other.latencies_us);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.failures += other.failures;
    }
}

async fn send(http: &reqwest::Client, url: &str, build: &Build, n: u64) -> Result<u16, ()> {
    let (path, headers, body) = build(n);
    let mut request = http.post(format!("{url}{path}")).header("content-type", "application/json").body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(|_| ())?;
    let status = response.status().as_u16();
    // Read the whole answer: a client that hangs up early measures less than the server's work.
    response.bytes().await.map_err(|_| ())?;
    Ok(status)
}

/// Runs `build`'s requests for warmup + duration and reports the measured window.
async fn drive(url: &str, load: &Load, mode: &str, build: Build) -> Result<Value, String> {
    let http = client(load.clients)?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(load.warmup);
    let end = measure_from + Duration::from_secs_f64(load.duration);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    if let Some(rate) = load.rate {
        // Open loop: request i is due at start + i/rate; at most `clients` in flight, the rest wait their turn but
        // their latency still counts from when they were due.
        let permits = Arc::new(tokio::sync::Semaphore::new(load.clients));
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut i: u32 = 0;
        loop {
            let due = start + interval * i;
            if due >= end {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let permit = permits.clone().acquire_owned().await.map_err(|e| e.to_string())?;
            let (http, build, url, next) = (http.clone(), build.clone(), url.to_owned(), next.clone());
            tasks.push(tokio::spawn(async move {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let answer = send(&http, &url, &build, n).await;
                drop(permit);
                let mut tally = Tally::default();
                if due >= measure_from {
                    record(&mut tally, answer, due.elapsed());
                }
                tally
            }));
            i += 1;
        }
    } else {
        for _ in 0..load.clients {
            let (http, build, url, next) = (http.clone(), build.clone(), url.to_owned(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        return tally;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let answer = send(&http, &url, &build, n).await;
                    if sent >= measure_from {
                        record(&mut tally, answer, sent.elapsed());
                    }
                }
            }));
        }
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.map_err(|e| e.to_string())?);
    }
    Ok(summary(mode, load, tally))
}

fn record(tally: &mut Tally, answer: Result<u16, ()>, latency: Duration) {
    match answer {
        Ok(status) => {
            *tally.statuses.entry(status).or_default() += 1;
            tally.latencies_us.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        }
        Err(()) => tally.failures += 1,
    }
}

#[allow(clippy::cast_precision_loss)] // counts and microseconds far below 2^52
fn summary(mode: &str, load: &Load, mut tally: Tally) -> Value {
    tally.latencies_us.sort_unstable();
    let answered = tally.latencies_us.len();
    let percentile = |p: f64| -> f64 {
        if answered == 0 {
            return 0.0;
        }
        // Nearest rank.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((p / 100.0) * answered as f64).ceil().max(1.0) as usize;
        tally.latencies_us[rank.min(answered) - 1] as f64 / 1000.0
    };
    let ok: u64 = tally.statuses.iter().filter(|(status, _)| (200..300).contains(*status)).map(|(_, n)| n).sum();
    let statuses: BTreeMap<String, u64> = tally.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect();
    json!({
        "mode": mode,
        "clients": load.clients,
        "rate": load.rate,
        "seconds": load.duration,
        "requests": answered as u64 + tally.failures,
        "ok": ok,
        "statuses": statuses,
        "connection_failures": tally.failures,
        "ok_per_s": ok as f64 / load.duration,
        "p50_ms": percentile(50.0),
        "p90_ms": percentile(90.0),
        "p99_ms": percentile(99.0),
        "max_ms": percentile(100.0),
    })
}

async fn reconcile(args: ReconcileArgs) -> Result<(), String> {
    let (prefix, accounts, run) = (args.target.prefix.clone(), args.target.accounts.max(1), args.load.run_id.clone());
    let token = format!("Bearer {}", args.token);
    let build: Build = Arc::new(move |n| {
        // Spread consecutive requests over the accounts; with one account every request is on it.
        let account = format!("{prefix}{}", n % accounts);
        let body = json!({
            "idempotencyKey": format!("{run}-{n}"),
            "accountId": account,
            "model": "gpt-4o",
            "usage": {"input_tokens": 400 + n % 800, "output_tokens": 100},
        });
        ("/api/usage/reconcile".to_owned(), vec![("authorization", token.clone())], body.to_string())
    });
    let mode = if accounts == 1 { "reconcile-hot" } else { "reconcile" };
    let mut result = drive(&args.target.url, &args.load, mode, build).await?;
    result["accounts"] = accounts.into();
    println!("{result}");
    Ok(())
}

async fn webhook(args: WebhookArgs) -> Result<(), String> {
    let (prefix, accounts, run) = (args.target.prefix.clone(), args.target.accounts.max(1), args.load.run_id.clone());
    let (secret, pack, price) = (args.secret.clone(), args.pack.clone(), args.price_cents);
    let build: Build = Arc::new(move |n| {
        let now = i64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs(),
        )
        .unwrap_or(i64::MAX);
        // The event and the payment share a suffix, so the benchmark can pair each event with its credit.
        let suffix = format!("{run}{n}");
        let event = json!({
            "id": format!("evt_{suffix}"), "object": "event", "api_version": "2026-09-30", "created": now,
            "type": "payment_intent.succeeded", "livemode": false, "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "data": {"object": {
                "id": format!("pi_{suffix}"), "object": "payment_intent", "amount": price, "amount_received": price,
                "currency": "usd", "created": now, "customer": format!("cus_{prefix}{}", n % accounts),
                "livemode": false, "status": "succeeded",
                "metadata": {"creditflow_account_id": format!("{prefix}{}", n % accounts), "creditflow_pack_id": pack},
            }},
        })
        .to_string();
        let signature = creditflow_domain::signature::sign(event.as_bytes(), &secret, now);
        ("/webhooks/stripe".to_owned(), vec![("stripe-signature", signature)], event)
    });
    let mut result = drive(&args.target.url, &args.load, "webhook", build).await?;
    result["accounts"] = accounts.into();
    println!("{result}");
    Ok(())
}

async fn batches(args: &BatchArgs) -> Result<(), String> {
    let http = client(args.concurrency + 1)?;
    let accounts = args.target.accounts.max(1);
    // Bodies are built before the clock starts: the benchmark times creditflow, not JSON building here.
    let bodies: Vec<String> = (0..args.batches)
        .map(|b| {
            let events: Vec<Value> = (0..args.events)
                .map(|e| {
                    let n = b * args.events + e;
                    json!({
                        "eventId": format!("{}-{n}", args.run_id),
                        "accountId": format!("{}{}", args.target.prefix, n % accounts),
                        "model": "gpt-4o",
                        "usage": {"input_tokens": 400 + n % 800, "output_tokens": 100},
                    })
                })
                .collect();
            json!({"idempotencyKey": format!("{}-batch-{b}", args.run_id), "events": events}).to_string()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let start = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = Vec::new();
    for body in bodies {
        let permit = permits.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let (http, url, token) = (http.clone(), args.target.url.clone(), args.token.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = submit_and_wait(&http, &url, &token, body, deadline).await;
            drop(permit);
            outcome
        }));
    }
    let (mut debited, mut duplicates, mut rejected) = (0_i64, 0_i64, 0_i64);
    let mut submit_ms = Vec::new();
    for task in tasks {
        let (view, submitted) = task.await.map_err(|e| e.to_string())??;
        debited += view["debitedCount"].as_i64().unwrap_or_default();
        duplicates += view["duplicateCount"].as_i64().unwrap_or_default();
        rejected += view["rejectedCount"].as_i64().unwrap_or_default();
        submit_ms.push(submitted.as_secs_f64() * 1000.0);
    }
    let seconds = start.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let events = (args.batches * args.events) as f64;
    println!(
        "{}",
        json!({
            "mode": "batches", "batches": args.batches, "events_per_batch": args.events,
            "concurrency": args.concurrency, "seconds": seconds, "events_per_s": events / seconds,
            "debited": debited, "duplicates": duplicates, "rejected": rejected,
            "submit_ms_max": submit_ms.iter().copied().fold(0.0, f64::max),
        })
    );
    Ok(())
}

/// Submits one batch and polls it until completed; returns its final view and how long the submission took.
async fn submit_and_wait(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: String,
    deadline: Instant,
) -> Result<(Value, Duration), String> {
    let sent = Instant::now();
    let response = http
        .post(format!("{url}/api/usage/batches"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let submitted = sent.elapsed();
    let status = response.status();
    let view: Value = response.json().await.map_err(|e| e.to_string())?;
    if status.as_u16() != 202 {
        return Err(format!("batch refused: {status} {view}"));
    }
    let id = view["id"].as_str().ok_or("no batch id")?.to_owned();
    loop {
        let view: Value = http
            .get(format!("{url}/api/usage/batches/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match view["status"].as_str() {
            Some("completed") => return Ok((view, submitted)),
            Some("failed") => return Err(format!("batch {id} failed: {view}")),
            _ if Instant::now() > deadline => return Err(format!("batch {id} not completed in time: {view}")),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
