//! When to try again: backoff for throttled (429) and failing (5xx) answers, and the interval
//! between operation polls. Pure.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::time::{Duration, Instant};

/// Backoff for throttled (429) and failing (5xx) answers and the polling interval (pure).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The whole budget of one unit's verification.
    pub budget: Duration,
    /// The first backoff; doubled per retry.
    pub base: Duration,
    /// The largest backoff.
    pub cap: Duration,
    /// The shortest wait between operation polls, whatever `Retry-After` says.
    pub min_poll: Duration,
    /// The poll interval when DPS sends no `Retry-After`.
    pub default_poll: Duration,
}

impl RetryPolicy {
    /// The policy for a budget: backoff 0.5 s doubling to 8 s, polls at least 250 ms apart.
    pub fn new(budget: Duration) -> RetryPolicy {
        RetryPolicy {
            budget,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            min_poll: Duration::from_millis(250),
            default_poll: Duration::from_secs(2),
        }
    }

    /// The wait before retry number `retry` (0-based) of a throttled or failed request:
    /// exponential backoff with "equal jitter" (half fixed, half random, `jitter` in [0, 1)),
    /// never shorter than the server's `Retry-After`.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.cap);
        let jittered = exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }

    /// The wait before the next operation poll.
    pub fn poll(&self, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or(self.default_poll)
            .clamp(self.min_poll, self.cap)
    }
}

/// A number in [0, 1) that differs per call, for jitter (no cryptographic quality needed).
pub(crate) fn jitter() -> f64 {
    let bits = RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
