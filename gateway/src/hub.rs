//! Local routing: which of this gateway's connections receive which events,
//! and in what order.
//!
//! A [`Room`] exists per community with at least one local connection. It
//! subscribes to the community's channel once, however many local members
//! it has, and owns the community's delivery order: `last` is the seq most
//! recently delivered to its live members. Sequenced events are delivered
//! strictly in order, duplicates dropped; an event that skips ahead waits in
//! `pending` while one task fetches the missing range from the API, so a
//! dropped or reordered publication delays delivery instead of losing it.
//! `complete_through` marks how far the sequence is known to be complete: a
//! seq at or below it that was never seen is the creation of a message
//! deleted since, which the contract allows to skip.
//!
//! Fan-out holds the room's lock (a plain mutex, never across `.await`)
//! while it queues a pointer to the shared event to each member: N members
//! cost N non-blocking queue pushes and no allocation per member. Each
//! member's writer takes the event's bytes for its encoding, encoded at
//! most once per encoding and then shared.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_shared::envelope::{Envelope, community_channel, user_channel};
use chorus_shared::protocol::{EventsPage, ServerEvent, UserJoined, UserLeft};
use tokio::sync::{Notify, OnceCell, mpsc, oneshot};
use uuid::Uuid;

use crate::api::ApiClient;
use crate::backplane::{Backplane, BackplaneSink};
use crate::codec::SharedFrame;
use crate::conn::ConnHandle;
use crate::error::GatewayError;

/// A server event encoded at most once per wire encoding.
pub type Frame = Arc<SharedFrame<ServerEvent>>;

/// A shared, in-flight window fetch.
type WindowFetch = Arc<OnceCell<Result<Arc<Window>, GatewayError>>>;

/// Most events one gap-filling request asks for.
const GAP_FETCH_LIMIT: i64 = 1000;
/// Most events one request may ask the API for (its own cap).
const MAX_FETCH_LIMIT: i64 = 10_000;
/// How long a fetched recovery window is reused for other joiners: long
/// enough to absorb a reconnect storm's arrivals, short enough that memory
/// is returned quickly.
const WINDOW_CACHE_TTL: Duration = Duration::from_secs(5);
/// Retry delays when the API cannot serve a backfill.
const FETCH_RETRY_MIN: Duration = Duration::from_millis(100);
const FETCH_RETRY_MAX: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A live member of a room.
struct Member {
    conn: Arc<ConnHandle>,
    /// Sequenced events at or below this were already delivered by the
    /// member's replay.
    skip_through: i64,
}

struct RoomState {
    last: i64,
    complete_through: i64,
    pending: BTreeMap<i64, Frame>,
    fetching: bool,
    members: HashMap<u64, Member>,
    /// Local connections per user (joined members and replaying joiners),
    /// for presence: one entry per user however many tabs.
    users: HashMap<Arc<str>, u32>,
    window: Option<(Instant, Arc<Window>)>,
    window_inflight: Option<WindowFetch>,
    retired: bool,
    /// Connections whose user was removed from the community while they
    /// were still joining; they are refused instead of admitted.
    revoked: HashSet<u64>,
}

/// A fetched stretch of a community's sequence.
#[derive(Debug)]
pub struct Window {
    /// Events after this seq are included.
    pub from: i64,
    pub events: Vec<(i64, Frame)>,
    /// The sequence is complete up to here (absent seqs were deleted).
    pub complete_through: i64,
    /// The fetch hit its limit: more events exist beyond `complete_through`.
    pub truncated: bool,
}

impl Window {
    /// Whether a replay standing at `after` and aiming for `target` can use
    /// this window: it starts early enough and either reaches the target or
    /// at least moves the replay forward (a truncated page in a very busy
    /// room; the replay then fetches the rest).
    fn serves(&self, after: i64, target: i64) -> bool {
        self.from <= after
            && (self.complete_through >= target
                || (self.truncated && self.complete_through > after))
    }
}

