//! Tokens verified a moment ago. Checking a signature is most of what authentication costs (an RS256 verification
//! is a 2048-bit modular exponentiation), and a gateway sends the same service token with thousands of requests, so
//! a token whose signature and claims passed is remembered, for at most [`HOLD`], with who it speaks for and its
//! validity window. A remembered token is still refused the moment it expires (`exp`, with the leeway) or before it
//! is valid (`nbf`); only tokens that passed every check are remembered, so a bad token is verified (and refused)
//! every time. A token from a JWKS key is remembered with its key id, and taken on trust only while the set
//! creditflow last fetched still publishes that key, so a rotation that retires a key retires its tokens at once.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Principal;

/// Longest a verified token is taken on trust before its signature is checked again.
pub(crate) const HOLD: Duration = Duration::from_secs(60);
/// Most tokens remembered; past it, stale ones are dropped, and if none is, all are.
const CAPACITY: usize = 10_000;

struct Remembered {
    principal: Principal,
    kid: Option<String>,
    not_before: Option<i64>,
    expires: i64,
    verified_at: Instant,
}

/// Tokens that passed verification recently (see the module's documentation).
pub(crate) struct Verified {
    hold: Duration,
    tokens: Mutex<HashMap<String, Remembered>>,
}

impl Verified {
    pub(crate) fn new(hold: Duration) -> Self {
        Self { hold, tokens: Mutex::new(HashMap::new()) }
    }

    /// Who `token` speaks for and the id of the key that signed it, if it was verified within the hold and is valid
    /// at `now` (Unix seconds, `leeway` seconds of clock skew either way, as verification allows).
    pub(crate) fn get(&self, token: &str, now: i64, leeway: i64) -> Option<(Principal, Option<String>)> {
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        let remembered = tokens.get(token)?;
        let valid = remembered.verified_at.elapsed() < self.hold
            && remembered.expires >= now.saturating_sub(leeway)
            && remembered.not_before.is_none_or(|nbf| nbf <= now.saturating_add(leeway));
        valid.then(|| (remembered.principal.clone(), remembered.kid.clone()))
    }

    /// Remembers a token that has just passed every check.
    pub(crate) fn remember(
        &self,
        token: &str,
        (principal, kid): (&Principal, Option<&str>),
        not_before: Option<i64>,
        expires: i64,
    ) {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if tokens.len() >= CAPACITY {
            let hold = self.hold;
            tokens.retain(|_, remembered| remembered.verified_at.elapsed() < hold);
            if tokens.len() >= CAPACITY {
                tokens.clear();
            }
        }
        let remembered = Remembered {
            principal: principal.clone(),
            kid: kid.map(str::to_owned),
            not_before,
            expires,
            verified_at: Instant::now(),
        };
        tokens.insert(token.to_owned(), remembered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn principal() -> Principal {
        Principal { subject: "gateway".into(), roles: [Role::Service].into() }
    }

    #[test]
    fn a_remembered_token_holds_only_within_its_window() {
        let verified = Verified::new(HOLD);
        let now = 1_000_000;
        assert_eq!(verified.get("t", now, 30), None, "nothing is remembered before it is verified");
        verified.remember("t", (&principal(), Some("k1")), Some(now - 10), now + 100);
        assert_eq!(verified.get("t", now, 30), Some((principal(), Some("k1".to_owned()))));
        assert_eq!(
            verified.get("t", now + 130, 30),
            Some((principal(), Some("k1".to_owned()))),
            "expiry has the leeway"
        );
        assert_eq!(verified.get("t", now + 131, 30), None, "expired");
        assert_eq!(
            verified.get("t", now - 40, 30),
            Some((principal(), Some("k1".to_owned()))),
            "not-before has the leeway"
        );
        assert_eq!(verified.get("t", now - 41, 30), None, "not valid yet");
        assert_eq!(verified.get("other", now, 30), None);
    }

    #[test]
    fn a_token_is_verified_again_after_the_hold() {
        let verified = Verified::new(Duration::ZERO);
        verified.remember("t", (&principal(), None), None, i64::MAX);
        assert_eq!(verified.get("t", 0, 30), None);
    }

    #[test]
    fn a_full_memory_drops_what_is_stale_first() {
        let verified = Verified::new(HOLD);
        for n in 0..CAPACITY + 5 {
            verified.remember(&format!("t{n}"), (&principal(), None), None, i64::MAX);
        }
        let remembered = verified.tokens.lock().expect("lock").len();
        assert!(remembered <= CAPACITY, "{remembered}");
        assert_eq!(verified.get(&format!("t{}", CAPACITY + 4), 0, 30), Some((principal(), None)), "the newest is kept");
    }
}
