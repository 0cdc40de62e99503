//! Ordered, gap-free delivery, recovery, notifications, typing, revocation.

use reqwest::Method;
use serde_json::json;

use crate::common::*;

/// What a gateway's subscription queue sends when requests pile up: one
/// `SUBSCRIBE` of many channels, and one `UNSUBSCRIBE` of many. Each
/// channel is live after the one, and none after the other: messages
/// published to the unsubscribed ones are not heard, the marker published
/// after them is next.
#[tokio::test]
async fn channels_subscribed_and_unsubscribed_together_each_take_effect() {
    use chorus_gateway::backplane::{Backplane, BackplaneSink, RedisBackplane};
    struct Heard(tokio::sync::mpsc::UnboundedSender<(String, bytes::Bytes)>);
    impl BackplaneSink for Heard {
        fn on_message(&self, channel: &str, payload: bytes::Bytes) {
            let _ = self.0.send((channel.to_owned(), payload));
        }
        fn on_resync(&self) {}
    }
    let backplane = RedisBackplane::new(&env_url("REDIS_URL"), "gw-many", Default::default())
        .expect("backplane");
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    backplane.start(std::sync::Arc::new(Heard(tx)));
    let channels: Vec<String> = (0..5)
        .map(|i| uid(&format!("chorus-test-many{i}")))
        .collect();
    // Once the subscriber connection is up.
    wait_until(|| async {
        backplane
            .subscribe_many(&channels)
            .await
            .iter()
            .all(Result::is_ok)
    })
    .await;
    let next = async |heard: &mut tokio::sync::mpsc::UnboundedReceiver<(String, bytes::Bytes)>| {
        tokio::time::timeout(std::time::Duration::from_secs(10), heard.recv())
            .await
            .expect("a message within 10 s")
            .expect("sink open")
    };
    for ch in &channels {
        backplane
            .publish(ch, bytes::Bytes::from_static(b"live"))
            .await
            .expect("published");
        assert_eq!(next(&mut heard).await.0, *ch);
    }
    backplane
        .unsubscribe_many(&channels[..4])
        .await
        .expect("unsubscribed");
    // An unsubscribe is answered once sent; the last channel subscribed
    // again (it is already) is answered once Redis applied it, and so the
    // unsubscribe before it on the same connection.
    let again = backplane.subscribe_many(&channels[4..]).await;
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    for ch in &channels {
        backplane
            .publish(ch, bytes::Bytes::from_static(b"after"))
            .await
            .expect("published");
    }
    assert_eq!(
        next(&mut heard).await.0,
        channels[4],
        "only the channel still subscribed is heard"
    );
    backplane.quit().await;
}

#[tokio::test]
async fn two_hundred_concurrent_posts_arrive_in_order_on_both_gateways() {
    let cl = Cluster::start().await;
    let owner = uid("owner");
    let posters: Vec<String> = (0..10).map(|i| uid(&format!("p{i}"))).collect();
    let refs: Vec<&str> = posters.iter().map(String::as_str).collect();
    let c = cl.community(&owner, &refs).await;
    let mut r1 = Client::connect(&cl.gw1.url, &token(&owner)).await;
    let mut r2 = Client::connect(&cl.gw2.url, &token(&posters[0])).await;
    r1.join(&c, None).await;
    r2.join(&c, None).await;

    cl.post_concurrently(&c, &posters, 20).await;
    let want: Vec<i64> = (1..=200).collect();
    assert_eq!(
        r1.seqs_until(200).await,
        want,
        "gateway 1: in order, no gap, no duplicate"
    );
    assert_eq!(
        r2.seqs_until(200).await,
        want,
        "gateway 2: in order, no gap, no duplicate"
    );
    // Nothing more, nothing repeated: the next message is the next thing.
    cl.post(&owner, &c, "marker").await;
    assert_eq!(r1.seqs_until(201).await, vec![201]);
}

/// A room's dispatcher writes to the members itself up to 32 of them
/// (`hub/claims.rs`), and wakes their writers past that: messages posted
/// on either side of the bound reach every member once, in order, and the
/// next message comes next.
#[tokio::test]
async fn a_room_growing_past_the_dispatchers_own_writes_delivers_in_order() {
    let cl = Cluster::start().await;
    let owner = uid("owner");
    let members: Vec<String> = (0..40).map(|i| uid(&format!("m{i}"))).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let c = cl.community(&owner, &refs).await;
    // Ten posts at a time, from two members at once.
    let posters = &members[..2];
    let mut clients = Vec::new();
    for m in &members[..20] {
        let mut client = Client::connect(&cl.gw1.url, &token(m)).await;
        client.join(&c, None).await;
        clients.push(client);
    }
    cl.post_concurrently(&c, posters, 5).await;
    let first: Vec<i64> = (1..=10).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.seqs_until(10).await, first, "member {i}");
    }
    // Delivered through 10: later joiners start after it.
    for m in &members[20..] {
        let mut client = Client::connect(&cl.gw1.url, &token(m)).await;
        client.join(&c, None).await;
        clients.push(client);
    }
    cl.post_concurrently(&c, posters, 5).await;
    let second: Vec<i64> = (11..=20).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.seqs_until(20).await, second, "member {i}");
    }
    cl.post(&owner, &c, "marker").await;
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.seqs_until(21).await, vec![21], "member {i}");
    }
}

