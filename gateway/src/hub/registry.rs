//! The registry of this gateway's connections and users.
//!
//! Every connection is registered for draining and the connection count;
//! every user with a local connection has an entry holding their
//! connections, which of them asked for notifications, and the ids of the
//! latest notifications delivered (to drop the repeats an at-least-once
//! outbox may publish). A user's channel is subscribed on their first
//! local connection and unsubscribed on their last, queued under the users
//! lock so the two can never be reordered; a connection whose presence is
//! held (see `linger.rs`) keeps the channel, and the entry, until the
//! grace ends, so a returning client finds it subscribed and a revocation
//! still reaches the held presence.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chorus_shared::envelope::user_channel;
use chorus_shared::protocol::ServerEvent;
use uuid::Uuid;

use super::Hub;
use super::room::lock;
use super::subscriptions::Pending;
use crate::error::GatewayError;
use crate::handle::ConnHandle;

/// Revocations remembered per user, to refuse joins whose access check
/// came before one: a join takes a fraction of a second, so the last few
/// revocations of a user are all that can race it.
const REVOCATIONS_REMEMBERED: usize = 16;

/// Notification ids remembered per user for de-duplication. The outbox
/// re-publishes at most one batch (500 events) after a failure, so a repeat
/// is never more than that many notifications behind its original; the
/// memory is only allocated for users who receive notifications.
const RECENT_NOTIFICATIONS: usize = 1024;

/// A user with a connection (or an upgrade, or a held channel) here.
///
/// Kept small: there is one per connected user, and the map holding them
/// is sized by its largest load (an entry of ~250 B cost ~430 B per
/// connection in a map of 5,000 users). What only some users need lives
/// in [`UserHistory`], allocated when first needed.
#[derive(Default)]
pub(super) struct UserEntry {
    /// The user's connections here, each with whether it asked for
    /// notifications. A list: a user has a few (at most the per-user cap,
    /// 32 by default; a deployment that turns the cap off accepts scans
    /// as long as a user's own connections).
    conns: Vec<(Arc<ConnHandle>, bool)>,
    /// Upgrades admitted under the per-user cap but not connected yet.
    reserved: u32,
    /// Notifications delivered and revocations seen, once there are any.
    history: Option<Box<UserHistory>>,
    /// The user's channel is subscribed (or its subscribe is queued).
    subscribed: bool,
    /// The subscribe of the user's channel, while its outcome is unknown:
    /// a connection arriving meanwhile waits for it too, so that no
    /// connection lives on without the channel when it fails.
    subscribing: Option<Pending>,
    /// Lost connections whose grace keeps the channel subscribed.
    channel_holds: u32,
}

/// The part of a [`UserEntry`] only users who get notifications or lose a
/// membership need.
#[derive(Default)]
struct UserHistory {
    /// The latest notification ids delivered, oldest first, and the same
    /// ids as a set for O(1) lookups.
    recent: VecDeque<Uuid>,
    recent_set: HashSet<Uuid>,
    /// The user's latest revocations: community and revocation epoch.
    revoked: VecDeque<(Uuid, u64)>,
}

impl UserEntry {
    fn history(&mut self) -> &mut UserHistory {
        self.history.get_or_insert_default()
    }

    /// Nothing needs the entry: no connection, upgrade or hold.
    fn unused(&self) -> bool {
        self.conns.is_empty() && self.reserved == 0 && self.channel_holds == 0
    }
}

/// A connection slot of a user under the per-user cap, taken before the
/// upgrade; [`Hub::connect`] uses it, and dropping it unused (an upgrade
/// that never completed) gives it back.
#[derive(Debug)]
pub struct UserSlot {
    hub: Hub,
    user: Arc<str>,
    used: bool,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        let mut users = lock(&self.hub.inner.users);
        if let Some(e) = users.get_mut(&self.user) {
            e.reserved = e.reserved.saturating_sub(1);
            if e.unused() {
                users.remove(&self.user);
            }
        }
    }
}

impl Hub {
    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.inner.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Open connections.
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

    /// Takes a connection slot for `user` unless they already hold `cap`
    /// (connected or upgrading); a `cap` of 0 means no cap.
    pub fn reserve(&self, user: &str, cap: u32) -> Option<UserSlot> {
        let user: Arc<str> = Arc::from(user);
        let mut users = lock(&self.inner.users);
        let e = users.entry(user.clone()).or_default();
        let held = u32::try_from(e.conns.len())
            .unwrap_or(u32::MAX)
            .saturating_add(e.reserved);
        if cap > 0 && held >= cap {
            if e.unused() {
                users.remove(&user);
            }
            return None;
        }
        e.reserved += 1;
        Some(UserSlot {
            hub: self.clone(),
            user,
            used: false,
        })
    }

    /// Registers a new connection in the slot taken for it; subscribes its
    /// user's channel (for notifications and membership revocations) unless
    /// it is subscribed already (another connection, or a held one's
    /// grace). On error the connection must still be disconnected.
    pub async fn connect(
        &self,
        conn: &Arc<ConnHandle>,
        mut slot: UserSlot,
    ) -> Result<(), GatewayError> {
        lock(&self.inner.conns).insert(conn.id, conn.clone());
        self.inner.conn_count.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("chorus_gateway_connections", "encoding" => conn.encoding.label())
            .increment(1.0);
        let subscribed = {
            let mut users = lock(&self.inner.users);
            let e = users.entry(conn.user_id.clone()).or_default();
            if !slot.used && *slot.user == *conn.user_id {
                slot.used = true;
                e.reserved = e.reserved.saturating_sub(1);
            }
            e.conns.push((conn.clone(), false));
            if std::mem::replace(&mut e.subscribed, true) {
                e.subscribing.clone()
            } else {
                let pending = self.inner.subs.subscribe(user_channel(&conn.user_id));
                e.subscribing = Some(pending.clone());
                Some(pending)
            }
        };
        let Some(pending) = subscribed else {
            return Ok(());
        };
        let done = pending.clone().done().await;
        let mut users = lock(&self.inner.users);
        if let Some(e) = users.get_mut(&conn.user_id)
            && e.subscribing.as_ref().is_some_and(|p| p.same(&pending))
        {
            e.subscribing = None;
            if done.is_err() {
                // Not subscribed after all: the next connection must try
                // again, even if this one's end is held.
                self.unsubscribe_user(&mut users, &conn.user_id);
            }
        }
        done
    }

