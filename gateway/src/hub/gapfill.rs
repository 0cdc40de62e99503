//! Gap filling: when a room's sequence has a hole (a dropped or reordered
//! publication, a backplane reconnect, a receive-buffer overflow), one task
//! per room fetches the missing range from the API until the room has no
//! gap, while live events keep arriving and wait in `pending`.

use std::sync::Arc;
use std::time::Duration;

use super::Hub;
use super::room::Room;

/// Most events one gap-filling request asks for: a gap is normally a few
/// events; a long outage is filled in pages of this size.
const GAP_FETCH_LIMIT: i64 = 1000;
/// Retry delays when the API cannot serve a backfill: quick for a blip,
/// capped so a long API outage costs one request per room every 2 s.
const FETCH_RETRY_MIN: Duration = Duration::from_millis(100);
const FETCH_RETRY_MAX: Duration = Duration::from_secs(2);

/// How long a room may fail to repair its sequence before the gateway
/// reports itself not ready: long enough to ride out a blip, short enough
/// that a load balancer moves new clients elsewhere while the API is away.
pub(super) const REPAIR_GRACE: Duration = Duration::from_secs(5);

impl Hub {
    /// True while most rooms have failed to fill a gap for longer than
    /// [`REPAIR_GRACE`]: the API is away for this gateway, and its members
    /// are missing events. One room that cannot repair (a bad event, say)
    /// shows in `chorus_gateway_backfill_failures_total` instead of taking
    /// the whole gateway out of the load balancer.
    pub fn is_repair_stalled(&self) -> bool {
        let rooms: Vec<Arc<Room>> = super::room::lock(&self.inner.rooms)
            .values()
            .cloned()
            .collect();
        let stalled = rooms
            .iter()
            .filter(|r| {
                r.state()
                    .failing_since
                    .is_some_and(|since| since.elapsed() > REPAIR_GRACE)
            })
            .count();
        stalled > 0 && stalled * 2 > rooms.len()
    }

    /// Ensures one task is fetching whatever the room is missing.
    pub(super) fn reconcile(&self, room: &Arc<Room>) {
        {
            let mut st = room.state();
            if st.fetching || st.retired {
                return;
            }
            st.fetching = true;
        }
        let hub = self.clone();
        let room = room.clone();
        tokio::spawn(async move { hub.fill(room).await });
    }

    /// Fills gaps until the room has none.
    async fn fill(&self, room: Arc<Room>) {
        let mut retry = FETCH_RETRY_MIN;
        loop {
            let after = room.delivered_through();
            match self.fetch(room.id, after, GAP_FETCH_LIMIT).await {
                Ok(w) => {
                    let moved = {
                        let mut st = room.state();
                        st.failing_since = None;
                        for (seq, frame) in w.events {
                            if seq > st.delivered_through {
                                st.pending.entry(seq).or_insert(frame);
                            }
                        }
                        st.complete_through = st.complete_through.max(w.complete_through);
                        st.heard_through = st.heard_through.max(w.complete_through);
                        st.advance();
                        if !st.has_gap() || st.retired {
                            st.fetching = false;
                            return;
                        }
                        st.delivered_through > after
                    };
                    if moved {
                        retry = FETCH_RETRY_MIN;
                    } else {
                        // The API has nothing past what we hold (an event
                        // from beyond its head, or not committed yet): ask
                        // again later rather than at once.
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(FETCH_RETRY_MAX);
                    }
                }
                Err(e) => {
                    metrics::counter!("chorus_gateway_backfill_failures_total").increment(1);
                    tracing::warn!(community = %room.id, error = %e, "backfill failed, retrying");
                    {
                        let mut st = room.state();
                        if st.retired {
                            st.fetching = false;
                            st.failing_since = None;
                            return;
                        }
                        st.failing_since
                            .get_or_insert_with(tokio::time::Instant::now);
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(FETCH_RETRY_MAX);
                }
            }
        }
    }
}
