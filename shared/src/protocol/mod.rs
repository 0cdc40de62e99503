//! Serde types for every body and frame of the public contract (v1), in
//! camelCase. IDs that clients send are taken as strings and parsed by the
//! services, so a malformed UUID is `not_found` while a value of the wrong
//! JSON type is a deserialization error, `bad_request`.
//!
//! One file per part of the contract: [`http`] (request and response
//! bodies), [`ws`] (frames both ways), [`internal`] (gateway to API); the
//! limits and the resources every part shares are here. Everything is
//! re-exported, so users name `chorus_shared::protocol::X`.

mod http;
mod internal;
#[cfg(test)]
mod tests;
mod ws;

pub use self::http::*;
pub use self::internal::*;
pub use self::ws::*;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// ---- limits fixed by the contract -------------------------------------------------

/// Longest community name, in Unicode scalar values after trimming.
pub const MAX_COMMUNITY_NAME_CHARS: usize = 100;
/// Longest message content, in Unicode scalar values after trimming.
pub const MAX_MESSAGE_CHARS: usize = 4000;
/// Longest notification `type`.
pub const MAX_NOTIFICATION_TYPE_CHARS: usize = 32;
/// Longest notification `title`.
pub const MAX_NOTIFICATION_TITLE_CHARS: usize = 200;
/// Longest notification `message`.
pub const MAX_NOTIFICATION_MESSAGE_CHARS: usize = 2000;
/// Largest notification `data` object, serialized as JSON.
pub const MAX_NOTIFICATION_DATA_BYTES: usize = 8 * 1024;
/// Largest request body and largest WebSocket message (after reassembly).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest WebSocket message a client may send; larger closes with 1009.
pub const MAX_WS_MESSAGE_BYTES: usize = MAX_BODY_BYTES;
/// Page size bounds for history and notification listings.
pub const MAX_PAGE_LIMIT: i64 = 100;
/// Largest (and default) page of `GET /api/communities/{id}/members`
/// (contract): member rows are small, so a thousand is one modest response.
pub const MAX_MEMBERS_PAGE_LIMIT: i64 = 1000;
/// Most events one `/internal/communities/{id}/events` request returns:
/// ten default recovery windows, so a gap fill or a replay needs few round
/// trips, while one response stays a few MiB at most.
pub const MAX_EVENTS_PER_REQUEST: i64 = 10_000;

// ---- resources ----------------------------------------------------------------------

/// A community as every endpoint returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Community {
    pub id: Uuid,
    pub name: String,
    pub is_public: bool,
    pub created_by: String,
    #[serde(with = "crate::time_format")]
    pub created_at: DateTime<Utc>,
    pub head_seq: i64,
}

/// A member's role inside one community (distinct from the token role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Owner,
    Member,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Owner => "owner",
            MemberRole::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(MemberRole::Owner),
            "member" => Some(MemberRole::Member),
            _ => None,
        }
    }
}

/// A community member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user_id: String,
    pub name: String,
    #[schema(required = true)]
    pub avatar: Option<String>,
    pub role: MemberRole,
}

/// The author of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sender {
    pub id: String,
    pub name: String,
    #[schema(required = true)]
    pub avatar: Option<String>,
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: Uuid,
    pub community_id: Uuid,
    pub seq: i64,
    pub sender: Sender,
    pub content: String,
    pub mentions: Vec<String>,
    #[serde(with = "crate::time_format")]
    pub created_at: DateTime<Utc>,
}

/// A notification in a user's notification center.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: Uuid,
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub read: bool,
    #[serde(with = "crate::time_format")]
    pub created_at: DateTime<Utc>,
}
