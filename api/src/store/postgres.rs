//! The Postgres implementation of [`Store`].
//!
//! Sequencing: `update communities set head_seq = head_seq + 1 ... returning
//! head_seq` takes the community row lock for the rest of the transaction,
//! so writers of one community queue behind each other, a rolled-back
//! transaction gives its seq back, and committed seqs are gap-free. Outbox
//! rows are inserted after that lock is taken, so their ids follow seq
//! order within a community.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chorus_shared::auth::AuthUser;
use chorus_shared::envelope::{Envelope, community_channel, user_channel};
use chorus_shared::protocol::{
    Community, Member, MemberRole, MembershipRevoked, Message, MessageData, MessageDeleted,
    Notification, NotificationData, Sender, ServerEvent,
};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{FromRow, Postgres, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    Drained, HistoryCursor, IdempotencyBegin, NewMessage, NewNotification, OutboxSink, Page,
    SequencedEvent, Store,
};
use crate::error::ApiError;

/// Migrations embedded at build time from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Advisory lock key held by the one outbox publisher running at a time
/// across replicas ("chorus-outbox" in ASCII, truncated).
pub const OUTBOX_LOCK_KEY: i64 = 0x6368_6f72_7573_6f62;

/// How long an in-flight idempotency record blocks retries before it is
/// considered abandoned (its request's process died): longer than any
/// request can take, short enough that a client's retry eventually works.
const IDEMPOTENCY_IN_FLIGHT_TIMEOUT_S: i64 = 60;

/// How long `Idempotency-Key` records are kept: the contract's "at least
/// 24 h" plus an hour of slack for clock skew between clients and us.
const IDEMPOTENCY_RETENTION_H: i64 = 25;

/// How long published outbox rows are kept for inspection before purging.
const OUTBOX_RETENTION_MIN: i64 = 60;

/// Time to wait for a pooled connection before answering 503.
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Postgres storage. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    wake_publisher: Arc<Notify>,
}

impl PgStore {
    /// Connects lazily: the pool opens connections on first use, so the
    /// service starts (and reports not-ready) while Postgres is away.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        wake_publisher: Arc<Notify>,
    ) -> Result<Self, ApiError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(DEFAULT_ACQUIRE_TIMEOUT)
            .connect_lazy(url)?;
        Ok(PgStore {
            pool,
            wake_publisher,
        })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), ApiError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for checked-out connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn committed_events(&self) {
        self.wake_publisher.notify_one();
    }
}

#[derive(FromRow)]
struct CommunityRow {
    id: Uuid,
    name: String,
    is_public: bool,
    created_by: String,
    created_at: DateTime<Utc>,
    head_seq: i64,
}

/// A community with the asking user's role, if any.
#[derive(FromRow)]
struct AccessRow {
    #[sqlx(flatten)]
    community: CommunityRow,
    role: Option<String>,
}

impl From<CommunityRow> for Community {
    fn from(r: CommunityRow) -> Self {
        Community {
            id: r.id,
            name: r.name,
            is_public: r.is_public,
            created_by: r.created_by,
            created_at: r.created_at,
            head_seq: r.head_seq,
        }
    }
}

#[derive(FromRow)]
struct MemberRow {
    user_id: String,
    name: String,
    avatar: Option<String>,
    role: String,
}

impl From<MemberRow> for Member {
    fn from(r: MemberRow) -> Self {
        Member {
            user_id: r.user_id,
            name: r.name,
            avatar: r.avatar,
            role: MemberRole::parse(&r.role).unwrap_or(MemberRole::Member),
        }
    }
}

#[derive(FromRow)]
struct MessageRow {
    id: Uuid,
    community_id: Uuid,
    seq: i64,
    sender_id: String,
    sender_name: String,
    sender_avatar: Option<String>,
    content: String,
    mentions: Vec<String>,
    created_at: DateTime<Utc>,
}

impl From<MessageRow> for Message {
    fn from(r: MessageRow) -> Self {
        Message {
            id: r.id,
            community_id: r.community_id,
            seq: r.seq,
            sender: Sender {
                id: r.sender_id,
                name: r.sender_name,
                avatar: r.sender_avatar,
            },
            content: r.content,
            mentions: r.mentions,
            created_at: r.created_at,
        }
    }
}

