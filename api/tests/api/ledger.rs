//! Reading the ledger: stable cursor pages with correlation ids and rate versions, and the CSV export streamed
//! with flat memory, its rows matching the ledger.

use creditflow_testkit::TestBackend;
use serde_json::json;

use crate::helpers::{TestApp, status_and_json};

#[tokio::test]
async fn ledger_pages_are_stable_under_concurrent_inserts() {
    let app = TestApp::on(TestBackend::Postgres).await;
    app.fund("pat", 100_000).await;
    let token = TestApp::token("pat", "customer");
    for n in 0..7 {
        let body = json!({"idempotencyKey": format!("k{n}"), "correlationId": format!("c{n}"), "model": "gpt-4o", "usage": {"input_tokens": 400}});
        assert_eq!(app.reconcile(&token, &body).await.status(), 200);
    }
    let (status, page) = status_and_json(app.get("/api/ledger?limit=3", &token).await).await;
    assert_eq!(status, 200, "{page}");
    let lines = page["entries"].as_array().expect("entries");
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["sequence"], 8, "newest first");
    assert_eq!((lines[0]["kind"].as_str(), lines[0]["correlationId"].as_str()), (Some("usage_debit"), Some("c6")));
    assert_eq!((lines[0]["rateVersion"].as_str(), lines[0]["amountCredits"].as_str()), (Some("v1"), Some("-1.000")));
    // New debits land while the reader pages on; the pages already promised do not move.
    for n in 7..9 {
        let body = json!({"idempotencyKey": format!("k{n}"), "model": "gpt-4o", "usage": {"input_tokens": 400}});
        assert_eq!(app.reconcile(&token, &body).await.status(), 200);
    }
    let mut sequences: Vec<i64> = lines.iter().map(|line| line["sequence"].as_i64().expect("seq")).collect();
    let mut cursor = page["nextCursor"].as_str().map(str::to_owned);
    while let Some(next) = cursor {
        let (_, page) = status_and_json(app.get(&format!("/api/ledger?limit=3&cursor={next}"), &token).await).await;
        sequences
            .extend(page["entries"].as_array().expect("entries").iter().map(|l| l["sequence"].as_i64().expect("seq")));
        cursor = page["nextCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(sequences, (1..=8).rev().collect::<Vec<_>>(), "every line once, none skipped");
    let (_, first_line) = status_and_json(app.get("/api/ledger?limit=1&cursor=2", &token).await).await;
    assert_eq!(first_line["entries"][0]["kind"], "purchase_credit", "credits appear beside debits");
    for bad in ["/api/ledger?limit=0", "/api/ledger?limit=501"] {
        assert_eq!(app.get(bad, &token).await.status(), 422, "{bad}");
    }
    assert_eq!(app.get("/api/ledger?cursor=abc", &token).await.status(), 400);
}

/// Appends `count` adjustments of -1 millicredit with 100-character correlation ids to `account`, in one statement
/// (test setup: 100,000 postings through the API would take minutes). The database's chain trigger still checks
/// every row.
fn bulk_insert_sql(postgres: bool, account: &str, count: i64) -> String {
    let padding = "x".repeat(90);
    if postgres {
        format!(
            "INSERT INTO ledger_entries (id, account_id, sequence, kind, amount_millicredits, balance_after_millicredits, \
             idempotency_key, correlation_id, reason, created_at) \
             SELECT 'ent_bulk' || n, '{account}', n + 1, 'adjustment', -1, {count} * 10 - n, 'bulk' || n, \
             'corr-' || lpad(n::text, 6, '0') || '{padding}', 'load test', now() \
             FROM generate_series(1, {count}) AS n ORDER BY n"
        )
    } else {
        format!(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) \
             INSERT INTO ledger_entries (id, account_id, sequence, kind, amount_millicredits, balance_after_millicredits, \
             idempotency_key, correlation_id, reason, created_at) \
             SELECT 'ent_bulk' || n, '{account}', n + 1, 'adjustment', -1, {count} * 10 - n, 'bulk' || n, \
             'corr-' || printf('%06d', n) || '{padding}', 'load test', '2026-01-01T00:00:00.000000Z' FROM s"
        )
    }
}

fn resident_memory_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number")
}

async fn export_streams(backend: TestBackend) {
    const ROWS: i64 = 100_000;
    let app = TestApp::on(backend).await;
    app.fund("big", ROWS * 10).await;
    let postgres = backend == TestBackend::Postgres;
    let url = app.database.url.clone();
    let sql = bulk_insert_sql(postgres, "big", ROWS);
    let update = format!(
        "UPDATE accounts SET balance_millicredits = {}, last_sequence = {} WHERE id = 'big'",
        ROWS * 9,
        ROWS + 1
    );
    raw_execute(&url, &[sql, update]).await;
    assert_eq!(app.balance("big").await, ROWS * 9);

    let token = TestApp::token("big", "customer");
    let before_kib = resident_memory_kib();
    let mut response = app.get("/billing/ledger/export.csv", &token).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(response.headers()["content-disposition"], "attachment; filename=\"ledger-big.csv\"");
    let (mut pending, mut rows, mut bytes, mut peak_kib) = (Vec::<u8>::new(), 0_i64, 0_usize, before_kib);
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        bytes += chunk.len();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8(pending[..end].to_vec()).expect("utf-8");
            pending.drain(..end + 2);
            check_row(&line, rows);
            rows += 1;
        }
        peak_kib = peak_kib.max(resident_memory_kib());
    }
    assert!(pending.is_empty(), "the file ends with a full row");
    assert_eq!(rows, ROWS + 2, "header, the funding credit, and every bulk row");
    assert!(bytes > 15_000_000, "the export is large: {bytes} bytes");
    let growth_kib = peak_kib.saturating_sub(before_kib);
    assert!(growth_kib < 12 * 1024, "memory stays flat while {bytes} bytes stream: grew {growth_kib} KiB");
}

/// Row 0 is the header, row 1 the funding credit, row n + 1 the n-th bulk adjustment.
fn check_row(line: &str, index: i64) {
    let fields: Vec<&str> = line.split(',').collect();
    match index {
        0 => assert!(line.starts_with("\u{feff}id,sequence,created_at,kind,amount_credits"), "{line}"),
        1 => assert_eq!((fields[1], fields[3]), ("1", "purchase_credit"), "{line}"),
        n => {
            let expected_balance = 100_000 * 10 - (n - 1);
            assert_eq!(fields[1], n.to_string(), "{line}");
            assert_eq!((fields[3], fields[4], fields[6]), ("adjustment", "-0.001", "-1"), "{line}");
            assert_eq!(fields[7], expected_balance.to_string(), "{line}");
            assert!(fields[8].starts_with(&format!("corr-{:06}", n - 1)), "{line}");
            assert_eq!(fields[11], "load test");
        }
    }
}

async fn raw_execute(url: &str, statements: &[String]) {
    use sqlx::Connection as _;
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.expect("connect");
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&mut connection).await.expect("setup SQL");
        }
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.expect("connect");
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&mut connection).await.expect("setup SQL");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_export_of_100k_entries_streams_on_sqlite() {
    export_streams(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_export_of_100k_entries_streams_on_postgres() {
    export_streams(TestBackend::Postgres).await;
}
