//! Messages: create (with `Idempotency-Key`), history pages, deletion.

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_shared::auth::AuthUser;
use chorus_shared::protocol::{MAX_MESSAGE_CHARS, Message, MessagePage, SendMessage};
use sha2::{Digest, Sha256};

use super::trimmed;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, Body, Params, parse_id};
use crate::state::{AppState, Bucket};
use crate::store::{HistoryCursor, IdempotencyBegin, NewMessage, NewPost};

/// Most entries a message's `mentions` may hold: a bound on the
/// notification fan-out a single request can cause (Discord's own cap on
/// mass mentions is in this range). Entries are counted as sent,
/// duplicates included, so an over-long list is refused before any work
/// per entry; a client has no reason to name a user twice.
pub const MAX_MENTIONS: usize = 50;

/// Longest accepted `Idempotency-Key` (UUIDs and ULIDs fit easily).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Default history page size (contract).
const DEFAULT_HISTORY_LIMIT: i64 = 50;

#[utoipa::path(
    post,
    path = "/api/messages-realtime",
    operation_id = "postMessage",
    tag = "messages",
    summary = "Send a message (members only). Mentioned members get a `mention` notification. With an `Idempotency-Key`, a retry returns the first response and creates nothing.",
    request_body = chorus_shared::protocol::SendMessage,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "per user, kept at least 24 h; at most 255 characters"),
    ),
    responses(
        (status = 201, description = "created and published", body = chorus_shared::protocol::Message),
        (status = 400, description = "content empty after trimming or over 4000 characters, too many mentions", body = chorus_shared::error::ErrorBody),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 403, description = "not a member", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "no such community", body = chorus_shared::error::ErrorBody),
        (status = 409, description = "the same Idempotency-Key with another body, or still in flight", body = chorus_shared::error::ErrorBody),
        (status = 429, description = "over the per-user message rate (see `Retry-After`)", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Authed(user): Authed,
    headers: HeaderMap,
    body: Body<SendMessage>,
) -> ApiResult<Response> {
    state.check_rate(Bucket::Message, &user.id)?;
    let key = idempotency_key(&headers)?;
    if let Some(created) = post(&state, &user, &body.value, key).await? {
        return Ok(created);
    }
    let Some(key) = key else {
        let message = send(&state, &user, &body.value, None).await?;
        return Ok((StatusCode::CREATED, Json(message)).into_response());
    };
    let hash = request_hash(&body.value);
    match state
        .store()
        .idempotency_begin(&user.id, key, &hash)
        .await?
    {
        IdempotencyBegin::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        IdempotencyBegin::Conflict(why) => Err(ApiError::Conflict(why)),
        IdempotencyBegin::Started => match send(&state, &user, &body.value, Some(key)).await {
            Ok(message) => Ok((StatusCode::CREATED, Json(message)).into_response()),
            Err(e) => {
                let (status, error) = e.body();
                if status.is_client_error() {
                    // Deterministic failures replay like successes.
                    let body = serde_json::to_string(&error)
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                    state
                        .store()
                        .idempotency_finish(&user.id, key, status.as_u16(), &body)
                        .await?;
                } else {
                    // Transient: let a retry run again.
                    state.store().idempotency_release(&user.id, key).await?;
                }
                Err(e)
            }
        },
    }
}

