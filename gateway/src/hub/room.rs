//! One community's local state, and the ordering rule of its delivery.
//! Kept whole, with its unit tests, past 450 lines: the state's fields and
//! the rules that keep them consistent are read together.
//!
//! A [`Room`] exists per community with at least one local connection. It
//! owns the community's delivery order: `delivered_through` is the seq up
//! to which its live members have been sent everything. Sequenced events
//! are delivered strictly in order, repeats dropped; an event that skips
//! ahead waits in `pending` while the gap is filled (see `gapfill`), so a
//! dropped or reordered publication delays delivery instead of losing it.
//! `complete_through` marks how far the sequence is known to be complete:
//! a seq at or below it that was never seen is the creation of a message
//! deleted since, which the contract allows to skip.
//!
//! Everything here is plain data under one mutex, never held across
//! `.await`: fan-out queues a pointer to the shared event to each member,
//! so N members cost N non-blocking queue pushes and no allocation.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chorus_shared::envelope::community_channel;
use chorus_shared::protocol::ServerEvent;
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::claims::{self, StateGuard};
use super::replay::{Tail, Window, WindowFetch};
use crate::codec::Frame;
use crate::error::GatewayError;
use crate::handle::ConnHandle;

/// Shortest interval between two broadcasts of the same typing state of
/// one user in one community, however many connections send it: clients
/// repeat `typing` while a user types, and members need it once a second
/// at most. A change of state always passes: the contract promises every
/// transition, and one held back would leave members showing the wrong
/// state (typing `true`, `false`, `true` within a second, the last one
/// dropped, shows someone typing as idle). How fast a user can flip is
/// bounded by each connection's typing rate limit instead.
pub(super) const TYPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a listing of a community's online users is reused by join
/// acks: a reconnect storm's thousands of joins read it once, and a user
/// who came online on another gateway within this long may be missing
/// from an ack (`user-joined` still announces them). This gateway's own
/// users are always included, from the room.
pub(super) const ONLINE_SNAPSHOT_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Events a room holds while a gap is filled. Past it only the highest seq
/// is remembered and the rest is fetched with the gap: a room cannot grow
/// without bound while the API is slow or away. A thousand events is one
/// gap-fill page.
pub(super) const MAX_PENDING: usize = 1000;

/// Deletions a room remembers (the message ids of the last ones it
/// delivered): a replay from a window fetched before a deletion skips the
/// deleted message's creation (contract). A replay would have to outlast
/// this many deletions in its room to miss one; the set costs nothing in
/// rooms without deletions.
pub(super) const RECENT_DELETIONS: usize = 1000;

pub(super) use crate::sync::lock;

/// A list of online user ids, shared.
pub(super) type OnlineList = Arc<Vec<String>>;

/// A live member of a room.
pub(super) struct Member {
    pub conn: Arc<ConnHandle>,
    /// Sequenced events at or below this were already delivered by the
    /// member's replay.
    pub skip_through: i64,
}

