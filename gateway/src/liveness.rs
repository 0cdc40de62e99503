//! When a connection's client last spoke, for the idle timeout.
//!
//! The reader stamps the time of every client frame (one relaxed store, no
//! timer armed per frame); the connections' clock reads it when the
//! connection's step comes. While the reader runs a command it does not read the client's
//! frames (pongs included), so it marks itself busy for the command and the
//! client's silence meanwhile proves nothing. Stored in the connection
//! handle so an idle connection needs no extra allocation; only the socket
//! layer uses it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// `seen_ms` while the reader is running a command.
const BUSY: u64 = u64::MAX;

/// A connection's clock: opening time, token expiry and last client frame.
#[derive(Debug)]
pub struct Liveness {
    /// When the connection opened; `seen_ms` counts from here.
    opened: Instant,
    /// When the token expires (leeway included): the connections' clock
    /// closes with 1008.
    expires_at: Instant,
    /// When the client last sent a frame, in milliseconds after `opened`,
    /// or [`BUSY`].
    seen_ms: AtomicU64,
}

impl Liveness {
    pub fn new(expires_at: Instant) -> Self {
        Liveness {
            opened: Instant::now(),
            expires_at,
            seen_ms: AtomicU64::new(0),
        }
    }

    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// Notes that the client just sent a frame (or that the reader is ready
    /// for its next one).
    pub fn saw_client(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(BUSY - 1);
        self.seen_ms.store(ms.min(BUSY - 1), Ordering::Relaxed);
    }

    /// Notes that the reader is running a command until the next
    /// [`Liveness::saw_client`].
    pub fn command_started(&self) {
        self.seen_ms.store(BUSY, Ordering::Relaxed);
    }

    /// When the client last sent a frame (or the connection opened); now
    /// while the reader is running a command.
    pub fn last_seen(&self) -> Instant {
        match self.seen_ms.load(Ordering::Relaxed) {
            BUSY => Instant::now(),
            ms => self.opened + Duration::from_millis(ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_running_command_holds_off_the_idle_timeout() {
        let l = Liveness::new(Instant::now() + Duration::from_secs(3600));
        let idle = Duration::from_secs(60);
        l.saw_client();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(l.last_seen() + idle < Instant::now(), "silent: idle");

        // A command that outlasts the idle timeout (its client's pongs are
        // not read meanwhile) does not make the connection idle...
        l.command_started();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(l.last_seen() + idle > Instant::now(), "busy: not idle");
        // ...and silence counts again from its end.
        l.saw_client();
        let done = Instant::now();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(l.last_seen(), done);
    }
}
