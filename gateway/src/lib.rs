//! `chorus-gateway`: a stateless WebSocket gateway.
//!
//! Clients connect to any gateway; it authenticates them, subscribes to the
//! backplane channels of the communities they join and fans events out in
//! sequence order. Everything durable lives in the API and Postgres;
//! presence and the gateway registry live in the backplane. Killing a
//! gateway loses nothing: its clients reconnect elsewhere with `lastSeq`.
//!
//! Layers, each pointing only down:
//! - [`state`], [`routes`], [`session`]: the gateway's shared state, its
//!   HTTP routers and the upgrade, and the contract's commands;
//! - [`hub`]: rooms, ordering, replay, gap filling, presence,
//!   subscriptions and dispatch;
//! - [`socket`]: the reader and writer of one WebSocket;
//! - [`handle`]: the connection handle that rooms and sockets share;
//! - [`api_client`] and [`backplane`]: the services used, as traits with a
//!   real implementation and an in-process one;
//! - [`codec`], [`close`], [`liveness`], [`config`], [`error`]: leaves.
//!
//! [`run`] is the whole service; `main.rs` only parses configuration.
//! [`run_with`] runs it on given services (an in-process API and backplane
//! in tests).

pub mod api_client;
pub mod backplane;
pub mod close;
pub mod codec;
pub mod config;
pub mod error;
pub mod handle;
pub mod hub;
#[cfg(test)]
mod layers;
pub mod liveness;
pub mod routes;
mod series;
pub mod session;
pub mod socket;
pub mod state;
mod sync;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chorus_shared::http::ServeOptions;
use chorus_shared::ratelimit::Limit;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api_client::{Api, HttpApi};
use crate::backplane::{Backplane, RedisBackplane};
use crate::config::{GatewayArgs, Liveness, MIN_CONNECTION_TIMER};
use crate::error::GatewayError;
use crate::hub::{Hub, HubConfig};
use crate::socket::SocketConfig;
use crate::state::{Admission, Gateway, Parts};

/// How long a drain waits for the last connections to finish their close
/// after every client was told to reconnect: more than a connection's own
/// bounds on it (1 s for the queue and the close frame, 1 s reading for
/// the client's answer), so only a stuck socket is cut off.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// A drained client is told to reconnect after a delay spread over this
/// range (ms), so the herd does not land on one instant (the closes are
/// spread over the drain period too). Clients add jitter up to the hint
/// again (the SDK waits `afterMs × (1 + random)`), so the longest wait is
/// twice the longest hint: 5 s, inside the presence grace.
const DRAIN_RECONNECT_MIN_MS: u64 = 500;
const DRAIN_RECONNECT_SPREAD_MS: u64 = 2_000;
/// How long a drained gateway keeps its held presence after its last
/// close before withdrawing it: the longest jittered reconnect plus slack,
/// so the last clients closed are back elsewhere and are not announced
/// gone and back.
const DRAIN_REJOIN_WAIT: Duration =
    Duration::from_millis(2 * (DRAIN_RECONNECT_MIN_MS + DRAIN_RECONNECT_SPREAD_MS) + 500);

/// How long shutdown waits for upgrade requests in flight: an upgrade is a
/// single round trip, so whatever is still unfinished after this is a
/// client trickling its request, which must not hold up the drain.
const UPGRADE_GRACE: Duration = Duration::from_secs(1);

/// The two sockets a gateway listens on.
#[derive(Debug)]
pub struct Listeners {
    /// Public WebSocket listener.
    pub ws: TcpListener,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin: TcpListener,
}

/// Handshakes the kernel queues on the WebSocket listener before they are
/// accepted. A reconnect storm brings thousands at once; past the queue the
/// kernel drops the SYN and the client retries after 1 s, then 3 s, which
/// turns a burst the gateway absorbs in a second into a storm that lasts
/// ten. tokio's default is 1024; the kernel caps this at
/// `net.core.somaxconn` (4096 on current kernels).
pub const LISTEN_BACKLOG: u32 = 8192;

impl Listeners {
    pub async fn bind(args: &GatewayArgs) -> Result<Self, GatewayError> {
        let socket = if args.addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(args.addr)?;
        Ok(Listeners {
            ws: socket.listen(LISTEN_BACKLOG)?,
            admin: TcpListener::bind(args.admin_addr).await?,
        })
    }
}

/// The services a gateway depends on.
#[derive(Debug, Clone)]
pub struct Services {
    pub api: Arc<dyn Api>,
    pub backplane: Arc<dyn Backplane>,
}

/// Runs a gateway on the configured API and Redis until `shutdown`
/// resolves, then drains (see [`run_with`]).
pub async fn run(
    args: GatewayArgs,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    chorus_shared::config::check_internal_token(&args.internal_token)
        .map_err(GatewayError::Config)?;
    let id = args.id(listeners.ws.local_addr()?);
    let services = Services {
        api: Arc::new(HttpApi::new(
            &args.api_url,
            &args.api_internal_url,
            &args.internal_token,
        )?),
        backplane: Arc::new(RedisBackplane::new(&args.redis_url, &id, args.liveness())?),
    };
    run_with(args, services, listeners, shutdown).await
}

