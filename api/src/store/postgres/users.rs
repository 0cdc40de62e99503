//! User profiles: the upsert behind every authenticated request, and the
//! placeholder user that adding a member or notifying someone unknown
//! creates (named after their id until their first request).

use async_trait::async_trait;
use sqlx::{Postgres, Transaction};

use super::PgStore;
use crate::error::ApiError;
use crate::store::UserStore;

#[async_trait]
impl UserStore for PgStore {
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
}

/// Creates `id` named after itself inside `tx` unless the user exists.
pub(super) async fn ensure_user(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
) -> Result<(), ApiError> {
    sqlx::query("insert into users (id, name) values ($1, $1) on conflict (id) do nothing")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
