//! Writes a room's dispatcher makes itself: the connections whose writer's
//! turn a delivery claimed (`handle/queue.rs`), written once the room's
//! lock is let go.
//!
//! Waking a connection's writer task for each delivery cost rooms of ten
//! more than anything but the kernel's write: a task switch per recipient,
//! and a second worker thread woken to steal them. A delivery that finds a
//! connection's writer with nothing to do claims its turn instead, and the
//! dispatcher writes the frame itself with a non-blocking write, in rooms
//! of up to [`MAX_CLAIMING_ROOM`] members. The writes wait for the room's
//! lock to go (a join must not wait on them), which the lock's guard,
//! [`StateGuard`], sees to on every path that delivers: dispatch, gap
//! filling, presence.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, MutexGuard};

use super::room::RoomState;
use crate::codec::Frame;
use crate::handle::{ConnHandle, Pushed};

/// Largest room whose dispatcher writes to its members itself. A claimed
/// write costs the dispatcher the `writev` a woken writer would have made,
/// so in small rooms the wake-up and the task switch are saved outright. A room
/// of 500 wakes its members' writers instead, as before: that spreads one
/// event's 500 writes over the runtime's workers, and keeps each dispatch
/// short, so that a burst of events (the runtime lets a task take up to
/// 128 before it must yield) does not hold one worker for a second. With
/// every member of rooms of 500 claimed, two of four runs at 50,000
/// deliveries a second stalled for most of a second (BENCHMARKS.md).
pub(super) const MAX_CLAIMING_ROOM: usize = 32;

/// A room's state, locked; when dropped, after the lock, it writes to the
/// connections its deliveries claimed.
pub(super) struct StateGuard<'a> {
    /// Only `None` within `drop`.
    guard: Option<MutexGuard<'a, RoomState>>,
}

impl<'a> StateGuard<'a> {
    pub(super) fn new(guard: MutexGuard<'a, RoomState>) -> Self {
        StateGuard { guard: Some(guard) }
    }
}

impl Deref for StateGuard<'_> {
    type Target = RoomState;

    fn deref(&self) -> &RoomState {
        self.guard.as_deref().expect("taken only by drop")
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut RoomState {
        self.guard.as_deref_mut().expect("taken only by drop")
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if guard.claimed.is_empty() {
            return;
        }
        let claimed = std::mem::take(&mut guard.claimed);
        drop(guard);
        for conn in claimed {
            conn.flush();
        }
    }
}

/// The list of claimed connections, with room for a room's members when
/// its deliveries claim: one allocation per lock hold, not one per growth.
pub(super) fn room_for(
    claimed: &mut Vec<Arc<ConnHandle>>,
    claim: bool,
    members: usize,
) -> &mut Vec<Arc<ConnHandle>> {
    if claim && claimed.capacity() == 0 {
        claimed.reserve_exact(members);
    }
    claimed
}

/// Queues `frame` to `conn`, claiming its writer's turn if `claim`. True
/// when queued.
pub(super) fn offer(
    conn: &Arc<ConnHandle>,
    frame: &Frame,
    claim: bool,
    claimed: &mut Vec<Arc<ConnHandle>>,
) -> bool {
    match conn.offer_event(frame, claim) {
        Some(Pushed::Claimed) => {
            claimed.push(conn.clone());
            true
        }
        Some(Pushed::Queued) => true,
        None => false,
    }
}