#[tokio::test]
async fn rejoin_with_last_seq_replays_exactly_what_was_missed() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    a.join(&c, None).await;
    cl.post(&alice, &c, "one").await;
    assert_eq!(a.seqs_until(1).await, vec![1]);
    a.close().await;

    // Missed while away: 2, 3 (deleted later as 5), 4; and 5 the deletion.
    cl.post(&alice, &c, "two").await;
    let three = cl.post(&alice, &c, "three").await;
    cl.post(&alice, &c, "four").await;
    let (s, _) = cl
        .call(
            Method::DELETE,
            &format!("/api/messages-realtime/{}", three["id"].as_str().unwrap()),
            &token(&alice),
            None,
        )
        .await;
    assert_eq!(s, 204);

    let mut a = Client::connect(&cl.gw2.url, &token(&alice)).await;
    let r = a
        .send("join-community", json!({"communityId": c, "lastSeq": 1}))
        .await;
    let mut got = Vec::new();
    let ack = loop {
        let f = a.frame().await;
        match f["type"].as_str() {
            Some("ack") if f["ref"] == r => break f["data"].clone(),
            Some("new-message") => got.push((f["data"]["message"]["seq"].as_i64().unwrap(), "new")),
            Some("message-deleted") => got.push((f["data"]["seq"].as_i64().unwrap(), "deleted")),
            _ => {}
        }
    };
    // "three" was created and deleted since: only its deletion comes.
    assert_eq!(got, vec![(2, "new"), (4, "new"), (5, "deleted")]);
    assert_eq!(
        (
            ack["recovered"].clone(),
            ack["missed"].clone(),
            ack["headSeq"].clone()
        ),
        (json!(true), json!(3), json!(5))
    );
    // Live events continue right after, no gap or repeat at the seam.
    cl.post(&alice, &c, "six").await;
    assert_eq!(a.seqs_until(6).await, vec![6]);

    // lastSeq above the head counts as the head.
    let mut b = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let ack = b.join(&c, Some(1_000)).await;
    assert_eq!(
        (ack["recovered"].clone(), ack["missed"].clone()),
        (json!(true), json!(0))
    );
}

#[tokio::test]
async fn recovery_beyond_the_window_is_refused() {
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    opts.recovery_window = 5;
    let cl = Cluster::start_with(opts).await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    for i in 0..8 {
        cl.post(&alice, &c, &format!("m{i}")).await;
    }
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let ack = a.join(&c, Some(1)).await;
    assert_eq!(
        (
            ack["recovered"].clone(),
            ack["missed"].clone(),
            ack["headSeq"].clone()
        ),
        (json!(false), json!(7), json!(8))
    );
    let ack = Client::connect(&cl.gw2.url, &token(&alice))
        .await
        .join(&c, Some(3))
        .await;
    assert_eq!(
        (ack["recovered"].clone(), ack["missed"].clone()),
        (json!(true), json!(5)),
        "exactly the window is fine"
    );
    cl.post(&alice, &c, "live").await;
    assert_eq!(a.seqs_until(9).await, vec![9]);
}

