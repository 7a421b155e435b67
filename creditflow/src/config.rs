//! Configuration: built-in defaults, then an optional TOML file, then the environment.
//!
//! The file is `--config PATH` (or `CREDITFLOW_CONFIG`), else `creditflow.toml` in the working directory when it
//! exists. Every key can be set from the environment as `CREDITFLOW_<KEY>`; `DATABASE_URL` and `REDIS_URL` are read
//! too, as most platforms set them. Everything is validated once at start, and errors name the key and where its
//! value came from. See `config/creditflow.example.toml` for every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use creditflow_api::AuthSettings;
use creditflow_domain::{PackCatalog, RateCard};
use creditflow_jobs::webhooks::WebhookEndpoint;
use creditflow_reports::{ReportSchedule, ReportSettings, ReportZone};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The rate card shipped with creditflow, activated on first start when the database has none.
pub(crate) const DEFAULT_RATE_CARD: &str = include_str!("../../config/rate-cards/v1.toml");
/// The credit packs shipped with creditflow.
pub(crate) const DEFAULT_PACKS: &str = include_str!("../../config/packs.toml");
/// The file read from the working directory when no other is named.
const DEFAULT_CONFIG_FILE: &str = "creditflow.toml";

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines (the default on the embedded setup).
    Pretty,
    /// One JSON object per line, for log collectors in production.
    Json,
}

/// creditflow's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// `sqlite://PATH` (the default: `creditflow.db` in the working directory) or `postgres://...`.
    pub(crate) database_url: String,
    /// Connections per process in the database pool.
    pub(crate) database_max_connections: u32,
    /// Apply pending migrations when creditflow starts (`serve`, `api`, `worker`, `jobs`).
    pub(crate) auto_migrate: bool,
    /// The job queue: `redis://HOST:PORT` in production, or `sqlite://PATH` (a file of its own beside the ledger).
    pub(crate) queue_url: String,
    /// Redis for the shared rate limiter in production (`redis://...`); the job queue is `queue_url`.
    pub(crate) redis_url: Option<String>,
    /// Address the HTTP server binds.
    pub(crate) listen: SocketAddr,
    /// A rate card TOML to store (and activate when none is active) at start; the shipped `v1` when unset.
    pub(crate) rate_card_file: Option<PathBuf>,
    /// The credit pack list; the shipped list when unset.
    pub(crate) packs_file: Option<PathBuf>,
    /// `pretty` or `json`.
    pub(crate) log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax (`RUST_LOG` itself wins when set).
    pub(crate) log_filter: String,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
    pub(crate) shutdown_grace_seconds: u64,
    /// The hourly anomaly check flags no account whose last 24 hours of spend are under this (millicredits).
    pub(crate) anomaly_floor_millicredits: i64,
    /// Failed autoreloads in a row after which an account's autoreload is turned off (and its owner emailed).
    pub(crate) autoreload_failures_before_disabling: i64,
    /// Seconds a claim on an autoreload holds before another copy of its job takes it over (the holder died).
    pub(crate) autoreload_claim_lease_seconds: u64,
    /// Seconds between worker heartbeats; a worker silent for two is taken for dead and its jobs run again.
    pub(crate) queue_heartbeat_seconds: u64,
    /// Seconds after which a job the database says is queued, running or retrying, but that has not moved, is queued
    /// again (the broker may have lost it).
    pub(crate) queue_requeue_after_seconds: u64,
    /// Prefix of the queues' keys in Redis (deployments sharing one Redis use different ones).
    pub(crate) queue_namespace: String,
    /// Requests per minute per token subject; shared through Redis when `redis_url` is set.
    pub(crate) rate_limit_per_minute: u32,
    /// Origins (`https://app.example.com`) allowed to call the API from a browser.
    pub(crate) cors_allowed_origins: Vec<String>,
    /// Where dev mode keeps its signing key (created on first use).
    pub(crate) dev_key_file: PathBuf,
    /// Token verification (`[auth]`; `CREDITFLOW_AUTH__ISSUER` and so on).
    pub(crate) auth: AuthSettings,
    /// Stripe (`[stripe]`; `CREDITFLOW_STRIPE__WEBHOOK_SECRET` and so on).
    pub(crate) stripe: StripeSettings,
    /// Email (`[email]`).
    pub(crate) email: EmailSettings,
    /// Monitoring endpoints that receive signed events (`[[webhook_endpoints]]`: id, url, secret, events).
    pub(crate) webhook_endpoints: Vec<WebhookEndpoint>,
    /// The nightly reconciliation report (`[report]`).
    pub(crate) report: ReportConfig,
}

