//! The scenarios. Each one sets up its world through the API, connects
//! its clients (spread over worker processes and gateways), runs its
//! traffic while sampling every server process's costs, then checks that
//! every committed event reached every connection once and in order, and
//! turns the samples into figures per connection, per delivery and per
//! POST.
//!
//! Here: what every scenario shares (the world, connecting, a traffic
//! phase, verification); `figures.rs` turns costs into figures,
//! `steady.rs` holds the steady-traffic scenarios (idle, fanout and chat,
//! throughput, soak) and `faults.rs` those that break something (a
//! reconnect storm, chaos).

mod faults;
mod figures;
mod steady;

pub use faults::{Fault, chaos, storm};
pub use steady::{idle, soak, throughput, traffic_scenario};

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::client::Stats;
use crate::client::{ClientSpec, Proto};
use crate::fleet::Fleet;
use crate::floor::Floor;
use crate::group::{Drive, Expect, GroupSpec, Report};
use crate::outcome::{self, Bound, Figure, Outcome, Phase, Verdict};
use crate::poster::{Posted, Poster};
use crate::procs::{self, Delta, Sample, Watched};
use crate::setup::{self, World};

/// Connections per worker process: well under the 20,000 open files one
/// process may hold, and under the ~28,000 ephemeral ports of one source
/// address.
pub const CONNECTIONS_PER_WORKER: usize = 8_000;
/// How long connecting may take before the run gives up on stragglers.
pub(super) const CONNECT_DEADLINE: Duration = Duration::from_secs(180);
/// How long verification waits for the last events to arrive.
pub(super) const VERIFY_TIMEOUT: Duration = Duration::from_secs(20);
/// Quiet, for a gateway after the joins: under a tenth of a core (an idle
/// gateway with 10,000 connections uses about 1 %).
pub(super) const QUIET_CORE_SHARE: f64 = 0.10;
/// The window the gateways' CPU is averaged over (five `/proc` ticks).
pub(super) const QUIESCE_WINDOW: Duration = Duration::from_millis(500);
/// Longest wait for the gateways to quiet down after the joins.
pub(super) const QUIESCE_MAX: Duration = Duration::from_secs(30);
/// A traffic phase ends once no delivery arrived for this long (worker
/// processes report progress every 200 ms)...
pub(super) const SETTLE_QUIET: Duration = Duration::from_millis(500);
/// ...or after this long, whatever is still arriving.
pub(super) const SETTLE_MAX: Duration = Duration::from_secs(10);
/// A phase during which the machine was busier than this is flagged: the
/// figures then include queueing for a CPU.
pub(super) const SATURATED: f64 = 0.90;

/// What every scenario is told.
#[derive(Debug, Clone)]
pub struct Common {
    pub proto: Proto,
    /// Gateway base URLs (`ws://host:port`).
    pub gateways: Vec<String>,
    pub api: String,
    pub secret: String,
    pub watch: Vec<Watched>,
    /// Worker processes; 0 runs the clients in this process.
    pub workers: usize,
    /// The `chorus-loadtest` executable for workers (this one when `None`).
    pub worker_exe: Option<std::path::PathBuf>,
    /// Gateway admin `/metrics` URLs (for backfill counts).
    pub gateway_metrics: Vec<String>,
    pub content_len: usize,
    pub floor: Option<Floor>,
    pub progress: MultiProgress,
    /// Names this run's users and communities apart from earlier runs.
    pub run: String,
    /// Whether to hold the run to the targets of the issue (only for the
    /// full-size runs; smoke runs have none).
    pub targets: bool,
    /// Which gateway each client connects to.
    pub placement: Placement,
}

/// How clients are spread over the gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Placement {
    /// Round-robin by user: every room has members on every gateway, so
    /// every gateway hears every room's events.
    #[default]
    Spread,
    /// A room's members all on one gateway (rooms round-robin): a gateway
    /// hears only its own rooms, which shows what a gateway that holds no
    /// member of a room costs (nothing, with sharded subscriptions).
    ByRoom,
}

impl Common {
    pub(super) fn label(&self) -> String {
        match self.proto {
            Proto::Chorus => "chorus".into(),
            Proto::Socketio => format!("socket.io peer at {}", self.api),
        }
    }

    pub(super) fn bar(&self, len: u64, msg: &str) -> ProgressBar {
        let b = self.progress.add(ProgressBar::new(len));
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_message(msg.to_owned());
        b
    }

    pub(super) fn sample(&self, fleet: Option<&Fleet>) -> Sample {
        let clients = fleet.map(Fleet::pids).unwrap_or_default();
        procs::sample(&self.watch, &clients)
    }

    pub(super) fn target(&self, t: f64) -> Option<Bound> {
        (self.targets && self.proto == Proto::Chorus).then_some(Bound::AtMost(t))
    }
}

/// A connected world: users in rooms, every user connected once.
pub(super) struct Setup {
    pub world: World,
    pub fleet: Fleet,
    pub connect: Phase,
    pub connected: u64,
}

