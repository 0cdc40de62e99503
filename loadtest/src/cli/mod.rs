//! The command line: one subcommand per scenario, the options every
//! scenario shares, and the output (summary table on stderr, `--json`,
//! `--report out.html`).

//! The options and the outputs live in `common.rs`.

mod common;

use std::io::Write;

use clap::{Parser, Subcommand};

use common::{CommonArgs, positive};

use crate::group::Drive;
use crate::scenario::{self, Fault};
use crate::{fleet, floor};

/// Chorus's load and fault tool. Every scenario verifies delivery (lost,
/// duplicated, out-of-order events fail it) and reports costs per server
/// process from /proc.
#[derive(Debug, Parser)]
#[command(name = "chorus-loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// N joined connections: cost to connect and join, memory and CPU to hold.
    Idle {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        room_size: usize,
        /// Seconds to hold the connections idle.
        #[arg(long, default_value_t = 30.0)]
        idle_seconds: f64,
    },
    /// Subscribers in large rooms; POSTs through the API at a fixed rate.
    Fanout {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 500)]
        room_size: usize,
        /// POSTs per second (deliveries/s = rate × room size).
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
    },
    /// Many small rooms: POSTs over HTTP and `send-message` over the socket, typing.
    Chat {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        room_size: usize,
        /// HTTP POSTs per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// `send-message` commands per second over the sockets (Chorus only).
        #[arg(long, default_value_t = 0.0)]
        socket_rate: f64,
        /// `typing` frames per second.
        #[arg(long, default_value_t = 0.0)]
        typing_rate: f64,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
    },
    /// Every client drops at once and rejoins with lastSeq while traffic goes on.
    ReconnectStorm {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 20_000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        room_size: usize,
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        #[arg(long, default_value_t = 15.0)]
        seconds: f64,
    },
    /// POST rate in steps until p99 POST latency crosses a bound.
    Throughput {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        room_size: usize,
        #[arg(long, default_value_t = 500.0)]
        start_rate: f64,
        #[arg(long, default_value_t = 500.0)]
        step: f64,
        #[arg(long, default_value_t = 8_000.0)]
        max_rate: f64,
        #[arg(long, default_value_t = 10.0)]
        step_seconds: f64,
        #[arg(long, default_value_t = 50.0)]
        p99_bound_ms: f64,
    },
    /// Steady traffic for a bounded time; RSS and latency sampled over time.
    Soak {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 2_000)]
        connections: usize,
        #[arg(long, default_value_t = 50)]
        room_size: usize,
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 120.0)]
        seconds: f64,
        #[arg(long, default_value_t = 10.0)]
        sample_every: f64,
    },
    /// Steady traffic while faults happen (`--fault SECONDS=COMMAND`).
    Chaos {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
        #[arg(long, default_value_t = 50)]
        room_size: usize,
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// `SECONDS=COMMAND`: run COMMAND with `sh -c` that many seconds
        /// in (e.g. `10=kill -9 1234`). Repeatable. Only processes named
        /// here are touched.
        #[arg(long, value_parser = Fault::parse)]
        fault: Vec<Fault>,
    },
    /// Only the kernel floor: CPU of one un-batched loopback frame write.
    Floor {
        #[arg(long, default_value_t = 250)]
        frame_bytes: usize,
    },
    /// Side-by-side table of `--json` outputs (the first label is Chorus):
    /// each figure per target and as a ratio to the first; several files
    /// of one scenario under one label (rounds) give its median and range.
    Compare {
        /// `label=file.json[,file.json…]`, repeatable; the first is the reference.
        #[arg(required = true)]
        runs: Vec<String>,
    },
    /// Internal: a worker process, driven by JSON lines on stdin.
    #[command(hide = true)]
    Worker,
}

/// Raises the open-file limit to the hard limit: every connection is a
/// file.
fn raise_nofile() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

