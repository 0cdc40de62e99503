//! The Redis backplane (fred): one subscriber connection for pub/sub, one
//! command connection for publishing, presence scripts and the registry.
//! Presence follows `chorus_shared::presence`: entries under this
//! gateway's incarnation, a heartbeat with the registry report, and the
//! reaping of dead incarnations.
//!
//! The subscriber is pinged when it has heard nothing for a few seconds
//! (messages prove it live; idle Redis time is mostly wake-ups); a missing
//! answer counts as a dead connection: it is marked not-live (so `/readyz`
//! fails), forcibly reconnected, and on reconnect every channel is resubscribed and then
//! every community reconciled, because pub/sub loses whatever was published
//! in between. A gateway never looks healthy while silently delivering
//! nothing.
//!
//! On Redis Cluster (`REDIS_URL` of `redis-cluster://`) channels are
//! sharded: `SSUBSCRIBE` on the shard owning each channel's slot, and
//! `SPUBLISH`, so a gateway hears only the shards of its rooms and a
//! publication costs one shard. fred keeps one connection per primary and
//! follows `MOVED`/`ASK`. What it does not follow is a slot moving while
//! the connections stay up: Redis then ends the sharded subscriptions of
//! that slot with an `SUNSUBSCRIBE` push that fred swallows. So the
//! topology is checked every [`CLUSTER_TOPOLOGY_CHECK`], and any change of
//! a slot's owner (a migration, a replica promoted) resubscribes every
//! channel on its owner now and reconciles every community, as a
//! reconnect does.
//!
//! The command connection's task (fred's router: it writes commands and
//! reads their replies) runs on a thread of its own ([`CommandThread`]),
//! not among the connection tasks. When a room fills up, thousands of
//! writer tasks are runnable at once and the cooperative run queue is
//! seconds deep; a reply read only after that counted as a timed-out
//! command, which makes presence doubtful and renews all of it. On its own
//! thread the router gets its turns from the kernel's preemptive
//! scheduler, replies are read as they come, and a command times out only
//! when Redis is slow. The subscriber stays among the connection tasks: its
//! messages feed them, and Redis holds what they cannot take yet.
//!
//! Kept in one file on purpose: it is the whole [`Backplane`] trait against
//! Redis, method for method beside its in-process double (`memory.rs`),
//! and its pieces share the two connections and the incarnation state.
//! Keeping the subscriptions whole (restores, the cluster's slot map and
//! per-shard pings) is in `subscriptions.rs`; the heartbeat (registry
//! report, presence heartbeat and the look for dead gateways, one round
//! trip) in `heartbeat.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use chorus_shared::envelope::community_channel;
use chorus_shared::presence::{
    ADD_SCRIPT, GATEWAY_IDS_KEY, HOLDERS_KEY, JOIN_SCRIPT, LEAVE_SCRIPT, REAP_SCRIPT, gateway_key,
    holder_key, holder_rooms_key, holder_users_key, users_key,
};
use chorus_shared::protocol::GatewayStatus;
use fred::clients::{Pipeline, SubscriberClient};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::heartbeat::Holders;
use super::incarnation::Incarnation;
use super::subscriptions::SlotMap;
use super::{
    Added, Announce, Announced, Backplane, BackplaneSink, PresenceJoin, PresenceLeave, Reaped,
};
use crate::config::{
    BACKPLANE_PING_INTERVAL, BACKPLANE_PING_TIMEOUT, BACKPLANE_QUIET_BEFORE_PING, Liveness,
};
use crate::error::GatewayError;

/// Capacity of fred's pub/sub broadcast buffer between the socket and our
/// dispatcher. Overflow is detected (lag) and triggers a resync, so this
/// only needs to absorb bursts: 16k messages is ~100 ms at 150k msg/s.
const INBOUND_BUFFER: usize = 16 * 1024;

/// Communities added or reaped per pipeline: large enough that a gateway
/// with 100,000 (room, user) pairs renews in a few round trips, small
/// enough that one pipeline's reply stays small.
const PRESENCE_PIPELINE: usize = 1000;

