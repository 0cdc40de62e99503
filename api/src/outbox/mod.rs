//! The outbox publisher: moves committed events from Postgres to Redis.
//!
//! Writers wake it in-process right after commit, so an event normally
//! reaches Redis a millisecond or two after its transaction; a slow poll is
//! the fallback for events committed by other replicas or left behind by a
//! failure. While Redis is away publishing fails, rows stay unpublished and
//! the loop backs off; when Redis returns the backlog goes out in id order,
//! which is seq order per community. Nothing is marked published before
//! Redis accepted it, so a crash at any point loses nothing. Publication is
//! at least once: a crash between publish and mark, or a timed-out batch
//! that the Redis client still delivers after reconnecting, publishes an
//! event again, always in order; gateways drop the repeats.
//!
//! The publisher is its own component, apart from the [`crate::store`]:
//! [`run_publisher`] owns an [`OutboxStore`] (the Postgres side: advisory
//! lock, unpublished rows, marking, retention purge; in `postgres.rs`) and
//! an [`OutboxSink`] ([`RedisSink`] in production; in `redis.rs`).

mod postgres;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use postgres::{OUTBOX_LOCK_KEY, OutboxStore};
pub use redis::RedisSink;

/// Most events read and published per pass: large enough to clear a
/// backlog quickly in pipelined batches, small enough to keep one
/// transaction short.
pub const DEFAULT_OUTBOX_BATCH: i64 = 500;
/// Fallback poll for events this process was not woken for.
pub const DEFAULT_OUTBOX_POLL: Duration = Duration::from_millis(250);
/// First and largest wait after a failed pass. Capped at one second so a
/// returning Redis sees the backlog within about a second.
pub const OUTBOX_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const OUTBOX_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long shutdown keeps trying to flush the outbox.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often retention purges run.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// What one [`OutboxStore::drain`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// The sink failed part-way: back off before the next pass.
    pub failed: bool,
    /// A full batch went out: more may be waiting, go again at once.
    pub more: bool,
}

/// Where the outbox publisher sends events; [`RedisSink`] is the one
/// implementation.
#[async_trait]
pub trait OutboxSink: Send + Sync {
    /// Publishes the batch in order; returns how many of the leading
    /// entries were published (all of them unless the backplane failed).
    async fn publish(&self, batch: &[(String, Vec<u8>)]) -> usize;
}

/// Runs the publisher until `shutdown` turns true, then flushes what it can
/// within [`DEFAULT_FLUSH_TIMEOUT`].
pub async fn run_publisher(
    store: OutboxStore,
    sink: Arc<dyn OutboxSink>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = OUTBOX_BACKOFF_MIN;
    let mut next_purge = Instant::now();
    loop {
        let delay = match store.drain(sink.as_ref(), DEFAULT_OUTBOX_BATCH).await {
            Ok(d) if d.more => continue,
            Ok(d) if !d.failed => {
                backoff = OUTBOX_BACKOFF_MIN;
                DEFAULT_OUTBOX_POLL
            }
            Ok(_) => next_backoff(&mut backoff),
            Err(e) => {
                tracing::warn!(error = %e, "outbox pass failed");
                next_backoff(&mut backoff)
            }
        };
        if Instant::now() >= next_purge {
            next_purge = Instant::now() + PURGE_INTERVAL;
            if let Err(e) = store.purge_expired().await {
                tracing::warn!(error = %e, "outbox purge failed");
            }
        }
        tokio::select! {
            _ = wake.notified(), if delay == DEFAULT_OUTBOX_POLL => {}
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    flush(&store, sink.as_ref()).await;
}

fn next_backoff(backoff: &mut Duration) -> Duration {
    let current = *backoff;
    *backoff = (*backoff * 2).min(OUTBOX_BACKOFF_MAX);
    current
}

async fn flush(store: &OutboxStore, sink: &dyn OutboxSink) {
    let deadline = Instant::now() + DEFAULT_FLUSH_TIMEOUT;
    while Instant::now() < deadline {
        match store.drain(sink, DEFAULT_OUTBOX_BATCH).await {
            Ok(d) if d.more => {}
            Ok(d) if !d.failed => return,
            Ok(_) | Err(_) => tokio::time::sleep(OUTBOX_BACKOFF_MIN).await,
        }
    }
    tracing::warn!("outbox not fully flushed at shutdown; the next start publishes the rest");
}
