//! Presence: who is online in a community, across gateways and tabs.
//!
//! The entries live in the backplane (one per user per gateway per
//! community, however many tabs); this gateway counts its local
//! connections per user in each room, adds its entry on a user's first
//! local connection and removes it on the last. The backplane reports
//! "first anywhere" and "gone everywhere" to exactly one caller, which
//! publishes `user-joined` or `user-left` on the community channel, unless
//! the community is over the broadcast limit. Entries never expire:
//! liveness is the gateway's (a heartbeat per incarnation, see
//! `backplane`), and the upkeep here reaps dead gateways' entries and
//! renews this gateway's incarnation when its heartbeat lapsed or a write
//! failed, so idle presence costs Redis nothing per user.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chorus_shared::envelope::{Envelope, community_channel};
use chorus_shared::protocol::{ServerEvent, UserJoined, UserLeft};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::Hub;
use super::room::{ONLINE_SNAPSHOT_TTL, Room, RoomState, lock};
use crate::backplane::{Added, Reaped};
use crate::handle::ConnHandle;

impl Hub {
    /// Announces `conn`'s user in `community` if they just came online.
    pub(super) async fn presence_joined(&self, community: Uuid, conn: &ConnHandle) {
        match self
            .inner
            .backplane
            .presence_join(community, &conn.user_id)
            .await
        {
            Ok(j) if j.first && j.online <= self.inner.presence_limit => {
                self.publish_joined(community, &conn.user_id, &conn.name)
                    .await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "presence join failed"),
        }
    }

