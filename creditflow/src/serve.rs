//! `creditflow serve` and `creditflow migrate`: open the store, prepare it, serve until asked to stop.

use std::time::Duration;

use anyhow::Context as _;

use std::sync::Arc;

use creditflow_api::{AppState, Authenticator, CorsAllowlist, DevKey, RateLimiter, StripeWebhookSettings, app};
use creditflow_jobs::autoreload::AutoreloadDeps;
use creditflow_jobs::emails::{EmailDeps, Mailer};
use creditflow_jobs::scheduled::{AnomalyRule, ScheduledDeps};
use creditflow_jobs::stripe_events::Deps;
use creditflow_jobs::usage_batches::BatchDeps;
use creditflow_jobs::webhooks::WebhookDeps;
use creditflow_reports::ReportDeps;
use creditflow_store::{NewAuditRecord, RateCardAdded, Store};
use creditflow_workers::{Handlers, Queues, WorkerSettings};
use poem::Server;
use poem::listener::{Acceptor, Listener, TcpListener};
use time::OffsetDateTime;

use crate::config::Loaded;

/// Opens the store named by the configuration.
pub(crate) async fn open_store(loaded: &Loaded) -> anyhow::Result<Store> {
    let config = &loaded.config;
    let store = Store::connect(&config.database_url, config.database_max_connections).await.map_err(|error| {
        anyhow::Error::new(error)
            .context(format!("cannot open the database {}", creditflow_store::redact_url(&config.database_url)))
    })?;
    Ok(store)
}

/// `creditflow migrate`.
pub(crate) async fn migrate(loaded: &Loaded) -> anyhow::Result<()> {
    let store = open_store(loaded).await?;
    store.migrate().await.context("cannot apply migrations")?;
    tracing::info!(backend = store.backend().as_str(), "migrations applied");
    store.close().await;
    Ok(())
}

/// `creditflow serve`: the API and the worker pools in one process.
pub(crate) async fn serve(loaded: &Loaded) -> anyhow::Result<()> {
    run_api(loaded, true).await
}

/// `creditflow api`: the API alone (worker pools run in `creditflow worker` processes).
pub(crate) async fn api(loaded: &Loaded) -> anyhow::Result<()> {
    run_api(loaded, false).await
}

async fn run_api(loaded: &Loaded, with_workers: bool) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let config = &loaded.config;
    let store = open_store(loaded).await?;
    if config.auto_migrate {
        store.migrate().await.context("cannot apply migrations")?;
    }
    ensure_rate_card(&store, loaded).await.context("cannot prepare the rate card")?;
    let state = app_state(loaded, &store).await?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let workers = if with_workers {
        let queues = open_queues(loaded).await?;
        let run = creditflow_workers::run(
            store.clone(),
            job_deps(&store, loaded)?,
            queues,
            worker_settings(loaded),
            wait_for_stop(stopping),
        );
        Some(tokio::spawn(run))
    } else {
        None
    };
    let acceptor = TcpListener::bind(config.listen)
        .into_acceptor()
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = acceptor.local_addr().first().and_then(|local| local.as_socket_addr().copied());
    let address = address.map(|address| address.to_string()).unwrap_or_default();
    tracing::info!(address, backend = store.backend().as_str(), workers = with_workers, "creditflow is serving");
    let on_signal = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(app(state), on_signal, Some(grace)).await?;
    if let Some(workers) = workers {
        match workers.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the worker pools stopped with an error"),
            Err(error) => tracing::error!(%error, "the worker pools ended abnormally"),
        }
    }
    store.close().await;
    tracing::info!("creditflow stopped");
    Ok(())
}

