//! Measures one presence refresh of many (room, user) pairs against a real
//! Redis: `cargo run --release -p chorus-gateway --example presence_refresh
//! -- redis://127.0.0.1:6379 100000 1000` (URL, pairs, rooms). The refresh
//! must finish well inside the entries' 25 s expiry; the figure goes in
//! BENCHMARKS.md.

#![allow(clippy::print_stdout, reason = "a measurement tool prints its figures")]

use std::sync::Arc;
use std::time::Instant;

use chorus_gateway::backplane::{Backplane, BackplaneSink, RedisBackplane};
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
    let backplane = RedisBackplane::new(&url, "bench-gateway")?;
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
        let done = backplane.presence_refresh(&batch).await?;
        anyhow::ensure!(
            done.len() == rooms,
            "{} of {rooms} rooms refreshed",
            done.len()
        );
        println!(
            "round {round}: {} pairs in {rooms} rooms refreshed in {:?}",
            rooms * per_room,
            started.elapsed()
        );
    }
    backplane.quit().await;
    Ok(())
}
