//! The hub: which of this gateway's connections receive which events, and
//! in what order.
//!
//! One concern per file:
//! - [`room`]: a community's local state and its ordering rule;
//! - [`replay`]: joining with `lastSeq` (shared recovery windows, the seam
//!   with live traffic);
//! - [`gapfill`]: fetching what a room is missing;
//! - [`presence`]: presence entries and `user-joined`/`user-left`;
//! - [`linger`]: the presence grace after a lost connection;
//! - [`subscriptions`]: channel (un)subscriptions, applied in order;
//! - [`dispatch`]: backplane messages routed to rooms and users;
//! - [`registry`]: connections and users of this gateway.
//!
//! This file holds the hub itself and the join/leave life cycle of a room
//! membership. The hub knows connections only through [`ConnHandle`], and
//! reaches the API and the backplane only through the traits it was given.

mod claims;
mod dispatch;
mod gapfill;
mod linger;
mod presence;
mod registry;
mod replay;
mod room;
mod subscriptions;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_shared::protocol::{ServerEvent, UserTyping};
use tokio::sync::Notify;
use uuid::Uuid;

use self::linger::Linger;
use self::registry::UserEntry;
pub use self::registry::UserSlot;
use self::room::{Room, lock};
use self::subscriptions::Subscriptions;
use crate::api_client::Api;
use crate::backplane::Backplane;
use crate::error::GatewayError;
use crate::handle::ConnHandle;

/// Outcome of a join, for the ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub head_seq: i64,
    pub recovered: bool,
    pub missed: i64,
}

/// Settings of the hub.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Most events replayed on a join with `lastSeq`.
    pub recovery_window: i64,
    /// Online count above which presence changes are not broadcast.
    pub presence_limit: u64,
    /// How long a held user stays present in a room (zero: nobody is
    /// held); see [`linger`].
    pub presence_grace: Duration,
    /// Lost connections per second past which they are held.
    pub mass_loss_per_second: u32,
}

struct HubInner {
    backplane: Arc<dyn Backplane>,
    api: Arc<dyn Api>,
    rooms: Mutex<HashMap<Uuid, Arc<Room>>>,
    users: Mutex<HashMap<Arc<str>, UserEntry>>,
    conns: Mutex<HashMap<u64, Arc<ConnHandle>>>,
    conn_count: AtomicUsize,
    all_closed: Notify,
    next_conn: AtomicU64,
    /// Counts membership revocations heard (see `revocation_epoch`).
    revocations: AtomicU64,
    /// A membership recheck is wanted (or running and wanted once more).
    recheck_again: AtomicBool,
    subs: Subscriptions,
    recovery_window: i64,
    presence_limit: u64,
    presence_grace: Duration,
    mass_loss_per_second: u32,
    linger: Arc<Linger>,
}

impl Drop for HubInner {
    fn drop(&mut self) {
        // The release task holds the hub weakly: it ends now.
        self.linger.stop();
    }
}