/// Creates the world and connects one client per user, each joined to its
/// one room, spread over gateways round-robin and over workers by block.
pub(super) async fn connect(c: &Common, users: usize, room_size: usize) -> anyhow::Result<Setup> {
    let bar = c.bar(0, "setting up");
    let world = setup::world(c.proto, &c.api, &c.secret, &c.run, users, room_size, &bar).await?;
    bar.finish_and_clear();
    flush_page_cache().await;
    let gateways = c.gateways.len().max(1);
    let clients: Vec<ClientSpec> = world
        .rooms
        .iter()
        .enumerate()
        .flat_map(|(r, room)| room.members.iter().map(move |m| (r, room.id.clone(), *m)))
        .map(|(r, room, m)| ClientSpec {
            user: world.users[m].id.clone(),
            token: world.users[m].token.clone(),
            communities: vec![room],
            gateway: match c.placement {
                Placement::Spread => m % gateways,
                Placement::ByRoom => r % gateways,
            },
        })
        .collect();
    let groups = if c.workers == 0 { 1 } else { c.workers };
    let per = clients.len().div_ceil(groups).max(1);
    let specs: Vec<GroupSpec> = clients
        .chunks(per)
        .enumerate()
        .map(|(i, chunk)| GroupSpec {
            proto: c.proto,
            ws_urls: c.gateways.clone(),
            api_url: c.api.clone(),
            // 127.0.0.2, .3, ...: each worker its own source address (the
            // command line allows at most 250 workers).
            local_addr: (c.workers > 0)
                .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8))),
            clients: chunk.to_vec(),
        })
        .collect();
    let before = c.sample(None);
    let started = Instant::now();
    let fleet = Fleet::start(specs, c.workers > 0, c.worker_exe.as_deref()).await?;
    let bar = c.bar(users as u64, "connecting and joining");
    let deadline = started + CONNECT_DEADLINE;
    loop {
        let p = fleet.progress();
        bar.set_position(p.joined);
        if p.joined + p.failed >= users as u64 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    // Joins leave work behind (Chorus announces each join to the room:
    // a room of 500 filling up is 125,000 `user-joined` frames); the
    // connect phase ends, and the measured ones start, once the gateways
    // are quiet again.
    quiesce(c).await;
    flush_page_cache().await;
    let after = c.sample(Some(&fleet));
    let connected = fleet.progress().joined;
    Ok(Setup {
        world,
        connect: Phase {
            name: "connect + join".into(),
            seconds: started.elapsed().as_secs_f64(),
            cost: procs::delta(&before, &after),
            deliveries: 0,
        },
        fleet,
        connected,
    })
}

/// Writes the machine's dirty page cache out now (`sync`), so that the
/// setup's writes are not written back in a measured phase: the kernel
/// writes dirty pages back about 30 s after they were dirtied, and with
/// everything on one disk that write-back held Postgres's WAL flushes,
/// and so every POST, for up to half a second. A no-op for servers on
/// other machines. A failure (no `sync` on the path) only loses the
/// flush, so it is not reported.
pub(super) async fn flush_page_cache() {
    let _ = tokio::process::Command::new("sync").status().await;
}

/// Waits (at most [`QUIESCE_MAX`]) until the gateways use less than
/// [`QUIET_CORE_SHARE`] of a core each over [`QUIESCE_WINDOW`].
pub(super) async fn quiesce(c: &Common) {
    let gateways = c.watch.iter().filter(|w| w.role == "gateway").count();
    if gateways == 0 {
        return;
    }
    let deadline = Instant::now() + QUIESCE_MAX;
    let mut before = c.sample(None);
    while Instant::now() < deadline {
        tokio::time::sleep(QUIESCE_WINDOW).await;
        let now = c.sample(None);
        let used = procs::delta(&before, &now).cpu("gateway") / QUIESCE_WINDOW.as_secs_f64();
        if used < QUIET_CORE_SHARE * gateways as f64 {
            return;
        }
        before = now;
    }
}

/// What was committed, for verification.
pub(super) async fn expect(c: &Common, world: &World, posted: &Posted) -> anyhow::Result<Expect> {
    let heads = match c.proto {
        Proto::Chorus => setup::heads(&c.api, world).await?,
        Proto::Socketio => Default::default(),
    };
    Ok(Expect {
        heads,
        posts: posted.posts.clone(),
        timeout_ms: VERIFY_TIMEOUT.as_millis() as u64,
    })
}

/// A measured traffic phase: posts at `rate` for `seconds` while the
/// groups drive `drive`.
pub(super) async fn traffic(
    c: &Common,
    s: &mut Setup,
    poster: &Poster,
    rate: f64,
    seconds: f64,
    drive: Option<Drive>,
    name: &str,
) -> anyhow::Result<(Posted, Phase)> {
    let bar = c.bar((rate * seconds) as u64, name);
    let deliveries_before = s.fleet.progress().deliveries;
    let before = c.sample(Some(&s.fleet));
    let started = Instant::now();
    let world = &s.world;
    let post = poster.run(world, rate, seconds, |n| bar.set_position(n));
    let posted = match drive {
        Some(d) => {
            let (p, dr) = tokio::join!(post, s.fleet.drive(d));
            dr?;
            p
        }
        None => post.await,
    };
    // The phase closes once deliveries stop arriving (bounded), so the CPU
    // sample covers every delivery it is divided by.
    let mut seen = s.fleet.progress().deliveries;
    let settle_by = Instant::now() + SETTLE_MAX;
    loop {
        tokio::time::sleep(SETTLE_QUIET).await;
        let now = s.fleet.progress().deliveries;
        if now == seen || Instant::now() >= settle_by {
            break;
        }
        seen = now;
    }
    let after = c.sample(Some(&s.fleet));
    bar.finish_and_clear();
    Ok((
        posted,
        Phase {
            name: name.into(),
            seconds: started.elapsed().as_secs_f64(),
            cost: procs::delta(&before, &after),
            deliveries: seen - deliveries_before,
        },
    ))
}