pub(super) struct RoomState {
    /// Every sequenced event up to here was delivered to the live members
    /// (-1 until the first joiner sets the starting point).
    pub delivered_through: i64,
    /// The sequence is known complete up to here: absent seqs at or below
    /// it are creations of since-deleted messages.
    pub complete_through: i64,
    /// Events that arrived ahead of a gap, or before the starting point
    /// was set, at most [`MAX_PENDING`].
    pub pending: BTreeMap<i64, Frame>,
    /// The highest seq heard of: events past the pending cap are dropped
    /// and fetched later, only their bound is kept.
    pub heard_through: i64,
    /// Since when the gap filling of this room has been failing.
    pub failing_since: Option<tokio::time::Instant>,
    /// A gap-filling task is running.
    pub fetching: bool,
    pub members: HashMap<u64, Member>,
    /// Connections counted in `users` that are still joining (replaying):
    /// a join cut short by its connection closing is released by `leave`.
    pub joining: HashSet<u64>,
    /// Local connections per user (joined members, replaying joiners and
    /// held slots of lost connections), for presence: one entry per user
    /// however many tabs.
    pub users: HashMap<Arc<str>, u32>,
    /// Of `users`' counts, the slots held for lost connections (see
    /// `linger`), by hold id, oldest first: a joiner of the same user takes
    /// the oldest over, and a grace's end releases only its own.
    pub held: HashMap<Arc<str>, VecDeque<u64>>,
    /// The last [`RECENT_DELETIONS`] messages deleted, in delivery order
    /// and as a set.
    pub deleted: VecDeque<Uuid>,
    pub deleted_set: HashSet<Uuid>,
    /// The last fetched recovery window and when, shared by joiners.
    pub window: Option<(Instant, Arc<Window>)>,
    pub window_inflight: Option<WindowFetch>,
    /// The live events delivered since a recovery window was fetched, so
    /// later joiners continue from the window without fetching again.
    pub tail: Option<Tail>,
    /// The community's online users as the backplane last listed them, and
    /// when: join acks within [`ONLINE_SNAPSHOT_TTL`] share it.
    pub online: Option<(Instant, Arc<Vec<String>>)>,
    /// A snapshot of `online` and its merge with the local users, shared
    /// by acks until the local users change (cleared then).
    pub online_merged: Option<(OnlineList, OnlineList)>,
    pub online_inflight: Option<Arc<OnceCell<Arc<Vec<String>>>>>,
    /// The typing state last broadcast for each local user, and when: the
    /// same state again within [`TYPING_INTERVAL`] is not broadcast.
    pub typing: HashMap<Arc<str>, (bool, tokio::time::Instant)>,
    /// Removed from the hub; a joiner that finds it takes its successor.
    pub retired: bool,
    /// Joins that subscribed the room before their access check and have
    /// not joined yet (see `Hub::prepare`): the room is not retired under
    /// them.
    pub preparing: u32,
    /// The backplane lost messages before the starting point was set: the
    /// first joiner fetches what its check's head may miss.
    pub lost_before_start: bool,
    /// Connections whose user was removed from the community while they
    /// were still joining; they are refused instead of admitted.
    pub revoked: HashSet<u64>,
    /// Connections whose writer's turn a delivery claimed, written when
    /// the lock goes (`claims`).
    pub claimed: Vec<Arc<ConnHandle>>,
}