/// One community's local state.
pub struct Room {
    pub id: Uuid,
    channel: String,
    ready: OnceCell<()>,
    state: Mutex<RoomState>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RoomState {
    fn new(last: i64) -> Self {
        RoomState {
            last,
            complete_through: last,
            pending: BTreeMap::new(),
            fetching: false,
            members: HashMap::new(),
            users: HashMap::new(),
            window: None,
            window_inflight: None,
            retired: false,
            revoked: HashSet::new(),
        }
    }
}

impl Room {
    fn new(id: Uuid) -> Self {
        Room {
            id,
            channel: community_channel(&id),
            ready: OnceCell::new(),
            // -1: not initialized until the first joiner sets the head.
            state: Mutex::new(RoomState::new(-1)),
        }
    }

    /// The seq last delivered live.
    pub fn last(&self) -> i64 {
        lock(&self.state).last
    }

    pub fn is_member(&self, conn: u64) -> bool {
        lock(&self.state).members.contains_key(&conn)
    }

    /// Delivers what `pending` allows, in order. Called with the lock held.
    fn advance(st: &mut RoomState) {
        while let Some((&seq, _)) = st.pending.first_key_value() {
            if seq <= st.last {
                st.pending.pop_first();
            } else if seq == st.last + 1 || seq <= st.complete_through {
                if let Some((seq, frame)) = st.pending.pop_first() {
                    deliver(st, seq, &frame);
                    st.last = seq;
                }
            } else if st.complete_through > st.last {
                // Everything up to complete_through that is not pending
                // does not exist (deleted creations): skip to it.
                st.last = st.complete_through;
            } else {
                break;
            }
        }
        if st.complete_through > st.last {
            st.last = st.complete_through;
        }
    }

