//! Dispatch: what the backplane delivers, routed to local connections.
//!
//! A community event is decoded once and wrapped in a shared frame
//! (encoded at most once per wire encoding); sequenced events go through
//! the room's ordering, unsequenced ones (presence, typing) straight to
//! the members. A user event (a notification, a membership revocation)
//! goes to that user's local connections. After a backplane reconnect or
//! overflow every room is reconciled, since pub/sub loses what was
//! published meanwhile.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use chorus_shared::envelope::{Envelope, community_of_channel, user_of_channel};
use chorus_shared::protocol::ServerEvent;

use super::Hub;
use super::room::{Room, lock};
use crate::backplane::BackplaneSink;
use crate::codec::{Frame, SharedFrame};
use crate::handle::ConnHandle;

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
            crate::series::hot()
                .event_lag
                .record(lag_ms.max(0) as f64 / 1000.0);
        }
        if let Some(user) = user_of_channel(channel) {
            self.on_user_event(user, env.event);
            return;
        }
        let Some(community) = env.community_id else {
            return;
        };
        let Some(room) = self.room(community) else {
            return;
        };
        let frame: Frame = Arc::new(SharedFrame::committed_at(env.event, env.ts_ms));
        match env.seq {
            Some(seq) => {
                let gap = {
                    let mut st = room.state();
                    if !st.offer(seq, frame) {
                        metrics::counter!("chorus_gateway_duplicate_events_total").increment(1);
                        return;
                    }
                    st.has_gap()
                };
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
                room.state().broadcast(&frame, exclude.as_deref());
            }
        }
    }

    fn on_resync(&self) {
        let rooms: Vec<Arc<Room>> = lock(&self.inner.rooms).values().cloned().collect();
        for room in rooms {
            self.resync_room(&room);
        }
        // A `membership-revoked` published meanwhile is lost too. One
        // recheck at a time; a resync during it asks for one more pass.
        if self.inner.recheck_again.swap(true, Ordering::SeqCst) {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            while hub.inner.recheck_again.load(Ordering::SeqCst) {
                hub.inner.recheck_again.store(false, Ordering::SeqCst);
                let rooms: Vec<Arc<Room>> = lock(&hub.inner.rooms).values().cloned().collect();
                hub.recheck_memberships(rooms, None).await;
            }
        });
    }

    fn on_resync_channels(&self, channels: &[String]) {
        let communities: HashSet<uuid::Uuid> = channels
            .iter()
            .filter_map(|c| community_of_channel(c))
            .collect();
        let users: HashSet<Arc<str>> = channels
            .iter()
            .filter_map(|c| user_of_channel(c))
            .map(Arc::from)
            .collect();
        let rooms: Vec<Arc<Room>> = lock(&self.inner.rooms).values().cloned().collect();
        for room in &rooms {
            if communities.contains(&room.id) {
                self.resync_room(room);
            }
        }
        // A revocation published to one of these users meanwhile is lost.
        if !users.is_empty() {
            let hub = self.clone();
            tokio::spawn(async move { hub.recheck_memberships(rooms, Some(&users)).await });
        }
    }
}

/// Membership checks run at once after a resync: enough to use the API's
/// parallelism, bounded so a large gateway does not flood it.
const RECHECKS_IN_FLIGHT: usize = 32;

