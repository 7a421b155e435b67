//! Email jobs: the low-balance notice, sent through SMTP in production or written as `.eml` files to an outbox
//! folder on the embedded setup (lettre's file transport), with plain-text and HTML parts.
//!
//! A notice is queued by the posting that crossed the threshold (in its transaction). A send is claimed under a key
//! (`low_balance:<entry id>`) before it happens, so two deliveries of one job send once; a failed send gives the
//! claim back for the retry. A crash after the claim and before the send loses that one email: for a notice, once
//! at most beats twice.

use std::path::PathBuf;
use std::sync::Arc;

use creditflow_domain::{AccountId, Millicredits};
use creditflow_store::Store;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::JobError;

/// A job of the `emails` queue, told apart by `kind`. Variants are never renamed; new shapes get new kinds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum EmailJob {
    /// The balance fell below the account's threshold.
    #[serde(rename = "low_balance_email")]
    LowBalance(LowBalanceEmailV1),
    /// Autoreload kept failing and was turned off.
    #[serde(rename = "autoreload_disabled_email")]
    AutoreloadDisabled(AutoreloadDisabledEmailV1),
    /// A rate card was scheduled for some accounts: queue one notice per covered account with an address.
    #[serde(rename = "rate_card_notices")]
    RateCardNotices(RateCardNoticesV1),
    /// Tell one customer which rate card applies to them from when.
    #[serde(rename = "rate_card_notice_email")]
    RateCardNotice(RateCardNoticeEmailV1),
}

/// A scheduled rate card activation (queued with it by the store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateCardNoticesV1 {
    /// The activation.
    pub activation_id: i64,
    /// The rate card version.
    pub version: String,
    /// When it takes effect (Unix seconds).
    pub effective_at: i64,
    /// The share of accounts it covers, by stable bucket.
    pub percentage: u8,
    /// Accounts it covers whatever their bucket.
    pub allowlist: Vec<String>,
}

/// One customer's notice of a rate card change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateCardNoticeEmailV1 {
    /// The account told.
    pub account_id: String,
    /// The activation.
    pub activation_id: i64,
    /// The rate card version.
    pub version: String,
    /// When it takes effect (Unix seconds).
    pub effective_at: i64,
}

/// Autoreload was turned off after failing again and again (queued by the autoreload job that turned it off).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoreloadDisabledEmailV1 {
    /// The account.
    pub account_id: String,
    /// The reload whose failure turned it off.
    pub reload_id: String,
    /// Why the last reload failed.
    pub reason: String,
}

/// A balance crossed below the low-balance threshold (queued by the posting that crossed it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LowBalanceEmailV1 {
    /// The account.
    pub account_id: String,
    /// The entry that crossed.
    pub entry_id: String,
    /// The balance after it.
    pub balance_millicredits: i64,
    /// The threshold crossed.
    pub threshold_millicredits: i64,
}

/// Where email goes.
#[derive(Clone)]
pub enum Mailer {
    /// An SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in a folder.
    Outbox(AsyncFileTransport<Tokio1Executor>),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Smtp(_) => "Mailer::Smtp",
            Self::Outbox(_) => "Mailer::Outbox",
        })
    }
}

impl Mailer {
    /// SMTP at `url` (`smtp://host:port`, `smtps://user:pass@host`), as lettre reads it.
    pub fn smtp(url: &str) -> Result<Self, String> {
        AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map(|builder| Self::Smtp(builder.build()))
            .map_err(|error| format!("bad SMTP URL: {error}"))
    }

    /// `.eml` files in `folder` (created if missing).
    pub fn outbox(folder: PathBuf) -> Result<Self, String> {
        std::fs::create_dir_all(&folder).map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
        Ok(Self::Outbox(AsyncFileTransport::<Tokio1Executor>::new(folder)))
    }

    /// Sends one message.
    pub async fn send(&self, message: Message) -> Result<(), String> {
        match self {
            Self::Smtp(transport) => transport.send(message).await.map(drop).map_err(|e| e.to_string()),
            Self::Outbox(transport) => transport.send(message).await.map(drop).map_err(|e| e.to_string()),
        }
    }
}

/// What email jobs need.
#[derive(Clone, Debug)]
pub struct EmailDeps {
    /// The ledger store (settings, and what was sent).
    pub store: Store,
    /// Where email goes.
    pub mailer: Arc<Mailer>,
    /// The sender.
    pub from: Mailbox,
}

/// What a job did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emailed {
    /// Sent now.
    Sent,
    /// Sent before: nothing done.
    AlreadySent,
    /// The account has no email address: nothing to send.
    NoAddress,
    /// One email job was queued for each of these many accounts.
    Queued(usize),
}

