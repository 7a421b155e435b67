//! A cached JSON Web Key Set. Keys are looked up by `kid`; an unknown `kid` triggers a fetch (key rotation is picked
//! up without a restart), but never more often than the minimum refresh interval, so a flood of tokens with made-up
//! key ids cannot turn into a flood of requests to the identity provider.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

struct CachedKey {
    key: DecodingKey,
    /// The key's own `alg`, when the set states one.
    declared: Option<KeyAlgorithm>,
    /// The algorithm family this key can verify.
    family_algorithm: Algorithm,
}

#[derive(Default)]
struct Snapshot {
    keys: HashMap<String, CachedKey>,
    fetched_at: Option<Instant>,
    /// The last fetch attempt, failed or not: the minimum refresh interval counts from here.
    attempted_at: Option<Instant>,
}

pub(super) struct JwksCache {
    url: String,
    client: reqwest::Client,
    min_refresh: Duration,
    max_age: Duration,
    snapshot: RwLock<Snapshot>,
    /// Serialises fetches so that concurrent misses cause one request.
    fetching: Mutex<()>,
}

impl JwksCache {
    pub(super) fn new(url: String, min_refresh: Duration, max_age: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        Ok(Self { url, client, min_refresh, max_age, snapshot: RwLock::default(), fetching: Mutex::new(()) })
    }

    /// The key for `kid` that can verify `algorithm`, fetching the set when the key is unknown or the set is old.
    pub(super) async fn key(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<DecodingKey> {
        let kid = kid?;
        if let Some(key) = self.lookup(kid, algorithm, false).await {
            return Some(key);
        }
        // Within the minimum interval after any attempt, answer from what is known without queueing on a fetch:
        // an identity provider that is down must not make every request wait for it.
        if self.attempted_recently().await {
            return self.lookup(kid, algorithm, true).await;
        }
        let _fetching = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = self.lookup(kid, algorithm, false).await {
            return Some(key);
        }
        if !self.attempted_recently().await
            && let Err(error) = self.fetch().await
        {
            tracing::warn!(%error, "JWKS fetch failed; keeping the keys already known");
        }
        self.lookup(kid, algorithm, true).await
    }

    /// True when the set fetched last holds a key with id `kid` (nothing is fetched).
    pub(super) async fn publishes(&self, kid: &str) -> bool {
        self.snapshot.read().await.keys.contains_key(kid)
    }

    /// Fetches the set now.
    pub(super) async fn refresh(&self) -> Result<(), String> {
        let _fetching = self.fetching.lock().await;
        self.fetch().await
    }

    async fn lookup(&self, kid: &str, algorithm: Algorithm, allow_stale: bool) -> Option<DecodingKey> {
        let snapshot = self.snapshot.read().await;
        let fresh = snapshot.fetched_at.is_some_and(|at| at.elapsed() < self.max_age);
        if !fresh && !allow_stale {
            return None;
        }
        let cached = snapshot.keys.get(kid)?;
        let algorithm_fits = cached.family_algorithm == algorithm
            && cached.declared.is_none_or(|declared| Some(declared) == key_algorithm(algorithm));
        algorithm_fits.then(|| cached.key.clone())
    }

    async fn attempted_recently(&self) -> bool {
        self.snapshot.read().await.attempted_at.is_some_and(|at| at.elapsed() < self.min_refresh)
    }

    async fn fetch(&self) -> Result<(), String> {
        self.snapshot.write().await.attempted_at = Some(Instant::now());
        let response = self.client.get(&self.url).send().await.map_err(|e| format!("GET {}: {e}", self.url))?;
        let set: JwkSet = response
            .error_for_status()
            .map_err(|e| format!("GET {}: {e}", self.url))?
            .json()
            .await
            .map_err(|e| format!("JWKS from {} does not parse: {e}", self.url))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let Some(family_algorithm) = family_algorithm(&jwk.algorithm) else { continue };
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            keys.insert(kid, CachedKey { key, declared: jwk.common.key_algorithm, family_algorithm });
        }
        tracing::info!(url = %self.url, keys = keys.len(), "JWKS fetched");
        let now = Instant::now();
        *self.snapshot.write().await = Snapshot { keys, fetched_at: Some(now), attempted_at: Some(now) };
        Ok(())
    }
}

/// The one accepted algorithm a JWK can verify, or `None` for keys creditflow does not accept (HMAC, other curves,
/// malformed Ed25519 keys).
fn family_algorithm(parameters: &AlgorithmParameters) -> Option<Algorithm> {
    match parameters {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => {
            (ec.curve == jsonwebtoken::jwk::EllipticCurve::P256).then_some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&okp.x).ok()?;
            let is_ed25519 = okp.curve == jsonwebtoken::jwk::EllipticCurve::Ed25519 && x.len() == 32;
            is_ed25519.then_some(Algorithm::EdDSA)
        }
        // HMAC secrets and any parameters added by later versions are not accepted.
        _ => None,
    }
}

/// The JWK `alg` name of an accepted algorithm.
fn key_algorithm(algorithm: Algorithm) -> Option<KeyAlgorithm> {
    match algorithm {
        Algorithm::RS256 => Some(KeyAlgorithm::RS256),
        Algorithm::ES256 => Some(KeyAlgorithm::ES256),
        Algorithm::EdDSA => Some(KeyAlgorithm::EdDSA),
        _ => None,
    }
}
