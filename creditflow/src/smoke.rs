//! `creditflow smoke`: the go-live runbook's production smoke, against any running creditflow, as one command.
//!
//! Every check runs against a canary account (its own id unless `--canary-account` names one), so real balances are
//! never touched; each prints pass or fail with its time, and the exit status is 1 when any failed. Tokens are
//! minted with the deployment's dev key (embedded setup) or with `--signing-key` (a private key whose public half
//! the deployment trusts, with `--issuer` and `--audience`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cli::SmokeArgs;
use crate::config::Loaded;

/// Signs the smoke's tokens.
enum Minter {
    Dev(creditflow_api::DevKey),
    Pem { key: EncodingKey, algorithm: Algorithm, key_id: Option<String>, issuer: String, audience: String },
}

impl Minter {
    fn mint(&self, subject: &str, role: &str, now: i64, ttl: i64) -> anyhow::Result<String> {
        match self {
            Self::Dev(key) => key.mint(subject, &[role], now, ttl).map_err(anyhow::Error::msg),
            Self::Pem { key, algorithm, key_id, issuer, audience } => {
                let claims = json!({"iss": issuer, "aud": audience, "sub": subject, "role": role,
                                    "iat": now, "nbf": now, "exp": now + ttl});
                let mut header = Header::new(*algorithm);
                header.kid.clone_from(key_id);
                Ok(jsonwebtoken::encode(&header, &claims, key)?)
            }
        }
    }
}

fn minter(loaded: &Loaded, args: &SmokeArgs) -> anyhow::Result<Minter> {
    let Some(path) = &args.signing_key else {
        anyhow::ensure!(
            loaded.dev_mode(),
            "pass --signing-key PEM (with --issuer and --audience): this configuration is not in dev mode"
        );
        let key = creditflow_api::DevKey::load_or_create(&loaded.config.dev_key_file).map_err(anyhow::Error::msg)?;
        return Ok(Minter::Dev(key));
    };
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (key, algorithm) = if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
        (key, Algorithm::RS256)
    } else if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
        (key, Algorithm::ES256)
    } else {
        (
            EncodingKey::from_ed_pem(&pem).context("the signing key is not an RSA, P-256 or Ed25519 PEM")?,
            Algorithm::EdDSA,
        )
    };
    let issuer = args.issuer.clone().context("--signing-key needs --issuer")?;
    let audience = args.audience.clone().context("--signing-key needs --audience")?;
    Ok(Minter::Pem { key, algorithm, key_id: args.key_id.clone(), issuer, audience })
}

/// One check's outcome.
struct Row {
    name: &'static str,
    passed: bool,
    detail: String,
    millis: u128,
}

/// What the checks share.
struct Smoke {
    client: reqwest::Client,
    base: String,
    canary: String,
    customer: String,
    service: String,
    minter: Minter,
    webhook_secret: Option<String>,
    allowed_origin: Option<String>,
}

impl Smoke {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<(StatusCode, String)> {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        Ok((response.status(), response.text().await?))
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        let response = self.client.post(self.url(path)).bearer_auth(token).json(body).send().await?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn balance(&self) -> anyhow::Result<i64> {
        let (status, body) = self.get(&format!("/api/balance?accountId={}", self.canary), Some(&self.service)).await?;
        anyhow::ensure!(status == StatusCode::OK, "balance answered {status}");
        let body: Value = serde_json::from_str(&body)?;
        body["balanceMillicredits"].as_i64().context("no balanceMillicredits")
    }

