//! Presence across gateways and tabs, and the gateway registry.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn two_tabs_on_two_gateways_are_one_presence() {
    let cl = Cluster::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let mut watcher = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let ack = watcher.join(&c, None).await;
    assert_eq!(ack["online"], json!([alice]));

    let mut tab1 = Client::connect(&cl.gw1.url, &token(&bob)).await;
    let ack = tab1.join(&c, None).await;
    let mut online: Vec<String> = serde_json::from_value(ack["online"].clone()).unwrap();
    online.sort();
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    assert_eq!(online, both, "the ack includes the joiner");
    let j = watcher.event_of("user-joined").await;
    assert_eq!(
        j["data"],
        json!({"communityId": c, "userId": bob, "name": format!("{bob} name")})
    );

    let mut tab2 = Client::connect(&cl.gw2.url, &token(&bob)).await;
    tab2.join(&c, None).await;
    // A second tab is not a new presence: the marker comes next.
    cl.post(&alice, &c, "after the second tab").await;
    watcher.next_is_message("after the second tab").await;
    let online = cl.online(&alice, &c).await;
    assert_eq!(online, json!(both), "HTTP presence agrees");

    // Still online in the other tab. (A leave, not a close: its ack comes
    // after the presence change, so the marker is ordered after it.)
    tab1.ok("leave-community", json!({"communityId": c})).await;
    cl.post(&alice, &c, "after one tab left").await;
    watcher.next_is_message("after one tab left").await;
    tab1.close().await;
    tab2.ok("leave-community", json!({"communityId": c})).await;
    let l = watcher.event_of("user-left").await;
    assert_eq!(l["data"], json!({"communityId": c, "userId": bob}));
    // The API answers from a snapshot up to a second old: it agrees once
    // the snapshot taken above has aged out.
    wait_until(|| async { cl.online(&alice, &c).await == json!([alice]) }).await;
    let (s, _) = cl
        .call(
            Method::GET,
            &format!("/api/communities/{c}/presence"),
            &token(&uid("out")),
            None,
        )
        .await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn socket_status_lists_reporting_gateways() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let _a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let id1 = _a.ready["data"]["gatewayId"].as_str().unwrap().to_owned();
    let b = Client::connect(&cl.gw2.url, &token(&alice)).await;
    let id2 = b.ready["data"]["gatewayId"].as_str().unwrap().to_owned();
    wait_until(|| async {
        let (s, st) = cl
            .call(Method::GET, "/api/socket-status", &token(&alice), None)
            .await;
        let gws = st["gateways"].as_array().cloned().unwrap_or_default();
        let find = |id: &str| {
            gws.iter()
                .find(|g| g["id"] == id)
                .map(|g| g["connections"].as_u64().unwrap_or(0))
        };
        s == 200 && st["status"] == "ok" && find(&id1) == Some(1) && find(&id2) == Some(1)
    })
    .await;
    let (s, _) = cl
        .call(Method::GET, "/api/socket-status", "bad-token", None)
        .await;
    assert_eq!(s, 401);
    // A gateway that shuts down withdraws itself.
    b.close().await;
    let Cluster { api, gw2, http, .. } = cl;
    gw2.stop().await;
    wait_until(|| async {
        let st: serde_json::Value = http
            .get(format!("{}/api/socket-status", api.url))
            .bearer_auth(token(&alice))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        !st["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == id2.as_str())
    })
    .await;
}

