//! The backplane on a Redis Cluster (three primaries, one replica each,
//! owned by the test): sharded pub/sub, and a primary killed or a slot
//! moved mid-stream while every client must still see every seq once, in
//! order.

use std::collections::BTreeMap;

use chorus_shared::envelope::community_channel;
use chorus_testkit::RedisCluster;

use crate::common::*;

/// Communities per test: enough that each of three shards owns some.
const COMMUNITIES: usize = 9;

/// Reads events until every community in `last` reached its last seq;
/// returns the seqs each community's events carried, in arrival order.
async fn seqs_per_community(
    client: &mut Client,
    last: &BTreeMap<String, i64>,
) -> BTreeMap<String, Vec<i64>> {
    let mut got: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let done = |got: &BTreeMap<String, Vec<i64>>| {
        last.iter()
            .all(|(c, l)| got.get(c).and_then(|s| s.last()) >= Some(l))
    };
    while !done(&got) {
        let e = client.next_event().await;
        if e["type"] == "new-message" {
            let m = &e["data"]["message"];
            let c = m["communityId"].as_str().unwrap().to_owned();
            got.entry(c).or_default().push(m["seq"].as_i64().unwrap());
        }
    }
    got
}

/// Communities spread over the shards, and which primary owns each.
async fn communities(cl: &Cluster, rc: &RedisCluster, owner: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for _ in 0..COMMUNITIES {
        let c = cl.community(owner, &[]).await;
        let shard = rc.primary_of(&community_channel(&c.parse().unwrap()));
        out.push((c, shard));
    }
    out
}

#[tokio::test]
async fn a_gateway_subscribes_only_on_the_shard_of_its_rooms() {
    let rc = RedisCluster::start(3, 1).await;
    let cl = Cluster::start_with(GwOpts::new(&rc.url())).await;
    let alice = uid("alice");
    let rooms = communities(&cl, &rc, &alice).await;
    let (c, shard) = &rooms[0];
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    a.join(c, None).await;
    let channel = community_channel(&c.parse().unwrap());
    // Sharded subscriptions are counted by the shard that owns the
    // channel; a classic subscription would show in NUMSUB.
    let count = |port: u16, cmd: &str| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "pubsub", cmd, &channel])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap_or("0")
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    assert_eq!(
        count(*shard, "shardnumsub"),
        1,
        "gateway 1 on the owning shard"
    );
    assert_eq!(count(*shard, "numsub"), 0, "no classic subscription");
    // Delivery works end to end, and gateway 2 (no member there) holds no
    // subscription on any shard.
    let m = cl.post(&alice, c, "hello shard").await;
    a.next_is_message("hello shard").await;
    assert_eq!(m["seq"], 1);
    a.close().await;
    wait_until(|| async { count(*shard, "shardnumsub") == 0 }).await;
}

/// The presence scripts publish `user-joined` and `user-left` themselves,
/// with `SPUBLISH` on the shard that owns the community (its channel and
/// its presence keys share a slot), for communities on every shard.
#[tokio::test]
async fn presence_is_announced_from_each_communitys_shard() {
    let rc = RedisCluster::start(3, 1).await;
    let cl = Cluster::start_with(GwOpts::new(&rc.url())).await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    // Communities until each of the three shards owns one (a community
    // lands on a given shard one time in three).
    let mut rooms = Vec::new();
    let mut shards = std::collections::BTreeSet::new();
    while shards.len() < 3 {
        assert!(rooms.len() < 60, "three shards own communities");
        let c = cl.community(&alice, &[&bob]).await;
        shards.insert(rc.primary_of(&community_channel(&c.parse().unwrap())));
        rooms.push(c);
    }
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let mut b = Client::connect(&cl.gw2.url, &token(&bob)).await;
    for c in &rooms {
        a.join(c, None).await;
        b.join(c, None).await;
        let j = a.next_event().await;
        assert_eq!(j["type"], "user-joined", "{j}");
        assert_eq!(j["data"]["communityId"], c.as_str());
        assert_eq!(j["data"]["userId"], bob.as_str());
        b.ok("leave-community", serde_json::json!({"communityId": c}))
            .await;
        let l = a.next_event().await;
        assert_eq!(l["type"], "user-left", "{l}");
        assert_eq!(l["data"]["communityId"], c.as_str());
    }
}

#[tokio::test]
async fn a_primary_killed_mid_stream_loses_nothing() {
    let mut rc = RedisCluster::start(3, 1).await;
    let cl = Cluster::start_with(GwOpts::new(&rc.url())).await;
    let alice = uid("alice");
    let rooms = communities(&cl, &rc, &alice).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let mut b = Client::connect(&cl.gw2.url, &token(&alice)).await;
    for (c, _) in &rooms {
        a.join(c, None).await;
        b.join(c, None).await;
    }
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    let post_round = |round: usize| {
        let (cl, rooms, alice) = (&cl, &rooms, &alice);
        async move {
            let mut seqs = Vec::new();
            for (c, _) in rooms {
                let m = cl.post(alice, c, &format!("round {round}")).await;
                seqs.push((c.clone(), m["seq"].as_i64().unwrap()));
            }
            seqs
        }
    };
    for round in 0..3 {
        last.extend(post_round(round).await);
    }
    let victim = rooms[0].1;
    rc.kill(victim);
    // Posting goes on while the shard is away and while its replica takes
    // over: the outbox holds the dead shard's channels back.
    for round in 3..8 {
        last.extend(post_round(round).await);
    }
    rc.wait_ok().await;
    for round in 8..11 {
        last.extend(post_round(round).await);
    }
    assert_ne!(
        rc.primary_of(&community_channel(&rooms[0].0.parse().unwrap())),
        victim
    );
    for (name, client) in [("gateway 1", &mut a), ("gateway 2", &mut b)] {
        let got = seqs_per_community(client, &last).await;
        for (c, l) in &last {
            assert_eq!(
                got[c],
                (1..=*l).collect::<Vec<i64>>(),
                "{name}: every seq of {c} once, in order"
            );
        }
    }
}

#[tokio::test]
async fn a_slot_moved_mid_stream_loses_nothing() {
    let rc = RedisCluster::start(3, 0).await;
    let cl = Cluster::start_with(GwOpts::new(&rc.url())).await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    let channel = community_channel(&c.parse().unwrap());
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let mut b = Client::connect(&cl.gw2.url, &token(&alice)).await;
    a.join(&c, None).await;
    b.join(&c, None).await;
    for i in 1..=3 {
        cl.post(&alice, &c, &format!("before {i}")).await;
    }
    assert_eq!(a.seqs_until(3).await, vec![1, 2, 3]);
    assert_eq!(b.seqs_until(3).await, vec![1, 2, 3]);

    let from = rc.primary_of(&channel);
    let to = rc
        .primaries()
        .into_iter()
        .find(|p| *p != from)
        .expect("another primary");
    rc.move_slot_of(&channel, to);
    assert_eq!(rc.primary_of(&channel), to);
    // The old owner ended the gateways' subscriptions when the slot left;
    // these events are published on the new owner.
    for i in 4..=10 {
        cl.post(&alice, &c, &format!("after {i}")).await;
    }
    let want: Vec<i64> = (4..=10).collect();
    assert_eq!(a.seqs_until(10).await, want, "gateway 1 lost nothing");
    assert_eq!(b.seqs_until(10).await, want, "gateway 2 lost nothing");
    // And the subscriptions live on the new owner: a live event arrives.
    cl.post(&alice, &c, "live again").await;
    a.next_is_message("live again").await;
    b.next_is_message("live again").await;
}
