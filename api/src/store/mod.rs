//! Storage, owned by the API. Handlers reach Postgres only through
//! [`Store`], so they never see SQL or manage transactions.
//!
//! The interface is one trait per resource ([`UserStore`],
//! [`CommunityStore`], [`MessageStore`], [`NotificationStore`],
//! [`IdempotencyStore`]); [`Store`] is their sum plus a liveness ping.
//! Handlers get a `&dyn Store` from `AppState` and call any resource's
//! methods on it without importing the resource traits. [`PgStore`]
//! implements each resource trait in its own file under `postgres/`.
//!
//! Each write method is one transaction that also writes the outbox rows
//! for the events it causes (and wakes the publisher after commit), so an
//! event exists if and only if its change committed. Publishing those rows
//! is not storage: that is the [`crate::outbox`] publisher's job.

mod postgres;

use async_trait::async_trait;
use chorus_shared::auth::AuthUser;
use chorus_shared::protocol::{
    Community, CommunityAccess, Member, MemberRole, Message, MessageDeleted, Notification,
    ServerEvent,
};
use uuid::Uuid;

use crate::error::ApiError;

pub use postgres::PgStore;
pub(crate) use postgres::purge_idempotency_keys;

/// A message to create.
#[derive(Debug)]
pub struct NewMessage<'a> {
    pub community_id: Uuid,
    pub sender: &'a AuthUser,
    /// Already trimmed and length-checked.
    pub content: &'a str,
    /// As requested, deduplicated; the store keeps only members.
    pub mentions: &'a [String],
    /// `Idempotency-Key` whose record the transaction completes.
    pub idempotency_key: Option<&'a str>,
}

/// A message without mentions to create in one statement
/// ([`MessageStore::post_message`]).
#[derive(Debug)]
pub struct NewPost<'a> {
    pub community_id: Uuid,
    pub sender: &'a AuthUser,
    /// Already trimmed and length-checked.
    pub content: &'a str,
    /// `Idempotency-Key` and the request's hash: the record is created,
    /// completed, in the same statement.
    pub idempotency: Option<(&'a str, &'a [u8])>,
}

/// A notification to create.
#[derive(Debug)]
pub struct NewNotification<'a> {
    pub user_id: &'a str,
    pub kind: &'a str,
    pub title: &'a str,
    pub message: &'a str,
    pub data: serde_json::Value,
}

/// Which way a history page goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryCursor {
    /// Newest first, seqs below this one (`None`: from the head).
    Before(Option<i64>),
    /// Oldest first, seqs above this one.
    After(i64),
}

/// A page of rows plus whether more exist beyond it.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

impl<T> Page<T> {
    /// A page from `limit + 1` fetched rows: the extra row only tells
    /// that there is more.
    pub fn from_overfetch<R: Into<T>>(mut rows: Vec<R>, limit: i64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(0);
        let more = rows.len() > limit;
        rows.truncate(limit);
        Page {
            items: rows.into_iter().map(Into::into).collect(),
            more,
        }
    }
}

/// What the store knows about an `Idempotency-Key` when a request begins.
#[derive(Debug, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First use: the request proceeds and its outcome will be recorded.
    Started,
    /// A completed request with the same body: replay its response.
    Replay { status: u16, body: String },
    /// Same key with another body, or the first request is still running.
    Conflict(&'static str),
}

/// One sequenced event of a community, for backfill.
#[derive(Debug, Clone, PartialEq)]
pub struct SequencedEvent {
    pub seq: i64,
    pub event: ServerEvent,
}

/// The storage interface of the API: every resource, and a liveness check.
#[async_trait]
pub trait Store:
    UserStore + CommunityStore + MessageStore + NotificationStore + IdempotencyStore + 'static
{
    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> Result<(), ApiError>;
}

/// User profiles.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates or refreshes a user's profile from their token.
    async fn upsert_user(&self, id: &str, name: &str, avatar: Option<&str>)
    -> Result<(), ApiError>;
}