    /// Drops one local connection of `user` from the room's presence
    /// count; the last one leaves presence; an empty room is retired.
    pub(super) async fn release_user(&self, room: &Arc<Room>, user: &Arc<str>) {
        let (last_local, empty) = {
            let mut st = room.state();
            let last_local = match st.users.get_mut(user) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    st.users.remove(user);
                    st.online_merged = None;
                    st.typing.remove(user);
                    true
                }
                None => false,
            };
            (last_local, st.users.is_empty() && st.members.is_empty())
        };
        if last_local {
            match self.inner.backplane.presence_leave(room.id, user).await {
                Ok(l) if l.gone && l.online < self.inner.presence_limit => {
                    self.publish_left(room.id, user).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "presence leave failed; the entry goes with its incarnation")
                }
            }
        }
        if empty {
            self.retire(room);
        }
    }

    /// Ends hold `id` of `user` in `room` (see `linger`), unless a joiner
    /// of the user took it over meanwhile.
    pub(super) async fn release_held(&self, room: &Arc<Room>, user: &Arc<str>, id: u64) {
        if room.state().end_hold(user, id) {
            self.release_user(room, user).await;
        }
    }

    /// Whether presence is held for lost connections.
    pub fn holds_presence(&self) -> bool {
        self.inner.linger.holding()
    }

    /// The community's online users for a join ack: a snapshot of the
    /// backplane's list at most [`ONLINE_SNAPSHOT_TTL`] old, fetched once
    /// for concurrent callers, plus this gateway's own users. The merged
    /// list is kept until the snapshot or the set of local users changes:
    /// a storm's thousands of acks in a room share one.
    pub async fn online(&self, community: Uuid) -> Arc<Vec<String>> {
        let Some(room) = self.room(community) else {
            return Arc::new(
                self.inner
                    .backplane
                    .presence_online(community)
                    .await
                    .unwrap_or_default(),
            );
        };
        let cell = {
            let mut st = room.state();
            if let Some((at, list)) = &st.online
                && at.elapsed() < ONLINE_SNAPSHOT_TTL
            {
                let list = list.clone();
                return merged(&mut st, list);
            }
            st.online_inflight
                .get_or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let list = cell
            .get_or_init(|| async {
                let list = match self.inner.backplane.presence_online(community).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the online list failed");
                        Vec::new()
                    }
                };
                let list = Arc::new(list);
                let mut st = room.state();
                st.online = Some((Instant::now(), list.clone()));
                st.online_merged = None;
                st.online_inflight = None;
                list
            })
            .await
            .clone();
        merged(&mut room.state(), list)
    }

    /// Presence upkeep, run every few seconds: starts a new incarnation
    /// when this gateway's is lapsed or doubtful, then reaps dead gateways'
    /// entries, announcing users who vanished.
    pub async fn presence_upkeep(&self) {
        if self.inner.backplane.presence_needs_renewal() {
            self.renew_presence().await;
        }
        match self.inner.backplane.presence_reap_dead().await {
            Ok(reaped) => self.announce_reaped(&reaped).await,
            Err(e) => tracing::debug!(error = %e, "presence reaping failed"),
        }
    }

    /// Writes every local (room, user) again under a new incarnation (one
    /// script per room, pipelined), announcing users who had been reaped
    /// meanwhile, then retires the old incarnation, which is reaped like a
    /// dead gateway's: users who left in between go offline with it.
    pub async fn renew_presence(&self) {
        let old = match self.inner.backplane.presence_renew().await {
            Ok(old) => old,
            Err(e) => {
                tracing::debug!(error = %e, "presence renewal failed");
                return;
            }
        };
        metrics::counter!("chorus_gateway_presence_renewals_total").increment(1);
        // Taken after the switch: a user added locally later writes to the
        // new incarnation by itself.
        let rooms: Vec<Arc<Room>> = lock(&self.inner.rooms).values().cloned().collect();
        let batch: Vec<(Uuid, Vec<Arc<str>>)> = rooms
            .iter()
            .map(|r| (r.id, r.state().users.keys().cloned().collect()))
            .filter(|(_, users): &(Uuid, Vec<Arc<str>>)| !users.is_empty())
            .collect();
        let added = match self.inner.backplane.presence_add(&batch).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "presence renewal failed; retrying at the next upkeep");
                return;
            }
        };
        let users: HashMap<Uuid, &[Arc<str>]> =
            batch.iter().map(|(c, u)| (*c, u.as_slice())).collect();
        for a in &added {
            let users = users.get(&a.community).copied().unwrap_or_default();
            self.settle_added(a, users).await;
        }
        if let Some(old) = old
            && let Err(e) = self.inner.backplane.presence_retire(&old).await
        {
            tracing::debug!(error = %e, "retiring the old presence incarnation failed; it lapses");
        }
    }

    /// Announces the users a re-add brought back online, and takes out
    /// again the users who left locally while it ran (their own leave may
    /// have come first).
    async fn settle_added(&self, added: &Added, users: &[Arc<str>]) {
        let room = self.room(added.community);
        let local = |user: &str| {
            room.as_ref()
                .is_some_and(|room| room.state().users.contains_key(user))
        };
        for user in users {
            if local(user) {
                continue;
            }
            let announced = !added.first.iter().any(|f| **f == **user);
            match self
                .inner
                .backplane
                .presence_leave(added.community, user)
                .await
            {
                Ok(l) if announced && l.gone && l.online < self.inner.presence_limit => {
                    self.publish_left(added.community, user).await;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "presence leave after a re-add failed"),
            }
        }
        if added.online > self.inner.presence_limit {
            return;
        }
        for user in &added.first {
            if !local(user) {
                continue;
            }
            let name = room.as_ref().and_then(|room| {
                room.state()
                    .members
                    .values()
                    .find(|m| *m.conn.user_id == **user)
                    .map(|m| m.conn.name.clone())
            });
            let name = name.map_or_else(|| user.clone(), |n| n.to_string());
            self.publish_joined(added.community, user, &name).await;
        }
    }

    /// Clean exit: removes this gateway's own presence entries, announcing
    /// users who thereby went offline everywhere.
    pub async fn withdraw_presence(&self) {
        // Users held past their last connection are withdrawn with the
        // rest.
        self.inner.linger.stop();
        match self.inner.backplane.presence_withdraw().await {
            Ok(reaped) => self.announce_reaped(&reaped).await,
            Err(e) => {
                tracing::warn!(error = %e, "withdrawing presence failed; a survivor reaps it");
            }
        }
    }

    async fn announce_reaped(&self, reaped: &[Reaped]) {
        for r in reaped {
            if r.online < self.inner.presence_limit {
                for user in &r.gone {
                    self.publish_left(r.community, user).await;
                }
            }
        }
    }

    async fn publish_joined(&self, community: Uuid, user: &str, name: &str) {
        metrics::counter!("chorus_gateway_presence_events_total", "kind" => "joined").increment(1);
        self.publish_ephemeral(
            community,
            ServerEvent::UserJoined(UserJoined {
                community_id: community,
                user_id: user.to_owned(),
                name: name.to_owned(),
            }),
        )
        .await;
    }

    async fn publish_left(&self, community: Uuid, user: &str) {
        metrics::counter!("chorus_gateway_presence_events_total", "kind" => "left").increment(1);
        self.publish_ephemeral(
            community,
            ServerEvent::UserLeft(UserLeft {
                community_id: community,
                user_id: user.to_owned(),
            }),
        )
        .await;
    }

    /// Publishes an unsequenced event (presence, typing) on a community's
    /// channel; every gateway, this one included, delivers it from its
    /// subscription.
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
}

/// The room's merged online list for the snapshot `listed`: the one kept
/// for that very snapshot, or made and kept. (The room clears it whenever
/// its set of local users changes.)
fn merged(st: &mut RoomState, listed: Arc<Vec<String>>) -> Arc<Vec<String>> {
    if let Some((of, m)) = &st.online_merged
        && Arc::ptr_eq(of, &listed)
    {
        return m.clone();
    }
    let m = Arc::new(with_local(&listed, &st.users));
    st.online_merged = Some((listed, m.clone()));
    m
}

/// `listed` plus the local users missing from it.
fn with_local(listed: &[String], local: &HashMap<Arc<str>, u32>) -> Vec<String> {
    let known: HashSet<&str> = listed.iter().map(String::as_str).collect();
    let mut out = listed.to_vec();
    out.extend(
        local
            .keys()
            .filter(|u| !known.contains(&***u))
            .map(|u| u.to_string()),
    );
    out
}