/// Runs the command line; false when a scenario failed its delivery check.
pub async fn main() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    raise_nofile();
    let (args, outcome) = match cli.cmd {
        Cmd::Worker => {
            fleet::worker().await?;
            return Ok(true);
        }
        Cmd::Compare { runs } => {
            std::io::stdout().write_all(crate::compare::table(&runs)?.as_bytes())?;
            return Ok(true);
        }
        Cmd::Floor { frame_bytes } => {
            let f = floor::measure(frame_bytes)?;
            std::io::stderr().write_all(
                format!(
                    "one un-batched {}-byte loopback write: {:.2} µs CPU (reader {:.2} µs)\n",
                    f.bytes, f.write_us, f.read_us
                )
                .as_bytes(),
            )?;
            return Ok(true);
        }
        Cmd::Idle {
            common,
            connections,
            room_size,
            idle_seconds,
        } => {
            positive(&[
                ("room-size", room_size as f64),
                ("idle-seconds", idle_seconds),
            ])?;
            let c = common.common(connections)?;
            let o = scenario::idle(&c, connections, room_size, idle_seconds).await?;
            ((common, c), o)
        }
        Cmd::Fanout {
            common,
            connections,
            room_size,
            rate,
            seconds,
        } => {
            positive(&[
                ("room-size", room_size as f64),
                ("rate", rate),
                ("seconds", seconds),
            ])?;
            let c = common.common(connections)?;
            // Targets: 9 µs per delivery (issue 11); latency at 10k/s.
            let lat = if rate * room_size as f64 <= 20_000.0 {
                (Some(2.0), Some(5.0))
            } else {
                (None, Some(10.0))
            };
            let o = scenario::traffic_scenario(
                &c,
                "fanout",
                connections,
                room_size,
                rate,
                seconds,
                None,
                9.0,
                lat,
            )
            .await?;
            ((common, c), o)
        }
        Cmd::Chat {
            common,
            connections,
            room_size,
            rate,
            socket_rate,
            typing_rate,
            seconds,
        } => {
            positive(&[
                ("room-size", room_size as f64),
                ("rate", rate),
                ("seconds", seconds),
            ])?;
            let c = common.common(connections)?;
            let drive = (socket_rate > 0.0 || typing_rate > 0.0).then_some(Drive {
                send_rate: socket_rate / c.workers.max(1) as f64,
                typing_rate: typing_rate / c.workers.max(1) as f64,
                seconds,
                content_len: common.content_len,
            });
            let o = scenario::traffic_scenario(
                &c,
                "chat",
                connections,
                room_size,
                rate,
                seconds,
                drive,
                15.0,
                (None, None),
            )
            .await?;
            ((common, c), o)
        }
        Cmd::ReconnectStorm {
            common,
            connections,
            room_size,
            rate,
            seconds,
        } => {
            positive(&[
                ("room-size", room_size as f64),
                ("rate", rate),
                ("seconds", seconds),
            ])?;
            let c = common.common(connections)?;
            let o = scenario::storm(&c, connections, room_size, rate, seconds).await?;
            ((common, c), o)
        }
        Cmd::Throughput {
            common,
            connections,
            room_size,
            start_rate,
            step,
            max_rate,
            step_seconds,
            p99_bound_ms,
        } => {
            positive(&[
                ("room-size", room_size as f64),
                ("start-rate", start_rate),
                ("step", step),
                ("max-rate", max_rate),
                ("step-seconds", step_seconds),
                ("p99-bound-ms", p99_bound_ms),
            ])?;
            let c = common.common(connections)?;
            let o = scenario::throughput(
                &c,
                connections,
                room_size,
                start_rate,
                step,
                max_rate,
                step_seconds,
                p99_bound_ms,
            )
            .await?;
            ((common, c), o)
        }
        Cmd::Soak {
            common,
            connections,
            room_size,
            rate,
            seconds,
            sample_every,
        } => {
            positive(&[
                ("room-size", room_size as f64),
                ("rate", rate),
                ("seconds", seconds),
                ("sample-every", sample_every),
            ])?;
            let c = common.common(connections)?;
            let o = scenario::soak(&c, connections, room_size, rate, seconds, sample_every).await?;
            ((common, c), o)
        }
        Cmd::Chaos {
            common,
            connections,
            room_size,
            rate,
            seconds,
            fault,
        } => {
            positive(&[
                ("room-size", room_size as f64),
                ("rate", rate),
                ("seconds", seconds),
            ])?;
            let c = common.common(connections)?;
            let o = scenario::chaos(&c, connections, room_size, rate, seconds, &fault).await?;
            ((common, c), o)
        }
    };
    let (common, c) = args;
    let mut outcome = outcome;
    if let Some(name) = &common.name {
        outcome.scenario.clone_from(name);
    }
    let ok = outcome.passed();
    common.output(std::slice::from_ref(&outcome), &c)?;
    Ok(ok)
}
