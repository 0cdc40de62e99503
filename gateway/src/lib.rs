//! `chorus-gateway`: a stateless WebSocket gateway.
//!
//! Clients connect to any gateway; it authenticates them, subscribes to the
//! Redis channels of the communities they join ([`backplane`]) and fans
//! events out in sequence order ([`hub`]), one reader and one writer task
//! per connection ([`conn`]). Everything durable lives in the API and
//! Postgres; presence and the gateway registry live in Redis. Killing a
//! gateway loses nothing: its clients reconnect elsewhere with `lastSeq`.
//!
//! [`run`] is the whole service; `main.rs` only parses configuration.

pub mod api;
pub mod backplane;
pub mod codec;
pub mod config;
pub mod conn;
pub mod error;
pub mod hub;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chorus_shared::auth::{JwtVerifier, bearer_token};
use chorus_shared::error::{ErrorBody, ErrorCode};
use chorus_shared::protocol::GatewayStatus;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::ApiClient;
use crate::backplane::{Backplane, RedisBackplane};
use crate::codec::{Encoding, JSON_PROTOCOL, MSGPACK_PROTOCOL};
use crate::config::{
    DEFAULT_READ_BUFFER, GatewayArgs, MAX_MESSAGE_BYTES, MIN_CONNECTION_TIMER, PRESENCE_REFRESH,
    REGISTRY_INTERVAL,
};
use crate::error::GatewayError;
use crate::hub::Hub;

/// Most concurrent connections one gateway accepts; past it, upgrades get
/// 503 and the load balancer tries another node. Sized for the 2-core,
/// 20k-file-descriptor machines we run on.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Per-connection settings derived from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub command_rate: f64,
    pub command_burst: u32,
    pub allowed_origins: Vec<String>,
    pub outbound_queue: usize,
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
    pub drain_seconds: u64,
    pub max_connections: usize,
}

struct Inner {
    hub: Hub,
    verifier: JwtVerifier,
    settings: Settings,
    draining: AtomicBool,
    backplane: Arc<RedisBackplane>,
    started_at: DateTime<Utc>,
}

/// Shared gateway state; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("hub", &self.inner.hub)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn verifier(&self) -> &JwtVerifier {
        &self.inner.verifier
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    fn is_ready(&self) -> bool {
        !self.is_draining() && self.inner.backplane.is_live()
    }

    fn status(&self) -> GatewayStatus {
        GatewayStatus {
            id: self.hub().gateway_id().to_owned(),
            connections: self.hub().connections() as u64,
            started_at: self.inner.started_at,
        }
    }
}

/// The two sockets a gateway listens on.
#[derive(Debug)]
pub struct Listeners {
    /// Public WebSocket listener.
    pub ws: TcpListener,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(args: &GatewayArgs) -> Result<Self, GatewayError> {
        Ok(Listeners {
            ws: TcpListener::bind(args.addr).await?,
            admin: TcpListener::bind(args.admin_addr).await?,
        })
    }
}

