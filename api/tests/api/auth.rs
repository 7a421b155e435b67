//! Authentication: every bad token gets the same 401; good tokens work with PEM and JWKS keys of each algorithm; a
//! JWKS key rotation is picked up without a restart; customers stay in their own account.

use base64::Engine as _;
use creditflow_testkit::TestBackend;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::helpers::{Auth, Claims, JwksServer, TestApp, TestKey, now, status_and_json};

/// Status, body and `WWW-Authenticate` of a balance request with `token`.
async fn attempt(app: &TestApp, token: Option<&str>) -> (u16, String, String) {
    let mut request = app.client.get(app.url("/api/balance"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap_or("").to_owned());
    (status, response.text().await.expect("body"), challenge.unwrap_or_default())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn every_bad_token_gets_the_identical_401() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    let good = Claims::new("alice", "customer");
    let (status, _, _) = attempt(&app, Some(&good.sign(TestKey::Rsa1, None))).await;
    assert_eq!(status, 200, "the good token is accepted");

    let payload = b64(serde_json::to_string(&good).expect("json").as_bytes());
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    // HS256 signed with the public key's PEM as the secret: the classic algorithm confusion.
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(&TestKey::Rsa1.public_pem()),
    )
    .expect("sign");
    let with = |change: &dyn Fn(&mut Claims)| {
        let mut claims = good.clone();
        change(&mut claims);
        claims.sign(TestKey::Rsa1, None)
    };
    let bad_tokens: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("garbage", Some("not-a-token".into())),
        ("expired", Some(with(&|c| c.exp = now() - 120))),
        ("not yet valid", Some(with(&|c| c.nbf = now() + 600))),
        ("wrong issuer", Some(with(&|c| c.iss = "https://evil.test/".into()))),
        ("wrong audience", Some(with(&|c| c.aud = "someone-else".into()))),
        ("no subject", Some(with(&|c| c.sub = String::new()))),
        ("no known role", Some(with(&|c| c.role = serde_json::json!("superuser")))),
        ("bad signature", Some(good.sign(TestKey::Rsa2, None))),
        ("ES256 where RS256 is configured", Some(good.sign(TestKey::Ec1, None))),
        ("alg=none", Some(alg_none)),
        ("HS256 with the public key", Some(hs256)),
        ("kid pointing elsewhere", Some(good.sign(TestKey::Rsa2, Some("https://evil.test/jwks.json#key")))),
        (
            "truncated",
            Some({
                let token = good.sign(TestKey::Rsa1, None);
                token[..token.len() - 12].to_owned()
            }),
        ),
        (
            "signature dropped",
            Some({
                let token = good.sign(TestKey::Rsa1, None);
                format!("{}.", &token[..token.rfind('.').expect("three parts")])
            }),
        ),
        ("huge", Some(format!("{}.{}.{}", b64(br#"{"alg":"RS256"}"#), "A".repeat(16 * 1024), "A".repeat(512)))),
        (
            "tampered payload",
            Some({
                let token = good.sign(TestKey::Rsa1, None);
                let parts: Vec<&str> = token.split('.').collect();
                let forged = b64(serde_json::to_string(&Claims::new("mallory", "admin")).expect("json").as_bytes());
                format!("{}.{forged}.{}", parts[0], parts[2])
            }),
        ),
    ];
    let mut answers = Vec::new();
    for (case, token) in &bad_tokens {
        let answer = attempt(&app, token.as_deref()).await;
        assert_eq!(answer.0, 401, "{case}");
        answers.push((case, answer));
    }
    let first = &answers[0].1;
    assert_eq!(first.1, r#"{"code":"unauthorized","message":"missing or invalid credentials"}"#);
    assert_eq!(first.2, "Bearer");
    for (case, answer) in &answers {
        assert_eq!(answer, first, "{case} must be indistinguishable from the others");
    }
}

#[tokio::test]
async fn pem_keys_of_each_algorithm_verify_their_tokens() {
    for key in [TestKey::Rsa1, TestKey::Ec1, TestKey::Ed1] {
        let app = TestApp::spawn(TestBackend::Sqlite, Auth::Pem(key)).await;
        let token = Claims::new("alice", "customer").sign(key, None);
        assert_eq!(attempt(&app, Some(&token)).await.0, 200, "{key:?}");
        let other = if matches!(key, TestKey::Rsa1) { TestKey::Rsa2 } else { TestKey::Rsa1 };
        assert_eq!(attempt(&app, Some(&Claims::new("alice", "customer").sign(other, None))).await.0, 401);
    }
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_without_a_restart() {
    let jwks =
        JwksServer::start(vec![TestKey::Rsa1.jwk("k1"), TestKey::Ec1.jwk("k-ec"), TestKey::Ed1.jwk("k-ed")]).await;
    let auth = Auth::Jwks { url: jwks.url.clone(), min_refresh_seconds: 0 };
    let app = TestApp::spawn(TestBackend::Sqlite, auth).await;
    let claims = Claims::new("alice", "customer");
    for (key, kid) in [(TestKey::Rsa1, "k1"), (TestKey::Ec1, "k-ec"), (TestKey::Ed1, "k-ed")] {
        assert_eq!(attempt(&app, Some(&claims.sign(key, Some(kid)))).await.0, 200, "{kid}");
    }
    // A key id the set does not hold yet, and a known id used with another key's signature.
    let rotated = claims.sign(TestKey::Rsa2, Some("k2"));
    assert_eq!(attempt(&app, Some(&rotated)).await.0, 401);
    assert_eq!(attempt(&app, Some(&claims.sign(TestKey::Rsa2, Some("k1")))).await.0, 401);
    assert_eq!(attempt(&app, Some(&claims.sign(TestKey::Rsa1, None))).await.0, 401, "JWKS tokens need a kid");
    // The provider rotates: k2 is published, k1 retired. The app notices on the next unknown kid.
    jwks.set(vec![TestKey::Rsa2.jwk("k2")]).await;
    assert_eq!(attempt(&app, Some(&rotated)).await.0, 200);
    assert_eq!(attempt(&app, Some(&claims.sign(TestKey::Rsa1, Some("k1")))).await.0, 401, "k1 is retired");
}

#[tokio::test]
async fn unknown_key_ids_do_not_hammer_the_identity_provider() {
    let jwks = JwksServer::start(vec![TestKey::Rsa1.jwk("k1")]).await;
    let auth = Auth::Jwks { url: jwks.url.clone(), min_refresh_seconds: 300 };
    let app = TestApp::spawn(TestBackend::Sqlite, auth).await;
    let fetched_at_start = jwks.fetch_count();
    assert_eq!(fetched_at_start, 1, "the set is fetched once at start");
    for n in 0..20 {
        let token = Claims::new("alice", "customer").sign(TestKey::Rsa2, Some(&format!("made-up-{n}")));
        assert_eq!(attempt(&app, Some(&token)).await.0, 401);
    }
    assert_eq!(jwks.fetch_count(), fetched_at_start, "within the minimum refresh interval nothing is refetched");
    let good = Claims::new("alice", "customer").sign(TestKey::Rsa1, Some("k1"));
    assert_eq!(attempt(&app, Some(&good)).await.0, 200);
}

#[tokio::test]
async fn customers_see_only_their_own_account() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    app.fund("bob", 10_000).await;
    let alice = TestApp::token("alice", "customer");
    let (status, body) = status_and_json(app.get("/api/balance?accountId=bob", &alice).await).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, body) = status_and_json(app.get("/api/ledger?accountId=bob", &alice).await).await;
    assert_eq!(status, 403, "{body}");
    let debit_bob =
        serde_json::json!({"idempotencyKey": "k", "accountId": "bob", "model": "gpt-4o", "usage": {"input_tokens": 1}});
    let (status, _) = status_and_json(app.reconcile(&alice, &debit_bob).await).await;
    assert_eq!(status, 403);
    assert_eq!(app.balance("bob").await, 10_000, "bob was not debited");
    // Her own account works, named or not; finance reads anyone's; a service must name the account.
    let (status, body) = status_and_json(app.get("/api/balance", &alice).await).await;
    assert_eq!((status, body["accountId"].as_str()), (200, Some("alice")));
    let finance = TestApp::token("fin", "finance");
    let (status, body) = status_and_json(app.get("/api/balance?accountId=bob", &finance).await).await;
    assert_eq!((status, body["balanceMillicredits"].as_i64()), (200, Some(10_000)));
    let (status, _) = status_and_json(app.reconcile(&finance, &debit_bob).await).await;
    assert_eq!(status, 403, "finance changes nothing");
    let service = TestApp::token("gateway", "service");
    let (status, body) = status_and_json(app.get("/api/balance", &service).await).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")), "a service must name the account");
    let (status, body) = status_and_json(app.get("/api/balance?accountId=nobody", &service).await).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn an_identity_provider_outage_is_not_hammered() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let down = poem::endpoint::make(move |_| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            poem::http::StatusCode::SERVICE_UNAVAILABLE
        }
    });
    let url = format!("{}/jwks.json", crate::helpers::serve(down).await);
    let app = TestApp::spawn(TestBackend::Sqlite, Auth::Jwks { url, min_refresh_seconds: 300 }).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "one attempt at start");
    for n in 0..10 {
        let token = Claims::new("alice", "customer").sign(TestKey::Rsa1, Some(&format!("k{n}")));
        assert_eq!(attempt(&app, Some(&token)).await.0, 401);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "failed attempts count towards the minimum refresh interval too");
}