/// Timeout of backplane commands (publish, presence, registry).
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A thread with a single-threaded runtime of its own, for the command
/// connection's task (see the module's docs). It ends on
/// [`CommandThread::stop`] or when the last backplane clone is dropped.
struct CommandThread {
    runtime: tokio::runtime::Handle,
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl CommandThread {
    fn start() -> Result<Self, GatewayError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("chorus-redis-cmd".into())
            .spawn(move || {
                // Ends on `stop` or when the sender is dropped.
                runtime.block_on(async move { drop(stopped.await) });
            })?;
        Ok(CommandThread {
            runtime: handle,
            stop: std::sync::Mutex::new(Some(stop)),
        })
    }

    fn stop(&self) {
        let stop = crate::sync::lock(&self.stop).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
    }
}

/// Redis implementation of [`Backplane`].
#[derive(Clone)]
pub struct RedisBackplane {
    pub(super) sub: SubscriberClient,
    pub(super) cmd: Client,
    /// Where `cmd`'s connection task runs.
    cmd_thread: Arc<CommandThread>,
    /// `REDIS_URL` names a Redis Cluster: sharded pub/sub.
    pub(super) cluster: bool,
    /// Redis Cluster: the slot map (ranges and their primaries) as it was
    /// when the subscriptions were last restored, for the topology watch
    /// to compare against.
    pub(super) slot_map: Arc<std::sync::Mutex<Option<SlotMap>>>,
    /// Set by `quit`: every background task of this backplane ends.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    pub(super) live: Arc<AtomicBool>,
    /// Messages the subscriber has received: while it grows, the
    /// connection is proven live without a ping.
    heard: Arc<AtomicU64>,
    /// A channel of this process's own (one Redis only), which each
    /// heartbeat publishes to: an idle subscriber hears it every heartbeat
    /// and is never pinged while the command connection works.
    pub(super) health_channel: Arc<str>,
    pub(super) incarnation: Arc<Incarnation>,
    /// The presence holders as the last heartbeat saw them.
    pub(super) holders: Arc<std::sync::Mutex<Holders>>,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("gateway_id", &self.incarnation.gateway_id())
            .field("cluster", &self.cluster)
            .field("live", &self.is_live())
            .finish_non_exhaustive()
    }
}

pub(super) fn redis_err(e: Error) -> GatewayError {
    GatewayError::Backplane(e.to_string())
}

impl RedisBackplane {
    /// Creates both clients and starts connecting in the background.
    pub fn new(url: &str, gateway_id: &str, liveness: Liveness) -> Result<Self, GatewayError> {
        chorus_shared::config::check_redis_url(url).map_err(GatewayError::Config)?;
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
                    // Small commands, many in flight at once: without it
                    // one waits for the previous one's acknowledgement.
                    c.tcp.nodelay = Some(true);
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
        let cmd_thread = CommandThread::start()?;
        {
            // fred spawns the connection task on the runtime entered here.
            let _on_thread = cmd_thread.runtime.enter();
            drop(cmd.connect());
        }
        Ok(RedisBackplane {
            sub,
            cmd,
            cmd_thread: Arc::new(cmd_thread),
            cluster: chorus_shared::config::redis_is_cluster(url),
            slot_map: Arc::default(),
            stop: Arc::new(tokio::sync::watch::channel(false).0),
            live: Arc::new(AtomicBool::new(false)),
            heard: Arc::default(),
            health_channel: format!("chorus:health:{}", Uuid::new_v4().simple()).into(),
            incarnation: Arc::new(Incarnation::new(gateway_id, liveness)),
            holders: Arc::default(),
        })
    }