#[tokio::test]
async fn large_rooms_stop_broadcasting_joins_and_leaves() {
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    opts.presence_limit = 2;
    let cl = Cluster::start_with(opts).await;
    let (alice, bob, carol) = (uid("alice"), uid("bob"), uid("carol"));
    let c = cl.community(&alice, &[&bob, &carol]).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    a.join(&c, None).await;
    let mut b = Client::connect(&cl.gw2.url, &token(&bob)).await;
    b.join(&c, None).await;
    assert_eq!(
        a.event_of("user-joined").await["data"]["userId"],
        bob.as_str(),
        "2 online: at the limit, still announced"
    );
    let mut cc = Client::connect(&cl.gw2.url, &token(&carol)).await;
    let ack = cc.join(&c, None).await;
    assert_eq!(
        ack["online"].as_array().unwrap().len(),
        3,
        "presence itself keeps working"
    );
    // 3 online: over the limit, not announced; the marker comes next.
    cl.post(&alice, &c, "over the limit").await;
    a.next_is_message("over the limit").await;
    let online = cl.online(&alice, &c).await;
    assert_eq!(online.as_array().unwrap().len(), 3);
    // Leaves are announced once fewer than the limit stay: carol's (2
    // stay) is not, the marker comes next; bob's (1 stays) is.
    cc.ok("leave-community", json!({"communityId": c})).await;
    cl.post(&alice, &c, "two stay").await;
    a.next_is_message("two stay").await;
    b.ok("leave-community", json!({"communityId": c})).await;
    let l = a.next_event().await;
    assert_eq!(l["type"], "user-left", "{l}");
    assert_eq!(l["data"]["userId"], bob.as_str());
}

/// With a 30 s grace (`hold_every_loss`: every loss held), alice watches
/// from gw1 while bob joins from gw2; then bob's connection ends by `end`,
/// and his `user-left` must come well inside the grace: the end was not
/// held.
async fn bob_leaves_without_the_grace(hold_every_loss: bool, end: impl AsyncFnOnce(Client)) {
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    opts.presence_grace_ms = 30_000;
    if hold_every_loss {
        opts.mass_loss_per_second = 0;
    }
    let cl = Cluster::start_with(opts).await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let mut watcher = Client::connect(&cl.gw1.url, &token(&alice)).await;
    watcher.join(&c, None).await;
    let mut b = Client::connect(&cl.gw2.url, &token(&bob)).await;
    b.join(&c, None).await;
    assert_eq!(
        watcher.event_of("user-joined").await["data"]["userId"],
        bob.as_str()
    );
    end(b).await;
    watcher.wait = Duration::from_secs(15);
    assert_eq!(
        watcher.event_of("user-left").await["data"]["userId"],
        bob.as_str()
    );
}

#[tokio::test]
async fn a_single_lost_connection_leaves_without_waiting_for_the_grace() {
    // Gone without a close frame, alone: the contract's leave.
    bob_leaves_without_the_grace(false, async |b| drop(b)).await;
}

#[tokio::test]
async fn connections_lost_together_and_back_within_the_grace_are_never_announced_gone() {
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    // Long enough for a reconnect on a loaded machine, short for the test;
    // every loss counts as a mass loss.
    opts.presence_grace_ms = 3_000;
    opts.mass_loss_per_second = 0;
    let cl = Cluster::start_with(opts).await;
    let (alice, bob, carol) = (uid("alice"), uid("bob"), uid("carol"));
    let c = cl.community(&alice, &[&bob, &carol]).await;
    let mut watcher = Client::connect(&cl.gw1.url, &token(&alice)).await;
    watcher.join(&c, None).await;
    let mut b = Client::connect(&cl.gw1.url, &token(&bob)).await;
    b.join(&c, None).await;
    let mut k = Client::connect(&cl.gw1.url, &token(&carol)).await;
    k.join(&c, None).await;
    for who in [&bob, &carol] {
        assert_eq!(
            watcher.event_of("user-joined").await["data"]["userId"],
            who.as_str()
        );
    }
    // Bob's connection is lost (no close frame) and he comes back through
    // the other gateway, as a load balancer may send him.
    drop(b);
    let mut b = Client::connect(&cl.gw2.url, &token(&bob)).await;
    let ack = b.join(&c, None).await;
    assert!(ack["online"].as_array().unwrap().contains(&json!(alice)));
    cl.post(&alice, &c, "bob is back").await;
    watcher.next_is_message("bob is back").await;
    // Carol's is lost after his, on the same gateway, and she stays away:
    // she leaves when her grace ends, after bob's held presence was
    // released (same gateway, in order) without a word.
    drop(k);
    let mut seen = Vec::new();
    let left = loop {
        let e = watcher.next_event().await;
        if e["type"] == "user-left" {
            break e;
        }
        seen.push(e);
    };
    assert_eq!(left["data"]["userId"], carol.as_str());
    assert!(seen.is_empty(), "nothing before carol's leave: {seen:?}");
    // And bob is online throughout, over HTTP too.
    let online = cl.online(&alice, &c).await;
    assert!(online.as_array().unwrap().contains(&json!(bob)), "{online}");
}