/// Everything the API's handlers share: the store, token verification, the rate limiter, CORS and Stripe settings.
async fn app_state(loaded: &Loaded, store: &Store) -> anyhow::Result<AppState> {
    let config = &loaded.config;
    let auth = authenticator(loaded)?;
    auth.warm_up().await;
    let limiter = match &config.redis_url {
        Some(url) => RateLimiter::redis(url, config.rate_limit_per_minute).await.with_context(|| {
            format!("cannot reach Redis at {} for the shared rate limiter", creditflow_store::redact_url(url))
        })?,
        None => RateLimiter::in_memory(config.rate_limit_per_minute),
    };
    if config.stripe.webhook_secret.is_none() {
        tracing::warn!(
            "Stripe is not configured: POST /webhooks/stripe answers 503 until stripe.webhook_secret is set"
        );
    }
    Ok(AppState {
        store: store.clone(),
        debits: creditflow_store::Coalescer::new(),
        auth: Arc::new(auth),
        packs: Arc::new(loaded.packs.clone()),
        limiter: Arc::new(limiter),
        cors: CorsAllowlist::new(config.cors_allowed_origins.iter().cloned()),
        stripe: StripeWebhookSettings {
            secret: config.stripe.webhook_secret.clone(),
            tolerance_seconds: config.stripe.webhook_tolerance_seconds,
        },
        payments: payments(loaded)?,
    })
}

/// The job queues named by the configuration.
async fn open_queues(loaded: &Loaded) -> anyhow::Result<Queues> {
    let heartbeat = Duration::from_secs(loaded.config.queue_heartbeat_seconds);
    let config = &loaded.config;
    Queues::open_with(&config.queue_url, &config.queue_namespace, heartbeat).await.context("cannot open the job queue")
}

/// Stripe's API client, when a secret key is configured.
pub(crate) fn payments(loaded: &Loaded) -> anyhow::Result<Option<Arc<creditflow_payments::Stripe>>> {
    let stripe = &loaded.config.stripe;
    let Some(key) = stripe.secret_key.as_deref() else { return Ok(None) };
    let client = creditflow_payments::Stripe::new(key, stripe.api_base.as_deref())
        .map_err(|error| anyhow::anyhow!("stripe: {error}"))?;
    Ok(Some(Arc::new(client)))
}

/// `creditflow worker`.
pub(crate) async fn worker(loaded: &Loaded) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let store = open_store(loaded).await?;
    if loaded.config.auto_migrate {
        store.migrate().await.context("cannot apply migrations")?;
    }
    let queues = open_queues(loaded).await?;
    tracing::info!(backend = store.backend().as_str(), "creditflow worker is running");
    creditflow_workers::run(store.clone(), job_deps(&store, loaded)?, queues, worker_settings(loaded), shutdown)
        .await
        .context("the worker pools stopped with an error")?;
    store.close().await;
    tracing::info!("creditflow worker stopped");
    Ok(())
}

/// The mailer the configuration names (SMTP, else the outbox directory) and the sender.
pub(crate) fn mailer(loaded: &Loaded) -> anyhow::Result<(Arc<Mailer>, lettre::message::Mailbox)> {
    let email = &loaded.config.email;
    let mailer = match &email.smtp_url {
        Some(url) => Mailer::smtp(url),
        None => Mailer::outbox(email.outbox_dir.clone()),
    }
    .map_err(|message| anyhow::anyhow!("email: {message}"))?;
    let from = email.from.parse().map_err(|error| anyhow::anyhow!("email.from: {error}"))?;
    Ok((Arc::new(mailer), from))
}

fn job_deps(store: &Store, loaded: &Loaded) -> anyhow::Result<Handlers> {
    let (mailer, from) = mailer(loaded)?;
    let stripe = payments(loaded)?;
    let stripe_deps = Deps {
        store: store.clone(),
        packs: Arc::new(loaded.packs.clone()),
        freeze_on_dispute: loaded.config.stripe.freeze_on_dispute,
    };
    Ok(Handlers {
        stripe: stripe_deps.clone(),
        email: EmailDeps { store: store.clone(), mailer: mailer.clone(), from: from.clone() },
        webhooks: WebhookDeps::new(loaded.config.webhook_endpoints.clone())
            .map_err(|message| anyhow::anyhow!("webhooks: {message}"))?,
        batches: BatchDeps { store: store.clone() },
        autoreload: AutoreloadDeps {
            fulfilment: stripe_deps,
            stripe: stripe.clone(),
            failures_before_disabling: loaded.config.autoreload_failures_before_disabling,
            claim_lease: Duration::from_secs(loaded.config.autoreload_claim_lease_seconds),
        },
        scheduled: ScheduledDeps {
            store: store.clone(),
            anomaly: AnomalyRule {
                floor: creditflow_domain::Millicredits::new(loaded.config.anomaly_floor_millicredits),
                ..AnomalyRule::default()
            },
        },
        reports: report_deps(store, loaded, stripe, mailer, from),
    })
}