/// The nightly reconciliation report's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ReportConfig {
    /// Whether workers queue the report on `schedule` (it can always be run with `creditflow report`).
    pub(crate) enabled: bool,
    /// A cron expression in `time_zone` (five fields: minute hour day month weekday); each firing makes the day
    /// before due.
    pub(crate) schedule: String,
    /// The IANA zone whose days are reported (`UTC`, `Europe/Paris`).
    pub(crate) time_zone: String,
    /// Finance's addresses, a list or one comma-separated string (handy in the environment); the report is stored
    /// but not emailed when empty.
    #[serde(deserialize_with = "list_or_commas")]
    pub(crate) recipients: Vec<String>,
    /// Expected share of usage credits per model, in percent (summing to 100); empty: the mix is not checked.
    pub(crate) expected_mix: BTreeMap<String, f64>,
    /// Percentage points a model's share may stray from `expected_mix` before it is flagged.
    pub(crate) mix_tolerance_points: f64,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            schedule: "30 0 * * *".to_owned(),
            time_zone: "UTC".to_owned(),
            recipients: Vec::new(),
            expected_mix: BTreeMap::new(),
            mix_tolerance_points: 10.0,
        }
    }
}

/// Email settings: SMTP when `smtp_url` is set, else `.eml` files in `outbox_dir`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EmailSettings {
    /// The sender, such as `creditflow <billing@example.com>`.
    pub(crate) from: String,
    /// `smtp://HOST:PORT` or `smtps://USER:PASSWORD@HOST`; unset on the embedded setup.
    pub(crate) smtp_url: Option<String>,
    /// Where emails are written as `.eml` files when there is no SMTP server.
    pub(crate) outbox_dir: PathBuf,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self { from: "creditflow <billing@localhost>".to_owned(), smtp_url: None, outbox_dir: PathBuf::from("outbox") }
    }
}

/// Stripe settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StripeSettings {
    /// The webhook endpoint's signing secret (`whsec_...`); Stripe events are refused until it is set.
    pub(crate) webhook_secret: Option<String>,
    /// Largest accepted clock difference for a webhook signature, in seconds.
    pub(crate) webhook_tolerance_seconds: i64,
    /// Freeze an account when one of its payments is disputed.
    pub(crate) freeze_on_dispute: bool,
    /// The API secret key (`sk_...` or a restricted `rk_...`); purchases and autoreload need it.
    pub(crate) secret_key: Option<String>,
    /// Where Stripe's API is (default `https://api.stripe.com/`; a test double such as localstripe in tests).
    pub(crate) api_base: Option<String>,
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            webhook_secret: None,
            webhook_tolerance_seconds: 300,
            freeze_on_dispute: true,
            secret_key: None,
            api_base: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "sqlite://creditflow.db".to_owned(),
            database_max_connections: 16,
            auto_migrate: true,
            queue_url: "sqlite://creditflow-queue.db".to_owned(),
            redis_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            rate_card_file: None,
            packs_file: None,
            log_format: LogFormat::Pretty,
            log_filter: "info".to_owned(),
            shutdown_grace_seconds: 30,
            anomaly_floor_millicredits: 1_000_000,
            autoreload_failures_before_disabling: 3,
            autoreload_claim_lease_seconds: 60,
            queue_heartbeat_seconds: 30,
            queue_requeue_after_seconds: 300,
            queue_namespace: "creditflow".to_owned(),
            rate_limit_per_minute: 100,
            cors_allowed_origins: Vec::new(),
            dev_key_file: PathBuf::from("creditflow-dev-key.pem"),
            auth: AuthSettings::default(),
            stripe: StripeSettings::default(),
            email: EmailSettings::default(),
            webhook_endpoints: Vec::new(),
            report: ReportConfig::default(),
        }
    }
}

