//! Configuration of `chorus-gateway` (the contract's configuration table)
//! and the named bounds every connection lives within.

use std::net::SocketAddr;
use std::time::Duration;

use chorus_shared::auth::JwtArgs;
use chorus_shared::config::{DEFAULT_REDIS_URL, LogArgs};

/// Commands per connection per second (contract default).
pub const DEFAULT_WS_COMMAND_RATE: f64 = 20.0;
/// Command burst per connection (contract default).
pub const DEFAULT_WS_COMMAND_BURST: u32 = 40;

/// Events replayed at most on a `join-community` with `lastSeq` (contract).
pub const DEFAULT_RECOVERY_WINDOW: i64 = 1000;
/// Seconds a SIGTERM'd gateway spreads its reconnect closes over (contract).
pub const DEFAULT_DRAIN_SECONDS: u64 = 20;

/// Frames a connection may have queued for sending. A client that falls
/// this far behind live traffic is closed with 4009 rather than buffered
/// without bound: 256 frames is several seconds of a very busy room, far
/// more than any reading client lags, while bounded at ~256 pointers plus
/// shared frame bytes.
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

/// Online count above which `user-joined`/`user-left` are no longer
/// broadcast: each change costs O(members) deliveries (default).
pub const DEFAULT_PRESENCE_BROADCAST_LIMIT: u64 = 10_000;
/// Presence entries expire this long after their gateway's last refresh
/// (contract: a dead gateway's users leave within 30 s).
pub const PRESENCE_TTL: Duration = Duration::from_secs(25);
/// How often a gateway refreshes its presence entries and sweeps expired
/// ones of its communities.
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(5);
/// How often a gateway reports itself for `/api/socket-status` (contract:
/// at least every 5 s), and how long a report stays valid.
pub const REGISTRY_INTERVAL: Duration = Duration::from_secs(4);
pub const REGISTRY_TTL: Duration = Duration::from_secs(15);

/// How often the Redis subscriber connection is pinged, and how long an
/// answer may take before the connection counts as dead.
pub const BACKPLANE_PING_INTERVAL: Duration = Duration::from_secs(1);
pub const BACKPLANE_PING_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Redis backplane URL.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// This gateway's id in /api/socket-status (default: hostname:port).
    #[arg(long, env = "CHORUS_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Comma-separated browser origins allowed to connect (unset: any).
    #[arg(long, env = "CHORUS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Most events replayed on a join with lastSeq.
    #[arg(long, env = "CHORUS_RECOVERY_WINDOW", default_value_t = DEFAULT_RECOVERY_WINDOW)]
    pub recovery_window: i64,
    /// Seconds to spread reconnect closes over when draining.
    #[arg(long, env = "CHORUS_DRAIN_SECONDS", default_value_t = DEFAULT_DRAIN_SECONDS)]
    pub drain_seconds: u64,
    /// Commands per connection per second; 0 turns every per-connection limit off.
    #[arg(long, env = "CHORUS_WS_COMMAND_RATE", default_value_t = DEFAULT_WS_COMMAND_RATE)]
    pub ws_command_rate: f64,
    /// Command burst per connection.
    #[arg(long, env = "CHORUS_WS_COMMAND_BURST", default_value_t = DEFAULT_WS_COMMAND_BURST)]
    pub ws_command_burst: u32,
    /// Online count above which join/leave presence events are not broadcast.
    #[arg(long, env = "CHORUS_PRESENCE_BROADCAST_LIMIT", default_value_t = DEFAULT_PRESENCE_BROADCAST_LIMIT)]
    pub presence_broadcast_limit: u64,
    /// Frames a connection may have queued before it is cut off with 4009.
    #[arg(long, env = "CHORUS_WS_OUTBOUND_QUEUE", default_value_t = DEFAULT_OUTBOUND_QUEUE)]
    pub outbound_queue: usize,
    /// Interval of server WebSocket pings. Not a configuration variable (the
    /// contract fixes none); settable from code so tests need not wait 25 s.
    #[arg(skip = DEFAULT_HEARTBEAT)]
    pub heartbeat: Duration,
    /// How long a silent client is kept; code-only like `heartbeat`.
    #[arg(skip = DEFAULT_IDLE_TIMEOUT)]
    pub idle_timeout: Duration,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl GatewayArgs {
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
