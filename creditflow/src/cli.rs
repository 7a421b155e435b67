//! The command line: one binary, roles and tools as subcommands.
//!
//! The doc comments below are the `--help` text, read in a terminal, so they name keys without Markdown backticks.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// creditflow — a prepaid-credits billing pipeline for usage-based APIs.
///
/// Customers buy credit packs, usage is priced against a versioned rate card and debited from an append-only
/// ledger. With no configuration at all creditflow runs embedded on a SQLite file in the working directory; set
/// DATABASE_URL to a postgres:// URL for production.
#[derive(Debug, Parser)]
#[command(name = "creditflow", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Configuration file (TOML). Default: creditflow.toml in the working directory, when it exists.
    #[arg(long, global = true, env = "CREDITFLOW_CONFIG", value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run creditflow: the HTTP API on `listen` and the worker pools, in one process.
    ///
    /// On start it applies pending migrations (unless auto_migrate = false), stores the configured rate card and
    /// activates it when no rate card is active yet. SIGTERM or Ctrl-C stops accepting connections and jobs, and lets
    /// requests and jobs in flight finish for up to shutdown_grace_seconds.
    Serve,
    /// Run the HTTP API alone, without worker pools (scale API and workers separately).
    ///
    /// Same settings and shutdown as `serve`; run `creditflow worker` processes beside it.
    Api,
    /// Run the worker pools alone: relay the outbox to the job queue and process jobs.
    ///
    /// Run as many as you like beside `serve`; SIGTERM or Ctrl-C lets jobs in flight finish.
    Worker,
    /// Apply pending database migrations, then exit.
    ///
    /// Safe to run again: applied migrations are skipped. Use it before starting new versions when auto_migrate is
    /// off, as production deployments usually prefer.
    Migrate,
    /// Mint a dev-mode token, signed with the local dev key, and print it.
    ///
    /// Only for the embedded setup with no auth key configured, where `serve` runs in dev mode and accepts these
    /// tokens. Example: curl -H "Authorization: Bearer $(creditflow token --sub alice --role customer)" ...
    Token(TokenArgs),
    /// Inspect and repair the job queues: counts, failed and dead jobs, retry, discard.
    ///
    /// Reads creditflow's job records in the database, the same on every queue backend. Examples:
    /// creditflow jobs queues; creditflow jobs list --state dead; creditflow jobs retry stripe_events:evt_123
    Jobs(JobsArgs),
    /// Run the production smoke against a running creditflow and print each check with pass/fail and its time.
    ///
    /// Liveness, readiness, tokens (valid; expired, garbage and alg=none get one 401), a purchase through a signed
    /// test event and its redelivery (credited once), reconcile and its replay (debited once), the 402 path, rounding,
    /// ledger pages, CSV export, 429 past the rate limit, CORS, sanitized errors. Uses a canary account. Exit 1 when a
    /// check fails.
    Smoke(SmokeArgs),
    /// Run the nightly reconciliation report for a day now, or show a stored one.
    ///
    /// `creditflow report --date 2026-11-23` computes the day's report (in report.time_zone) with a progress line
    /// per stage, stores it, announces report.ready and emails report.recipients unless that date's report was
    /// emailed already (--force sends it again). `creditflow report show --date 2026-11-23 [--json] [--out DIR]`
    /// prints a stored report's checks, or its summary as JSON, or writes its files (HTML, chart, CSVs) to DIR.
    Report(ReportArgs),
    /// Stripe tools: `stripe trigger` sends a realistic, signed Stripe event to a running creditflow, offline.
    #[command(subcommand)]
    Stripe(StripeCommand),
    /// Print the API's OpenAPI document (JSON), as served at /openapi.json.
    Openapi,
    /// Print the effective configuration (defaults, file and environment merged; passwords redacted) and exit.
    ///
    /// Fails with a message naming the bad key when the configuration is invalid, so it doubles as a check.
    Config,
}

/// Who a dev token speaks for.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// The subject; for a customer this is the account id.
    #[arg(long)]
    pub(crate) sub: String,
    /// A role to grant: customer, service, admin or finance (repeat for several).
    #[arg(long = "role", required = true, value_parser = ["customer", "service", "admin", "finance"])]
    pub(crate) roles: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(1..=2_592_000))]
    pub(crate) ttl: i64,
}

