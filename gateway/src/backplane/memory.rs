//! [`MemoryBackplane`]: the backplane inside one process.
//!
//! A [`MemoryBus`] stands for the Redis server: a broadcast channel per
//! pub/sub channel, presence entries with expiry, and the registry. Each
//! gateway attached to the bus gets its own [`MemoryBackplane`], so several
//! gateways in one process behave like gateways sharing one Redis: a
//! subscription forwards the channel to the gateway's sink in publication
//! order, and a receiver that falls behind the channel's buffer reports a
//! resync, as a lagging Redis subscriber does. Presence follows the same
//! rules as the Lua scripts in `chorus_shared::presence`, on tokio's clock,
//! so tests with paused time see entries expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use chorus_shared::protocol::GatewayStatus;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Backplane, BackplaneSink, PresenceJoin, PresenceLeave, Refreshed};
use crate::config::PRESENCE_TTL;
use crate::error::GatewayError;

/// Messages a channel buffers per subscriber before the subscriber counts
/// as lagging (and resyncs): Redis's own output buffer, in miniature.
const CHANNEL_BUFFER: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct CommunityPresence {
    /// (user, gateway) → expiry.
    entries: HashMap<(String, String), Instant>,
    /// user → number of gateways holding an entry.
    users: HashMap<String, u32>,
}

impl CommunityPresence {
    fn remove_entry(&mut self, user: &str, gateway: &str) -> bool {
        if self
            .entries
            .remove(&(user.to_owned(), gateway.to_owned()))
            .is_none()
        {
            return false;
        }
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
}

#[derive(Default)]
struct BusState {
    channels: HashMap<String, broadcast::Sender<Bytes>>,
    presence: HashMap<Uuid, CommunityPresence>,
    registry: HashMap<String, GatewayStatus>,
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
    /// The sink (the hub) owns this backplane, so this is a cycle until
    /// [`Backplane::quit`] clears it, as with Redis.
    sink: Mutex<Option<Arc<dyn BackplaneSink>>>,
    /// Channel → the task forwarding it to the sink.
    subscriptions: Mutex<HashMap<String, JoinHandle<()>>>,
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
            sink: Mutex::new(None),
            subscriptions: Mutex::new(HashMap::new()),
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
    ) -> Result<PresenceJoin, GatewayError> {
        let mut st = lock(&self.bus.state);
        let p = st.presence.entry(community).or_default();
        let added = p
            .entries
            .insert(
                (user.to_owned(), self.gateway_id.clone()),
                Instant::now() + PRESENCE_TTL,
            )
            .is_none();
        let mut first = false;
        if added {
            let n = p.users.entry(user.to_owned()).or_insert(0);
            *n += 1;
            first = *n == 1;
        }
        Ok(PresenceJoin {
            first,
            online: p.users.len() as u64,
        })
    }

    async fn presence_leave(
        &self,
        community: Uuid,
        user: &str,
    ) -> Result<PresenceLeave, GatewayError> {
        let mut st = lock(&self.bus.state);
        let p = st.presence.entry(community).or_default();
        let gone = p.remove_entry(user, &self.gateway_id);
        Ok(PresenceLeave {
            gone,
            online: p.users.len() as u64,
        })
    }

    async fn presence_refresh(
        &self,
        batch: &[(Uuid, Vec<Arc<str>>)],
    ) -> Result<Vec<Refreshed>, GatewayError> {
        let mut st = lock(&self.bus.state);
        let now = Instant::now();
        let mut out = Vec::with_capacity(batch.len());
        for (community, users) in batch {
            let p = st.presence.entry(*community).or_default();
            let mut first = Vec::new();
            for user in users {
                let added = p
                    .entries
                    .insert(
                        (user.to_string(), self.gateway_id.clone()),
                        now + PRESENCE_TTL,
                    )
                    .is_none();
                if added {
                    let n = p.users.entry(user.to_string()).or_insert(0);
                    *n += 1;
                    if *n == 1 {
                        first.push(user.to_string());
                    }
                }
            }
            let expired: Vec<(String, String)> = p
                .entries
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            let gone = expired
                .into_iter()
                .filter(|(user, gateway)| p.remove_entry(user, gateway))
                .map(|(user, _)| user)
                .collect();
            out.push(Refreshed {
                community: *community,
                first,
                gone,
                online: p.users.len() as u64,
            });
        }
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
        lock(&self.bus.state)
            .registry
            .insert(status.id.clone(), status.clone());
        Ok(())
    }

    async fn withdraw(&self, gateway_id: &str) -> Result<(), GatewayError> {
        lock(&self.bus.state).registry.remove(gateway_id);
        Ok(())
    }
}
