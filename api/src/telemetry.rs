//! The API's metric series, registered at zero when it starts, so that
//! dashboards and alert rules see 0 rather than nothing from the first
//! scrape (and the Prometheus check catches a rule naming a series that
//! does not exist).

use crate::state::Bucket;

/// Registers every series at zero.
pub fn register() {
    for name in [
        "chorus_outbox_published_total",
        "chorus_api_request_deadline_exceeded_total",
        "chorus_http_connections_refused_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for bucket in [Bucket::Message, Bucket::Write] {
        metrics::counter!("chorus_api_rate_limited_total", "bucket" => bucket.label()).increment(0);
    }
    metrics::gauge!("chorus_outbox_pending").set(0.0);
}
