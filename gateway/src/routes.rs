//! The gateway's two HTTP routers: the public `/ws` upgrade and the admin
//! listener (`/healthz`, `/readyz`, `/metrics`).
//!
//! The upgrade authenticates before upgrading (a bad token is a 401 with
//! the contract's error body, never a socket), picks the encoding from the
//! requested subprotocols and hands the socket to the socket layer with a
//! [`Session`] on top.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chorus_shared::auth::bearer_token;
use chorus_shared::error::{ErrorBody, ErrorCode};
use chorus_shared::protocol::MAX_WS_MESSAGE_BYTES;

use crate::codec::{Encoding, JSON_PROTOCOL, MSGPACK_PROTOCOL};
use crate::handle::ConnHandle;
use crate::session::{Session, Token};
use crate::socket;
use crate::socket::upgrade::{NotAnUpgrade, WsUpgrade};
use crate::state::Gateway;

/// `Retry-After` (seconds) on a refusal for too many connections of one
/// user: a slot frees when one of their connections closes, which a client
/// cannot know; a few seconds keeps retries from hammering.
const PER_USER_RETRY_AFTER: &str = "5";

pub fn ws_router(gw: Gateway) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(gw)
}

pub fn admin_router(gw: Gateway) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|| std::future::ready(chorus_shared::telemetry::render())),
        )
        .with_state(gw)
}

async fn readyz(State(gw): State<Gateway>) -> (StatusCode, &'static str) {
    if gw.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if gw.is_ready() {
        (StatusCode::OK, "ready")
    } else if gw.hub().is_repair_stalled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "rooms cannot fetch missing events",
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no live backplane subscription",
        )
    }
}

fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, axum::Json(ErrorBody::new(code, message))).into_response()
}

/// `GET /ws`: authenticates before upgrading (401 on a bad token) and picks
/// the encoding from the requested subprotocols.
async fn upgrade(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    ws: Result<WsUpgrade, NotAnUpgrade>,
) -> Response {
    if gw.is_draining() {
        metrics::counter!("chorus_gateway_refused_upgrades_total", "reason" => "draining")
            .increment(1);
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "gateway draining",
        );
    }
    if gw.is_full() {
        metrics::counter!("chorus_gateway_refused_upgrades_total", "reason" => "full").increment(1);
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "gateway full",
        );
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_owned)
        .or_else(|| params.get("token").cloned());
    let Some(token) = token else {
        metrics::counter!("chorus_gateway_refused_upgrades_total", "reason" => "unauthorized")
            .increment(1);
        return refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing token",
        );
    };
    let user = match gw.verifier().verify(&token) {
        Ok(u) => u,
        Err(e) => {
            metrics::counter!("chorus_gateway_refused_upgrades_total", "reason" => "unauthorized")
                .increment(1);
            return refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                &e.to_string(),
            );
        }
    };
    let Some(slot) = gw
        .hub()
        .reserve(&user.id, gw.admission().max_connections_per_user)
    else {
        metrics::counter!("chorus_gateway_refused_upgrades_total", "reason" => "per_user")
            .increment(1);
        let mut r = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many connections for this user",
        );
        r.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from_static(PER_USER_RETRY_AFTER),
        );
        return r;
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    let origin_ok = match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) if !gw.admission().allowed_origins.is_empty() => {
            chorus_shared::config::origin_allowed(&gw.admission().allowed_origins, origin)
        }
        _ => true,
    };
    let protocol = ws.select(&[MSGPACK_PROTOCOL, JSON_PROTOCOL]);
    let encoding = match protocol {
        Some(MSGPACK_PROTOCOL) => Encoding::Msgpack,
        _ => Encoding::Json,
    };
    let token = Token::from(token);
    ws.on_upgrade(protocol, MAX_WS_MESSAGE_BYTES, move |socket| {
        let (conn, rx) = ConnHandle::with_role(
            gw.hub().next_conn_id(),
            &user.id,
            &user.name,
            user.is_official(),
            encoding,
            gw.admission().outbound_queue,
            expiry_instant(user.exp + gw.verifier().leeway_s()),
        );
        let config = gw.socket_config().clone();
        let open = Session::open(gw, conn.clone(), token, origin_ok, slot);
        socket::serve(socket, conn, rx, config, open)
    })
}

/// The tokio instant of a Unix time in seconds (now if already past).
fn expiry_instant(exp_s: u64) -> tokio::time::Instant {
    let now_s = chorus_shared::auth::now_s();
    tokio::time::Instant::now() + std::time::Duration::from_secs(exp_s.saturating_sub(now_s))
}
