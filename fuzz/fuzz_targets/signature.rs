//! Any `Stripe-Signature`-style header, body, secret and clock is verified or refused, never a panic; and whatever
//! the body and secret, a header signed now verifies now.
#![no_main]

use creditflow_domain::signature::{sign, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &[u8], &str, i64, i64)| {
    let (header, body, secret, now, tolerance) = input;
    let _ = verify(header, body, secret, now, tolerance);
    let signed = sign(body, secret, now);
    assert_eq!(verify(&signed, body, secret, now, 0), Ok(()), "{signed}");
});
