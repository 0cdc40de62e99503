//! The admin listener: liveness, readiness, Prometheus metrics and the
//! gateways' `/internal/*` endpoints. Kept off the public port so a load
//! balancer never exposes it.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::state::AppState;

/// Longest a readiness probe waits for Postgres before answering 503.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);

pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(super::internal_routes())
        .fallback(super::not_found)
        .with_state(state)
}

/// The Prometheus text, with the gauges sampled at scrape time.
async fn metrics(State(state): State<AppState>) -> String {
    crate::telemetry::sample_registry(state.live()).await;
    chorus_shared::telemetry::render()
}

/// Ready while not draining and Postgres answers. Redis is deliberately not
/// checked: while it is away the outbox queues and nothing is lost.
async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    match tokio::time::timeout(READY_DB_TIMEOUT, state.store().ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}
