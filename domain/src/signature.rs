//! Webhook signatures: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the scheme of Stripe's
//! `Stripe-Signature` header, which creditflow also uses to sign its own outgoing webhooks (`Creditflow-Signature`).
//! Several `v1` values may appear while a secret is rolled. The timestamp must be within the tolerance of now, in
//! either direction, so a captured request cannot be replayed later; signatures are compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No header, or no `t=` or `v1=` in it.
    #[error("the Stripe-Signature header is missing or malformed")]
    Malformed,
    /// The timestamp is too far from now.
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    /// No `v1` signature matches.
    #[error("no signature matches")]
    Mismatch,
}

/// Checks `header` for `body` with `secret` at `now_unix`, allowing `tolerance_seconds` of clock difference.
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &str,
    now_unix: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_unix.abs_diff(timestamp) > tolerance_seconds.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    for signature in signatures {
        let Some(expected) = decode_hex(signature) else { continue };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// Signs `body` at `timestamp`: creditflow's outgoing webhooks, and Stripe's scheme for tests and tools.
pub fn sign(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={:x}", mac.finalize().into_bytes())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|hex| u8::from_str_radix(hex, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
    const NOW: i64 = 1_900_000_000;

    /// (case, header, body, expected)
    type Row<'a> = (&'a str, String, &'a [u8], Result<(), SignatureError>);

    #[test]
    fn verification_table() {
        let good = sign(BODY, SECRET, NOW);
        let other_secret = sign(BODY, "whsec_other", NOW);
        let rotated = format!("{good},v1={}", "ab".repeat(32));
        let rows: [Row<'_>; 9] = [
            ("valid", good.clone(), BODY, Ok(())),
            (
                "valid among several v1",
                format!("t={NOW},v1={},{}", "00".repeat(32), &good[good.find("v1").unwrap_or(0)..]),
                BODY,
                Ok(()),
            ),
            ("rotation: second v1 wrong", rotated, BODY, Ok(())),
            ("other secret", other_secret, BODY, Err(SignatureError::Mismatch)),
            ("body changed", good.clone(), br#"{"id":"evt_2"}"#, Err(SignatureError::Mismatch)),
            ("too old", sign(BODY, SECRET, NOW - 301), BODY, Err(SignatureError::Stale)),
            ("from the future", sign(BODY, SECRET, NOW + 301), BODY, Err(SignatureError::Stale)),
            ("no timestamp", "v1=abcd".to_owned(), BODY, Err(SignatureError::Malformed)),
            ("no v1", format!("t={NOW},v0=abcd"), BODY, Err(SignatureError::Malformed)),
        ];
        for (case, header, body, expected) in rows {
            assert_eq!(verify(&header, body, SECRET, NOW, 300), expected, "{case}");
        }
        assert_eq!(verify(&sign(BODY, SECRET, NOW - 300), BODY, SECRET, NOW, 300), Ok(()), "the edge of the tolerance");
    }
}
