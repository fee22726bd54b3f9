//! Retry policy: exponential backoff with full jitter, bounded by attempts *and* by a total deadline.
//!
//! The delay before attempt `n + 1` is uniform in `[0, min(cap, base × 2^n)]` (the "full jitter" of the AWS
//! architecture blog, as go-v2 and py-v2 use it). A retry never starts when its delay would cross the
//! deadline, so a caller's worst case is known up front.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first one included (1 = no retry).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt started.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            deadline: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy { max_attempts: 1, ..Default::default() }
    }

    /// The jittered delay after `failed_attempts` attempts have failed (1 after the first failure).
    pub fn delay(&self, failed_attempts: u32, rng: &mut fastrand::Rng) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(30);
        let ceiling = self.base_delay.saturating_mul(1u32 << exp).min(self.max_delay);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rng.u64(0..=nanos))
    }

    /// The delay to sleep before the next attempt, or `None` when the attempt or time budget is spent.
    pub fn next_delay(&self, failed_attempts: u32, elapsed: Duration, rng: &mut fastrand::Rng) -> Option<Duration> {
        if failed_attempts >= self.max_attempts {
            return None;
        }
        let d = self.delay(failed_attempts, rng);
        (elapsed + d < self.deadline).then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let p = RetryPolicy {
            max_attempts: 50,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            deadline: Duration::from_secs(3600),
        };
        let mut rng = fastrand::Rng::with_seed(3);
        for n in 1..40 {
            let d = p.delay(n, &mut rng);
            let ceiling = Duration::from_millis(100).saturating_mul(1 << (n - 1).min(30)).min(Duration::from_secs(2));
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
        }
    }

    #[test]
    fn bounded_by_attempts_and_deadline() {
        let p = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            deadline: Duration::from_secs(1),
        };
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(p.next_delay(1, Duration::ZERO, &mut rng).is_some());
        assert!(p.next_delay(2, Duration::ZERO, &mut rng).is_some());
        assert!(p.next_delay(3, Duration::ZERO, &mut rng).is_none());
        assert!(p.next_delay(1, Duration::from_secs(1), &mut rng).is_none());
        assert!(RetryPolicy::none().next_delay(1, Duration::ZERO, &mut rng).is_none());
    }
}
