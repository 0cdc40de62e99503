//! Handles of the metric series the per-event path records, made once.
//!
//! A `metrics::counter!` or `histogram!` call looks its series up in the
//! recorder's registry (hashing the name and labels) every time; three
//! such calls per event and delivery batch were about 2 % of a small-room
//! gateway's CPU samples. The other series stay with their macros, and all
//! are registered at zero by `telemetry`.

use std::sync::OnceLock;

use chorus_shared::protocol::ServerEvent;

/// The per-event path's series.
#[derive(Debug)]
pub struct Hot {
    /// `chorus_gateway_deliveries_total`.
    pub deliveries: metrics::Counter,
    /// `chorus_gateway_frames_out_total` by `type`, in the order of
    /// [`ServerEvent::KINDS`].
    frames_out: Vec<metrics::Counter>,
    /// `chorus_gateway_event_lag_seconds`: commit to the backplane's
    /// arrival here.
    pub event_lag: metrics::Histogram,
    /// `chorus_gateway_delivery_lag_seconds`: commit to the first socket
    /// write of the event.
    pub delivery_lag: metrics::Histogram,
}

impl Hot {
    /// The counter of frames of `kind` sent (one of [`ServerEvent::KINDS`]).
    pub fn frames_out(&self, kind: &str) -> Option<&metrics::Counter> {
        let i = ServerEvent::KINDS.iter().position(|k| *k == kind)?;
        self.frames_out.get(i)
    }
}

/// The per-event path's handles. They are made after the process's
/// recorder is installed, so they record into it (a handle made before
/// would record nowhere).
pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| {
        drop(chorus_shared::telemetry::metrics_handle());
        Hot {
            deliveries: metrics::counter!("chorus_gateway_deliveries_total"),
            frames_out: ServerEvent::KINDS
                .iter()
                .map(|k| metrics::counter!("chorus_gateway_frames_out_total", "type" => *k))
                .collect(),
            event_lag: metrics::histogram!("chorus_gateway_event_lag_seconds"),
            delivery_lag: metrics::histogram!("chorus_gateway_delivery_lag_seconds"),
        }
    })
}
