//! Authentication: JWT bearer tokens signed with RS256, ES256 or EdDSA, verified against a PEM public key, a JWKS
//! URL, or (in dev mode only) a local key. Every failure looks the same to the caller — one 401 body — and the reason
//! goes to the debug log, so a caller learns nothing about which check failed.
//!
//! Checked: the algorithm is one of the three asymmetric ones and matches the key's type (so `alg=none` and HS256
//! signed with the public key as a secret are refused), the signature, `exp` and `nbf` (with leeway), `iss` and
//! `aud`, and a non-empty `sub`. Roles come from a configurable claim holding a string, a space-separated string or
//! an array of strings. A token that passed is remembered for up to a minute (`verified.rs`), so the signature of a
//! token sent again and again is not checked on every request; its `exp` and `nbf` still are, and a JWKS token only
//! while its key is still published.

mod dev;
mod jwks;
mod principal;
mod verified;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

pub use dev::{DEV_AUDIENCE, DEV_ISSUER, DevKey};
pub use principal::{Denied, Principal, Role};

use jwks::JwksCache;
use verified::Verified;

/// Authentication settings (the `[auth]` table of the configuration).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// URL of the identity provider's JSON Web Key Set.
    pub jwks_url: Option<String>,
    /// A PEM public key (RSA, P-256 or Ed25519) to verify tokens with, instead of a JWKS.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss` claim.
    pub issuer: Option<String>,
    /// Required `aud` claim.
    pub audience: Option<String>,
    /// Claim holding the roles; `role` when unset.
    pub role_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds; 30 when unset.
    pub leeway_seconds: Option<u64>,
    /// Least time between two JWKS fetches triggered by unknown key ids, in seconds; 30 when unset.
    pub jwks_min_refresh_seconds: Option<u64>,
    /// Longest a fetched JWKS is used before it is fetched again, in seconds; 3600 when unset.
    pub jwks_max_age_seconds: Option<u64>,
}

impl AuthSettings {
    /// True when neither a JWKS URL nor a public key is configured.
    pub fn has_no_key(&self) -> bool {
        self.jwks_url.is_none() && self.public_key_file.is_none()
    }

    /// Checks the settings on their own; errors name the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.jwks_url.is_some() && self.public_key_file.is_some() {
            return Err(("auth.jwks_url", "set either auth.jwks_url or auth.public_key_file, not both".into()));
        }
        if let Some(url) = &self.jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(("auth.jwks_url", "must be an http(s) URL".into()));
        }
        if !self.has_no_key() {
            if self.issuer.as_deref().is_none_or(str::is_empty) {
                return Err(("auth.issuer", "required with a key: tokens must name their issuer".into()));
            }
            if self.audience.as_deref().is_none_or(str::is_empty) {
                return Err(("auth.audience", "required with a key: tokens must name their audience".into()));
            }
        }
        if self.role_claim.as_deref().is_some_and(str::is_empty) {
            return Err(("auth.role_claim", "must not be empty".into()));
        }
        Ok(())
    }
}

/// Why a token was refused. Only ever logged; callers see one uniform 401.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("malformed token or header: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    #[error("no key for this token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("token rejected: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    #[error("token has no subject")]
    NoSubject,
    #[error("token grants no known role")]
    NoRole,
}

/// Where verification keys come from.
enum Keys {
    /// One key: a configured PEM or the dev key.
    Static { key: DecodingKey, algorithm: Algorithm },
    /// A JWKS URL, cached.
    Jwks(JwksCache),
}

/// Verifies bearer tokens.
pub struct Authenticator {
    keys: Keys,
    issuer: String,
    audience: String,
    role_claim: String,
    leeway_seconds: u64,
    dev_mode: bool,
    /// Tokens that passed every check a moment ago.
    verified: Verified,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("dev_mode", &self.dev_mode)
            .finish_non_exhaustive()
    }
}

/// The algorithms creditflow accepts, by key family.
const ACCEPTED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

