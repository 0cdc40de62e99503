//! The gateway's metric series, registered at zero when it starts: every
//! series a dashboard or alert rule names exists from the first scrape, so
//! a rule sees 0 rather than nothing and a typo in a rule is caught (the
//! Prometheus check fails on a name no target exports).

/// Counters without labels.
const COUNTERS: &[&str] = &[
    "chorus_gateway_deliveries_total",
    "chorus_gateway_duplicate_events_total",
    "chorus_gateway_undecodable_events_total",
    "chorus_gateway_gaps_total",
    "chorus_gateway_backfill_requests_total",
    "chorus_gateway_backfill_failures_total",
    "chorus_gateway_replayed_events_total",
    "chorus_gateway_slow_consumer_closes_total",
    "chorus_gateway_rate_limited_total",
    "chorus_gateway_typing_coalesced_total",
    "chorus_gateway_pending_dropped_total",
    "chorus_gateway_revocations_repaired_total",
    "chorus_gateway_presence_refreshes_total",
    "chorus_gateway_backplane_lagged_total",
    "chorus_gateway_api_busy_total",
    "chorus_http_connections_refused_total",
];

/// Registers every series at zero.
pub fn register() {
    for name in COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    for reason in ["full", "per_user"] {
        metrics::counter!("chorus_gateway_refused_upgrades_total", "reason" => reason).increment(0);
    }
    metrics::gauge!("chorus_gateway_connections").set(0.0);
    metrics::gauge!("chorus_gateway_backplane_live").set(0.0);
}
