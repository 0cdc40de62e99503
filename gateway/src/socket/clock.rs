//! The connections' clock: one task keeps every connection's timers (its
//! heartbeat pings, its idle timeout, its token's expiry) on one wheel,
//! instead of a timer in each connection's writer.
//!
//! A tokio timer lives in the future that waits on it, about 100 bytes
//! with its waker and its links in the runtime's wheel, and every idle
//! connection's writer carried one, and a close signal besides, as the
//! waiting state of its task. Here a connection is a 16-byte entry in the
//! slot of the step its next deadline falls in; the clock's task wakes once
//! a step, takes that slot's entries, and for each: closes the connection
//! with 1008 once its token has expired or with 1000 once its client has
//! been silent for the idle timeout, or tells its writer that a ping is
//! due (a flag on the handle and a wake-up, [`ConnHandle::ping_due`]);
//! then files it again under its next deadline. The writer waits only
//! for its queue, which a close, a due ping or a frame wakes.
//!
//! Steps are [`PING_GRID`] long (shorter with a heartbeat of under
//! 800 ms, as in tests), counted from the gateway's start. Pings fall due
//! on a step, never later than one heartbeat after the one before (after
//! a sweep that came late, the next may come sooner). The idle timeout
//! and the expiry close at the first step at or after their moment, so
//! never early and at most a step late; not the idle timeout while the
//! writer waits for the client to read, though: the write's own bound
//! decides then, and the client is a slow consumer (4009), as before the
//! clock. A connection that has ended leaves its entry behind until the
//! entry's step comes (at most a heartbeat): the entry holds the handle
//! weakly, which keeps the handle's allocation, not what it holds.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::SocketConfig;
use crate::close;
use crate::handle::ConnHandle;
use crate::sync::lock;

/// Coarsest step of the clock. Pings due in the same step are written in
/// one wake-up of the clock's task instead of one wake-up each (at 10,000
/// connections, 400 a second); a step's pings go out together: at 100,000
/// connections on one gateway, about 400, a few milliseconds of writes.
pub(super) const PING_GRID: Duration = Duration::from_millis(100);

/// Most slots on the wheel: an hour of 100 ms steps. Only a heartbeat
/// longer than that (set from code) needs more; its entries are looked at
/// once the wheel comes round, and filed again.
const MAX_SLOTS: u64 = 36_000;

/// When a connection's first ping is due: somewhere between half the
/// heartbeat and all of it, then every heartbeat. Connections made
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

/// The wheel of every connection's next deadline (see the module's docs).
#[derive(Debug)]
pub struct Clock {
    /// How long a step is: [`PING_GRID`], or an eighth of a shorter
    /// heartbeat.
    step: Duration,
    /// Whole steps in a heartbeat (at least 8).
    heartbeat_steps: u64,
    wheel: Mutex<Wheel>,
}

#[derive(Debug)]
struct Wheel {
    /// Entries by the step they are due at, modulo the slots' count: every
    /// entry is due within the slots' count of steps after `swept`, so a
    /// slot holds the entries of exactly one step.
    slots: Box<[Vec<Entry>]>,
    /// The last step whose slot was taken.
    swept: u64,
}

/// One connection on the wheel.
#[derive(Debug)]
struct Entry {
    conn: Weak<ConnHandle>,
    /// The step its next ping is due at.
    ping_at: u64,
}

impl Clock {
    /// A clock for connections pinged every `heartbeat`.
    pub fn new(heartbeat: Duration) -> Self {
        let step = PING_GRID.min(heartbeat / 8).max(Duration::from_nanos(1));
        let heartbeat_steps = steps(heartbeat, step).max(1);
        // Room for a whole heartbeat ahead of the step being swept.
        let slots =
            usize::try_from(heartbeat_steps.saturating_add(2).min(MAX_SLOTS)).unwrap_or(usize::MAX);
        Clock {
            step,
            heartbeat_steps,
            wheel: Mutex::new(Wheel {
                slots: (0..slots).map(|_| Vec::new()).collect(),
                swept: 0,
            }),
        }
    }

