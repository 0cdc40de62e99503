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

/// What refreshing one community's entries found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    pub community: Uuid,
    /// Users whose entry had expired and who are online again anywhere.
    pub first: Vec<String>,
    /// Users of dead gateways who went offline everywhere.
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
    /// Refreshes this gateway's entries for the given users of each
    /// community and sweeps the communities' expired entries, in batches;
    /// each user who came back or went away is reported to exactly one
    /// caller. Communities whose batch failed are left out.
    async fn presence_refresh(
        &self,
        batch: &[(Uuid, Vec<Arc<str>>)],
    ) -> Result<Vec<Refreshed>, GatewayError>;
    /// Users online in a community, across gateways.
    async fn presence_online(&self, community: Uuid) -> Result<Vec<String>, GatewayError>;
    /// Reports this gateway for `/api/socket-status`.
    async fn report(&self, status: &GatewayStatus) -> Result<(), GatewayError>;
    /// Withdraws this gateway's report (clean shutdown).
    async fn withdraw(&self, gateway_id: &str) -> Result<(), GatewayError>;
}
