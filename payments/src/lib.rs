//! creditflow's calls to Stripe, through async-stripe: one customer per account, PaymentIntents for packs (the
//! browser confirms them with the client secret), off-session charges of a saved card for autoreload, and charge
//! listings for the nightly reconciliation.
//!
//! Every call that creates something carries a Stripe idempotency key derived from what it is for, so a retry (of
//! a request or a job) never creates a second customer or charges twice. Errors are sorted by what the caller can
//! do: a declined card, a request Stripe refused, or Stripe unreachable (worth retrying).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use stripe::{
    ApiErrorsCode, ApiErrorsType, Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError,
    StripeRequest as _,
};
use stripe_core::charge::ListCharge;
use stripe_core::customer::CreateCustomer;
use stripe_core::payment_intent::{CreatePaymentIntent, CreatePaymentIntentOffSession};
use stripe_core::{PaymentIntentAllowedPaymentMethodTypes, PaymentIntentStatus};
use stripe_payment::payment_method::{ListPaymentMethod, ListPaymentMethodType};
use stripe_types::{Currency, RangeBoundsTs, RangeQueryTs};

/// How long one Stripe call may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A Stripe call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The card was declined (or needs the customer): charge `payment_intent`, if Stripe made one.
    #[error("the card was declined: {reason}")]
    Declined {
        /// Stripe's decline code or message.
        reason: String,
        /// The PaymentIntent the attempt created.
        payment_intent: Option<String>,
    },
    /// The customer has no card saved for off-session charges.
    #[error("the customer has no saved card")]
    NoPaymentMethod,
    /// The idempotency key was used before with other parameters: the caller reused a key for something else.
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    /// Stripe refused the request (a bug or a configuration problem; retrying will not help).
    #[error("Stripe refused the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Stripe's message.
        message: String,
    },
    /// Stripe could not be reached or failed; retrying later may help.
    #[error("Stripe is unavailable: {0}")]
    Unavailable(String),
}

impl PaymentError {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<StripeError> for PaymentError {
    fn from(error: StripeError) -> Self {
        match error {
            StripeError::Stripe(details, status) => {
                let message = details.message.clone().unwrap_or_else(|| format!("{:?}", details.type_));
                let declined = status == 402 || details.code == Some(ApiErrorsCode::CardDeclined);
                if details.type_ == ApiErrorsType::IdempotencyError && status == 400 {
                    Self::KeyReused
                } else if declined {
                    let reason = details.decline_code.clone().unwrap_or(message);
                    let payment_intent = details.payment_intent.as_ref().map(|intent| intent.id.to_string());
                    Self::Declined { reason, payment_intent }
                } else if status == 409 || status == 429 || status >= 500 {
                    // 409: a request with the same idempotency key is still running at Stripe; try again later.
                    Self::Unavailable(format!("{status}: {message}"))
                } else {
                    Self::Rejected { status, message }
                }
            }
            StripeError::ClientError(message) | StripeError::JSONDeserialize(message) => Self::Unavailable(message),
            StripeError::Timeout => Self::Unavailable("timed out".to_owned()),
            StripeError::ConfigError(message) => Self::Rejected { status: 0, message },
        }
    }
}

/// A PaymentIntent for the browser to confirm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedIntent {
    /// `pi_...`.
    pub id: String,
    /// What the browser confirms the payment with (Stripe.js).
    pub client_secret: String,
}

/// An off-session charge Stripe accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffSessionCharge {
    /// Paid: the PaymentIntent.
    Succeeded(String),
    /// Accepted but not settled yet (some payment methods take days): its outcome arrives as a webhook.
    Processing(String),
}

/// A charge, as the reconciliation reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeSummary {
    /// `ch_...`.
    pub id: String,
    /// Its PaymentIntent.
    pub payment_intent: Option<String>,
    /// Charged, in the currency's minor unit.
    pub amount: i64,
    /// Captured amount.
    pub amount_captured: i64,
    /// Refunded so far.
    pub amount_refunded: i64,
    /// Lower-case ISO code.
    pub currency: String,
    /// True when it succeeded.
    pub paid: bool,
    /// Its metadata.
    pub metadata: HashMap<String, String>,
    /// Unix time.
    pub created: i64,
}

/// A Stripe account's API, through async-stripe.
#[derive(Clone)]
pub struct Stripe {
    client: Client,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stripe { .. }")
    }
}

fn idempotency(key: &str) -> Result<RequestStrategy, PaymentError> {
    let key = IdempotencyKey::new(key)
        .map_err(|error| PaymentError::Rejected { status: 0, message: format!("idempotency key: {error}") })?;
    Ok(RequestStrategy::Idempotent(key))
}

