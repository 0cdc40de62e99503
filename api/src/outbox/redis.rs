//! The Redis side of the outbox publisher: [`RedisSink`] publishes each
//! batch, in one pipeline of `PUBLISH` on one Redis, and as concurrent
//! `SPUBLISH` commands on Redis Cluster (fred routes each to the shard
//! owning its channel, and a shard that does not answer fails only its
//! own). Its
//! client is also the connection the API reads live state (presence,
//! gateway registry) with.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Builder, Client, ClientLike, Config, PubsubInterface, ReconnectPolicy};
use fred::types::config::Options;

use super::{OutboxSink, Publication};
use crate::error::ApiError;

/// Time for one Redis command (a publish batch) before it counts as failed.
const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Time for one `SPUBLISH` on a Redis Cluster before its entry counts as
/// refused. A pass waits for its slowest publication, so this is what a
/// frozen shard costs the other shards' channels each time its held
/// channels are retried (at most once per hold, 50 ms growing to 1 s). A
/// healthy shard answers in well under a millisecond; a slow answer only
/// means the event is published again, which gateways drop as a repeat.
const CLUSTER_PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);

/// Publishes to Redis pub/sub with fred, pipelining each batch.
#[derive(Clone)]
pub struct RedisSink {
    client: Client,
    /// `REDIS_URL` names a Redis Cluster: sharded pub/sub.
    cluster: bool,
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
        chorus_shared::config::check_redis_url(url).map_err(ApiError::Config)?;
        let config =
            Config::from_url(url).map_err(|e| ApiError::Config(format!("REDIS_URL: {e}")))?;
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = DEFAULT_REDIS_COMMAND_TIMEOUT)
            .with_connection_config(|c| {
                c.connection_timeout = DEFAULT_REDIS_COMMAND_TIMEOUT;
                c.max_command_attempts = 1;
                // Small publishes from several tasks at once: without it
                // one waits for the previous one's acknowledgement.
                c.tcp.nodelay = Some(true);
            })
            .set_policy(ReconnectPolicy::new_constant(0, 250))
            .build()
            .map_err(|e| ApiError::Config(format!("redis client: {e}")))?;
        // The connection task lives as long as the client; failures are
        // retried by the reconnect policy and seen as failed publishes.
        drop(client.connect());
        Ok(RedisSink {
            client,
            cluster: chorus_shared::config::redis_is_cluster(url),
        })
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
    async fn publish(&self, batch: &[(String, Vec<u8>)]) -> Publication {
        if !self.client.is_connected() {
            metrics::counter!("chorus_outbox_publish_failures_total").increment(1);
            return Publication::Away;
        }
        // A batch that times out while Redis is away may still be sent by
        // fred once it reconnects, and we publish those rows again: that
        // is the at-least-once half of the outbox. Gateways drop repeats
        // (by seq, and by id for notifications).
        let results: Vec<Result<i64, fred::error::Error>> = if self.cluster {
            // One command each, sent concurrently (fred still batches
            // each shard's on its connection, in order): each has its own
            // timeout, so a shard that does not answer fails only its own
            // entries. A pipeline would time out as a whole.
            let client = self.client.with_options(&Options {
                timeout: Some(CLUSTER_PUBLISH_TIMEOUT),
                ..Options::default()
            });
            let publishes = batch.iter().map(|(channel, payload)| {
                client.spublish::<i64, _, _>(channel.as_str(), bytes::Bytes::from(payload.clone()))
            });
            futures_util::future::join_all(publishes).await
        } else {
            let pipeline = self.client.pipeline();
            for (channel, payload) in batch {
                let queued: Result<(), _> = pipeline
                    .publish(channel.as_str(), bytes::Bytes::from(payload.clone()))
                    .await;
                if queued.is_err() {
                    return Publication::Away;
                }
            }
            pipeline.try_all::<i64>().await
        };
        let failed = results.iter().filter(|r| r.is_err()).count();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            metrics::counter!("chorus_outbox_publish_failures_total").increment(1);
            tracing::warn!(error = %e, failed, of = batch.len(), "redis publish failed, will retry");
        }
        // One Redis answering nothing for the whole pipeline is away.
        if !self.cluster && (results.len() < batch.len() || failed == batch.len()) {
            return Publication::Away;
        }
        Publication::PerEntry(
            (0..batch.len())
                .map(|i| matches!(results.get(i), Some(Ok(_))))
                .collect(),
        )
    }
}