/// One community's local state.
pub(super) struct Room {
    pub id: Uuid,
    pub channel: String,
    /// Set once the channel is subscribed.
    pub subscribed: OnceCell<()>,
    /// A subscribe of the channel was queued: retiring the room queues
    /// the unsubscribe, even if the subscribe's outcome was not awaited.
    pub subscribe_sent: AtomicBool,
    /// Set once the channel is subscribed and the starting point known.
    pub ready: OnceCell<()>,
    pub state: Mutex<RoomState>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RoomState {
    pub fn new(delivered_through: i64) -> Self {
        RoomState {
            delivered_through,
            complete_through: delivered_through,
            pending: BTreeMap::new(),
            heard_through: delivered_through,
            failing_since: None,
            fetching: false,
            members: HashMap::new(),
            joining: HashSet::new(),
            users: HashMap::new(),
            held: HashMap::new(),
            deleted: VecDeque::new(),
            deleted_set: HashSet::new(),
            window: None,
            window_inflight: None,
            tail: None,
            online: None,
            online_merged: None,
            online_inflight: None,
            typing: HashMap::new(),
            retired: false,
            preparing: 0,
            lost_before_start: false,
            revoked: HashSet::new(),
            claimed: Vec::new(),
        }
    }

    /// Takes a sequenced event from the backplane or a backfill: delivers
    /// what is now in order. False for a repeat. Before the starting point
    /// is set, events wait in `pending` (the first joiner's head decides
    /// which of them are new).
    pub fn offer(&mut self, seq: i64, frame: Frame) -> bool {
        if seq <= self.delivered_through {
            return false;
        }
        self.heard_through = self.heard_through.max(seq);
        if self.pending.len() < MAX_PENDING || seq == self.delivered_through + 1 {
            self.pending.entry(seq).or_insert(frame);
        } else {
            metrics::counter!("chorus_gateway_pending_dropped_total").increment(1);
        }
        self.advance();
        true
    }

    /// Delivers what `pending` allows, in order.
    pub fn advance(&mut self) {
        if !self.started() {
            return;
        }
        while let Some((&seq, _)) = self.pending.first_key_value() {
            if seq <= self.delivered_through {
                self.pending.pop_first();
            } else if seq == self.delivered_through + 1 || seq <= self.complete_through {
                if let Some((seq, frame)) = self.pending.pop_first() {
                    self.deliver(seq, &frame);
                    self.delivered_through = seq;
                    self.record(seq, frame);
                }
            } else if self.complete_through > self.delivered_through {
                // Everything up to complete_through that is not pending
                // does not exist (deleted creations): skip to it.
                self.delivered_through = self.complete_through;
            } else {
                break;
            }
        }
        if self.complete_through > self.delivered_through {
            self.delivered_through = self.complete_through;
        }
    }

    /// Keeps a delivered event in the recovery tail, if one is kept (a tail
    /// unused for a while, or grown past its bound, is dropped), and a
    /// deletion's message id.
    fn record(&mut self, seq: i64, frame: Frame) {
        if let Some(ServerEvent::MessageDeleted(d)) = frame.event()
            && self.deleted_set.insert(d.message_id)
        {
            self.deleted.push_back(d.message_id);
            if self.deleted.len() > RECENT_DELETIONS
                && let Some(old) = self.deleted.pop_front()
            {
                self.deleted_set.remove(&old);
            }
        }
        if let Some(t) = &mut self.tail
            && !t.record(seq, frame)
        {
            self.tail = None;
        }
    }

    /// Whether `frame` is the creation of a message this room saw deleted.
    pub fn deleted_since(&self, frame: &Frame) -> bool {
        !self.deleted_set.is_empty()
            && matches!(frame.event(), Some(ServerEvent::NewMessage(m)) if self.deleted_set.contains(&m.message.id))
    }

    /// True when something is waiting for a missing range. Before the
    /// starting point is set no range can be missing yet.
    pub fn has_gap(&self) -> bool {
        self.started() && (!self.pending.is_empty() || self.heard_through > self.delivered_through)
    }

    /// Whether the first joiner has set the starting point.
    pub fn started(&self) -> bool {
        self.delivered_through >= 0
    }

    /// Sets the starting point at `head`, the head the first joiner's
    /// access check read, and delivers what arrived meanwhile and follows
    /// it (to nobody yet: the joiner is admitted at the room's position
    /// after this). Returns whether anything may be missing: a gap among
    /// the events that came, or messages lost before the start.
    pub fn start(&mut self, head: i64) -> bool {
        self.delivered_through = head;
        self.complete_through = head;
        self.heard_through = self.heard_through.max(head);
        self.advance();
        std::mem::take(&mut self.lost_before_start) || self.has_gap()
    }

    /// Counts a held slot of `user` under hold `id`.
    pub fn hold(&mut self, user: &Arc<str>, id: u64) {
        self.held.entry(user.clone()).or_default().push_back(id);
    }

    /// Takes over the oldest held slot of `user`, if there is one.
    pub fn take_hold(&mut self, user: &str) -> bool {
        let Some(ids) = self.held.get_mut(user) else {
            return false;
        };
        ids.pop_front();
        if ids.is_empty() {
            self.held.remove(user);
        }
        true
    }

    /// Ends every hold of `user` (their membership was revoked): how many
    /// there were, each a slot to release.
    pub fn drop_holds(&mut self, user: &str) -> usize {
        self.held.remove(user).map_or(0, |ids| ids.len())
    }

    /// Ends hold `id` of `user`: true if it was still held (not taken over).
    pub fn end_hold(&mut self, user: &str, id: u64) -> bool {
        let Some(ids) = self.held.get_mut(user) else {
            return false;
        };
        let Some(at) = ids.iter().position(|&i| i == id) else {
            return false;
        };
        ids.remove(at);
        if ids.is_empty() {
            self.held.remove(user);
        }
        true
    }

    /// Whether `user`'s typing state `is_typing` should be broadcast now,
    /// noting it if so.
    pub fn typing_due(&mut self, user: &Arc<str>, is_typing: bool) -> bool {
        let now = tokio::time::Instant::now();
        if let Some(&(state, at)) = self.typing.get(user)
            && state == is_typing
            && now < at + TYPING_INTERVAL
        {
            return false;
        }
        self.typing.insert(user.clone(), (is_typing, now));
        true
    }

    /// Makes `conn` a live member unless its membership was revoked while
    /// it was joining. Its replay covered everything through
    /// `skip_through`.
    pub fn admit(&mut self, conn: &Arc<ConnHandle>, skip_through: i64) -> Result<(), GatewayError> {
        if self.revoked.remove(&conn.id) {
            // Still `joining`: the join's error path releases it.
            return Err(GatewayError::Forbidden("membership revoked"));
        }
        self.joining.remove(&conn.id);
        self.members.insert(
            conn.id,
            Member {
                conn: conn.clone(),
                skip_through,
            },
        );
        Ok(())
    }

    /// Queues one sequenced frame to every live member that needs it.
    fn deliver(&mut self, seq: i64, frame: &Frame) {
        let mut n = 0u64;
        let claim = self.members.len() <= claims::MAX_CLAIMING_ROOM;
        let claimed = claims::room_for(&mut self.claimed, claim, self.members.len());
        for m in self.members.values() {
            if seq > m.skip_through && claims::offer(&m.conn, frame, claim, claimed) {
                n += 1;
            }
        }
        count_out(frame, n);
    }

    /// Queues an unsequenced frame to members, skipping `exclude_user`'s
    /// own connections.
    pub fn broadcast(&mut self, frame: &Frame, exclude_user: Option<&str>) {
        let mut n = 0u64;
        let claim = self.members.len() <= claims::MAX_CLAIMING_ROOM;
        let claimed = claims::room_for(&mut self.claimed, claim, self.members.len());
        for m in self.members.values() {
            if exclude_user.is_some_and(|u| *m.conn.user_id == *u) {
                continue;
            }
            if claims::offer(&m.conn, frame, claim, claimed) {
                n += 1;
            }
        }
        count_out(frame, n);
    }
}

impl Room {
    pub fn new(id: Uuid) -> Self {
        Room {
            id,
            channel: community_channel(&id),
            subscribed: OnceCell::new(),
            subscribe_sent: AtomicBool::new(false),
            ready: OnceCell::new(),
            state: Mutex::new(RoomState::new(-1)),
        }
    }

