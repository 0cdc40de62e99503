//! The Redis backplane (fred): one subscriber connection for pub/sub, one
//! command connection for publishing, presence scripts and the registry.
//!
//! The subscriber is pinged every second; a missing answer counts as a dead
//! connection: it is marked not-live (so `/readyz` fails), forcibly
//! reconnected, and on reconnect every channel is resubscribed and every
//! community reconciled, because pub/sub loses whatever was published in
//! between. A gateway never looks healthy while silently delivering nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use chorus_shared::presence::{
    GATEWAY_IDS_KEY, JOIN_SCRIPT, LEAVE_SCRIPT, REFRESH_SCRIPT, conns_key, entry, gateway_key,
    users_key,
};
use chorus_shared::protocol::GatewayStatus;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{Backplane, BackplaneSink, PresenceJoin, PresenceLeave, Refreshed};
use crate::config::{BACKPLANE_PING_INTERVAL, BACKPLANE_PING_TIMEOUT, PRESENCE_TTL, REGISTRY_TTL};
use crate::error::GatewayError;

/// Capacity of fred's pub/sub broadcast buffer between the socket and our
/// dispatcher. Overflow is detected (lag) and triggers a resync, so this
/// only needs to absorb bursts: 16k messages is ~100 ms at 150k msg/s.
const INBOUND_BUFFER: usize = 16 * 1024;

/// Communities refreshed per pipeline: large enough that a gateway with
/// 100,000 (room, user) pairs refreshes in a few round trips, small enough
/// that one pipeline's reply stays small.
const REFRESH_PIPELINE: usize = 1000;

/// Timeout of backplane commands (publish, presence, registry).
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Redis implementation of [`Backplane`].
#[derive(Clone)]
pub struct RedisBackplane {
    sub: SubscriberClient,
    cmd: Client,
    gateway_id: Arc<str>,
    live: Arc<AtomicBool>,
    /// Hash of the loaded refresh script.
    refresh_sha: Arc<std::sync::Mutex<Option<String>>>,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("gateway_id", &self.gateway_id)
            .field("live", &self.is_live())
            .finish_non_exhaustive()
    }
}

fn redis_err(e: Error) -> GatewayError {
    GatewayError::Backplane(e.to_string())
}