    /// Queues the unsubscribe of `user`'s channel if it is subscribed;
    /// under the users lock, so a later subscribe is ordered after it.
    fn unsubscribe_user(&self, users: &mut HashMap<Arc<str>, UserEntry>, user: &Arc<str>) {
        if let Some(e) = users.get_mut(user)
            && std::mem::take(&mut e.subscribed)
        {
            e.subscribing = None;
            self.inner.subs.unsubscribe(user_channel(user));
        }
    }

    /// Forgets a closed connection: leaves its rooms, then its user channel.
    pub async fn disconnect(&self, conn: &Arc<ConnHandle>, communities: &[Uuid]) {
        // A client that said goodbye left; one sent elsewhere, or lost with
        // many others, is about to be back, and is held meanwhile.
        let grace = self.inner.presence_grace;
        let held = !grace.is_zero()
            && !conn.said_goodbye()
            && self
                .inner
                .linger
                .holds(conn, self.inner.mass_loss_per_second, grace);
        // The user's slot is freed first: leaving rooms waits for Redis,
        // and a reconnecting tab must not be refused meanwhile.
        {
            let mut users = lock(&self.inner.users);
            if let Some(e) = users.get_mut(&conn.user_id) {
                e.conns.retain(|(c, _)| c.id != conn.id);
                // Held whether or not other tabs remain: they may close
                // before this grace ends, and the channel must still carry
                // a revocation for the held presence.
                if held && self.inner.linger.hold_channel(conn.user_id.clone(), grace) {
                    e.channel_holds += 1;
                } else if e.conns.is_empty() && e.channel_holds == 0 {
                    let gone = e.reserved == 0;
                    self.unsubscribe_user(&mut users, &conn.user_id);
                    if gone {
                        users.remove(&conn.user_id);
                    }
                }
            }
        }
        let grace = held.then_some(grace);
        for c in communities {
            self.remove(*c, conn, grace).await;
        }
        lock(&self.inner.conns).remove(&conn.id);
        let n = self.inner.conn_count.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!("chorus_gateway_connections", "encoding" => conn.encoding.label())
            .decrement(1.0);
        if n == 0 {
            self.inner.all_closed.notify_waiters();
        }
    }

    /// The revocation epoch now: a join's access check taken after it is
    /// refused if a revocation with a later epoch arrives.
    pub fn revocation_epoch(&self) -> u64 {
        self.inner.revocations.load(Ordering::SeqCst)
    }

    /// A lost connection's grace ended: its user's channel goes unless
    /// something else keeps it.
    pub(super) fn release_channel(&self, user: &Arc<str>) {
        let mut users = lock(&self.inner.users);
        let Some(e) = users.get_mut(user) else {
            return;
        };
        e.channel_holds = e.channel_holds.saturating_sub(1);
        if e.channel_holds == 0 && e.conns.is_empty() {
            let gone = e.reserved == 0;
            self.unsubscribe_user(&mut users, user);
            if gone {
                users.remove(user);
            }
        }
    }

    /// Whether `user` lost membership of `community` after `epoch`.
    pub(super) fn revoked_since(&self, user: &str, community: Uuid, epoch: u64) -> bool {
        lock(&self.inner.users).get(user).is_some_and(|e| {
            e.history.as_ref().is_some_and(|h| {
                h.revoked
                    .iter()
                    .any(|&(c, at)| c == community && at > epoch)
            })
        })
    }

    /// Marks a connection as wanting `notification` events.
    pub fn subscribe_notifications(&self, conn: &ConnHandle) {
        if let Some(e) = lock(&self.inner.users).get_mut(&conn.user_id)
            && let Some((_, wants)) = e.conns.iter_mut().find(|(c, _)| c.id == conn.id)
        {
            *wants = true;
        }
    }

    /// The user's local connections for a user event, each with whether it
    /// asked for notifications; `None` when the user has none here or the
    /// event is a notification already delivered.
    pub(super) fn user_event_targets(
        &self,
        user: &str,
        event: &ServerEvent,
    ) -> Option<Vec<(Arc<ConnHandle>, bool)>> {
        let mut users = lock(&self.inner.users);
        let e = users.get_mut(user)?;
        if let ServerEvent::MembershipRevoked(r) = event {
            let epoch = self.inner.revocations.fetch_add(1, Ordering::SeqCst) + 1;
            let h = e.history();
            if h.revoked.len() >= REVOCATIONS_REMEMBERED {
                h.revoked.pop_front();
            }
            h.revoked.push_back((r.community_id, epoch));
        }
        if let ServerEvent::Notification(n) = event {
            let id = n.notification.id;
            let h = e.history();
            if !h.recent_set.insert(id) {
                metrics::counter!("chorus_gateway_duplicate_events_total").increment(1);
                return None;
            }
            if h.recent.len() >= RECENT_NOTIFICATIONS
                && let Some(old) = h.recent.pop_front()
            {
                h.recent_set.remove(&old);
            }
            h.recent.push_back(id);
        }
        Some(e.conns.clone())
    }
}
