//! The Postgres side of the outbox publisher: under an advisory lock that
//! admits one publisher across all replicas, read unpublished rows in id
//! order, publish them through the sink, and mark what it accepted; and
//! the periodic retention purge. The rows themselves are written by the
//! store's write transactions (`store::postgres::enqueue`).

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;

use async_trait::async_trait;

use super::{Drained, OutboxSink, OutboxSource};
use crate::error::ApiError;
use crate::store::purge_idempotency_keys;

/// Advisory lock key held by the one outbox publisher running at a time
/// across replicas ("chorus-outbox" in ASCII, truncated).
pub const OUTBOX_LOCK_KEY: i64 = 0x6368_6f72_7573_6f62;

/// How long published outbox rows are kept for inspection before purging.
const OUTBOX_RETENTION_MIN: i64 = 60;

/// What the publisher needs of Postgres: a handle on the API's pool.
#[derive(Debug, Clone)]
pub struct OutboxStore {
    pool: PgPool,
}

impl OutboxStore {
    pub fn new(pool: PgPool) -> Self {
        OutboxStore { pool }
    }
}

#[async_trait]
impl OutboxSource for OutboxStore {
    /// Publishes up to `max` unpublished events in order through `sink` and
    /// marks them published. Only one publisher across all API replicas
    /// runs at a time: a pass that does not get the lock does nothing.
    async fn drain(&self, sink: &dyn OutboxSink, max: i64) -> Result<Drained, ApiError> {
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
            failed,
            more: !failed && rows.len() as i64 == max,
        })
    }

    /// Deletes published outbox rows and idempotency records past their
    /// retention (the publisher is the API's one periodic task, so it runs
    /// both), and updates the pending-events gauge.
    async fn purge_expired(&self) -> Result<(), ApiError> {
        sqlx::query("delete from outbox where published_at < now() - make_interval(mins => $1)")
            .bind(OUTBOX_RETENTION_MIN as i32)
            .execute(&self.pool)
            .await?;
        purge_idempotency_keys(&self.pool).await?;
        let pending: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(&self.pool)
                .await?;
        metrics::gauge!("chorus_outbox_pending").set(pending as f64);
        Ok(())
    }
}