/// Handle to the gateway's routing state; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub fetching backfill from `api` and subscribing through
    /// `backplane`. The caller starts the backplane with this hub as its
    /// sink.
    pub fn new(backplane: Arc<dyn Backplane>, api: Arc<dyn Api>, config: HubConfig) -> Hub {
        let hub = Hub {
            inner: Arc::new(HubInner {
                subs: Subscriptions::start(backplane.clone()),
                backplane,
                api,
                rooms: Mutex::new(HashMap::new()),
                users: Mutex::new(HashMap::new()),
                conns: Mutex::new(HashMap::new()),
                conn_count: AtomicUsize::new(0),
                all_closed: Notify::new(),
                next_conn: AtomicU64::new(1),
                revocations: AtomicU64::new(0),
                recheck_again: AtomicBool::new(false),
                recovery_window: config.recovery_window,
                presence_limit: config.presence_limit,
                presence_grace: config.presence_grace,
                mass_loss_per_second: config.mass_loss_per_second,
                linger: Arc::default(),
            }),
        };
        Linger::start(Arc::downgrade(&hub.inner), hub.inner.linger.clone());
        hub
    }

    fn room(&self, id: Uuid) -> Option<Arc<Room>> {
        lock(&self.inner.rooms).get(&id).cloned()
    }

    /// The seq delivered through in a community with local members.
    pub fn delivered_through(&self, community: Uuid) -> Option<i64> {
        self.room(community).map(|r| r.delivered_through())
    }

    /// True when `conn` is a live member of the community here.
    pub fn is_member(&self, community: Uuid, conn: u64) -> bool {
        self.room(community)
            .is_some_and(|r| r.state().members.contains_key(&conn))
    }

    /// Broadcasts `conn`'s user's typing state in a community it is a live
    /// member of: every change of state, and a repeat of the last state at
    /// most once per second; `Forbidden` when not a member.
    pub async fn typing(
        &self,
        community: Uuid,
        conn: &ConnHandle,
        is_typing: bool,
    ) -> Result<(), GatewayError> {
        let due = {
            let room = self
                .room(community)
                .ok_or(GatewayError::Forbidden("join the community first"))?;
            let mut st = room.state();
            if !st.members.contains_key(&conn.id) {
                return Err(GatewayError::Forbidden("join the community first"));
            }
            st.typing_due(&conn.user_id, is_typing)
        };
        if due {
            self.publish_ephemeral(
                community,
                ServerEvent::UserTyping(UserTyping {
                    community_id: community,
                    user_id: conn.user_id.to_string(),
                    name: conn.name.to_string(),
                    is_typing,
                }),
            )
            .await;
        } else {
            metrics::counter!("chorus_gateway_typing_coalesced_total").increment(1);
        }
        Ok(())
    }

    /// Readies a community's room for a join whose access is checked
    /// next: a room new here subscribes its channel now, before the check,
    /// so that every event committed after the check's head is heard live
    /// and the first joiner fetches nothing (with the subscription after
    /// the check, what was committed in between had to be fetched from the
    /// API: one request and two queries per room and gateway). The room is
    /// kept until the returned guard is dropped, joined or not.
    pub async fn prepare(&self, community: Uuid) -> Result<Prepared, GatewayError> {
        let room = {
            let mut rooms = lock(&self.inner.rooms);
            let room = rooms
                .entry(community)
                .or_insert_with(|| {
                    metrics::gauge!("chorus_gateway_rooms").increment(1.0);
                    Arc::new(Room::new(community))
                })
                .clone();
            // A room in the map is not retired (retiring removes it under
            // this lock).
            room.state().preparing += 1;
            room
        };
        let prepared = Prepared {
            hub: self.clone(),
            room,
        };
        self.subscribe_room(&prepared.room).await?;
        Ok(prepared)
    }

    /// Subscribes the room's channel once. Marked sent before it is
    /// queued: a join cancelled while waiting for the outcome leaves the
    /// subscribe queued, and the room's retirement then unsubscribes after
    /// it (the queue keeps their order).
    async fn subscribe_room(&self, room: &Room) -> Result<(), GatewayError> {
        room.subscribed
            .get_or_try_init(|| {
                room.subscribe_sent.store(true, Ordering::Release);
                self.inner.subs.subscribe(room.channel.clone()).done()
            })
            .await?;
        Ok(())
    }

    /// Joins `conn` to a community whose access was checked (head
    /// `head_seq` at that time) after revocation epoch `checked_at`,
    /// replaying from `last_seq` when given. A revocation heard since the
    /// check refuses the join. `prepared` is the guard taken before the
    /// check, if one was.
    pub async fn join(
        &self,
        community: Uuid,
        head_seq: i64,
        conn: &Arc<ConnHandle>,
        last_seq: Option<i64>,
        checked_at: u64,
        prepared: Option<&Prepared>,
    ) -> Result<Joined, GatewayError> {
        loop {
            let room = lock(&self.inner.rooms)
                .entry(community)
                .or_insert_with(|| {
                    metrics::gauge!("chorus_gateway_rooms").increment(1.0);
                    Arc::new(Room::new(community))
                })
                .clone();
            // Checked after the room's subscription was live: nothing
            // committed after the check's head can have been missed.
            let checked_live = prepared.is_some_and(|p| Arc::ptr_eq(&p.room, &room));
            if let Some(joined) = self
                .join_room(&room, head_seq, conn, last_seq, checked_at, checked_live)
                .await?
            {
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
        checked_at: u64,
        checked_live: bool,
    ) -> Result<Option<Joined>, GatewayError> {
        // The first joiner sets the starting point at its check's head,
        // subscribing first if no prepared join did; concurrent joiners
        // wait for the same initialization.
        room.ready
            .get_or_try_init(|| async {
                self.subscribe_room(room).await?;
                let missing = room.state().start(head_seq);
                // Subscribed after the check, anything committed in between
                // is fetched now; before it, only a gap among the events
                // that came or a loss of the backplane's is.
                if missing || !checked_live {
                    self.reconcile(room);
                }
                Ok::<(), GatewayError>(())
            })
            .await?;

        let first_local = {
            let mut guard = room.state();
            let st = &mut *guard;
            if st.retired {
                return Ok(None);
            }
            if st.members.contains_key(&conn.id) {
                return Ok(Some(Joined {
                    head_seq: st.delivered_through.max(head_seq),
                    recovered: true,
                    missed: 0,
                }));
            }
            st.joining.insert(conn.id);
            // A slot held for the user's lost connection becomes this
            // one's: the user never left.
            let took_over = st.take_hold(&conn.user_id);
            let n = st.users.entry(conn.user_id.clone()).or_insert(0);
            if !took_over {
                *n += 1;
            }
            let first_local = !took_over && *n == 1;
            if first_local {
                st.online_merged = None;
            }
            first_local
        };

        // From here on a revocation finds the connection `joining` and
        // marks it; one heard since the access check is in the user's log.
        if !conn.official && self.revoked_since(&conn.user_id, room.id, checked_at) {
            room.state().joining.remove(&conn.id);
            self.release_user(room, &conn.user_id).await;
            return Err(GatewayError::Forbidden("membership revoked"));
        }
        // If the connection closes meanwhile this future is dropped: the
        // session's `leave` then finds it in `joining` and releases it.
        let result = self.attach(room, head_seq, conn, last_seq).await;
        if result.is_err() {
            let joining = {
                let mut st = room.state();
                st.revoked.remove(&conn.id);
                st.joining.remove(&conn.id)
            };
            if joining {
                self.release_user(room, &conn.user_id).await;
            }
            return result.map(Some);
        }
        if first_local {
            self.presence_joined(room.id, conn).await;
        }
        result.map(Some)
    }

    /// Removes `conn` from a community (leave, disconnect, revocation),
    /// whether a member or still joining. Returns whether it was a member.
    pub async fn leave(&self, community: Uuid, conn: &Arc<ConnHandle>) -> bool {
        self.remove(community, conn, None).await
    }

    /// Removes `conn` from a community. A live member's presence is held
    /// for `grace` when given (see [`linger`]); one still joining, whose
    /// presence may not be written yet, is released at once.
    async fn remove(
        &self,
        community: Uuid,
        conn: &Arc<ConnHandle>,
        grace: Option<Duration>,
    ) -> bool {
        let Some(room) = self.room(community) else {
            return false;
        };
        let (member, joining, held) = {
            let mut st = room.state();
            let member = st.members.remove(&conn.id).is_some();
            let held = grace
                .filter(|_| member)
                .and_then(|g| self.inner.linger.reserve().map(|id| (id, g)));
            if let Some((id, _)) = held {
                st.hold(&conn.user_id, id);
            }
            (member, st.joining.remove(&conn.id), held)
        };
        match held {
            Some((id, grace)) => {
                self.inner
                    .linger
                    .hold(room, conn.user_id.clone(), id, grace);
            }
            None if member || joining => self.release_user(&room, &conn.user_id).await,
            None => {}
        }
        member
    }

    /// Unsubscribes an empty room. The unsubscribe is queued under the rooms
    /// lock, so a later re-creation's subscribe is ordered after it.
    fn retire(&self, room: &Arc<Room>) {
        let mut rooms = lock(&self.inner.rooms);
        let mut st = room.state();
        if !st.members.is_empty() || !st.users.is_empty() || st.preparing > 0 || st.retired {
            return;
        }
        st.retired = true;
        if rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.id);
            metrics::gauge!("chorus_gateway_rooms").decrement(1.0);
        }
        if room.subscribe_sent.load(Ordering::Acquire) {
            self.inner.subs.unsubscribe(room.channel.clone());
        }
    }
}

/// A room kept for a join whose access is being checked (see
/// [`Hub::prepare`]); dropping it retires the room if nobody joined.
pub struct Prepared {
    hub: Hub,
    room: Arc<Room>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("community", &self.room.id)
            .finish()
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.room.state().preparing -= 1;
        self.hub.retire(&self.room);
    }
}