impl Authenticator {
    /// Builds the authenticator for production settings (a PEM key or a JWKS URL).
    pub fn from_settings(settings: &AuthSettings) -> Result<Self, String> {
        let keys = if let Some(url) = &settings.jwks_url {
            let min_refresh = Duration::from_secs(settings.jwks_min_refresh_seconds.unwrap_or(30));
            let max_age = Duration::from_secs(settings.jwks_max_age_seconds.unwrap_or(3_600));
            Keys::Jwks(JwksCache::new(url.clone(), min_refresh, max_age)?)
        } else if let Some(path) = &settings.public_key_file {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let (key, algorithm) = static_key(&pem)
                .ok_or_else(|| format!("{} holds no RSA, P-256 or Ed25519 public key in PEM form", path.display()))?;
            Keys::Static { key, algorithm }
        } else {
            return Err("no auth.jwks_url or auth.public_key_file configured".into());
        };
        Ok(Self {
            keys,
            issuer: settings.issuer.clone().unwrap_or_default(),
            audience: settings.audience.clone().unwrap_or_default(),
            role_claim: settings.role_claim.clone().unwrap_or_else(|| "role".into()),
            leeway_seconds: settings.leeway_seconds.unwrap_or(30),
            dev_mode: false,
            verified: Verified::new(verified::HOLD),
        })
    }

    /// Builds the dev-mode authenticator around a local key.
    pub fn dev(key: &DevKey, settings: &AuthSettings) -> Self {
        Self {
            keys: Keys::Static { key: key.decoding_key(), algorithm: Algorithm::EdDSA },
            issuer: DEV_ISSUER.into(),
            audience: DEV_AUDIENCE.into(),
            role_claim: settings.role_claim.clone().unwrap_or_else(|| "role".into()),
            leeway_seconds: settings.leeway_seconds.unwrap_or(30),
            dev_mode: true,
            verified: Verified::new(verified::HOLD),
        }
    }

    /// True when tokens are checked against the local dev key.
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Fetches the JWKS once, so the first request does not wait for it. Failures are logged, not fatal: the
    /// provider may come up later, and unknown key ids trigger a fetch.
    pub async fn warm_up(&self) {
        if let Keys::Jwks(cache) = &self.keys
            && let Err(error) = cache.refresh().await
        {
            tracing::warn!(%error, "cannot fetch the JWKS yet; tokens are refused until it answers");
        }
    }

    /// Verifies a bearer token and returns who it speaks for.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Principal, Refusal> {
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
        let leeway = i64::try_from(self.leeway_seconds).unwrap_or(i64::MAX);
        if let Some((principal, kid)) = self.verified.get(token, now, leeway) {
            let published = match (&self.keys, kid.as_deref()) {
                (Keys::Static { .. }, _) => true,
                (Keys::Jwks(cache), Some(kid)) => cache.publishes(kid).await,
                (Keys::Jwks(_), None) => false,
            };
            if published {
                return Ok(principal);
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(Refusal::Malformed)?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(Refusal::Algorithm(header.alg));
        }
        let key = match &self.keys {
            Keys::Static { key, algorithm } if *algorithm == header.alg => key.clone(),
            Keys::Static { .. } => return Err(Refusal::Algorithm(header.alg)),
            Keys::Jwks(cache) => cache
                .key(header.kid.as_deref(), header.alg)
                .await
                .ok_or_else(|| Refusal::UnknownKey(header.kid.clone()))?,
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(token, &key, &validation)
            .map_err(Refusal::Invalid)?
            .claims;
        let subject = claims.get("sub").and_then(serde_json::Value::as_str).unwrap_or_default();
        if subject.is_empty() {
            return Err(Refusal::NoSubject);
        }
        let roles = principal::roles_from_claim(claims.get(&self.role_claim));
        if roles.is_empty() {
            return Err(Refusal::NoRole);
        }
        let principal = Principal { subject: subject.to_owned(), roles };
        if let Some(expires) = claims.get("exp").and_then(serde_json::Value::as_i64) {
            let not_before = claims.get("nbf").and_then(serde_json::Value::as_i64);
            self.verified.remember(token, (&principal, header.kid.as_deref()), not_before, expires);
        }
        Ok(principal)
    }
}

/// Reads a PEM public key of any accepted family.
fn static_key(pem: &[u8]) -> Option<(DecodingKey, Algorithm)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((key, Algorithm::ES256));
    }
    DecodingKey::from_ed_pem(pem).ok().map(|key| (key, Algorithm::EdDSA))
}
