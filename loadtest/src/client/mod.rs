//! Load clients: one task per WebSocket connection, speaking either
//! Chorus's contract ([`chorus`]) or the Socket.IO protocol of the peers
//! ([`socketio`]), and the per-connection bookkeeping that turns what
//! arrived into a verdict (lost, duplicated, out of order) and a latency.
//!
//! Every posted message carries a marker in its content: the wall-clock
//! microsecond it was sent and a per-community post number, so latency is
//! measured from the POST's start to receipt (the same way for every
//! target) and peers, which have no sequence numbers, are verified by post
//! number instead.

pub mod chorus;
pub mod life;
pub mod socketio;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};

use crate::hist::Histogram;

/// Which server the clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Proto {
    /// Chorus's wire contract (JSON frames on `/ws`).
    Chorus,
    /// Socket.IO v4 over WebSocket, as the peers in `../shared/peers` speak.
    Socketio,
}

/// One connection to open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSpec {
    pub user: String,
    pub token: String,
    pub communities: Vec<String>,
    /// Index into the gateway URLs of its first connection.
    pub gateway: usize,
}

/// Marker prefix of every posted message's content.
const MARK: &str = "lt ";

/// Kinds of reconnect reasons counted apart per group; the rest count as
/// "other". Kinds are few (close codes, timeouts), so this only bounds a
/// surprise such as errors that carry an address.
const MAX_REASONS: usize = 16;

/// The content of post number `k`, sent at `sent_us`, padded to `len`.
pub fn content(sent_us: u64, k: u64, len: usize) -> String {
    let mut s = format!("{MARK}{sent_us} {k} ");
    while s.len() < len {
        s.push('x');
    }
    s
}

