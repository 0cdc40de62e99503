//! Faults of Redis under the gateways: a restart mid-stream, a freeze
//! during a join, a runtime held up while a command is in flight.

use std::time::Duration;

use serde_json::json;

use chorus_testkit::{OwnRedis, free_port};

use crate::common::*;

#[tokio::test]
async fn redis_restart_mid_stream_loses_nothing() {
    let port = free_port();
    let mut redis = OwnRedis::start(port).await;
    let cl = Cluster::start_with(GwOpts::new(&redis.url())).await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let mut b = Client::connect(&cl.gw2.url, &token(&alice)).await;
    a.join(&c, None).await;
    b.join(&c, None).await;
    for i in 1..=5 {
        cl.post(&alice, &c, &format!("before {i}")).await;
    }
    assert_eq!(a.seqs_until(5).await, (1..=5).collect::<Vec<_>>());
    assert_eq!(b.seqs_until(5).await, (1..=5).collect::<Vec<_>>());

    redis.kill();
    wait_until(|| async { !cl.gw1.ready().await }).await;
    for i in 6..=20 {
        cl.post(&alice, &c, &format!("during {i}")).await;
    }
    let _redis = OwnRedis::start(port).await;
    wait_until(|| async { cl.gw1.ready().await && cl.gw2.ready().await }).await;
    for i in 21..=25 {
        cl.post(&alice, &c, &format!("after {i}")).await;
    }
    let want: Vec<i64> = (6..=25).collect();
    assert_eq!(a.seqs_until(25).await, want, "gateway 1 lost nothing");
    assert_eq!(b.seqs_until(25).await, want, "gateway 2 lost nothing");
}

/// A join while Redis is frozen cannot confirm its room's subscription:
/// it is answered `unavailable`, never acknowledged without a live
/// subscription, and leaves no presence behind; the connection and its
/// other room stay up, and the same join succeeds and delivers once
/// Redis answers again.
#[tokio::test]
async fn a_join_while_redis_is_frozen_fails_unavailable_then_succeeds() {
    let redis = OwnRedis::start(free_port()).await;
    let cl = Cluster::start_with(GwOpts::new(&redis.url())).await;
    let alice = uid("alice");
    let c1 = cl.community(&alice, &[]).await;
    let c2 = cl.community(&alice, &[]).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    a.join(&c1, None).await;

    redis.pause();
    let refused = a
        .request("join-community", json!({"communityId": c2}))
        .await;
    redis.resume();
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["error"]["code"], "unavailable", "{refused}");

    // Whatever the gateway had sent Redis during the freeze was in its
    // socket at the thaw, so it ran before this later request's command.
    wait_until(|| async { cl.gw1.ready().await }).await;
    let online = cl.online(&alice, &c2).await;
    assert_eq!(online, json!([]), "the refused join left no presence");

    a.join(&c2, None).await;
    cl.post(&alice, &c2, "after the thaw").await;
    a.next_is_message("after the thaw").await;
    cl.post(&alice, &c1, "the first room still delivers").await;
    a.next_is_message("the first room still delivers").await;
}

/// The command connection reads its replies on a thread of its own: a
/// command answered while every task of the gateway's runtime is held up
/// (here the test's one runtime thread is blocked, past the command
/// timeout) succeeds, instead of counting as timed out, which would make
/// the gateway's presence doubtful and renew all of it.
#[tokio::test(flavor = "current_thread")]
async fn a_command_answered_while_the_runtime_is_held_up_succeeds() {
    use chorus_gateway::backplane::{Backplane, COMMAND_TIMEOUT, RedisBackplane};
    let backplane = RedisBackplane::new(&env_url("REDIS_URL"), "gw-held-up", Default::default())
        .expect("backplane");
    let channel = uid("chorus-test-held-up");
    wait_until(|| async {
        backplane
            .publish(&channel, bytes::Bytes::from_static(b"up"))
            .await
            .is_ok()
    })
    .await;
    // A command sent and not answered yet when the runtime stops: almost
    // always the first (a reply takes a round trip), but the command
    // thread may be that quick.
    let mut publish = None;
    for _ in 0..100 {
        let mut p = Box::pin(backplane.publish(&channel, bytes::Bytes::from_static(b"held up")));
        if futures_util::poll!(p.as_mut()).is_pending() {
            publish = Some(p);
            break;
        }
    }
    let publish = publish.expect("a command in flight");
    std::thread::sleep(COMMAND_TIMEOUT + Duration::from_secs(1));
    publish
        .await
        .expect("answered while the runtime was held up");
    backplane.quit().await;
}
