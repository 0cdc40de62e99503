//! Configuration of `chorus-gateway` (the contract's configuration table)
//! and the named bounds every connection lives within.

use std::net::SocketAddr;
use std::time::Duration;

use chorus_shared::auth::JwtArgs;
use chorus_shared::config::{DEFAULT_REDIS_URL, LogArgs, burst, integer, rate};

/// Commands per connection per second (contract default).
pub const DEFAULT_WS_COMMAND_RATE: f64 = 20.0;
/// Command burst per connection (contract default).
pub const DEFAULT_WS_COMMAND_BURST: u32 = 40;

/// Events replayed at most on a `join-community` with `lastSeq` (contract).
pub const DEFAULT_RECOVERY_WINDOW: i64 = 1000;
/// Seconds a SIGTERM'd gateway spreads its reconnect closes over (contract).
pub const DEFAULT_DRAIN_SECONDS: u64 = 20;
/// Largest recovery window accepted: half of what one backfill request
/// returns, so a replay's window always fits in one fetch.
pub const MAX_RECOVERY_WINDOW: i64 = chorus_shared::protocol::MAX_EVENTS_PER_REQUEST / 2;
/// Longest drain accepted: Kubernetes' grace period must cover it, and an
/// hour is beyond any sensible one.
pub const MAX_DRAIN_SECONDS: u64 = 3600;
/// Largest outbound queue accepted: each slot is a pointer, but a queue
/// this deep already means seconds of backlog for a client.
pub const MAX_OUTBOUND_QUEUE: usize = 65_536;

/// Open connections one user may hold on one gateway (contract default):
/// far more tabs and devices than a person uses, few enough that one
/// account cannot multiply the per-connection limits by thousands.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: u32 = 32;

/// File descriptors kept out of `CHORUS_MAX_CONNECTIONS`'s default: the
/// Redis connections, the API client's pool (64 in flight plus idle ones),
/// the admin listener's scrapes and probes, logs, with room to spare.
pub const FD_RESERVE: u64 = 512;

/// Communities one connection may have joined at once. Far more than any
/// client shows; bounded because each join holds room state and presence
/// (officials may join every community). Not a configuration variable:
/// settable from code (tests) only.
pub const DEFAULT_MAX_JOINS_PER_CONNECTION: usize = 1000;

/// Frames a connection may have queued for sending while its socket
/// pushes back. A client that falls this far behind live traffic is
/// closed with 4009 rather than buffered without bound: 256 frames is
/// several seconds of a very busy room, far more than any reading client
/// lags, while bounded at ~256 pointers plus shared frame bytes. While the
/// socket takes frames and only the gateway is behind, the queue may hold
/// four times this (see `handle/queue.rs`).
pub const DEFAULT_OUTBOUND_QUEUE: usize = 256;

/// Interval of server WebSocket pings, also announced in `ready`. Below the
/// 60 s idle timeouts of common load balancers.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(25);
/// Shortest ping interval or idle timeout accepted, so a zero cannot make
/// writers spin.
pub const MIN_CONNECTION_TIMER: Duration = Duration::from_millis(10);
/// A connection that sends nothing (not even a pong) for this long is
/// closed: two missed heartbeats plus slack.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default bound on broadcasting presence: `user-joined` goes out while at
/// most this many are online with the joiner, `user-left` while fewer
/// than this stay; each costs a delivery per member.
pub const DEFAULT_PRESENCE_BROADCAST_LIMIT: u64 = 10_000;
/// How long a user stays present after their connection ended because the
/// gateway sent them elsewhere (a drain) or was lost with many others at
/// once (default; see `hub::linger`). Those clients come back, and a user
/// back within this long was never announced as gone: no `user-left` and
/// `user-joined` pair to the whole room per client. Ten seconds cover the
/// SDK's first four reconnect attempts (full-jitter backoff from 500 ms,
/// at most 7.5 s in all), a drain's reconnect (a hint of at most 2.5 s,
/// which the SDK's jitter at most doubles), and a storm's rejoins (20,000
/// clients over two gateways rejoined in about 6 s on the benchmark
/// machine; announcing each return is what made them take 17-22 s).
/// Short enough that a user who really went away leaves the list soon,
/// inside the 30 s the contract allows for a dead gateway's users.
pub const DEFAULT_PRESENCE_GRACE_MS: u64 = 10_000;
/// Longest presence grace accepted: the contract's bound for a dead
/// gateway's users, the slowest `user-left` it allows.
pub const MAX_PRESENCE_GRACE_MS: u64 = 30_000;
/// Connections lost (ended without the client's close frame) per second on
/// one gateway past which losses are held for the grace instead of
/// announced. Ordinary churn stays well below it (100,000 connections that
/// last an hour end at ~28 a second, most with a close frame); a network
/// failure, a load balancer's restart or a storm passes it within
/// milliseconds. Code-only: tests lower it to make every loss a mass one.
pub const DEFAULT_MASS_LOSS_PER_SECOND: u32 = 100;

