//! When an idle worker looks for jobs again.
//!
//! apalis's `poll_with_interval` wakes a worker with a `futures-timer` delay. Measured in the API benchmark (a worker
//! process with its seven pools on Redis, `apalis_core` at debug level): about 1.5 s after the process started, every
//! pool stopped polling at once, and none polled again until its heartbeat timer fired, 30 s after start: the first
//! usage batches, pushed meanwhile, waited that long before their first event was debited (three runs of three).
//! [`IdlePoll`] ticks on tokio's timer instead, the runtime's own, and after every tick it polls the next one at once,
//! so a wake-up is always armed whatever else wakes the worker.

use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use tokio::time::{Interval, MissedTickBehavior};

/// Wakes a worker every `period` (see the module's documentation).
#[derive(Debug)]
pub struct IdlePoll {
    period: Duration,
    /// Made on the first poll, which runs on the worker's runtime (a tokio timer needs one).
    interval: Option<Interval>,
}

impl IdlePoll {
    /// A strategy waking the worker every `period`.
    pub fn every(period: Duration) -> Self {
        Self { period, interval: None }
    }
}

impl Clone for IdlePoll {
    /// A clone starts its own timer: each worker (re)started from a builder gets one.
    fn clone(&self) -> Self {
        Self::every(self.period)
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
}
