//! Gateway-only endpoints (service token required): what gateways need from
//! storage without touching Postgres themselves. Served on the admin
//! listener only (`CHORUS_API_INTERNAL_URL` on the gateways); the public
//! listener answers 404 there.

use axum::Json;
use axum::extract::{Path, State};
use chorus_shared::ids::is_valid_user_id;
use chorus_shared::protocol::{
    AccessChecks, AccessResults, CommunityAccess, EventsPage, MAX_ACCESS_CHECKS,
    MAX_EVENTS_PER_REQUEST, SequencedEventBody,
};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Internal, Params, parse_id};
use crate::state::AppState;

/// `GET /internal/communities/{id}/events?after=N&limit=M`.
pub async fn events(
    _: Internal,
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Json<EventsPage>> {
    let id = parse_id(&id, "community")?;
    let after = params.int("after")?.unwrap_or(0).max(0);
    let limit = match params.int("limit")? {
        None => MAX_EVENTS_PER_REQUEST,
        Some(l) if (1..=MAX_EVENTS_PER_REQUEST).contains(&l) => l,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {MAX_EVENTS_PER_REQUEST}"
            )));
        }
    };
    // Head first: every event up to it is committed, so the page below is
    // complete up to min(head, last returned).
    let community = state
        .store()
        .community(id)
        .await?
        .ok_or(ApiError::NotFound("community"))?;
    let events = state.store().events_after(id, after, limit).await?;
    Ok(Json(EventsPage {
        head_seq: community.head_seq,
        events: events
            .into_iter()
            .map(|e| SequencedEventBody {
                seq: e.seq,
                event: e.event,
            })
            .collect(),
    }))
}

/// `GET /internal/communities/{id}/access/{userId}`.
pub async fn access(
    _: Internal,
    State(state): State<AppState>,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<Json<CommunityAccess>> {
    let id = parse_id(&id, "community")?;
    if !is_valid_user_id(&user_id) {
        return Err(ApiError::NotFound("user"));
    }
    let a = super::access(&state, id, &user_id).await?;
    Ok(Json(CommunityAccess {
        community_id: id,
        is_public: a.community.is_public,
        head_seq: a.community.head_seq,
        role: a.role,
    }))
}

/// `POST /internal/access`: many access checks in one query, answered in
/// order; `null` where the community does not exist or the user id is not
/// one (what the single check answers with 404).
pub async fn access_many(
    _: Internal,
    State(state): State<AppState>,
    body: Body<AccessChecks>,
) -> ApiResult<Json<AccessResults>> {
    let body = body.value;
    if body.checks.len() > MAX_ACCESS_CHECKS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ACCESS_CHECKS} checks per request"
        )));
    }
    let valid: Vec<(usize, (uuid::Uuid, &str))> = body
        .checks
        .iter()
        .enumerate()
        .filter(|(_, c)| is_valid_user_id(&c.user_id))
        .map(|(i, c)| (i, (c.community_id, c.user_id.as_str())))
        .collect();
    let asked: Vec<(uuid::Uuid, &str)> = valid.iter().map(|(_, c)| *c).collect();
    let answers = if asked.is_empty() {
        Vec::new()
    } else {
        state.store().access_many(&asked).await?
    };
    let mut results = vec![None; body.checks.len()];
    for ((i, _), answer) in valid.into_iter().zip(answers) {
        results[i] = answer;
    }
    Ok(Json(AccessResults { results }))
}
