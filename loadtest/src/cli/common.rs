//! The options every scenario shares, turned into a [`Common`], and the
//! outputs of a run (table, JSON, HTML).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{MultiProgress, ProgressDrawTarget};

use crate::client::Proto;
use crate::floor;
use crate::outcome::{self, Outcome};
use crate::procs::Watched;
use crate::scenario::{self, Common, Placement};

#[derive(Debug, Args)]
pub(super) struct CommonArgs {
    /// Which protocol the servers speak.
    #[arg(long, value_enum, default_value_t = Proto::Chorus)]
    pub(super) proto: Proto,
    /// Gateway base URL; repeat for several (clients spread round-robin).
    #[arg(
        long = "gateway",
        env = "LOADTEST_GATEWAYS",
        value_delimiter = ',',
        default_values_t = ["ws://127.0.0.1:8081".to_string(), "ws://127.0.0.1:8082".to_string()]
    )]
    pub(super) gateways: Vec<String>,
    /// API base URL.
    #[arg(long, env = "LOADTEST_API", default_value = "http://127.0.0.1:8080")]
    pub(super) api: String,
    /// HS256 secret the servers verify tokens with.
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    pub(super) secret: String,
    /// `role=pid` (or `role=pid+` to include its children, for Postgres)
    /// of a server process whose CPU and RSS the report attributes.
    /// Roles used by the figures: gateway, api, postgres, redis.
    #[arg(long = "watch", value_parser = Watched::parse)]
    pub(super) watch: Vec<Watched>,
    /// Directory of `<name>.pid` files (`gw*.pid` → gateway, `api.pid`,
    /// `redis.pid`, `postgres.pid` with children), as the run scripts and
    /// the peers' `up.sh` write them.
    #[arg(long, env = "LOADTEST_PID_DIR")]
    pub(super) pid_dir: Option<PathBuf>,
    /// Worker processes for the clients (0: this process). Default: one per
    /// 8,000 connections when there are more than 2,000.
    #[arg(long)]
    pub(super) workers: Option<usize>,
    /// Gateway admin `/metrics` URL; repeat (backfill counts of a storm).
    #[arg(long, env = "LOADTEST_GATEWAY_METRICS", value_delimiter = ',')]
    pub(super) gateway_metrics: Vec<String>,
    /// Characters per posted message.
    #[arg(long, default_value_t = 100)]
    pub(super) content_len: usize,
    /// Frame size for the kernel floor measurement (0: skip it).
    #[arg(long, default_value_t = 250)]
    pub(super) frame_bytes: usize,
    /// Report figures against the targets of issue 11 (full-size runs).
    #[arg(long)]
    pub(super) targets: bool,
    /// Write the outcome as JSON to this file (`-`: stdout).
    #[arg(long)]
    pub(super) json: Option<PathBuf>,
    /// Write an HTML report (inline SVG plots) to this file.
    #[arg(long)]
    pub(super) report: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub(super) quiet: bool,
    /// Name of the scenario in the outputs (e.g. `fanout-50k`).
    #[arg(long)]
    pub(super) name: Option<String>,
    /// How clients are spread over the gateways: `spread` (round-robin
    /// by user) or `by-room` (each room's members on one gateway).
    #[arg(long, value_enum, default_value_t = Placement::Spread)]
    pub(super) placement: Placement,
}

fn pid_dir(dir: &PathBuf) -> anyhow::Result<Vec<Watched>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = e?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".pid") else {
            continue;
        };
        let role = match stem {
            s if s.starts_with("gw") || s.starts_with("gateway") => "gateway",
            "api" => "api",
            // `redis-1.pid`... for the shards of a Redis Cluster.
            s if s.starts_with("redis") => "redis",
            "postgres" => "postgres",
            _ => continue,
        };
        let pid: u32 = std::fs::read_to_string(&path)?
            .trim()
            .parse()
            .with_context(|| format!("pid in {}", path.display()))?;
        out.push(Watched {
            role: role.into(),
            pid,
            children: role == "postgres",
        });
    }
    Ok(out)
}

/// Refuses arguments a run cannot use (instead of dividing by zero or
/// looping forever).
pub(super) fn positive(values: &[(&str, f64)]) -> anyhow::Result<()> {
    for (name, v) in values {
        anyhow::ensure!(
            *v > 0.0 && v.is_finite(),
            "--{name} must be positive, not {v}"
        );
    }
    Ok(())
}

impl CommonArgs {
    pub(super) fn common(&self, connections: usize) -> anyhow::Result<Common> {
        positive(&[("connections", connections as f64)])?;
        anyhow::ensure!(!self.gateways.is_empty(), "give at least one --gateway");
        anyhow::ensure!(
            self.workers.unwrap_or(0) <= MAX_WORKERS,
            "at most {MAX_WORKERS} --workers (one 127.0.0.x source address each)"
        );
        let mut watch = self.watch.clone();
        if let Some(dir) = &self.pid_dir {
            watch.extend(pid_dir(dir)?);
        }
        let workers = self.workers.unwrap_or(if connections > 2_000 {
            connections.div_ceil(scenario::CONNECTIONS_PER_WORKER)
        } else {
            0
        });
        let floor = if self.frame_bytes > 0 {
            Some(floor::measure(self.frame_bytes).context("measure the loopback floor")?)
        } else {
            None
        };
        let progress = MultiProgress::new();
        if self.quiet {
            progress.set_draw_target(ProgressDrawTarget::hidden());
        }
        Ok(Common {
            proto: self.proto,
            gateways: self.gateways.clone(),
            api: self.api.trim_end_matches('/').to_owned(),
            secret: self.secret.clone(),
            watch,
            workers,
            worker_exe: None,
            gateway_metrics: self.gateway_metrics.clone(),
            content_len: self.content_len,
            floor,
            progress,
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            targets: self.targets,
            placement: self.placement,
        })
    }

    pub(super) fn output(&self, outcomes: &[Outcome], c: &Common) -> anyhow::Result<()> {
        let mut table = outcome::table(outcomes);
        if let Some(f) = &c.floor {
            table.insert_str(
                0,
                &format!(
                    "kernel floor: one un-batched {}-byte loopback write = {:.2} µs CPU (reader {:.2} µs)\n",
                    f.bytes, f.write_us, f.read_us
                ),
            );
        }
        std::io::stderr().write_all(table.as_bytes())?;
        if let Some(path) = &self.json {
            let json = serde_json::to_string_pretty(&serde_json::json!({
                "floor": c.floor,
                "outcomes": outcomes,
            }))?;
            if path.as_os_str() == "-" {
                std::io::stdout().write_all(json.as_bytes())?;
            } else {
                std::fs::write(path, json)?;
            }
        }
        if let Some(path) = &self.report {
            std::fs::write(path, outcome::html(outcomes, c.floor.as_ref()))?;
        }
        Ok(())
    }
}

/// Worker processes at most: each takes its own 127.0.0.x source address.
const MAX_WORKERS: usize = 250;