/// Runs a gateway on `services` until `shutdown` resolves, then drains:
/// `/readyz` turns 503 at once, new connections are refused, every client
/// gets `reconnect` and a 1012 close spread over the drain period, and the
/// function returns once they are gone.
pub async fn run_with(
    args: GatewayArgs,
    services: Services,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let verifier = chorus_shared::auth::JwtVerifier::new(&args.jwt)
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let max_connections = args.effective_max_connections();
    let mut serve_opts = ServeOptions {
        nodelay: true,
        ..ServeOptions::new(max_connections, UPGRADE_GRACE)
    };
    let id = args.id(listeners.ws.local_addr()?);
    let hub = Hub::new(
        services.backplane.clone(),
        services.api.clone(),
        HubConfig {
            recovery_window: args.recovery_window,
            presence_limit: args.presence_broadcast_limit,
            presence_grace: Duration::from_millis(args.presence_grace_ms),
            mass_loss_per_second: args.mass_loss_per_second,
        },
    );
    services.backplane.start(Arc::new(hub.clone()));
    let open_sockets = Arc::new(socket::OpenSockets::default());
    let counted = open_sockets.clone();
    serve_opts.also_open = Some(Arc::new(move || counted.count()));
    let gw = Gateway::new(Parts {
        id: id.clone(),
        hub,
        api: services.api,
        backplane: services.backplane,
        verifier,
        admission: Admission {
            allowed_origins: chorus_shared::config::allowed_origins(&args.allowed_origins),
            outbound_queue: args.outbound_queue.max(1),
            drain_seconds: args.drain_seconds,
            max_connections,
            max_connections_per_user: args.max_connections_per_user,
            max_joins: args.max_joins,
            pending: serve_opts.pending.clone(),
        },
        socket: SocketConfig::new(
            Limit::new(args.ws_command_rate, args.ws_command_burst),
            args.heartbeat.max(MIN_CONNECTION_TIMER),
            args.idle_timeout.max(MIN_CONNECTION_TIMER),
            open_sockets,
        ),
    });

    let _upkeep = chorus_shared::telemetry::spawn_metrics_upkeep();
    telemetry::register();
    let (stop_tx, stop_rx) = watch::channel(false);
    let liveness = args.liveness();
    let registry = tokio::spawn(report_registry(gw.clone(), liveness, stop_rx.clone()));
    let presence = tokio::spawn(presence_upkeep(gw.clone(), liveness, stop_rx.clone()));
    let clock = tokio::spawn(until_stopped(
        stop_rx,
        socket::Clock::run(gw.socket_config().clone()),
    ));
    let admin =
        tokio::spawn(axum::serve(listeners.admin, routes::admin_router(gw.clone())).into_future());

    tracing::info!(
        gateway = %id,
        addr = %listeners.ws.local_addr()?,
        max_connections,
        "chorus-gateway listening"
    );
    let drain_gw = gw.clone();
    chorus_shared::http::serve(
        listeners.ws,
        routes::ws_router(gw.clone()),
        serve_opts,
        async move {
            shutdown.await;
            drain_gw.start_draining();
            tracing::info!("draining");
        },
    )
    .await;

    // axum's graceful shutdown does not wait for upgraded sockets: the
    // gateway drains them itself.
    drain(&gw).await;
    // The last clients closed were told to come back within the reconnect
    // hint, and their presence is held meanwhile: withdrawn now, it would
    // announce them gone and, a moment later, back.
    if gw.hub().holds_presence() {
        let grace = Duration::from_millis(args.presence_grace_ms);
        tokio::time::sleep(DRAIN_REJOIN_WAIT.min(grace)).await;
    }
    let _ = stop_tx.send(true);
    let _ = registry.await;
    let _ = presence.await;
    if let Err(e) = clock.await {
        tracing::error!(error = %e, "the connections' clock failed");
    }
    gw.hub().withdraw_presence().await;
    if let Err(e) = gw.backplane().withdraw(gw.id()).await {
        tracing::warn!(error = %e, "could not withdraw the registry entry; it expires by itself");
    }
    gw.backplane().quit().await;
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
    let period = Duration::from_secs(gw.admission().drain_seconds);
    let start = tokio::time::Instant::now();
    for (i, c) in conns.iter().enumerate() {
        tokio::time::sleep_until(start + period * (i as u32) / n).await;
        // Spread reconnects too, so the herd does not land on one instant.
        let after_ms =
            DRAIN_RECONNECT_MIN_MS + (c.id.wrapping_mul(7919) % DRAIN_RECONNECT_SPREAD_MS);
        c.drain(after_ms);
    }
    // Every socket, until its close frame is sent and the client's read.
    let _ = tokio::time::timeout(DRAIN_GRACE, gw.socket_config().open.all_closed()).await;
}

/// Reports this gateway to the registry (and renews its presence
/// heartbeat) on its own timer, until stopped: slow presence work never
/// delays the report.
async fn report_registry(gw: Gateway, liveness: Liveness, stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(liveness.heartbeat());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    until_stopped(stop, async move {
        loop {
            tick.tick().await;
            if let Err(e) = gw.backplane().report(&gw.status()).await {
                tracing::debug!(error = %e, "registry report failed");
            }
        }
    })
    .await;
}

/// Presence upkeep (renewing this gateway's incarnation when needed,
/// reaping dead gateways) until stopped; an upkeep that runs long delays
/// the next rather than piling up.
async fn presence_upkeep(gw: Gateway, liveness: Liveness, stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(liveness.reap_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    until_stopped(stop, async move {
        loop {
            tick.tick().await;
            gw.hub().presence_upkeep().await;
        }
    })
    .await;
}

/// Runs `work` until the stop signal.
async fn until_stopped(mut stop: watch::Receiver<bool>, work: impl Future<Output = ()>) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        () = work => {}
    }
}
