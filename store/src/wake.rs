//! Waking the outbox relay when a write leaves it something to relay.
//!
//! The relay passes over the outbox on a timer when it is idle; a job waited for that timer (half its period, on
//! average) between the write that recorded it and its push to the queue. Every write that adds outbox rows now
//! calls [`Store::outbox_written`] once it has committed: a relay in the same process is woken at once, and on
//! PostgreSQL the relays of other processes hear of it by `NOTIFY` on [`CHANNEL`], which
//! [`Store::listen_for_outbox`] turns into the same wake-up. The timer stays as the fallback for a notification lost
//! (a listener reconnecting, a process that crashed between its commit and its `NOTIFY`).
//!
//! `NOTIFY` takes a database-wide lock as its transaction commits, so a busy process must not send one per write:
//! each process sends at most one per [`NOTIFY_GAP`], the last one after the latest write it covers, on a connection
//! of its own pool and off the path of the request that wrote.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Store;

/// The channel relays listen on.
pub(crate) const CHANNEL: &str = "creditflow_outbox";
/// The least time between two `NOTIFY`s of one process.
const NOTIFY_GAP: Duration = Duration::from_millis(5);
/// How long the listener waits before listening again after its connection failed.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// One process's wake-up state, shared by every clone of its store.
#[derive(Debug)]
pub(crate) struct OutboxWake {
    /// Wakes this process's relay; holds one wake-up when nobody waits.
    local: Notify,
    /// Names this process in its notifications, so its own listener can skip them: its relay was woken already.
    sender: String,
    /// A `NOTIFY` is scheduled and not sent yet: later writes are covered by it.
    notify_pending: AtomicBool,
    /// When the last `NOTIFY` went out.
    last_notify: std::sync::Mutex<Option<Instant>>,
}

impl Default for OutboxWake {
    fn default() -> Self {
        Self {
            local: Notify::new(),
            sender: uuid::Uuid::new_v4().simple().to_string(),
            notify_pending: AtomicBool::new(false),
            last_notify: std::sync::Mutex::new(None),
        }
    }
}

impl Store {
    fn wake(&self) -> &Arc<OutboxWake> {
        match self {
            Self::Sqlite(store) => &store.wake,
            Self::Postgres(store) => &store.wake,
        }
    }

