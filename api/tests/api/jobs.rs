//! Operators' queue API: counts per queue and state, dead jobs listed with attempts and last error, one job shown,
//! retry (back through the outbox) and discard with audit records, roles enforced, job gauges in /metrics.

use creditflow_store::{Attempt, AttemptEnd, QueuedJob};
use creditflow_testkit::TestBackend;
use serde_json::json;

use crate::helpers::{TestApp, status_and_json};

async fn record(app: &TestApp, id: &str, queue: &str, end: Option<AttemptEnd<'_>>) {
    let job = QueuedJob { id: id.to_owned(), queue: queue.to_owned(), payload: json!({"eventId": id}).to_string() };
    assert_eq!(app.store.start_job_attempt(&job).await.expect("start"), Attempt::Run(1));
    if let Some(end) = end {
        app.store.end_job_attempt(id, 1, end).await.expect("end");
    }
}

async fn post(app: &TestApp, path: &str, token: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let response = app.client.post(app.url(path)).bearer_auth(token).json(body).send().await.expect("answered");
    status_and_json(response).await
}

async fn operators_see_and_repair_jobs(backend: TestBackend) {
    let app = TestApp::on(backend).await;
    record(&app, "stripe_events:evt_dead", "stripe_events", Some(AttemptEnd::Dead("no account in metadata"))).await;
    record(&app, "stripe_events:evt_ok", "stripe_events", Some(AttemptEnd::Done)).await;
    record(&app, "webhooks:ops:evt_1", "webhooks", Some(AttemptEnd::Retrying("endpoint answered 500"))).await;
    record(&app, "emails:low_balance:ent_1", "emails", None).await;
    let admin = TestApp::token("ops", "admin");
    let finance = TestApp::token("fin", "finance");

    let (status, body) = status_and_json(app.get("/api/admin/queues", &finance).await).await;
    assert_eq!(status, 200, "{body}");
    let queues = body["queues"].as_array().expect("list");
    let names: Vec<&str> = queues.iter().filter_map(|q| q["queue"].as_str()).collect();
    let expected = ["stripe_events", "usage_batches", "autoreloads", "emails", "webhooks", "scheduled", "reports"];
    assert_eq!(names, expected, "every queue, empty ones too");
    assert_eq!(
        queues[0],
        json!({"queue": "stripe_events", "pending": 0, "running": 0, "retrying": 0, "dead": 1, "done": 1, "discarded": 0})
    );
    assert_eq!((queues[3]["running"].as_i64(), queues[4]["retrying"].as_i64()), (Some(1), Some(1)));

    // Failed jobs by default: retrying and dead, newest change first.
    let (status, body) = status_and_json(app.get("/api/admin/jobs", &finance).await).await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["jobs"].as_array().expect("list").iter().filter_map(|j| j["id"].as_str()).collect();
    assert_eq!(ids, ["webhooks:ops:evt_1", "stripe_events:evt_dead"]);
    let (_, body) = status_and_json(app.get("/api/admin/jobs?queue=stripe_events&state=dead", &admin).await).await;
    let dead = &body["jobs"][0];
    assert_eq!((dead["attempts"].as_i64(), dead["lastError"].as_str()), (Some(1), Some("no account in metadata")));
    let (status, body) = status_and_json(app.get("/api/admin/jobs?state=stuck", &admin).await).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")), "{body}");
    let (status, _) = status_and_json(app.get("/api/admin/jobs?queue=nope", &admin).await).await;
    assert_eq!(status, 422);

    let (status, job) = status_and_json(app.get("/api/admin/jobs/stripe_events:evt_dead", &admin).await).await;
    assert_eq!((status, job["state"].as_str(), job["queue"].as_str()), (200, Some("dead"), Some("stripe_events")));
    assert_eq!(job["payload"], json!({"eventId": "stripe_events:evt_dead"}).to_string());
    let (status, _) = status_and_json(app.get("/api/admin/jobs/stripe_events:evt_none", &admin).await).await;
    assert_eq!(status, 404);

    // Retry: admin only; back to pending with attempts reset, its payload in the outbox for the relay.
    let (status, _) = post(&app, "/api/admin/jobs/stripe_events:evt_dead/retry", &finance, &json!({})).await;
    assert_eq!(status, 403);
    let (status, job) = post(&app, "/api/admin/jobs/stripe_events:evt_dead/retry", &admin, &json!({})).await;
    assert_eq!((status, job["state"].as_str(), job["attempts"].as_i64()), (200, Some("pending"), Some(0)), "{job}");
    let outbox = app.store.unrelayed_outbox(10).await.expect("outbox");
    assert!(outbox.iter().any(|m| m.queue == "stripe_events" && m.payload.contains("evt_dead")), "{outbox:?}");
    let (status, body) = post(&app, "/api/admin/jobs/stripe_events:evt_ok/retry", &admin, &json!({})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("job_state")), "{body}");

    // Discard needs a reason; a worker handed the job later skips it.
    let path = "/api/admin/jobs/webhooks:ops:evt_1/discard";
    let (status, _) = post(&app, path, &admin, &json!({})).await;
    assert_eq!(status, 400, "the reason is required");
    let (status, job) = post(&app, path, &admin, &json!({"reason": "endpoint retired"})).await;
    assert_eq!((status, job["state"].as_str()), (200, Some("discarded")), "{job}");
    let again = QueuedJob { id: "webhooks:ops:evt_1".into(), queue: "webhooks".into(), payload: "{}".into() };
    assert_eq!(
        app.store.start_job_attempt(&again).await.expect("start"),
        Attempt::Skip(creditflow_store::JobState::Discarded)
    );
    let audit = app.store.audit_log(None, 10).await.expect("audit");
    let actions: Vec<(&str, &str, &str)> =
        audit.iter().map(|r| (r.actor.as_str(), r.action.as_str(), r.subject.as_str())).collect();
    assert!(actions.contains(&("ops", "job.retry", "stripe_events:evt_dead")), "{actions:?}");
    assert!(actions.contains(&("ops", "job.discard", "webhooks:ops:evt_1")), "{actions:?}");

    // Records of jobs done long ago are pruned; the others stay.
    let future = time::OffsetDateTime::now_utc() + time::Duration::DAY;
    assert_eq!(app.store.prune_done_jobs(future).await.expect("pruned"), 1, "the one done job");
    assert!(app.store.job("stripe_events:evt_ok").await.expect("read").is_none());
    assert!(app.store.job("stripe_events:evt_dead").await.expect("read").is_some());

    let customer = TestApp::token("alice", "customer");
    let (status, _) = status_and_json(app.get("/api/admin/queues", &customer).await).await;
    assert_eq!(status, 403);

    let metrics = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains(r#"billing_jobs{queue="stripe_events",state="done"} 0"#), "{metrics}");
    assert!(metrics.contains(r#"billing_jobs{queue="webhooks",state="discarded"} 1"#), "{metrics}");
    assert!(metrics.contains("billing_anomalies_last_24h 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_sqlite() {
    operators_see_and_repair_jobs(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_postgres() {
    operators_see_and_repair_jobs(TestBackend::Postgres).await;
}
