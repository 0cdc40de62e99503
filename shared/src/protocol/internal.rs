//! The internal API a gateway calls (service token).

use super::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// ---- internal API (gateway -> API, service token) --------------------------------

/// One sequenced event, as `GET /internal/communities/{id}/events` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequencedEventBody {
    pub seq: i64,
    pub event: ServerEvent,
}

/// `GET /internal/communities/{id}/events?after=&limit=`: events with
/// `seq > after`, oldest first, and the community's head at read time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    pub head_seq: i64,
    pub events: Vec<SequencedEventBody>,
}

/// `GET /internal/communities/{id}/access/{userId}`: what a gateway needs to
/// decide a `join-community`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommunityAccess {
    pub community_id: Uuid,
    pub is_public: bool,
    pub head_seq: i64,
    /// The user's role, `None` when not a member.
    pub role: Option<MemberRole>,
}
