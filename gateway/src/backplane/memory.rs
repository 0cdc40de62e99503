//! [`MemoryBackplane`]: the backplane inside one process, kept whole in
//! one file on purpose (why: the last paragraph).
//!
//! A [`MemoryBus`] stands for the Redis server: a broadcast channel per
//! pub/sub channel, presence entries with expiry, and the registry. Each
//! gateway attached to the bus gets its own [`MemoryBackplane`], so several
//! gateways in one process behave like gateways sharing one Redis: a
//! subscription forwards the channel to the gateway's sink in publication
//! order, and a receiver that falls behind the channel's buffer reports a
//! resync, as a lagging Redis subscriber does. Presence follows the same
//! rules as the Lua scripts in `chorus_shared::presence`, with heartbeats
//! expiring on tokio's clock, so tests with paused time see a gateway that
//! stopped reporting die and get reaped.
//!
//! Why one file: it is the in-process double of the whole
//! [`Backplane`](super::Backplane) trait and mirrors `redis.rs` method for
//! method (pub/sub, presence, registry), so the two are read side by side;
//! split by concern, the bus would be apart from the rules it enforces.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chorus_shared::envelope::community_channel;
use chorus_shared::protocol::GatewayStatus;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::incarnation::Incarnation;
use super::{
    Added, Announce, Announced, Backplane, BackplaneSink, PresenceJoin, PresenceLeave, Reaped,
};
use crate::config::{Liveness, PRESENCE_REAP_LOCK};
use crate::error::GatewayError;

/// Messages a channel buffers per subscriber before the subscriber counts
/// as lagging (and resyncs): Redis's own output buffer, in miniature.
const CHANNEL_BUFFER: usize = 1024;

use crate::sync::lock;

/// One community's presence: what the per-community keys hold in Redis.
#[derive(Default)]
struct CommunityPresence {
    /// incarnation → the users it holds.
    holders: HashMap<String, HashSet<String>>,
    /// user → number of incarnations holding them.
    users: HashMap<String, u32>,
}

impl CommunityPresence {
    fn count_down(&mut self, user: &str) -> bool {
        match self.users.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.users.remove(user);
                true
            }
        }
    }

    fn add(&mut self, incarnation: &str, user: &str) -> bool {
        if !self
            .holders
            .entry(incarnation.to_owned())
            .or_default()
            .insert(user.to_owned())
        {
            return false;
        }
        let n = self.users.entry(user.to_owned()).or_insert(0);
        *n += 1;
        *n == 1
    }

    fn remove(&mut self, incarnation: &str, user: &str) -> bool {
        let removed = self
            .holders
            .get_mut(incarnation)
            .is_some_and(|set| set.remove(user));
        removed && self.count_down(user)
    }

    fn reap(&mut self, incarnation: &str) -> Vec<String> {
        let users = self.holders.remove(incarnation).unwrap_or_default();
        users.into_iter().filter(|u| self.count_down(u)).collect()
    }

    fn online(&self) -> u64 {
        self.users.len() as u64
    }
}

#[derive(Default)]
struct BusState {
    channels: HashMap<String, broadcast::Sender<Bytes>>,
    presence: HashMap<Uuid, CommunityPresence>,
    /// Incarnation → when its heartbeat key expires.
    heartbeats: HashMap<String, Instant>,
    /// The holders set.
    holders: HashSet<String>,
    /// Incarnation → the communities it indexed.
    rooms: HashMap<String, HashSet<Uuid>>,
    /// Incarnation → when its reaping lock expires.
    reap_locks: HashMap<String, Instant>,
    registry: HashMap<String, GatewayStatus>,
}

impl BusState {
    fn alive(&self, incarnation: &str) -> bool {
        self.heartbeats
            .get(incarnation)
            .is_some_and(|at| *at > Instant::now())
    }

    fn reap(&mut self, incarnation: &str) -> Vec<Reaped> {
        let rooms = self.rooms.remove(incarnation).unwrap_or_default();
        let out = rooms
            .into_iter()
            .map(|community| {
                let p = self.presence.entry(community).or_default();
                Reaped {
                    community,
                    gone: p.reap(incarnation),
                    online: p.online(),
                }
            })
            .collect();
        self.holders.remove(incarnation);
        out
    }

    /// Publishes a presence change's announcement if the change is one to
    /// announce (`due`) and at most its bound is online, as the presence
    /// scripts do in the same step as the change.
    fn announce(
        &self,
        due: bool,
        community: Uuid,
        online: u64,
        announce: Option<&Announce>,
    ) -> Announced {
        let Some(a) = announce.filter(|a| due && online <= a.max_online) else {
            return Announced::NotDue;
        };
        if let Some(tx) = self.channels.get(&community_channel(&community)) {
            let _ = tx.send(a.envelope.clone());
        }
        Announced::Published
    }
}

/// The shared medium of in-process backplanes; cheap to share in an `Arc`.
#[derive(Default)]
pub struct MemoryBus {
    state: Mutex<BusState>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus").finish_non_exhaustive()
    }
}

