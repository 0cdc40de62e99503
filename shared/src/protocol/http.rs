//! Bodies of the public HTTP API: requests and responses.

use super::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// ---- HTTP request bodies ------------------------------------------------------------

/// `POST /api/communities`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateCommunity {
    pub name: String,
    #[serde(default)]
    pub is_public: Option<bool>,
}

/// `POST /api/communities/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddMember {
    pub user_id: String,
}

/// `POST /api/messages-realtime` and the `send-message` command.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    pub community_id: String,
    pub content: String,
    #[serde(default)]
    pub mentions: Option<Vec<String>>,
}

/// `POST /api/notifications-broadcast`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateNotification {
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    /// Any JSON object, at most 8 KiB serialized.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

// ---- HTTP responses -----------------------------------------------------------------

/// `GET /api/communities`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommunityList {
    pub communities: Vec<Community>,
}

/// `GET /api/communities/{id}/members`: a page ordered by `userId`;
/// `nextAfter` is the `after` of the next page, null on the last.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberList {
    pub members: Vec<Member>,
    #[schema(required = true)]
    pub next_after: Option<String>,
}

/// `GET /api/communities/{id}/presence`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Presence {
    pub online: Vec<String>,
}

/// `GET /api/messages-realtime`: `nextBefore` on a backward page, `nextAfter`
/// on a forward (`after=`) page.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// On a backward page: the `before` of the next older page, null on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub next_before: Option<Option<i64>>,
    /// On a forward (`after=`) page: the `after` of the next page, null on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub next_after: Option<Option<i64>>,
}

/// `GET /api/notifications-broadcast`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPage {
    pub notifications: Vec<Notification>,
    pub unread_count: i64,
    #[schema(required = true)]
    pub next_before: Option<Uuid>,
}

/// `POST /api/notifications-broadcast/read-all`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadAll {
    pub updated: i64,
}

/// One gateway in `GET /api/socket-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    pub id: String,
    pub connections: u64,
    #[serde(with = "crate::time_format")]
    pub started_at: DateTime<Utc>,
}

/// `status` of `GET /api/socket-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceStatus {
    /// At least one gateway reports.
    Ok,
    /// No gateway reports (or Redis, where they report, is away).
    Degraded,
}

/// `GET /api/socket-status`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SocketStatus {
    pub status: ServiceStatus,
    pub gateways: Vec<GatewayStatus>,
    pub connections: u64,
}