    /// Tells the relays that the outbox may hold new rows. Call it after the write that added them committed.
    pub(crate) fn outbox_written(&self) {
        let wake = self.wake();
        wake.local.notify_one();
        let Self::Postgres(store) = self else { return };
        if wake.notify_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let (wake, pool) = (wake.clone(), store.pool.clone());
        // Outside a runtime (never in creditflow) the other processes' relays still find the rows on their timers.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            wake.notify_pending.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(async move {
            let last = *wake.last_notify.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(last) = last {
                tokio::time::sleep_until(last + NOTIFY_GAP).await;
            }
            // Cleared before sending: a write from here on schedules another notification, which covers it.
            wake.notify_pending.store(false, Ordering::Release);
            *wake.last_notify.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&wake.sender).execute(&pool).await;
            if let Err(error) = sent {
                tracing::debug!(%error, "cannot notify other processes of new outbox rows; their relays will poll");
            }
        });
    }

    /// Waits until this process wrote outbox rows (or, while [`Store::listen_for_outbox`] runs, another process
    /// did) since the last wait returned, or until `timeout` has passed.
    pub async fn outbox_written_or(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.wake().local.notified()).await;
    }

    /// On PostgreSQL, turns other processes' notifications of outbox writes into wake-ups of
    /// [`Store::outbox_written_or`] until `stop` resolves, on a connection of its own (made with the pool's settings
    /// but outside it, so that a pool of one connection is not left with none). On SQLite, whose writers share this
    /// process, returns once `stop` resolves.
    pub async fn listen_for_outbox(&self, stop: impl Future<Output = ()>) {
        let Self::Postgres(store) = self else { return stop.await };
        let wake = store.wake.clone();
        let options = (*store.pool.connect_options()).clone();
        // PgListener reconnects through a pool: this one holds the listening connection and nothing else.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let listen = async move {
            loop {
                let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::debug!(%error, "cannot listen for outbox writes yet; the relay polls meanwhile");
                        tokio::time::sleep(LISTEN_RETRY).await;
                        continue;
                    }
                };
                if let Err(error) = listener.listen(CHANNEL).await {
                    tracing::debug!(%error, "cannot listen for outbox writes yet; the relay polls meanwhile");
                    tokio::time::sleep(LISTEN_RETRY).await;
                    continue;
                }
                // Anything written while nobody listened is looked for now.
                wake.local.notify_one();
                loop {
                    match listener.recv().await {
                        Ok(notification) => {
                            let mut others = notification.payload() != wake.sender;
                            while let Some(notification) = listener.next_buffered() {
                                others |= notification.payload() != wake.sender;
                            }
                            if others {
                                wake.local.notify_one();
                            }
                        }
                        Err(error) => {
                            tracing::debug!(%error, "lost the outbox listener's connection; listening again");
                            tokio::time::sleep(LISTEN_RETRY).await;
                            break;
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = stop => {}
            () = listen => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use creditflow_testkit::{TestBackend, TestDatabase};

    use super::*;

    /// A wake-up given while nobody waits is kept for the next wait, and only one is kept.
    #[tokio::test]
    async fn a_wake_up_given_before_the_wait_is_kept_for_it() {
        for backend in [TestBackend::Sqlite, TestBackend::Postgres] {
            let database = TestDatabase::new(backend).await;
            let store = Store::connect(&database.url, 2).await.expect("connect");
            store.outbox_written();
            store.outbox_written();
            let started = Instant::now();
            store.outbox_written_or(Duration::from_secs(30)).await;
            assert!(started.elapsed() < Duration::from_secs(5), "{backend:?}: the kept wake-up ended the wait");
            let started = Instant::now();
            store.outbox_written_or(Duration::from_millis(300)).await;
            assert!(started.elapsed() >= Duration::from_millis(300), "{backend:?}: two writes left one wake-up");
        }
    }

    /// The writes that add outbox rows wake the relay once they commit; one that adds none (a duplicate) does not.
    #[tokio::test]
    async fn writes_that_queue_jobs_wake_the_relay_and_duplicates_do_not() {
        for backend in [TestBackend::Sqlite, TestBackend::Postgres] {
            let database = TestDatabase::new(backend).await;
            let store = Store::connect(&database.url, 2).await.expect("connect");
            store.migrate().await.expect("migrate");
            let woken = |timeout: Duration| {
                let store = store.clone();
                async move {
                    let started = Instant::now();
                    store.outbox_written_or(timeout).await;
                    started.elapsed() < timeout
                }
            };
            let event = crate::ReceivedEvent {
                id: "evt_wake",
                event_type: "payment_intent.succeeded",
                livemode: false,
                payload: "{}",
            };
            assert_eq!(store.receive_stripe_event(&event).await.expect("stored"), crate::Received::New);
            assert!(woken(Duration::from_secs(30)).await, "{backend:?}: a new Stripe event woke the relay");
            assert_eq!(store.receive_stripe_event(&event).await.expect("stored"), crate::Received::Duplicate);
            assert!(!woken(Duration::from_millis(300)).await, "{backend:?}: a duplicate event woke the relay");
            store.enqueue_once("emails", "{}", "wake-once").await.expect("queued");
            assert!(woken(Duration::from_secs(30)).await, "{backend:?}: a job queued once woke the relay");
            store.enqueue_once("emails", "{}", "wake-once").await.expect("queued");
            assert!(!woken(Duration::from_millis(300)).await, "{backend:?}: a job already queued woke the relay");
            store.submit_usage_batch("svc", None, "[]", 0).await.expect("accepted");
            assert!(woken(Duration::from_secs(30)).await, "{backend:?}: an accepted batch woke the relay");
        }
    }

    /// Another process's outbox write wakes a listening process's relay through PostgreSQL; the listener's own
    /// notifications do not wake it a second time. Two stores on one database stand for the two processes; the
    /// listening one has a pool of one connection, which the listener must leave to the store's queries.
    #[tokio::test]
    async fn another_process_s_write_wakes_a_listening_relay() {
        let database = TestDatabase::new(TestBackend::Postgres).await;
        let relay = Store::connect(&database.url, 1).await.expect("connect");
        let api = Store::connect(&database.url, 2).await.expect("connect");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = {
            let relay = relay.clone();
            tokio::spawn(async move { relay.listen_for_outbox(async move { drop(stopped.await) }).await })
        };
        // The listener wakes the relay once when it starts listening: anything written before was not heard.
        relay.outbox_written_or(Duration::from_secs(30)).await;
        // The store's own connection is free for its queries (its pool waits 1 s for one, then fails).
        relay.migrate().await.expect("the pool's one connection is free for the store's queries");
        assert!(relay.unrelayed_outbox(10).await.expect("read the outbox").is_empty());
        for round in 0..5 {
            api.outbox_written();
            let started = Instant::now();
            relay.outbox_written_or(Duration::from_secs(30)).await;
            assert!(started.elapsed() < Duration::from_secs(5), "round {round}: the other store's write was not heard");
        }
        // The relay's own write wakes it once, at once; its NOTIFY coming back through the listener is skipped.
        relay.outbox_written();
        relay.outbox_written_or(Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        relay.outbox_written_or(Duration::from_millis(300)).await;
        assert!(started.elapsed() >= Duration::from_millis(300), "the store's own notification woke it again");
        stop.send(()).expect("the listener runs");
        tokio::time::timeout(Duration::from_secs(10), listener).await.expect("stops").expect("no panic");
    }
}