/// A configuration that cannot be used; the message names the key and the source of its value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// Values could not be read (wrong type, unknown key, unreadable file); one line per problem.
    #[error("configuration: {0}")]
    Load(String),
    /// A value was read but breaks a rule.
    #[error("configuration key `{key}`: {message}")]
    Invalid {
        /// The key at fault.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The configuration plus the documents it points to, parsed and validated.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The settings.
    pub(crate) config: Config,
    /// The rate card to make sure is stored.
    pub(crate) rate_card: RateCard,
    /// Its TOML text, stored as uploaded.
    pub(crate) rate_card_document: String,
    /// The packs on sale.
    pub(crate) packs: PackCatalog,
    /// The report's settings, parsed.
    pub(crate) report: ReportSettings,
    /// When workers queue the report (`None` when `report.enabled` is false).
    pub(crate) report_schedule: Option<ReportSchedule>,
}

impl Loaded {
    /// True when tokens are verified with the local dev key: the embedded setup with no key configured.
    pub(crate) fn dev_mode(&self) -> bool {
        self.config.auth.has_no_key() && self.config.database_url.starts_with("sqlite:")
    }
}

/// Reads the configuration for `explicit_file` (or the default file when it exists) and the process environment.
pub(crate) fn load(explicit_file: Option<&Path>) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    match explicit_file {
        Some(path) => {
            if !path.is_file() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    message: format!("{} is not a readable file", path.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
            figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
        }
        None => {}
    }
    let figment = figment
        // `CREDITFLOW_TEST_*` belong to the test suite (scripts/test exports them), not to creditflow.
        .merge(
            Env::prefixed("CREDITFLOW_")
                .filter(|key| {
                    let key = key.as_str().to_ascii_lowercase();
                    key != "config" && !key.starts_with("test_")
                })
                .split("__"),
        )
        .merge(Env::raw().only(&["DATABASE_URL", "REDIS_URL"]));
    let config: Config = figment.extract().map_err(|error| ConfigError::Load(describe(error)))?;
    validate(config)
}

/// Names each bad key in lower case with where its value came from: a file, or the environment variable itself.
fn describe(errors: figment::Error) -> String {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|error| {
            let key = error.path.join(".").to_lowercase();
            let origin = match (&error.metadata, &error.profile) {
                (Some(metadata), _) if matches!(metadata.source, Some(figment::Source::File(_))) => {
                    metadata.source.as_ref().map(|source| format!(" (in {source})")).unwrap_or_default()
                }
                (Some(metadata), Some(profile)) if metadata.name.contains("environment") => {
                    let prefix = if metadata.name.contains("CREDITFLOW_") { "CREDITFLOW_" } else { "" };
                    let variable = metadata.interpolate(profile, &error.path).to_uppercase();
                    format!(" (from environment variable {prefix}{variable})")
                }
                _ => String::new(),
            };
            if key.is_empty() {
                format!("{}{origin}", error.kind)
            } else {
                format!("key `{key}`{origin}: {}", error.kind)
            }
        })
        .collect();
    lines.join("; ")
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// The job pipeline's settings.
fn validate_jobs(config: &Config) -> Result<(), ConfigError> {
    let namespace_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if config.queue_namespace.is_empty() || !config.queue_namespace.chars().all(namespace_ok) {
        return Err(invalid("queue_namespace", "must be letters, digits, - and _"));
    }
    if !(1..=300).contains(&config.queue_heartbeat_seconds) {
        return Err(invalid("queue_heartbeat_seconds", "must be 1 to 300"));
    }
    if !(1..=86_400).contains(&config.queue_requeue_after_seconds) {
        return Err(invalid("queue_requeue_after_seconds", "must be 1 to 86400"));
    }
    // The autoreload job has 1 + retries (5) attempts; one is kept for a transient failure.
    if !(1..=5).contains(&config.autoreload_failures_before_disabling) {
        return Err(invalid("autoreload_failures_before_disabling", "must be 1 to 5"));
    }
    if !(1..=3_600).contains(&config.autoreload_claim_lease_seconds) {
        return Err(invalid("autoreload_claim_lease_seconds", "must be 1 to 3600"));
    }
    if config.anomaly_floor_millicredits < 0 {
        return Err(invalid("anomaly_floor_millicredits", "must be 0 or more"));
    }
    Ok(())
}

