//! When posts arrive, which sets the post writer's linger: the smoothed
//! gap between posts, and how long a writer waits after a batch's first
//! post for more (`CHORUS_POST_LINGER_MS`, none by default).

use std::time::Duration;

/// Weight of the newest gap in the smoothed gap between posts (1/8: a
/// rate change shows within a dozen posts, one odd gap does not).
const GAP_SMOOTHING: f64 = 0.125;

/// When posts arrive: the smoothed gap between them, which sets how long
/// a writer lingers for more. Updated without a lock; a lost update under
/// a race only skews the estimate by one sample.
#[derive(Debug)]
pub(super) struct Arrivals {
    /// The most a writer lingers (0: never).
    limit: Duration,
    start: std::time::Instant,
    /// Microseconds since `start` of the last post.
    last_us: std::sync::atomic::AtomicU64,
    /// Smoothed gap in microseconds, as `f64` bits.
    gap_us: std::sync::atomic::AtomicU64,
}

impl Arrivals {
    pub(super) fn new(limit: Duration) -> Self {
        Arrivals {
            limit,
            start: std::time::Instant::now(),
            last_us: Default::default(),
            // Quiet at first: no linger until posts come close together.
            gap_us: (limit.as_micros() as f64 * 10.0 + 1.0).to_bits().into(),
        }
    }

    pub(super) fn record(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.start.elapsed().as_micros() as u64;
        let gap = now.saturating_sub(self.last_us.swap(now, Relaxed)) as f64;
        let old = f64::from_bits(self.gap_us.load(Relaxed));
        let new = old + GAP_SMOOTHING * (gap - old);
        self.gap_us.store(new.to_bits(), Relaxed);
    }

    /// How long to wait for more after a batch's first post: the expected
    /// gap, when more are expected within the limit.
    pub(super) fn linger(&self) -> Duration {
        let gap = f64::from_bits(self.gap_us.load(std::sync::atomic::Ordering::Relaxed));
        if gap < self.limit.as_micros() as f64 {
            Duration::from_micros(gap as u64)
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lingers_only_while_posts_come_close_together() {
        let limit = Duration::from_millis(4);
        let a = Arrivals::new(limit);
        assert_eq!(a.linger(), Duration::ZERO, "quiet at first");
        for _ in 0..100 {
            a.record();
        }
        let busy = a.linger();
        assert!(busy < limit, "back-to-back posts: a short linger, {busy:?}");
        // Posts every 10 ms: no linger.
        a.gap_us
            .store((10_000f64).to_bits(), std::sync::atomic::Ordering::Relaxed);
        assert_eq!(a.linger(), Duration::ZERO);
        a.gap_us
            .store((2_000f64).to_bits(), std::sync::atomic::Ordering::Relaxed);
        assert_eq!(a.linger(), Duration::from_millis(2), "one expected gap");
    }

    #[test]
    fn a_zero_limit_never_lingers() {
        let a = Arrivals::new(Duration::ZERO);
        for _ in 0..100 {
            a.record();
        }
        assert_eq!(a.linger(), Duration::ZERO);
    }
}
