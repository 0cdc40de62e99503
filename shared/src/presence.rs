//! Presence and gateway-registry layout in Redis, shared by gateways (which
//! write it) and the API (which reads it for `/presence` and
//! `/api/socket-status`). Only key names and Lua scripts live here: each
//! service runs them with its own Redis client.
//!
//! Per community two keys, updated together by scripts so they never
//! disagree:
//! - `…:conns`, a sorted set of `user\ngateway` entries scored by expiry
//!   (ms, Redis clock). A gateway holds one entry per (user, community)
//!   however many tabs the user has there, and refreshes it periodically;
//!   a dead gateway's entries expire and are swept by survivors.
//! - `…:users`, a hash user → number of gateways holding an entry: a user
//!   is online while it is positive, and its size is the online count in
//!   O(1), which is what the large-room broadcast limit checks.

use uuid::Uuid;

/// Sorted set of `user\ngateway` entries of a community.
pub fn conns_key(community: &Uuid) -> String {
    format!("chorus:presence:{{{community}}}:conns")
}

/// Hash user → gateway count of a community.
pub fn users_key(community: &Uuid) -> String {
    format!("chorus:presence:{{{community}}}:users")
}

/// The entry a gateway holds for a user in a community.
pub fn entry(user: &str, gateway: &str) -> String {
    format!("{user}\n{gateway}")
}

/// Key of one gateway's registry report (a JSON `GatewayStatus`, expiring).
pub fn gateway_key(id: &str) -> String {
    format!("chorus:gateway:{id}")
}

/// Set of gateway ids that have reported; stale ids are removed by readers.
pub const GATEWAY_IDS_KEY: &str = "chorus:gateways";

/// Lua: `now`, Redis's clock in milliseconds (scripts never use the
/// caller's clock, so gateways with skewed clocks agree).
macro_rules! now_lua {
    () => {
        "
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// Lua: removes the expired entries of KEYS[1] (conns) and counts them down
/// in KEYS[2] (users), collecting in `gone` each user who went offline
/// everywhere. Shared by the sweep and the refresh so the rule exists once.
macro_rules! sweep_lua {
    () => {
        "
local gone = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, m in ipairs(expired) do
  redis.call('ZREM', KEYS[1], m)
  local user = string.match(m, '^(.-)\\n')
  if user and redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
    redis.call('HDEL', KEYS[2], user)
    table.insert(gone, user)
  end
end
"
    };
}

/// Adds or refreshes an entry. KEYS: conns, users. ARGV: entry, user,
/// ttl_ms. Returns `{first, online}`: `first` is 1 when the user just came
/// online anywhere.
pub const JOIN_SCRIPT: &str = concat!(
    now_lua!(),
    r"
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
local first = 0
if added == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then first = 1 end
end
return {first, redis.call('HLEN', KEYS[2])}
"
);

/// Removes an entry. KEYS: conns, users. ARGV: entry, user. Returns
/// `{gone, online}`: `gone` is 1 when the user just went offline everywhere.
pub const LEAVE_SCRIPT: &str = r"
local gone = 0
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    gone = 1
  end
end
return {gone, redis.call('HLEN', KEYS[2])}
";

/// Removes expired entries. KEYS: conns, users. Returns `{online, user...}`
/// with the users who went offline everywhere; each is returned to exactly
/// one caller, which announces `user-left`.
pub const SWEEP_SCRIPT: &str = concat!(
    now_lua!(),
    sweep_lua!(),
    r"
table.insert(gone, 1, redis.call('HLEN', KEYS[2]))
return gone
"
);

/// Refreshes one gateway's entries of many users in one community and
/// sweeps the community's expired entries, in one call: what a gateway
/// runs every few seconds for each of its rooms. KEYS: conns, users. ARGV:
/// gateway, ttl_ms, user... Returns `{first, gone, online}`: the users
/// whose entry had expired and who came back online anywhere (announce
/// `user-joined`), the users of dead gateways who went offline everywhere
/// (announce `user-left`), and the online count.
pub const REFRESH_SCRIPT: &str = concat!(
    now_lua!(),
    r"
local first = {}
for i = 3, #ARGV do
  local e = ARGV[i] .. '\n' .. ARGV[1]
  if redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), e) == 1 then
    if redis.call('HINCRBY', KEYS[2], ARGV[i], 1) == 1 then table.insert(first, ARGV[i]) end
  end
end
",
    sweep_lua!(),
    r"
return {first, gone, redis.call('HLEN', KEYS[2])}
"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_share_the_clock_and_the_sweep_and_keep_lua_escapes() {
        for script in [JOIN_SCRIPT, SWEEP_SCRIPT, REFRESH_SCRIPT] {
            assert!(script.contains("redis.call('TIME')"));
        }
        for script in [SWEEP_SCRIPT, REFRESH_SCRIPT] {
            // Lua sees `\n` (an escape), never a raw line break in a string.
            assert!(script.contains(r"string.match(m, '^(.-)\n')"), "{script}");
            assert!(script.contains("ZRANGEBYSCORE"));
        }
        assert!(REFRESH_SCRIPT.contains(r"ARGV[i] .. '\n' .. ARGV[1]"));
    }
}
