//! Scenarios of steady traffic: `idle`, `fanout`/`chat`, `throughput`
//! and `soak`.

use super::figures::*;
use super::*;

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
        let failed = posted.errors > 0;
        all.absorb(posted);
        phases.push(phase);
        // Held: under the bound, no errors, and the API kept up with the
        // offered rate (at most 1 % of sends waited for a free slot).
        if p99 > bound_ms || failed || late > 0.01 {
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
        all.absorb(posted);
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