/// A list of strings given as a list, or as one comma-separated string (`a@x.com, b@x.com`; empty: none).
fn list_or_commas<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Given::deserialize(deserializer)? {
        Given::List(items) => items,
        Given::Text(text) => {
            text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect()
        }
    })
}

/// The report's settings, parsed: its zone, schedule, recipients and expected usage mix.
fn validate_report(report: &ReportConfig) -> Result<(ReportSettings, Option<ReportSchedule>), ConfigError> {
    let zone = ReportZone::parse(&report.time_zone)
        .map_err(|_| invalid("report.time_zone", format!("`{}` is not an IANA time zone", report.time_zone)))?;
    let schedule =
        ReportSchedule::parse(&report.schedule, zone).map_err(|error| invalid("report.schedule", error.to_string()))?;
    let mut recipients = Vec::with_capacity(report.recipients.len());
    for address in &report.recipients {
        let mailbox = address
            .parse::<lettre::message::Mailbox>()
            .map_err(|_| invalid("report.recipients", format!("`{address}` is not an email address")))?;
        recipients.push(mailbox);
    }
    if report.expected_mix.values().any(|share| !share.is_finite() || !(0.0..=100.0).contains(share)) {
        return Err(invalid("report.expected_mix", "each model's share is a percentage from 0 to 100"));
    }
    let total: f64 = report.expected_mix.values().sum();
    if !report.expected_mix.is_empty() && (total - 100.0).abs() > 0.01 {
        return Err(invalid("report.expected_mix", format!("the shares add up to {total}, not 100")));
    }
    if !report.mix_tolerance_points.is_finite() || !(0.0..=100.0).contains(&report.mix_tolerance_points) {
        return Err(invalid("report.mix_tolerance_points", "must be 0 to 100"));
    }
    let settings = ReportSettings {
        zone,
        recipients,
        expected_mix: report.expected_mix.clone(),
        mix_tolerance_points: report.mix_tolerance_points,
    };
    Ok((settings, report.enabled.then_some(schedule)))
}

/// An optional setting given as an empty string (`FOO: ${FOO:-}` in compose files) is not set.
fn unset_empty(config: &mut Config) {
    for optional in [
        &mut config.redis_url,
        &mut config.email.smtp_url,
        &mut config.stripe.webhook_secret,
        &mut config.stripe.secret_key,
        &mut config.stripe.api_base,
    ] {
        if optional.as_deref().is_some_and(str::is_empty) {
            *optional = None;
        }
    }
}

