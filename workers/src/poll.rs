//! When an idle worker looks for jobs again.
//!
//! apalis's `poll_with_interval` wakes a worker with a `futures-timer` delay. Measured in the API benchmark (a worker
//! process with its seven pools on Redis, `apalis_core` at debug level): about 1.5 s after the process started, every
//! pool stopped polling at once, and none polled again until its heartbeat timer fired, 30 s after start: the first
//! usage batches, pushed meanwhile, waited that long before their first event was debited (three runs of three).
//! [`IdlePoll`] ticks on tokio's timer instead, the runtime's own, and after every tick it polls the next one at once,
//! so a wake-up is always armed whatever else wakes the worker.
//!
//! A job the outbox relay of the same process pushes need not wait for the next tick: the relay [`Nudge`]s the
//! queue's pool, which polls at once. Jobs pushed by other processes are found on the timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use futures_util::task::AtomicWaker;
use tokio::time::{Interval, MissedTickBehavior};

/// Wakes a worker every `period`, and when its [`Nudge`] is given (see the module's documentation).
#[derive(Debug)]
pub struct IdlePoll {
    period: Duration,
    /// Made on the first poll, which runs on the worker's runtime (a tokio timer needs one).
    interval: Option<Interval>,
    nudge: Option<Arc<Nudge>>,
}

impl IdlePoll {
    /// A strategy waking the worker every `period`.
    pub fn every(period: Duration) -> Self {
        Self { period, interval: None, nudge: None }
    }

    /// The same, also waking the worker whenever `nudge` is given.
    #[must_use]
    pub fn nudged_by(mut self, nudge: Arc<Nudge>) -> Self {
        self.nudge = Some(nudge);
        self
    }
}

impl Clone for IdlePoll {
    /// A clone starts its own timer and shares the nudge: each worker (re)started from a builder gets one.
    fn clone(&self) -> Self {
        Self { period: self.period, interval: None, nudge: self.nudge.clone() }
    }
}

/// Tells a queue's pool in this process that a job was just pushed: it polls at once rather than on its next tick.
#[derive(Debug, Default)]
pub struct Nudge {
    /// Given and not yet taken by a poll.
    given: AtomicBool,
    /// The pool's worker, as its last poll left it.
    waker: AtomicWaker,
}

impl Nudge {
    /// Wakes the pool; a nudge given while it is busy is taken by its next poll.
    pub fn give(&self) {
        self.given.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl PollStrategy for IdlePoll {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _snapshot: &PollSnapshot) -> Poll<Option<()>> {
        let period = self.period;
        let interval = self.interval.get_or_insert_with(|| {
            let mut interval = tokio::time::interval(period);
            // After a busy spell, one tick rather than a burst of the ones missed.
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        let mut ticked = false;
        if let Some(nudge) = &self.nudge {
            // Registered before the flag is read: a nudge given in between still wakes this waker.
            nudge.waker.register(cx.waker());
            ticked = nudge.given.swap(false, Ordering::AcqRel);
        }
        // A tick is consumed and the next one polled in the same call, which registers `cx`'s waker for it: the
        // worker is woken again in `period` even if this poll finds nothing and nothing else wakes it.
        while interval.poll_tick(cx).is_ready() {
            ticked = true;
        }
        if ticked { Poll::Ready(Some(())) } else { Poll::Pending }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// After a tick has been consumed, the strategy's waker fires again a period later without any further poll:
    /// the wake-up that apalis's interval strategy leaves to the next poll.
    #[tokio::test]
    async fn a_consumed_tick_leaves_the_next_one_armed() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut strategy = IdlePoll::every(Duration::from_millis(50));
        let snapshot = PollSnapshot::default();
        // The first tick is due at once, but tokio's timer may still report it on its next turn.
        let _ = strategy.poll_drive(&mut cx, &snapshot);
        for round in 1..=3 {
            // Nothing polls the strategy here: only its own timer can wake the waker.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while counter.0.load(Ordering::SeqCst) < round {
                assert!(tokio::time::Instant::now() < deadline, "round {round}: the next tick never woke the worker");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready(), "woken for a tick that is there");
        }
    }

    /// A nudge wakes the worker long before its next tick, and the poll it causes is ready; a nudge given while no
    /// poll waits is kept for the next one.
    #[tokio::test]
    async fn a_nudge_wakes_the_worker_before_its_tick() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let nudge = Arc::new(Nudge::default());
        let mut strategy = IdlePoll::every(Duration::from_secs(3600)).nudged_by(nudge.clone());
        let snapshot = PollSnapshot::default();
        // The first tick is due at once: take it (tokio may report it on its next turn).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while strategy.poll_drive(&mut cx, &snapshot).is_pending() {
            assert!(tokio::time::Instant::now() < deadline, "the first tick never came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_pending(), "the next tick is an hour away");
        let woken = counter.0.load(Ordering::SeqCst);
        nudge.give();
        assert_eq!(counter.0.load(Ordering::SeqCst), woken + 1, "the nudge woke the worker");
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready(), "the poll after a nudge is ready");
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_pending(), "one nudge, one ready poll");
        // A clone (a restarted worker) shares the nudge.
        let mut restarted = strategy.clone();
        nudge.give();
        assert!(restarted.poll_drive(&mut cx, &snapshot).is_ready(), "the restarted worker polls on the nudge");
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_pending(), "the restarted worker took the nudge");
    }
}
