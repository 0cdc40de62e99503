//! Presence and gateway-registry layout in Redis, shared by gateways (which
//! write it) and the API (which reads it for `/presence` and
//! `/api/socket-status`). Only key names and Lua scripts live here: each
//! service runs them with its own Redis client.
//!
//! Liveness is a gateway's, not an entry's: entries never expire and are
//! never refreshed, so Redis's idle cost grows with the number of gateways,
//! not with users or rooms. A gateway writes presence under an
//! *incarnation* (its id plus a random suffix, never reused) whose
//! heartbeat key it renews every few seconds; when that key is gone the
//! incarnation is dead for good, and a survivor reaps its entries.
//!
//! Per community (all keys share the community's hash tag, so each script
//! touches one Redis Cluster slot):
//! - `…:gw:<incarnation>`, a set of the users that incarnation holds there
//!   (one member per user however many tabs);
//! - `…:users`, a hash user → number of incarnations holding them: a user
//!   is online while it is positive, and its size is the online count in
//!   O(1), which is what the large-room broadcast limit checks.
//!
//! Per incarnation: its heartbeat key, the set of communities it holds
//! entries in (so a reaper knows where to look), and a reaping lock; the
//! set [`HOLDERS_KEY`] lists the incarnations that may hold entries.

use uuid::Uuid;

/// Hash user → number of incarnations holding them, in a community.
pub fn users_key(community: &Uuid) -> String {
    format!("chorus:presence:{{{community}}}:users")
}

/// Set of the users one gateway incarnation holds in a community.
pub fn holder_users_key(community: &Uuid, incarnation: &str) -> String {
    format!("chorus:presence:{{{community}}}:gw:{incarnation}")
}

/// Set of the incarnations that may hold presence entries: the ones a
/// reaper checks for a lapsed heartbeat.
pub const HOLDERS_KEY: &str = "chorus:presence:gateways";

/// An incarnation's heartbeat key (its gateway id, expiring): while it
/// exists the incarnation is alive; once gone it is never written again.
pub fn holder_key(incarnation: &str) -> String {
    format!("chorus:presence:gateway:{incarnation}")
}

/// Set of the communities an incarnation holds entries in.
pub fn holder_rooms_key(incarnation: &str) -> String {
    format!("chorus:presence:gateway:{incarnation}:rooms")
}

/// Lock a gateway takes before reaping a dead incarnation, so one reaper
/// does the work.
pub fn reap_lock_key(incarnation: &str) -> String {
    format!("chorus:presence:reap:{incarnation}")
}

/// Key of one gateway's registry report (a JSON `GatewayStatus`, expiring).
/// The registry's keys share the hash tag `{registry}`, so the API reads
/// every report with one `MGET` on Redis Cluster too (a few keys, one per
/// gateway: one slot holds them easily).
pub fn gateway_key(id: &str) -> String {
    format!("chorus:{{registry}}:gateway:{id}")
}

/// Set of gateway ids that have reported; stale ids are removed by readers.
pub const GATEWAY_IDS_KEY: &str = "chorus:{registry}:gateways";

/// The step both [`JOIN_SCRIPT`] and [`LEAVE_SCRIPT`] end with, after
/// setting `changed` to 1 when the change is one everyone sees: the online
/// count, and the announcement (ARGV 2-5, when given) published if at most
/// ARGV[2] users are online, with `pcall`, so that a failed publication
/// leaves the change made and answers -1.
macro_rules! announce_and_answer {
    () => {
        r"
local online = redis.call('HLEN', KEYS[1])
local announced = 0
if changed == 1 and ARGV[5] and online <= tonumber(ARGV[2]) then
  local r = redis.pcall(ARGV[3], ARGV[4], ARGV[5])
  if type(r) == 'table' and r.err then announced = -1 else announced = 1 end
end
return {changed, online, announced}
"
    };
}

/// Adds a user to an incarnation's set. KEYS: users, holder set. ARGV:
/// user, then optionally the announcement: the most users online for which
/// it is made, the publish command (`PUBLISH`, or `SPUBLISH` on Redis
/// Cluster, where the community's channel shares the keys' slot), the
/// community's channel and the `user-joined` envelope. Returns `{first,
/// online, announced}`: `first` is 1 when the user just came online
/// anywhere; `announced` is 1 when the envelope was published, in the same
/// step as the entry that makes it true, and -1 when it was due but its
/// publication failed (the entry stays written: a lost announcement is
/// the backplane's to report, not a reason to doubt presence).
pub const JOIN_SCRIPT: &str = concat!(
    r"
local changed = 0
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], ARGV[1], 1) == 1 then changed = 1 end
end",
    announce_and_answer!()
);

/// Removes a user from an incarnation's set. KEYS: users, holder set.
/// ARGV: user, then optionally the announcement as for [`JOIN_SCRIPT`]
/// (the envelope a `user-left`). Returns `{gone, online, announced}`:
/// `gone` is 1 when the user just went offline everywhere; `announced` as
/// for [`JOIN_SCRIPT`].
pub const LEAVE_SCRIPT: &str = concat!(
    r"
local changed = 0
if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[1])
    changed = 1
  end
end",
    announce_and_answer!()
);

/// Adds many users to an incarnation's set in one call: what a gateway
/// runs per room when it starts a new incarnation. KEYS: users, holder
/// set. ARGV: user... Returns `{first, online}`: the users who came online
/// anywhere (announce `user-joined`), and the online count.
pub const ADD_SCRIPT: &str = r"
local first = {}
for i = 1, #ARGV do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    if redis.call('HINCRBY', KEYS[1], ARGV[i], 1) == 1 then table.insert(first, ARGV[i]) end
  end
end
return {first, redis.call('HLEN', KEYS[1])}
";

/// Removes an incarnation's whole set from a community. KEYS: users,
/// holder set. Returns `{gone, online}`: the users who went offline
/// everywhere (announce `user-left`; each is returned to exactly one
/// caller), and the online count.
pub const REAP_SCRIPT: &str = r"
local gone = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('HINCRBY', KEYS[1], user, -1) <= 0 then
    redis.call('HDEL', KEYS[1], user)
    table.insert(gone, user)
  end
end
redis.call('DEL', KEYS[2])
return {gone, redis.call('HLEN', KEYS[1])}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_communitys_keys_share_its_hash_tag() {
        let c = Uuid::nil();
        let tag = format!("{{{c}}}");
        assert!(users_key(&c).contains(&tag));
        assert!(holder_users_key(&c, "gw#1").contains(&tag));
        assert!(holder_users_key(&c, "gw#1").ends_with(":gw:gw#1"));
        // Incarnation keys carry no community tag.
        assert!(!holder_rooms_key("gw#1").contains('{'));
        // The registry is read with one MGET: one slot.
        assert!(gateway_key("gw-1").starts_with("chorus:{registry}:"));
        assert!(GATEWAY_IDS_KEY.starts_with("chorus:{registry}:"));
    }

    #[test]
    fn scripts_touch_only_their_keys_and_never_a_clock() {
        for script in [JOIN_SCRIPT, LEAVE_SCRIPT, ADD_SCRIPT, REAP_SCRIPT] {
            assert!(!script.contains("TIME"), "{script}");
            assert!(!script.contains("KEYS[3]"), "{script}");
        }
    }
}
