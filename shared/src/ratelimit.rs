//! A token bucket: `rate` tokens per second refill up to `burst`. The API
//! keeps one per user for writes, the gateway one per connection for
//! commands and one for `typing`. A rate of 0 disables the bucket, as the
//! contract's `CHORUS_*_RATE=0` settings require.

use std::time::{Duration, Instant};

/// One bucket. Not synchronized: the owner decides how it is shared.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// True when the bucket never limits (rate 0).
    pub fn is_unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.is_unlimited() {
            return Ok(());
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // Configuration keeps rates in a range where this wait is a
            // few seconds; a rate set from code outside it must not panic.
            Err(Duration::try_from_secs_f64((1.0 - self.tokens) / self.rate)
                .unwrap_or(Duration::MAX))
        }
    }

    /// True when the bucket is full again, so its owner may forget it.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).expect_err("empty");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(90));
        assert!(b.try_take(t0 + Duration::from_millis(100)).is_ok());
        assert!(b.try_take(t0 + Duration::from_millis(100)).is_err());
        assert!(b.is_full(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_tiny_rate_reports_a_long_wait_without_panicking() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1e-30, 1, t0);
        assert!(b.try_take(t0).is_ok());
        assert_eq!(b.try_take(t0), Err(Duration::MAX));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.0, 1, t0);
        for _ in 0..1000 {
            assert!(b.try_take(t0).is_ok());
        }
    }
}
