//! Spawning the app and talking to it: tokens signed with the test keys, a JWKS server, funded accounts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use creditflow_api::{AppState, AuthSettings, Authenticator, CorsAllowlist, RateLimiter, StripeWebhookSettings, app};
use creditflow_domain::{
    AccountId, EntryKind, Millicredits, Overdraft, PackCatalog, Posting, PostingOutcome, RateCard,
};
use creditflow_store::{NewAuditRecord, Store};
use creditflow_testkit::{TestBackend, TestDatabase};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use poem::listener::{Acceptor, Listener, TcpListener};
use tokio::sync::RwLock;

pub(crate) const ISSUER: &str = "https://issuer.test/";
pub(crate) const AUDIENCE: &str = "creditflow-test";
pub(crate) const WEBHOOK_SECRET: &str = "whsec_test_secret";
/// The Stripe key the app uses against localstripe (which accepts any `sk_` key).
pub(crate) const STRIPE_KEY: &str = "sk_test_creditflow";

pub(crate) const CEIL_CARD: &str = "version = \"v1\"\nrounding = \"ceil\"\n[models.\"gpt-4o\"]\n\
    input_tokens = \"0.0025\"\noutput_tokens = \"0.01\"\n";
pub(crate) const PRECISE_CARD: &str = "version = \"v2\"\nrounding = \"precise\"\n[models.\"gpt-4o\"]\n\
    input_tokens = \"0.0025\"\noutput_tokens = \"0.01\"\n";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("read {path}: {error}"))
}

/// A signing key of the test fixtures.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TestKey {
    Rsa1,
    Rsa2,
    Ec1,
    Ed1,
}

impl TestKey {
    pub(crate) fn algorithm(self) -> Algorithm {
        match self {
            Self::Rsa1 | Self::Rsa2 => Algorithm::RS256,
            Self::Ec1 => Algorithm::ES256,
            Self::Ed1 => Algorithm::EdDSA,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rsa1 => "rsa-1",
            Self::Rsa2 => "rsa-2",
            Self::Ec1 => "ec-1",
            Self::Ed1 => "ed-1",
        }
    }

    pub(crate) fn encoding_key(self) -> EncodingKey {
        let pem = fixture(&format!("{}.key", self.name()));
        match self {
            Self::Rsa1 | Self::Rsa2 => EncodingKey::from_rsa_pem(&pem),
            Self::Ec1 => EncodingKey::from_ec_pem(&pem),
            Self::Ed1 => EncodingKey::from_ed_pem(&pem),
        }
        .expect("fixture key")
    }

    pub(crate) fn public_pem_path(self) -> std::path::PathBuf {
        format!("{}/tests/fixtures/{}.pub", env!("CARGO_MANIFEST_DIR"), self.name()).into()
    }

    pub(crate) fn public_pem(self) -> Vec<u8> {
        fixture(&format!("{}.pub", self.name()))
    }

    /// The public JWK, with `kid`.
    pub(crate) fn jwk(self, kid: &str) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding_key(), self.algorithm()).expect("jwk");
        jwk.common.key_id = Some(kid.to_owned());
        jwk
    }
}

/// Claims of a test token; adjust fields to make it bad.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) aud: String,
    pub(crate) sub: String,
    pub(crate) role: serde_json::Value,
    pub(crate) exp: i64,
    pub(crate) nbf: i64,
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Claims {
    pub(crate) fn new(sub: &str, role: &str) -> Self {
        Self {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: sub.into(),
            role: serde_json::json!(role),
            exp: now() + 300,
            nbf: now() - 10,
        }
    }

    pub(crate) fn sign(&self, key: TestKey, kid: Option<&str>) -> String {
        let mut header = Header::new(key.algorithm());
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, self, &key.encoding_key()).expect("sign")
    }
}

/// A JWKS endpoint whose keys can be swapped, counting how often it is fetched.
pub(crate) struct JwksServer {
    pub(crate) url: String,
    keys: Arc<RwLock<JwkSet>>,
    pub(crate) fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    pub(crate) async fn start(keys: Vec<Jwk>) -> Self {
        let keys = Arc::new(RwLock::new(JwkSet { keys }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), fetches.clone());
        let endpoint = poem::endpoint::make(move |_| {
            let (served, counted) = (served.clone(), counted.clone());
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                poem::web::Json(served.read().await.clone())
            }
        });
        let url = serve(endpoint).await;
        Self { url: format!("{url}/jwks.json"), keys, fetches }
    }

    pub(crate) async fn set(&self, keys: Vec<Jwk>) {
        *self.keys.write().await = JwkSet { keys };
    }

    pub(crate) fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Serves `endpoint` on a random loopback port until the test ends; returns its base URL.
pub(crate) async fn serve(endpoint: impl poem::Endpoint + 'static) -> String {
    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind a random port");
    let address = *acceptor.local_addr()[0].as_socket_addr().expect("a socket address");
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(endpoint));
    format!("http://{address}")
}

/// How the app verifies tokens.
pub(crate) enum Auth {
    /// A PEM public key of this test key.
    Pem(TestKey),
    /// A JWKS URL.
    Jwks { url: String, min_refresh_seconds: u64 },
}

