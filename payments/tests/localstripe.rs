//! The Stripe calls against localstripe (a fake Stripe, started by `scripts/test`): customers once per account,
//! PaymentIntents with client secrets, off-session charges that never charge twice for one key, declines and
//! missing cards told apart, charges listed across pages, and an unreachable Stripe reported as transient.

use std::collections::HashMap;

use creditflow_payments::{OffSessionCharge, PaymentError, Stripe};
use creditflow_testkit::stripe_url;

const KEY: &str = "sk_test_creditflow";

fn stripe() -> Stripe {
    Stripe::new(KEY, Some(&stripe_url())).expect("client")
}

/// Attaches one of Stripe's test cards (`pm_card_visa`, `pm_card_chargeCustomerFail`) to `customer`.
async fn attach(card: &str, customer: &str) {
    let url = format!("{}/v1/payment_methods/{card}/attach", stripe_url());
    let response = reqwest::Client::new()
        .post(url)
        .basic_auth(KEY, Some(""))
        .form(&[("customer", customer)])
        .send()
        .await
        .unwrap_or_else(|error| panic!("localstripe at {} answers ({error}); run scripts/test", stripe_url()));
    assert!(response.status().is_success(), "attach {card}: {}", response.text().await.unwrap_or_default());
}

fn metadata(account: &str) -> HashMap<String, String> {
    HashMap::from([("creditflow_account_id".to_owned(), account.to_owned())])
}

#[tokio::test]
async fn customers_intents_and_off_session_charges() {
    let stripe = stripe();
    let account = format!("acct_{}", uuid::Uuid::new_v4().simple());
    let customer = stripe.create_customer(&account, Some("alice@example.com")).await.expect("customer");
    assert!(customer.starts_with("cus_"), "{customer}");
    let again = stripe.create_customer(&account, Some("alice@example.com")).await.expect("customer again");
    assert_eq!(again, customer, "one customer per account, whatever the retries");

    let intent = stripe.create_payment_intent(&customer, 500, metadata(&account), &format!("{account}-p1")).await;
    let intent = intent.expect("intent");
    assert!(intent.id.starts_with("pi_") && intent.client_secret.contains("_secret_"), "{intent:?}");

    // No card yet: told apart from a decline.
    let none = stripe.charge_off_session(&customer, 700, metadata(&account), &format!("{account}-r0")).await;
    assert!(matches!(none, Err(PaymentError::NoPaymentMethod)), "{none:?}");

    attach("pm_card_visa", &customer).await;
    let key = format!("{account}-r1");
    let charged = stripe.charge_off_session(&customer, 700, metadata(&account), &key).await.expect("charged");
    let OffSessionCharge::Succeeded(paid) = charged.clone() else { panic!("a card payment succeeds at once") };
    let replay = stripe.charge_off_session(&customer, 700, metadata(&account), &key).await.expect("replayed");
    assert_eq!(replay, charged, "the same key never charges twice");
    let other = stripe.charge_off_session(&customer, 900, metadata(&account), &key).await;
    assert!(matches!(other, Err(PaymentError::KeyReused)), "the key with another amount: {other:?}");

    let now = time_now();
    let listed = stripe.charges_between(now - 600, now + 60).await.expect("charges");
    let ours: Vec<_> = listed.iter().filter(|c| c.payment_intent.as_deref() == Some(paid.as_str())).collect();
    assert_eq!(ours.len(), 1, "one charge for the off-session payment");
    assert_eq!((ours[0].amount, ours[0].currency.as_str(), ours[0].paid), (700, "usd", true));
}

#[tokio::test]
async fn a_declined_card_is_a_decline_and_an_unreachable_stripe_is_transient() {
    let stripe = stripe();
    let account = format!("acct_{}", uuid::Uuid::new_v4().simple());
    let customer = stripe.create_customer(&account, None).await.expect("customer");
    attach("pm_card_chargeCustomerFail", &customer).await;
    let declined = stripe.charge_off_session(&customer, 500, metadata(&account), &format!("{account}-d")).await;
    match declined {
        Err(error @ PaymentError::Declined { .. }) => assert!(!error.is_transient()),
        other => panic!("a decline: {other:?}"),
    }
    let nowhere = Stripe::new(KEY, Some("http://127.0.0.1:9")).expect("client");
    let error = nowhere.create_customer(&account, None).await.expect_err("nothing listens there");
    assert!(error.is_transient(), "{error:?}");
}

fn time_now() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs())
        .expect("fits")
}
