//! The outbox publisher: moves committed events from Postgres to Redis.
//!
//! Writers wake it in-process right after commit, so an event normally
//! reaches Redis a millisecond or two after its transaction; a slow poll is
//! the fallback for events committed by other replicas or left behind by a
//! failure. The post writer publishes most posts itself, without waking it
//! (see [`direct`]); the publisher takes what that path leaves. While Redis is away publishing fails, rows stay unpublished and
//! the loop backs off; when Redis returns the backlog goes out in id order,
//! which is seq order per community. Nothing is marked published before
//! Redis accepted it, so a crash at any point loses nothing. Publication is
//! at least once: a crash between publish and mark, or a timed-out batch
//! that the Redis client still delivers after reconnecting, publishes an
//! event again, always in order; gateways drop the repeats.
//!
//! A channel whose publication fails (on Redis Cluster: its shard is
//! away) is held back for a while, from its first failed event on, while
//! the other channels keep going: one shard being away delays mostly its
//! own channels (each retry of a held channel costs the pass at most the
//! sink's per-command timeout on a cluster). Only when the backplane is
//! away as a whole does the whole loop back off.
//!
//! The publisher is its own component, apart from the [`crate::store`]:
//! [`run_publisher`] owns an [`OutboxSource`] ([`OutboxStore`] in
//! production, the Postgres side: advisory lock, unpublished rows,
//! marking (which deletes a published row), purge; in `postgres.rs`) and
//! an [`OutboxSink`] ([`RedisSink`] in production; in `redis.rs`).

mod direct;
mod postgres;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::error::ApiError;

pub use direct::{DirectEvent, DirectPublish};
pub use postgres::{OUTBOX_LOCK_KEY, OutboxStore};
pub use redis::RedisSink;

/// Most events read and published per pass: large enough to clear a
/// backlog quickly in pipelined batches, small enough to keep one
/// transaction short.
pub const OUTBOX_BATCH: i64 = 500;
/// Fallback poll for events this process was not woken for: another
/// replica's while it cannot take the lock from us, or ours while we
/// cannot take it from another.
pub const OUTBOX_POLL: Duration = Duration::from_millis(250);
/// Longest fallback poll: after each pass that found nothing waiting the
/// poll doubles, up to this. An idle poll is a statement that wakes the
/// API and Postgres; four a second were most of an idle API's CPU and a
/// share of every POST's at low rates (posts publish themselves and never
/// wake the publisher). What only the poll finds when nothing is waiting
/// (events of a replica that died between its commit and its publication,
/// in a community with no later post) waits at most this. A wake-up (a
/// commit of this process that needs the publisher) or a pass that found
/// events brings the poll back to [`OUTBOX_POLL`].
pub const OUTBOX_IDLE_POLL_MAX: Duration = Duration::from_secs(2);
/// First and largest wait after a failed pass. Capped at one second so a
/// returning Redis sees the backlog within about a second.
pub const OUTBOX_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const OUTBOX_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long shutdown keeps trying to flush the outbox.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the purge runs: often enough that idempotency records are
/// kept to within a minute of their retention, rarely enough to cost
/// nothing.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// What one [`OutboxSource::drain`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// The sink failed part-way: back off before the next pass.
    pub failed: bool,
    /// A full batch went out: more may be waiting, go again at once.
    pub more: bool,
    /// Nothing was waiting: the poll may stretch (see
    /// [`OUTBOX_IDLE_POLL_MAX`]).
    pub idle: bool,
}

impl Drained {
    /// A pass that found nothing waiting.
    pub const IDLE: Drained = Drained {
        failed: false,
        more: false,
        idle: true,
    };
}

/// Most channels held back at once after failed publications. Past it
/// the pass counts as failed as a whole and the loop backs off: with that
/// many channels failing the backplane is away, not one shard of it, and
/// the list stays small enough to send with every read.
pub const MAX_HELD_CHANNELS: usize = 10_000;

/// What a sink did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// The backplane is away as a whole: nothing went out (or nothing is
    /// known to have), and the publisher backs off.
    Away,
    /// Per entry, whether the backplane accepted it; refused entries'
    /// channels are held back while the rest go on.
    PerEntry(Vec<bool>),
}

/// Where the outbox publisher sends events; [`RedisSink`] is the one
/// implementation.
#[async_trait]
pub trait OutboxSink: Send + Sync {
    /// Publishes the batch, each channel's entries in order.
    async fn publish(&self, batch: &[(String, Vec<u8>)]) -> Publication;
}

/// Where the outbox publisher reads events from and what it keeps tidy;
/// [`OutboxStore`] is the one implementation (a trait so the loop's
/// scheduling can be tested on its own).
#[async_trait]
pub trait OutboxSource: Send + Sync {
    /// Publishes up to `max` unpublished events in order through `sink`
    /// and marks them published.
    async fn drain(&self, sink: &dyn OutboxSink, max: i64) -> Result<Drained, ApiError>;
    /// Deletes what is past its retention, and outbox rows an older
    /// version marked published instead of deleting them.
    async fn purge_expired(&self) -> Result<(), ApiError>;
}

