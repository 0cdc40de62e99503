//! Scenarios that break something while traffic goes on: a reconnect
//! storm, and chaos (the faults it is given).

use super::figures::*;
use super::*;

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
        let per_community = backfills / s.world.rooms.len().max(1) as f64;
        figures.push(fig(
            "backfill requests per community",
            per_community,
            "",
            None,
        ));
        // Spread clients put every community on every gateway (by room, on
        // one), and gateways share no memory: one fetch per community on
        // each gateway holding it is the least there can be.
        let holding = match c.placement {
            Placement::Spread => c.gateway_metrics.len(),
            Placement::ByRoom => 1,
        };
        figures.push(fig(
            "backfill requests per community and gateway",
            per_community / holding as f64,
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
