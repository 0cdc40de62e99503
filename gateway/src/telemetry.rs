//! The gateway's metric series, registered at zero when it starts: every
//! series a dashboard or alert rule names exists from the first scrape, so
//! a rule sees 0 rather than nothing and a typo in a rule is caught (the
//! Prometheus check fails on a name no target exports).

use chorus_shared::protocol::ServerEvent;

use crate::codec::Encoding;

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
    "chorus_gateway_queue_overdraft_total",
    "chorus_gateway_rate_limited_total",
    "chorus_gateway_typing_coalesced_total",
    "chorus_gateway_pending_dropped_total",
    "chorus_gateway_revocations_repaired_total",
    "chorus_gateway_presence_renewals_total",
    "chorus_gateway_presence_reaps_total",
    "chorus_gateway_backplane_lagged_total",
    "chorus_gateway_api_busy_total",
    "chorus_http_connections_refused_total",
    "chorus_gateway_backplane_reconnects_total",
    "chorus_gateway_backplane_topology_changes_total",
    "chorus_gateway_backplane_pings_total",
];

/// Counters with one label, and the label's fixed values.
const LABELLED: &[(&str, &str, &[&str])] = &[
    (
        "chorus_gateway_refused_upgrades_total",
        "reason",
        &["full", "per_user", "draining", "unauthorized"],
    ),
    (
        "chorus_gateway_joins_total",
        "recovery",
        &["none", "recovered", "not_recovered"],
    ),
    ("chorus_gateway_closes_total", "code", crate::close::LABELS),
    (
        "chorus_gateway_presence_events_total",
        "kind",
        &["joined", "left"],
    ),
    (
        "chorus_gateway_presence_announcements_lost_total",
        "kind",
        &["joined", "left"],
    ),
    (
        "chorus_gateway_frames_out_total",
        "type",
        ServerEvent::KINDS,
    ),
    (
        "chorus_gateway_frames_in_total",
        "type",
        crate::socket::COMMANDS,
    ),
];

/// Registers every series at zero.
pub fn register() {
    for name in COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    for (name, label, values) in LABELLED {
        for value in *values {
            metrics::counter!(*name, *label => *value).increment(0);
        }
    }
    for encoding in [Encoding::Json, Encoding::Msgpack] {
        metrics::gauge!("chorus_gateway_connections", "encoding" => encoding.label())
            .increment(0.0);
    }
    for name in [
        "chorus_gateway_rooms",
        "chorus_gateway_subscriptions",
        "chorus_gateway_presence_held",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
    metrics::gauge!("chorus_gateway_backplane_live").set(0.0);
}