impl Hub {
    fn on_user_event(&self, user: &str, event: ServerEvent) {
        let Some(conns) = self.user_event_targets(user, &event) else {
            return;
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
                // Removed here, before the next backplane message is
                // dispatched: nothing published after the revocation
                // reaches the removed connections. Only the presence
                // cleanup waits for Redis.
                let community = r.community_id;
                let frame: Frame = Arc::new(SharedFrame::new(ServerEvent::MembershipRevoked(r)));
                let removed: Vec<Arc<ConnHandle>> = conns
                    .into_iter()
                    .map(|(c, _)| c)
                    .filter(|c| self.revoke_now(community, c))
                    .collect();
                for c in &removed {
                    c.push_event(&frame);
                }
                // Presence held for the user's lost connections goes too:
                // they are no longer a member to come back.
                let held = self.room(community).and_then(|room| {
                    let n = room.state().drop_holds(user);
                    (n > 0).then_some((room, n))
                });
                if !removed.is_empty() || held.is_some() {
                    let hub = self.clone();
                    let user: Arc<str> = Arc::from(user);
                    tokio::spawn(async move {
                        if let Some(room) = hub.room(community) {
                            for c in removed {
                                hub.release_user(&room, &c.user_id).await;
                            }
                        }
                        if let Some((room, n)) = held {
                            for _ in 0..n {
                                hub.release_user(&room, &user).await;
                            }
                        }
                    });
                }
            }
            _ => {}
        }
    }

    /// Asks the API whether each local member (officials aside; only the
    /// users in `only`, when given) still belongs to each room, and
    /// revokes those who do not: the repair for revocations lost while the
    /// backplane was away.
    async fn recheck_memberships(&self, rooms: Vec<Arc<Room>>, only: Option<&HashSet<Arc<str>>>) {
        let mut checks: Vec<(Arc<Room>, Arc<str>)> = Vec::new();
        for room in rooms {
            let users: std::collections::HashSet<Arc<str>> = {
                let st = room.state();
                let joining = st.joining.iter().filter_map(|id| {
                    // A joiner's handle is in the registry, not the room.
                    lock(&self.inner.conns).get(id).cloned()
                });
                st.members
                    .values()
                    .map(|m| m.conn.clone())
                    .chain(joining)
                    .filter(|c| !c.official)
                    .map(|c| c.user_id.clone())
                    .filter(|u| only.is_none_or(|o| o.contains(u)))
                    .collect()
            };
            checks.extend(users.into_iter().map(|u| (room.clone(), u)));
        }
        for chunk in checks.chunks(RECHECKS_IN_FLIGHT) {
            let answers = futures_util::future::join_all(
                chunk
                    .iter()
                    .map(|(room, user)| self.inner.api.access(room.id, user)),
            )
            .await;
            for ((room, user), answer) in chunk.iter().zip(answers) {
                match answer {
                    Ok(a) if a.role.is_none() => self.revoke_user(room, user).await,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(community = %room.id, error = %e, "membership recheck failed")
                    }
                }
            }
        }
    }

    /// Revokes every local connection of `user` in `room`, joining ones
    /// included.
    async fn revoke_user(&self, room: &Arc<Room>, user: &str) {
        metrics::counter!("chorus_gateway_revocations_repaired_total").increment(1);
        let conns: Vec<Arc<ConnHandle>> = {
            let st = room.state();
            let joining: Vec<Arc<ConnHandle>> = st
                .joining
                .iter()
                .filter_map(|id| lock(&self.inner.conns).get(id).cloned())
                .collect();
            st.members
                .values()
                .map(|m| m.conn.clone())
                .chain(joining)
                .filter(|c| *c.user_id == *user)
                .collect()
        };
        let frame: Frame = Arc::new(SharedFrame::new(ServerEvent::MembershipRevoked(
            chorus_shared::protocol::MembershipRevoked {
                community_id: room.id,
            },
        )));
        for c in conns {
            if self.revoke(room.id, &c).await {
                c.push_event(&frame);
            }
        }
    }

    /// Ends `conn`'s membership after a revocation: a live member leaves
    /// (true: tell it); a connection still joining is refused at admission.
    async fn revoke(&self, community: uuid::Uuid, conn: &Arc<ConnHandle>) -> bool {
        let member = self.revoke_now(community, conn);
        if member && let Some(room) = self.room(community) {
            self.release_user(&room, &conn.user_id).await;
        }
        member
    }

    /// The part of a revocation that must not wait: a live member stops
    /// receiving (true: its presence is released by the caller); a
    /// connection still joining is marked, so its replay stops and its
    /// admission is refused.
    fn revoke_now(&self, community: uuid::Uuid, conn: &ConnHandle) -> bool {
        let Some(room) = self.room(community) else {
            return false;
        };
        let mut st = room.state();
        let member = st.members.remove(&conn.id).is_some();
        if !member && st.joining.contains(&conn.id) {
            st.revoked.insert(conn.id);
        }
        member
    }
}

impl Hub {
    /// Fetches what a room may have missed while its channel's messages
    /// were lost; a room not started yet leaves it to its first joiner.
    fn resync_room(&self, room: &Arc<Room>) {
        let started = {
            let mut st = room.state();
            if !st.started() {
                st.lost_before_start = true;
            }
            st.started()
        };
        if started {
            self.reconcile(room);
        }
    }
}