#[derive(FromRow)]
struct EventRow {
    event_seq: i64,
    deleted: bool,
    #[sqlx(flatten)]
    message: MessageRow,
}

#[derive(FromRow)]
struct NotificationRow {
    id: Uuid,
    user_id: String,
    #[sqlx(rename = "type")]
    kind: String,
    title: String,
    message: String,
    data: serde_json::Value,
    read: bool,
    created_at: DateTime<Utc>,
}

impl From<NotificationRow> for Notification {
    fn from(r: NotificationRow) -> Self {
        Notification {
            id: r.id,
            user_id: r.user_id,
            kind: r.kind,
            title: r.title,
            message: r.message,
            data: r.data,
            read: r.read,
            created_at: r.created_at,
        }
    }
}

const MESSAGE_COLUMNS: &str = "m.id, m.community_id, m.seq, m.sender_id, u.name as sender_name, \
     u.avatar as sender_avatar, m.content, m.mentions, m.created_at";

const NOTIFICATION_COLUMNS: &str = "id, user_id, type, title, message, data, read, created_at";

/// Queues events in the outbox inside `tx`.
async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    events: &[(String, Envelope)],
) -> Result<(), ApiError> {
    if events.is_empty() {
        return Ok(());
    }
    let channels: Vec<&str> = events.iter().map(|(c, _)| c.as_str()).collect();
    let payloads: Vec<Vec<u8>> = events.iter().map(|(_, e)| e.encode()).collect();
    sqlx::query(
        "insert into outbox (channel, payload) select * from unnest($1::text[], $2::bytea[])",
    )
    .bind(&channels)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Postgres SQLSTATE for a foreign key violation.
const FOREIGN_KEY_VIOLATION: &str = "23503";

fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(FOREIGN_KEY_VIOLATION))
}

