//! What the gateway asks of the API, as a trait: gateways never touch
//! Postgres, so membership checks, backfill and writes go through the API.
//!
//! [`HttpApi`] is the real client. [`MemoryApi`] is an in-process API with
//! the same sequencing rules, so rooms, replay and gap filling can be
//! driven deterministically in tests without Postgres or an API process.

mod batch;
mod http;
mod memory;

use async_trait::async_trait;
use chorus_shared::protocol::{CommunityAccess, EventsPage, Message, SendMessage};
use uuid::Uuid;

use crate::error::GatewayError;

pub use self::http::HttpApi;
pub use self::memory::{MemoryApi, Publication};

/// The API operations a gateway uses.
#[async_trait]
pub trait Api: Send + Sync + std::fmt::Debug + 'static {
    /// The community's head and the user's role (`not_found` if the
    /// community does not exist).
    async fn access(&self, community: Uuid, user: &str) -> Result<CommunityAccess, GatewayError>;

    /// Sequenced events with `seq > after`, oldest first, at most `limit`,
    /// and the head at read time. Creations of since-deleted messages are
    /// absent (only their deletion is returned).
    async fn events(
        &self,
        community: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<EventsPage, GatewayError>;

    /// `send-message` on the user's behalf, with the user's own token, so
    /// the API applies exactly the rules and rate limits of HTTP.
    async fn send_message(
        &self,
        user_token: &str,
        body: &SendMessage,
    ) -> Result<Message, GatewayError>;

    /// `delete-message` on the user's behalf.
    async fn delete_message(&self, user_token: &str, id: Uuid) -> Result<(), GatewayError>;

    /// The user's unread notification count.
    async fn unread_count(&self, user_token: &str) -> Result<i64, GatewayError>;
}