    /// True when something is waiting for a missing range.
    fn has_gap(st: &RoomState) -> bool {
        !st.pending.is_empty()
    }
}

/// Makes `conn` a live member unless its membership was revoked while it
/// was joining.
fn admit(
    st: &mut RoomState,
    conn: &Arc<ConnHandle>,
    skip_through: i64,
) -> Result<(), GatewayError> {
    if st.revoked.remove(&conn.id) {
        return Err(GatewayError::Forbidden("membership revoked"));
    }
    st.members.insert(
        conn.id,
        Member {
            conn: conn.clone(),
            skip_through,
        },
    );
    Ok(())
}

/// Queues one sequenced frame to every live member that needs it.
fn deliver(st: &RoomState, seq: i64, frame: &Frame) {
    let mut n = 0u64;
    for m in st.members.values() {
        if seq > m.skip_through && m.conn.push_event(frame) {
            n += 1;
        }
    }
    metrics::counter!("chorus_gateway_deliveries_total").increment(n);
}

/// Queues an unsequenced frame to members, skipping `exclude_user`'s own
/// connections.
fn broadcast(st: &RoomState, frame: &Frame, exclude_user: Option<&str>) {
    let mut n = 0u64;
    for m in st.members.values() {
        if exclude_user.is_some_and(|u| *m.conn.user_id == *u) {
            continue;
        }
        if m.conn.push_event(frame) {
            n += 1;
        }
    }
    metrics::counter!("chorus_gateway_deliveries_total").increment(n);
}

enum SubOp {
    Subscribe(String, oneshot::Sender<Result<(), GatewayError>>),
    Unsubscribe(String),
}

/// Outcome of a join, for the ack.
#[derive(Debug)]
pub struct Joined {
    pub head_seq: i64,
    pub recovered: bool,
    pub missed: i64,
}

struct UserEntry {
    conns: HashMap<u64, Arc<ConnHandle>>,
    notify: HashSet<u64>,
    /// Ids of the latest notifications delivered, to drop the repeats an
    /// at-least-once outbox may publish.
    recent: std::collections::VecDeque<Uuid>,
}

/// Notification ids remembered per user for de-duplication: repeats come
/// right behind the original, so a short memory suffices.
const RECENT_NOTIFICATIONS: usize = 32;

struct HubInner {
    gateway_id: String,
    backplane: Arc<dyn Backplane>,
    api: ApiClient,
    rooms: Mutex<HashMap<Uuid, Arc<Room>>>,
    users: Mutex<HashMap<Arc<str>, UserEntry>>,
    conns: Mutex<HashMap<u64, Arc<ConnHandle>>>,
    conn_count: AtomicUsize,
    all_closed: Notify,
    next_conn: AtomicU64,
    subs: mpsc::UnboundedSender<SubOp>,
    recovery_window: i64,
    presence_limit: u64,
}

/// Handle to the gateway's routing state; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("gateway_id", &self.inner.gateway_id)
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub fn new(
        gateway_id: String,
        backplane: Arc<dyn Backplane>,
        api: ApiClient,
        recovery_window: i64,
        presence_limit: u64,
    ) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Hub {
            inner: Arc::new(HubInner {
                gateway_id,
                backplane: backplane.clone(),
                api,
                rooms: Mutex::new(HashMap::new()),
                users: Mutex::new(HashMap::new()),
                conns: Mutex::new(HashMap::new()),
                conn_count: AtomicUsize::new(0),
                all_closed: Notify::new(),
                next_conn: AtomicU64::new(1),
                subs: tx,
                recovery_window,
                presence_limit,
            }),
        };
        tokio::spawn(run_subscriptions(backplane, rx));
        hub
    }

    pub fn gateway_id(&self) -> &str {
        &self.inner.gateway_id
    }

    pub fn api(&self) -> &ApiClient {
        &self.inner.api
    }

    pub fn backplane(&self) -> &dyn Backplane {
        self.inner.backplane.as_ref()
    }

    pub fn recovery_window(&self) -> i64 {
        self.inner.recovery_window
    }

    pub fn next_conn_id(&self) -> u64 {
        self.inner.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn connections(&self) -> usize {
        self.inner.conn_count.load(Ordering::SeqCst)
    }

    /// All current connections (for draining).
    pub fn all_connections(&self) -> Vec<Arc<ConnHandle>> {
        lock(&self.inner.conns).values().cloned().collect()
    }

    /// Resolves when no connection is left.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.inner.all_closed.notified();
            if self.connections() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Queues a subscribe (callers that race with an unsubscribe of the
    /// same channel call this under the lock that decided it); await the
    /// returned receiver for the outcome.
    fn request_subscribe(&self, channel: String) -> oneshot::Receiver<Result<(), GatewayError>> {
        let (tx, rx) = oneshot::channel();
        // If the task is gone, the dropped sender reports it below.
        let _ = self.inner.subs.send(SubOp::Subscribe(channel, tx));
        rx
    }

    async fn subscribed(
        rx: oneshot::Receiver<Result<(), GatewayError>>,
    ) -> Result<(), GatewayError> {
        rx.await
            .map_err(|_| GatewayError::Backplane("subscription task stopped".into()))?
    }

    async fn subscribe(&self, channel: String) -> Result<(), GatewayError> {
        Self::subscribed(self.request_subscribe(channel)).await
    }

    fn unsubscribe(&self, channel: String) {
        let _ = self.inner.subs.send(SubOp::Unsubscribe(channel));
    }

    // ---- connections and user channels ---------------------------------------

    /// Registers a new connection; subscribes its user's channel (for
    /// notifications and membership revocations) on the user's first local
    /// connection.
    pub async fn connect(&self, conn: &Arc<ConnHandle>) -> Result<(), GatewayError> {
        lock(&self.inner.conns).insert(conn.id, conn.clone());
        let n = self.inner.conn_count.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::gauge!("chorus_gateway_connections").set(n as f64);
        let subscribed = {
            let mut users = lock(&self.inner.users);
            let e = users
                .entry(conn.user_id.clone())
                .or_insert_with(|| UserEntry {
                    conns: HashMap::new(),
                    notify: HashSet::new(),
                    recent: std::collections::VecDeque::new(),
                });
            e.conns.insert(conn.id, conn.clone());
            (e.conns.len() == 1).then(|| self.request_subscribe(user_channel(&conn.user_id)))
        };
        match subscribed {
            Some(rx) => Self::subscribed(rx).await,
            None => Ok(()),
        }
    }

    /// Forgets a closed connection: leaves its rooms, then its user channel.
    pub async fn disconnect(&self, conn: &Arc<ConnHandle>, communities: &[Uuid]) {
        for c in communities {
            self.leave(*c, conn).await;
        }
        {
            let mut users = lock(&self.inner.users);
            if let Some(e) = users.get_mut(&conn.user_id) {
                e.conns.remove(&conn.id);
                e.notify.remove(&conn.id);
                if e.conns.is_empty() {
                    users.remove(&conn.user_id);
                    // Queued under the lock: a later first connection's
                    // subscribe is ordered after it.
                    self.unsubscribe(user_channel(&conn.user_id));
                }
            }
        }
        lock(&self.inner.conns).remove(&conn.id);
        let n = self.inner.conn_count.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!("chorus_gateway_connections").set(n as f64);
        if n == 0 {
            self.inner.all_closed.notify_waiters();
        }
    }

    /// Marks a connection as wanting `notification` events.
    pub fn subscribe_notifications(&self, conn: &ConnHandle) {
        if let Some(e) = lock(&self.inner.users).get_mut(&conn.user_id) {
            e.notify.insert(conn.id);
        }
    }

    // ---- rooms -----------------------------------------------------------------

    fn room(&self, id: Uuid) -> Option<Arc<Room>> {
        lock(&self.inner.rooms).get(&id).cloned()
    }

    /// True when `conn` is a live member of the community here.
    pub fn is_member(&self, community: Uuid, conn: u64) -> bool {
        self.room(community).is_some_and(|r| r.is_member(conn))
    }

    /// Joins `conn` to a community whose access was already checked (head
    /// `head_seq` at that time), replaying from `last_seq` when given.
    pub async fn join(
        &self,
        community: Uuid,
        head_seq: i64,
        conn: &Arc<ConnHandle>,
        last_seq: Option<i64>,
    ) -> Result<Joined, GatewayError> {
        loop {
            let room = {
                let mut rooms = lock(&self.inner.rooms);
                rooms
                    .entry(community)
                    .or_insert_with(|| Arc::new(Room::new(community)))
                    .clone()
            };
            if let Some(joined) = self.join_room(&room, head_seq, conn, last_seq).await? {
                return Ok(joined);
            }
            // The room was retired under us: take its successor.
        }
    }

    async fn join_room(
        &self,
        room: &Arc<Room>,
        head_seq: i64,
        conn: &Arc<ConnHandle>,
        last_seq: Option<i64>,
    ) -> Result<Option<Joined>, GatewayError> {
        let community = room.id;
        // First joiner subscribes and sets the starting point; concurrent
        // joiners wait for the same initialization.
        room.ready
            .get_or_try_init(|| async {
                self.subscribe(room.channel.clone()).await?;
                {
                    let mut st = lock(&room.state);
                    st.last = head_seq;
                    st.complete_through = head_seq;
                }
                // Anything committed between the access check and the
                // subscription is fetched now.
                self.reconcile(room);
                Ok::<(), GatewayError>(())
            })
            .await?;

        let first_local = {
            let mut st = lock(&room.state);
            if st.retired {
                return Ok(None);
            }
            if st.members.contains_key(&conn.id) {
                let head = st.last.max(head_seq);
                return Ok(Some(Joined {
                    head_seq: head,
                    recovered: true,
                    missed: 0,
                }));
            }
            let n = st.users.entry(conn.user_id.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };

        let result = self.attach(room, head_seq, conn, last_seq).await;
        if result.is_err() {
            self.release_user(room, conn).await;
            return result.map(Some);
        }
        if first_local {
            self.presence_joined(community, conn).await;
        }
        result.map(Some)
    }

    /// Makes `conn` a live member, after replaying what it missed.
    async fn attach(
        &self,
        room: &Arc<Room>,
        head_seq: i64,
        conn: &Arc<ConnHandle>,
        last_seq: Option<i64>,
    ) -> Result<Joined, GatewayError> {
        let live_head = room.last().max(head_seq);
        let Some(last_seq) = last_seq else {
            admit(&mut lock(&room.state), conn, i64::MIN)?;
            return Ok(Joined {
                head_seq: live_head,
                recovered: true,
                missed: 0,
            });
        };
        let from = last_seq.min(live_head);
        if live_head - from > self.inner.recovery_window {
            admit(&mut lock(&room.state), conn, i64::MIN)?;
            return Ok(Joined {
                head_seq: live_head,
                recovered: false,
                missed: live_head - from,
            });
        }
        let mut through = from;
        let mut missed = 0i64;
        loop {
            {
                let mut st = lock(&room.state);
                if st.last <= through {
                    admit(&mut st, conn, through)?;
                    break;
                }
            }
            let target = room.last();
            let window = self.window(room, through, target).await?;
            for (seq, frame) in &window.events {
                if *seq <= through {
                    continue;
                }
                // Paced by the client's reading: waits for queue space.
                if !conn.push_event_wait(frame).await {
                    return Err(GatewayError::Unavailable("connection closed".into()));
                }
                through = *seq;
                missed += 1;
            }
            through = through.max(window.complete_through);
        }
        metrics::counter!("chorus_gateway_replayed_events_total").increment(missed.unsigned_abs());
        Ok(Joined {
            head_seq: room.last().max(through),
            recovered: true,
            missed,
        })
    }

    /// Notes that `conn`'s user lost membership while `conn` may still be
    /// joining the community, so the join is refused at admission.
    fn revoke_joining(&self, community: Uuid, conn: &ConnHandle) {
        if let Some(room) = self.room(community) {
            let mut st = lock(&room.state);
            if st.users.contains_key(&conn.user_id) && !st.members.contains_key(&conn.id) {
                st.revoked.insert(conn.id);
            }
        }
    }

    /// A fetched window covering `(after, target]`, shared between joiners:
    /// the whole recovery window below the room's head is fetched once and
    /// reused, so a reconnect storm costs one API request per community.
    async fn window(
        &self,
        room: &Arc<Room>,
        after: i64,
        target: i64,
    ) -> Result<Arc<Window>, GatewayError> {
        let limit = (self.inner.recovery_window * 2).clamp(GAP_FETCH_LIMIT, MAX_FETCH_LIMIT);
        let cell = {
            let mut st = lock(&room.state);
            if let Some((at, w)) = &st.window
                && at.elapsed() < WINDOW_CACHE_TTL
                && w.serves(after, target)
            {
                return Ok(w.clone());
            }
            match &st.window_inflight {
                Some(cell) => cell.clone(),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    st.window_inflight = Some(cell.clone());
                    cell
                }
            }
        };
        let from = (target - self.inner.recovery_window).max(0).min(after);
        let shared = cell
            .get_or_init(|| async {
                let r = self.fetch(room.id, from, limit).await.map(Arc::new);
                let mut st = lock(&room.state);
                st.window_inflight = None;
                if let Ok(w) = &r {
                    st.window = Some((Instant::now(), w.clone()));
                }
                r
            })
            .await
            .clone()?;
        if shared.serves(after, target) {
            return Ok(shared);
        }
        // Someone else's fetch that starts too late for us, or a window too
        // large for one page: fetch exactly what this replay needs, which
        // always moves it forward.
        self.fetch(room.id, after, limit).await.map(Arc::new)
    }

    /// Fetches `(after, …]` from the API as shared frames.
    async fn fetch(&self, community: Uuid, after: i64, limit: i64) -> Result<Window, GatewayError> {
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

    /// Ensures one task is fetching whatever the room is missing.
    fn reconcile(&self, room: &Arc<Room>) {
        {
            let mut st = lock(&room.state);
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
            let after = room.last();
            match self.fetch(room.id, after, GAP_FETCH_LIMIT).await {
                Ok(w) => {
                    retry = FETCH_RETRY_MIN;
                    let mut st = lock(&room.state);
                    for (seq, frame) in w.events {
                        if seq > st.last {
                            st.pending.entry(seq).or_insert(frame);
                        }
                    }
                    st.complete_through = st.complete_through.max(w.complete_through);
                    Room::advance(&mut st);
                    if !Room::has_gap(&st) || st.retired {
                        st.fetching = false;
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(community = %room.id, error = %e, "backfill failed, retrying");
                    if lock(&room.state).retired {
                        lock(&room.state).fetching = false;
                        return;
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(FETCH_RETRY_MAX);
                }
            }
        }
    }

    /// Removes `conn` from a community (leave, disconnect, revocation).
    /// Returns whether it was a member.
    pub async fn leave(&self, community: Uuid, conn: &Arc<ConnHandle>) -> bool {
        let Some(room) = self.room(community) else {
            return false;
        };
        let was = lock(&room.state).members.remove(&conn.id).is_some();
        if was {
            self.release_user(&room, conn).await;
        }
        was
    }

    /// Drops one local connection of the user from the room's presence
    /// count; the last one leaves presence; an empty room is retired.
    async fn release_user(&self, room: &Arc<Room>, conn: &Arc<ConnHandle>) {
        let (last_local, empty) = {
            let mut st = lock(&room.state);
            let last_local = match st.users.get_mut(&conn.user_id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    st.users.remove(&conn.user_id);
                    true
                }
                None => false,
            };
            (last_local, st.users.is_empty() && st.members.is_empty())
        };
        if last_local {
            match self
                .inner
                .backplane
                .presence_leave(room.id, &conn.user_id)
                .await
            {
                Ok(l) if l.gone && l.online < self.inner.presence_limit => {
                    self.publish_ephemeral(
                        room.id,
                        ServerEvent::UserLeft(UserLeft {
                            community_id: room.id,
                            user_id: conn.user_id.to_string(),
                        }),
                    )
                    .await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "presence leave failed; the entry will expire")
                }
            }
        }
        if empty {
            self.retire(room);
        }
    }

    /// Unsubscribes an empty room. The unsubscribe is queued under the rooms
    /// lock, so a later re-creation's subscribe is ordered after it.
    fn retire(&self, room: &Arc<Room>) {
        let mut rooms = lock(&self.inner.rooms);
        let mut st = lock(&room.state);
        if !st.members.is_empty() || !st.users.is_empty() || st.retired {
            return;
        }
        st.retired = true;
        if rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.id);
        }
        if room.ready.initialized() {
            self.unsubscribe(room.channel.clone());
        }
    }

    async fn presence_joined(&self, community: Uuid, conn: &ConnHandle) {
        match self
            .inner
            .backplane
            .presence_join(community, &conn.user_id)
            .await
        {
            Ok(j) if j.first && j.online <= self.inner.presence_limit => {
                self.publish_ephemeral(
                    community,
                    ServerEvent::UserJoined(UserJoined {
                        community_id: community,
                        user_id: conn.user_id.to_string(),
                        name: conn.name.to_string(),
                    }),
                )
                .await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "presence join failed"),
        }
    }

    /// Publishes an unsequenced event on a community's channel; every
    /// gateway (this one included) delivers it from its subscription.
    pub async fn publish_ephemeral(&self, community: Uuid, event: ServerEvent) {
        let env = Envelope::new(
            Some(community),
            None,
            chrono::Utc::now().timestamp_millis(),
            event,
        );
        if let Err(e) = self
            .inner
            .backplane
            .publish(&community_channel(&community), Bytes::from(env.encode()))
            .await
        {
            tracing::warn!(error = %e, "publishing an ephemeral event failed");
        }
    }

    /// Refreshes this gateway's presence entries and sweeps those of dead
    /// gateways, announcing users who appeared or vanished.
    pub async fn refresh_presence(&self) {
        let rooms: Vec<Arc<Room>> = lock(&self.inner.rooms).values().cloned().collect();
        for room in rooms {
            let users: Vec<Arc<str>> = lock(&room.state).users.keys().cloned().collect();
            for user in users {
                match self.inner.backplane.presence_join(room.id, &user).await {
                    Ok(j) if j.first && j.online <= self.inner.presence_limit => {
                        // Our entry had expired (e.g. a long Redis outage).
                        let name = lock(&room.state)
                            .members
                            .values()
                            .find(|m| m.conn.user_id == user)
                            .map(|m| m.conn.name.to_string())
                            .unwrap_or_else(|| user.to_string());
                        self.publish_ephemeral(
                            room.id,
                            ServerEvent::UserJoined(UserJoined {
                                community_id: room.id,
                                user_id: user.to_string(),
                                name,
                            }),
                        )
                        .await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "presence refresh failed");
                        break;
                    }
                }
            }
            match self.inner.backplane.presence_sweep(room.id).await {
                Ok((gone, online)) if online < self.inner.presence_limit => {
                    for user in gone {
                        self.publish_ephemeral(
                            room.id,
                            ServerEvent::UserLeft(UserLeft {
                                community_id: room.id,
                                user_id: user,
                            }),
                        )
                        .await;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "presence sweep failed"),
            }
        }
    }
}