impl MemoryBus {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Delivers `payload` to every current subscriber of `channel`.
    pub fn publish(&self, channel: &str, payload: Bytes) {
        if let Some(tx) = lock(&self.state).channels.get(channel) {
            let _ = tx.send(payload);
        }
    }

    /// How many subscribers `channel` has (gateways holding the room).
    pub fn subscribers(&self, channel: &str) -> usize {
        lock(&self.state)
            .channels
            .get(channel)
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// Gateways in the registry.
    pub fn registered(&self) -> Vec<GatewayStatus> {
        lock(&self.state).registry.values().cloned().collect()
    }

    fn receiver(&self, channel: &str) -> broadcast::Receiver<Bytes> {
        lock(&self.state)
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_BUFFER).0)
            .subscribe()
    }
}

/// One gateway's attachment to a [`MemoryBus`].
pub struct MemoryBackplane {
    bus: Arc<MemoryBus>,
    gateway_id: String,
    incarnation: Incarnation,
    /// The sink (the hub) owns this backplane, so this is a cycle until
    /// [`Backplane::quit`] clears it, as with Redis.
    sink: Mutex<Option<Arc<dyn BackplaneSink>>>,
    /// Channel → the task forwarding it to the sink.
    subscriptions: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Set by [`MemoryBackplane::refuse_subscribes`].
    refusing: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// Subscribes wait for a permit of this signal, then succeed.
    holding: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

impl std::fmt::Debug for MemoryBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackplane")
            .field("gateway_id", &self.gateway_id)
            .finish_non_exhaustive()
    }
}

impl MemoryBackplane {
    pub fn new(bus: Arc<MemoryBus>, gateway_id: &str) -> Arc<Self> {
        Arc::new(MemoryBackplane {
            bus,
            gateway_id: gateway_id.to_owned(),
            incarnation: Incarnation::new(gateway_id, Liveness::default()),
            sink: Mutex::new(None),
            subscriptions: Mutex::new(HashMap::new()),
            refusing: Mutex::new(None),
            holding: Mutex::new(None),
        })
    }

    /// Simulates losing the connection: nothing is delivered until
    /// [`MemoryBackplane::reconnect`], and what is published meanwhile is
    /// lost, as with Redis pub/sub.
    pub fn disconnect(&self) {
        for task in lock(&self.subscriptions).values() {
            task.abort();
        }
    }

    /// Simulates the connection coming back: every channel is subscribed
    /// again and the sink told to resync, as the Redis backplane does.
    pub fn reconnect(&self) {
        let Some(sink) = lock(&self.sink).clone() else {
            return;
        };
        let mut subs = lock(&self.subscriptions);
        let channels: Vec<String> = subs.keys().cloned().collect();
        for channel in channels {
            let task = self.forward(&channel, sink.clone());
            subs.insert(channel, task);
        }
        drop(subs);
        sink.on_resync();
    }

    /// A task delivering `channel`'s messages to `sink`.
    fn forward(&self, channel: &str, sink: Arc<dyn BackplaneSink>) -> JoinHandle<()> {
        let mut rx = self.bus.receiver(channel);
        let name = channel.to_owned();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(payload) => sink.on_message(&name, payload),
                    Err(RecvError::Lagged(_)) => sink.on_resync(),
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// Registers a new incarnation: heartbeat first, then holders.
    async fn register(&self, name: Arc<str>) -> Result<(), GatewayError> {
        let mut st = lock(&self.bus.state);
        st.heartbeats.insert(
            name.to_string(),
            Instant::now() + self.incarnation.liveness().ttl,
        );
        st.holders.insert(name.to_string());
        Ok(())
    }

    /// The incarnation to write under (registered on first use).
    async fn writable(&self) -> Result<Arc<str>, GatewayError> {
        self.incarnation.writable(|name| self.register(name)).await
    }

    /// Simulates this gateway's heartbeat lapsing while it lives on (cut
    /// off from Redis for longer than the TTL): its key is gone, and the
    /// next report finds it so.
    pub fn lapse(&self) {
        if let Some(name) = self.incarnation.heartbeat() {
            lock(&self.bus.state).heartbeats.remove(&*name);
        }
    }

    /// Simulates a Redis that refuses subscribes: each waits for a
    /// permit of the returned signal, then fails, until
    /// [`MemoryBackplane::accept_subscribes`].
    pub fn refuse_subscribes(&self) -> Arc<tokio::sync::Notify> {
        let signal = Arc::new(tokio::sync::Notify::new());
        *lock(&self.refusing) = Some(signal.clone());
        signal
    }

    /// Simulates a slow Redis: each subscribe waits for a permit of the
    /// returned signal, then succeeds.
    pub fn hold_subscribes(&self) -> Arc<tokio::sync::Notify> {
        let signal = Arc::new(tokio::sync::Notify::new());
        *lock(&self.holding) = Some(signal.clone());
        signal
    }

    /// Subscribes succeed again, at once.
    pub fn accept_subscribes(&self) {
        *lock(&self.refusing) = None;
        *lock(&self.holding) = None;
    }

    /// Whether this gateway subscribes to `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        lock(&self.subscriptions).contains_key(channel)
    }
}