/// Runs an email job. Idempotent.
pub async fn send_email(job: &EmailJob, deps: &EmailDeps) -> Result<Emailed, JobError> {
    match job {
        EmailJob::LowBalance(notice) => {
            let balance = Millicredits::new(notice.balance_millicredits);
            let threshold = Millicredits::new(notice.threshold_millicredits);
            let email = Email {
                key: format!("low_balance:{}", notice.entry_id),
                account_id: &notice.account_id,
                subject: format!("Your balance is low: {balance} credits"),
                text: format!(
                    "Your balance is {balance} credits, below the {threshold} credits you asked to be told about.\n\n\
                     Buy a credit pack or turn on autoreload to keep your requests going.\n"
                ),
                html: format!(
                    "<p>Your balance is <strong>{balance} credits</strong>, below the {threshold} credits you asked \
                     to be told about.</p><p>Buy a credit pack or turn on autoreload to keep your requests going.</p>"
                ),
            };
            send_once(&email, deps).await
        }
        EmailJob::AutoreloadDisabled(notice) => {
            let reason = html_escape(&notice.reason);
            let email = Email {
                key: format!("autoreload_disabled:{}", notice.reload_id),
                account_id: &notice.account_id,
                subject: "Autoreload is off: your card was not charged".to_owned(),
                text: format!(
                    "We could not top up your credits automatically several times in a row, so autoreload is now \
                     off.\n\nThe last attempt failed: {}\n\nUpdate your card and turn autoreload back on to keep \
                     your requests going.\n",
                    notice.reason
                ),
                html: format!(
                    "<p>We could not top up your credits automatically several times in a row, so <strong>autoreload \
                     is now off</strong>.</p><p>The last attempt failed: {reason}</p><p>Update your card and turn \
                     autoreload back on to keep your requests going.</p>"
                ),
            };
            send_once(&email, deps).await
        }
        EmailJob::RateCardNotices(notices) => queue_rate_card_notices(notices, deps).await,
        EmailJob::RateCardNotice(notice) => send_once(&rate_card_notice(notice)?, deps).await,
    }
}

/// Queues a notice for every account the activation covers that has an email address; each is queued once.
async fn queue_rate_card_notices(notices: &RateCardNoticesV1, deps: &EmailDeps) -> Result<Emailed, JobError> {
    let version = creditflow_domain::RateVersion::new(notices.version.clone())
        .map_err(|_| JobError::Permanent(format!("bad rate card version `{}`", notices.version)))?;
    let allowlist: Vec<AccountId> = notices.allowlist.iter().filter_map(|id| AccountId::new(id.clone()).ok()).collect();
    let mut queued = 0;
    for (account, _) in deps.store.accounts_with_email().await? {
        if !creditflow_domain::rollout_covers(&version, notices.percentage, &allowlist, &account) {
            continue;
        }
        let notice = EmailJob::RateCardNotice(RateCardNoticeEmailV1 {
            account_id: account.to_string(),
            activation_id: notices.activation_id,
            version: notices.version.clone(),
            effective_at: notices.effective_at,
        });
        let payload = serde_json::to_string(&notice).map_err(|error| JobError::Permanent(error.to_string()))?;
        let key = format!("rate_card_notice:{}:{account}", notices.activation_id);
        deps.store.enqueue_once(creditflow_store::EMAILS_QUEUE, &payload, &key).await?;
        queued += 1;
    }
    Ok(Emailed::Queued(queued))
}

fn rate_card_notice(notice: &RateCardNoticeEmailV1) -> Result<Email<'_>, JobError> {
    let when = time::OffsetDateTime::from_unix_timestamp(notice.effective_at)
        .ok()
        .and_then(|at| at.format(&time::format_description::well_known::Rfc2822).ok())
        .ok_or_else(|| JobError::Permanent(format!("effective time {} is out of range", notice.effective_at)))?;
    let version = html_escape(&notice.version);
    Ok(Email {
        key: format!("rate_card_notice:{}:{}", notice.activation_id, notice.account_id),
        account_id: &notice.account_id,
        subject: format!("New prices from {when}"),
        text: format!(
            "From {when}, your usage will be priced with rate card {}.\n\nUsage before then keeps the prices it \
             had. Your ledger shows the rate card version of every debit.\n",
            notice.version
        ),
        html: format!(
            "<p>From <strong>{when}</strong>, your usage will be priced with rate card <strong>{version}</strong>.\
             </p><p>Usage before then keeps the prices it had. Your ledger shows the rate card version of every \
             debit.</p>"
        ),
    })
}

/// One email to an account's address, sent at most once per `key`.
struct Email<'a> {
    key: String,
    account_id: &'a str,
    subject: String,
    text: String,
    html: String,
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Sends `email` unless it was sent before: the key is claimed first (so two deliveries of one job cannot both
/// send) and given back when sending fails (so the retry can send).
async fn send_once(email: &Email<'_>, deps: &EmailDeps) -> Result<Emailed, JobError> {
    let account = AccountId::new(email.account_id.to_owned())
        .map_err(|_| JobError::Permanent(format!("bad account id {}", email.account_id)))?;
    let Some(address) = deps.store.settings(&account).await?.email else { return Ok(Emailed::NoAddress) };
    let to: Mailbox = address
        .parse()
        .map_err(|error| JobError::Permanent(format!("account {account} has an unusable email address: {error}")))?;
    let message = Message::builder()
        .from(deps.from.clone())
        .to(to)
        .subject(email.subject.clone())
        .multipart(MultiPart::alternative_plain_html(email.text.clone(), email.html.clone()))
        .map_err(|error| JobError::Permanent(format!("cannot build the email: {error}")))?;
    if !deps.store.claim_notification(&email.key, account.as_str()).await? {
        return Ok(Emailed::AlreadySent);
    }
    if let Err(error) = deps.mailer.send(message).await {
        deps.store.release_notification(&email.key).await?;
        return Err(JobError::Transient(format!("cannot send the email: {error}")));
    }
    tracing::info!(%account, key = %email.key, "email sent");
    Ok(Emailed::Sent)
}
