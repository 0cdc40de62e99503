//! WebSocket frames: client commands and server events.

use super::*;
use crate::error::ErrorDetail;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// ---- WebSocket: client -> server ----------------------------------------------------

/// `join-community`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinCommunity {
    pub community_id: String,
    #[serde(default)]
    pub last_seq: Option<i64>,
}

/// `leave-community`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaveCommunity {
    pub community_id: String,
}

/// `delete-message`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMessage {
    pub message_id: String,
}

/// `typing`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    pub community_id: String,
    pub is_typing: bool,
}

// ---- WebSocket: server -> client ----------------------------------------------------

/// `ready`, the first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    pub user_id: String,
    pub connection_id: String,
    pub gateway_id: String,
    pub heartbeat_ms: u64,
}

/// Ack data of `join-community`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinAck {
    pub community_id: Uuid,
    pub head_seq: i64,
    pub online: Vec<String>,
    pub recovered: bool,
    pub missed: i64,
}

/// `message-deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageDeleted {
    pub community_id: Uuid,
    pub message_id: Uuid,
    pub seq: i64,
}

/// `user-joined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserJoined {
    pub community_id: Uuid,
    pub user_id: String,
    pub name: String,
}

/// `user-left`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserLeft {
    pub community_id: Uuid,
    pub user_id: String,
}

/// `user-typing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserTyping {
    pub community_id: Uuid,
    pub user_id: String,
    pub name: String,
    pub is_typing: bool,
}

/// `membership-revoked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembershipRevoked {
    pub community_id: Uuid,
}

/// `reconnect`, sent by a draining gateway just before it closes with 1012.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reconnect {
    pub reason: String,
    pub after_ms: u64,
}

/// `{message}` payload of `new-message` and of the `send-message` ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageData {
    pub message: Message,
}

/// `{notification}` payload of `notification`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotificationData {
    pub notification: Notification,
}

/// Every unsolicited server frame: serializes to `{"type": T, "data": {...}}`,
/// which is both the WebSocket frame and the event inside a backplane
/// envelope, so a gateway forwards an event without reshaping it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
pub enum ServerEvent {
    Ready(Ready),
    NewMessage(MessageData),
    MessageDeleted(MessageDeleted),
    UserJoined(UserJoined),
    UserLeft(UserLeft),
    UserTyping(UserTyping),
    Notification(NotificationData),
    MembershipRevoked(MembershipRevoked),
    Reconnect(Reconnect),
}

impl ServerEvent {
    /// The event's `type` on the wire (also a metric label: a fixed set).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerEvent::Ready(_) => "ready",
            ServerEvent::NewMessage(_) => "new-message",
            ServerEvent::MessageDeleted(_) => "message-deleted",
            ServerEvent::UserJoined(_) => "user-joined",
            ServerEvent::UserLeft(_) => "user-left",
            ServerEvent::UserTyping(_) => "user-typing",
            ServerEvent::Notification(_) => "notification",
            ServerEvent::MembershipRevoked(_) => "membership-revoked",
            ServerEvent::Reconnect(_) => "reconnect",
        }
    }

    /// Every [`ServerEvent::kind`].
    pub const KINDS: &[&str] = &[
        "ready",
        "new-message",
        "message-deleted",
        "user-joined",
        "user-left",
        "user-typing",
        "notification",
        "membership-revoked",
        "reconnect",
    ];
}

/// `{"type":"ack","ref":n,"data":{...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckFrame<T> {
    #[serde(rename = "type")]
    pub kind: AckTag,
    #[serde(rename = "ref")]
    pub reference: u64,
    pub data: T,
}

/// The literal `"ack"`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckTag {
    Ack,
}

/// `{"type":"error","ref":n?,"error":{"code","message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorFrame {
    #[serde(rename = "type")]
    pub kind: ErrorTag,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<u64>,
    pub error: ErrorDetail,
}

/// The literal `"error"`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorTag {
    Error,
}
