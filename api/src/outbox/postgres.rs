//! The Postgres side of the outbox publisher: under an advisory lock that
//! admits one publisher across all replicas, read unpublished rows in id
//! order, publish them through the sink, and mark what it accepted; and
//! the periodic purge. Marking an event published deletes its row:
//! nothing reads a published row, and a delete writes far less than an
//! update of it would (see `20261207000001_published_events_deleted.sql`).
//! The rows themselves are written by the store's write transactions
//! (`store::postgres::enqueue`, and the `chorus_post_messages` function).
//!
//! The publisher has a session of its own, outside the pool, and keeps the
//! lock while events keep coming: a pass under load is two statements (the
//! read and the mark) instead of a transaction of five. It lets go after
//! a pass that found nothing when nothing was found for a poll interval
//! (so an idle publisher holds nothing, and whoever takes the lock,
//! another replica or a test, stops it within two polls) and after a
//! failed publish. Without the lock, a pass looks for unpublished events
//! before it asks for the lock: an idle poll is one statement, not three
//! (take the lock, read nothing, let it go). Its marks commit without waiting for the WAL flush:
//! a mark lost in a crash publishes those events again, which
//! at-least-once allows, and no publisher fsync competes with the
//! writers'.
//!
//! Events this process's post writers are publishing themselves, or have
//! published and not marked yet, are left out of the reads; a pass waits
//! for those publications before its own (see `direct.rs`).
//!
//! Channels whose events the sink refused are held back (left out of the
//! reads) until a backoff passes, so the rest keep flowing; each channel's
//! events are only ever marked in order, from the front, so a retry starts
//! at its first refused event.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool};
use tokio::sync::Mutex;
use tokio::time::Instant;

use async_trait::async_trait;

use super::{
    DirectPublish, Drained, MAX_HELD_CHANNELS, OUTBOX_BACKOFF_MAX, OUTBOX_BACKOFF_MIN, OUTBOX_POLL,
    OutboxSink, OutboxSource, Publication,
};
use crate::error::ApiError;
use crate::store::purge_idempotency_keys;

/// Advisory lock key held by the one outbox publisher running at a time
/// across replicas ("chorus-outbox" in ASCII, truncated).
pub const OUTBOX_LOCK_KEY: i64 = 0x6368_6f72_7573_6f62;

/// Most rows one purge statement deletes. The first purge after an
/// upgrade from a version that kept published rows for an hour finds up to
/// an hour of them (1.8 million at 500 posts a second); deleted in
/// statements of this size, each commits on its own, in well under a
/// second, instead of one statement holding a transaction and its WAL
/// for all of them.
const PURGE_BATCH: i64 = 10_000;

/// What the publisher needs of Postgres: the API's pool's settings (and
/// the pool, for the purge) and its own session.
#[derive(Debug)]
pub struct OutboxStore {
    pool: PgPool,
    session: Mutex<Option<Session>>,
    /// What this process's post writers publish themselves.
    direct: Option<Arc<DirectPublish>>,
}

/// The publisher's own connection, and whether it holds the lock.
#[derive(Debug)]
struct Session {
    conn: PgConnection,
    leader: bool,
    /// When a pass last found events.
    last_found: Instant,
    /// Channels left out of reads until `held_until`, after the sink
    /// refused one of their events.
    held: Vec<String>,
    held_until: Instant,
    /// How long the next hold lasts: doubles each time channels are
    /// refused, back to the minimum once a pass after a hold ran out
    /// refuses nothing.
    hold: Duration,
    /// The held channels were let back into the reads and no pass has
    /// gone through without refusals since.
    retrying: bool,
}

impl OutboxStore {
    pub fn new(pool: PgPool, direct: Option<Arc<DirectPublish>>) -> Self {
        OutboxStore {
            pool,
            session: Mutex::new(None),
            direct,
        }
    }

    async fn connect(&self) -> Result<Session, ApiError> {
        let options = self
            .pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("synchronous_commit", "off")]);
        Ok(Session {
            conn: PgConnection::connect_with(&options).await?,
            leader: false,
            last_found: Instant::now(),
            held: Vec::new(),
            held_until: Instant::now(),
            hold: OUTBOX_BACKOFF_MIN,
            retrying: false,
        })
    }
}

