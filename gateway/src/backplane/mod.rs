//! The backplane: how gateways hear about events and share presence, as
//! one small trait. [`RedisBackplane`] is the real one; [`MemoryBackplane`]
//! runs it inside one process (several gateways on one [`MemoryBus`]), so
//! the hub can be tested without Redis. Both write presence under this
//! gateway's incarnation (`incarnation`), whose heartbeat rides on the
//! registry report, and reap the entries of dead incarnations.

mod heartbeat;
mod incarnation;
mod memory;
mod redis;
mod subscriptions;

use async_trait::async_trait;
use bytes::Bytes;
use chorus_shared::protocol::GatewayStatus;
use uuid::Uuid;

use crate::error::GatewayError;

pub use self::memory::{MemoryBackplane, MemoryBus};
pub use self::redis::{COMMAND_TIMEOUT, RedisBackplane};

use std::sync::Arc;

/// What the backplane reports to the gateway.
pub trait BackplaneSink: Send + Sync + 'static {
    /// A message arrived on a subscribed channel.
    fn on_message(&self, channel: &str, payload: Bytes);
    /// Messages may have been lost (reconnect, overflow): every subscribed
    /// community must be reconciled against the API.
    fn on_resync(&self);
    /// Messages of these channels only may have been lost (their Redis
    /// Cluster slot moved): their communities must be reconciled, and the
    /// memberships of their users rechecked.
    fn on_resync_channels(&self, channels: &[String]) {
        let _ = channels;
        self.on_resync();
    }
}

/// The announcement a presence change makes in the same backplane call
/// (on Redis, the same script): its envelope (`user-joined` or
/// `user-left`) is published on the community's channel when the change
/// is one everyone sees (the user's first entry anywhere, or their last)
/// and at most `max_online` users are online after it. One call instead of
/// a change and then a publication: a round trip fewer per join, and no
/// moment where the entry is written and its announcement not yet.
#[derive(Debug, Clone)]
pub struct Announce {
    pub envelope: Bytes,
    pub max_online: u64,
}

/// What became of a presence change's [`Announce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// None was given, or the change was not one to announce.
    NotDue,
    Published,
    /// Due, but its publication failed; the change itself was made.
    Failed,
}

impl Announced {
    /// Of an announcement published on its own: sent or failed.
    pub fn sent(sent: bool) -> Self {
        if sent {
            Announced::Published
        } else {
            Announced::Failed
        }
    }

    /// From a presence script's `announced` (1, 0 or -1).
    pub fn from_script(v: i64) -> Self {
        match v {
            1 => Announced::Published,
            -1 => Announced::Failed,
            _ => Announced::NotDue,
        }
    }
}

/// Result of adding a presence entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceJoin {
    /// The user just came online in the community (first entry anywhere).
    pub first: bool,
    /// Users online in the community now.
    pub online: u64,
    pub announced: Announced,
}

/// Result of removing a presence entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLeave {
    /// The user just went offline in the community (last entry anywhere).
    pub gone: bool,
    pub online: u64,
    pub announced: Announced,
}

/// What adding many users to one community found (a new incarnation's
/// re-add).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub community: Uuid,
    /// Users who came online anywhere (they had been reaped meanwhile).
    pub first: Vec<String>,
    pub online: u64,
}

/// What reaping one incarnation's entries of one community found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    pub community: Uuid,
    /// Users who went offline everywhere.
    pub gone: Vec<String>,
    pub online: u64,
}

/// Publish/subscribe, presence and registry operations.
#[async_trait]
pub trait Backplane: Send + Sync + std::fmt::Debug + 'static {
    /// Starts delivering subscribed channels' messages to `sink`; the
    /// connection itself may come later.
    fn start(&self, sink: Arc<dyn BackplaneSink>);
    /// Closes the backplane's connections.
    async fn quit(&self);
    /// Starts delivering `channel`'s messages to the sink.
    async fn subscribe(&self, channel: &str) -> Result<(), GatewayError>;
    async fn unsubscribe(&self, channel: &str) -> Result<(), GatewayError>;
    /// Subscribes every one of `channels`, in one request where the
    /// backplane can; each channel's outcome, in order. A channel is
    /// subscribed once Redis has applied it, not merely been sent it: what
    /// is published after the answer reaches the sink.
    async fn subscribe_many(&self, channels: &[String]) -> Vec<Result<(), GatewayError>> {
        let mut out = Vec::with_capacity(channels.len());
        for channel in channels {
            out.push(self.subscribe(channel).await);
        }
        out
    }
    /// Unsubscribes every one of `channels`, in one request where the
    /// backplane can; the first error, after trying them all.
    async fn unsubscribe_many(&self, channels: &[String]) -> Result<(), GatewayError> {
        let mut first = Ok(());
        for channel in channels {
            if let Err(e) = self.unsubscribe(channel).await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), GatewayError>;
    /// True while the subscription connection is known to work.
    fn is_live(&self) -> bool;

    /// Adds or refreshes `user`'s entry for this gateway in a community,
    /// publishing `announce` in the same step if the user just came online.
    async fn presence_join(
        &self,
        community: Uuid,
        user: &str,
        announce: Option<&Announce>,
    ) -> Result<PresenceJoin, GatewayError>;
    /// Removes `user`'s entry for this gateway in a community, publishing
    /// `announce` in the same step if the user just went offline.
    async fn presence_leave(
        &self,
        community: Uuid,
        user: &str,
        announce: Option<&Announce>,
    ) -> Result<PresenceLeave, GatewayError>;
    /// Whether this gateway's presence must be written anew under a new
    /// incarnation: it has none yet, its heartbeat lapsed or went
    /// unconfirmed too long, or a presence write failed (its outcome is
    /// unknown).
    fn presence_needs_renewal(&self) -> bool;
    /// Starts a new incarnation (heartbeat key first, then the holders
    /// set); later presence writes go to it. Returns the previous one, to
    /// retire once the local users are added again.
    async fn presence_renew(&self) -> Result<Option<Arc<str>>, GatewayError>;
    /// Adds the given users of each community under the current
    /// incarnation, in batches; communities whose batch failed are left out
    /// (and the next upkeep renews again).
    async fn presence_add(
        &self,
        batch: &[(Uuid, Vec<Arc<str>>)],
    ) -> Result<Vec<Added>, GatewayError>;
    /// Deletes an old incarnation's heartbeat key, so it is reaped.
    async fn presence_retire(&self, incarnation: &str) -> Result<(), GatewayError>;
    /// Reaps every dead incarnation (heartbeat key gone) whose reaping lock
    /// this gateway takes: removes its entries, then its index and its
    /// place in the holders set. Each user gone everywhere is reported to
    /// exactly one caller.
    async fn presence_reap_dead(&self) -> Result<Vec<Reaped>, GatewayError>;
    /// Clean exit: refuses later presence writes, removes this gateway's
    /// own entries and deletes its heartbeat key.
    async fn presence_withdraw(&self) -> Result<Vec<Reaped>, GatewayError>;
    /// Users online in a community, across gateways.
    async fn presence_online(&self, community: Uuid) -> Result<Vec<String>, GatewayError>;
    /// Reports this gateway for `/api/socket-status` and renews its
    /// presence incarnation's heartbeat (finding it gone marks the
    /// incarnation lapsed).
    async fn report(&self, status: &GatewayStatus) -> Result<(), GatewayError>;
    /// Withdraws this gateway's report (clean shutdown).
    async fn withdraw(&self, gateway_id: &str) -> Result<(), GatewayError>;
}
