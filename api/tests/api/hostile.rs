//! Hostile input gets a clean 4xx with a stable code and a JSON body, never a 5xx, and moves no money: oversized and
//! non-UTF-8 bodies, numbers past every integer type, negative and fractional usage, unknown models, SQL-ish and
//! control-character strings, deep nesting, and paths built to escape their route.

use std::fmt::Write as _;

use creditflow_testkit::TestBackend;
use serde_json::json;

use crate::helpers::{TestApp, status_and_json};

const SQLISH: &str = "x'; DROP TABLE ledger_entries; --";

/// Posts `body` (raw bytes, declared JSON) and returns the status and the parsed JSON answer.
async fn post_raw(app: &TestApp, path: &str, token: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let answer = serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON body for {status}: {text}"));
    (status, answer)
}

/// Posts `size` bytes of blanks with `Transfer-Encoding: chunked` (no declared length) over a raw connection, and
/// returns the answer's status and JSON body. Writes may fail once the server has answered and closed.
async fn post_chunked(app: &TestApp, path: &str, token: &str, size: usize) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = app.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut sent = stream.write_all(head.as_bytes()).await;
    let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
    for _ in 0..size / 0x10000 {
        if sent.is_err() {
            break;
        }
        sent = stream.write_all(chunk.as_bytes()).await;
    }
    if sent.is_ok() {
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    // The body may itself be chunked: take the JSON object inside.
    let json = body.find('{').zip(body.rfind('}')).map_or("", |(from, to)| &body[from..=to]);
    (status, serde_json::from_str(json).unwrap_or_else(|_| panic!("a JSON body: {text}")))
}

async fn hostile_input_is_refused_cleanly(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    app.fund("alice", 10_000).await;
    let alice = TestApp::token("alice", "customer");
    let service = TestApp::token("gateway", "service");
    let usage = |units: serde_json::Value| json!({"idempotencyKey": "h-1", "model": "gpt-4o", "usage": units});
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a number past u64", usage(json!({"input_tokens": 1e30})).to_string().into_bytes()),
        (
            "a literal past u64",
            br#"{"idempotencyKey":"h-1","model":"gpt-4o","usage":{"input_tokens":184467440737095516150}}"#.to_vec(),
        ),
        ("u64::MAX tokens", usage(json!({"input_tokens": u64::MAX})).to_string().into_bytes()),
        ("negative usage", usage(json!({"input_tokens": -1})).to_string().into_bytes()),
        ("fractional usage", usage(json!({"input_tokens": 1.5})).to_string().into_bytes()),
        ("usage as text", usage(json!({"input_tokens": "12"})).to_string().into_bytes()),
        (
            "an unknown model",
            json!({"idempotencyKey": "h-1", "model": SQLISH, "usage": {"input_tokens": 1}}).to_string().into_bytes(),
        ),
        ("an SQL-ish unit", usage(json!({SQLISH: 1})).to_string().into_bytes()),
        (
            "an SQL-ish key",
            json!({"idempotencyKey": SQLISH, "model": "gpt-4o", "usage": {"input_tokens": 1}}).to_string().into_bytes(),
        ),
        (
            "a NUL in the key",
            json!({"idempotencyKey": "a\u{0}b", "model": "gpt-4o", "usage": {"input_tokens": 1}})
                .to_string()
                .into_bytes(),
        ),
        (
            "a 10,000-character key",
            json!({"idempotencyKey": "k".repeat(10_000), "model": "gpt-4o", "usage": {"input_tokens": 1}})
                .to_string()
                .into_bytes(),
        ),
        (
            "invalid UTF-8",
            b"{\"idempotencyKey\":\"\xff\xfe\",\"model\":\"gpt-4o\",\"usage\":{\"input_tokens\":1}}".to_vec(),
        ),
        ("not JSON", b"\x00\x01\x02".to_vec()),
        ("an empty body", Vec::new()),
        ("an array", b"[1,2,3]".to_vec()),
        ("deep nesting", format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()),
    ];
    for (case, body) in cases {
        let (status, answer) = post_raw(&app, "/api/usage/reconcile", &alice, body).await;
        assert!((400..500).contains(&status), "{case}: {status} {answer}");
        let code = answer["code"].as_str().unwrap_or_default();
        assert!(!code.is_empty() && code != "internal", "{case}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.contains("sqlx") && !m.contains("panicked")), "{case}");
    }
    // 2 MiB sent in chunks with no declared length: read up to the limit, then refused. (With a declared length the
    // 413 comes before the body is read, and the client sees the connection close mid-upload.)
    let (status, answer) = post_chunked(&app, "/api/usage/reconcile", &alice, 2 * 1024 * 1024).await;
    assert!((400..500).contains(&status), "2 MiB: {status} {answer}");
    // An escaped backslash before `u0000` is text, not a NUL.
    let body =
        json!({"idempotencyKey": "h-3", "model": "gpt-4o", "correlationId": "\\u0000", "usage": {"input_tokens": 1}});
    let (status, answer) = post_raw(&app, "/api/usage/reconcile", &alice, body.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    let charged = answer["chargeMillicredits"].as_i64().expect("charge");

    // A service acting on an account named like an attack, or past the id rules.
    for account in [SQLISH, "../../admin", "a%00b", &"a".repeat(1_000)] {
        let body =
            json!({"idempotencyKey": "h-2", "accountId": account, "model": "gpt-4o", "usage": {"input_tokens": 1}});
        let (status, answer) = post_raw(&app, "/api/usage/reconcile", &service, body.to_string().into_bytes()).await;
        assert!((400..500).contains(&status), "{account}: {status} {answer}");
        let encoded = account.bytes().fold(String::new(), |mut out, byte| {
            let _ = write!(out, "%{byte:02X}");
            out
        });
        let (status, answer) =
            status_and_json(app.get(&format!("/api/balance?accountId={encoded}"), &service).await).await;
        assert!((400..500).contains(&status), "{account}: {status} {answer}");
    }
    let (status, answer) = status_and_json(app.get("/api/admin/reports/..%2F..%2Fetc%2Fpasswd", &service).await).await;
    assert!((400..500).contains(&status), "{status} {answer}");
    let (status, answer) = status_and_json(app.get("/api/ledger?limit=99999999999999999999", &alice).await).await;
    assert!((400..500).contains(&status), "{status} {answer}");

    // Nothing moved but the one honest debit, and the ledger is still there.
    assert_eq!(app.balance("alice").await, 10_000 - charged);
    let (status, _) = status_and_json(app.get("/api/ledger", &alice).await).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_sqlite() {
    hostile_input_is_refused_cleanly(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_postgres() {
    hostile_input_is_refused_cleanly(TestBackend::Postgres).await;
}
