//! `GET /api/socket-status`: the gateways that reported recently.

use axum::Json;
use axum::extract::State;
use chorus_shared::protocol::{ServiceStatus, SocketStatus};

use crate::error::ApiResult;
use crate::extract::Authed;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/api/socket-status",
    operation_id = "getSocketStatus",
    tag = "status",
    summary = "The gateways that reported in the last 30 s and their connections.",
    responses(
        (status = 200, description = "ok", body = chorus_shared::protocol::SocketStatus),
        (status = 401, description = "missing, invalid or expired token", body = chorus_shared::error::ErrorBody),
    )
)]
pub async fn socket_status(
    State(state): State<AppState>,
    _user: Authed,
) -> ApiResult<Json<SocketStatus>> {
    // Redis away means no gateway can be confirmed: degraded, not an error.
    let gateways = state.live().gateways().await.unwrap_or_default();
    let connections = gateways.iter().map(|g| g.connections).sum();
    Ok(Json(SocketStatus {
        status: if gateways.is_empty() {
            ServiceStatus::Degraded
        } else {
            ServiceStatus::Ok
        },
        gateways,
        connections,
    }))
}