    /// Runs a background task until [`Backplane::quit`]: the loops below
    /// never end by themselves (each holds a client, so its channels never
    /// close), and shutdown must reach them.
    fn spawn_until_quit(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => {}
                () = task => {}
            }
        });
    }

    /// Connects the subscriber and starts the dispatch and health tasks.
    fn start_tasks(&self, sink: Arc<dyn BackplaneSink>) {
        let mut messages = self.sub.message_rx();
        let mut reconnects = self.sub.reconnect_rx();
        drop(self.sub.connect());

        let dispatch_sink = sink.clone();
        let heard = self.heard.clone();
        let health = self.health_channel.clone();
        self.spawn_until_quit(async move {
            loop {
                match messages.recv().await {
                    Ok(m) => {
                        heard.fetch_add(1, Ordering::Relaxed);
                        if *m.channel == *health {
                            continue;
                        }
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

        // Every (re)connection: subscriptions are restored, and only then
        // is what was published meanwhile recovered by a resync (the other
        // way round, events published between the two would be missed).
        let this = self.clone();
        let resync_sink = sink.clone();
        self.spawn_until_quit(async move {
            while let Ok(_) | Err(RecvError::Lagged(_)) = reconnects.recv().await {
                metrics::counter!("chorus_gateway_backplane_reconnects_total").increment(1);
                this.restore(resync_sink.as_ref(), None).await;
            }
        });

        if self.cluster {
            let this = self.clone();
            self.spawn_until_quit(async move { this.watch_topology(sink).await });
        }

        let this = self.clone();
        let live = self.live.clone();
        self.spawn_until_quit(async move {
            let sub = &this.sub;
            let mut tick = tokio::time::interval(BACKPLANE_PING_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut silent_shards = 0;
            let (mut heard_before, mut proven) = (0, None::<tokio::time::Instant>);
            let mut health_subscribed = this.cluster;
            loop {
                tick.tick().await;
                if !health_subscribed && sub.is_connected() {
                    // Tracked by fred from now on, so restored with the rest.
                    health_subscribed = sub.subscribe(&*this.health_channel).await.is_ok();
                }
                let heard_now = this.heard.load(Ordering::Relaxed);
                if heard_now != heard_before {
                    (heard_before, proven) = (heard_now, Some(tokio::time::Instant::now()));
                }
                let quiet = proven.is_none_or(|at| at.elapsed() >= BACKPLANE_QUIET_BEFORE_PING);
                let ok = if this.cluster {
                    let (answered, silent) = this.ping_shards().await;
                    if silent != silent_shards {
                        tracing::warn!(silent, answered, "redis cluster shards not answering");
                        silent_shards = silent;
                    }
                    // Live while any shard answers. A shard that does not
                    // is every gateway's trouble alike (its rooms wait for
                    // its failover or return); turning every gateway
                    // unready would only refuse clients everywhere.
                    sub.is_connected() && answered > 0
                } else if !quiet {
                    sub.is_connected()
                } else {
                    // A ping goes out (and is counted) only on a connection.
                    let answered = sub.is_connected() && {
                        metrics::counter!("chorus_gateway_backplane_pings_total").increment(1);
                        matches!(
                            tokio::time::timeout(BACKPLANE_PING_TIMEOUT, sub.ping::<Value>(None))
                                .await,
                            Ok(Ok(_))
                        )
                    };
                    if answered {
                        proven = Some(tokio::time::Instant::now());
                    }
                    answered
                };
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

    async fn script(
        &self,
        script: &str,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, GatewayError> {
        self.cmd
            .eval::<Vec<Value>, _, _, _>(script, keys, args)
            .await
            .map_err(redis_err)
    }

    /// Registers a new incarnation: its heartbeat key first, then its place
    /// in the holders set, so a reaper never finds it listed but keyless.
    async fn register(&self, name: Arc<str>) -> Result<(), GatewayError> {
        let set: Value = self
            .cmd
            .set(
                holder_key(&name),
                self.incarnation.gateway_id(),
                Some(Expiration::PX(millis(self.incarnation.liveness().ttl))),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(redis_err)?;
        if set.is_null() {
            return Err(GatewayError::Backplane(format!(
                "presence incarnation {name} already exists"
            )));
        }
        self.cmd
            .sadd::<(), _, _>(HOLDERS_KEY, &*name)
            .await
            .map_err(redis_err)
    }

    /// The incarnation to write under (registered on first use).
    async fn writable(&self) -> Result<Arc<str>, GatewayError> {
        self.incarnation.writable(|name| self.register(name)).await
    }

    /// Runs a join or leave script under `name`, after adding the community
    /// to the incarnation's index when it is not there yet (first, so a
    /// reaper that finds an entry finds its community listed too).
    async fn write(
        &self,
        script: &str,
        name: &str,
        community: Uuid,
        user: &str,
        announce: Option<&Announce>,
    ) -> Result<Vec<Value>, GatewayError> {
        let keys = vec![users_key(&community), holder_users_key(&community, name)];
        let mut args = vec![Value::from(user)];
        if let Some(a) = announce {
            let publish = if self.cluster { "SPUBLISH" } else { "PUBLISH" };
            args.extend([
                Value::from(a.max_online.to_string()),
                Value::from(publish),
                Value::from(community_channel(&community)),
                Value::Bytes(a.envelope.clone()),
            ]);
        }
        let r = if self.incarnation.unindexed(name, community) {
            match self
                .cmd
                .sadd::<(), _, _>(holder_rooms_key(name), community.to_string())
                .await
            {
                Ok(()) => {
                    self.incarnation.indexed(name, community);
                    self.script(script, keys, args).await
                }
                Err(e) => Err(redis_err(e)),
            }
        } else {
            self.script(script, keys, args).await
        };
        if r.is_err() {
            self.incarnation.doubt();
        }
        r
    }

    /// Runs `script` once per (keys, args), each routed by its first key
    /// (a script's keys share one slot), and answers each call's result in
    /// order. On one Redis the calls go as one pipeline. On Redis Cluster
    /// they go as concurrent commands instead: fred 10.1 fails a pipeline
    /// holding `EVAL` there ("Too many failed write attempts"), and its
    /// connections batch concurrent commands anyway.
    async fn eval_many(
        &self,
        script: &str,
        calls: Vec<(Vec<String>, Vec<String>)>,
    ) -> Result<Vec<Result<Value, Error>>, GatewayError> {
        if self.cluster {
            let calls = calls
                .into_iter()
                .map(|(keys, args)| self.cmd.eval::<Value, _, _, _>(script, keys, args));
            return Ok(futures_util::future::join_all(calls).await);
        }
        let n = calls.len();
        let p = self.cmd.pipeline();
        for (keys, args) in calls {
            queue_eval(&p, script, keys, args).await?;
        }
        let mut results = p.try_all::<Value>().await;
        // A pipeline that failed as a whole answers one error: every call
        // failed with it.
        if results.len() < n {
            let e = results
                .pop()
                .and_then(Result::err)
                .unwrap_or_else(|| Error::new(ErrorKind::Unknown, "no reply"));
            results = vec![Err(e); n];
        }
        Ok(results)
    }

    /// Reaps one incarnation's entries community by community (pipelined
    /// in chunks), then forgets the incarnation: its index and its place in
    /// the holders set. When a community fails the incarnation is kept, to
    /// be reaped again once the lock expires; reaping twice is harmless.
    pub(super) async fn reap(&self, name: &str) -> Result<Vec<Reaped>, GatewayError> {
        let rooms: Vec<String> = self
            .cmd
            .smembers(holder_rooms_key(name))
            .await
            .map_err(redis_err)?;
        let rooms: Vec<Uuid> = rooms.iter().filter_map(|r| r.parse().ok()).collect();
        let mut out = Vec::with_capacity(rooms.len());
        let mut complete = true;
        for chunk in rooms.chunks(PRESENCE_PIPELINE) {
            let calls = chunk
                .iter()
                .map(|community| {
                    (
                        vec![users_key(community), holder_users_key(community, name)],
                        Vec::new(),
                    )
                })
                .collect();
            for (community, r) in chunk.iter().zip(self.eval_many(REAP_SCRIPT, calls).await?) {
                match r {
                    Ok(v) => {
                        let (gone, online) = list_and_count(v);
                        out.push(Reaped {
                            community: *community,
                            gone,
                            online,
                        });
                    }
                    Err(e) => {
                        complete = false;
                        tracing::debug!(%community, error = %e, "presence reap failed");
                    }
                }
            }
        }
        if complete {
            let p = self.cmd.pipeline();
            let _: () = p.del(holder_rooms_key(name)).await.map_err(redis_err)?;
            let _: () = p.srem(HOLDERS_KEY, name).await.map_err(redis_err)?;
            p.all::<Value>().await.map_err(redis_err)?;
        }
        Ok(out)
    }
}

/// Queues an `EVAL` on a pipeline: fred's pipelines have no Lua
/// interface, so this is the same command spelled out, routed by its first
/// key (every script's keys share one slot).
async fn queue_eval(
    p: &Pipeline<Client>,
    script: &str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<(), GatewayError> {
    let mut all: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(script.into());
    all.push(i64::try_from(keys.len()).unwrap_or(i64::MAX).into());
    all.extend(keys.into_iter().map(Value::from));
    all.extend(args.into_iter().map(Value::from));
    let eval = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
    p.custom::<(), Value>(eval, all).await.map_err(redis_err)
}

/// Milliseconds of a duration, for Redis.
pub(super) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn int(v: Option<&Value>) -> u64 {
    v.and_then(|v| v.as_u64()).unwrap_or(0)
}

fn signed(v: Option<&Value>) -> i64 {
    v.and_then(|v| v.as_i64()).unwrap_or(0)
}

/// Reads a `{list, count}` script reply.
fn list_and_count(v: Value) -> (Vec<String>, u64) {
    let mut parts = match v {
        Value::Array(parts) => parts.into_iter(),
        _ => Vec::new().into_iter(),
    };
    let list = match parts.next() {
        Some(Value::Array(items)) => items.into_iter().filter_map(|v| v.into_string()).collect(),
        _ => Vec::new(),
    };
    (list, int(parts.next().as_ref()))
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn start(&self, sink: Arc<dyn BackplaneSink>) {
        self.start_tasks(sink);
    }

    async fn quit(&self) {
        self.stop.send_replace(true);
        let _ = self.sub.quit().await;
        let _ = self.cmd.quit().await;
        self.cmd_thread.stop();
    }

    async fn subscribe(&self, channel: &str) -> Result<(), GatewayError> {
        self.subscribe_many(&[channel.to_owned()])
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), GatewayError> {
        if self.cluster {
            self.sub.sunsubscribe(channel).await
        } else {
            self.sub.unsubscribe(channel).await
        }
        .map_err(redis_err)
    }

    /// One `SUBSCRIBE` for them all on one Redis, then a `PING` on the
    /// same connection: fred answers a `SUBSCRIBE` once it is sent (Redis's
    /// confirmations come out of band), and the ping's answer, which Redis
    /// gives after it applied the `SUBSCRIBE`, is what says every channel
    /// is live (a room's starting point relies on it). On a cluster
    /// `SSUBSCRIBE`, which fred does answer with Redis's confirmation,
    /// takes the channels of one slot only: one each, sent together, each
    /// with its own outcome.
    async fn subscribe_many(&self, channels: &[String]) -> Vec<Result<(), GatewayError>> {
        if channels.is_empty() {
            return Vec::new();
        }
        if self.cluster {
            let each = channels.iter().map(|c| self.sub.ssubscribe(c.as_str()));
            return futures_util::future::join_all(each)
                .await
                .into_iter()
                .map(|r| r.map_err(redis_err))
                .collect();
        }
        let applied = match self.sub.subscribe(channels.to_vec()).await {
            Ok(()) => self.sub.ping::<Value>(None).await.map(drop),
            Err(e) => Err(e),
        }
        .map_err(redis_err);
        vec![applied; channels.len()]
    }

    async fn unsubscribe_many(&self, channels: &[String]) -> Result<(), GatewayError> {
        // An empty UNSUBSCRIBE would unsubscribe everything.
        if channels.is_empty() {
            return Ok(());
        }
        if self.cluster {
            let each = channels.iter().map(|c| self.sub.sunsubscribe(c.as_str()));
            let mut first = Ok(());
            for r in futures_util::future::join_all(each).await {
                if let Err(e) = r
                    && first.is_ok()
                {
                    first = Err(redis_err(e));
                }
            }
            first
        } else {
            self.sub
                .unsubscribe(channels.to_vec())
                .await
                .map_err(redis_err)
        }
    }

    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), GatewayError> {
        if self.cluster {
            self.cmd.spublish::<(), _, _>(channel, payload).await
        } else {
            self.cmd.publish::<(), _, _>(channel, payload).await
        }
        .map_err(redis_err)
    }

    fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    async fn presence_join(
        &self,
        community: Uuid,
        user: &str,
        announce: Option<&Announce>,
    ) -> Result<PresenceJoin, GatewayError> {
        let name = self.writable().await?;
        let r = self
            .write(JOIN_SCRIPT, &name, community, user, announce)
            .await?;
        Ok(PresenceJoin {
            first: int(r.first()) == 1,
            online: int(r.get(1)),
            announced: Announced::from_script(signed(r.get(2))),
        })
    }

    async fn presence_leave(
        &self,
        community: Uuid,
        user: &str,
        announce: Option<&Announce>,
    ) -> Result<PresenceLeave, GatewayError> {
        let name = self.writable().await?;
        let r = self
            .write(LEAVE_SCRIPT, &name, community, user, announce)
            .await?;
        Ok(PresenceLeave {
            gone: int(r.first()) == 1,
            online: int(r.get(1)),
            announced: Announced::from_script(signed(r.get(2))),
        })
    }

    fn presence_needs_renewal(&self) -> bool {
        self.incarnation.needs_renewal()
    }

    async fn presence_renew(&self) -> Result<Option<Arc<str>>, GatewayError> {
        self.incarnation.renew(|name| self.register(name)).await
    }

    async fn presence_add(
        &self,
        batch: &[(Uuid, Vec<Arc<str>>)],
    ) -> Result<Vec<Added>, GatewayError> {
        let name = self.writable().await?;
        let mut out = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(PRESENCE_PIPELINE) {
            let rooms: Vec<String> = chunk.iter().map(|(c, _)| c.to_string()).collect();
            // The index first: without it a reaper would miss these rooms.
            if let Err(e) = self
                .cmd
                .sadd::<(), _, _>(holder_rooms_key(&name), rooms)
                .await
            {
                self.incarnation.doubt();
                return Err(redis_err(e));
            }
            let calls = chunk
                .iter()
                .map(|(community, users)| {
                    (
                        vec![users_key(community), holder_users_key(community, &name)],
                        users.iter().map(|u| u.to_string()).collect(),
                    )
                })
                .collect();
            let results = self.eval_many(ADD_SCRIPT, calls).await?;
            for ((community, _), r) in chunk.iter().zip(results) {
                match r {
                    Ok(v) => {
                        self.incarnation.indexed(&name, *community);
                        let (first, online) = list_and_count(v);
                        out.push(Added {
                            community: *community,
                            first,
                            online,
                        });
                    }
                    Err(e) => {
                        self.incarnation.doubt();
                        tracing::debug!(%community, error = %e, "presence add failed");
                    }
                }
            }
        }
        Ok(out)
    }

    async fn presence_retire(&self, incarnation: &str) -> Result<(), GatewayError> {
        self.cmd
            .del::<(), _>(holder_key(incarnation))
            .await
            .map_err(redis_err)
    }

    async fn presence_reap_dead(&self) -> Result<Vec<Reaped>, GatewayError> {
        self.reap_dead().await
    }

    async fn presence_withdraw(&self) -> Result<Vec<Reaped>, GatewayError> {
        let Some(name) = self.incarnation.close() else {
            return Ok(Vec::new());
        };
        let reaped = self.reap(&name).await?;
        self.presence_retire(&name).await?;
        Ok(reaped)
    }

    async fn presence_online(&self, community: Uuid) -> Result<Vec<String>, GatewayError> {
        self.cmd
            .hkeys(users_key(&community))
            .await
            .map_err(redis_err)
    }

    async fn report(&self, status: &GatewayStatus) -> Result<(), GatewayError> {
        self.heartbeat(status).await
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
