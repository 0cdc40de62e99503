//! Gateway-only endpoints (service token required): what gateways need from
//! storage without touching Postgres themselves. Served on the admin
//! listener only (`CHORUS_API_INTERNAL_URL` on the gateways); the public
//! listener answers 404 there.

use axum::Json;
use axum::extract::{Path, State};
use chorus_shared::ids::is_valid_user_id;
use chorus_shared::protocol::{
    CommunityAccess, EventsPage, MAX_EVENTS_PER_REQUEST, SequencedEventBody,
};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Internal, Params, parse_id};
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
