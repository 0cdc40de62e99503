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

/// Most checks in one `POST /internal/access`: a reconnect storm's joins
/// go in a few requests, and one request's query stays short.
pub const MAX_ACCESS_CHECKS: usize = 1_000;

/// `POST /internal/access`: many access checks in one request. A gateway
/// sends the joins that arrived while its previous check was in flight
/// together, so a storm of joins costs the API and Postgres one query per
/// batch instead of one per join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessChecks {
    pub checks: Vec<AccessCheck>,
}

/// One (community, user) to check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessCheck {
    pub community_id: Uuid,
    pub user_id: String,
}

/// The answers, in the order of the checks: `None` when the community does
/// not exist (or the user id is not one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessResults {
    pub results: Vec<Option<CommunityAccess>>,
}

/// `GET /internal/communities/{id}/access/{userId}` (and each answer of
/// `POST /internal/access`): what a gateway needs to decide a
/// `join-community`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommunityAccess {
    pub community_id: Uuid,
    pub is_public: bool,
    pub head_seq: i64,
    /// The user's role, `None` when not a member.
    pub role: Option<MemberRole>,
}
