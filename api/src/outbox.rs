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

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Builder, Client, ClientLike, Config, PubsubInterface, ReconnectPolicy};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::store::{OutboxSink, Store};

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
/// Time for one Redis command (a publish batch) before it counts as failed.
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often retention purges run.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Publishes to Redis pub/sub with fred, pipelining each batch.
#[derive(Clone)]
pub struct RedisSink {
    client: Client,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink").finish_non_exhaustive()
    }
}

impl RedisSink {
    /// Creates the client and starts connecting in the background; the API
    /// does not wait for Redis (its outbox queues while Redis is away).
    pub fn connect(url: &str) -> Result<Self, ApiError> {
        let config =
            Config::from_url(url).map_err(|e| ApiError::Config(format!("REDIS_URL: {e}")))?;
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = DEFAULT_REDIS_COMMAND_TIMEOUT)
            .with_connection_config(|c| {
                c.connection_timeout = DEFAULT_REDIS_COMMAND_TIMEOUT;
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_constant(0, 250))
            .build()
            .map_err(|e| ApiError::Config(format!("redis client: {e}")))?;
        // The connection task lives as long as the client; failures are
        // retried by the reconnect policy and seen as failed publishes.
        drop(client.connect());
        Ok(RedisSink { client })
    }

    /// The underlying client, shared with the live-state reader.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Closes the connection.
    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}

#[async_trait]
impl OutboxSink for RedisSink {
    async fn publish(&self, batch: &[(String, Vec<u8>)]) -> usize {
        if !self.client.is_connected() {
            return 0;
        }
        // A batch that times out while Redis is away may still be sent by
        // fred once it reconnects, and we publish those rows again: that
        // is the at-least-once half of the outbox. Gateways drop repeats
        // (by seq, and by id for notifications).
        let pipeline = self.client.pipeline();
        for (channel, payload) in batch {
            let queued: Result<(), _> = pipeline
                .publish(channel.as_str(), bytes::Bytes::from(payload.clone()))
                .await;
            if queued.is_err() {
                return 0;
            }
        }
        let results = pipeline.try_all::<i64>().await;
        let ok = results.iter().take_while(|r| r.is_ok()).count();
        if let Some(Err(e)) = results.get(ok) {
            tracing::warn!(error = %e, published = ok, "redis publish failed, will retry");
        }
        ok
    }
}

/// Runs the publisher until `shutdown` turns true, then flushes what it can
/// within [`DEFAULT_FLUSH_TIMEOUT`].
pub async fn run_publisher(
    store: Arc<dyn Store>,
    sink: Arc<dyn OutboxSink>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = OUTBOX_BACKOFF_MIN;
    let mut next_purge = Instant::now();
    loop {
        let delay = match store
            .drain_outbox(sink.as_ref(), DEFAULT_OUTBOX_BATCH)
            .await
        {
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
    flush(store.as_ref(), sink.as_ref()).await;
}

fn next_backoff(backoff: &mut Duration) -> Duration {
    let current = *backoff;
    *backoff = (*backoff * 2).min(OUTBOX_BACKOFF_MAX);
    current
}

async fn flush(store: &dyn Store, sink: &dyn OutboxSink) {
    let deadline = Instant::now() + DEFAULT_FLUSH_TIMEOUT;
    while Instant::now() < deadline {
        match store.drain_outbox(sink, DEFAULT_OUTBOX_BATCH).await {
            Ok(d) if d.more => {}
            Ok(d) if !d.failed => return,
            Ok(_) | Err(_) => tokio::time::sleep(OUTBOX_BACKOFF_MIN).await,
        }
    }
    tracing::warn!("outbox not fully flushed at shutdown; the next start publishes the rest");
}
