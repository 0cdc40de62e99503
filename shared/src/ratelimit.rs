//! Token buckets: `rate` tokens per second refill up to `burst`. The API
//! keeps one per user for writes, the gateway one per connection for
//! commands and one for `typing`. A rate of 0 disables a bucket, as the
//! contract's `CHORUS_*_RATE=0` settings require.
//!
//! A bucket is kept as one number, the moment it will be full again (the
//! generic cell rate algorithm of ATM networks, ITU-T I.371, which
//! `redis-cell` and the `governor` crate use too): a take is allowed
//! while that moment is at most `burst - 1` intervals away, and moves it
//! one interval on. It decides exactly as a bucket of counted tokens
//! would. The rate and the burst are the bucket's [`Limit`], shared by
//! every bucket of a kind, so a bucket costs 8 bytes: every connection
//! of a gateway carries two.
//!
//! Time is the caller's: a [`Duration`] since an origin of its choosing
//! (its own start, say), the same for every call on one bucket.

use std::time::Duration;

/// A rate and a burst, as the intervals a bucket works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Nanoseconds per token; 0 when unlimited.
    interval: u64,
    /// How far ahead of now a bucket's full moment may be for a take to
    /// pass: `burst - 1` intervals.
    tolerance: u64,
}

impl Limit {
    /// `rate` tokens per second, up to `burst` at once (at least 1). A rate
    /// of 0 (or less) never limits; a rate too small to count in
    /// nanoseconds waits as long as a `u64` of them allows.
    pub const fn new(rate: f64, burst: u32) -> Self {
        if rate.is_nan() || rate <= 0.0 {
            return Limit::UNLIMITED;
        }
        // Rounded to the nearest nanosecond; `as` saturates, so a tiny
        // rate's infinite interval becomes u64::MAX.
        let interval = (1e9 / rate + 0.5) as u64;
        let interval = if interval == 0 { 1 } else { interval };
        let extra = if burst == 0 { 0 } else { burst - 1 };
        Limit {
            interval,
            tolerance: interval.saturating_mul(extra as u64),
        }
    }

    /// A limit that never limits.
    pub const UNLIMITED: Limit = Limit {
        interval: 0,
        tolerance: 0,
    };

    /// True when buckets of this limit never limit (rate 0).
    pub fn is_unlimited(&self) -> bool {
        self.interval == 0
    }
}

/// One bucket. Not synchronized: the owner decides how it is shared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When the bucket is full again, in nanoseconds after the caller's
    /// origin; at or before now, it is full.
    full_at: u64,
}

impl Bucket {
    /// A full bucket.
    pub const FULL: Bucket = Bucket { full_at: 0 };

    /// Takes one token at `now`, or says how long until one is available.
    pub fn try_take(&mut self, limit: &Limit, now: Duration) -> Result<(), Duration> {
        if limit.is_unlimited() {
            return Ok(());
        }
        let now = nanos(now);
        let from = self.full_at.max(now);
        let ahead = from - now;
        if ahead > limit.tolerance {
            return Err(Duration::from_nanos(ahead - limit.tolerance));
        }
        self.full_at = from.saturating_add(limit.interval);
        Ok(())
    }

    /// True when the bucket is full at `now`, so its owner may forget it.
    pub fn is_full(&self, now: Duration) -> bool {
        self.full_at <= nanos(now)
    }
}

/// `d` in nanoseconds, saturating (585 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_rate() {
        let limit = Limit::new(10.0, 3);
        let mut b = Bucket::FULL;
        let t0 = ms(1_000);
        assert!(b.try_take(&limit, t0).is_ok());
        assert!(b.try_take(&limit, t0).is_ok());
        assert!(b.try_take(&limit, t0).is_ok());
        assert_eq!(b.try_take(&limit, t0), Err(ms(100)));
        assert!(!b.is_full(t0));
        assert!(b.try_take(&limit, t0 + ms(100)).is_ok());
        assert_eq!(b.try_take(&limit, t0 + ms(100)), Err(ms(100)));
        assert_eq!(b.try_take(&limit, t0 + ms(150)), Err(ms(50)));
        // Four taken in all, the last at 100 ms: full again 300 ms later.
        assert!(!b.is_full(t0 + ms(399)));
        assert!(b.is_full(t0 + ms(400)));
        assert!(b.is_full(t0 + ms(5_000)));
    }

    #[test]
    fn a_tiny_rate_reports_a_long_wait_without_panicking() {
        let limit = Limit::new(1e-30, 1);
        let mut b = Bucket::FULL;
        assert!(b.try_take(&limit, ms(5)).is_ok());
        let wait = b.try_take(&limit, ms(5)).expect_err("limited");
        assert!(wait > Duration::from_secs(100 * 365 * 86_400), "{wait:?}");
        let mut b = Bucket::FULL;
        let huge = Limit::new(1e-30, u32::MAX);
        assert!(b.try_take(&huge, ms(5)).is_ok());
    }

    #[test]
    fn zero_or_negative_rates_are_unlimited() {
        for rate in [0.0, -1.0, f64::NAN] {
            let limit = Limit::new(rate, 1);
            assert!(limit.is_unlimited());
            let mut b = Bucket::FULL;
            for _ in 0..1000 {
                assert!(b.try_take(&limit, ms(1)).is_ok());
            }
        }
    }

    /// The bucket of counted tokens that a [`Bucket`] stands for, in exact
    /// integer arithmetic: tokens in millionths, time in microseconds, the
    /// rate in whole tokens per second.
    struct Counted {
        rate: u64,
        burst: u64,
        millionths: u64,
        last_us: u64,
    }

    impl Counted {
        fn try_take(&mut self, now_us: u64) -> bool {
            let refill = (now_us - self.last_us) * self.rate;
            self.millionths = (self.millionths + refill).min(self.burst * 1_000_000);
            self.last_us = now_us;
            if self.millionths >= 1_000_000 {
                self.millionths -= 1_000_000;
                true
            } else {
                false
            }
        }
    }

    proptest! {
        /// Any rate and burst, any arrivals: a bucket lets through exactly
        /// what a bucket of counted tokens would, and is full exactly when
        /// that one is.
        #[test]
        fn decides_as_a_bucket_of_counted_tokens(
            rate in prop::sample::select(vec![1_u64, 2, 4, 5, 8, 10, 20, 25, 50, 100, 1000]),
            burst in 1_u32..20,
            gaps in prop::collection::vec(0_u64..400_000, 1..200),
        ) {
            let limit = Limit::new(rate as f64, burst);
            let mut bucket = Bucket::FULL;
            let mut counted = Counted {
                rate,
                burst: u64::from(burst),
                millionths: u64::from(burst) * 1_000_000,
                last_us: 0,
            };
            let mut now_us = 0;
            for gap in gaps {
                now_us += gap;
                let now = Duration::from_micros(now_us);
                prop_assert_eq!(bucket.try_take(&limit, now).is_ok(), counted.try_take(now_us));
                prop_assert_eq!(bucket.is_full(now), counted.millionths == counted.burst * 1_000_000);
            }
        }
    }
}
