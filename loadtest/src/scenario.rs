//! The scenarios. Each one sets up its world through the API, connects
//! its clients (spread over worker processes and gateways), runs its
//! traffic while sampling every server process's costs, then checks that
//! every committed event reached every connection once and in order, and
//! turns the samples into figures per connection, per delivery and per
//! POST.

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
const CONNECT_DEADLINE: Duration = Duration::from_secs(180);
/// How long verification waits for the last events to arrive.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(20);
/// Quiet, for a gateway after the joins: under a tenth of a core (an idle
/// gateway with 10,000 connections uses about 1 %).
const QUIET_CORE_SHARE: f64 = 0.10;
/// The window the gateways' CPU is averaged over (five `/proc` ticks).
const QUIESCE_WINDOW: Duration = Duration::from_millis(500);
/// Longest wait for the gateways to quiet down after the joins.
const QUIESCE_MAX: Duration = Duration::from_secs(30);
/// A traffic phase ends once no delivery arrived for this long (worker
/// processes report progress every 200 ms)...
const SETTLE_QUIET: Duration = Duration::from_millis(500);
/// ...or after this long, whatever is still arriving.
const SETTLE_MAX: Duration = Duration::from_secs(10);
/// A phase during which the machine was busier than this is flagged: the
/// figures then include queueing for a CPU.
const SATURATED: f64 = 0.90;

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
}

impl Common {
    fn label(&self) -> String {
        match self.proto {
            Proto::Chorus => "chorus".into(),
            Proto::Socketio => format!("socket.io peer at {}", self.api),
        }
    }

    fn bar(&self, len: u64, msg: &str) -> ProgressBar {
        let b = self.progress.add(ProgressBar::new(len));
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_message(msg.to_owned());
        b
    }

    fn sample(&self, fleet: Option<&Fleet>) -> Sample {
        let clients = fleet.map(Fleet::pids).unwrap_or_default();
        procs::sample(&self.watch, &clients)
    }

    fn target(&self, t: f64) -> Option<Bound> {
        (self.targets && self.proto == Proto::Chorus).then_some(Bound::AtMost(t))
    }
}

/// A connected world: users in rooms, every user connected once.
struct Setup {
    world: World,
    fleet: Fleet,
    connect: Phase,
    connected: u64,
}

