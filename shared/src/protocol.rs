//! Serde types for every body and frame of the public contract (v1), in
//! camelCase. IDs that clients send are taken as strings and parsed by the
//! services, so a malformed UUID is `not_found` while a value of the wrong
//! JSON type is a deserialization error, `bad_request`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ErrorDetail;

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
/// Most events one `/internal/communities/{id}/events` request returns:
/// ten default recovery windows, so a gap fill or a replay needs few round
/// trips, while one response stays a few MiB at most.
pub const MAX_EVENTS_PER_REQUEST: i64 = 10_000;

// ---- resources ----------------------------------------------------------------------

/// A community as every endpoint returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user_id: String,
    pub name: String,
    pub avatar: Option<String>,
    pub role: MemberRole,
}

/// The author of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub id: String,
    pub name: String,
    pub avatar: Option<String>,
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: Uuid,
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    pub data: serde_json::Value,
    pub read: bool,
    #[serde(with = "crate::time_format")]
    pub created_at: DateTime<Utc>,
}

// ---- HTTP request bodies ------------------------------------------------------------

/// `POST /api/communities`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateCommunity {
    pub name: String,
    #[serde(default)]
    pub is_public: Option<bool>,
}

/// `POST /api/communities/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddMember {
    pub user_id: String,
}

/// `POST /api/messages-realtime` and the `send-message` command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    pub community_id: String,
    pub content: String,
    #[serde(default)]
    pub mentions: Option<Vec<String>>,
}

/// `POST /api/notifications-broadcast`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateNotification {
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    #[serde(default)]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

// ---- HTTP responses -----------------------------------------------------------------

/// `GET /api/communities`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommunityList {
    pub communities: Vec<Community>,
}

/// `GET /api/communities/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberList {
    pub members: Vec<Member>,
}

/// `GET /api/communities/{id}/presence`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Presence {
    pub online: Vec<String>,
}

/// `GET /api/messages-realtime`: `nextBefore` on a backward page, `nextAfter`
/// on a forward (`after=`) page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<Option<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<Option<i64>>,
}

/// `GET /api/notifications-broadcast`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPage {
    pub notifications: Vec<Notification>,
    pub unread_count: i64,
    pub next_before: Option<Uuid>,
}

/// `POST /api/notifications-broadcast/read-all`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadAll {
    pub updated: i64,
}

/// One gateway in `GET /api/socket-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    pub id: String,
    pub connections: u64,
    #[serde(with = "crate::time_format")]
    pub started_at: DateTime<Utc>,
}

/// `GET /api/socket-status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketStatus {
    /// `ok` when at least one gateway reports, else `degraded`.
    pub status: String,
    pub gateways: Vec<GatewayStatus>,
    pub connections: u64,
}

// ---- WebSocket: client -> server ----------------------------------------------------

/// `join-community`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinCommunity {
    pub community_id: String,
    #[serde(default)]
    pub last_seq: Option<i64>,
}

/// `leave-community`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaveCommunity {
    pub community_id: String,
}

/// `delete-message`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMessage {
    pub message_id: String,
}

/// `typing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    pub community_id: String,
    pub is_typing: bool,
}

// ---- WebSocket: server -> client ----------------------------------------------------

/// `ready`, the first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    pub user_id: String,
    pub connection_id: String,
    pub gateway_id: String,
    pub heartbeat_ms: u64,
}

/// Ack data of `join-community`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinAck {
    pub community_id: Uuid,
    pub head_seq: i64,
    pub online: Vec<String>,
    pub recovered: bool,
    pub missed: i64,
}

/// `message-deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDeleted {
    pub community_id: Uuid,
    pub message_id: Uuid,
    pub seq: i64,
}

/// `user-joined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserJoined {
    pub community_id: Uuid,
    pub user_id: String,
    pub name: String,
}

/// `user-left`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserLeft {
    pub community_id: Uuid,
    pub user_id: String,
}

/// `user-typing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserTyping {
    pub community_id: Uuid,
    pub user_id: String,
    pub name: String,
    pub is_typing: bool,
}

/// `membership-revoked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipRevoked {
    pub community_id: Uuid,
}

/// `reconnect`, sent by a draining gateway just before it closes with 1012.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reconnect {
    pub reason: String,
    pub after_ms: u64,
}

/// `{message}` payload of `new-message` and of the `send-message` ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageData {
    pub message: Message,
}

/// `{notification}` payload of `notification`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message() -> Message {
        Message {
            id: Uuid::nil(),
            community_id: Uuid::nil(),
            seq: 7,
            sender: Sender {
                id: "alice".into(),
                name: "Alice".into(),
                avatar: None,
            },
            content: "hi".into(),
            mentions: vec!["bob".into()],
            created_at: DateTime::from_timestamp_millis(1_700_000_000_123).expect("valid"),
        }
    }

    #[test]
    fn server_event_has_the_contract_shape() {
        let v = serde_json::to_value(ServerEvent::NewMessage(MessageData { message: message() }))
            .expect("serializes");
        assert_eq!(
            v,
            json!({"type":"new-message","data":{"message":{
                "id":"00000000-0000-0000-0000-000000000000",
                "communityId":"00000000-0000-0000-0000-000000000000",
                "seq":7,"sender":{"id":"alice","name":"Alice","avatar":null},
                "content":"hi","mentions":["bob"],"createdAt":"2023-11-14T22:13:20.123Z"}}})
        );
    }

    #[test]
    fn message_page_emits_only_its_cursor() {
        let page = MessagePage {
            messages: vec![],
            next_before: Some(None),
            next_after: None,
        };
        assert_eq!(
            serde_json::to_value(page).expect("serializes"),
            json!({"messages":[],"nextBefore":null})
        );
    }

    #[test]
    fn ack_and_error_frames() {
        let ack = AckFrame {
            kind: AckTag::Ack,
            reference: 3,
            data: json!({}),
        };
        assert_eq!(
            serde_json::to_value(ack).expect("serializes"),
            json!({"type":"ack","ref":3,"data":{}})
        );
        let err = ErrorFrame {
            kind: ErrorTag::Error,
            reference: None,
            error: ErrorDetail {
                code: crate::error::ErrorCode::BadRequest,
                message: "x".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(err).expect("serializes"),
            json!({"type":"error","error":{"code":"bad_request","message":"x"}})
        );
    }
}
