//! The contract's WebSocket close codes, and the reason text sent with each.
//!
//! At the bottom of the gateway: the connection handle records the code a
//! connection is closing with, and everything above it (rooms, commands,
//! draining) only asks for one of these.

pub const NORMAL: u16 = 1000;
/// Origin not allowed, or the token expired.
pub const POLICY: u16 = 1008;
/// A message over the size limit.
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL: u16 = 1011;
/// The gateway is draining: reconnect elsewhere.
pub const DRAINING: u16 = 1012;
/// Persistently over the command rate limit.
pub const RATE_LIMITED: u16 = 4008;
/// The outbound queue filled up: the client is not reading fast enough.
pub const SLOW_CONSUMER: u16 = 4009;

/// How long a replay may wait for room in a connection's queue (the client
/// reads nothing) before the client counts as a slow consumer and is
/// closed with 4009, as a live event finding the queue full is at once.
pub const SLOW_CONSUMER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The metric label of a close code (a fixed set: codes from the wire never
/// become labels).
pub fn label(code: u16) -> &'static str {
    match code {
        NORMAL => "1000",
        POLICY => "1008",
        TOO_BIG => "1009",
        INTERNAL => "1011",
        DRAINING => "1012",
        RATE_LIMITED => "4008",
        SLOW_CONSUMER => "4009",
        _ => "other",
    }
}

/// Every label [`label`] gives.
pub const LABELS: &[&str] = &[
    "1000", "1008", "1009", "1011", "1012", "4008", "4009", "other",
];

/// The reason text of a close frame with `code`.
pub fn reason(code: u16) -> &'static str {
    match code {
        POLICY => "policy violation",
        TOO_BIG => "message too big",
        DRAINING => "gateway draining, reconnect",
        RATE_LIMITED => "rate limited",
        SLOW_CONSUMER => "slow consumer",
        INTERNAL => "internal error",
        _ => "",
    }
}