/// Runs a gateway until `shutdown` resolves, then drains: `/readyz` turns
/// 503 at once, new connections are refused, every client gets `reconnect`
/// and a 1012 close spread over the drain period, and the process returns
/// once they are gone.
pub async fn run(
    args: GatewayArgs,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    if args.internal_token.is_empty() {
        return Err(GatewayError::Config(
            "CHORUS_INTERNAL_TOKEN must not be empty".into(),
        ));
    }
    let verifier = JwtVerifier::new(&args.jwt).map_err(|e| GatewayError::Config(e.to_string()))?;
    let id = args.id(listeners.ws.local_addr()?);
    let backplane = Arc::new(RedisBackplane::new(&args.redis_url, &id)?);
    let api = ApiClient::new(&args.api_url, &args.internal_token)?;
    let hub = Hub::new(
        id.clone(),
        backplane.clone(),
        api,
        args.recovery_window,
        args.presence_broadcast_limit,
    );
    backplane.start(Arc::new(hub.clone()));
    let gw = Gateway {
        inner: Arc::new(Inner {
            hub,
            verifier,
            settings: Settings {
                command_rate: args.ws_command_rate,
                command_burst: args.ws_command_burst,
                allowed_origins: args
                    .allowed_origins
                    .iter()
                    .map(|o| o.trim().to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
                outbound_queue: args.outbound_queue.max(1),
                heartbeat: args.heartbeat.max(MIN_CONNECTION_TIMER),
                idle_timeout: args.idle_timeout.max(MIN_CONNECTION_TIMER),
                drain_seconds: args.drain_seconds,
                max_connections: DEFAULT_MAX_CONNECTIONS,
            },
            draining: AtomicBool::new(false),
            backplane: backplane.clone(),
            started_at: Utc::now(),
        }),
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let background = tokio::spawn(background(gw.clone(), stop_rx.clone()));
    let admin = tokio::spawn(axum::serve(listeners.admin, admin_router(gw.clone())).into_future());

    tracing::info!(gateway = %id, addr = %listeners.ws.local_addr()?, "chorus-gateway listening");
    let drain_gw = gw.clone();
    // Frames are small and latency matters: no Nagle delay.
    let ws_listener = axum::serve::ListenerExt::tap_io(listeners.ws, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(ws_listener, ws_router(gw.clone()))
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain_gw.inner.draining.store(true, Ordering::SeqCst);
            tracing::info!("draining");
        })
        .await?;

    drain(&gw).await;
    let _ = stop_tx.send(true);
    let _ = background.await;
    if let Err(e) = gw.inner.backplane.withdraw(gw.hub().gateway_id()).await {
        tracing::warn!(error = %e, "could not withdraw the registry entry; it expires by itself");
    }
    gw.inner.backplane.quit().await;
    admin.abort();
    let _ = admin.await;
    tracing::info!("chorus-gateway stopped");
    Ok(())
}

/// Spreads `reconnect` + 1012 over the drain period, then waits (bounded)
/// for every connection to finish.
async fn drain(gw: &Gateway) {
    let conns = gw.hub().all_connections();
    let n = conns.len().max(1) as u32;
    let period = Duration::from_secs(gw.settings().drain_seconds);
    let start = tokio::time::Instant::now();
    for (i, c) in conns.iter().enumerate() {
        tokio::time::sleep_until(start + period * (i as u32) / n).await;
        // Spread reconnects too, so the herd does not land on one instant.
        let after_ms = 500 + (c.id.wrapping_mul(7919) % 4500);
        conn::drain(c, after_ms);
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), gw.hub().all_closed()).await;
}

/// Registry reports and presence upkeep until stopped.
async fn background(gw: Gateway, mut stop: watch::Receiver<bool>) {
    let mut report = tokio::time::interval(REGISTRY_INTERVAL);
    let mut presence = tokio::time::interval(PRESENCE_REFRESH);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = report.tick() => {
                if let Err(e) = gw.inner.backplane.report(&gw.status()).await {
                    tracing::debug!(error = %e, "registry report failed");
                }
            }
            _ = presence.tick() => gw.hub().refresh_presence().await,
        }
    }
}

fn ws_router(gw: Gateway) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(gw)
}

fn admin_router(gw: Gateway) -> Router {
    let handle = chorus_shared::telemetry::metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(gw): State<Gateway>| async move {
                if gw.is_draining() {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else if gw.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no live backplane subscription",
                    )
                }
            }),
        )
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .with_state(gw)
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
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if gw.is_draining() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "gateway draining",
        );
    }
    if gw.hub().connections() >= gw.settings().max_connections {
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
        return refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing token",
        );
    };
    let user = match gw.verifier().verify(&token) {
        Ok(u) => u,
        Err(e) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                &e.to_string(),
            );
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &e.to_string(),
            );
        }
    };
    let origin_ok = match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) if !gw.settings().allowed_origins.is_empty() => {
            gw.settings().allowed_origins.iter().any(|a| a == origin)
        }
        _ => true,
    };
    let ws = ws
        .protocols([MSGPACK_PROTOCOL, JSON_PROTOCOL])
        .read_buffer_size(DEFAULT_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES);
    let encoding = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(MSGPACK_PROTOCOL) => Encoding::Msgpack,
        _ => Encoding::Json,
    };
    let me = Box::new(conn::Identity { user, token });
    ws.on_upgrade(move |socket| conn::serve(gw, socket, me, encoding, origin_ok))
}
