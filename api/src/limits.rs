//! The per-subject rate limit: a generic cell rate algorithm (GCRA) allowing `requests_per_minute` requests in any
//! minute, smoothly refilled. In one process it lives in memory; with Redis configured it lives in Redis (one Lua
//! script, timed by the Redis server's clock) so every API process shares one budget per subject.
//!
//! Through Redis a process takes a subject's budget in slices of 1% of the per-minute limit (at least one request):
//! the script charges the whole slice to the shared budget at once, and the process spends it locally, so a busy
//! subject costs one Redis call per slice rather than one per request. A slice must be spent within the time it
//! stands for at the full rate (its size times the interval between requests), or what is left of it lapses unused:
//! the shared budget is never exceeded by more than one slice per process, and the default limit (100 a minute)
//! still asks Redis for every request.
//!
//! If Redis cannot be reached the request is let through and the failure logged: a broken limiter must not stop
//! billing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// A decision about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allowed,
    /// Over the limit: try again after this long.
    Limited(Duration),
}

/// The theoretical arrival times by subject (in-process backend).
#[derive(Debug, Default)]
struct Cells {
    arrival: HashMap<String, Instant>,
    checks: u64,
}

/// A rate limiter shared by all requests of a process (or, through Redis, of a deployment).
pub struct RateLimiter {
    interval: Duration,
    window: Duration,
    backend: Backend,
}

enum Backend {
    Memory(Mutex<Cells>),
    Redis { connection: redis::aio::ConnectionManager, slices: std::sync::Mutex<HashMap<String, Slice>>, slice: u64 },
}

/// What is left of a slice of one subject's budget taken from Redis, and until when it may be spent.
#[derive(Clone, Copy, Debug)]
struct Slice {
    left: u64,
    until: Instant,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis { .. } => "redis",
        };
        f.debug_struct("RateLimiter").field("window", &self.window).field("backend", &backend).finish_non_exhaustive()
    }
}

/// GCRA in Redis, for a slice of requests. KEYS[1]: the subject's key. ARGV: emission interval and window, in
/// microseconds, and the most requests wanted. Returns `{granted, 0}` with 1 to ARGV[3] requests charged to the
/// budget, or `{0, microseconds to wait}` when not even one fits.
const GCRA_SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((now + window - tat) / interval)
if room < 1 then
  return {0, tat + interval - now - window}
end
local granted = math.min(room, wanted)
local next_tat = tat + granted * interval
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return {granted, 0}
";
/// A slice is this share of the per-minute limit.
const SLICES_PER_MINUTE: u32 = 100;
/// Subjects whose slices a process remembers before it forgets the spent and lapsed ones.
const SUBJECTS_HELD_MAX: usize = 10_000;

impl RateLimiter {
    /// A limiter of `per_minute` requests per subject, in this process's memory.
    pub fn in_memory(per_minute: u32) -> Self {
        let (interval, window) = Self::timing(per_minute);
        Self { interval, window, backend: Backend::Memory(Mutex::default()) }
    }

    /// A limiter of `per_minute` requests per subject shared through the Redis at `url`.
    pub async fn redis(url: &str, per_minute: u32) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let connection = redis::aio::ConnectionManager::new(client).await?;
        let (interval, window) = Self::timing(per_minute);
        let slice = u64::from((per_minute / SLICES_PER_MINUTE).max(1));
        Ok(Self {
            interval,
            window,
            backend: Backend::Redis { connection, slices: std::sync::Mutex::default(), slice },
        })
    }

    fn timing(per_minute: u32) -> (Duration, Duration) {
        let window = Duration::from_secs(60);
        (window / per_minute.max(1), window)
    }

    /// Counts a request by `subject` and says whether it may proceed.
    pub async fn check(&self, subject: &str) -> Verdict {
        match &self.backend {
            Backend::Memory(cells) => self.check_in_memory(cells, subject).await,
            Backend::Redis { connection, slices, slice } => {
                self.check_in_redis(connection, slices, *slice, subject).await
            }
        }
    }

    async fn check_in_redis(
        &self,
        connection: &redis::aio::ConnectionManager,
        slices: &std::sync::Mutex<HashMap<String, Slice>>,
        slice: u64,
        subject: &str,
    ) -> Verdict {
        let now = Instant::now();
        {
            let mut slices = slices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(held) = slices.get_mut(subject)
                && held.left > 0
                && held.until > now
            {
                held.left -= 1;
                return Verdict::Allowed;
            }
        }
        let key = format!("creditflow:ratelimit:{subject}");
        let micros = |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let result: Result<(u64, u64), _> = redis::Script::new(GCRA_SCRIPT)
            .key(key)
            .arg(micros(self.interval))
            .arg(micros(self.window))
            .arg(slice)
            .invoke_async(&mut connection.clone())
            .await;
        match result {
            Ok((0, wait)) => Verdict::Limited(Duration::from_micros(wait)),
            Ok((granted, _)) => {
                if granted > 1 {
                    // This request takes one; the rest is spent here until the time it stands for has passed.
                    let span = self.interval.saturating_mul(u32::try_from(granted).unwrap_or(u32::MAX));
                    let mut slices = slices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if slices.len() >= SUBJECTS_HELD_MAX {
                        slices.retain(|_, held| held.left > 0 && held.until > now);
                    }
                    let held = slices.entry(subject.to_owned()).or_insert(Slice { left: 0, until: now });
                    // A lapsed remainder is dropped, not added to; two slices fetched at once are both spent.
                    let left = if held.until > now { held.left } else { 0 };
                    *held = Slice { left: left.saturating_add(granted - 1), until: held.until.max(now + span) };
                }
                Verdict::Allowed
            }
            Err(error) => {
                tracing::warn!(%error, "rate limiter unreachable; letting the request through");
                Verdict::Allowed
            }
        }
    }

    async fn check_in_memory(&self, cells: &Mutex<Cells>, subject: &str) -> Verdict {
        let now = Instant::now();
        let mut cells = cells.lock().await;
        cells.checks = cells.checks.wrapping_add(1);
        if cells.checks.is_multiple_of(10_000) {
            // Forget subjects whose budget is full again, so the map does not grow without bound.
            cells.arrival.retain(|_, arrival| *arrival > now);
        }
        let arrival = cells.arrival.get(subject).copied().filter(|at| *at > now).unwrap_or(now);
        let next = arrival + self.interval;
        let ahead = next.duration_since(now);
        if ahead > self.window {
            return Verdict::Limited(ahead.saturating_sub(self.window));
        }
        cells.arrival.insert(subject.to_owned(), next);
        Verdict::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_101st_request_in_a_minute_is_limited_per_subject() {
        let limiter = RateLimiter::in_memory(100);
        for n in 0..100 {
            assert_eq!(limiter.check("alice").await, Verdict::Allowed, "request {n}");
        }
        let Verdict::Limited(wait) = limiter.check("alice").await else { panic!("the 101st must be limited") };
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(600), "{wait:?}");
        assert_eq!(limiter.check("bob").await, Verdict::Allowed, "another subject has its own budget");
    }
}
