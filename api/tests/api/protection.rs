//! Protection: the 101st request in a minute from one subject gets 429 with Retry-After (in memory and through
//! Redis, where API processes share one budget); other subjects are unaffected; CORS only for allowed origins;
//! security headers everywhere.

use creditflow_api::{RateLimiter, Verdict};
use creditflow_testkit::{TestBackend, redis_url};

use crate::helpers::{Auth, TestApp, TestKey};

async fn redis_limiter() -> RateLimiter {
    let url = redis_url();
    RateLimiter::redis(&url, 100).await.unwrap_or_else(|error| {
        panic!("cannot reach the test Redis at {url} ({error}); run scripts/test, which starts it")
    })
}

/// Sends `count` balance requests as `subject` to `app`, returning the statuses.
async fn burst(app: &TestApp, subject: &str, count: usize) -> Vec<u16> {
    let token = TestApp::token(subject, "customer");
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        statuses.push(app.get("/api/balance", &token).await.status().as_u16());
    }
    statuses
}

async fn the_101st_request_is_limited(app: &TestApp, subject: &str) {
    let statuses = burst(app, subject, 100).await;
    assert!(statuses.iter().all(|status| *status == 200), "the first 100 pass: {statuses:?}");
    let response = app.get("/api/balance", &TestApp::token(subject, "customer")).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["code"], "rate_limited");
    let other = format!("{subject}-other");
    assert_eq!(burst(app, &other, 5).await, [200; 5], "another subject is unaffected");
}

#[tokio::test]
async fn the_in_process_limiter_stops_the_101st_request() {
    let app = TestApp::spawn_limited(TestBackend::Sqlite, Auth::Pem(TestKey::Rsa1), RateLimiter::in_memory(100)).await;
    the_101st_request_is_limited(&app, "memory-subject").await;
}

#[tokio::test]
async fn the_redis_limiter_stops_the_101st_request_across_processes() {
    let first = TestApp::spawn_limited(TestBackend::Sqlite, Auth::Pem(TestKey::Rsa1), redis_limiter().await).await;
    let subject = format!("redis-{}", uuid::Uuid::new_v4().simple());
    the_101st_request_is_limited(&first, &subject).await;
    // A second API process on the same Redis shares the budget: 60 here and 40 there use it up.
    let second = TestApp::spawn_limited(TestBackend::Sqlite, Auth::Pem(TestKey::Rsa1), redis_limiter().await).await;
    let shared = format!("shared-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(burst(&first, &shared, 60).await, [200; 60]);
    assert_eq!(burst(&second, &shared, 40).await, [200; 40]);
    assert_eq!(burst(&second, &shared, 1).await, [429], "the 101st, on the other process");
}

/// The theoretical arrival time Redis holds for `subject`, in microseconds (0 when it holds none).
async fn redis_arrival(subject: &str) -> u64 {
    let client = redis::Client::open(redis_url()).expect("url");
    let mut connection = client.get_multiplexed_async_connection().await.expect("redis");
    let value: Option<u64> = redis::cmd("GET")
        .arg(format!("creditflow:ratelimit:{subject}"))
        .query_async(&mut connection)
        .await
        .expect("get");
    value.unwrap_or_default()
}

#[tokio::test]
async fn a_high_limit_takes_the_budget_from_redis_in_slices_that_never_overspend_it() {
    // 30,000 a minute: one request every 2 ms, slices of 300 (1% of the limit), a burst of up to the whole minute.
    let limiter = || async { RateLimiter::redis(&redis_url(), 30_000).await.expect("redis") };
    let (first, second) = (limiter().await, limiter().await);
    let subject = format!("sliced-{}", uuid::Uuid::new_v4().simple());
    let started = std::time::Instant::now();
    assert_eq!(first.check(&subject).await, Verdict::Allowed);
    let charged = redis_arrival(&subject).await;
    for n in 1..300 {
        assert_eq!(first.check(&subject).await, Verdict::Allowed, "request {n} of the slice");
    }
    assert_eq!(redis_arrival(&subject).await, charged, "the slice's 300 requests cost one call to Redis");
    assert_eq!(first.check(&subject).await, Verdict::Allowed);
    assert!(redis_arrival(&subject).await > charged, "the 301st takes a new slice");
    // Two processes spending one budget: together never more than the minute's 30,000 (301 of them used above) plus
    // what the budget earned back meanwhile (one every 2 ms), and each leaves at most one slice unspent.
    let mut allowed: u128 = 301;
    loop {
        let (a, b) = (first.check(&subject).await, second.check(&subject).await);
        allowed += u128::from(a == Verdict::Allowed) + u128::from(b == Verdict::Allowed);
        let earned = started.elapsed().as_millis() / 2 + 1;
        assert!(allowed <= 30_000 + earned, "the shared budget was overspent: {allowed} ({earned} earned back)");
        if a != Verdict::Allowed && b != Verdict::Allowed {
            break;
        }
    }
    assert!(allowed >= 30_000 - 2 * 300, "at most a slice per process unspent: {allowed}");
}

#[tokio::test]
async fn cors_answers_allowed_origins_only_and_headers_are_set() {
    let app = TestApp::on(TestBackend::Sqlite).await;
    let token = TestApp::token("alice", "customer");
    let ask = |origin: &'static str| {
        app.client.get(app.url("/api/balance")).bearer_auth(&token).header("origin", origin).send()
    };
    let allowed = ask("https://app.example.com").await.expect("answered");
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example.com");
    assert!(allowed.headers()["access-control-expose-headers"].to_str().expect("ascii").contains("x-request-id"));
    let refused = ask("https://evil.example.com").await.expect("answered");
    assert_eq!(refused.status(), 200, "the request itself is served; the browser withholds it");
    assert!(!refused.headers().contains_key("access-control-allow-origin"), "no CORS headers for other origins");

    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/usage/reconcile"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let ok = preflight("https://app.example.com").await.expect("answered");
    assert_eq!(ok.status(), 204);
    assert!(ok.headers()["access-control-allow-methods"].to_str().expect("ascii").contains("POST"));
    assert!(ok.headers()["access-control-allow-headers"].to_str().expect("ascii").contains("authorization"));
    let denied = preflight("https://evil.example.com").await.expect("answered");
    assert!(!denied.headers().contains_key("access-control-allow-origin"));

    for response in [allowed, refused] {
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["cache-control"], "no-store");
        assert!(headers["content-security-policy"].to_str().expect("ascii").contains("default-src 'none'"));
    }
}
