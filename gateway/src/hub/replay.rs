//! Joining with `lastSeq`: replay what the client missed, then go live with
//! no gap and no repeat at the seam.
//!
//! The joiner is not yet a live member while it replays. It is sent the
//! events after its `lastSeq` from a fetched [`Window`], then, under the
//! room lock, becomes live only if the room has not delivered past what it
//! was sent; otherwise it fetches the rest and tries again. Live events at
//! or below what its replay covered are skipped for it (`skip_through`).
//!
//! Windows are shared: the whole recovery window below the room's head is
//! fetched once and reused for a few seconds, so a reconnect storm costs
//! one API request per community, not one per client. While live traffic
//! goes on, the room keeps what it delivers after the fetch (its
//! [`Tail`]), and a later joiner continues from the window into the tail
//! instead of fetching again for the events that came since.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_shared::protocol::{EventsPage, MAX_EVENTS_PER_REQUEST};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::room::Room;
use super::{Hub, Joined};
use crate::codec::{Frame, SharedFrame};
use crate::error::GatewayError;
use crate::handle::ConnHandle;

/// How long a fetched recovery window is reused for other joiners: long
/// enough to absorb a reconnect storm's arrivals, short enough that memory
/// is returned quickly.
const WINDOW_CACHE_TTL: Duration = Duration::from_secs(5);

/// Fewest events a window fetch asks for, so small recovery windows still
/// fetch in pages worth a round trip.
pub(super) const MIN_FETCH: i64 = 1000;

/// Most events a room's recovery tail holds: a fetch's page. A room busier
/// than that during a storm fetches again instead (one request a page).
const MAX_TAIL: usize = MIN_FETCH as usize;

/// A shared, in-flight window fetch.
pub(super) type WindowFetch = Arc<OnceCell<Result<Arc<Window>, GatewayError>>>;

/// A fetched stretch of a community's sequence.
#[derive(Debug)]
pub(super) struct Window {
    /// Events after this seq are included.
    pub from: i64,
    pub events: Vec<(i64, Frame)>,
    /// The sequence is complete up to here (absent seqs were deleted).
    pub complete_through: i64,
    /// The fetch hit its limit: more events exist beyond `complete_through`.
    pub truncated: bool,
}

/// The live events a room delivered after `from`, kept while joiners
/// recover. Complete: every seq after `from` up to the room's
/// `delivered_through` is here, but for the seqs the room skipped
/// (creations of messages deleted before it heard of them). Dropped with
/// the first event after it went unused for [`WINDOW_CACHE_TTL`], past
/// [`MAX_TAIL`] events, or with its room: a room that falls quiet keeps
/// its tail, bounded by the same count.
///
/// A cached window, or the tail itself, may hold the creation of a message
/// deleted since: the room's recent deletions (`RoomState::deleted`) keep a
/// replay from sending it.
#[derive(Debug)]
pub(super) struct Tail {
    from: i64,
    events: Vec<(i64, Frame)>,
    used: tokio::time::Instant,
}

impl Tail {
    pub fn new(from: i64) -> Self {
        Tail {
            from,
            events: Vec::new(),
            used: tokio::time::Instant::now(),
        }
    }

    /// Keeps a delivered event; false when the tail should be dropped.
    pub fn record(&mut self, seq: i64, frame: Frame) -> bool {
        if self.events.len() >= MAX_TAIL || self.used.elapsed() >= WINDOW_CACHE_TTL {
            return false;
        }
        self.events.push((seq, frame));
        true
    }

    /// Marks the tail used (a new window's fetch counts on it).
    pub fn touch(&mut self) {
        self.used = tokio::time::Instant::now();
    }

    /// Whether a replay standing at `through` can continue from here.
    pub fn reaches_back_to(&self, through: i64) -> bool {
        self.from <= through
    }

