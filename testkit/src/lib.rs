//! Test support shared by creditflow's test suites: a fresh, empty database per test on either backend.
//!
//! PostgreSQL tests create a new database (`cf_test_<uuid>`) on the server named by `CREDITFLOW_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`); `scripts/test` drops leftovers before each run. A server
//! that cannot be reached fails the test with the reason: tests never skip.

use std::path::PathBuf;

use sqlx::{Connection, Executor, PgConnection};

/// The server tests create their PostgreSQL databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("CREDITFLOW_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The Redis tests use, from `CREDITFLOW_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("CREDITFLOW_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A fresh key prefix for one test's Redis keys (`cf-test-<uuid>`); `scripts/test` deletes leftovers.
pub fn redis_namespace() -> String {
    format!("cf-test-{}", uuid::Uuid::new_v4().simple())
}

/// The fake Stripe (localstripe, patched by `testkit/support/localstripe_launcher.py`) tests use, from
/// `CREDITFLOW_TEST_STRIPE_URL` (default `http://127.0.0.1:8420`); `scripts/test` starts it.
pub fn stripe_url() -> String {
    std::env::var("CREDITFLOW_TEST_STRIPE_URL").unwrap_or_else(|_| "http://127.0.0.1:8420".to_owned())
}

/// A localstripe of one test's own, on a free port, stopped when dropped: for tests that read everything a Stripe
/// account holds (the shared one started by `scripts/test` holds every other test's charges too). It runs the
/// Python of `CREDITFLOW_TEST_PYTHON` (`scripts/test` exports its venv's, where localstripe is installed).
#[derive(Debug)]
pub struct OwnLocalstripe {
    /// Its base URL.
    pub url: String,
    child: std::process::Child,
}

impl OwnLocalstripe {
    /// Starts one and waits until it answers. Panics with the reason when it cannot.
    pub fn start() -> Self {
        let python = std::env::var("CREDITFLOW_TEST_PYTHON").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
            format!("{home}/.cache/creditflow/venv/bin/python")
        });
        let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/support/localstripe_launcher.py");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port");
        let child = std::process::Command::new(&python)
            .arg(launcher)
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start localstripe with {python} ({error}); run scripts/test"));
        let mut own = Self { url: format!("http://127.0.0.1:{port}"), child };
        for _ in 0..120 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return own;
            }
            if let Ok(Some(status)) = own.child.try_wait() {
                panic!("localstripe ({python} {launcher}) exited with {status}; run scripts/test, which installs it");
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let _ = own.child.kill();
        panic!("localstripe did not answer on port {port} within 30 s");
    }
}

impl Drop for OwnLocalstripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which backend a test database is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestBackend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A new database on the test PostgreSQL server.
    Postgres,
}

/// An empty database that lives as long as this value (SQLite) or until `scripts/test` cleans up (PostgreSQL).
#[derive(Debug)]
pub struct TestDatabase {
    /// URL to connect creditflow to.
    pub url: String,
    /// The directory holding a SQLite file; removed on drop.
    pub dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// Creates an empty database on `backend`. Panics with the reason when the server cannot be reached.
    pub async fn new(backend: TestBackend) -> Self {
        match backend {
            TestBackend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory for a SQLite test database");
                let path: PathBuf = dir.path().join("creditflow.db");
                Self { url: format!("sqlite://{}", path.display()), dir: Some(dir) }
            }
            TestBackend::Postgres => Self { url: fresh_postgres_database().await, dir: None },
        }
    }
}

async fn fresh_postgres_database() -> String {
    let admin_url = postgres_admin_url();
    let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|error| {
        panic!("cannot reach the test PostgreSQL at {admin_url} ({error}); run scripts/test, which starts it")
    });
    let name = format!("cf_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap_or_else(|error| panic!("cannot create test database {name}: {error}"));
    let _ = admin.close().await;
    with_database(&admin_url, &name)
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(base, query)| (base, Some(query)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/postgres?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