/// How often a gateway reports itself for `/api/socket-status` (contract:
/// at least every 5 s), and how long a report stays valid.
pub const REGISTRY_INTERVAL: Duration = Duration::from_secs(4);
pub const REGISTRY_TTL: Duration = Duration::from_secs(15);

/// Lifetime of a gateway's presence heartbeat key, renewed with every
/// registry report: the registry's own TTL, so a gateway drops out of
/// presence and of `/api/socket-status` together. Its users go offline
/// at most this plus [`PRESENCE_REAP_INTERVAL`] after its death (contract:
/// within 30 s).
pub const DEFAULT_PRESENCE_LIVENESS_TTL: Duration = REGISTRY_TTL;
/// How often a gateway looks for dead gateways to reap (and renews its own
/// incarnation when needed): a few commands per gateway whatever the
/// number of users, and well inside the contract's 30 s with the TTL.
pub const PRESENCE_REAP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a reaper holds a dead incarnation: far longer than reaping
/// takes (one script per community, pipelined); a reaper that died
/// mid-way is taken over after it.
pub const PRESENCE_REAP_LOCK: Duration = Duration::from_secs(30);
/// Shortest heartbeat TTL accepted (tests shorten it to see a dead gateway
/// reaped quickly): below it, scheduling noise alone would lapse it.
pub const MIN_PRESENCE_LIVENESS_TTL: Duration = Duration::from_millis(300);

/// Timers of presence liveness, all derived from the heartbeat key's TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub ttl: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            ttl: DEFAULT_PRESENCE_LIVENESS_TTL,
        }
    }
}

impl Liveness {
    /// A liveness with `ttl`, at least [`MIN_PRESENCE_LIVENESS_TTL`].
    pub fn new(ttl: Duration) -> Self {
        Liveness {
            ttl: ttl.max(MIN_PRESENCE_LIVENESS_TTL),
        }
    }

    /// How often the heartbeat (with the registry report) is written:
    /// [`REGISTRY_INTERVAL`], or a third of a shortened TTL.
    pub fn heartbeat(&self) -> Duration {
        REGISTRY_INTERVAL.min(self.ttl / 3)
    }

    /// How often dead gateways are looked for.
    pub fn reap_interval(&self) -> Duration {
        PRESENCE_REAP_INTERVAL.min(self.ttl / 3)
    }

    /// How long after its last confirmed heartbeat an incarnation is still
    /// written to: two thirds of the TTL, so a write sent in time reaches
    /// Redis before the key can expire, with a third of the TTL to spare.
    pub fn trusted_for(&self) -> Duration {
        self.ttl * 2 / 3
    }
}

/// How often the Redis subscriber connection's health is judged (a closed
/// connection counts as dead within it), and how long a ping's answer may
/// take before the connection counts as dead.
pub const BACKPLANE_PING_INTERVAL: Duration = Duration::from_secs(1);
pub const BACKPLANE_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the subscriber may hear nothing before it is pinged: messages
/// received prove the connection, and each heartbeat (every 4 s) publishes
/// one to the gateway's own channel, so no gateway pings while its command
/// connection works (each ping woke Redis, whose idle cost is mostly
/// wake-ups); it pings every 5 s when the heartbeats fail. A connection that stays open but
/// silently stops delivering (half-open) is found within this plus
/// [`BACKPLANE_PING_TIMEOUT`]: 7 s, after which the reconnect's resync
/// recovers what it missed. On Redis Cluster every shard is still pinged
/// every [`BACKPLANE_PING_INTERVAL`], since one shard's messages prove
/// nothing of another's.
pub const BACKPLANE_QUIET_BEFORE_PING: Duration = Duration::from_secs(5);

