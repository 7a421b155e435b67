//! Dev mode's signing key: an Ed25519 key kept in a PEM file in the working directory, created on first use, so that
//! `creditflow serve` can verify and `creditflow token` can mint tokens without any identity provider. Dev mode is
//! only ever chosen for the embedded SQLite setup with no key configured; the binary decides, loudly.

use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;

/// `iss` of dev tokens.
pub const DEV_ISSUER: &str = "creditflow-dev";
/// `aud` of dev tokens.
pub const DEV_AUDIENCE: &str = "creditflow";

/// RFC 8410 PKCS#8 v1 prefix for an Ed25519 private key: the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// The local dev signing key.
#[derive(Clone)]
pub struct DevKey {
    seed: [u8; 32],
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevKey(..)")
    }
}

#[derive(Serialize)]
struct DevClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    role: Vec<&'a str>,
    iat: i64,
    nbf: i64,
    exp: i64,
}

impl DevKey {
    /// Reads the key at `path`, or creates it (readable by the owner only) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(pem) => Self::from_pem(&pem).ok_or_else(|| format!("{} is not a creditflow dev key", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| format!("no randomness for a dev key: {e}"))?;
                let key = Self { seed };
                write_private(path, &key.to_pem()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok(key)
            }
            Err(error) => Err(format!("cannot read {}: {error}", path.display())),
        }
    }

    fn pkcs8_der(&self) -> Vec<u8> {
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&self.seed);
        der
    }

    fn to_pem(&self) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(self.pkcs8_der());
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
    }

    fn from_pem(pem: &str) -> Option<Self> {
        let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()?;
        let seed = der.strip_prefix(&ED25519_PKCS8_PREFIX[..])?;
        Some(Self { seed: seed.try_into().ok()? })
    }

    /// The public half, for verification.
    pub fn decoding_key(&self) -> DecodingKey {
        let public = ed25519_dalek::SigningKey::from_bytes(&self.seed).verifying_key().to_bytes();
        DecodingKey::from_ed_der(&public)
    }

    /// Mints a token for `subject` with `roles`, valid for `ttl_seconds` from `now_unix`.
    pub fn mint(&self, subject: &str, roles: &[&str], now_unix: i64, ttl_seconds: i64) -> Result<String, String> {
        let claims = DevClaims {
            iss: DEV_ISSUER,
            aud: DEV_AUDIENCE,
            sub: subject,
            role: roles.to_vec(),
            iat: now_unix,
            nbf: now_unix,
            exp: now_unix.saturating_add(ttl_seconds),
        };
        let key = EncodingKey::from_ed_der(&self.pkcs8_der());
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).map_err(|e| e.to_string())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_key_survives_its_file_and_verifies_its_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dev.pem");
        let key = DevKey::load_or_create(&path).expect("create");
        let again = DevKey::load_or_create(&path).expect("load");
        assert_eq!(key.seed, again.seed);
        let token = key.mint("alice", &["customer"], 1_900_000_000, 60).expect("mint");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.set_audience(&[DEV_AUDIENCE]);
        let decoded =
            jsonwebtoken::decode::<serde_json::Value>(&token, &again.decoding_key(), &validation).expect("verifies");
        assert_eq!(decoded.claims["sub"], "alice");
        std::fs::write(&path, "not a key").expect("write");
        assert!(DevKey::load_or_create(&path).is_err());
    }
}