impl RedisBackplane {
    /// Creates both clients and starts connecting in the background.
    pub fn new(url: &str, gateway_id: &str) -> Result<Self, GatewayError> {
        let config =
            Config::from_url(url).map_err(|e| GatewayError::Config(format!("REDIS_URL: {e}")))?;
        let build = |capacity: usize| {
            Builder::from_config(config.clone())
                .with_performance_config(|p| {
                    p.default_command_timeout = COMMAND_TIMEOUT;
                    p.broadcast_channel_capacity = capacity;
                })
                .with_connection_config(|c| {
                    c.connection_timeout = COMMAND_TIMEOUT;
                    c.max_command_attempts = 1;
                })
                .set_policy(ReconnectPolicy::new_constant(0, 200))
                .clone()
        };
        let sub = build(INBOUND_BUFFER)
            .build_subscriber_client()
            .map_err(|e| GatewayError::Config(format!("redis: {e}")))?;
        let cmd = build(32)
            .build()
            .map_err(|e| GatewayError::Config(format!("redis: {e}")))?;
        drop(cmd.connect());
        Ok(RedisBackplane {
            sub,
            cmd,
            gateway_id: Arc::from(gateway_id),
            live: Arc::new(AtomicBool::new(false)),
            refresh_sha: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// Connects the subscriber and starts the dispatch and health tasks.
    fn start_tasks(&self, sink: Arc<dyn BackplaneSink>) {
        let mut messages = self.sub.message_rx();
        let mut reconnects = self.sub.reconnect_rx();
        drop(self.sub.connect());
        drop(self.sub.manage_subscriptions());

        let dispatch_sink = sink.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(m) => {
                        let payload = match m.value {
                            Value::Bytes(b) => b,
                            Value::String(s) => s.into_inner(),
                            _ => continue,
                        };
                        dispatch_sink.on_message(&m.channel, payload);
                    }
                    Err(RecvError::Lagged(n)) => {
                        metrics::counter!("chorus_gateway_backplane_lagged_total").increment(n);
                        tracing::warn!(lost = n, "backplane receiver lagged; resyncing");
                        dispatch_sink.on_resync();
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });

        // Every (re)connection: subscriptions are restored by fred; what was
        // published meanwhile is recovered by a resync.
        let resync_sink = sink;
        let live = self.live.clone();
        tokio::spawn(async move {
            while let Ok(_) | Err(RecvError::Lagged(_)) = reconnects.recv().await {
                metrics::counter!("chorus_gateway_backplane_reconnects_total").increment(1);
                live.store(true, Ordering::SeqCst);
                resync_sink.on_resync();
            }
        });

        let sub = self.sub.clone();
        let live = self.live.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BACKPLANE_PING_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let ok = sub.is_connected()
                    && matches!(
                        tokio::time::timeout(BACKPLANE_PING_TIMEOUT, sub.ping::<Value>(None)).await,
                        Ok(Ok(_))
                    );
                let was = live.swap(ok, Ordering::SeqCst);
                if ok != was {
                    metrics::gauge!("chorus_gateway_backplane_live").set(if ok {
                        1.0
                    } else {
                        0.0
                    });
                    if ok {
                        tracing::info!("backplane subscription live");
                    } else {
                        tracing::warn!("backplane subscription lost");
                    }
                }
                // Connected but not answering: a half-open connection that
                // would otherwise deliver nothing forever. (When not
                // connected, fred's reconnect policy is already at work.)
                if !ok && sub.is_connected() {
                    let _ = sub.force_reconnection().await;
                }
            }
        });
    }

    /// Loads [`REFRESH_SCRIPT`] and remembers its hash.
    async fn load_refresh_script(&self) -> Result<String, GatewayError> {
        let sha: String = self
            .cmd
            .script_load(REFRESH_SCRIPT)
            .await
            .map_err(redis_err)?;
        *self.refresh_sha.lock().unwrap_or_else(|p| p.into_inner()) = Some(sha.clone());
        Ok(sha)
    }

    /// One batch of refresh calls, one per community, sent together (the
    /// client pipelines concurrent commands on its connection). A community
    /// whose call failed is left out (its entries expire unless a later
    /// refresh works); a NOSCRIPT error is returned to reload the script.
    async fn refresh_chunk(
        &self,
        chunk: &[(Uuid, Vec<Arc<str>>)],
    ) -> Result<Vec<Refreshed>, GatewayError> {
        let known = self
            .refresh_sha
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let sha = match known {
            Some(sha) => sha,
            None => self.load_refresh_script().await?,
        };
        let ttl = PRESENCE_TTL.as_millis().to_string();
        let calls = chunk.iter().map(|(community, users)| {
            let mut args = Vec::with_capacity(users.len() + 2);
            args.push(self.gateway_id.to_string());
            args.push(ttl.clone());
            args.extend(users.iter().map(|u| u.to_string()));
            self.cmd.evalsha::<Value, _, _, _>(
                sha.as_str(),
                vec![conns_key(community), users_key(community)],
                args,
            )
        });
        let results: Vec<Result<Value, Error>> = futures_util::future::join_all(calls).await;
        let mut out = Vec::with_capacity(chunk.len());
        for ((community, _), r) in chunk.iter().zip(results) {
            match r {
                Ok(v) => out.push(refreshed(*community, v)),
                Err(e) if e.to_string().contains("NOSCRIPT") => return Err(redis_err(e)),
                Err(e) => tracing::debug!(%community, error = %e, "presence refresh failed"),
            }
        }
        Ok(out)
    }

    async fn script(
        &self,
        script: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<Value>, GatewayError> {
        self.cmd
            .eval::<Vec<Value>, _, _, _>(script, keys, args)
            .await
            .map_err(redis_err)
    }
}

fn int(v: Option<&Value>) -> u64 {
    v.and_then(|v| v.as_u64()).unwrap_or(0)
}

