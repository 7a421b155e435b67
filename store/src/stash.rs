//! A few PostgreSQL connections kept checked out between reconciles.
//!
//! sqlx 0.9 pings every connection as it goes back to its pool (a Sync message and its answer, in a task of its
//! own), unconditionally. A reconcile is two statements, so that ping was a third round trip, a spawned task and a
//! wake-up on both sides of the socket for every request. The debit path takes its connection from this stash
//! instead and puts it back after a successful debit, so a busy API reuses connections without releasing them.
//! A connection that saw an error is never put back (dropping it returns it to the pool, whose ping closes a broken
//! one); one left idle in the stash for [`IDLE_MAX`] is returned to the pool by a sweeper, so the pool's own
//! idle checks (a ping after a second idle) still cover connections that a restarted server closed; and
//! [`Stash::drain`] empties it when the store closes. At most a quarter of the pool waits here.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::Postgres;
use sqlx::pool::PoolConnection;

/// How long a connection may wait in the stash before it goes back to the pool.
const IDLE_MAX: Duration = Duration::from_secs(1);

/// Connections checked out of a pool for reuse, newest last.
#[derive(Debug, Default)]
pub(crate) struct Stash {
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    capacity: usize,
}

impl Stash {
    /// A stash for a pool of `pool_size` connections, with a sweeper that returns idle ones to the pool.
    pub(crate) fn new(pool_size: u32) -> Arc<Self> {
        let capacity = usize::try_from(pool_size / 4).unwrap_or(1).max(1);
        let stash = Arc::new(Self { idle: Mutex::default(), capacity });
        let weak = Arc::downgrade(&stash);
        // The store is opened inside a runtime; a stash built elsewhere (a test) simply has no sweeper.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(weak));
        }
        stash
    }

    /// The most recently stashed connection, if any.
    pub(crate) fn take(&self) -> Option<PoolConnection<Postgres>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop().map(|(connection, _)| connection)
    }

    /// Keeps `connection` for the next debit, or lets it go back to the pool when the stash is full.
    pub(crate) fn put(&self, connection: PoolConnection<Postgres>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.capacity {
            idle.push((connection, Instant::now()));
        }
    }

    /// Returns every stashed connection to the pool.
    pub(crate) fn drain(&self) {
        let drained: Vec<_> = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(drained);
    }

    /// Returns connections idle for longer than [`IDLE_MAX`] to the pool.
    fn return_idle(&self) {
        let stale: Vec<_> = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let fresh_from = idle.iter().position(|(_, since)| since.elapsed() < IDLE_MAX).unwrap_or(idle.len());
            idle.drain(..fresh_from).collect()
        };
        // Dropped outside the lock: each drop spawns the pool's release.
        drop(stale);
    }
}

/// Sweeps `stash` every [`IDLE_MAX`] until the store is gone.
async fn sweep(stash: Weak<Stash>) {
    let mut ticks = tokio::time::interval(IDLE_MAX);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(stash) = stash.upgrade() else { return };
        stash.return_idle();
    }
}
