//! The API's metric series, registered at zero when it starts, so that
//! dashboards and alert rules see 0 rather than nothing from the first
//! scrape (and the Prometheus check catches a rule naming a series that
//! does not exist).

use std::time::Duration;

use sqlx::PgPool;

use crate::live::LiveState;
use crate::state::Bucket;

/// How often the pool gauges are sampled: a scrape sees values at most
/// this old.
const POOL_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Longest a scrape waits for the gateway registry: a Redis that is away
/// must not make the API's own metrics unscrapeable (Prometheus's default
/// scrape timeout is 10 s).
const REGISTRY_SAMPLE_TIMEOUT: Duration = Duration::from_millis(500);

/// Registers every series at zero.
pub fn register() {
    for name in [
        "chorus_outbox_published_total",
        "chorus_outbox_published_directly_total",
        "chorus_api_request_deadline_exceeded_total",
        "chorus_http_connections_refused_total",
        "chorus_api_messages_written_total",
        "chorus_api_notifications_written_total",
        "chorus_api_database_errors_total",
        "chorus_outbox_publish_failures_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for bucket in [Bucket::Message, Bucket::Write] {
        metrics::counter!("chorus_api_rate_limited_total", "bucket" => bucket.label()).increment(0);
    }
    metrics::gauge!("chorus_outbox_pending").set(0.0);
    metrics::gauge!("chorus_outbox_held_channels").set(0.0);
    metrics::gauge!("chorus_api_registered_gateways").set(0.0);
}

/// Samples the database pool into `chorus_api_db_pool_connections{state}`
/// (busy, idle) until dropped.
#[derive(Debug)]
pub struct PoolGauges(tokio::task::JoinHandle<()>);

impl Drop for PoolGauges {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn watch_pool(pool: PgPool) -> PoolGauges {
    PoolGauges(tokio::spawn(async move {
        let mut tick = tokio::time::interval(POOL_SAMPLE_INTERVAL);
        loop {
            tick.tick().await;
            let idle = pool.num_idle() as f64;
            let size = f64::from(pool.size());
            metrics::gauge!("chorus_api_db_pool_connections", "state" => "idle").set(idle);
            metrics::gauge!("chorus_api_db_pool_connections", "state" => "busy")
                .set((size - idle).max(0.0));
        }
    }))
}

/// Sets `chorus_api_registered_gateways`, how many gateways the registry
/// lists (an alert compares it with the gateways Prometheus scrapes), when
/// `/metrics` is scraped rather than on a timer: Redis is asked only as
/// often as someone looks (idle Redis time is mostly wake-ups). Past
/// [`REGISTRY_SAMPLE_TIMEOUT`] the gauge keeps its last value.
pub async fn sample_registry(live: &LiveState) {
    if let Ok(Ok(gateways)) = tokio::time::timeout(REGISTRY_SAMPLE_TIMEOUT, live.gateways()).await {
        metrics::gauge!("chorus_api_registered_gateways").set(gateways.len() as f64);
    }
}