    /// Puts a new connection on the wheel: its first ping is due at
    /// [`first_ping`].
    pub(super) fn enrol(&self, config: &SocketConfig, conn: &Arc<ConnHandle>) {
        let now = Instant::now();
        let ping_at = self.step_of(config, now + first_ping(config.heartbeat, conn.id));
        let entry = Entry {
            conn: Arc::downgrade(conn),
            ping_at,
        };
        let due = self.due(config, conn, &entry);
        self.file(&mut lock(&self.wheel), due, entry);
    }

    /// The clock's task: one sweep a step, for as long as it is polled.
    pub async fn run(config: Arc<SocketConfig>) {
        let clock = &config.clock;
        let mut tick = tokio::time::interval_at(config.started + clock.step, clock.step);
        // A late sweep catches up on every step it missed by itself.
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            clock.sweep(&config, Instant::now());
        }
    }

    /// Handles every entry due at a step up to `now`'s, in step order.
    pub(super) fn sweep(&self, config: &SocketConfig, now: Instant) {
        let last = self.step_of(config, now);
        loop {
            let (at, due) = {
                let mut wheel = lock(&self.wheel);
                if wheel.swept >= last {
                    return;
                }
                wheel.swept += 1;
                let at = wheel.swept;
                let slot = slot(&wheel, at);
                (at, std::mem::take(&mut wheel.slots[slot]))
            };
            let mut again = Vec::with_capacity(due.len());
            for mut entry in due {
                let Some(conn) = entry.conn.upgrade() else {
                    continue;
                };
                if conn.close_code().is_some() {
                    // Closing: its writer finishes within its own bounds.
                    continue;
                }
                if now >= conn.liveness.expires_at() {
                    conn.close(close::POLICY);
                    continue;
                }
                if now >= conn.liveness.last_seen() + config.idle_timeout
                    && !conn.writer_waits_on_socket()
                {
                    conn.close(close::NORMAL);
                    continue;
                }
                if at >= entry.ping_at {
                    conn.ping_due();
                    entry.ping_at = at.saturating_add(self.heartbeat_steps);
                }
                again.push((self.due(config, &conn, &entry), entry));
            }
            if !again.is_empty() {
                let mut wheel = lock(&self.wheel);
                for (due, entry) in again {
                    self.file(&mut wheel, due, entry);
                }
            }
        }
    }

    /// The step an entry is next due at: its ping's, or the first that
    /// begins at or after its token's expiry or its idle deadline,
    /// whichever is first.
    fn due(&self, config: &SocketConfig, conn: &ConnHandle, entry: &Entry) -> u64 {
        let idle_at = conn.liveness.last_seen() + config.idle_timeout;
        let first = conn.liveness.expires_at().min(idle_at);
        let since = first.saturating_duration_since(config.started);
        let step_at_or_after = steps(since + self.step - Duration::from_nanos(1), self.step);
        entry.ping_at.min(step_at_or_after)
    }

    /// Files `entry` under step `due`: no sooner than the next step to be
    /// swept, no later than the wheel reaches (it is looked at then and
    /// filed again).
    fn file(&self, wheel: &mut Wheel, due: u64, entry: Entry) {
        let horizon = wheel.swept.saturating_add(wheel.slots.len() as u64 - 1);
        let due = due.clamp(wheel.swept + 1, horizon);
        let slot = slot(wheel, due);
        wheel.slots[slot].push(entry);
    }

    /// The step `at` falls in, counted from the gateway's start (the last
    /// step that began at or before it).
    fn step_of(&self, config: &SocketConfig, at: Instant) -> u64 {
        steps(at.saturating_duration_since(config.started), self.step)
    }

    /// Connections on the wheel, ended ones not yet swept included (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.wheel).slots.iter().map(Vec::len).sum()
    }
}

/// The slot of `step`.
fn slot(wheel: &Wheel, step: u64) -> usize {
    usize::try_from(step % wheel.slots.len() as u64).unwrap_or(0)
}

/// Whole `step`s in `d`.
fn steps(d: Duration, step: Duration) -> u64 {
    u64::try_from(d.as_nanos() / step.as_nanos().max(1)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