#[tokio::test]
async fn a_close_frame_leaves_without_waiting_for_the_grace_even_in_a_mass_loss() {
    // Every loss is held: only a goodbye passes.
    bob_leaves_without_the_grace(true, async |b| b.close().await).await;
}

/// A presence script whose announcement cannot be published still makes
/// its change, and says the announcement failed (`-1`), so that the
/// gateway does not doubt its presence for a lost announcement.
#[tokio::test]
async fn a_failed_announcement_keeps_the_presence_change() {
    use chorus_shared::presence::{JOIN_SCRIPT, LEAVE_SCRIPT, holder_users_key, users_key};
    use fred::prelude::*;
    let config = Config::from_url(&env_url("REDIS_URL")).expect("redis url");
    let redis = Builder::from_config(config).build().expect("client");
    redis.init().await.expect("connected");
    let c = uuid::Uuid::new_v4();
    let user = uid("u");
    let keys = vec![users_key(&c), holder_users_key(&c, "gw-test#1")];
    let args = |publish: &str| -> Vec<String> {
        vec![
            user.clone(),
            "10".into(),
            publish.into(),
            format!("chorus:test:{c}"),
            "announced".into(),
        ]
    };
    let r: Vec<i64> = redis
        .eval(JOIN_SCRIPT, keys.clone(), args("NOSUCHCOMMAND"))
        .await
        .expect("the script answers");
    assert_eq!(r, vec![1, 1, -1], "first, one online, announcement failed");
    let online: Vec<String> = redis.hkeys(users_key(&c)).await.expect("hkeys");
    assert_eq!(online, vec![user.clone()], "the entry was written");
    let r: Vec<i64> = redis
        .eval(LEAVE_SCRIPT, keys.clone(), args("PUBLISH"))
        .await
        .expect("the script answers");
    assert_eq!(r, vec![1, 0, 1], "gone, none online, announced");
    let _: i64 = redis.del(keys).await.expect("cleaned up");
}

/// A gateway whose Redis user may not `PUBLISH` (an ACL): the presence
/// script's announcement fails, the join it rides on stands (the user is
/// online and listed), the loss is counted, and the watcher's next event
/// is the message sent after it rather than a `user-joined`.
#[tokio::test]
async fn a_lost_announcement_is_counted_and_the_join_stands() {
    let redis = chorus_testkit::OwnRedis::start(chorus_testkit::free_port()).await;
    let acl = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "acl", "setuser", "gw", "on"])
        .args([">gw-secret", "allkeys", "allchannels", "+@all", "-publish"])
        .output()
        .expect("redis-cli on PATH");
    assert_eq!(String::from_utf8_lossy(&acl.stdout).trim(), "OK");
    let gw_redis = format!("redis://gw:gw-secret@127.0.0.1:{}", redis.port);
    let cl = Cluster::start_on(&redis.url(), GwOpts::new(&gw_redis)).await;
    // In-process gateways share the process's metrics: bob's join is
    // told by the difference it makes.
    let lost = || async {
        let text = cl.gw2.metrics().await;
        let series = "chorus_gateway_presence_announcements_lost_total{kind=\"joined\"}";
        chorus_testkit::metric_value(&text, series).expect("the series is registered")
    };
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let mut watcher = Client::connect(&cl.gw1.url, &token(&alice)).await;
    watcher.join(&c, None).await;
    let before = lost().await;
    let mut b = Client::connect(&cl.gw2.url, &token(&bob)).await;
    b.join(&c, None).await;
    assert_eq!(
        lost().await - before,
        1.0,
        "bob's announcement counted as lost"
    );

    cl.post(&alice, &c, "after bob's join").await;
    watcher.next_is_message("after bob's join").await;
    let online = cl.online(&alice, &c).await;
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    assert_eq!(online, json!(both), "bob's presence was written");
}
