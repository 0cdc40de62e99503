//! The clock's steps and its wheel, on paused time with real handles.

use std::time::Duration;

use chorus_shared::ratelimit::Limit;
use tokio::time::Instant;

use super::*;
use crate::codec::Encoding;
use crate::handle::OutboundRx;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Settings for `heartbeat` and `idle` starting now, pings every
/// heartbeat on steps of an eighth of it.
fn config(heartbeat: Duration, idle: Duration) -> SocketConfig {
    SocketConfig::new(Limit::UNLIMITED, heartbeat, idle, Arc::default())
}

/// A connection whose token expires `expiry` from now, on the clock.
fn enrolled(config: &SocketConfig, id: u64, expiry: Duration) -> (Arc<ConnHandle>, OutboundRx) {
    let (conn, rx) = ConnHandle::new(id, "u", "U", Encoding::Json, 4, Instant::now() + expiry);
    config.clock.enrol(config, &conn);
    (conn, rx)
}

/// Moves time on a step at a time until `until`, sweeping after each, and
/// returns how long after the start each step that found `conn`'s ping
/// due ended.
async fn pings_until(config: &SocketConfig, conn: &ConnHandle, until: Duration) -> Vec<Duration> {
    let step = config.clock.step;
    let mut pings = Vec::new();
    while Instant::now() < config.started + until {
        tokio::time::advance(step).await;
        config.clock.sweep(config, Instant::now());
        if conn.take_ping() {
            pings.push(Instant::now() - config.started);
        }
    }
    pings
}

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
fn steps_are_the_grid_or_an_eighth_of_a_short_heartbeat() {
    let c = Clock::new(Duration::from_secs(25));
    assert_eq!((c.step, c.heartbeat_steps), (PING_GRID, 250));
    let c = Clock::new(ms(80));
    assert_eq!((c.step, c.heartbeat_steps), (ms(10), 8));
    assert_eq!(lock(&c.wheel).slots.len(), 10);
}

/// The first ping comes in the second half of the first heartbeat, on a
/// step, and each after it one heartbeat later, never more.
#[tokio::test(start_paused = true)]
async fn pings_fall_due_on_steps_one_heartbeat_apart() {
    let heartbeat = ms(800);
    let c = config(heartbeat, Duration::from_secs(3600));
    for id in [1, 2, 3, 17] {
        let (conn, _rx) = enrolled(&c, id, Duration::from_secs(3600));
        let start = Instant::now() - c.started;
        let pings = pings_until(&c, &conn, start + heartbeat * 4).await;
        assert_eq!(pings.len(), 4, "{pings:?}");
        let first = pings[0] - start;
        assert!(
            first > heartbeat / 2 - c.clock.step && first <= heartbeat,
            "{first:?}"
        );
        for pair in pings.windows(2) {
            assert_eq!(pair[1] - pair[0], heartbeat, "{pings:?}");
        }
        for p in &pings {
            assert_eq!(p.as_nanos() % c.clock.step.as_nanos(), 0, "{p:?} on a step");
        }
    }
}

/// A silent client is closed with 1000 at the first step at or after its
/// idle deadline; a frame from it moves the deadline on.
#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_at_its_idle_deadline_not_before() {
    let c = config(ms(800), ms(2_050));
    let (conn, _rx) = enrolled(&c, 1, Duration::from_secs(3600));
    let step = c.clock.step;
    // Spoken to at 1.5 s: idle from 3.55 s on.
    pings_until(&c, &conn, ms(1_500)).await;
    conn.liveness.saw_client();
    pings_until(&c, &conn, ms(3_500)).await;
    assert_eq!(conn.close_code(), None, "not idle before its deadline");
    tokio::time::advance(step).await;
    c.clock.sweep(&c, Instant::now());
    assert_eq!(conn.close_code(), Some(close::NORMAL));
    assert_eq!(c.clock.len(), 0, "a closed connection leaves the wheel");
}

/// A token's expiry closes with 1008 at the first step at or after it,
/// pings or not in between.
#[tokio::test(start_paused = true)]
async fn an_expired_token_is_closed_with_1008() {
    let c = config(ms(800), Duration::from_secs(3600));
    let (conn, _rx) = enrolled(&c, 1, ms(1_234));
    let pings = pings_until(&c, &conn, ms(1_200)).await;
    assert_eq!(pings.len(), 1, "pinged until then: {pings:?}");
    assert_eq!(conn.close_code(), None);
    pings_until(&c, &conn, ms(1_300)).await;
    assert_eq!(conn.close_code(), Some(close::POLICY));
}

/// Ended connections, and connections closed by anything else (a drain,
/// a full queue), leave the wheel when their step comes, and only they:
/// the others stay on it, and a close's code is left as it was.
#[tokio::test(start_paused = true)]
async fn ended_and_closed_connections_leave_the_wheel() {
    let c = config(ms(800), Duration::from_secs(3600));
    let mut conns: Vec<_> = (1..=10)
        .map(|id| enrolled(&c, id, Duration::from_secs(3600)))
        .collect();
    assert_eq!(c.clock.len(), 10);
    drop(conns.split_off(5));
    let (drained, _rx) = conns.pop().expect("five left");
    drained.close(close::DRAINING);
    assert_eq!(c.clock.len(), 10, "still filed");
    pings_until(&c, &conns[0].0, ms(1_000)).await;
    assert_eq!(c.clock.len(), 4);
    assert_eq!(drained.close_code(), Some(close::DRAINING));
}

/// A sweep that comes late (the clock's task starved) catches up on every
/// step it missed, in order: the ping due meanwhile is found, and the
/// entry is filed again ahead of now.
#[tokio::test(start_paused = true)]
async fn a_late_sweep_catches_up() {
    let c = config(ms(800), Duration::from_secs(3600));
    let (conn, _rx) = enrolled(&c, 1, Duration::from_secs(3600));
    tokio::time::advance(ms(2_000)).await;
    conn.liveness.saw_client();
    c.clock.sweep(&c, Instant::now());
    assert!(conn.take_ping(), "a ping fell due");
    assert_eq!(conn.close_code(), None);
    assert_eq!(c.clock.len(), 1);
    // On time again: the next pings on the same steps as before, a
    // heartbeat apart (the first at 600 ms, so 2.2, 3.0 and 3.8 s).
    let pings = pings_until(&c, &conn, ms(4_000)).await;
    assert_eq!(pings, [ms(2_200), ms(3_000), ms(3_800)]);
}