impl Session {
    /// One pass; see [`OutboxSource::drain`].
    async fn drain(
        &mut self,
        sink: &dyn OutboxSink,
        max: i64,
        direct: Option<&DirectPublish>,
    ) -> Result<Drained, ApiError> {
        let (refusals, skip) = direct.map(DirectPublish::before_read).unwrap_or_default();
        if !self.leader {
            let waiting: bool = sqlx::query_scalar(
                "select exists (select 1 from outbox where published_at is null and id <> all($1))",
            )
            .bind(&skip)
            .fetch_one(&mut self.conn)
            .await?;
            if !waiting {
                return Ok(Drained::IDLE);
            }
            self.leader = sqlx::query_scalar("select pg_try_advisory_lock($1)")
                .bind(OUTBOX_LOCK_KEY)
                .fetch_one(&mut self.conn)
                .await?;
            if !self.leader {
                return Ok(Drained::default());
            }
        }
        if !self.held.is_empty() && Instant::now() >= self.held_until {
            self.held.clear();
            self.retrying = true;
        }
        // `not in` a subquery: Postgres hashes the held list once per read
        // instead of comparing every row with each of its entries.
        let rows: Vec<(i64, String, Vec<u8>, DateTime<Utc>)> = sqlx::query_as(
            "select id, channel, payload, created_at from outbox where published_at is null and channel not in (select unnest($2::text[])) and id <> all($3) order by id limit $1",
        )
        .bind(max)
        .bind(&self.held)
        .bind(&skip)
        .fetch_all(&mut self.conn)
        .await?;
        if rows.is_empty() {
            if self.last_found.elapsed() >= OUTBOX_POLL && self.held.is_empty() {
                self.release().await?;
            }
            return Ok(Drained::IDLE);
        }
        self.last_found = Instant::now();
        if let Some(direct) = direct
            && !direct.settle(refusals).await
        {
            // A writer's publication was refused after the read left its
            // events out: read again, with them, to keep their order.
            return Ok(Drained {
                more: true,
                ..Drained::default()
            });
        }
        let batch: Vec<(String, Vec<u8>)> = rows
            .iter()
            .map(|(_, c, p, _)| (c.clone(), p.clone()))
            .collect();
        let accepted = match sink.publish(&batch).await {
            Publication::PerEntry(accepted) => accepted,
            Publication::Away => {
                self.held.clear();
                metrics::gauge!("chorus_outbox_held_channels").set(0.0);
                self.release().await?;
                return Ok(Drained {
                    failed: true,
                    ..Drained::default()
                });
            }
        };
        // An event counts only when every earlier one of its channel in the
        // batch was accepted too: a channel is marked in order, so a retry
        // republishes from its first refusal on (repeats gateways drop)
        // and never leaves a hole behind a later mark.
        let mut refused: HashSet<&str> = HashSet::new();
        let mut published = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if accepted.get(i).copied().unwrap_or(false) && !refused.contains(row.1.as_str()) {
                published.push(row);
            } else {
                refused.insert(row.1.as_str());
            }
        }
        if !published.is_empty() {
            let ids: Vec<i64> = published.iter().map(|r| r.0).collect();
            sqlx::query("delete from outbox where id = any($1)")
                .bind(&ids)
                .execute(&mut self.conn)
                .await?;
            let now = Utc::now();
            for (_, _, _, created) in &published {
                let lag = (now - *created).to_std().unwrap_or_default();
                metrics::histogram!("chorus_outbox_publish_lag_seconds").record(lag.as_secs_f64());
            }
            metrics::counter!("chorus_outbox_published_total").increment(published.len() as u64);
        }
        // Refused channels are held back, even when that was the whole
        // batch (a shard away with a backlog fills whole batches); more
        // than can be held means the backplane is away, not one shard of
        // it, and the whole loop backs off instead.
        let failed = self.held.len() + refused.len() > MAX_HELD_CHANNELS;
        if failed {
            self.held.clear();
            self.release().await?;
        } else if refused.is_empty() {
            if self.retrying {
                self.hold = OUTBOX_BACKOFF_MIN;
                self.retrying = false;
            }
        } else {
            self.held.extend(refused.into_iter().map(str::to_owned));
            self.held_until = Instant::now() + self.hold;
            self.hold = (self.hold * 2).min(OUTBOX_BACKOFF_MAX);
            self.retrying = false;
        }
        metrics::gauge!("chorus_outbox_held_channels").set(self.held.len() as f64);
        Ok(Drained {
            failed,
            more: !failed && rows.len() as i64 == max,
            idle: false,
        })
    }

    async fn release(&mut self) -> Result<(), ApiError> {
        sqlx::query("select pg_advisory_unlock($1)")
            .bind(OUTBOX_LOCK_KEY)
            .execute(&mut self.conn)
            .await?;
        self.leader = false;
        Ok(())
    }
}

#[async_trait]
impl OutboxSource for OutboxStore {
    /// Publishes up to `max` unpublished events in order through `sink` and
    /// marks them published. Only one publisher across all API replicas
    /// runs at a time: a pass that does not get the lock does nothing. A
    /// database error drops the session, and the lock with it; the next
    /// pass opens a new one.
    async fn drain(&self, sink: &dyn OutboxSink, max: i64) -> Result<Drained, ApiError> {
        let mut session = self.session.lock().await;
        let current = match session.as_mut() {
            Some(s) => s,
            None => session.insert(self.connect().await?),
        };
        let pass = current.drain(sink, max, self.direct.as_deref()).await;
        if pass.is_err() {
            *session = None;
        }
        pass
    }

    /// Deletes outbox rows marked published by API versions that kept them
    /// (a rolling upgrade's older processes) and idempotency records past
    /// their retention (the publisher is the API's one periodic task, so it
    /// runs both), and updates the pending-events gauge.
    async fn purge_expired(&self) -> Result<(), ApiError> {
        loop {
            let purged = sqlx::query(
                "delete from outbox where id in (select id from outbox where published_at is not null limit $1)",
            )
            .bind(PURGE_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if purged < PURGE_BATCH as u64 {
                break;
            }
        }
        purge_idempotency_keys(&self.pool).await?;
        let pending: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(&self.pool)
                .await?;
        metrics::gauge!("chorus_outbox_pending").set(pending as f64);
        Ok(())
    }
}
