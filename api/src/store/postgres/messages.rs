//! Messages: creation (with its mention notifications and the completion
//! of its `Idempotency-Key` record, in the same transaction), deletion,
//! history pages, and backfill of a community's sequenced events. Creation
//! and deletion are the two sequenced writes: both take their seq from
//! [`next_seq`].

use std::collections::HashSet;

use async_trait::async_trait;
use chorus_shared::auth::AuthUser;
use chorus_shared::envelope::{Envelope, community_channel, user_channel};
use chorus_shared::protocol::{
    Message, MessageData, MessageDeleted, Notification, NotificationData, Sender, ServerEvent,
};
use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::notifications::NotificationRow;
use super::{PgStore, enqueue, next_seq, now_ms};
use crate::error::ApiError;
use crate::store::{HistoryCursor, MessageStore, NewMessage, NewPost, Page, SequencedEvent};

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

const MESSAGE_COLUMNS: &str = "m.id, m.community_id, m.seq, m.sender_id, u.name as sender_name, \
     u.avatar as sender_avatar, m.content, m.mentions, m.created_at";

/// A short preview of a message for its mention notification.
fn preview(content: &str) -> String {
    const PREVIEW_CHARS: usize = 280;
    match content.char_indices().nth(PREVIEW_CHARS) {
        Some((i, _)) => format!("{}…", &content[..i]),
        None => content.to_owned(),
    }
}

#[async_trait]
impl MessageStore for PgStore {
    async fn post_message(&self, new: NewPost<'_>) -> Result<Option<String>, ApiError> {
        self.post_batched(new).await
    }

    async fn create_message(&self, new: NewMessage<'_>) -> Result<Message, ApiError> {
        let mut tx = self.pool.begin().await?;
        // The community row lock comes first (`next_seq` takes it) and the
        // membership check runs under it. `remove_member` takes the same
        // lock before deleting, so a removal either committed before this
        // check (which then sees it: 403) or waits until this message has
        // committed; a message is never accepted after its sender's
        // removal. A refused message rolls back and gives its seq back.
        let seq = next_seq(&mut tx, new.community_id)
            .await?
            .ok_or(ApiError::NotFound("community"))?;
        // The sender and the mentioned users who are members, in one query.
        let mut asked: Vec<&str> = Vec::with_capacity(new.mentions.len() + 1);
        asked.push(&new.sender.id);
        asked.extend(new.mentions.iter().map(String::as_str));
        let members: HashSet<String> = sqlx::query_scalar(
            "select user_id from community_members where community_id = $1 and user_id = any($2)",
        )
        .bind(new.community_id)
        .bind(&asked)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        if !members.contains(&new.sender.id) {
            return Err(ApiError::Forbidden(
                "only members can post in this community",
            ));
        }
        // Keep the client's order, members only.
        let mentions: Vec<String> = new
            .mentions
            .iter()
            .filter(|m| members.contains(*m))
            .cloned()
            .collect();
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
        metrics::counter!("chorus_api_messages_written_total").increment(1);
        metrics::counter!("chorus_api_notifications_written_total")
            .increment(notified.len() as u64);
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
        let seq = next_seq(&mut tx, community_id)
            .await?
            .ok_or(ApiError::NotFound("community"))?;
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
}