    /// The events after `through`, when the tail reaches back to it.
    fn after(&mut self, through: i64) -> Option<Vec<(i64, Frame)>> {
        if !self.reaches_back_to(through) {
            return None;
        }
        self.used = tokio::time::Instant::now();
        let start = self.events.partition_point(|(s, _)| *s <= through);
        Some(self.events[start..].to_vec())
    }
}

impl Window {
    /// Whether a replay standing at `after` and aiming for `target` can use
    /// this window: it starts early enough and either reaches the target or
    /// at least moves the replay forward (a truncated page in a very busy
    /// room; the replay then fetches the rest).
    pub fn serves(&self, after: i64, target: i64) -> bool {
        self.from <= after
            && (self.complete_through >= target
                || (self.truncated && self.complete_through > after))
    }
}

impl Hub {
    /// Makes `conn` a live member, after replaying what it missed since
    /// `last_seq` (none: live from now).
    pub(super) async fn attach(
        &self,
        room: &Arc<Room>,
        head_seq: i64,
        conn: &Arc<ConnHandle>,
        last_seq: Option<i64>,
    ) -> Result<Joined, GatewayError> {
        // Without a replay the joiner's position is the room's at its
        // admission, read under the same lock: an event delivered between a
        // separate read and the admission would be neither in the live
        // stream for it nor before the ack's head (a gap), and an event the
        // API had committed but the room not yet delivered arrives live,
        // after the ack, above its head.
        let admit_live = |conn: &Arc<ConnHandle>| -> Result<i64, GatewayError> {
            let mut st = room.state();
            st.admit(conn, i64::MIN)?;
            Ok(st.delivered_through)
        };
        let Some(last_seq) = last_seq else {
            let head = admit_live(conn)?;
            metrics::counter!("chorus_gateway_joins_total", "recovery" => "none").increment(1);
            return Ok(Joined {
                head_seq: head,
                recovered: true,
                missed: 0,
            });
        };
        let live_head = room.delivered_through().max(head_seq);
        let from = last_seq.min(live_head);
        if live_head - from > self.inner.recovery_window {
            let head = admit_live(conn)?;
            metrics::counter!("chorus_gateway_joins_total", "recovery" => "not_recovered")
                .increment(1);
            return Ok(Joined {
                head_seq: head,
                recovered: false,
                missed: (head - from).max(0),
            });
        }
        let mut through = from;
        let mut missed = 0i64;
        loop {
            let tail = {
                let mut st = room.state();
                if st.delivered_through <= through {
                    st.admit(conn, through)?;
                    break;
                }
                let head = st.delivered_through;
                st.tail
                    .as_mut()
                    .and_then(|t| t.after(through))
                    .map(|events| (events, head))
            };
            if let Some((events, head)) = tail {
                missed += replay(room, conn, &events, &mut through).await?;
                through = through.max(head);
                continue;
            }
            let target = room.delivered_through();
            let window = self.window(room, through, target).await?;
            missed += replay(room, conn, &window.events, &mut through).await?;
            through = through.max(window.complete_through);
        }
        metrics::counter!("chorus_gateway_replayed_events_total").increment(missed.unsigned_abs());
        metrics::counter!("chorus_gateway_joins_total", "recovery" => "recovered").increment(1);
        Ok(Joined {
            head_seq: room.delivered_through().max(through),
            recovered: true,
            missed,
        })
    }

