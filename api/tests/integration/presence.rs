//! What the API reads of the gateways' writes to Redis: `GET
//! /api/communities/{id}/presence`, through a short-lived per-community
//! snapshot, and the registered-gateways gauge.

use std::time::Instant;

use chorus_api::live::PRESENCE_SNAPSHOT_TTL;
use chorus_shared::presence::{JOIN_SCRIPT, holder_users_key, users_key};
use chorus_testkit::{OwnRedis, free_port, wait_until};
use fred::prelude::*;
use fred::types::InfoKind;
use serde_json::json;

use crate::common::*;

/// Puts `user` online in `community` the way a gateway does.
async fn gateway_joins(redis: &Client, community: &str, user: &str) {
    let c: uuid::Uuid = community.parse().unwrap();
    let _: Value = redis
        .eval(
            JOIN_SCRIPT,
            vec![users_key(&c), holder_users_key(&c, "gw-test#1")],
            vec![user.to_owned()],
        )
        .await
        .unwrap();
}

/// An API on a Redis of the test's own (its keys and command counts are
/// the test's alone), and a client of that Redis; the Redis lives as long
/// as the first value.
async fn api_on_own_redis() -> (OwnRedis, Api, Client) {
    let own = OwnRedis::start(free_port()).await;
    let api = Api::start_with(Opts {
        redis_url: own.url(),
        ..Opts::default()
    })
    .await;
    let redis = Builder::from_config(Config::from_url(&own.url()).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    (own, api, redis)
}

/// How many times Redis ran `command` so far.
async fn calls(redis: &Client, command: &str) -> u64 {
    let stats: String = redis.info(Some(InfoKind::CommandStats)).await.unwrap();
    chorus_testkit::command_calls(&stats, command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_read_from_redis_once_per_snapshot() {
    // A Redis of this test's own, so its command counts are this test's.
    let (_own, api, redis) = api_on_own_redis().await;
    let (alice_id, bob_id) = (uid("alice"), uid("bob"));
    let alice = token(&alice_id);
    let c = api.community(&alice, "present", true).await;
    api.add(&alice, &c, &bob_id).await;
    gateway_joins(&redis, &c, &alice_id).await;

    let path = format!("/api/communities/{c}/presence");
    let before = calls(&redis, "hkeys").await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (http, url, t) = (
            api.http.clone(),
            format!("{}{path}", api.url),
            alice.clone(),
        );
        tasks.push(tokio::spawn(async move {
            into_resp(http.get(url).bearer_auth(t).send().await.unwrap()).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, json!({"online": [alice_id]}));
    }
    let windows = start.elapsed().as_secs_f64() / PRESENCE_SNAPSHOT_TTL.as_secs_f64();
    let reads = calls(&redis, "hkeys").await - before;
    assert!(
        reads as f64 <= windows.ceil() + 1.0,
        "{reads} reads for 100 requests within {windows:.1} snapshot lifetimes"
    );

    // A change shows once the snapshot has aged out.
    gateway_joins(&redis, &c, &bob_id).await;
    let mut both = vec![alice_id.clone(), bob_id.clone()];
    both.sort();
    wait_until(|| async { api.get(&path, &alice).await.body == json!({"online": both}) }).await;
}

/// `chorus_api_registered_gateways` is what the registry lists when
/// `/metrics` is scraped: read then, not on a timer.
#[tokio::test]
async fn the_registered_gateways_gauge_follows_the_registry_at_each_scrape() {
    use chorus_shared::presence::{GATEWAY_IDS_KEY, gateway_key};
    use chorus_shared::protocol::GatewayStatus;
    let (_own, api, redis) = api_on_own_redis().await;
    let gauge = || async {
        let text = api
            .http
            .get(format!("{}/metrics", api.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        chorus_testkit::metric_value(&text, "chorus_api_registered_gateways")
    };
    assert_eq!(gauge().await, Some(0.0));
    for id in ["gw-a", "gw-b"] {
        let status = GatewayStatus {
            id: id.to_owned(),
            connections: 0,
            started_at: chrono::Utc::now(),
        };
        let json = serde_json::to_string(&status).unwrap();
        let _: () = redis
            .set(gateway_key(id), json, Some(Expiration::EX(15)), None, false)
            .await
            .unwrap();
        let _: () = redis.sadd(GATEWAY_IDS_KEY, id).await.unwrap();
    }
    assert_eq!(gauge().await, Some(2.0));
    // A report that expired (here: removed) drops out at the next scrape.
    let _: () = redis.del(gateway_key("gw-b")).await.unwrap();
    assert_eq!(gauge().await, Some(1.0));
}
