//! Presence: who is online in a community, across gateways and tabs.
//!
//! The entries live in the backplane (one per user per gateway per
//! community, however many tabs); this gateway counts its local
//! connections per user in each room, adds its entry on a user's first
//! local connection and removes it on the last. The backplane reports
//! "first anywhere" and "gone everywhere" to exactly one caller, and on a
//! connection's join and leave publishes `user-joined` or `user-left` on
//! the community channel in the same call (one Redis script), unless the
//! community is over the broadcast limit (a join is announced while at
//! most the limit is online, a leave while fewer stay). Entries never
//! expire:
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
use crate::backplane::{Added, Announce, Announced, Reaped};
use crate::handle::ConnHandle;

impl Hub {
    /// Adds `conn`'s user to `community`'s presence, announcing them in
    /// the same call if they just came online.
    pub(super) async fn presence_joined(&self, community: Uuid, conn: &ConnHandle) {
        let announce = self.joined_announce(community, &conn.user_id, &conn.name);
        match self
            .inner
            .backplane
            .presence_join(community, &conn.user_id, announce.as_ref())
            .await
        {
            Ok(j) => announced("joined", j.announced),
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
        if last_local && let Err(e) = self.leave_presence(room.id, user, true).await {
            tracing::warn!(error = %e, "presence leave failed; the entry goes with its incarnation");
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
            // Only a user the re-add did not find offline was announced.
            let was_announced = !added.first.iter().any(|f| **f == **user);
            if let Err(e) = self
                .leave_presence(added.community, user, was_announced)
                .await
            {
                tracing::debug!(error = %e, "presence leave after a re-add failed");
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

    /// Removes this gateway's entry of `user` in `community`, announcing
    /// `user-left` in the same call if `announce` and the user just went
    /// offline everywhere within the broadcast limit.
    async fn leave_presence(
        &self,
        community: Uuid,
        user: &str,
        announce: bool,
    ) -> Result<(), crate::error::GatewayError> {
        let announce = if announce {
            self.left_announce(community, user)
        } else {
            None
        };
        let l = self
            .inner
            .backplane
            .presence_leave(community, user, announce.as_ref())
            .await?;
        announced("left", l.announced);
        Ok(())
    }

    /// `user-joined` for `user`, to publish if at most the broadcast
    /// limit is online with them (none with a limit of 0).
    fn joined_announce(&self, community: Uuid, user: &str, name: &str) -> Option<Announce> {
        (self.inner.presence_limit > 0).then(|| Announce {
            envelope: ephemeral(community, joined(community, user, name)),
            max_online: self.inner.presence_limit,
        })
    }

    /// `user-left` for `user`, to publish if fewer than the broadcast limit
    /// stay online (none with a limit of 0).
    fn left_announce(&self, community: Uuid, user: &str) -> Option<Announce> {
        let max_online = self.inner.presence_limit.checked_sub(1)?;
        Some(Announce {
            envelope: ephemeral(community, left(community, user)),
            max_online,
        })
    }

    async fn publish_joined(&self, community: Uuid, user: &str, name: &str) {
        let sent = self
            .publish_ephemeral(community, joined(community, user, name))
            .await;
        announced("joined", Announced::sent(sent));
    }

    async fn publish_left(&self, community: Uuid, user: &str) {
        let sent = self
            .publish_ephemeral(community, left(community, user))
            .await;
        announced("left", Announced::sent(sent));
    }

    /// Publishes an unsequenced event (presence, typing) on a community's
    /// channel; every gateway, this one included, delivers it from its
    /// subscription. Returns whether it was published; a failure is logged,
    /// not retried: the event is ephemeral.
    pub async fn publish_ephemeral(&self, community: Uuid, event: ServerEvent) -> bool {
        match self
            .inner
            .backplane
            .publish(&community_channel(&community), ephemeral(community, event))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "publishing an ephemeral event failed");
                false
            }
        }
    }
}

fn joined(community: Uuid, user: &str, name: &str) -> ServerEvent {
    ServerEvent::UserJoined(UserJoined {
        community_id: community,
        user_id: user.to_owned(),
        name: name.to_owned(),
    })
}

fn left(community: Uuid, user: &str) -> ServerEvent {
    ServerEvent::UserLeft(UserLeft {
        community_id: community,
        user_id: user.to_owned(),
    })
}

/// An unsequenced event's envelope, stamped now.
fn ephemeral(community: Uuid, event: ServerEvent) -> Bytes {
    let env = Envelope::new(
        Some(community),
        None,
        chrono::Utc::now().timestamp_millis(),
        event,
    );
    Bytes::from(env.encode())
}

/// Counts an announcement the backplane published with its change, or
/// one that was lost (its change stands; members see it in the next
/// online list they fetch).
fn announced(kind: &'static str, outcome: Announced) {
    match outcome {
        Announced::Published => {
            metrics::counter!("chorus_gateway_presence_events_total", "kind" => kind).increment(1);
        }
        Announced::Failed => {
            metrics::counter!("chorus_gateway_presence_announcements_lost_total", "kind" => kind)
                .increment(1);
            tracing::warn!(kind, "publishing a presence announcement failed");
        }
        Announced::NotDue => {}
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
