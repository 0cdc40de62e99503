//! Communities and their members.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chorus_shared::ids::is_valid_user_id;
use chorus_shared::protocol::{
    AddMember, Community, CommunityList, CreateCommunity, MAX_COMMUNITY_NAME_CHARS,
    MAX_MEMBERS_PAGE_LIMIT, Member, MemberList, MemberRole, Presence,
};

use super::{access, trimmed};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, Body, Params, parse_id};
use crate::state::{AppState, Bucket};

#[utoipa::path(
    post,
    path = "/api/communities",
    operation_id = "createCommunity",
    tag = "communities",
    summary = "Create a community; the caller becomes its owner.",
    request_body = chorus_shared::protocol::CreateCommunity,
    responses(
        (status = 201, description = "created", body = chorus_shared::protocol::Community),
        (status = 400, description = "name empty after trimming or over 100 characters", body = chorus_shared::error::ErrorBody),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 429, description = "over the per-user write rate (see `Retry-After`)", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Authed(user): Authed,
    body: Body<CreateCommunity>,
) -> ApiResult<(StatusCode, Json<Community>)> {
    state.check_rate(Bucket::Write, &user.id)?;
    let name = trimmed(&body.value.name, "name", MAX_COMMUNITY_NAME_CHARS)?;
    let c = state
        .store()
        .create_community(&user.id, name, body.value.is_public.unwrap_or(true))
        .await?;
    Ok((StatusCode::CREATED, Json(c)))
}

#[utoipa::path(
    get,
    path = "/api/communities",
    operation_id = "listCommunities",
    tag = "communities",
    summary = "The communities the caller belongs to.",
    responses(
        (status = 200, description = "ok", body = chorus_shared::protocol::CommunityList),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Authed(user): Authed,
) -> ApiResult<Json<CommunityList>> {
    let communities = state.store().communities_of(&user.id).await?;
    Ok(Json(CommunityList { communities }))
}

