//! Costs and latencies turned into named figures, each with the target
//! it is held to (on full-size Chorus runs), and the outcome of a run.

use super::*;

pub(super) fn per(cost_s: f64, n: f64) -> f64 {
    if n > 0.0 { cost_s * 1e6 / n } else { 0.0 }
}

pub(super) fn fig(name: &str, value: f64, unit: &'static str, target: Option<Bound>) -> Figure {
    Figure {
        name: name.into(),
        value,
        unit,
        target,
    }
}

pub(super) fn saturation(phase: &Phase, warnings: &mut Vec<String>) {
    if phase.cost.machine_busy > SATURATED {
        warnings.push(format!(
            "the machine was {:.0} % busy during {}: figures include waiting for a CPU",
            phase.cost.machine_busy * 100.0,
            phase.name
        ));
    }
}

/// Connect + join costs per connection.
pub(super) fn connect_figures(c: &Common, s: &Setup, figures: &mut Vec<Figure>) {
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
    for (role, name) in [
        ("api", "  … of it the API's"),
        ("postgres", "  … of it Postgres's"),
        ("redis", "  … of it Redis's"),
    ] {
        figures.push(fig(name, per(d.cpu(role), n), "µs", None));
    }
}

/// Per-delivery and per-POST costs of a traffic phase.
/// `sends` is the `send-message`s acked in the phase: messages created
/// through a gateway cost the API and Postgres like POSTs.
pub(super) fn traffic_figures(
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
        "gateway kernel CPU per delivered message",
        per(d.sys("gateway"), dl),
        "µs",
        None,
    ));
    figures.push(fig(
        "API CPU per POST",
        per(d.cpu("api"), posts),
        "µs",
        c.target(150.0),
    ));
    figures.push(fig(
        "API kernel CPU per POST",
        per(d.sys("api"), posts),
        "µs",
        None,
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
pub(super) fn latency_figures(
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

pub(super) fn outcome(
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