impl BackplaneSink for Hub {
    fn on_message(&self, channel: &str, payload: Bytes) {
        let env = match Envelope::decode(&payload) {
            Ok(e) => e,
            Err(e) => {
                metrics::counter!("chorus_gateway_undecodable_events_total").increment(1);
                tracing::warn!(channel, error = %e, "skipping an undecodable event");
                return;
            }
        };
        if env.ts_ms > 0 {
            let lag_ms = chrono::Utc::now().timestamp_millis() - env.ts_ms;
            metrics::histogram!("chorus_gateway_event_lag_seconds")
                .record(lag_ms.max(0) as f64 / 1000.0);
        }
        if let Some(user) = channel.strip_prefix("chorus:user:") {
            self.on_user_event(user, env.event);
            return;
        }
        let Some(community) = env.community_id else {
            return;
        };
        let Some(room) = self.room(community) else {
            return;
        };
        let frame: Frame = Arc::new(SharedFrame::new(env.event));
        match env.seq {
            Some(seq) => {
                let mut st = lock(&room.state);
                if st.last < 0 || seq <= st.last {
                    // Not initialized yet (the initial reconcile covers it)
                    // or a duplicate.
                    metrics::counter!("chorus_gateway_duplicate_events_total").increment(1);
                    return;
                }
                st.pending.insert(seq, frame);
                Room::advance(&mut st);
                let gap = Room::has_gap(&st);
                drop(st);
                if gap {
                    metrics::counter!("chorus_gateway_gaps_total").increment(1);
                    self.reconcile(&room);
                }
            }
            None => {
                let exclude = match frame.event() {
                    Some(ServerEvent::UserTyping(t)) => Some(t.user_id.clone()),
                    Some(ServerEvent::UserJoined(j)) => Some(j.user_id.clone()),
                    Some(ServerEvent::UserLeft(l)) => Some(l.user_id.clone()),
                    _ => None,
                };
                broadcast(&lock(&room.state), &frame, exclude.as_deref());
            }
        }
    }

