//! `chorus-api`: the only writer of Chorus data.
//!
//! It validates requests against the wire contract, stores communities,
//! messages and notifications in Postgres ([`store`]), and publishes the
//! resulting events to the Redis backplane through a transactional outbox
//! ([`outbox`]) so that nothing committed is ever lost. Gateways read what
//! they need through the service-token `/internal/*` endpoints of the
//! admin listener.
//!
//! [`run`] is the whole service; `main.rs` only parses configuration.

pub mod config;
pub mod error;
pub mod extract;
pub mod live;
pub mod outbox;
pub mod routes;
pub mod state;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use chorus_shared::auth::JwtVerifier;
use chorus_shared::config::check_internal_token;
use chorus_shared::http::ServeOptions;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::config::ServeArgs;
use crate::error::ApiError;
use crate::outbox::{DirectPublish, OutboxStore, RedisSink};
use crate::state::{AppState, RateSetting};
use crate::store::PgStore;

/// File descriptors kept out of the public listener's connection cap: the
/// database pool, Redis, the admin listener, logs, with room to spare. The
/// cap is the rest of the open-file limit (raised to the hard limit), so
/// clients can never starve the pool of descriptors.
const FD_RESERVE: u64 = 512;

/// How long shutdown waits for requests in flight before dropping them:
/// longer than any request takes (the pool's acquire timeout is 5 s),
/// short enough to exit within a Kubernetes grace period.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The two sockets the service listens on.
#[derive(Debug)]
pub struct Listeners {
    /// Public HTTP API.
    pub api: TcpListener,
    /// `/healthz`, `/readyz`, `/metrics` and the gateways' `/internal/*`.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(args: &ServeArgs) -> Result<Self, ApiError> {
        Ok(Listeners {
            api: TcpListener::bind(args.addr).await?,
            admin: TcpListener::bind(args.admin_addr).await?,
        })
    }
}

/// The public listener's extras, checked before anything starts: an
/// origin that is not a valid header value or a web directory without an
/// `index.html` refuses to start, naming the variable.
fn public_options(args: &ServeArgs) -> Result<routes::PublicOptions, ApiError> {
    let allowed_origins = chorus_shared::config::allowed_origins(&args.allowed_origins)
        .into_iter()
        .map(|o| {
            axum::http::HeaderValue::from_str(&o).map_err(|_| {
                ApiError::Config(format!("CHORUS_ALLOWED_ORIGINS: {o:?} is not an origin"))
            })
        })
        .collect::<Result<_, _>>()?;
    if let Some(dir) = &args.web_dir
        && !dir.join("index.html").is_file()
    {
        return Err(ApiError::Config(format!(
            "CHORUS_WEB_DIR: {} has no index.html",
            dir.display()
        )));
    }
    Ok(routes::PublicOptions {
        allowed_origins,
        web_dir: args.web_dir.clone(),
    })
}

/// Runs the API until `shutdown` resolves, then drains: `/readyz` turns
/// 503, the public listener stops accepting, in-flight requests finish, the
/// outbox is flushed to Redis, and only then the admin listener closes.
pub async fn run(
    args: ServeArgs,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    check_internal_token(&args.internal_token).map_err(ApiError::Config)?;
    let public = public_options(&args)?;
    let verifier = JwtVerifier::new(&args.jwt).map_err(|e| ApiError::Config(e.to_string()))?;
    let wake = Arc::new(Notify::new());
    let sink = RedisSink::connect(&args.redis_url)?;
    let direct = DirectPublish::new(Arc::new(sink.clone()));
    let pg = PgStore::connect_lazy(
        &args.db.database_url,
        args.db.db_max_connections,
        wake.clone(),
        Some(direct.clone()),
        std::time::Duration::from_millis(args.post_linger_ms),
    )?;
    if !args.no_migrate {
        pg.migrate().await?;
    }
    let state = AppState::new(
        Arc::new(pg.clone()),
        live::LiveState::new(sink.client()),
        verifier,
        args.internal_token.clone(),
        RateSetting {
            rate: args.message_rate,
            burst: args.message_burst,
        },
        RateSetting {
            rate: args.write_rate,
            burst: args.write_burst,
        },
    );

    let _upkeep = chorus_shared::telemetry::spawn_metrics_upkeep();
    telemetry::register();
    let _pool_gauges = telemetry::watch_pool(pg.pool());
    let (stop_tx, stop_rx) = watch::channel(false);
    let publisher = tokio::spawn(outbox::run_publisher(
        Arc::new(OutboxStore::new(pg.pool(), Some(direct))),
        Arc::new(sink.clone()),
        wake,
        stop_rx.clone(),
    ));

    let mut admin_stop = stop_rx.clone();
    let admin = tokio::spawn(
        axum::serve(listeners.admin, routes::ops::admin_router(state.clone()))
            .with_graceful_shutdown(async move {
                // Closed after everything else has finished.
                let _ = admin_stop.wait_for(|_| false).await;
            })
            .into_future(),
    );

    let api_addr = listeners.api.local_addr()?;
    tracing::info!(%api_addr, "chorus-api listening");
    let drain_state = state.clone();
    chorus_shared::http::serve(
        listeners.api,
        routes::api_router(state, &public),
        ServeOptions::new(
            chorus_shared::http::connection_budget(FD_RESERVE),
            SHUTDOWN_GRACE,
        ),
        async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            drain_state.set_draining();
        },
    )
    .await;

    // Requests are done; flush the outbox, then close the admin listener.
    let _ = stop_tx.send(true);
    let _ = publisher.await;
    sink.quit().await;
    pg.close().await;
    drop(stop_tx);
    admin.abort();
    let _ = admin.await;
    tracing::info!("chorus-api stopped");
    Ok(())
}
