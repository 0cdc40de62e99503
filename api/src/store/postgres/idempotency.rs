//! `Idempotency-Key` records of message creation: begin (first use,
//! replay, or conflict), finish with a client error, release after a
//! transient failure, and the retention purge the outbox publisher runs.
//! A successful creation completes its record inside the message's own
//! transaction (in `messages`), so a replay always matches what committed.

use async_trait::async_trait;
use sqlx::postgres::PgPool;

use super::PgStore;
use crate::error::ApiError;
use crate::store::{IdempotencyBegin, IdempotencyStore};

/// How long an in-flight idempotency record blocks retries before it is
/// considered abandoned (its request's process died): longer than any
/// request can take, short enough that a client's retry eventually works.
const IDEMPOTENCY_IN_FLIGHT_TIMEOUT_S: i64 = 60;

/// How long `Idempotency-Key` records are kept: the contract's "at least
/// 24 h" plus an hour of slack for clock skew between clients and us.
const IDEMPOTENCY_RETENTION_H: i64 = 25;

#[async_trait]
impl IdempotencyStore for PgStore {
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
}

/// Deletes records past their retention.
pub(crate) async fn purge_expired(pool: &PgPool) -> Result<(), ApiError> {
    sqlx::query(
        "delete from idempotency_keys where created_at < now() - make_interval(hours => $1)",
    )
    .bind(IDEMPOTENCY_RETENTION_H as i32)
    .execute(pool)
    .await?;
    Ok(())
}
