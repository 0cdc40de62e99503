//! The Postgres implementation of [`Store`]: the pool, the migrations, and
//! the two helpers every sequenced write shares, [`next_seq`] (the
//! sequencing rule) and [`enqueue`] (the outbox insert).
//!
//! Each resource implements its trait of [`crate::store`] in its own file
//! (`users`, `communities`, `messages`, `notifications`, `idempotency`),
//! with its row types and SQL next to the code that runs it.

mod communities;
mod idempotency;
mod messages;
mod notifications;
mod posting;
mod users;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chorus_shared::envelope::Envelope;
use chrono::Utc;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

use super::Store;
use crate::error::ApiError;
use crate::outbox::DirectPublish;

pub(crate) use idempotency::purge_expired as purge_idempotency_keys;

/// Migrations embedded at build time from the workspace's `migrations/`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Time to wait for a pooled connection before answering 503.
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Postgres storage. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    writer: writer::PostWriter,
    wake_publisher: Arc<Notify>,
}

impl PgStore {
    /// Connects lazily: the pool opens connections on first use, so the
    /// service starts (and reports not-ready) while Postgres is away.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        wake_publisher: Arc<Notify>,
        direct: Option<Arc<DirectPublish>>,
        post_linger: std::time::Duration,
    ) -> Result<Self, ApiError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(DEFAULT_ACQUIRE_TIMEOUT)
            // No ping before handing out a connection: it was one more
            // round trip per transaction. A connection that died idle fails
            // its next query, which answers 503, and the pool drops it
            // (sqlx tests a connection when it comes back).
            .test_before_acquire(false)
            .connect_lazy(url)?;
        let writer = writer::PostWriter::start(
            pool.connect_options().as_ref().clone(),
            wake_publisher.clone(),
            direct,
            post_linger,
        );
        Ok(PgStore {
            pool,
            writer,
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

    /// The pool, shared with the outbox publisher.
    pub(crate) fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Wakes the outbox publisher; called after a commit that enqueued
    /// events.
    fn committed_events(&self) {
        self.wake_publisher.notify_one();
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), ApiError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Takes the next seq of a community inside `tx`; `None` if the community
/// does not exist. This is the sequencing rule of Chorus, written only
/// here: every sequenced change (creating or deleting a message) calls it,
/// before it enqueues its events.
///
/// The update takes the community's row lock and holds it until `tx` ends,
/// so writers of one community queue behind each other and commit in seq
/// order; a rolled-back transaction gives its number back, so committed
/// seqs are gap-free; and outbox rows inserted after it get ids in seq
/// order within the community, which is what the publisher relies on.
/// Different communities never contend. [`lock_community`] takes the same
/// lock without taking a seq.
async fn next_seq(
    tx: &mut Transaction<'_, Postgres>,
    community_id: Uuid,
) -> Result<Option<i64>, ApiError> {
    Ok(sqlx::query_scalar(
        "update communities set head_seq = head_seq + 1 where id = $1 returning head_seq",
    )
    .bind(community_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Takes the community's row lock inside `tx`, the one [`next_seq`] takes
/// (`for no key update` conflicts with the update's lock but not with the
/// key-share locks that inserting members takes), and holds it until `tx`
/// ends; false if the community does not exist. Removing a member takes it
/// so that removal and posting serialize (see `create_message`).
async fn lock_community(
    tx: &mut Transaction<'_, Postgres>,
    community_id: Uuid,
) -> Result<bool, ApiError> {
    let found: Option<i32> =
        sqlx::query_scalar("select 1 from communities where id = $1 for no key update")
            .bind(community_id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(found.is_some())
}

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

/// The envelope timestamp of events created now.
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}