#[tokio::test]
async fn mentions_and_notifications_arrive_live() {
    let cl = Cluster::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let mut b1 = Client::connect(&cl.gw1.url, &token(&bob)).await;
    let mut b2 = Client::connect(&cl.gw2.url, &token(&bob)).await;
    let mut b3 = Client::connect(&cl.gw2.url, &token(&bob)).await;
    // b3 joins the community (for the marker below) but does not ask for
    // notifications.
    b3.join(&c, None).await;
    let ack = b1.ok("subscribe-notifications", json!({})).await;
    assert_eq!(ack, json!({"unreadCount": 0}));
    b2.ok("subscribe-notifications", json!({})).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    a.ok(
        "send-message",
        json!({"communityId": c, "content": "hi @bob", "mentions": [bob]}),
    )
    .await;
    for b in [&mut b1, &mut b2] {
        let n = b.event_of("notification").await;
        assert_eq!(n["data"]["notification"]["type"], "mention");
        assert_eq!(n["data"]["notification"]["userId"], bob.as_str());
    }
    // b3 (not subscribed) got the message but no notification before the
    // marker.
    cl.post(&alice, &c, "marker").await;
    let before = b3.events_before_message("marker").await;
    assert!(
        before.iter().all(|e| e["type"] != "notification"),
        "not subscribed to notifications: {before:?}"
    );
    let (s, _) = cl
        .call(
            Method::POST,
            "/api/notifications-broadcast",
            &official(&uid("mod")),
            Some(json!({"userId": bob, "type": "system", "title": "t", "message": "m"})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        b2.event_of("notification").await["data"]["notification"]["type"],
        "system"
    );
    assert_eq!(
        b1.ok("subscribe-notifications", json!({})).await,
        json!({"unreadCount": 2})
    );
}

#[tokio::test]
async fn typing_reaches_others_but_never_the_typer() {
    let cl = Cluster::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let mut a1 = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let mut a2 = Client::connect(&cl.gw2.url, &token(&alice)).await;
    let mut b = Client::connect(&cl.gw2.url, &token(&bob)).await;
    for x in [&mut a1, &mut a2, &mut b] {
        x.join(&c, None).await;
    }
    assert_eq!(
        a2.event_of("user-joined").await["data"]["userId"],
        bob.as_str()
    );
    a1.ok("typing", json!({"communityId": c, "isTyping": true}))
        .await;
    let t = b.event_of("user-typing").await;
    assert_eq!(
        t["data"],
        json!({"communityId": c, "userId": alice, "name": format!("{alice} name"), "isTyping": true})
    );
    // The typer's other tab hears nothing: the marker comes next.
    cl.post(&bob, &c, "marker").await;
    a2.next_is_message("marker").await;
    let err = Client::connect(&cl.gw1.url, &token(&bob))
        .await
        .request("typing", json!({"communityId": c, "isTyping": true}))
        .await;
    assert_eq!(err["error"]["code"], "forbidden", "typing needs a join");
}

#[tokio::test]
async fn removed_members_get_membership_revoked_and_nothing_more() {
    let cl = Cluster::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let mut b = Client::connect(&cl.gw2.url, &token(&bob)).await;
    b.join(&c, None).await;
    let (s, _) = cl
        .call(
            Method::DELETE,
            &format!("/api/communities/{c}/members/{bob}"),
            &token(&alice),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let r = b.event_of("membership-revoked").await;
    assert_eq!(r["data"], json!({"communityId": c}));
    cl.post(&alice, &c, "secret").await;
    // No more events from it: a notification bob sends himself afterwards
    // is the next thing he gets.
    b.ok("subscribe-notifications", json!({})).await;
    let (s, _) = cl
        .call(
            Method::POST,
            "/api/notifications-broadcast",
            &token(&bob),
            Some(json!({"userId": bob, "type": "marker", "title": "t", "message": "m"})),
        )
        .await;
    assert_eq!(s, 201);
    let next = b.next_event().await;
    assert_eq!(next["type"], "notification", "got {next}");
    let err = b.request("join-community", json!({"communityId": c})).await;
    assert_eq!(err["error"]["code"], "forbidden");
}

#[tokio::test]
async fn dropped_and_reordered_publications_are_filled_in_order_once() {
    let cl = Cluster::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    a.join(&c, None).await;

    let mut lock =
        chorus_testkit::AdvisoryLock::take(&cl.db, chorus_api::outbox::OUTBOX_LOCK_KEY).await;
    // A mention makes the first post the publisher's (locked out), and the
    // plain posts behind it wait for it instead of publishing themselves.
    let (s, _) = cl
        .call(
            Method::POST,
            "/api/messages-realtime",
            &token(&alice),
            Some(json!({"communityId": c, "content": "m1 @bob", "mentions": [bob]})),
        )
        .await;
    assert_eq!(s, 201);
    for i in 2..=4 {
        cl.post(&alice, &c, &format!("m{i}")).await;
    }
    // Only seq 3 reaches Redis (1 and 2 "dropped", 3 before them): the
    // gateway must hold 3 back, fetch 1 and 2, and deliver 1, 2, 3.
    let (channel, payload): (String, Vec<u8>) =
        sqlx::query_as("select channel, payload from outbox where published_at is null order by id offset 2 limit 1")
            .fetch_one(lock.conn())
            .await
            .unwrap();
    publish_raw(channel, payload).await;
    assert_eq!(a.seqs_until(3).await, vec![1, 2, 3], "gap filled in order");
    // Now the real publisher runs: 1-4 all arrive again; only 4 is new.
    lock.release().await;
    assert_eq!(a.seqs_until(4).await, vec![4], "repeats dropped");
    cl.post(&alice, &c, "m5").await;
    assert_eq!(a.seqs_until(5).await, vec![5], "and none comes later");
}
