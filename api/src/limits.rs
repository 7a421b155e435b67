//! The per-subject rate limit: a generic cell rate algorithm (GCRA) allowing `requests_per_minute` requests in any
//! minute, smoothly refilled. In one process it lives in memory; with Redis configured it lives in Redis (one Lua
//! script, timed by the Redis server's clock) so every API process shares one budget per subject.
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
    Redis(redis::aio::ConnectionManager),
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        };
        f.debug_struct("RateLimiter").field("window", &self.window).field("backend", &backend).finish_non_exhaustive()
    }
}

/// GCRA in Redis. KEYS[1]: the subject's key. ARGV: emission interval and window, in microseconds. Returns 0 when
/// allowed, else the microseconds to wait.
const GCRA_SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now > window then
  return next_tat - now - window
end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return 0
";

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
        Ok(Self { interval, window, backend: Backend::Redis(connection) })
    }

    fn timing(per_minute: u32) -> (Duration, Duration) {
        let window = Duration::from_secs(60);
        (window / per_minute.max(1), window)
    }

    /// Counts a request by `subject` and says whether it may proceed.
    pub async fn check(&self, subject: &str) -> Verdict {
        match &self.backend {
            Backend::Memory(cells) => self.check_in_memory(cells, subject).await,
            Backend::Redis(connection) => {
                let key = format!("creditflow:ratelimit:{subject}");
                let micros = |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
                let result: Result<u64, _> = redis::Script::new(GCRA_SCRIPT)
                    .key(key)
                    .arg(micros(self.interval))
                    .arg(micros(self.window))
                    .invoke_async(&mut connection.clone())
                    .await;
                match result {
                    Ok(0) => Verdict::Allowed,
                    Ok(wait) => Verdict::Limited(Duration::from_micros(wait)),
                    Err(error) => {
                        tracing::warn!(%error, "rate limiter unreachable; letting the request through");
                        Verdict::Allowed
                    }
                }
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