    async fn reconcile(&self, key: &str, tokens: u64) -> anyhow::Result<(StatusCode, Value)> {
        let body = json!({"idempotencyKey": key, "accountId": self.canary, "correlationId": format!("smoke-{key}"),
                          "model": "gpt-4o", "usage": {"input_tokens": tokens}});
        self.post("/api/usage/reconcile", &self.service, &body).await
    }
}

/// Runs the smoke and prints the table (or JSON lines); fails when any check failed.
pub(crate) async fn run(loaded: &Loaded, args: &SmokeArgs) -> anyhow::Result<()> {
    let minter = minter(loaded, args)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let canary = args
        .canary_account
        .clone()
        .unwrap_or_else(|| format!("smoke-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    let smoke = Smoke {
        client: reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?,
        base: args.base_url.trim_end_matches('/').to_owned(),
        customer: minter.mint(&canary, "customer", now, 900)?,
        service: minter.mint("smoke-service", "service", now, 900)?,
        canary,
        minter,
        webhook_secret: args.webhook_secret.clone().or_else(|| loaded.config.stripe.webhook_secret.clone()),
        allowed_origin: args.allowed_origin.clone(),
    };
    let mut rows = Vec::new();
    macro_rules! check {
        ($name:literal, $body:expr) => {{
            let started = Instant::now();
            let outcome: anyhow::Result<String> = async { $body }.await;
            let millis = started.elapsed().as_millis();
            let (passed, detail) = match outcome {
                Ok(detail) => (true, detail),
                Err(error) => (false, format!("{error:#}")),
            };
            rows.push(Row { name: $name, passed, detail, millis });
        }};
    }
    check!("liveness", expect_status(smoke.get("/health", None).await?, StatusCode::OK));
    check!("readiness", expect_status(smoke.get("/readyz", None).await?, StatusCode::OK));
    check!("valid token", expect_status(smoke.get("/api/balance", Some(&smoke.customer)).await?, StatusCode::OK));
    check!("uniform 401", uniform_401(&smoke, now).await);
    check!("purchase and redelivery", purchase(&smoke).await);
    check!("reconcile and replay", reconcile_replay(&smoke).await);
    check!("402 with the shortfall", insufficient(&smoke).await);
    check!("rounding mode", rounding(&smoke).await);
    check!("ledger pages", ledger(&smoke).await);
    check!("CSV export", csv(&smoke).await);
    check!("429 past the rate limit", rate_limit(&smoke, now).await);
    check!("CORS allowlist", cors(&smoke).await);
    check!("sanitized errors", sanitized(&smoke).await);
    print_rows(&rows, args.json);
    let failed = rows.iter().filter(|row| !row.passed).count();
    anyhow::ensure!(failed == 0, "{failed} of {} checks failed", rows.len());
    Ok(())
}

fn expect_status((status, body): (StatusCode, String), expected: StatusCode) -> anyhow::Result<String> {
    anyhow::ensure!(status == expected, "answered {status}: {}", body.chars().take(200).collect::<String>());
    Ok(status.to_string())
}

async fn uniform_401(smoke: &Smoke, now: i64) -> anyhow::Result<String> {
    let expired = smoke.minter.mint(&smoke.canary, "customer", now - 7_200, 60)?;
    let header = base64_url(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64_url(&json!({"sub": smoke.canary, "role": "customer", "exp": now + 600}).to_string());
    let alg_none = format!("{header}.{payload}.");
    let mut bodies = Vec::new();
    for (what, token) in [("expired", expired.as_str()), ("garbage", "not.a.token"), ("alg=none", alg_none.as_str())] {
        let (status, body) = smoke.get("/api/balance", Some(token)).await?;
        anyhow::ensure!(status == StatusCode::UNAUTHORIZED, "{what} token answered {status}");
        bodies.push(body);
    }
    anyhow::ensure!(bodies.windows(2).all(|pair| pair[0] == pair[1]), "the 401 bodies differ: {bodies:?}");
    Ok("expired, garbage and alg=none: one 401 body".to_owned())
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

async fn purchase(smoke: &Smoke) -> anyhow::Result<String> {
    let secret = smoke.webhook_secret.as_deref().context("no webhook secret: pass --webhook-secret whsec_...")?;
    let before = smoke.balance().await.unwrap_or(0);
    let intent = format!("pi_smoke_{}", uuid::Uuid::new_v4().simple());
    let event = json!({
        "id": format!("evt_smoke_{}", uuid::Uuid::new_v4().simple()), "object": "event", "livemode": false,
        "type": "payment_intent.succeeded", "created": time::OffsetDateTime::now_utc().unix_timestamp(),
        "data": {"object": {"id": intent, "object": "payment_intent", "amount": 500, "amount_received": 500,
            "currency": "usd", "status": "succeeded",
            "metadata": {"creditflow_account_id": smoke.canary, "creditflow_pack_id": "starter"}}},
    })
    .to_string();
    for delivery in 0..2 {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = creditflow_domain::signature::sign(event.as_bytes(), secret, now);
        let response = smoke
            .client
            .post(smoke.url("/webhooks/stripe"))
            .header("stripe-signature", signature)
            .header("content-type", "application/json")
            .body(event.clone())
            .send()
            .await?;
        anyhow::ensure!(response.status() == StatusCode::OK, "delivery {delivery} answered {}", response.status());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut balance = smoke.balance().await?;
    while balance == before {
        anyhow::ensure!(Instant::now() < deadline, "not credited within 30 s (are workers running?)");
        tokio::time::sleep(Duration::from_millis(200)).await;
        balance = smoke.balance().await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = smoke.balance().await?;
    let credited = settled - before;
    anyhow::ensure!(credited == 5_000_000, "credited {credited} millicredits for one Starter pack, not 5,000,000");
    Ok("credited 5,000 credits once for two deliveries".to_owned())
}

async fn reconcile_replay(smoke: &Smoke) -> anyhow::Result<String> {
    let key = format!("smoke-{}", uuid::Uuid::new_v4().simple());
    let before = smoke.balance().await?;
    let (first_status, first) = smoke.reconcile(&key, 400).await?;
    anyhow::ensure!(first_status == StatusCode::OK, "reconcile answered {first_status}: {first}");
    let (replay_status, replay) = smoke.reconcile(&key, 400).await?;
    anyhow::ensure!(replay_status == StatusCode::OK && replay["entryId"] == first["entryId"], "the replay differs");
    let charge = first["chargeMillicredits"].as_i64().context("no charge")?;
    let debited = before - smoke.balance().await?;
    anyhow::ensure!(debited == charge, "debited {debited} for one charge of {charge}");
    Ok(format!("debited {charge} millicredits once; the replay returned the same entry"))
}

async fn insufficient(smoke: &Smoke) -> anyhow::Result<String> {
    let (status, body) =
        smoke.reconcile(&format!("smoke-big-{}", uuid::Uuid::new_v4().simple()), 4_000_000_000).await?;
    anyhow::ensure!(status == StatusCode::PAYMENT_REQUIRED, "answered {status}: {body}");
    let needed = body["requiredAdditionalCredits"].as_str().context("no requiredAdditionalCredits")?;
    Ok(format!("402, {needed} credits short"))
}

async fn rounding(smoke: &Smoke) -> anyhow::Result<String> {
    let (status, body) = smoke.reconcile(&format!("smoke-round-{}", uuid::Uuid::new_v4().simple()), 1).await?;
    anyhow::ensure!(status == StatusCode::OK, "answered {status}: {body}");
    let credits = body["chargeCredits"].as_str().context("no chargeCredits")?;
    let decimals = credits.split_once('.').map_or(0, |(_, fraction)| fraction.len());
    anyhow::ensure!(decimals == 3, "charges are shown to the millicredit, got `{credits}`");
    Ok(format!("1 token charged {credits} credits under rate card {}", body["rateVersion"]))
}

async fn ledger(smoke: &Smoke) -> anyhow::Result<String> {
    let path = format!("/api/ledger?accountId={}&limit=1", smoke.canary);
    let (status, first) = smoke.get(&path, Some(&smoke.service)).await?;
    anyhow::ensure!(status == StatusCode::OK, "answered {status}");
    let first: Value = serde_json::from_str(&first)?;
    let cursor = first["nextCursor"].as_str().context("one line per page should leave a next cursor")?;
    let (status, second) = smoke.get(&format!("{path}&cursor={cursor}"), Some(&smoke.service)).await?;
    anyhow::ensure!(status == StatusCode::OK, "the next page answered {status}");
    let second: Value = serde_json::from_str(&second)?;
    let lines: Vec<&Value> =
        first["entries"].as_array().into_iter().chain(second["entries"].as_array()).flatten().collect();
    anyhow::ensure!(lines.len() == 2, "two pages of one line, got {}", lines.len());
    let usage = lines.iter().find(|line| line["kind"] == "usage_debit").context("no usage line on the first pages")?;
    anyhow::ensure!(usage["correlationId"].is_string() && usage["rateVersion"].is_string(), "{usage}");
    Ok("paged by cursor; usage lines carry correlationId and rateVersion".to_owned())
}

async fn csv(smoke: &Smoke) -> anyhow::Result<String> {
    let response =
        smoke.client.get(smoke.url("/billing/ledger/export.csv")).bearer_auth(&smoke.customer).send().await?;
    anyhow::ensure!(response.status() == StatusCode::OK, "answered {}", response.status());
    let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    anyhow::ensure!(kind.starts_with("text/csv"), "content type `{kind}`");
    let text = response.text().await?;
    let lines = text.lines().count();
    anyhow::ensure!(lines >= 2, "a header and the canary's lines, got {lines} lines");
    Ok(format!("{lines} lines"))
}

async fn rate_limit(smoke: &Smoke, now: i64) -> anyhow::Result<String> {
    let subject = format!("smoke-limit-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let token = smoke.minter.mint(&subject, "customer", now, 900)?;
    for sent in 1..=1_000 {
        let response = smoke.client.get(smoke.url("/api/balance")).bearer_auth(&token).send().await?;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            anyhow::ensure!(!retry.is_empty(), "429 without Retry-After");
            return Ok(format!("429 after {sent} requests, Retry-After {retry}"));
        }
    }
    anyhow::bail!("no 429 after 1,000 requests")
}

async fn cors(smoke: &Smoke) -> anyhow::Result<String> {
    let preflight = |origin: &str| {
        smoke
            .client
            .request(reqwest::Method::OPTIONS, smoke.url("/api/balance"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let response = preflight("https://evil.example").await?;
    let allowed = response.headers().get("access-control-allow-origin").is_some();
    anyhow::ensure!(!allowed, "a foreign origin was allowed");
    let Some(origin) = smoke.allowed_origin.as_deref() else {
        return Ok("a foreign origin gets no CORS headers (--allowed-origin checks an allowed one)".to_owned());
    };
    let response = preflight(origin).await?;
    let answered = response.headers().get("access-control-allow-origin").and_then(|value| value.to_str().ok());
    anyhow::ensure!(answered == Some(origin), "the allowed origin {origin} got {answered:?}");
    Ok(format!("{origin} allowed, a foreign origin gets no CORS headers"))
}

async fn sanitized(smoke: &Smoke) -> anyhow::Result<String> {
    let response = smoke
        .client
        .post(smoke.url("/api/usage/reconcile"))
        .bearer_auth(&smoke.service)
        .header("content-type", "application/json")
        .body("{\"idempotencyKey\": ")
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_client_error() && body["code"].is_string(), "malformed JSON answered {status}: {body}");
    let text = body.to_string().to_lowercase();
    for leak in ["sqlx", "panicked", "stack", "select ", "postgres", "sqlite"] {
        anyhow::ensure!(!text.contains(leak), "the error body mentions `{leak}`: {body}");
    }
    Ok(format!("{status} with code `{}`", body["code"].as_str().unwrap_or("")))
}

fn print_rows(rows: &[Row], json: bool) {
    let mut out = String::new();
    if json {
        for row in rows {
            let line = json!({"check": row.name, "passed": row.passed, "millis": row.millis, "detail": row.detail});
            let _ = writeln!(out, "{line}");
        }
    } else {
        let _ = writeln!(out, "{:<26} {:<5} {:>8}  DETAIL", "CHECK", "", "TIME");
        for row in rows {
            let verdict = if row.passed { "pass" } else { "FAIL" };
            let _ = writeln!(out, "{:<26} {verdict:<5} {:>6}ms  {}", row.name, row.millis, row.detail);
        }
    }
    print!("{out}");
}
