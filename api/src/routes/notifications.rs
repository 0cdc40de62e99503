//! The notification center: create, list with unread count, mark read,
//! delete. Users only ever see their own notifications; someone else's is
//! indistinguishable from a missing one (404).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chorus_shared::ids::is_valid_user_id;
use chorus_shared::protocol::{
    CreateNotification, MAX_NOTIFICATION_DATA_BYTES, MAX_NOTIFICATION_MESSAGE_CHARS,
    MAX_NOTIFICATION_TITLE_CHARS, MAX_NOTIFICATION_TYPE_CHARS, Notification, NotificationPage,
    ReadAll,
};

use super::trimmed;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, Body, Params, parse_id};
use crate::state::{AppState, Bucket};
use crate::store::NewNotification;

/// Default notification page size (contract).
const DEFAULT_NOTIFICATION_LIMIT: i64 = 20;

#[utoipa::path(
    post,
    path = "/api/notifications-broadcast",
    operation_id = "createNotification",
    tag = "notifications",
    summary = "Send a notification: to oneself, or to anyone for officials. Delivered live as `notification`.",
    request_body = chorus_shared::protocol::CreateNotification,
    responses(
        (status = 201, body = chorus_shared::protocol::Notification),
        (status = 400, description = "a field out of its bounds", body = chorus_shared::error::ErrorBody),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 403, description = "only officials notify others", body = chorus_shared::error::ErrorBody),
        (status = 429, description = "over the per-user write rate (see `Retry-After`)", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Authed(user): Authed,
    body: Body<CreateNotification>,
) -> ApiResult<(StatusCode, Json<Notification>)> {
    let req = &body.value;
    if !is_valid_user_id(&req.user_id) {
        return Err(ApiError::bad_request(
            "userId must be 1-64 characters of [A-Za-z0-9_.-]",
        ));
    }
    if req.user_id != user.id && !user.is_official() {
        return Err(ApiError::Forbidden("only officials can notify other users"));
    }
    let kind = trimmed(&req.kind, "type", MAX_NOTIFICATION_TYPE_CHARS)?;
    if req.title.chars().count() > MAX_NOTIFICATION_TITLE_CHARS {
        return Err(ApiError::bad_request(format!(
            "title must be at most {MAX_NOTIFICATION_TITLE_CHARS} characters"
        )));
    }
    if req.message.chars().count() > MAX_NOTIFICATION_MESSAGE_CHARS {
        return Err(ApiError::bad_request(format!(
            "message must be at most {MAX_NOTIFICATION_MESSAGE_CHARS} characters"
        )));
    }
    let data = serde_json::Value::Object(req.data.clone().unwrap_or_default());
    if serde_json::to_vec(&data)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
        > MAX_NOTIFICATION_DATA_BYTES
    {
        return Err(ApiError::bad_request("data must be at most 8 KiB of JSON"));
    }
    state.check_rate(Bucket::Write, &user.id)?;
    let n = state
        .store()
        .create_notification(NewNotification {
            user_id: &req.user_id,
            kind,
            title: &req.title,
            message: &req.message,
            data,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(n)))
}

#[utoipa::path(
    get,
    path = "/api/notifications-broadcast",
    operation_id = "listNotifications",
    tag = "notifications",
    summary = "The caller's notifications, newest first, with the unread count.",
    params(
        ("unread" = Option<bool>, Query, description = "only unread ones"),
        ("limit" = Option<i64>, Query, description = "1-100, default 20"),
        ("before" = Option<String>, Query, description = "the previous page's `nextBefore`"),
    ),
    responses(
        (status = 200, description = "ok", body = chorus_shared::protocol::NotificationPage),
        (status = 400, description = "limit out of range", body = chorus_shared::error::ErrorBody),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "unknown cursor", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Authed(user): Authed,
    params: Params,
) -> ApiResult<Json<NotificationPage>> {
    let limit = params.limit(DEFAULT_NOTIFICATION_LIMIT)?;
    let unread_only = params.flag("unread")?;
    let before = params
        .get("before")
        .map(|b| parse_id(b, "notification cursor"))
        .transpose()?;
    let page = state
        .store()
        .notifications(&user.id, unread_only, before, limit)
        .await?;
    let unread_count = state.store().unread_count(&user.id).await?;
    let next_before = page.more.then(|| page.items.last().map(|n| n.id)).flatten();
    Ok(Json(NotificationPage {
        notifications: page.items,
        unread_count,
        next_before,
    }))
}

#[utoipa::path(
    post,
    path = "/api/notifications-broadcast/{id}/read",
    operation_id = "markNotificationRead",
    tag = "notifications",
    summary = "Mark one notification read.",
    params(
        ("id" = String, Path, description = "notification id (UUID; anything else is 404)"),
    ),
    responses(
        (status = 200, description = "ok", body = chorus_shared::protocol::Notification),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "no such notification of the caller", body = chorus_shared::error::ErrorBody),
        (status = 429, description = "over the per-user write rate (see `Retry-After`)", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn read(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Notification>> {
    let id = parse_id(&id, "notification")?;
    state.check_rate(Bucket::Write, &user.id)?;
    state
        .store()
        .mark_read(&user.id, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("notification"))
}

#[utoipa::path(
    post,
    path = "/api/notifications-broadcast/read-all",
    operation_id = "markAllNotificationsRead",
    tag = "notifications",
    summary = "Mark every notification of the caller read.",
    responses(
        (status = 200, description = "ok", body = chorus_shared::protocol::ReadAll),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 429, description = "over the per-user write rate (see `Retry-After`)", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn read_all(
    State(state): State<AppState>,
    Authed(user): Authed,
) -> ApiResult<Json<ReadAll>> {
    state.check_rate(Bucket::Write, &user.id)?;
    let updated = state.store().mark_all_read(&user.id).await?;
    Ok(Json(ReadAll { updated }))
}

#[utoipa::path(
    delete,
    path = "/api/notifications-broadcast/{id}",
    operation_id = "deleteNotification",
    tag = "notifications",
    summary = "Delete one notification.",
    params(
        ("id" = String, Path, description = "notification id (UUID; anything else is 404)"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "no such notification of the caller", body = chorus_shared::error::ErrorBody),
        (status = 429, description = "over the per-user write rate (see `Retry-After`)", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "notification")?;
    state.check_rate(Bucket::Write, &user.id)?;
    if state.store().delete_notification(&user.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("notification"))
    }
}
