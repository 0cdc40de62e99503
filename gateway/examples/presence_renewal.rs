//! Measures one presence renewal of many (room, user) pairs against a real
//! Redis: `cargo run --release -p chorus-gateway --example presence_renewal
//! -- redis://127.0.0.1:6379 100000 1000` (URL, pairs, rooms). A gateway
//! renews after its heartbeat lapsed or a write failed: every local pair is
//! added again under a new incarnation, which must take well under the
//! heartbeat's TTL. Then the old incarnations are reaped (what a survivor
//! does for a dead gateway). The figures go in BENCHMARKS.md.

#![allow(clippy::print_stdout, reason = "a measurement tool prints its figures")]

use std::sync::Arc;
use std::time::Instant;

use chorus_gateway::backplane::{Backplane, BackplaneSink, RedisBackplane};
use chorus_gateway::config::Liveness;
use uuid::Uuid;

#[derive(Debug)]
struct Ignore;

impl BackplaneSink for Ignore {
    fn on_message(&self, _: &str, _: bytes::Bytes) {}
    fn on_resync(&self) {}
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let pairs: usize = args.next().map_or(Ok(100_000), |s| s.parse())?;
    let rooms: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let backplane = RedisBackplane::new(&url, "bench-gateway", Liveness::default())?;
    backplane.start(Arc::new(Ignore));
    let per_room = pairs.div_ceil(rooms.max(1));
    let batch: Vec<(Uuid, Vec<Arc<str>>)> = (0..rooms)
        .map(|r| {
            let users = (0..per_room)
                .map(|u| Arc::from(format!("user-{r}-{u}").as_str()))
                .collect();
            (Uuid::now_v7(), users)
        })
        .collect();
    for round in 0..3 {
        let started = Instant::now();
        let old = backplane.presence_renew().await?;
        let done = backplane.presence_add(&batch).await?;
        anyhow::ensure!(done.len() == rooms, "{} of {rooms} rooms added", done.len());
        let renewed = started.elapsed();
        let started = Instant::now();
        if let Some(old) = old {
            backplane.presence_retire(&old).await?;
        }
        let reaped = backplane.presence_reap_dead().await?;
        println!(
            "round {round}: {} pairs in {rooms} rooms renewed in {renewed:?}; \
             the old incarnation's {} rooms reaped in {:?}",
            rooms * per_room,
            reaped.len(),
            started.elapsed()
        );
    }
    let withdrawn = backplane.presence_withdraw().await?;
    anyhow::ensure!(withdrawn.len() == rooms, "withdrawn from every room");
    backplane.quit().await;
    Ok(())
}