/// Communities, membership, and access checks.
#[async_trait]
pub trait CommunityStore: Send + Sync {
    async fn create_community(
        &self,
        creator: &str,
        name: &str,
        is_public: bool,
    ) -> Result<Community, ApiError>;
    async fn communities_of(&self, user_id: &str) -> Result<Vec<Community>, ApiError>;
    async fn community(&self, id: Uuid) -> Result<Option<Community>, ApiError>;
    /// The community and the user's role in it (`None` if not a member),
    /// in one round trip: every authorization check and every gateway join
    /// asks this. `None` if the community does not exist.
    async fn access(
        &self,
        community_id: Uuid,
        user_id: &str,
    ) -> Result<Option<(Community, Option<MemberRole>)>, ApiError>;
    /// Many access checks in one query, answered in order: `None` where the
    /// community does not exist.
    async fn access_many(
        &self,
        checks: &[(Uuid, &str)],
    ) -> Result<Vec<Option<CommunityAccess>>, ApiError>;
    /// Adds a member (creating an unknown user named after their id); a
    /// no-op returning the existing member if already there.
    async fn add_member(
        &self,
        community_id: Uuid,
        user_id: &str,
        role: MemberRole,
    ) -> Result<Member, ApiError>;
    /// Removes a member and emits `membership-revoked`; false if not a member.
    async fn remove_member(&self, community_id: Uuid, user_id: &str) -> Result<bool, ApiError>;
    /// Up to `limit` members with user ids after `after` (from the first
    /// when `None`), ordered by user id.
    async fn members(
        &self,
        community_id: Uuid,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<Member>, ApiError>;
}

/// Messages and the sequenced events of a community.
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Creates a message at the next seq, with its mention notifications and
    /// events. `NotFound` for an unknown community, `Forbidden` for a
    /// non-member sender.
    async fn create_message(&self, new: NewMessage<'_>) -> Result<Message, ApiError>;
    /// Creates a message without mentions as [`create_message`] does, in a
    /// batch with other posts (one round trip and one commit per batch),
    /// and returns the response body (the message's JSON).
    /// `Ok(None)` when the `Idempotency-Key` already has a record: nothing
    /// was written, and the caller takes the full idempotency path.
    ///
    /// [`create_message`]: MessageStore::create_message
    async fn post_message(&self, new: NewPost<'_>) -> Result<Option<String>, ApiError>;
    async fn messages(
        &self,
        community_id: Uuid,
        cursor: HistoryCursor,
        limit: i64,
    ) -> Result<Page<Message>, ApiError>;
    /// Deletes a live message at the next seq; `NotFound` if it does not
    /// exist or is already deleted, `Forbidden` unless `by` sent it or is
    /// an official.
    async fn delete_message(&self, id: Uuid, by: &AuthUser) -> Result<MessageDeleted, ApiError>;
    /// Sequenced events with `seq > after`, oldest first, at most `limit`.
    async fn events_after(
        &self,
        community_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<SequencedEvent>, ApiError>;
}

/// The notification center.
#[async_trait]
pub trait NotificationStore: Send + Sync {
    async fn create_notification(&self, new: NewNotification<'_>)
    -> Result<Notification, ApiError>;
    /// `NotFound` when `before` is not one of the user's notifications.
    async fn notifications(
        &self,
        user_id: &str,
        unread_only: bool,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Notification>, ApiError>;
    async fn unread_count(&self, user_id: &str) -> Result<i64, ApiError>;
    async fn mark_read(&self, user_id: &str, id: Uuid) -> Result<Option<Notification>, ApiError>;
    async fn mark_all_read(&self, user_id: &str) -> Result<i64, ApiError>;
    async fn delete_notification(&self, user_id: &str, id: Uuid) -> Result<bool, ApiError>;
}

/// `Idempotency-Key` records of message creation.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    async fn idempotency_begin(
        &self,
        user_id: &str,
        key: &str,
        request_hash: &[u8],
    ) -> Result<IdempotencyBegin, ApiError>;
    /// Records a response other than the success the write transaction
    /// records itself (a client error).
    async fn idempotency_finish(
        &self,
        user_id: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), ApiError>;
    /// Forgets an in-flight key whose request failed transiently, so a
    /// retry can run.
    async fn idempotency_release(&self, user_id: &str, key: &str) -> Result<(), ApiError>;
}