#[utoipa::path(
    post,
    path = "/api/communities/{id}/join",
    operation_id = "joinCommunity",
    tag = "communities",
    summary = "Join a public community (officials: any). Joining again is a no-op.",
    params(
        ("id" = String, Path, description = "community id (UUID; anything else is 404)"),
    ),
    responses(
        (status = 200, description = "member now (or already)", body = chorus_shared::protocol::Community),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 403, description = "private community", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "no such community", body = chorus_shared::error::ErrorBody),
        (status = 429, description = "over the per-user write rate (see `Retry-After`)", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn join(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Community>> {
    let id = parse_id(&id, "community")?;
    let a = access(&state, id, &user.id).await?;
    if a.role.is_some() {
        return Ok(Json(a.community));
    }
    if !a.community.is_public && !user.is_official() {
        return Err(ApiError::Forbidden("this community is private"));
    }
    state.check_rate(Bucket::Write, &user.id)?;
    state
        .store()
        .add_member(id, &user.id, MemberRole::Member)
        .await?;
    Ok(Json(a.community))
}

#[utoipa::path(
    post,
    path = "/api/communities/{id}/members",
    operation_id = "addMember",
    tag = "communities",
    summary = "Add a member (owner or official). Adding an existing member is a no-op.",
    request_body = chorus_shared::protocol::AddMember,
    params(
        ("id" = String, Path, description = "community id (UUID; anything else is 404)"),
    ),
    responses(
        (status = 200, description = "ok", body = chorus_shared::protocol::Member),
        (status = 400, description = "invalid userId", body = chorus_shared::error::ErrorBody),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 403, description = "not the owner or an official", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "no such community", body = chorus_shared::error::ErrorBody),
        (status = 429, description = "over the per-user write rate (see `Retry-After`)", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn add_member(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
    body: Body<AddMember>,
) -> ApiResult<Json<Member>> {
    let id = parse_id(&id, "community")?;
    let a = access(&state, id, &user.id).await?;
    if !a.can_manage(&user) {
        return Err(ApiError::Forbidden(
            "only the owner or an official can add members",
        ));
    }
    if !is_valid_user_id(&body.value.user_id) {
        return Err(ApiError::bad_request(
            "userId must be 1-64 characters of [A-Za-z0-9_.-]",
        ));
    }
    state.check_rate(Bucket::Write, &user.id)?;
    let member = state
        .store()
        .add_member(id, &body.value.user_id, MemberRole::Member)
        .await?;
    Ok(Json(member))
}

#[utoipa::path(
    delete,
    path = "/api/communities/{id}/members/{user_id}",
    operation_id = "removeMember",
    tag = "communities",
    summary = "Remove a member: oneself, or anyone for the owner and officials. Their live subscriptions end at once (`membership-revoked`).",
    params(
        ("id" = String, Path, description = "community id (UUID; anything else is 404)"),
        ("user_id" = String, Path, description = "the member's user id"),
    ),
    responses(
        (status = 204, description = "removed"),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 403, description = "may not remove others", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "no such community or not a member", body = chorus_shared::error::ErrorBody),
        (status = 429, description = "over the per-user write rate (see `Retry-After`)", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn remove_member(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path((id, target)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "community")?;
    let a = access(&state, id, &user.id).await?;
    if target != user.id && !a.can_manage(&user) {
        return Err(ApiError::Forbidden(
            "only the member, the owner or an official can remove a member",
        ));
    }
    state.check_rate(Bucket::Write, &user.id)?;
    if state.store().remove_member(id, &target).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("member"))
    }
}

/// `GET /api/communities/{id}/members?limit=&after=`: a page ordered by
/// user id.
#[utoipa::path(
    get,
    path = "/api/communities/{id}/members",
    operation_id = "listMembers",
    tag = "communities",
    summary = "A page of members ordered by user id (members and officials).",
    params(
        ("id" = String, Path, description = "community id (UUID; anything else is 404)"),
        ("limit" = Option<i64>, Query, description = "1-1000, default 1000"),
        ("after" = Option<String>, Query, description = "the previous page's `nextAfter`"),
    ),
    responses(
        (status = 200, description = "ok", body = chorus_shared::protocol::MemberList),
        (status = 400, description = "limit out of range", body = chorus_shared::error::ErrorBody),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 403, description = "not a member", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "no such community", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn members(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Json<MemberList>> {
    let id = parse_id(&id, "community")?;
    let limit = params.limit_up_to(MAX_MEMBERS_PAGE_LIMIT, MAX_MEMBERS_PAGE_LIMIT)?;
    let after = match params.get("after") {
        Some(a) if !is_valid_user_id(a) => {
            return Err(ApiError::bad_request("after must be a user id"));
        }
        after => after,
    };
    let a = access(&state, id, &user.id).await?;
    if !a.can_read(&user) {
        return Err(ApiError::Forbidden("only members can list members"));
    }
    let page = state.store().members(id, after, limit).await?;
    let next_after = page
        .more
        .then(|| page.items.last().map(|m| m.user_id.clone()))
        .flatten();
    Ok(Json(MemberList {
        members: page.items,
        next_after,
    }))
}

#[utoipa::path(
    get,
    path = "/api/communities/{id}/presence",
    operation_id = "getPresence",
    tag = "communities",
    summary = "Users online in the community across all gateways (members and officials).",
    params(
        ("id" = String, Path, description = "community id (UUID; anything else is 404)"),
    ),
    responses(
        (status = 200, description = "ok", body = chorus_shared::protocol::Presence),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
        (status = 403, description = "not a member", body = chorus_shared::error::ErrorBody),
        (status = 404, description = "no such community", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn presence(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Presence>> {
    let id = parse_id(&id, "community")?;
    let a = access(&state, id, &user.id).await?;
    if !a.can_read(&user) {
        return Err(ApiError::Forbidden("only members can see presence"));
    }
    let online = state.live().online(id).await?.as_ref().clone();
    Ok(Json(Presence { online }))
}