fn strings(v: Option<Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.into_iter().filter_map(|v| v.into_string()).collect(),
        _ => Vec::new(),
    }
}

/// Reads the `{first, gone, online}` reply of the refresh script.
fn refreshed(community: Uuid, v: Value) -> Refreshed {
    let mut parts = match v {
        Value::Array(parts) => parts.into_iter(),
        _ => Vec::new().into_iter(),
    };
    let first = strings(parts.next());
    let gone = strings(parts.next());
    let online = int(parts.next().as_ref());
    Refreshed {
        community,
        first,
        gone,
        online,
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn start(&self, sink: Arc<dyn BackplaneSink>) {
        self.start_tasks(sink);
    }

    async fn quit(&self) {
        let _ = self.sub.quit().await;
        let _ = self.cmd.quit().await;
    }

    async fn subscribe(&self, channel: &str) -> Result<(), GatewayError> {
        self.sub.subscribe(channel).await.map_err(redis_err)
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), GatewayError> {
        self.sub.unsubscribe(channel).await.map_err(redis_err)
    }

    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), GatewayError> {
        self.cmd
            .publish::<(), _, _>(channel, payload)
            .await
            .map_err(redis_err)
    }

    fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    async fn presence_join(
        &self,
        community: Uuid,
        user: &str,
    ) -> Result<PresenceJoin, GatewayError> {
        let r = self
            .script(
                JOIN_SCRIPT,
                vec![conns_key(&community), users_key(&community)],
                vec![
                    entry(user, &self.gateway_id),
                    user.to_owned(),
                    PRESENCE_TTL.as_millis().to_string(),
                ],
            )
            .await?;
        Ok(PresenceJoin {
            first: int(r.first()) == 1,
            online: int(r.get(1)),
        })
    }

    async fn presence_leave(
        &self,
        community: Uuid,
        user: &str,
    ) -> Result<PresenceLeave, GatewayError> {
        let r = self
            .script(
                LEAVE_SCRIPT,
                vec![conns_key(&community), users_key(&community)],
                vec![entry(user, &self.gateway_id), user.to_owned()],
            )
            .await?;
        Ok(PresenceLeave {
            gone: int(r.first()) == 1,
            online: int(r.get(1)),
        })
    }

    async fn presence_refresh(
        &self,
        batch: &[(Uuid, Vec<Arc<str>>)],
    ) -> Result<Vec<Refreshed>, GatewayError> {
        let mut out = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(REFRESH_PIPELINE) {
            let results = match self.refresh_chunk(chunk).await {
                Err(e) if e.to_string().contains("NOSCRIPT") => {
                    // Redis restarted and forgot the script: load it again.
                    self.load_refresh_script().await?;
                    self.refresh_chunk(chunk).await?
                }
                other => other?,
            };
            out.extend(results);
        }
        Ok(out)
    }

    async fn presence_online(&self, community: Uuid) -> Result<Vec<String>, GatewayError> {
        self.cmd
            .hkeys(users_key(&community))
            .await
            .map_err(redis_err)
    }

    async fn report(&self, status: &GatewayStatus) -> Result<(), GatewayError> {
        let json =
            serde_json::to_string(status).map_err(|e| GatewayError::Backplane(e.to_string()))?;
        let ttl = i64::try_from(REGISTRY_TTL.as_secs()).unwrap_or(15);
        let p = self.cmd.pipeline();
        let _: () = p
            .set(
                gateway_key(&status.id),
                json,
                Some(Expiration::EX(ttl)),
                None,
                false,
            )
            .await
            .map_err(redis_err)?;
        let _: () = p
            .sadd(GATEWAY_IDS_KEY, status.id.as_str())
            .await
            .map_err(redis_err)?;
        p.all::<Value>().await.map(|_| ()).map_err(redis_err)
    }

    async fn withdraw(&self, gateway_id: &str) -> Result<(), GatewayError> {
        let _: () = self
            .cmd
            .del(gateway_key(gateway_id))
            .await
            .map_err(redis_err)?;
        self.cmd
            .srem::<(), _, _>(GATEWAY_IDS_KEY, gateway_id)
            .await
            .map_err(redis_err)
    }
}