/// A short preview of a message for its mention notification.
fn preview(content: &str) -> String {
    const PREVIEW_CHARS: usize = 280;
    match content.char_indices().nth(PREVIEW_CHARS) {
        Some((i, _)) => format!("{}…", &content[..i]),
        None => content.to_owned(),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), ApiError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn upsert_user(
        &self,
        id: &str,
        name: &str,
        avatar: Option<&str>,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "insert into users (id, name, avatar) values ($1, $2, $3) \
             on conflict (id) do update set name = excluded.name, avatar = excluded.avatar, updated_at = now() \
             where users.name is distinct from excluded.name or users.avatar is distinct from excluded.avatar",
        )
        .bind(id)
        .bind(name)
        .bind(avatar)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn create_community(
        &self,
        creator: &str,
        name: &str,
        is_public: bool,
    ) -> Result<Community, ApiError> {
        let mut tx = self.pool.begin().await?;
        let row: CommunityRow = sqlx::query_as(
            "insert into communities (id, name, is_public, created_by) values ($1, $2, $3, $4) \
             returning id, name, is_public, created_by, created_at, head_seq",
        )
        .bind(Uuid::now_v7())
        .bind(name)
        .bind(is_public)
        .bind(creator)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "insert into community_members (community_id, user_id, role) values ($1, $2, 'owner')",
        )
        .bind(row.id)
        .bind(creator)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    async fn communities_of(&self, user_id: &str) -> Result<Vec<Community>, ApiError> {
        let rows: Vec<CommunityRow> = sqlx::query_as(
            "select c.id, c.name, c.is_public, c.created_by, c.created_at, c.head_seq \
             from community_members m join communities c on c.id = m.community_id \
             where m.user_id = $1 order by c.id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn community(&self, id: Uuid) -> Result<Option<Community>, ApiError> {
        let row: Option<CommunityRow> = sqlx::query_as(
            "select id, name, is_public, created_by, created_at, head_seq from communities where id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    async fn access(
        &self,
        community_id: Uuid,
        user_id: &str,
    ) -> Result<Option<(Community, Option<MemberRole>)>, ApiError> {
        let row: Option<AccessRow> = sqlx::query_as(
            "select c.id, c.name, c.is_public, c.created_by, c.created_at, c.head_seq, m.role \
             from communities c left join community_members m \
             on m.community_id = c.id and m.user_id = $2 where c.id = $1",
        )
        .bind(community_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| {
            let role = r.role.as_deref().and_then(MemberRole::parse);
            (r.community.into(), role)
        }))
    }

    async fn add_member(
        &self,
        community_id: Uuid,
        user_id: &str,
        role: MemberRole,
    ) -> Result<Member, ApiError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("insert into users (id, name) values ($1, $1) on conflict (id) do nothing")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "insert into community_members (community_id, user_id, role) values ($1, $2, $3) \
             on conflict (community_id, user_id) do nothing",
        )
        .bind(community_id)
        .bind(user_id)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_fk_violation(&e) {
                ApiError::NotFound("community")
            } else {
                e.into()
            }
        })?;
        let member: MemberRow = sqlx::query_as(
            "select m.user_id, u.name, u.avatar, m.role from community_members m \
             join users u on u.id = m.user_id where m.community_id = $1 and m.user_id = $2",
        )
        .bind(community_id)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(member.into())
    }

    async fn remove_member(&self, community_id: Uuid, user_id: &str) -> Result<bool, ApiError> {
        let mut tx = self.pool.begin().await?;
        let removed =
            sqlx::query("delete from community_members where community_id = $1 and user_id = $2")
                .bind(community_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
        if removed {
            let event = ServerEvent::MembershipRevoked(MembershipRevoked { community_id });
            enqueue(
                &mut tx,
                &[(
                    user_channel(user_id),
                    Envelope::new(Some(community_id), None, now_ms(), event),
                )],
            )
            .await?;
        }
        tx.commit().await?;
        if removed {
            self.committed_events();
        }
        Ok(removed)
    }

    async fn members(&self, community_id: Uuid) -> Result<Vec<Member>, ApiError> {
        let rows: Vec<MemberRow> = sqlx::query_as(
            "select m.user_id, u.name, u.avatar, m.role from community_members m \
             join users u on u.id = m.user_id where m.community_id = $1 order by m.joined_at, m.user_id",
        )
        .bind(community_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn create_message(&self, new: NewMessage<'_>) -> Result<Message, ApiError> {
        let mut tx = self.pool.begin().await?;
        let access: Option<(Option<String>,)> = sqlx::query_as(
            "select m.role from communities c left join community_members m \
             on m.community_id = c.id and m.user_id = $2 where c.id = $1",
        )
        .bind(new.community_id)
        .bind(&new.sender.id)
        .fetch_optional(&mut *tx)
        .await?;
        match access {
            None => return Err(ApiError::NotFound("community")),
            Some((None,)) => {
                return Err(ApiError::Forbidden(
                    "only members can post in this community",
                ));
            }
            Some((Some(_),)) => {}
        }
        let member_mentions: Vec<String> = if new.mentions.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "select user_id from community_members where community_id = $1 and user_id = any($2)",
            )
            .bind(new.community_id)
            .bind(new.mentions)
            .fetch_all(&mut *tx)
            .await?
        };
        // Keep the client's order, members only.
        let mentions: Vec<String> = new
            .mentions
            .iter()
            .filter(|m| member_mentions.contains(m))
            .cloned()
            .collect();
        let seq: i64 = sqlx::query_scalar(
            "update communities set head_seq = head_seq + 1 where id = $1 returning head_seq",
        )
        .bind(new.community_id)
        .fetch_one(&mut *tx)
        .await?;
        let id = Uuid::now_v7();
        let created_at: DateTime<Utc> = sqlx::query_scalar(
            "insert into messages (id, community_id, seq, sender_id, content, mentions) \
             values ($1, $2, $3, $4, $5, $6) returning created_at",
        )
        .bind(id)
        .bind(new.community_id)
        .bind(seq)
        .bind(&new.sender.id)
        .bind(new.content)
        .bind(&mentions)
        .fetch_one(&mut *tx)
        .await?;
        // Postgres keeps microseconds; the wire has milliseconds. Truncate
        // now so the live event and later history agree exactly.
        let created_at =
            DateTime::from_timestamp_millis(created_at.timestamp_millis()).unwrap_or(created_at);
        let message = Message {
            id,
            community_id: new.community_id,
            seq,
            sender: Sender {
                id: new.sender.id.clone(),
                name: new.sender.name.clone(),
                avatar: new.sender.avatar.clone(),
            },
            content: new.content.to_owned(),
            mentions,
            created_at,
        };

        let ts = now_ms();
        let mut events = vec![(
            community_channel(&new.community_id),
            Envelope::new(
                Some(new.community_id),
                Some(seq),
                ts,
                ServerEvent::NewMessage(MessageData {
                    message: message.clone(),
                }),
            ),
        )];
        let notified: Vec<&String> = message
            .mentions
            .iter()
            .filter(|m| **m != new.sender.id)
            .collect();
        if !notified.is_empty() {
            let title = format!("{} mentioned you", new.sender.name);
            let body = preview(new.content);
            let data = serde_json::json!({
                "communityId": new.community_id,
                "messageId": id,
                "seq": seq,
                "senderId": new.sender.id,
            });
            let ids: Vec<Uuid> = notified.iter().map(|_| Uuid::now_v7()).collect();
            let rows: Vec<NotificationRow> = sqlx::query_as(
                "insert into notifications (id, user_id, type, title, message, data) \
                 select id, user_id, 'mention', $3, $4, $5 from unnest($1::uuid[], $2::text[]) as t(id, user_id) \
                 returning id, user_id, type, title, message, data, read, created_at",
            )
            .bind(&ids)
            .bind(&notified)
            .bind(&title)
            .bind(&body)
            .bind(&data)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let n: Notification = row.into();
                events.push((
                    user_channel(&n.user_id),
                    Envelope::new(
                        None,
                        None,
                        ts,
                        ServerEvent::Notification(NotificationData { notification: n }),
                    ),
                ));
            }
        }
        enqueue(&mut tx, &events).await?;
        if let Some(key) = new.idempotency_key {
            let body =
                serde_json::to_string(&message).map_err(|e| ApiError::Internal(e.to_string()))?;
            sqlx::query("update idempotency_keys set status = 201, body = $3 where user_id = $1 and key = $2")
                .bind(&new.sender.id)
                .bind(key)
                .bind(body)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.committed_events();
        Ok(message)
    }

    async fn messages(
        &self,
        community_id: Uuid,
        cursor: HistoryCursor,
        limit: i64,
    ) -> Result<Page<Message>, ApiError> {
        let (sql, bound) = match cursor {
            HistoryCursor::Before(before) => (
                format!(
                    "select {MESSAGE_COLUMNS} from messages m join users u on u.id = m.sender_id \
                     where m.community_id = $1 and m.seq < $2 and m.deleted_at is null \
                     order by m.seq desc limit $3"
                ),
                before.unwrap_or(i64::MAX),
            ),
            HistoryCursor::After(after) => (
                format!(
                    "select {MESSAGE_COLUMNS} from messages m join users u on u.id = m.sender_id \
                     where m.community_id = $1 and m.seq > $2 and m.deleted_at is null \
                     order by m.seq asc limit $3"
                ),
                after,
            ),
        };
        let rows: Vec<MessageRow> = sqlx::query_as(&sql)
            .bind(community_id)
            .bind(bound)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_overfetch(rows, limit))
    }

    async fn delete_message(&self, id: Uuid, by: &AuthUser) -> Result<MessageDeleted, ApiError> {
        let mut tx = self.pool.begin().await?;
        let found: Option<(Uuid, String)> = sqlx::query_as(
            "select community_id, sender_id from messages where id = $1 and deleted_at is null",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((community_id, sender_id)) = found else {
            return Err(ApiError::NotFound("message"));
        };
        if sender_id != by.id && !by.is_official() {
            return Err(ApiError::Forbidden(
                "only the sender or an official can delete this message",
            ));
        }
        let seq: i64 = sqlx::query_scalar(
            "update communities set head_seq = head_seq + 1 where id = $1 returning head_seq",
        )
        .bind(community_id)
        .fetch_one(&mut *tx)
        .await?;
        // A concurrent delete may have won while we waited for the lock;
        // then this transaction rolls back and gives its seq back.
        let updated = sqlx::query(
            "update messages set deleted_at = now(), deleted_seq = $2 where id = $1 and deleted_at is null",
        )
        .bind(id)
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(ApiError::NotFound("message"));
        }
        let deleted = MessageDeleted {
            community_id,
            message_id: id,
            seq,
        };
        let env = Envelope::new(
            Some(community_id),
            Some(seq),
            now_ms(),
            ServerEvent::MessageDeleted(deleted.clone()),
        );
        enqueue(&mut tx, &[(community_channel(&community_id), env)]).await?;
        tx.commit().await?;
        self.committed_events();
        Ok(deleted)
    }

    async fn events_after(
        &self,
        community_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<SequencedEvent>, ApiError> {
        let sql = format!(
            "select * from ( \
               select m.seq as event_seq, false as deleted, {MESSAGE_COLUMNS} \
               from messages m join users u on u.id = m.sender_id \
               where m.community_id = $1 and m.seq > $2 and m.deleted_at is null \
               union all \
               select m.deleted_seq as event_seq, true as deleted, {MESSAGE_COLUMNS} \
               from messages m join users u on u.id = m.sender_id \
               where m.community_id = $1 and m.deleted_seq > $2 \
             ) e order by event_seq limit $3"
        );
        let rows: Vec<EventRow> = sqlx::query_as(&sql)
            .bind(community_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| SequencedEvent {
                seq: r.event_seq,
                event: if r.deleted {
                    ServerEvent::MessageDeleted(MessageDeleted {
                        community_id,
                        message_id: r.message.id,
                        seq: r.event_seq,
                    })
                } else {
                    ServerEvent::NewMessage(MessageData {
                        message: r.message.into(),
                    })
                },
            })
            .collect())
    }

    async fn create_notification(
        &self,
        new: NewNotification<'_>,
    ) -> Result<Notification, ApiError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("insert into users (id, name) values ($1, $1) on conflict (id) do nothing")
            .bind(new.user_id)
            .execute(&mut *tx)
            .await?;
        let row: NotificationRow = sqlx::query_as(&format!(
            "insert into notifications (id, user_id, type, title, message, data) \
             values ($1, $2, $3, $4, $5, $6) returning {NOTIFICATION_COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(new.user_id)
        .bind(new.kind)
        .bind(new.title)
        .bind(new.message)
        .bind(&new.data)
        .fetch_one(&mut *tx)
        .await?;
        let n: Notification = row.into();
        let env = Envelope::new(
            None,
            None,
            now_ms(),
            ServerEvent::Notification(NotificationData {
                notification: n.clone(),
            }),
        );
        enqueue(&mut tx, &[(user_channel(new.user_id), env)]).await?;
        tx.commit().await?;
        self.committed_events();
        Ok(n)
    }

    async fn notifications(
        &self,
        user_id: &str,
        unread_only: bool,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Notification>, ApiError> {
        if let Some(cursor) = before {
            let known: Option<i32> =
                sqlx::query_scalar("select 1 from notifications where id = $1 and user_id = $2")
                    .bind(cursor)
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await?;
            if known.is_none() {
                return Err(ApiError::NotFound("notification cursor"));
            }
        }
        let rows: Vec<NotificationRow> = sqlx::query_as(&format!(
            "select {NOTIFICATION_COLUMNS} from notifications \
             where user_id = $1 and ($2::uuid is null or id < $2) and (not $3 or not read) \
             order by id desc limit $4"
        ))
        .bind(user_id)
        .bind(before)
        .bind(unread_only)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(Page::from_overfetch(rows, limit))
    }

    async fn unread_count(&self, user_id: &str) -> Result<i64, ApiError> {
        Ok(
            sqlx::query_scalar(
                "select count(*) from notifications where user_id = $1 and not read",
            )
            .bind(user_id)
            .fetch_one(&self.pool)
            .await?,
        )
    }

    async fn mark_read(&self, user_id: &str, id: Uuid) -> Result<Option<Notification>, ApiError> {
        let row: Option<NotificationRow> = sqlx::query_as(&format!(
            "update notifications set read = true where id = $1 and user_id = $2 returning {NOTIFICATION_COLUMNS}"
        ))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    async fn mark_all_read(&self, user_id: &str) -> Result<i64, ApiError> {
        let n = sqlx::query("update notifications set read = true where user_id = $1 and not read")
            .bind(user_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    }

    async fn delete_notification(&self, user_id: &str, id: Uuid) -> Result<bool, ApiError> {
        let n = sqlx::query("delete from notifications where id = $1 and user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn idempotency_begin(
        &self,
        user_id: &str,
        key: &str,
        request_hash: &[u8],
    ) -> Result<IdempotencyBegin, ApiError> {
        let inserted: Option<i32> = sqlx::query_scalar(
            "insert into idempotency_keys (user_id, key, request_hash) values ($1, $2, $3) \
             on conflict (user_id, key) do nothing returning 1",
        )
        .bind(user_id)
        .bind(key)
        .bind(request_hash)
        .fetch_optional(&self.pool)
        .await?;
        if inserted.is_some() {
            return Ok(IdempotencyBegin::Started);
        }
        let existing: Option<(Vec<u8>, Option<i16>, Option<String>)> = sqlx::query_as(
            "select request_hash, status, body from idempotency_keys where user_id = $1 and key = $2",
        )
        .bind(user_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some((hash, status, body)) = existing else {
            // Purged between the two statements: treat as in flight, the
            // client's retry will start afresh.
            return Ok(IdempotencyBegin::Conflict(
                "Idempotency-Key is being processed, retry",
            ));
        };
        if hash != request_hash {
            return Ok(IdempotencyBegin::Conflict(
                "Idempotency-Key was used with a different request",
            ));
        }
        match (status, body) {
            (Some(status), Some(body)) => Ok(IdempotencyBegin::Replay {
                status: u16::try_from(status).unwrap_or(500),
                body,
            }),
            _ => {
                // In flight, unless its owner died long ago: then take over.
                let taken: Option<i32> = sqlx::query_scalar(
                    "update idempotency_keys set created_at = now() \
                     where user_id = $1 and key = $2 and status is null \
                     and created_at < now() - make_interval(secs => $3) returning 1",
                )
                .bind(user_id)
                .bind(key)
                .bind(IDEMPOTENCY_IN_FLIGHT_TIMEOUT_S as f64)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match taken {
                    Some(_) => IdempotencyBegin::Started,
                    None => IdempotencyBegin::Conflict(
                        "a request with this Idempotency-Key is still in flight",
                    ),
                })
            }
        }
    }

    async fn idempotency_finish(
        &self,
        user_id: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "update idempotency_keys set status = $3, body = $4 where user_id = $1 and key = $2",
        )
        .bind(user_id)
        .bind(key)
        .bind(i16::try_from(status).unwrap_or(500))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn idempotency_release(&self, user_id: &str, key: &str) -> Result<(), ApiError> {
        sqlx::query(
            "delete from idempotency_keys where user_id = $1 and key = $2 and status is null",
        )
        .bind(user_id)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn drain_outbox(&self, sink: &dyn OutboxSink, max: i64) -> Result<Drained, ApiError> {
        let mut tx = self.pool.begin().await?;
        let leader: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
            .bind(OUTBOX_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !leader {
            return Ok(Drained::default());
        }
        let rows: Vec<(i64, String, Vec<u8>, DateTime<Utc>)> = sqlx::query_as(
            "select id, channel, payload, created_at from outbox where published_at is null order by id limit $1",
        )
        .bind(max)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(Drained::default());
        }
        let batch: Vec<(String, Vec<u8>)> = rows
            .iter()
            .map(|(_, c, p, _)| (c.clone(), p.clone()))
            .collect();
        let published = sink.publish(&batch).await.min(rows.len());
        if published > 0 {
            let ids: Vec<i64> = rows[..published].iter().map(|r| r.0).collect();
            sqlx::query("update outbox set published_at = now() where id = any($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            let now = Utc::now();
            for (_, _, _, created) in &rows[..published] {
                let lag = (now - *created).to_std().unwrap_or_default();
                metrics::histogram!("chorus_outbox_publish_lag_seconds").record(lag.as_secs_f64());
            }
            metrics::counter!("chorus_outbox_published_total").increment(published as u64);
        }
        let failed = published < rows.len();
        Ok(Drained {
            published,
            failed,
            more: !failed && rows.len() as i64 == max,
        })
    }

    async fn purge_expired(&self) -> Result<(), ApiError> {
        sqlx::query("delete from outbox where published_at < now() - make_interval(mins => $1)")
            .bind(OUTBOX_RETENTION_MIN as i32)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "delete from idempotency_keys where created_at < now() - make_interval(hours => $1)",
        )
        .bind(IDEMPOTENCY_RETENTION_H as i32)
        .execute(&self.pool)
        .await?;
        let pending: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(&self.pool)
                .await?;
        metrics::gauge!("chorus_outbox_pending").set(pending as f64);
        Ok(())
    }
}
