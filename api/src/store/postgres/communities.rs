//! Communities, their members, and access checks (a community plus one
//! user's role in it), the question every authorization and every gateway
//! join asks. Removing a member is the one write here that emits an event
//! (`membership-revoked` to the removed user).

use async_trait::async_trait;
use chorus_shared::envelope::{Envelope, user_channel};
use chorus_shared::protocol::{
    Community, CommunityAccess, Member, MemberRole, MembershipRevoked, ServerEvent,
};
use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::users::ensure_user;
use super::{PgStore, enqueue, lock_community, now_ms};
use crate::error::ApiError;
use crate::store::{CommunityStore, Page};

/// Postgres SQLSTATE for a foreign key violation.
const FOREIGN_KEY_VIOLATION: &str = "23503";

fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(FOREIGN_KEY_VIOLATION))
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

/// One answer of [`CommunityStore::access_many`]; the community's columns
/// are null when it does not exist.
#[derive(FromRow)]
struct AccessManyRow {
    id: Option<Uuid>,
    is_public: Option<bool>,
    head_seq: Option<i64>,
    role: Option<String>,
}

#[async_trait]
impl CommunityStore for PgStore {
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

    async fn access_many(
        &self,
        checks: &[(Uuid, &str)],
    ) -> Result<Vec<Option<CommunityAccess>>, ApiError> {
        // The checks go as one JSON array of [community, user] pairs. With
        // two array parameters the planner sized the custom plan of each
        // call by the arrays' lengths and found it cheaper than the generic
        // one (sized for ten), so it planned the statement at every call:
        // about three quarters of Postgres's CPU for a batch of a few. A
        // JSON array is sized the same either way, so the session keeps
        // the generic plan; `limit 1` keeps each lookup an index probe
        // whatever the size estimate.
        let pairs = serde_json::to_string(checks).map_err(|e| ApiError::Internal(e.to_string()))?;
        // One row per check, in the checks' order (`ordinality`).
        let rows: Vec<AccessManyRow> = sqlx::query_as(
            "select c.id, c.is_public, c.head_seq, m.role \
             from jsonb_array_elements($1::text::jsonb) with ordinality as t(pair, i) \
             left join lateral (select id, is_public, head_seq from communities \
             where id = (t.pair->>0)::uuid limit 1) c on true \
             left join lateral (select role from community_members \
             where community_id = (t.pair->>0)::uuid and user_id = t.pair->>1 limit 1) m on true \
             order by t.i",
        )
        .bind(pairs)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                Some(CommunityAccess {
                    community_id: r.id?,
                    is_public: r.is_public?,
                    head_seq: r.head_seq?,
                    role: r.role.as_deref().and_then(MemberRole::parse),
                })
            })
            .collect())
    }

    async fn add_member(
        &self,
        community_id: Uuid,
        user_id: &str,
        role: MemberRole,
    ) -> Result<Member, ApiError> {
        let mut tx = self.pool.begin().await?;
        ensure_user(&mut tx, user_id).await?;
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
        // Serializes with posting: a message of this user either committed
        // before (and its event precedes `membership-revoked`) or will see
        // the removal.
        if !lock_community(&mut tx, community_id).await? {
            return Ok(false);
        }
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

    async fn members(
        &self,
        community_id: Uuid,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<Member>, ApiError> {
        // Keyset page on the (community_id, user_id) index. User ids are
        // ASCII and compared bytewise (collate "C") so the order is the
        // same on every database, whatever its default collation.
        let rows: Vec<MemberRow> = sqlx::query_as(
            "select m.user_id, u.name, u.avatar, m.role from community_members m \
             join users u on u.id = m.user_id \
             where m.community_id = $1 and m.user_id collate \"C\" > $2 \
             order by m.user_id collate \"C\" limit $3",
        )
        .bind(community_id)
        .bind(after.unwrap_or(""))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(Page::from_overfetch(rows, limit))
    }
}