/// The common case: a valid message without mentions, created by the post
/// writer in a batch (one statement, one commit for the batch) that also
/// completes its `Idempotency-Key` record. `None` sends the request down the full path: it has mentions
/// (their notifications), it is invalid, or it has a key and either the
/// key already has a record or the post was refused (the full path
/// records the refusal for replay).
async fn post(
    state: &AppState,
    user: &AuthUser,
    req: &SendMessage,
    key: Option<&str>,
) -> ApiResult<Option<Response>> {
    if req.mentions.as_ref().is_some_and(|m| !m.is_empty()) {
        return Ok(None);
    }
    let (Ok(community_id), Ok(content)) = (
        parse_id(&req.community_id, "community"),
        trimmed(&req.content, "content", MAX_MESSAGE_CHARS),
    ) else {
        return Ok(None);
    };
    let hash = key.map(|_| request_hash(req));
    let posted = state
        .store()
        .post_message(NewPost {
            community_id,
            sender: user,
            content,
            idempotency: key.zip(hash.as_deref()),
        })
        .await;
    match posted {
        Ok(Some(body)) => Ok(Some(
            (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
        )),
        Ok(None) => Ok(None),
        Err(ApiError::NotFound(_) | ApiError::Forbidden(_)) if key.is_some() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Validates and stores a message; the success response is recorded for
/// `key` inside the same transaction.
async fn send(
    state: &AppState,
    user: &AuthUser,
    req: &SendMessage,
    key: Option<&str>,
) -> ApiResult<Message> {
    let requested = req.mentions.as_deref().unwrap_or_default();
    if requested.len() > MAX_MENTIONS {
        return Err(ApiError::bad_request(format!(
            "mentions may hold at most {MAX_MENTIONS} entries"
        )));
    }
    let community_id = parse_id(&req.community_id, "community")?;
    let content = trimmed(&req.content, "content", MAX_MESSAGE_CHARS)?;
    // First occurrence wins, in the client's order.
    let mut seen = HashSet::with_capacity(requested.len());
    let mentions: Vec<String> = requested
        .iter()
        .filter(|m| seen.insert(m.as_str()))
        .cloned()
        .collect();
    state
        .store()
        .create_message(NewMessage {
            community_id,
            sender: user,
            content,
            mentions: &mentions,
            idempotency_key: key,
        })
        .await
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(key))
}

/// Hash of the parsed request, so formatting differences don't matter but
/// any change of content, community or mentions does.
fn request_hash(req: &SendMessage) -> Vec<u8> {
    let canonical = serde_json::to_vec(req).unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}

#[utoipa::path(
    get,
    path = "/api/messages-realtime",
    operation_id = "listMessages",
    tag = "messages",
    summary = "A page of history: newest first with `before` (or neither), oldest first with `after` (catch-up). Deleted messages are not returned.",
    params(
        ("communityId" = String, Query, description = "community id (UUID)"),
        ("limit" = Option<i64>, Query, description = "1-100, default 50"),
        ("before" = Option<i64>, Query, description = "only messages with a smaller seq"),
        ("after" = Option<i64>, Query, description = "only messages with a larger seq (oldest first)"),
    ),
    responses(
        (status = 200, description = "ok", body = chorus_shared::protocol::MessagePage),
        (status = 400, description = "missing communityId, limit out of range, both before and after", body = chorus_shared::error::ErrorBody),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 403, description = "not a member", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "no such community", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn history(
    State(state): State<AppState>,
    Authed(user): Authed,
    params: Params,
) -> ApiResult<Json<MessagePage>> {
    let community = params
        .get("communityId")
        .ok_or_else(|| ApiError::bad_request("communityId is required"))?;
    let community_id = parse_id(community, "community")?;
    let limit = params.limit(DEFAULT_HISTORY_LIMIT)?;
    let cursor = match (params.int("before")?, params.int("after")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "use either before or after, not both",
            ));
        }
        (Some(b), None) if b < 0 => {
            return Err(ApiError::bad_request("before must not be negative"));
        }
        (None, Some(a)) if a < 0 => {
            return Err(ApiError::bad_request("after must not be negative"));
        }
        (Some(b), None) => HistoryCursor::Before(Some(b)),
        (None, Some(a)) => HistoryCursor::After(a),
        (None, None) => HistoryCursor::Before(None),
    };
    let a = super::access(&state, community_id, &user.id).await?;
    if !a.can_read(&user) {
        return Err(ApiError::Forbidden("only members can read this community"));
    }
    let page = state.store().messages(community_id, cursor, limit).await?;
    let next = page
        .more
        .then(|| page.items.last().map(|m| m.seq))
        .flatten();
    let messages = page.items;
    Ok(Json(match cursor {
        HistoryCursor::Before(_) => MessagePage {
            messages,
            next_before: Some(next),
            next_after: None,
        },
        HistoryCursor::After(_) => MessagePage {
            messages,
            next_before: None,
            next_after: Some(next),
        },
    }))
}

#[utoipa::path(
    delete,
    path = "/api/messages-realtime/{id}",
    operation_id = "deleteMessage",
    tag = "messages",
    summary = "Delete a message (its sender or an official); takes the next seq (`message-deleted`).",
    params(
        ("id" = String, Path, description = "message id (UUID; anything else is 404)"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 403, description = "neither the sender nor an official", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "no such message, or already deleted", body = chorus_shared::error::ErrorBody),
        (status = 429, description = "over the per-user write rate (see `Retry-After`)", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "message")?;
    state.check_rate(Bucket::Write, &user.id)?;
    state.store().delete_message(id, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}
