//! The API's probes and error bodies, served in-process on both backends.

use creditflow_api::{AppState, app};
use creditflow_domain::RateCard;
use creditflow_store::{NewAuditRecord, Store};
use creditflow_testkit::{TestBackend, TestDatabase};
use poem::http::StatusCode;
use poem::test::TestClient;
use time::OffsetDateTime;

async fn store_on(backend: TestBackend) -> (Store, TestDatabase) {
    let database = TestDatabase::new(backend).await;
    let store = Store::connect(&database.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    (store, database)
}

async fn activate_a_card(store: &Store) {
    let document = "version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = 1\n";
    let card = RateCard::from_toml(document).expect("card");
    store.add_rate_card(&card, document).await.expect("add");
    let audit = NewAuditRecord {
        actor: "test".into(),
        action: "rate_card.activate".into(),
        subject: "v1".into(),
        reason: None,
        details: "{}".into(),
    };
    store.activate_rate_card(card.version(), OffsetDateTime::now_utc(), &audit).await.expect("activate");
}

async fn probes_on(backend: TestBackend) {
    let (store, _database) = store_on(backend).await;
    let client = TestClient::new(app(AppState { store: store.clone() }));

    let health = client.get("/health").send().await;
    health.assert_status_is_ok();
    health.assert_json(serde_json::json!({"status": "ok"})).await;

    // Migrated but no active rate card: not ready, and the body says which check failed.
    let readyz = client.get("/readyz").send().await;
    readyz.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    let expected = serde_json::json!({
        "status": "unavailable",
        "backend": store.backend().as_str(),
        "checks": {"database": "ok", "rateCard": "missing"}
    });
    readyz.assert_json(expected).await;

    activate_a_card(&store).await;
    let readyz = client.get("/readyz").send().await;
    readyz.assert_status_is_ok();
    let expected = serde_json::json!({
        "status": "ready",
        "backend": store.backend().as_str(),
        "checks": {"database": "ok", "rateCard": "v1"}
    });
    readyz.assert_json(expected).await;

    // The database going away makes the service unready without leaking the error.
    store.close().await;
    let readyz = client.get("/readyz").send().await;
    readyz.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    let body = readyz.0.into_body().into_string().await.expect("body");
    assert!(body.contains("\"database\":\"unreachable\""), "{body}");
    assert!(!body.to_lowercase().contains("pool"), "no internals in {body}");
}

#[tokio::test]
async fn probes_on_sqlite() {
    probes_on(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn probes_on_postgres() {
    probes_on(TestBackend::Postgres).await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let (store, _database) = store_on(TestBackend::Sqlite).await;
    let client = TestClient::new(app(AppState { store }));
    let missing = client.get("/no/such/route").send().await;
    missing.assert_status(StatusCode::NOT_FOUND);
    missing.assert_json(serde_json::json!({"code": "not_found", "message": "no such route"})).await;
    let wrong_method = client.post("/health").send().await;
    wrong_method.assert_status(StatusCode::METHOD_NOT_ALLOWED);
    wrong_method.assert_content_type("application/json; charset=utf-8");
}