/// `chorus-gateway` settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "chorus-gateway", version, about = "Chorus WebSocket gateway")]
pub struct GatewayArgs {
    /// Public WebSocket listener (path /ws).
    #[arg(long, env = "CHORUS_GATEWAY_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,
    /// Admin listener: /healthz, /readyz, /metrics.
    #[arg(long, env = "CHORUS_ADMIN_ADDR", default_value = "127.0.0.1:9091")]
    pub admin_addr: SocketAddr,
    /// The API's public listener: requests on a user's behalf.
    #[arg(long, env = "CHORUS_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,
    /// The API's admin listener: its /internal/* endpoints.
    #[arg(
        long,
        env = "CHORUS_API_INTERNAL_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub api_internal_url: String,
    /// Service token presented to the API's /internal/* endpoints.
    #[arg(long, env = "CHORUS_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: String,
    /// Redis backplane: `redis://host:port` for one Redis, or
    /// `redis-cluster://host:port?node=host:port&...` for a Redis Cluster
    /// (sharded pub/sub).
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// This gateway's id in /api/socket-status (default: hostname:port).
    #[arg(long, env = "CHORUS_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Comma-separated browser origins allowed to connect (unset: any).
    #[arg(long, env = "CHORUS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Most events replayed on a join with lastSeq.
    #[arg(
        long,
        env = "CHORUS_RECOVERY_WINDOW",
        default_value_t = DEFAULT_RECOVERY_WINDOW,
        value_parser = integer("CHORUS_RECOVERY_WINDOW", 0, MAX_RECOVERY_WINDOW)
    )]
    pub recovery_window: i64,
    /// Seconds to spread reconnect closes over when draining.
    #[arg(
        long,
        env = "CHORUS_DRAIN_SECONDS",
        default_value_t = DEFAULT_DRAIN_SECONDS,
        value_parser = integer("CHORUS_DRAIN_SECONDS", 0, MAX_DRAIN_SECONDS)
    )]
    pub drain_seconds: u64,
    /// Commands per connection per second; 0 turns every per-connection limit off.
    #[arg(
        long,
        env = "CHORUS_WS_COMMAND_RATE",
        default_value_t = DEFAULT_WS_COMMAND_RATE,
        value_parser = rate("CHORUS_WS_COMMAND_RATE")
    )]
    pub ws_command_rate: f64,
    /// Command burst per connection.
    #[arg(
        long,
        env = "CHORUS_WS_COMMAND_BURST",
        default_value_t = DEFAULT_WS_COMMAND_BURST,
        value_parser = burst("CHORUS_WS_COMMAND_BURST")
    )]
    pub ws_command_burst: u32,
    /// Presence broadcast bound: `user-joined` while at most this many are
    /// online with the joiner, `user-left` while fewer stay; 0 broadcasts
    /// neither.
    #[arg(
        long,
        env = "CHORUS_PRESENCE_BROADCAST_LIMIT",
        default_value_t = DEFAULT_PRESENCE_BROADCAST_LIMIT,
        value_parser = integer("CHORUS_PRESENCE_BROADCAST_LIMIT", 0, u64::MAX)
    )]
    pub presence_broadcast_limit: u64,
    /// Milliseconds a user stays present after a drain's close, or a
    /// connection lost with many others at once, so the reconnect announces
    /// nothing; 0 releases at once.
    #[arg(
        long,
        env = "CHORUS_PRESENCE_GRACE_MS",
        default_value_t = DEFAULT_PRESENCE_GRACE_MS,
        value_parser = integer("CHORUS_PRESENCE_GRACE_MS", 0_u64, MAX_PRESENCE_GRACE_MS)
    )]
    pub presence_grace_ms: u64,
    /// Lost connections per second past which they are held; code-only.
    #[arg(skip = DEFAULT_MASS_LOSS_PER_SECOND)]
    pub mass_loss_per_second: u32,
    /// Most open connections (WebSockets and requests not yet upgraded);
    /// upgrades past it get 503 (default: the open-file limit less a
    /// reserve).
    #[arg(
        long,
        env = "CHORUS_MAX_CONNECTIONS",
        value_parser = integer("CHORUS_MAX_CONNECTIONS", 1, u64::MAX)
    )]
    pub max_connections: Option<u64>,
    /// Open connections per user on this gateway; 0 turns the cap off.
    #[arg(
        long,
        env = "CHORUS_MAX_CONNECTIONS_PER_USER",
        default_value_t = DEFAULT_MAX_CONNECTIONS_PER_USER,
        value_parser = integer("CHORUS_MAX_CONNECTIONS_PER_USER", 0, u32::MAX)
    )]
    pub max_connections_per_user: u32,
    /// Frames a connection may have queued, while its client is not
    /// reading, before it is cut off with 4009 (four times that while only
    /// the gateway is behind).
    #[arg(
        long,
        env = "CHORUS_WS_OUTBOUND_QUEUE",
        default_value_t = DEFAULT_OUTBOUND_QUEUE,
        value_parser = integer("CHORUS_WS_OUTBOUND_QUEUE", 1, MAX_OUTBOUND_QUEUE)
    )]
    pub outbound_queue: usize,
    /// Interval of server WebSocket pings. Not a configuration variable (the
    /// contract fixes none); settable from code so tests need not wait 25 s.
    #[arg(skip = DEFAULT_HEARTBEAT)]
    pub heartbeat: Duration,
    /// How long a silent client is kept; code-only like `heartbeat`.
    #[arg(skip = DEFAULT_IDLE_TIMEOUT)]
    pub idle_timeout: Duration,
    /// Lifetime of the presence heartbeat in milliseconds. Not in the
    /// contract: tests shorten it to see a killed gateway reaped quickly.
    #[arg(
        long,
        env = "CHORUS_PRESENCE_LIVENESS_MS",
        hide = true,
        default_value_t = 15_000,
        value_parser = integer("CHORUS_PRESENCE_LIVENESS_MS", 300_u64, 600_000_u64)
    )]
    pub presence_liveness_ms: u64,
    /// Most communities one connection may be in; code-only.
    #[arg(skip = DEFAULT_MAX_JOINS_PER_CONNECTION)]
    pub max_joins: usize,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl GatewayArgs {
    /// `CHORUS_MAX_CONNECTIONS`, or what the process can open: its
    /// open-file limit (raised to the hard limit first) less
    /// [`FD_RESERVE`].
    pub fn effective_max_connections(&self) -> usize {
        match self.max_connections {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => chorus_shared::http::connection_budget(FD_RESERVE),
        }
    }

    /// The presence liveness timers.
    pub fn liveness(&self) -> Liveness {
        Liveness::new(Duration::from_millis(self.presence_liveness_ms))
    }

    /// The effective gateway id.
    pub fn id(&self, bound: SocketAddr) -> String {
        self.gateway_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "gateway".to_owned());
            format!("{host}:{}", bound.port())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<GatewayArgs, String> {
        let mut all = vec!["chorus-gateway", "--internal-token", "t"];
        all.extend_from_slice(args);
        GatewayArgs::try_parse_from(all).map_err(|e| e.to_string())
    }

    #[test]
    fn out_of_range_values_refuse_to_start_naming_the_variable() {
        for (flag, value, var) in [
            ("--recovery-window", "-1", "CHORUS_RECOVERY_WINDOW"),
            ("--ws-command-rate", "1e-30", "CHORUS_WS_COMMAND_RATE"),
            ("--ws-command-burst", "0", "CHORUS_WS_COMMAND_BURST"),
            ("--outbound-queue", "0", "CHORUS_WS_OUTBOUND_QUEUE"),
            ("--max-connections", "0", "CHORUS_MAX_CONNECTIONS"),
            ("--drain-seconds", "-5", "CHORUS_DRAIN_SECONDS"),
            (
                "--presence-broadcast-limit",
                "abc",
                "CHORUS_PRESENCE_BROADCAST_LIMIT",
            ),
        ] {
            let arg = format!("{flag}={value}");
            let err = parse(&[&arg]).expect_err(flag);
            assert!(err.contains(var), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn defaults_and_zero_rates_are_accepted() {
        let args = parse(&["--ws-command-rate", "0"]).expect("valid");
        assert_eq!(args.ws_command_rate, 0.0);
        assert_eq!(args.recovery_window, DEFAULT_RECOVERY_WINDOW);
        assert_eq!(
            args.max_connections_per_user,
            DEFAULT_MAX_CONNECTIONS_PER_USER
        );
        assert!(args.effective_max_connections() > 0);
    }
}