fn validate(mut config: Config) -> Result<Loaded, ConfigError> {
    unset_empty(&mut config);
    let url = config.database_url.as_str();
    if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid("database_url", "use sqlite://PATH or postgres://USER@HOST/DATABASE"));
    }
    let queue = config.queue_url.as_str();
    let queue_ok = queue.starts_with("redis://") || queue.starts_with("rediss://") || queue.starts_with("sqlite:");
    if !queue_ok || queue == config.database_url {
        return Err(invalid("queue_url", "use redis://HOST:PORT, or sqlite://PATH in a file other than the ledger's"));
    }
    if config.database_max_connections == 0 {
        return Err(invalid("database_max_connections", "must be at least 1"));
    }
    let redis_schemes = ["redis://", "rediss://", "redis+unix://"];
    if config.redis_url.as_deref().is_some_and(|url| !redis_schemes.iter().any(|scheme| url.starts_with(scheme))) {
        return Err(invalid("redis_url", "use redis://HOST:PORT or rediss://HOST:PORT"));
    }
    if config.stripe.webhook_secret.as_deref().is_some_and(|secret| !secret.starts_with("whsec_")) {
        return Err(invalid("stripe.webhook_secret", "a Stripe webhook secret starts with `whsec_`"));
    }
    if config.stripe.secret_key.as_deref().is_some_and(|key| !(key.starts_with("sk_") || key.starts_with("rk_"))) {
        return Err(invalid("stripe.secret_key", "a Stripe secret key starts with `sk_` (or `rk_` when restricted)"));
    }
    if config
        .stripe
        .api_base
        .as_deref()
        .is_some_and(|base| !(base.starts_with("https://") || base.starts_with("http://")))
    {
        return Err(invalid("stripe.api_base", "must be an http:// or https:// URL"));
    }
    if !(1..=3_600).contains(&config.stripe.webhook_tolerance_seconds) {
        return Err(invalid("stripe.webhook_tolerance_seconds", "must be 1 to 3600"));
    }
    if config.email.from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(invalid("email.from", "is not a mailbox like `creditflow <billing@example.com>`"));
    }
    if let Some(url) = &config.email.smtp_url
        && creditflow_jobs::emails::Mailer::smtp(url).is_err()
    {
        return Err(invalid("email.smtp_url", "use smtp://HOST:PORT or smtps://USER:PASSWORD@HOST"));
    }
    for (index, endpoint) in config.webhook_endpoints.iter().enumerate() {
        if config.webhook_endpoints[..index].iter().any(|other| other.id == endpoint.id) || endpoint.id.is_empty() {
            return Err(invalid(
                "webhook_endpoints",
                format!("endpoint ids must be unique and non-empty (`{}`)", endpoint.id),
            ));
        }
        if !(endpoint.url.starts_with("https://") || endpoint.url.starts_with("http://")) {
            return Err(invalid("webhook_endpoints", format!("endpoint `{}`: url must be http(s)", endpoint.id)));
        }
        if endpoint.secret.len() < 16 {
            return Err(invalid(
                "webhook_endpoints",
                format!("endpoint `{}`: secret needs 16 characters or more", endpoint.id),
            ));
        }
    }
    if config.rate_limit_per_minute == 0 {
        return Err(invalid("rate_limit_per_minute", "must be at least 1"));
    }
    for origin in &config.cors_allowed_origins {
        let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
        if rest.is_none_or(|host| host.is_empty() || host.trim_end_matches('/').contains('/')) {
            return Err(invalid(
                "cors_allowed_origins",
                format!("`{origin}` is not an origin like https://app.example.com"),
            ));
        }
    }
    validate_jobs(&config)?;
    let (report, report_schedule) = validate_report(&config.report)?;
    if config.shutdown_grace_seconds > 3_600 {
        return Err(invalid("shutdown_grace_seconds", "must be at most 3600"));
    }
    if let Err((key, message)) = config.auth.validate() {
        return Err(invalid(key, message));
    }
    if config.auth.has_no_key() && !config.database_url.starts_with("sqlite:") {
        return Err(invalid(
            "auth.jwks_url",
            "set auth.jwks_url or auth.public_key_file: dev mode (a local signing key) is only for the embedded \
             SQLite setup, never beside a production database",
        ));
    }
    if let Err(error) = config.log_filter.parse::<tracing_subscriber::EnvFilter>() {
        return Err(invalid("log_filter", error.to_string()));
    }
    let rate_card_document = read_document("rate_card_file", config.rate_card_file.as_deref(), DEFAULT_RATE_CARD)?;
    let rate_card = RateCard::from_toml(&rate_card_document).map_err(|e| invalid("rate_card_file", e.to_string()))?;
    let packs_document = read_document("packs_file", config.packs_file.as_deref(), DEFAULT_PACKS)?;
    let packs = PackCatalog::from_toml(&packs_document).map_err(|e| invalid("packs_file", e.to_string()))?;
    Ok(Loaded { config, rate_card, rate_card_document, packs, report, report_schedule })
}

fn read_document(key: &'static str, path: Option<&Path>, default: &str) -> Result<String, ConfigError> {
    match path {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
        }
        None => Ok(default.to_owned()),
    }
}

impl Config {
    /// The configuration as TOML with passwords in URLs redacted, for `creditflow config`.
    pub(crate) fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database_url = creditflow_store::redact_url(&shown.database_url);
        shown.redis_url = shown.redis_url.as_deref().map(creditflow_store::redact_url);
        shown.email.smtp_url = shown.email.smtp_url.as_deref().map(creditflow_store::redact_url);
        for endpoint in &mut shown.webhook_endpoints {
            "***".clone_into(&mut endpoint.secret);
        }
        if shown.stripe.secret_key.is_some() {
            shown.stripe.secret_key = Some("sk_***".to_owned());
        }
        if shown.stripe.webhook_secret.is_some() {
            shown.stripe.webhook_secret = Some("whsec_***".to_owned());
        }
        toml::to_string(&shown).unwrap_or_else(|error| format!("# cannot render the configuration: {error}\n"))
    }
}