    /// Locks the state; deliveries made under the lock write to the
    /// connections they claimed once it goes (`claims`).
    pub fn state(&self) -> StateGuard<'_> {
        StateGuard::new(lock(&self.state))
    }

    /// The seq delivered through, live.
    pub fn delivered_through(&self) -> i64 {
        self.state().delivered_through
    }
}

/// Counts `n` deliveries of `frame`.
fn count_out(frame: &Frame, n: u64) {
    let hot = crate::series::hot();
    hot.deliveries.increment(n);
    if let Some(e) = frame.event() {
        match hot.frames_out(e.kind()) {
            Some(c) => c.increment(n),
            // A kind `KINDS` does not list yet still counts.
            None => metrics::counter!("chorus_gateway_frames_out_total", "type" => e.kind())
                .increment(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close;
    use crate::codec::{Encoding, SharedFrame};
    use crate::handle::OutboundRx;
    use chorus_shared::protocol::{MembershipRevoked, ServerEvent};
    use std::time::Duration;

    fn frame() -> Frame {
        Arc::new(SharedFrame::new(ServerEvent::MembershipRevoked(
            MembershipRevoked {
                community_id: Uuid::nil(),
            },
        )))
    }

    fn conn(id: u64, queue: usize) -> (Arc<ConnHandle>, OutboundRx) {
        let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
        ConnHandle::new(id, &format!("u{id}"), "U", Encoding::Json, queue, expiry)
    }

    fn count(rx: &mut OutboundRx) -> usize {
        std::iter::from_fn(|| rx.try_recv().ok()).count()
    }

    #[test]
    fn in_order_events_advance_and_gaps_wait() {
        let mut st = RoomState::new(3);
        assert!(st.offer(4, frame()));
        assert_eq!(st.delivered_through, 4);
        st.offer(6, frame());
        st.offer(7, frame());
        assert_eq!(st.delivered_through, 4, "5 is missing: 6 and 7 wait");
        assert!(st.has_gap());
        st.offer(5, frame());
        assert_eq!(st.delivered_through, 7);
        assert!(!st.has_gap());
        assert!(!st.offer(6, frame()), "a repeat is refused");
    }

    #[test]
    fn events_before_the_starting_point_wait_for_it() {
        let mut st = RoomState::new(-1);
        assert!(st.offer(3, frame()));
        assert!(st.offer(2, frame()));
        assert!(!st.has_gap(), "no gap before a starting point");
        assert_eq!(st.delivered_through, -1, "nothing delivered yet");
        assert!(!st.start(2), "3 follows the head: nothing missing");
        assert_eq!(st.delivered_through, 3);
        assert!(st.pending.is_empty(), "2 was before the head");

        let mut st = RoomState::new(-1);
        st.offer(5, frame());
        assert!(st.start(3), "4 is missing");
        assert_eq!(st.delivered_through, 3);

        let mut st = RoomState::new(-1);
        st.lost_before_start = true;
        assert!(st.start(0), "a loss before the start is fetched");
        assert!(!st.lost_before_start);
    }

    #[test]
    fn a_known_complete_range_skips_deleted_creations_and_repeats() {
        let mut st = RoomState::new(10);
        st.pending.insert(9, frame()); // a repeat
        st.pending.insert(13, frame());
        st.pending.insert(15, frame());
        // A backfill said the sequence is complete through 14: 11, 12 and
        // 14 were creations of since-deleted messages.
        st.complete_through = 14;
        st.advance();
        assert_eq!(
            st.delivered_through, 15,
            "13 delivered, 14 skipped, then 15"
        );
        assert!(st.pending.is_empty());
    }

    #[test]
    fn members_get_each_event_once_after_their_replay_and_revoked_joiners_are_refused() {
        let mut st = RoomState::new(0);
        let (a, mut rx_a) = conn(1, 16);
        let (b, mut rx_b) = conn(2, 16);
        st.admit(&a, i64::MIN).expect("admitted");
        st.admit(&b, 2).expect("admitted after replaying through 2");
        for seq in 1..=3 {
            st.offer(seq, frame());
        }
        assert_eq!(count(&mut rx_a), 3);
        assert_eq!(count(&mut rx_b), 1, "b already had 1 and 2 from its replay");

        let (c, _rx_c) = conn(3, 16);
        st.revoked.insert(3);
        assert!(st.admit(&c, 0).is_err());
        assert!(!st.members.contains_key(&3));
        assert!(st.revoked.is_empty(), "the refusal consumes the note");
    }

    #[test]
    fn a_full_queue_closes_the_slow_member_only() {
        let mut st = RoomState::new(0);
        let (slow, _rx_slow) = conn(1, 2);
        // Its writer waits on a socket the client does not read.
        slow.socket_full(true);
        let (fast, mut rx_fast) = conn(2, 64);
        st.admit(&slow, i64::MIN).expect("admitted");
        st.admit(&fast, i64::MIN).expect("admitted");
        for seq in 1..=5 {
            st.offer(seq, frame());
        }
        assert_eq!(count(&mut rx_fast), 5);
        assert_eq!(slow.close_code(), Some(close::SLOW_CONSUMER));
        assert_eq!(fast.close_code(), None);
    }

    #[test]
    fn the_room_remembers_recent_deletions_with_or_without_a_tail() {
        use chorus_shared::protocol::{Message, MessageData, MessageDeleted, Sender};
        let creation = |id: Uuid, seq: i64| -> Frame {
            Arc::new(SharedFrame::new(ServerEvent::NewMessage(MessageData {
                message: Message {
                    id,
                    community_id: Uuid::nil(),
                    seq,
                    sender: Sender {
                        id: "u".into(),
                        name: "U".into(),
                        avatar: None,
                    },
                    content: "hello".into(),
                    mentions: Vec::new(),
                    created_at: chrono::Utc::now(),
                },
            })))
        };
        let deletion = |id: Uuid, seq: i64| -> Frame {
            Arc::new(SharedFrame::new(ServerEvent::MessageDeleted(
                MessageDeleted {
                    community_id: Uuid::nil(),
                    message_id: id,
                    seq,
                },
            )))
        };
        let mut st = RoomState::new(0);
        assert!(st.tail.is_none());
        let first = Uuid::now_v7();
        st.offer(1, creation(first, 1));
        assert!(!st.deleted_since(&creation(first, 1)));
        st.offer(2, deletion(first, 2));
        assert!(st.deleted_since(&creation(first, 1)), "seen deleted");
        assert!(!st.deleted_since(&deletion(first, 2)), "only creations");
        // Bounded: past RECENT_DELETIONS the oldest is forgotten.
        for seq in 3..(3 + RECENT_DELETIONS as i64) {
            st.offer(seq, deletion(Uuid::now_v7(), seq));
        }
        assert!(!st.deleted_since(&creation(first, 1)));
        assert_eq!(st.deleted.len(), RECENT_DELETIONS);
        assert_eq!(st.deleted_set.len(), RECENT_DELETIONS);
    }

    #[test]
    fn broadcasts_skip_the_excluded_users_connections() {
        let mut st = RoomState::new(0);
        let (a, mut rx_a) = conn(1, 4);
        let (b, mut rx_b) = conn(2, 4);
        st.admit(&a, i64::MIN).expect("admitted");
        st.admit(&b, i64::MIN).expect("admitted");
        st.broadcast(&frame(), Some("u1"));
        assert_eq!((count(&mut rx_a), count(&mut rx_b)), (0, 1));
    }
}