impl Drop for MemoryBackplane {
    fn drop(&mut self) {
        for (_, task) in lock(&self.subscriptions).drain() {
            task.abort();
        }
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    fn start(&self, sink: Arc<dyn BackplaneSink>) {
        *lock(&self.sink) = Some(sink);
    }

    async fn quit(&self) {
        for (_, task) in lock(&self.subscriptions).drain() {
            task.abort();
        }
        lock(&self.sink).take();
    }

    async fn subscribe(&self, channel: &str) -> Result<(), GatewayError> {
        let refusing = lock(&self.refusing).clone();
        if let Some(signal) = refusing {
            signal.notified().await;
            return Err(GatewayError::Backplane("subscribe refused".into()));
        }
        let holding = lock(&self.holding).clone();
        if let Some(signal) = holding {
            signal.notified().await;
        }
        let sink = lock(&self.sink)
            .clone()
            .ok_or_else(|| GatewayError::Backplane("not started".into()))?;
        let mut subs = lock(&self.subscriptions);
        if subs.contains_key(channel) {
            return Ok(());
        }
        let task = self.forward(channel, sink);
        subs.insert(channel.to_owned(), task);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), GatewayError> {
        if let Some(task) = lock(&self.subscriptions).remove(channel) {
            task.abort();
        }
        Ok(())
    }

    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), GatewayError> {
        self.bus.publish(channel, payload);
        Ok(())
    }

    fn is_live(&self) -> bool {
        lock(&self.sink).is_some()
    }

    async fn presence_join(
        &self,
        community: Uuid,
        user: &str,
        announce: Option<&Announce>,
    ) -> Result<PresenceJoin, GatewayError> {
        let name = self.writable().await?;
        let mut st = lock(&self.bus.state);
        st.rooms
            .entry(name.to_string())
            .or_default()
            .insert(community);
        let p = st.presence.entry(community).or_default();
        let first = p.add(&name, user);
        let online = p.online();
        let announced = st.announce(first, community, online, announce);
        Ok(PresenceJoin {
            first,
            online,
            announced,
        })
    }

    async fn presence_leave(
        &self,
        community: Uuid,
        user: &str,
        announce: Option<&Announce>,
    ) -> Result<PresenceLeave, GatewayError> {
        let name = self.writable().await?;
        let mut st = lock(&self.bus.state);
        let p = st.presence.entry(community).or_default();
        let gone = p.remove(&name, user);
        let online = p.online();
        let announced = st.announce(gone, community, online, announce);
        Ok(PresenceLeave {
            gone,
            online,
            announced,
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
        let mut st = lock(&self.bus.state);
        let mut out = Vec::with_capacity(batch.len());
        for (community, users) in batch {
            st.rooms
                .entry(name.to_string())
                .or_default()
                .insert(*community);
            let p = st.presence.entry(*community).or_default();
            let first = users
                .iter()
                .filter(|u| p.add(&name, u))
                .map(|u| u.to_string())
                .collect();
            out.push(Added {
                community: *community,
                first,
                online: p.online(),
            });
        }
        Ok(out)
    }

    async fn presence_retire(&self, incarnation: &str) -> Result<(), GatewayError> {
        lock(&self.bus.state).heartbeats.remove(incarnation);
        Ok(())
    }

    async fn presence_reap_dead(&self) -> Result<Vec<Reaped>, GatewayError> {
        let mut st = lock(&self.bus.state);
        let now = Instant::now();
        let dead: Vec<String> = st
            .holders
            .iter()
            .filter(|h| !st.alive(h))
            .filter(|h| st.reap_locks.get(*h).is_none_or(|until| *until <= now))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for h in dead {
            st.reap_locks.insert(h.clone(), now + PRESENCE_REAP_LOCK);
            out.extend(st.reap(&h));
        }
        Ok(out)
    }

    async fn presence_withdraw(&self) -> Result<Vec<Reaped>, GatewayError> {
        let Some(name) = self.incarnation.close() else {
            return Ok(Vec::new());
        };
        let mut st = lock(&self.bus.state);
        let out = st.reap(&name);
        st.heartbeats.remove(&*name);
        Ok(out)
    }

    async fn presence_online(&self, community: Uuid) -> Result<Vec<String>, GatewayError> {
        Ok(lock(&self.bus.state)
            .presence
            .get(&community)
            .map(|p| p.users.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn report(&self, status: &GatewayStatus) -> Result<(), GatewayError> {
        let mut st = lock(&self.bus.state);
        st.registry.insert(status.id.clone(), status.clone());
        if let Some(name) = self.incarnation.heartbeat() {
            let now = Instant::now();
            if st.alive(&name) {
                st.heartbeats
                    .insert(name.to_string(), now + self.incarnation.liveness().ttl);
                self.incarnation.confirmed(&name, now);
            } else {
                self.incarnation.lapsed(&name);
            }
        }
        Ok(())
    }

    async fn withdraw(&self, gateway_id: &str) -> Result<(), GatewayError> {
        lock(&self.bus.state).registry.remove(gateway_id);
        Ok(())
    }
}
