//! The backplane: how gateways hear about events and share presence, as
//! one small trait. [`RedisBackplane`] is the real one; [`MemoryBackplane`]
//! runs it inside one process (several gateways on one [`MemoryBus`]), so
//! the hub can be tested without Redis.

mod memory;
mod redis;

use async_trait::async_trait;
use bytes::Bytes;
use chorus_shared::protocol::GatewayStatus;
use uuid::Uuid;

use crate::error::GatewayError;

pub use self::memory::{MemoryBackplane, MemoryBus};
pub use self::redis::RedisBackplane;

use std::sync::Arc;

/// What the backplane reports to the gateway.
pub trait BackplaneSink: Send + Sync + 'static {
    /// A message arrived on a subscribed channel.
    fn on_message(&self, channel: &str, payload: Bytes);
    /// Messages may have been lost (reconnect, overflow): every subscribed
    /// community must be reconciled against the API.
    fn on_resync(&self);
}

/// Result of adding a presence entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceJoin {
    /// The user just came online in the community (first entry anywhere).
    pub first: bool,
    /// Users online in the community now.
    pub online: u64,
}

/// Result of removing a presence entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLeave {
    /// The user just went offline in the community (last entry anywhere).
    pub gone: bool,
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
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), GatewayError>;
    /// True while the subscription connection is known to work.
    fn is_live(&self) -> bool;

    /// Adds or refreshes `user`'s entry for this gateway in a community.
    async fn presence_join(
        &self,
        community: Uuid,
        user: &str,
    ) -> Result<PresenceJoin, GatewayError>;
    /// Removes `user`'s entry for this gateway in a community.
    async fn presence_leave(
        &self,
        community: Uuid,
        user: &str,
    ) -> Result<PresenceLeave, GatewayError>;
    /// Removes expired entries (of dead gateways); returns the users who
    /// went offline, each reported to exactly one caller, and the online count.
    async fn presence_sweep(&self, community: Uuid) -> Result<(Vec<String>, u64), GatewayError>;
    /// Users online in a community, across gateways.
    async fn presence_online(&self, community: Uuid) -> Result<Vec<String>, GatewayError>;
    /// Reports this gateway for `/api/socket-status`.
    async fn report(&self, status: &GatewayStatus) -> Result<(), GatewayError>;
    /// Withdraws this gateway's report (clean shutdown).
    async fn withdraw(&self, gateway_id: &str) -> Result<(), GatewayError>;
}
