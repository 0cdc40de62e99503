//! Logging and metrics setup shared by both binaries.
//!
//! The Prometheus recorder is process-global (the `metrics` facade has one
//! slot), so it is installed once and every server started in the process,
//! including the several a test may run, renders from the same handle.
//! Each service also runs the recorder's upkeep ([`spawn_metrics_upkeep`]):
//! without it histogram samples pile up between scrapes, without bound when
//! nothing scrapes.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the tracing subscriber (`RUST_LOG`, default `info`). Later calls
/// in the same process are no-ops.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Latency buckets in seconds: sub-millisecond resolution for the delivery
/// path, up to 10 s for slow database calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's Prometheus handle, installing the recorder on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then this
            // handle renders nothing, which the metrics test would catch.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The scrape body: process metrics (CPU seconds, resident memory, open
/// files: `process_*`) sampled now, then everything recorded.
pub fn render() -> String {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    let handle = metrics_handle();
    PROCESS
        .get_or_init(|| {
            let c = metrics_process::Collector::default();
            c.describe();
            c
        })
        .collect();
    handle.render()
}

/// How often the recorder's upkeep folds recorded histogram samples into
/// their buckets: often enough that unscraped samples stay a few seconds'
/// worth, rarely enough to cost nothing (the exporter's own default).
pub const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The recorder's upkeep task; stops when dropped.
#[derive(Debug)]
pub struct MetricsUpkeep {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsUpkeep {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs [`PrometheusHandle::run_upkeep`] every [`METRICS_UPKEEP_INTERVAL`]
/// on a task of the current runtime until the returned guard is dropped.
/// Each service's `run` holds one for as long as it runs (a test process
/// running several services runs several; upkeep is idempotent).
pub fn spawn_metrics_upkeep() -> MetricsUpkeep {
    let handle = metrics_handle();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
    MetricsUpkeep { task }
}
