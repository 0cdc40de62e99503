//! What an idle gateway costs Redis: its heartbeat, and nothing else.

use chorus_testkit::{OwnRedis, free_port, wait_until};
use fred::prelude::{Builder, Client as Redis, ClientLike, Config, PubsubInterface};
use fred::types::InfoKind;

use crate::common::*;
use crate::faults::GatewayProcess;

/// How many times Redis ran `command` so far.
async fn calls(redis: &Redis, command: &str) -> u64 {
    let stats: String = redis.info(Some(InfoKind::CommandStats)).await.unwrap();
    chorus_testkit::command_calls(&stats, command)
}

/// Waits until Redis has run `n` more `PUBLISH`es than `from`: on a Redis
/// with one idle gateway, its heartbeats.
async fn heartbeats(redis: &Redis, from: u64, n: u64) {
    wait_until(|| async { calls(redis, "publish").await >= from + n }).await;
}

/// An idle gateway never pings Redis while its heartbeats flow: each one
/// publishes to the gateway's own health channel, and its subscriber
/// hearing that proves the connection as a ping's answer would (every
/// ping woke Redis). Shown on a Redis with only this gateway on it, over
/// heartbeats spanning longer than the quiet after which the subscriber
/// is pinged.
#[tokio::test]
async fn an_idle_gateway_sends_no_ping_while_its_heartbeats_flow() {
    let cl = Cluster::start().await;
    let own = OwnRedis::start(free_port()).await;
    // Heartbeats every 500 ms: a third of the 1.5 s liveness.
    let _gw = GatewayProcess::start_with(
        &cl.api,
        &own.url(),
        &[("CHORUS_PRESENCE_LIVENESS_MS", "1500")],
    )
    .await;
    let redis = Builder::from_config(Config::from_url(&own.url()).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();

    // Until its subscriber has heard a heartbeat, nothing proves it and it
    // is pinged. Once it listens on its health channel, three heartbeats
    // (1.5 s) outlast the health check's one-second tick.
    wait_until(|| async {
        let channels: Vec<String> = redis.pubsub_channels("chorus:health:*").await.unwrap();
        channels.len() == 1
    })
    .await;
    let start = calls(&redis, "publish").await;
    heartbeats(&redis, start, 3).await;
    let pings = calls(&redis, "ping").await;
    // Fourteen more (7 s): longer than the 5 s of quiet before a ping,
    // plus a tick.
    let quiet = chorus_gateway::config::BACKPLANE_QUIET_BEFORE_PING;
    assert!(
        quiet.as_millis() + 1_000 < 14 * 500,
        "the window outlasts the quiet"
    );
    heartbeats(&redis, start + 3, 14).await;
    assert_eq!(
        calls(&redis, "ping").await,
        pings,
        "no ping while heartbeats flow"
    );
    redis.quit().await.unwrap();
}
