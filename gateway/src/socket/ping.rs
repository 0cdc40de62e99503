//! When pings fall due: a connection's first ping spread over the second
//! half of the heartbeat, and every ping moved back onto a grid so that
//! pings due together are written in one wake-up.

use std::time::Duration;

use super::SocketConfig;

/// When a connection's first ping is due: somewhere between half the
/// heartbeat and all of it, then every heartbeat (each moved back onto the
/// ping grid, [`on_ping_grid`], so up to one step sooner). Connections made
/// together (a load test, a reconnect storm: 20,000 in 3 s) would
/// otherwise be pinged together at every heartbeat, each wave a burst of
/// writes and pong reads on top of live traffic (small-room load runs had
/// their worst seconds, 9-12 ms at p99, when the waves fell). Spread from the
/// connection id by Fibonacci hashing, so consecutive ids land evenly
/// apart without a random source; no ping comes later than `heartbeatMs`.
pub(super) fn first_ping(heartbeat: Duration, conn_id: u64) -> Duration {
    let spread = conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    let fraction = spread as f64 / (1_u64 << 53) as f64;
    heartbeat / 2 + heartbeat.mul_f64(fraction / 2.0)
}

/// Coarsest step of the grid pings fall due on. A ping's timer firing
/// wakes the runtime from its sleep; pings due in the same step fire in one
/// timer-wheel turn and are written one after the other, in one wake-up,
/// instead of one wake-up each (at 10,000 connections, 400 a second). A
/// step's pings go out together: at 100,000 connections on one gateway,
/// about 400, a few milliseconds of writes.
pub(super) const PING_GRID: Duration = Duration::from_millis(100);

/// `at`, moved back to the ping grid: the last multiple of the step since
/// the gateway started. Back, not forward, so that no ping comes later
/// than `heartbeatMs` after the one before; the step is at most an eighth
/// of the heartbeat (tests run with heartbeats of milliseconds), so a ping
/// is never due before the one it follows.
pub(super) fn on_ping_grid(
    at: tokio::time::Instant,
    config: &SocketConfig,
) -> tokio::time::Instant {
    let step = PING_GRID.min(config.heartbeat / 8).as_nanos().max(1);
    let since = at.saturating_duration_since(config.started).as_nanos();
    let back = u64::try_from(since % step).unwrap_or(0);
    at - Duration::from_nanos(back)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn first_pings_are_spread_over_the_second_half_of_the_heartbeat() {
        let heartbeat = Duration::from_secs(25);
        let mut tenths = [0_usize; 10];
        for id in 1..=1_000_u64 {
            let d = first_ping(heartbeat, id);
            assert!(d >= heartbeat / 2 && d <= heartbeat, "{d:?} for {id}");
            let tenth = ((d - heartbeat / 2).as_secs_f64() / 1.25) as usize;
            tenths[tenth.min(9)] += 1;
        }
        // Consecutive connections spread evenly: each tenth of the window
        // holds a tenth of them, give or take a few.
        assert!(tenths.iter().all(|n| (90..=110).contains(n)), "{tenths:?}");
    }

    #[test]
    fn pings_fall_due_on_the_grid_never_later() {
        let config = |heartbeat| SocketConfig {
            command_rate: 0.0,
            command_burst: 0,
            heartbeat,
            started: tokio::time::Instant::now(),
            idle_timeout: Duration::from_secs(60),
            open: Arc::default(),
        };
        for (heartbeat, step) in [
            (Duration::from_secs(25), PING_GRID),
            (Duration::from_millis(80), Duration::from_millis(10)),
        ] {
            let c = config(heartbeat);
            let mut seen = std::collections::HashSet::new();
            for micros in (0..3_000_000_u64).step_by(7_919) {
                let at = c.started + Duration::from_micros(micros);
                let due = on_ping_grid(at, &c);
                assert!(due <= at && at - due < step, "{at:?} → {due:?}");
                assert_eq!((due - c.started).as_nanos() % step.as_nanos(), 0);
                seen.insert(due);
            }
            // Deadlines in one step share one instant: one timer-wheel turn.
            assert_eq!(seen.len() as u128, 3_000_000 / step.as_micros());
        }
    }
}