/// Creates the world and connects one client per user, each joined to its
/// one room, spread over gateways round-robin and over workers by block.
async fn connect(c: &Common, users: usize, room_size: usize) -> anyhow::Result<Setup> {
    let bar = c.bar(0, "setting up");
    let world = setup::world(c.proto, &c.api, &c.secret, &c.run, users, room_size, &bar).await?;
    bar.finish_and_clear();
    let clients: Vec<ClientSpec> = world
        .rooms
        .iter()
        .flat_map(|room| room.members.iter().map(move |m| (room.id.clone(), *m)))
        .map(|(room, m)| ClientSpec {
            user: world.users[m].id.clone(),
            token: world.users[m].token.clone(),
            communities: vec![room],
            gateway: m % c.gateways.len().max(1),
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

/// Waits (at most [`QUIESCE_MAX`]) until the gateways use less than
/// [`QUIET_CORE_SHARE`] of a core each over [`QUIESCE_WINDOW`].
async fn quiesce(c: &Common) {
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
async fn expect(c: &Common, world: &World, posted: &Posted) -> anyhow::Result<Expect> {
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
async fn traffic(
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

fn per(cost_s: f64, n: f64) -> f64 {
    if n > 0.0 { cost_s * 1e6 / n } else { 0.0 }
}

fn fig(name: &str, value: f64, unit: &'static str, target: Option<Bound>) -> Figure {
    Figure {
        name: name.into(),
        value,
        unit,
        target,
    }
}

fn saturation(phase: &Phase, warnings: &mut Vec<String>) {
    if phase.cost.machine_busy > SATURATED {
        warnings.push(format!(
            "the machine was {:.0} % busy during {}: figures include waiting for a CPU",
            phase.cost.machine_busy * 100.0,
            phase.name
        ));
    }
}

/// Connect + join costs per connection.
fn connect_figures(c: &Common, s: &Setup, figures: &mut Vec<Figure>) {
    let n = s.connected as f64;
    let d = &s.connect.cost;
    let servers = d.cpu("gateway") + d.cpu("api") + d.cpu("postgres") + d.cpu("redis");
    figures.push(fig(
        "gateway CPU per connect + auth + join",
        per(d.cpu("gateway"), n),
        "µs",
        None,
    ));
    figures.push(fig(
        "all servers' CPU per connect + join (gateway, API, Postgres, Redis)",
        per(servers, n),
        "µs",
        c.target(100.0),
    ));
}

/// Per-delivery and per-POST costs of a traffic phase.
/// `sends` is the `send-message`s acked in the phase: messages created
/// through a gateway cost the API and Postgres like POSTs.
fn traffic_figures(
    c: &Common,
    phase: &Phase,
    posted: &Posted,
    sends: u64,
    figures: &mut Vec<Figure>,
    per_delivery_target: Option<f64>,
) {
    let d: &Delta = &phase.cost;
    let dl = phase.deliveries as f64;
    let posts = (posted.ok + sends) as f64;
    figures.push(fig("deliveries per second", dl / phase.seconds, "/s", None));
    let gw = per(d.cpu("gateway"), dl);
    figures.push(fig(
        "gateway CPU per delivered message",
        gw,
        "µs",
        per_delivery_target.and_then(|t| c.target(t)),
    ));
    if let Some(f) = c.floor {
        figures.push(fig(
            "  … as a multiple of one loopback frame write",
            gw / f.write_us,
            "×",
            c.target(1.5),
        ));
    }
    figures.push(fig(
        "API CPU per POST",
        per(d.cpu("api"), posts),
        "µs",
        c.target(150.0),
    ));
    figures.push(fig(
        "Postgres CPU per POST",
        per(d.cpu("postgres"), posts),
        "µs",
        c.target(300.0),
    ));
    figures.push(fig(
        "Redis CPU per POST",
        per(d.cpu("redis"), posts),
        "µs",
        None,
    ));
    figures.push(fig(
        "write path CPU per POST (API + Postgres + Redis)",
        per(d.cpu("api") + d.cpu("postgres") + d.cpu("redis"), posts),
        "µs",
        None,
    ));
    figures.push(fig(
        "POST latency p50",
        posted.latency.quantile(0.5) as f64 / 1000.0,
        "ms",
        None,
    ));
    figures.push(fig(
        "POST latency p99",
        posted.latency.quantile(0.99) as f64 / 1000.0,
        "ms",
        None,
    ));
    figures.push(fig(
        "machine busy (share of all cores)",
        d.machine_busy * 100.0,
        "%",
        None,
    ));
    figures.push(fig(
        "load tool's own CPU share of the phase",
        per(d.cpu("client"), 1.0) / 1e6 / phase.seconds * 100.0,
        "% core",
        None,
    ));
}

/// Latency from the POST's start (every target, µs precision) and from
/// the message's `createdAt` (ms precision: the server's side alone, which
/// the targets are set for).
fn latency_figures(
    stats: &Stats,
    figures: &mut Vec<Figure>,
    p50: Option<Bound>,
    p99: Option<Bound>,
) {
    let ms = |us: u64| us as f64 / 1000.0;
    let h = &stats.latency;
    figures.push(fig(
        "POST → delivery latency p50",
        ms(h.quantile(0.5)),
        "ms",
        None,
    ));
    figures.push(fig(
        "POST → delivery latency p99",
        ms(h.quantile(0.99)),
        "ms",
        None,
    ));
    figures.push(fig("POST → delivery latency max", ms(h.max()), "ms", None));
    let c = &stats.from_commit;
    if c.count() > 0 {
        figures.push(fig(
            "createdAt → delivery latency p50",
            ms(c.quantile(0.5)),
            "ms",
            p50,
        ));
        figures.push(fig(
            "createdAt → delivery latency p99",
            ms(c.quantile(0.99)),
            "ms",
            p99,
        ));
    }
}

fn outcome(
    c: &Common,
    scenario: &str,
    figures: Vec<Figure>,
    report: &Report,
    posted: &Posted,
    phases: Vec<Phase>,
    notes: Vec<String>,
) -> Outcome {
    let mut warnings = Vec::new();
    for p in &phases {
        saturation(p, &mut warnings);
    }
    if posted.late > 0 {
        warnings.push(format!(
            "{} POSTs started over 10 ms late: the API did not keep up with the offered rate",
            posted.late
        ));
    }
    Outcome {
        scenario: scenario.into(),
        target: c.label(),
        figures,
        verdict: Verdict::from_report(
            report,
            posted.errors,
            posted.first_error.clone(),
            c.proto == Proto::Chorus,
        ),
        phases,
        series: outcome::points(&report.stats.series),
        percentiles: outcome::percentiles(&report.stats.latency),
        warnings,
        notes,
    }
}

/// `idle`: N joined connections; what they cost to open and to hold.
pub async fn idle(
    c: &Common,
    users: usize,
    room_size: usize,
    idle_s: f64,
) -> anyhow::Result<Outcome> {
    let mut s = connect(c, users, room_size).await?;
    let bar = c.bar(idle_s as u64, "idling");
    let before = c.sample(Some(&s.fleet));
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < idle_s {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.set_position(started.elapsed().as_secs());
    }
    let after = c.sample(Some(&s.fleet));
    bar.finish_and_clear();
    let idle = Phase {
        name: "idle".into(),
        seconds: started.elapsed().as_secs_f64(),
        cost: procs::delta(&before, &after),
        deliveries: 0,
    };
    let n = s.connected as f64;
    let mut figures = vec![fig("connections joined", n, "", None)];
    let rss_growth: i64 = s
        .connect
        .cost
        .rss_growth_kib
        .get("gateway")
        .copied()
        .unwrap_or(0)
        + idle
            .cost
            .rss_growth_kib
            .get("gateway")
            .copied()
            .unwrap_or(0);
    figures.push(fig(
        "gateway RSS per idle joined connection",
        rss_growth as f64 / n.max(1.0),
        "KiB",
        c.target(4.0),
    ));
    connect_figures(c, &s, &mut figures);
    let pct = |role: &str| idle.cost.cpu(role) / idle.seconds * 100.0;
    figures.push(fig(
        "Redis CPU while idle",
        pct("redis"),
        "% core",
        c.target(0.5),
    ));
    figures.push(fig(
        "gateways' CPU while idle",
        pct("gateway"),
        "% core",
        None,
    ));
    figures.push(fig("API CPU while idle", pct("api"), "% core", None));
    figures.push(fig(
        "Postgres CPU while idle",
        pct("postgres"),
        "% core",
        None,
    ));
    let posted = Posted::default();
    let report = s.fleet.verify(&expect(c, &s.world, &posted).await?).await?;
    s.fleet.quit().await;
    Ok(outcome(
        c,
        "idle",
        figures,
        &report,
        &posted,
        vec![s.connect, idle],
        Vec::new(),
    ))
}

/// `fanout` (rooms of `room_size`, one poster stream) and `chat` (many
/// small rooms, posts over HTTP and over the socket, typing).
#[allow(clippy::too_many_arguments)]
pub async fn traffic_scenario(
    c: &Common,
    scenario: &str,
    users: usize,
    room_size: usize,
    rate: f64,
    seconds: f64,
    drive: Option<Drive>,
    per_delivery_target: f64,
    latency_targets: (Option<f64>, Option<f64>),
) -> anyhow::Result<Outcome> {
    let mut s = connect(c, users, room_size).await?;
    let poster = Poster::new(c.proto, &c.api, c.content_len, false, s.world.rooms.len())?;
    let (posted, phase) = traffic(c, &mut s, &poster, rate, seconds, drive, scenario).await?;
    let report = s.fleet.verify(&expect(c, &s.world, &posted).await?).await?;
    let mut figures = vec![fig("connections joined", s.connected as f64, "", None)];
    traffic_figures(
        c,
        &phase,
        &posted,
        report.sends_acked,
        &mut figures,
        Some(per_delivery_target),
    );
    latency_figures(
        &report.stats,
        &mut figures,
        latency_targets.0.and_then(|t| c.target(t)),
        latency_targets.1.and_then(|t| c.target(t)),
    );
    if let Some(d) = drive {
        figures.push(fig(
            "typing events received",
            report.typing as f64,
            "",
            None,
        ));
        let _ = d;
    }
    s.fleet.quit().await;
    Ok(outcome(
        c,
        scenario,
        figures,
        &report,
        &posted,
        vec![s.connect, phase],
        Vec::new(),
    ))
}

/// Sum of `name` over the gateways' `/metrics`.
async fn metric(c: &Common, name: &str) -> f64 {
    let http = reqwest::Client::new();
    let mut sum = 0.0;
    for url in &c.gateway_metrics {
        let Ok(r) = http.get(url).timeout(Duration::from_secs(5)).send().await else {
            continue;
        };
        let Ok(text) = r.text().await else { continue };
        sum += text
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

/// `reconnect-storm`: every client drops at once while traffic goes on,
/// and rejoins with `lastSeq`.
pub async fn storm(
    c: &Common,
    users: usize,
    room_size: usize,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Outcome> {
    let mut s = connect(c, users, room_size).await?;
    let poster = Poster::new(c.proto, &c.api, c.content_len, false, s.world.rooms.len())?;
    let backfills_before = metric(c, "chorus_gateway_backfill_requests_total").await;
    let before = c.sample(Some(&s.fleet));
    let started = Instant::now();
    let world = s.world.clone();
    let post = poster.run(&world, rate, seconds, |_| {});
    let storm = async {
        tokio::time::sleep(Duration::from_secs_f64(seconds / 3.0)).await;
        s.fleet.storm().await?;
        let t = Instant::now();
        // A connection counts once its rejoin (and its replay, or its
        // history paging) completed; worker processes report it.
        let bar = c.bar(users as u64, "storm: rejoining");
        loop {
            let p = s.fleet.progress();
            bar.set_position(p.rejoined);
            if p.rejoined + p.failed >= s.connected || t.elapsed() > CONNECT_DEADLINE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bar.finish_and_clear();
        anyhow::Ok(t.elapsed())
    };
    let (posted, recovered_in) = tokio::join!(post, storm);
    let recovered_in = recovered_in?;
    let after = c.sample(Some(&s.fleet));
    let phase = Phase {
        name: "storm".into(),
        seconds: started.elapsed().as_secs_f64(),
        cost: procs::delta(&before, &after),
        deliveries: 0,
    };
    let report = s.fleet.verify(&expect(c, &s.world, &posted).await?).await?;
    let backfills = metric(c, "chorus_gateway_backfill_requests_total").await - backfills_before;
    let mut figures = vec![
        fig(
            "clients that dropped and rejoined",
            s.connected as f64,
            "",
            None,
        ),
        fig(
            "time until every client rejoined",
            recovered_in.as_secs_f64(),
            "s",
            c.target(5.0),
        ),
        fig(
            "events replayed on rejoin",
            report.replayed as f64,
            "",
            None,
        ),
        fig(
            "events recovered from HTTP history",
            report.from_history as f64,
            "",
            None,
        ),
    ];
    if !c.gateway_metrics.is_empty() {
        figures.push(fig(
            "backfill requests per community",
            backfills / s.world.rooms.len().max(1) as f64,
            "",
            c.target(1.0),
        ));
    }
    latency_figures(&report.stats, &mut figures, None, None);
    s.fleet.quit().await;
    Ok(outcome(
        c,
        "reconnect-storm",
        figures,
        &report,
        &posted,
        vec![s.connect, phase],
        Vec::new(),
    ))
}

/// `throughput`: POST rate in steps until p99 POST latency crosses
/// `bound_ms`; reports the highest rate held under it.
#[allow(clippy::too_many_arguments)]
pub async fn throughput(
    c: &Common,
    users: usize,
    room_size: usize,
    start: f64,
    step: f64,
    max: f64,
    step_s: f64,
    bound_ms: f64,
) -> anyhow::Result<Outcome> {
    let mut s = connect(c, users, room_size).await?;
    let poster = Poster::new(c.proto, &c.api, c.content_len, false, s.world.rooms.len())?;
    let mut figures = Vec::new();
    let mut phases = vec![];
    let mut best = 0.0;
    let mut all = Posted::default();
    let mut rate = start;
    while rate <= max {
        let (posted, phase) = traffic(
            c,
            &mut s,
            &poster,
            rate,
            step_s,
            None,
            &format!("{rate:.0} POST/s"),
        )
        .await?;
        let p99 = posted.latency.quantile(0.99) as f64 / 1000.0;
        let late = posted.late as f64 / posted.ok.max(1) as f64;
        figures.push(fig(
            &format!("at {rate:.0} POST/s offered: POST p99"),
            p99,
            "ms",
            None,
        ));
        figures.push(fig(
            &format!("at {rate:.0} POST/s offered: sends started late"),
            late * 100.0,
            "%",
            None,
        ));
        all.ok += posted.ok;
        all.errors += posted.errors;
        all.late += posted.late;
        if all.first_error.is_none() {
            all.first_error.clone_from(&posted.first_error);
        }
        for (k, v) in posted.posts {
            all.posts.insert(k, v);
        }
        all.latency.merge(&posted.latency);
        phases.push(phase);
        // Held: under the bound, no errors, and the API kept up with the
        // offered rate (at most 1 % of sends waited for a free slot).
        if p99 > bound_ms || posted.errors > 0 || late > 0.01 {
            break;
        }
        best = rate;
        rate += step;
    }
    figures.insert(
        0,
        fig(
            &format!("sustained POST/s with p99 POST latency < {bound_ms} ms"),
            best,
            "/s",
            (c.targets && c.proto == Proto::Chorus).then_some(Bound::AtLeast(3000.0)),
        ),
    );
    let report = s.fleet.verify(&expect(c, &s.world, &all).await?).await?;
    s.fleet.quit().await;
    let mut phases_all = vec![s.connect];
    phases_all.extend(phases);
    // Steps past the knee are meant to overload: no late-POST warning.
    all.late = 0;
    Ok(outcome(
        c,
        "throughput",
        figures,
        &report,
        &all,
        phases_all,
        Vec::new(),
    ))
}

/// `soak`: steady traffic for a bounded time, sampled every `every_s`.
pub async fn soak(
    c: &Common,
    users: usize,
    room_size: usize,
    rate: f64,
    seconds: f64,
    every_s: f64,
) -> anyhow::Result<Outcome> {
    let mut s = connect(c, users, room_size).await?;
    let poster = Poster::new(c.proto, &c.api, c.content_len, false, s.world.rooms.len())?;
    let mut figures = Vec::new();
    let mut phases = vec![];
    let mut all = Posted::default();
    let mut t = 0.0;
    let mut first_rss: Option<BTreeMap<String, u64>> = None;
    while t < seconds {
        let (posted, phase) = traffic(
            c,
            &mut s,
            &poster,
            rate,
            every_s,
            None,
            &format!("soak {t:.0}s"),
        )
        .await?;
        let rss = phase.cost.rss_kib.clone();
        first_rss.get_or_insert(rss);
        all.ok += posted.ok;
        all.errors += posted.errors;
        all.late += posted.late;
        for (k, v) in posted.posts {
            all.posts.insert(k, v);
        }
        all.latency.merge(&posted.latency);
        phases.push(phase);
        t += every_s;
    }
    if let (Some(first), Some(last)) = (first_rss, phases.last()) {
        for (role, end) in &last.cost.rss_kib {
            let start = first.get(role).copied().unwrap_or(0);
            figures.push(fig(
                &format!("{role} RSS growth over the soak"),
                (*end as f64 - start as f64) / 1024.0,
                "MiB",
                None,
            ));
        }
    }
    let report = s.fleet.verify(&expect(c, &s.world, &all).await?).await?;
    latency_figures(&report.stats, &mut figures, None, None);
    s.fleet.quit().await;
    let mut phases_all = vec![s.connect];
    phases_all.extend(phases);
    Ok(outcome(
        c,
        "soak",
        figures,
        &report,
        &all,
        phases_all,
        Vec::new(),
    ))
}

/// Longest a fault's command may run.
const FAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// One fault of a chaos run: `command` run by `sh -c` at `at` seconds.
#[derive(Debug, Clone)]
pub struct Fault {
    pub at: f64,
    pub command: String,
}

impl Fault {
    /// Parses `SECONDS=COMMAND`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (at, command) = s.split_once('=').ok_or("expected SECONDS=COMMAND")?;
        Ok(Fault {
            at: at
                .trim()
                .parse()
                .map_err(|_| format!("not a number of seconds: {at:?}"))?,
            command: command.to_owned(),
        })
    }
}

/// `chaos`: steady traffic while the given faults happen; clients
/// reconnect (to the next gateway) and rejoin with `lastSeq`, POSTs are
/// retried with their `Idempotency-Key`; nothing may be lost.
pub async fn chaos(
    c: &Common,
    users: usize,
    room_size: usize,
    rate: f64,
    seconds: f64,
    faults: &[Fault],
) -> anyhow::Result<Outcome> {
    let mut s = connect(c, users, room_size).await?;
    let poster = Poster::new(c.proto, &c.api, c.content_len, true, s.world.rooms.len())?;
    let world = s.world.clone();
    let started = Instant::now();
    let mut log = Vec::new();
    let faults_run = async {
        for f in faults {
            tokio::time::sleep_until((started + Duration::from_secs_f64(f.at)).into()).await;
            // Output discarded, and bounded: a fault that leaves a process
            // behind (a restart in the background) must not hold the run.
            let status = tokio::time::timeout(
                FAULT_TIMEOUT,
                tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&f.command)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status(),
            )
            .await
            .with_context(|| {
                format!(
                    "fault {:?} still running after {FAULT_TIMEOUT:?}",
                    f.command
                )
            })?
            .with_context(|| format!("run fault {:?}", f.command))?;
            log.push(format!(
                "at {:.1} s: {} → exit {}",
                started.elapsed().as_secs_f64(),
                f.command,
                status.code().unwrap_or(-1)
            ));
        }
        anyhow::Ok(())
    };
    let (posted, faulted) = tokio::join!(poster.run(&world, rate, seconds, |_| {}), faults_run);
    faulted?;
    let report = s.fleet.verify(&expect(c, &s.world, &posted).await?).await?;
    let mut figures = vec![
        fig("connections", s.connected as f64, "", None),
        fig("POSTs committed", posted.ok as f64, "", None),
        fig("reconnects", report.reconnects as f64, "", None),
        fig(
            "events replayed on rejoin",
            report.replayed as f64,
            "",
            None,
        ),
        fig(
            "events recovered from HTTP history",
            report.from_history as f64,
            "",
            None,
        ),
    ];
    latency_figures(&report.stats, &mut figures, None, None);
    s.fleet.quit().await;
    Ok(outcome(
        c,
        "chaos",
        figures,
        &report,
        &posted,
        vec![s.connect],
        log,
    ))
}