    fn on_resync(&self) {
        let rooms: Vec<Arc<Room>> = lock(&self.inner.rooms).values().cloned().collect();
        for room in rooms {
            if room.ready.initialized() {
                self.reconcile(&room);
            }
        }
    }
}

impl Hub {
    fn on_user_event(&self, user: &str, event: ServerEvent) {
        let conns: Vec<(Arc<ConnHandle>, bool)> = {
            let mut users = lock(&self.inner.users);
            let Some(e) = users.get_mut(user) else {
                return;
            };
            if let ServerEvent::Notification(n) = &event {
                let id = n.notification.id;
                if e.recent.contains(&id) {
                    metrics::counter!("chorus_gateway_duplicate_events_total").increment(1);
                    return;
                }
                if e.recent.len() >= RECENT_NOTIFICATIONS {
                    e.recent.pop_front();
                }
                e.recent.push_back(id);
            }
            e.conns
                .values()
                .map(|c| (c.clone(), e.notify.contains(&c.id)))
                .collect()
        };
        match event {
            ServerEvent::Notification(_) => {
                let frame: Frame = Arc::new(SharedFrame::new(event));
                for (c, wants) in conns {
                    if wants {
                        c.push_event(&frame);
                    }
                }
            }
            ServerEvent::MembershipRevoked(r) => {
                let hub = self.clone();
                tokio::spawn(async move {
                    let frame: Frame =
                        Arc::new(SharedFrame::new(ServerEvent::MembershipRevoked(r.clone())));
                    for (c, _) in conns {
                        if hub.leave(r.community_id, &c).await {
                            c.push_event(&frame);
                        } else {
                            hub.revoke_joining(r.community_id, &c);
                        }
                    }
                });
            }
            _ => {}
        }
    }
}

