//! The notification center: create (emitting the notification to its
//! user), list with unread count, mark read, delete. Every query is scoped
//! to the owning user. Mention notifications are created with their message
//! in `messages`, sharing [`NotificationRow`].

use async_trait::async_trait;
use chorus_shared::envelope::{Envelope, user_channel};
use chorus_shared::protocol::{Notification, NotificationData, ServerEvent};
use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::users::ensure_user;
use super::{PgStore, enqueue, now_ms};
use crate::error::ApiError;
use crate::store::{NewNotification, NotificationStore, Page};

#[derive(FromRow)]
pub(super) struct NotificationRow {
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

const NOTIFICATION_COLUMNS: &str = "id, user_id, type, title, message, data, read, created_at";

#[async_trait]
impl NotificationStore for PgStore {
    async fn create_notification(
        &self,
        new: NewNotification<'_>,
    ) -> Result<Notification, ApiError> {
        let mut tx = self.pool.begin().await?;
        ensure_user(&mut tx, new.user_id).await?;
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
        metrics::counter!("chorus_api_notifications_written_total").increment(1);
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
}