    /// A fetched window covering `(after, target]`, shared between joiners.
    async fn window(
        &self,
        room: &Arc<Room>,
        after: i64,
        target: i64,
    ) -> Result<Arc<Window>, GatewayError> {
        let window = self.inner.recovery_window;
        let limit = window
            .saturating_mul(2)
            .clamp(MIN_FETCH, MAX_EVENTS_PER_REQUEST);
        // What a window must reach: the room's position, or only the
        // window's own end when the room's tail goes on from there.
        let reach = |st: &super::room::RoomState, w: &Window| match &st.tail {
            Some(t) if t.reaches_back_to(w.complete_through) => target.min(w.complete_through),
            _ => target,
        };
        let cell = {
            let mut st = room.state();
            if let Some((at, w)) = &st.window
                && at.elapsed() < WINDOW_CACHE_TTL
                && w.serves(after, reach(&st, w))
            {
                return Ok(w.clone());
            }
            match &st.window_inflight {
                Some(cell) => cell.clone(),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    st.window_inflight = Some(cell.clone());
                    // Live events from here on are kept for later joiners:
                    // the fetch reaches at least this far, so the window
                    // and the tail leave no gap. (A tail still kept reaches
                    // back further: it stays.)
                    let from = st.delivered_through;
                    st.tail.get_or_insert_with(|| Tail::new(from)).touch();
                    cell
                }
            }
        };
        let from = (target - window).max(0).min(after);
        let shared = cell
            .get_or_init(|| async {
                let r = self.fetch(room.id, from, limit).await.map(Arc::new);
                let mut st = room.state();
                st.window_inflight = None;
                if let Ok(w) = &r {
                    st.window = Some((Instant::now(), w.clone()));
                }
                r
            })
            .await
            .clone()?;
        if shared.serves(after, reach(&room.state(), &shared)) {
            return Ok(shared);
        }
        // Someone else's fetch that starts too late for us, or a window too
        // large for one page: fetch exactly what this replay needs, which
        // always moves it forward.
        self.fetch(room.id, after, limit).await.map(Arc::new)
    }

    /// Fetches `(after, …]` from the API as shared frames (replays and gap
    /// filling).
    pub(super) async fn fetch(
        &self,
        community: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Window, GatewayError> {
        metrics::counter!("chorus_gateway_backfill_requests_total").increment(1);
        let EventsPage { head_seq, events } =
            self.inner.api.events(community, after, limit).await?;
        let full = events.len() as i64 >= limit;
        let events: Vec<(i64, Frame)> = events
            .into_iter()
            .map(|e| (e.seq, Arc::new(SharedFrame::new(e.event))))
            .collect();
        let max_seq = events.last().map_or(after, |(s, _)| *s);
        let complete_through = if full { max_seq } else { max_seq.max(head_seq) };
        Ok(Window {
            from: after,
            events,
            complete_through,
            truncated: full,
        })
    }
}

/// Sends `events` after `through` to a joiner, moving `through` along;
/// returns how many were sent.
async fn replay(
    room: &Room,
    conn: &ConnHandle,
    events: &[(i64, Frame)],
    through: &mut i64,
) -> Result<i64, GatewayError> {
    let mut sent = 0;
    for (seq, frame) in events {
        if *seq <= *through {
            continue;
        }
        {
            let st = room.state();
            // Revoked meanwhile: not one more event (the admission,
            // refused, releases the rest).
            if st.revoked.contains(&conn.id) {
                return Err(GatewayError::Forbidden("membership revoked"));
            }
            // Deleted since this copy was taken (the room delivered the
            // deletion): the replay goes on to its `message-deleted`, and
            // the creation is skipped (contract).
            if st.deleted_since(frame) {
                *through = *seq;
                continue;
            }
        }
        // Paced by the client's reading: waits for queue space.
        if !conn.push_event_wait(frame).await {
            return Err(GatewayError::Unavailable("connection closed".into()));
        }
        *through = *seq;
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_serve_replays_that_they_move_forward() {
        let w = |from, complete_through, truncated| Window {
            from,
            events: Vec::new(),
            complete_through,
            truncated,
        };
        assert!(w(10, 50, false).serves(20, 50));
        assert!(!w(10, 50, false).serves(5, 50), "starts too late");
        assert!(
            !w(10, 40, false).serves(20, 50),
            "does not reach the target"
        );
        assert!(
            w(10, 40, true).serves(20, 50),
            "a truncated page still makes progress"
        );
        assert!(
            !w(10, 20, true).serves(20, 50),
            "but not when it ends where we stand"
        );
    }
}