/// Applies subscribe/unsubscribe operations one at a time, in the order
/// they were requested, so an unsubscribe of a retired room can never
/// overtake the subscribe of its successor.
async fn run_subscriptions(backplane: Arc<dyn Backplane>, mut rx: mpsc::UnboundedReceiver<SubOp>) {
    while let Some(op) = rx.recv().await {
        match op {
            SubOp::Subscribe(ch, reply) => {
                let r = backplane.subscribe(&ch).await;
                let _ = reply.send(r);
            }
            SubOp::Unsubscribe(ch) => {
                if let Err(e) = backplane.unsubscribe(&ch).await {
                    tracing::warn!(channel = %ch, error = %e, "unsubscribe failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_shared::protocol::MembershipRevoked;

    fn frame() -> Frame {
        Arc::new(SharedFrame::new(ServerEvent::MembershipRevoked(
            MembershipRevoked {
                community_id: Uuid::nil(),
            },
        )))
    }

    fn state(last: i64) -> RoomState {
        RoomState::new(last)
    }

    #[test]
    fn in_order_events_advance_and_gaps_wait() {
        let mut st = state(3);
        st.pending.insert(4, frame());
        Room::advance(&mut st);
        assert_eq!(st.last, 4);
        st.pending.insert(6, frame());
        st.pending.insert(7, frame());
        Room::advance(&mut st);
        assert_eq!(st.last, 4, "5 is missing: 6 and 7 wait");
        assert!(Room::has_gap(&st));
        st.pending.insert(5, frame());
        Room::advance(&mut st);
        assert_eq!(st.last, 7);
        assert!(!Room::has_gap(&st));
    }

    #[test]
    fn a_known_complete_range_skips_deleted_creations_and_repeats() {
        let mut st = state(10);
        st.pending.insert(9, frame()); // a repeat
        st.pending.insert(13, frame());
        st.pending.insert(15, frame());
        // A backfill said the sequence is complete through 14: 11, 12 and
        // 14 were creations of since-deleted messages.
        st.complete_through = 14;
        Room::advance(&mut st);
        assert_eq!(st.last, 15, "13 delivered, 14 skipped, then 15 is next");
        assert!(st.pending.is_empty());
    }

    #[test]
    fn members_get_each_event_once_after_their_replay_and_revoked_joiners_are_refused() {
        let mut st = state(0);
        let (a, mut rx_a) = ConnHandle::for_test(1, "a", 16);
        let (b, mut rx_b) = ConnHandle::for_test(2, "b", 16);
        admit(&mut st, &a, i64::MIN).expect("admitted");
        admit(&mut st, &b, 2).expect("admitted after replaying through 2");
        for seq in 1..=3 {
            st.pending.insert(seq, frame());
        }
        Room::advance(&mut st);
        let count = |rx: &mut mpsc::Receiver<_>| std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!(count(&mut rx_a), 3);
        assert_eq!(count(&mut rx_b), 1, "b already had 1 and 2 from its replay");

        let (c, _rx_c) = ConnHandle::for_test(3, "c", 16);
        st.revoked.insert(3);
        assert!(admit(&mut st, &c, 0).is_err());
        assert!(!st.members.contains_key(&3));
        assert!(st.revoked.is_empty(), "the refusal consumes the note");
    }

    #[test]
    fn a_full_queue_closes_the_slow_member_only() {
        let mut st = state(0);
        let (slow, _rx_slow) = ConnHandle::for_test(1, "slow", 2);
        let (fast, mut rx_fast) = ConnHandle::for_test(2, "fast", 64);
        admit(&mut st, &slow, i64::MIN).expect("admitted");
        admit(&mut st, &fast, i64::MIN).expect("admitted");
        for seq in 1..=5 {
            st.pending.insert(seq, frame());
        }
        Room::advance(&mut st);
        assert_eq!(std::iter::from_fn(|| rx_fast.try_recv().ok()).count(), 5);
        assert_eq!(
            slow.close_code_for_test(),
            Some(crate::conn::close::SLOW_CONSUMER)
        );
        assert_eq!(fast.close_code_for_test(), None);
    }

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