/// `(sent_us, k)` of a posted message's content.
pub fn parse_content(s: &str) -> Option<(u64, u64)> {
    let mut it = s.strip_prefix(MARK)?.split(' ');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Wall clock in microseconds since the epoch (shared by every worker
/// process on the machine, so send and receive times compare).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Microseconds since the epoch of an RFC 3339 UTC timestamp as both
/// Chorus and the peers write `createdAt` (`2026-11-26T05:54:42.123Z`,
/// fraction optional).
pub fn parse_created_at(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut frac_us = 0i64;
    if b[19] == b'.' {
        let digits: String = s[20..].chars().take_while(char::is_ascii_digit).collect();
        let padded = format!("{digits:0<6}");
        frac_us = padded.get(..6)?.parse().ok()?;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000 + frac_us).ok()
}

/// What one connection saw of one community.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomTrack {
    /// Highest seq delivered in order (Chorus).
    pub last_seq: i64,
    /// Post numbers seen (peers), as a bitset.
    pub seen: Vec<u64>,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Seqs skipped over by a later one (a gap the server let through).
    pub gaps: u64,
    /// Events recovered by paging the HTTP history after `recovered: false`.
    pub from_history: u64,
    /// Events replayed by a `join-community` with `lastSeq`.
    pub replayed: u64,
}

impl RoomTrack {
    /// Records sequenced event `seq`; true when it is new and in order.
    pub fn on_seq(&mut self, seq: i64) -> bool {
        if seq <= self.last_seq {
            if seq == self.last_seq {
                self.duplicates += 1;
            } else {
                self.out_of_order += 1;
            }
            return false;
        }
        if seq > self.last_seq + 1 {
            self.gaps += (seq - self.last_seq - 1) as u64;
        }
        self.last_seq = seq;
        self.received += 1;
        true
    }

    /// Records post number `k` (peers: no seqs); true when new.
    pub fn on_post(&mut self, k: u64) -> bool {
        let (w, b) = ((k / 64) as usize, k % 64);
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        if self.seen[w] & (1 << b) != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[w] |= 1 << b;
        self.received += 1;
        true
    }

    /// Number of distinct post numbers seen.
    pub fn distinct_posts(&self) -> u64 {
        self.seen.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// Shared state of one connection: its rooms and whether it is joined.
#[derive(Debug, Default)]
pub struct ConnState {
    pub rooms: HashMap<String, RoomTrack>,
    /// Joined every community (since the last (re)connect).
    pub joined: bool,
    /// Dropped by a storm and not yet joined again.
    pub stormed: bool,
    pub reconnects: u64,
    pub failed: Option<String>,
}

/// Latency and counters shared by every connection of a group.
#[derive(Debug, Default)]
pub struct Shared {
    stats: Mutex<Stats>,
    pub deliveries: AtomicU64,
    pub joined: AtomicU64,
    /// Connections joined again after a storm.
    pub rejoined: AtomicU64,
    pub typing: AtomicU64,
    /// `send-message` commands acked, and answered with an error.
    pub sends_acked: AtomicU64,
    pub send_errors: AtomicU64,
    /// Why sessions ended in an error (then reconnected), by kind.
    reconnect_reasons: Mutex<BTreeMap<String, u64>>,
}

/// Latencies, overall and per wall-clock second.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// POST start → receipt, µs, live events only.
    pub latency: Histogram,
    /// The same per wall-clock second (unix seconds).
    pub series: BTreeMap<u64, Histogram>,
    /// The message's `createdAt` (its transaction's start, millisecond
    /// resolution) → receipt, µs: the server side of the latency, without
    /// the client's HTTP request.
    pub from_commit: Histogram,
    /// Connect (TCP + upgrade + ready) and join round trips, µs.
    pub connect: Histogram,
    pub join: Histogram,
}

impl Shared {
    /// Counts a session that ended in an error of `kind`; past
    /// [`MAX_REASONS`] kinds, under "other".
    pub fn reconnect_reason(&self, kind: String) {
        let mut reasons = self
            .reconnect_reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let kind = if reasons.len() < MAX_REASONS || reasons.contains_key(&kind) {
            kind
        } else {
            "other".into()
        };
        *reasons.entry(kind).or_default() += 1;
    }

    pub fn reconnect_reasons(&self) -> BTreeMap<String, u64> {
        self.reconnect_reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a live delivery of a message posted at `sent_us` and
    /// created at `created_us`.
    pub fn delivered(&self, sent_us: u64, created_us: Option<u64>) {
        let now = now_us();
        let lat = now.saturating_sub(sent_us);
        let mut s = self.stats();
        s.latency.record(lat);
        s.series.entry(now / 1_000_000).or_default().record(lat);
        if let Some(c) = created_us {
            s.from_commit.record(now.saturating_sub(c));
        }
    }
}

/// How a connection finds its servers and what it does there.
#[derive(Debug, Clone)]
pub struct Env {
    pub proto: Proto,
    pub ws_urls: Arc<Vec<String>>,
    pub api_url: Arc<String>,
    pub local_addr: Option<IpAddr>,
    pub http: reqwest::Client,
}

/// Bound on a TCP connect plus WebSocket upgrade plus the first frame.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one request's answer (a join ack, a history page).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a TCP connection to `url`'s host, from `local` when given (so
/// several worker processes spread over 127.0.0.x source addresses).
pub async fn tcp(url: &str, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| std::io::Error::other(format!("bad url {url}")))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addr = tokio::net::lookup_host(hostport)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("no address for {hostport}")))?;
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = local {
        // The port is chosen at connect, where only the 4-tuple must be
        // free: a storm's dropped connections sit in TIME_WAIT on this side
        // (it closed first), and a port chosen at bind must be held by none
        // of them, a search that grows long (the load tool's own CPU) and
        // then fails (`EADDRINUSE`: a reconnect the servers never saw).
        #[cfg(target_os = "linux")]
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
            .map_err(std::io::Error::from)?;
        sock.bind((ip, 0).into())?;
    }
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Commands a group gives all its connections at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Control {
    /// Bumped to make every connection drop and rejoin with `lastSeq`.
    pub storm: u64,
    /// Close and stop.
    pub quit: bool,
}

/// Full-jitter backoff between reconnects: 50 ms doubling to 2 s.
pub fn backoff(attempt: u32) -> Duration {
    let cap = 50u64.saturating_mul(1 << attempt.min(6)).min(2_000);
    let jitter = (now_us() % 1000) * cap / 1000;
    Duration::from_millis(jitter.max(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trips_at_fixed_length() {
        let c = content(1_700_000_000_123_456, 42, 100);
        assert_eq!(c.len(), 100);
        assert_eq!(parse_content(&c), Some((1_700_000_000_123_456, 42)));
        assert_eq!(parse_content("hello"), None);
    }

    #[test]
    fn created_at_parses_as_the_servers_write_it() {
        assert_eq!(parse_created_at("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_created_at("2026-11-26T05:54:42.123Z"),
            Some(1_795_672_482_123_000)
        );
        assert_eq!(
            parse_created_at("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000)
        );
        assert_eq!(parse_created_at("yesterday"), None);
    }

    #[test]
    fn seq_tracking_counts_each_fault() {
        let mut t = RoomTrack::default();
        assert!(t.on_seq(1));
        assert!(t.on_seq(2));
        assert!(!t.on_seq(2));
        assert!(t.on_seq(5));
        assert!(!t.on_seq(4));
        assert_eq!(
            (t.received, t.duplicates, t.gaps, t.out_of_order),
            (3, 1, 2, 1)
        );
        let mut p = RoomTrack::default();
        assert!(p.on_post(3) && p.on_post(200) && !p.on_post(3));
        assert_eq!((p.distinct_posts(), p.duplicates), (2, 1));
    }
}