/// Runs the publisher until `shutdown` turns true, then flushes what it can
/// within [`FLUSH_TIMEOUT`].
///
/// The retention purge is checked after every pass, before a full batch
/// sends the loop straight round again, so constant load (full batch after
/// full batch) cannot starve it: it runs at least every
/// [`PURGE_INTERVAL`] plus one pass.
pub async fn run_publisher(
    source: Arc<dyn OutboxSource>,
    sink: Arc<dyn OutboxSink>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = OUTBOX_BACKOFF_MIN;
    let mut poll = OUTBOX_POLL;
    let mut next_purge = Instant::now();
    loop {
        let pass = source.drain(sink.as_ref(), OUTBOX_BATCH).await;
        if Instant::now() >= next_purge {
            next_purge = Instant::now() + PURGE_INTERVAL;
            if let Err(e) = source.purge_expired().await {
                tracing::warn!(error = %e, "outbox purge failed");
            }
        }
        // A wake-up cuts a poll short, not a backoff after a failure.
        let (delay, wakeable) = match pass {
            Ok(d) if d.more => {
                poll = OUTBOX_POLL;
                if *shutdown.borrow() {
                    break;
                }
                continue;
            }
            Ok(d) if !d.failed => {
                backoff = OUTBOX_BACKOFF_MIN;
                let delay = poll;
                poll = if d.idle {
                    (poll * 2).min(OUTBOX_IDLE_POLL_MAX)
                } else {
                    OUTBOX_POLL
                };
                (delay, true)
            }
            Ok(_) => (next_backoff(&mut backoff), false),
            Err(e) => {
                tracing::warn!(error = %e, "outbox pass failed");
                (next_backoff(&mut backoff), false)
            }
        };
        tokio::select! {
            _ = wake.notified(), if wakeable => poll = OUTBOX_POLL,
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    flush(source.as_ref(), sink.as_ref()).await;
}

fn next_backoff(backoff: &mut Duration) -> Duration {
    let current = *backoff;
    *backoff = (*backoff * 2).min(OUTBOX_BACKOFF_MAX);
    current
}

async fn flush(source: &dyn OutboxSource, sink: &dyn OutboxSink) {
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while Instant::now() < deadline {
        match source.drain(sink, OUTBOX_BATCH).await {
            Ok(d) if d.more => {}
            Ok(d) if !d.failed => return,
            Ok(_) | Err(_) => tokio::time::sleep(OUTBOX_BACKOFF_MIN).await,
        }
    }
    tracing::warn!("outbox not fully flushed at shutdown; the next start publishes the rest");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A source whose every pass publishes a full batch and takes 100 ms:
    /// constant load that never lets the loop rest.
    #[derive(Default)]
    struct AlwaysFull {
        passes: AtomicUsize,
        purges: AtomicUsize,
    }

    /// Passes of [`AlwaysFull`] in one [`PURGE_INTERVAL`].
    const PASSES_PER_INTERVAL: usize = 600;

    #[async_trait]
    impl OutboxSource for AlwaysFull {
        async fn drain(&self, _: &dyn OutboxSink, _: i64) -> Result<Drained, ApiError> {
            tokio::time::sleep(PURGE_INTERVAL / PASSES_PER_INTERVAL as u32).await;
            self.passes.fetch_add(1, Ordering::SeqCst);
            Ok(Drained {
                more: true,
                ..Drained::default()
            })
        }

        async fn purge_expired(&self) -> Result<(), ApiError> {
            self.purges.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A source with never anything waiting; counts its passes.
    #[derive(Default)]
    struct Empty {
        passes: AtomicUsize,
    }

    #[async_trait]
    impl OutboxSource for Empty {
        async fn drain(&self, _: &dyn OutboxSink, _: i64) -> Result<Drained, ApiError> {
            self.passes.fetch_add(1, Ordering::SeqCst);
            Ok(Drained::IDLE)
        }

        async fn purge_expired(&self) -> Result<(), ApiError> {
            Ok(())
        }
    }

    struct Accepting;

    #[async_trait]
    impl OutboxSink for Accepting {
        async fn publish(&self, batch: &[(String, Vec<u8>)]) -> Publication {
            Publication::PerEntry(vec![true; batch.len()])
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_batches_do_not_starve_the_purge() {
        let source = Arc::new(AlwaysFull::default());
        let (stop, stopped) = watch::channel(false);
        let publisher = tokio::spawn(run_publisher(
            source.clone(),
            Arc::new(Accepting),
            Arc::new(Notify::new()),
            stopped,
        ));
        // Three and a half purge intervals of nothing but full batches.
        while source.passes.load(Ordering::SeqCst) < PASSES_PER_INTERVAL * 7 / 2 {
            tokio::time::sleep(PURGE_INTERVAL / PASSES_PER_INTERVAL as u32).await;
        }
        let _ = stop.send(true);
        publisher.await.expect("publisher ends");
        let purges = source.purges.load(Ordering::SeqCst);
        assert!(
            (4..=5).contains(&purges),
            "one purge at start and one per interval, got {purges}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_publisher_polls_less_and_less_until_woken() {
        let source = Arc::new(Empty::default());
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let publisher = tokio::spawn(run_publisher(
            source.clone(),
            Arc::new(Accepting),
            wake.clone(),
            stopped,
        ));
        let passes = || source.passes.load(Ordering::SeqCst);
        // Passes at 0, 0.25, 0.75, 1.75 and 3.75 s, then every 2 s: eight
        // in 9.9 s where a fixed 250 ms poll makes forty.
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert_eq!(passes(), 8);
        // A wake-up passes at once and brings the short poll back.
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(passes(), 9);
        tokio::time::sleep(OUTBOX_POLL).await;
        assert_eq!(passes(), 10);
        let _ = stop.send(true);
        publisher.await.expect("publisher ends");
    }
}