/// A running app on a fresh database.
pub(crate) struct TestApp {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) store: Store,
    pub(crate) database: TestDatabase,
}

impl TestApp {
    /// Spawns the app on `backend` with `auth`, the ceil card `v1` active, and a generous in-memory rate limit.
    pub(crate) async fn spawn(backend: TestBackend, auth: Auth) -> Self {
        Self::spawn_limited(backend, auth, RateLimiter::in_memory(10_000)).await
    }

    /// Spawns the app with `limiter`, selling packs through localstripe.
    pub(crate) async fn spawn_limited(backend: TestBackend, auth: Auth, limiter: RateLimiter) -> Self {
        let stripe = creditflow_payments::Stripe::new(STRIPE_KEY, Some(&creditflow_testkit::stripe_url()));
        Self::spawn_with(backend, auth, limiter, Some(Arc::new(stripe.expect("client")))).await
    }

    /// Spawns the app with `limiter` and `payments`.
    pub(crate) async fn spawn_with(
        backend: TestBackend,
        auth: Auth,
        limiter: RateLimiter,
        payments: Option<Arc<creditflow_payments::Stripe>>,
    ) -> Self {
        let database = TestDatabase::new(backend).await;
        let store = Store::connect(&database.url, 16).await.expect("connect");
        store.migrate().await.expect("migrate");
        let mut settings =
            AuthSettings { issuer: Some(ISSUER.into()), audience: Some(AUDIENCE.into()), ..AuthSettings::default() };
        match auth {
            Auth::Pem(key) => settings.public_key_file = Some(key.public_pem_path()),
            Auth::Jwks { url, min_refresh_seconds } => {
                settings.jwks_url = Some(url);
                settings.jwks_min_refresh_seconds = Some(min_refresh_seconds);
            }
        }
        let authenticator = Authenticator::from_settings(&settings).expect("authenticator");
        authenticator.warm_up().await;
        let packs = PackCatalog::from_toml(
            "[[packs]]\nid = \"starter\"\nname = \"Starter\"\nprice_usd_cents = 500\ncredits = 5000\n",
        )
        .expect("packs");
        let state = AppState {
            store: store.clone(),
            debits: creditflow_store::Coalescer::new(),
            auth: Arc::new(authenticator),
            packs: Arc::new(packs),
            limiter: Arc::new(limiter),
            cors: CorsAllowlist::new(["https://app.example.com".to_owned()]),
            stripe: StripeWebhookSettings { secret: Some(WEBHOOK_SECRET.to_owned()), tolerance_seconds: 300 },
            payments,
        };
        let app = Self { base: serve(app(state)).await, client: reqwest::Client::new(), store, database };
        app.add_and_activate(CEIL_CARD).await;
        app
    }

    /// Spawns on `backend` with the RSA PEM key.
    pub(crate) async fn on(backend: TestBackend) -> Self {
        Self::spawn(backend, Auth::Pem(TestKey::Rsa1)).await
    }

    pub(crate) async fn add_and_activate(&self, document: &str) {
        let card = RateCard::from_toml(document).expect("card");
        self.store.add_rate_card(&card, document).await.expect("add card");
        let audit = NewAuditRecord {
            actor: "test".into(),
            action: "rate_card.activate".into(),
            subject: card.version().to_string(),
            reason: None,
            details: "{}".into(),
        };
        let now = time::OffsetDateTime::now_utc();
        self.store.activate_rate_card(card.version(), now, &audit).await.expect("activate");
    }

    /// A token for `sub` with `role`, signed with the key the app trusts (`Rsa1`).
    pub(crate) fn token(sub: &str, role: &str) -> String {
        Claims::new(sub, role).sign(TestKey::Rsa1, None)
    }

    /// Creates `account` and credits it `millicredits` through a purchase posting.
    pub(crate) async fn fund(&self, account: &str, millicredits: i64) {
        let id = AccountId::new(account).expect("account id");
        self.store.create_account(&id).await.expect("create");
        let posting = Posting {
            account_id: id,
            kind: EntryKind::PurchaseCredit,
            amount: Millicredits::new(millicredits),
            idempotency_key: format!("fund-{}", uuid::Uuid::new_v4()),
            correlation_id: None,
            rate_version: None,
            source_ref: Some("pi_test".into()),
            reason: None,
            overdraft: Overdraft::Forbid,
            spend_cap: None,
            usage: None,
        };
        assert!(matches!(self.store.post(&posting).await.expect("fund"), PostingOutcome::Created(_)));
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.expect("request answered")
    }

    pub(crate) async fn reconcile(&self, token: &str, body: &serde_json::Value) -> reqwest::Response {
        let url = self.url("/api/usage/reconcile");
        self.client.post(url).bearer_auth(token).json(body).send().await.expect("request answered")
    }

    /// The balance of `account` in millicredits, read through the API as a service.
    pub(crate) async fn balance(&self, account: &str) -> i64 {
        let token = Self::token("gateway", "service");
        let response = self.get(&format!("/api/balance?accountId={account}"), &token).await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("json");
        body["balanceMillicredits"].as_i64().expect("balance")
    }
}

/// Status and JSON body of a response.
pub(crate) async fn status_and_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}