impl Stripe {
    /// A client for the account of `secret_key`, talking to `api_base` (`https://api.stripe.com/` unless set, for
    /// a test double such as localstripe).
    pub fn new(secret_key: &str, api_base: Option<&str>) -> Result<Self, PaymentError> {
        let mut builder = ClientBuilder::new(secret_key).timeout(TIMEOUT);
        if let Some(base) = api_base {
            // async-stripe appends `v1/...` to the base.
            let base = if base.ends_with('/') { base.to_owned() } else { format!("{base}/") };
            builder = builder.url(base);
        }
        Ok(Self { client: builder.build()? })
    }

    /// Creates the Stripe customer for `account_id`. Idempotent per account for as long as Stripe keeps keys
    /// (24 hours); callers store the id and ask once.
    pub async fn create_customer(&self, account_id: &str, email: Option<&str>) -> Result<String, PaymentError> {
        let metadata = HashMap::from([("creditflow_account_id".to_owned(), account_id.to_owned())]);
        let mut request = CreateCustomer::new().metadata(metadata);
        if let Some(email) = email {
            request = request.email(email);
        }
        let customer = request
            .customize()
            .request_strategy(idempotency(&format!("creditflow-customer-{account_id}"))?)
            .send(&self.client)
            .await?;
        Ok(customer.id.to_string())
    }

    /// A PaymentIntent of `amount_cents` USD for `customer`, carrying `metadata`, for the browser to confirm; the
    /// card it is paid with is saved on the customer for later off-session charges (autoreload).
    pub async fn create_payment_intent(
        &self,
        customer: &str,
        amount_cents: i64,
        metadata: HashMap<String, String>,
        idempotency_key: &str,
    ) -> Result<CreatedIntent, PaymentError> {
        let intent = CreatePaymentIntent::new(amount_cents, Currency::USD)
            .customer(customer)
            .allowed_payment_method_types(vec![PaymentIntentAllowedPaymentMethodTypes::Card])
            // The card is saved on the customer for autoreload's off-session charges.
            .setup_future_usage(stripe_core::PaymentIntentSetupFutureUsage::OffSession)
            .metadata(metadata)
            .customize()
            .request_strategy(idempotency(idempotency_key)?)
            .send(&self.client)
            .await?;
        let client_secret = intent.client_secret.clone().ok_or_else(|| PaymentError::Rejected {
            status: 200,
            message: format!("PaymentIntent {} came back without a client secret", intent.id),
        })?;
        Ok(CreatedIntent { id: intent.id.to_string(), client_secret })
    }

    /// Charges `customer`'s saved card `amount_cents` USD now, without the customer present; the same
    /// `idempotency_key` never charges twice.
    pub async fn charge_off_session(
        &self,
        customer: &str,
        amount_cents: i64,
        metadata: HashMap<String, String>,
        idempotency_key: &str,
    ) -> Result<OffSessionCharge, PaymentError> {
        let cards =
            ListPaymentMethod::new().customer(customer).type_(ListPaymentMethodType::Card).send(&self.client).await?;
        let card = cards.data.first().ok_or(PaymentError::NoPaymentMethod)?;
        let intent = CreatePaymentIntent::new(amount_cents, Currency::USD)
            .customer(customer)
            .payment_method(card.id.as_str())
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .metadata(metadata)
            .customize()
            .request_strategy(idempotency(idempotency_key)?)
            .send(&self.client)
            .await?;
        match intent.status {
            PaymentIntentStatus::Succeeded => Ok(OffSessionCharge::Succeeded(intent.id.to_string())),
            PaymentIntentStatus::Processing => Ok(OffSessionCharge::Processing(intent.id.to_string())),
            other => Err(PaymentError::Declined {
                reason: format!("the payment is {other:?}, not succeeded"),
                payment_intent: Some(intent.id.to_string()),
            }),
        }
    }

    /// Every charge created in `[from, to)` (Unix seconds), all pages.
    pub async fn charges_between(&self, from: i64, to: i64) -> Result<Vec<ChargeSummary>, PaymentError> {
        let range = RangeQueryTs::Bounds(RangeBoundsTs { gt: None, gte: Some(from), lt: Some(to), lte: None });
        let charges: Vec<stripe_core::Charge> =
            ListCharge::new().created(range).limit(100).paginate().stream(&self.client).try_collect().await?;
        Ok(charges
            .into_iter()
            .map(|charge| ChargeSummary {
                id: charge.id.to_string(),
                payment_intent: charge.payment_intent.as_ref().map(|intent| intent.id().to_string()),
                amount: charge.amount,
                amount_captured: charge.amount_captured,
                amount_refunded: charge.amount_refunded,
                currency: charge.currency.to_string(),
                paid: charge.paid,
                metadata: charge.metadata,
                created: charge.created,
            })
            .collect())
    }
}