/// What the report job (and `creditflow report`) needs.
pub(crate) fn report_deps(
    store: &Store,
    loaded: &Loaded,
    stripe: Option<Arc<creditflow_payments::Stripe>>,
    mailer: Arc<Mailer>,
    from: lettre::message::Mailbox,
) -> ReportDeps {
    ReportDeps {
        store: store.clone(),
        stripe: stripe.map(|client| client.as_ref().clone()),
        mailer,
        from,
        settings: loaded.report.clone(),
    }
}

fn worker_settings(loaded: &Loaded) -> WorkerSettings {
    WorkerSettings {
        shutdown_grace: Duration::from_secs(loaded.config.shutdown_grace_seconds),
        report_schedule: loaded.report_schedule.clone(),
        requeue_after: Duration::from_secs(loaded.config.queue_requeue_after_seconds),
        ..WorkerSettings::default()
    }
}

/// Resolves once `stopping` turns true (or its sender is gone).
async fn wait_for_stop(mut stopping: tokio::sync::watch::Receiver<bool>) {
    while !*stopping.borrow() {
        if stopping.changed().await.is_err() {
            return;
        }
    }
}

/// The token verifier: the configured key, or in dev mode the local key, announced loudly.
fn authenticator(loaded: &Loaded) -> anyhow::Result<Authenticator> {
    if !loaded.dev_mode() {
        return Authenticator::from_settings(&loaded.config.auth).map_err(|message| anyhow::anyhow!("auth: {message}"));
    }
    let path = &loaded.config.dev_key_file;
    let key = DevKey::load_or_create(path).map_err(|message| anyhow::anyhow!("dev mode: {message}"))?;
    tracing::warn!(
        key_file = %path.display(),
        "DEV MODE: tokens are verified with a local signing key and anyone with this directory can mint them. \
         Mint one with `creditflow token --sub NAME --role customer`. Configure auth.jwks_url or \
         auth.public_key_file for anything but local development."
    );
    Ok(Authenticator::dev(&key, &loaded.config.auth))
}

/// Stores the configured rate card, and activates it when the database has no active card (the first start).
async fn ensure_rate_card(store: &Store, loaded: &Loaded) -> anyhow::Result<()> {
    let card = &loaded.rate_card;
    match store.add_rate_card(card, &loaded.rate_card_document).await? {
        RateCardAdded::Created => tracing::info!(version = %card.version(), "rate card stored"),
        RateCardAdded::Exists => {}
        RateCardAdded::Conflict => tracing::warn!(
            version = %card.version(),
            "the configured rate card differs from the stored version of the same name; versions are immutable, \
             so the stored one is kept: give the new document a new version"
        ),
    }
    let now = OffsetDateTime::now_utc();
    if store.active_rate_card(now).await?.is_none() {
        let audit = NewAuditRecord {
            actor: "system:bootstrap".to_owned(),
            action: "rate_card.activate".to_owned(),
            subject: card.version().to_string(),
            reason: Some("no rate card was active at start".to_owned()),
            details: "{}".to_owned(),
        };
        store.activate_rate_card(card.version(), now, &audit).await?;
        tracing::info!(version = %card.version(), "rate card activated");
    }
    Ok(())
}

/// Listens for SIGTERM and Ctrl-C from the moment it is called (handlers registered lazily, on the first poll,
/// would let a signal that arrives during start-up kill the process instead of stopping it gracefully), and returns
/// a future that resolves on the first of them.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("shutdown requested: finishing work in flight");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            tracing::info!("shutdown requested: finishing work in flight");
        })
    }
}