/// `creditflow jobs`.
#[derive(Debug, clap::Args)]
pub(crate) struct JobsArgs {
    /// Print JSON lines instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// Jobs per queue and state.
    Queues,
    /// Jobs in some states, most recently changed first, with attempts and last error.
    List {
        /// Only this queue: stripe_events, usage_batches, autoreloads, emails, webhooks or scheduled.
        #[arg(long)]
        queue: Option<String>,
        /// Comma-separated states: pending, running, retrying, dead, done, discarded.
        #[arg(long, default_value = "retrying,dead")]
        state: String,
        /// At most this many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// One job, with its payload.
    Show {
        /// The job id, such as stripe_events:evt_123.
        id: String,
    },
    /// Queue a dead (or discarded) job again with its attempts reset.
    Retry {
        /// The job id.
        id: String,
    },
    /// Give up on a job that has not finished; workers handed it later leave it alone.
    Discard {
        /// The job id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

/// `creditflow report`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ReportArgs {
    #[command(subcommand)]
    pub(crate) command: Option<ReportCommand>,
    /// The day to report, YYYY-MM-DD in report.time_zone (default: yesterday there).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub(crate) date: Option<String>,
    /// Email the report again even if this date's was sent (as its own run, announced separately).
    #[arg(long)]
    pub(crate) force: bool,
    /// Print the summary as JSON instead of a table of checks.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ReportCommand {
    /// Print a stored report: its checks and files, or its summary as JSON; --out writes its files to a directory.
    Show {
        /// The report's day, YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: String,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Write every file of the report (report.html, chart.png, the CSVs, summary.json) into this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// `creditflow stripe`.
#[derive(Debug, Subcommand)]
pub(crate) enum StripeCommand {
    /// Build a realistic Stripe event, sign it with the webhook secret as Stripe does, and post it to creditflow.
    ///
    /// Events: payment_intent.succeeded, payment_intent.payment_failed, checkout.session.completed, charge.refunded,
    /// charge.dispute.created. Each event sent is kept in .creditflow/stripe-events/ so --resend delivers it again.
    /// Example: creditflow stripe trigger payment_intent.succeeded --account alice --pack starter
    Trigger(StripeTriggerArgs),
}

/// `creditflow stripe trigger`.
#[derive(Debug, clap::Args)]
pub(crate) struct StripeTriggerArgs {
    /// The event type to build.
    #[arg(value_parser = crate::stripe_trigger::EVENT_TYPES, required_unless_present = "resend")]
    pub(crate) event: Option<String>,
    /// Deliver again an event sent earlier from this directory, by its id (evt_...).
    #[arg(long, value_name = "EVENT_ID", conflicts_with = "event")]
    pub(crate) resend: Option<String>,
    /// The account the payment is for.
    #[arg(long, default_value = "acct_test")]
    pub(crate) account: String,
    /// The pack bought.
    #[arg(long, default_value = "starter")]
    pub(crate) pack: String,
    /// For refunds and disputes: the payment they are about (default: the last payment triggered here).
    #[arg(long, value_name = "PI")]
    pub(crate) payment_intent: Option<String>,
    /// Where to post it (default: http://<listen>/webhooks/stripe).
    #[arg(long, value_name = "URL")]
    pub(crate) to: Option<String>,
    /// The webhook signing secret (default: stripe.webhook_secret).
    #[arg(long, value_name = "WHSEC")]
    pub(crate) secret: Option<String>,
}

/// `creditflow smoke`.
#[derive(Debug, clap::Args)]
pub(crate) struct SmokeArgs {
    /// The deployment, such as https://billing.example.com.
    #[arg(long, value_name = "URL")]
    pub(crate) base_url: String,
    /// A private key (PEM: RSA, P-256 or Ed25519) whose public half the deployment trusts, to mint the smoke's
    /// tokens. Without it the dev key is used (embedded setups only).
    #[arg(long, value_name = "PEM")]
    pub(crate) signing_key: Option<PathBuf>,
    /// The key id (`kid`) of the signing key in the deployment's JWKS (with --signing-key; JWKS setups need it).
    #[arg(long, value_name = "KID")]
    pub(crate) key_id: Option<String>,
    /// The tokens' issuer (with --signing-key).
    #[arg(long)]
    pub(crate) issuer: Option<String>,
    /// The tokens' audience (with --signing-key).
    #[arg(long)]
    pub(crate) audience: Option<String>,
    /// The Stripe webhook secret, to send the signed test purchase (default: stripe.webhook_secret).
    #[arg(long, value_name = "WHSEC")]
    pub(crate) webhook_secret: Option<String>,
    /// The account the checks use (default: a fresh smoke-... account).
    #[arg(long)]
    pub(crate) canary_account: Option<String>,
    /// An origin the deployment allows (cors_allowed_origins), to check its preflight is answered; a foreign
    /// origin is always checked to get no CORS headers.
    #[arg(long, value_name = "ORIGIN")]
    pub(crate) allowed_origin: Option<String>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}
