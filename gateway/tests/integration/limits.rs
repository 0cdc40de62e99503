//! The gateway's hardening limits on the real stack (API, Postgres, Redis):
//! typing coalesced across tabs, the join cap, repeated notifications
//! dropped, readiness while rooms cannot be repaired.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn typing_from_many_tabs_is_broadcast_once_a_second_per_state() {
    let cl = Cluster::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let mut watcher = Client::connect(&cl.gw2.url, &token(&alice)).await;
    watcher.join(&c, None).await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        let mut t = Client::connect(&cl.gw1.url, &token(&bob)).await;
        t.join(&c, None).await;
        tabs.push(t);
    }
    // A few round trips: well within the second.
    let typing = json!({"communityId": c, "isTyping": true});
    for t in &mut tabs {
        t.ok("typing", typing.clone()).await;
    }
    tabs[0]
        .ok("typing", json!({"communityId": c, "isTyping": false}))
        .await;
    let first = watcher.event_of("user-typing").await;
    assert_eq!(first["data"]["isTyping"], true);
    let next = watcher.next_event().await;
    assert_eq!(
        (next["type"].as_str(), next["data"]["isTyping"].as_bool()),
        (Some("user-typing"), Some(false)),
        "three `true`s in a second, one broadcast: {next}"
    );
}

#[tokio::test]
async fn a_connection_joins_at_most_its_cap_of_communities() {
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    opts.max_joins = 2;
    let cl = Cluster::start_with(opts).await;
    let alice = uid("alice");
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let mut cs = Vec::new();
    for _ in 0..3 {
        cs.push(cl.community(&alice, &[]).await);
    }
    a.join(&cs[0], None).await;
    a.join(&cs[1], None).await;
    let err = a
        .request("join-community", json!({"communityId": cs[2]}))
        .await;
    assert_eq!(err["error"]["code"], "bad_request", "{err}");
    // Rejoining one already joined is not a new join; leaving frees a place.
    a.join(&cs[0], None).await;
    a.ok("leave-community", json!({"communityId": cs[1]})).await;
    a.join(&cs[2], None).await;

    // So does losing a membership.
    let bob = uid("bob");
    let mut b = Client::connect(&cl.gw1.url, &token(&bob)).await;
    let theirs: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(cl.community(&alice, &[&bob]).await);
        }
        v
    };
    b.join(&theirs[0], None).await;
    b.join(&theirs[1], None).await;
    let (s, _) = cl
        .call(
            reqwest::Method::DELETE,
            &format!("/api/communities/{}/members/{bob}", theirs[0]),
            &token(&alice),
            None,
        )
        .await;
    assert_eq!(s, 204);
    b.event_of("membership-revoked").await;
    b.join(&theirs[2], None).await;
}

#[tokio::test]
async fn a_notification_published_twice_is_delivered_once() {
    let cl = Cluster::start().await;
    let bob = uid("bob");
    let mut b = Client::connect(&cl.gw1.url, &token(&bob)).await;
    b.ok("subscribe-notifications", json!({})).await;
    let send = |title: &'static str| {
        let (cl, bob) = (&cl, bob.clone());
        async move {
            let (s, n) = cl
                .call(
                    reqwest::Method::POST,
                    "/api/notifications-broadcast",
                    &token(&bob),
                    Some(json!({"userId": bob, "type": "t", "title": title, "message": "m"})),
                )
                .await;
            assert_eq!(s, 201);
            n
        }
    };
    // The publisher is locked out, so the event waits in the outbox (a
    // published row is deleted); it is published here twice, as an
    // at-least-once outbox may, and a third time by the publisher.
    let mut lock =
        chorus_testkit::AdvisoryLock::take(&cl.db, chorus_api::outbox::OUTBOX_LOCK_KEY).await;
    send("first").await;
    let (channel, payload): (String, Vec<u8>) = sqlx::query_as(
        "select channel, payload from outbox where channel = $1 and published_at is null order by id desc limit 1",
    )
    .bind(chorus_shared::envelope::user_channel(&bob))
    .fetch_one(lock.conn())
    .await
    .unwrap();
    publish_raw(channel.clone(), payload.clone()).await;
    let got = b.event_of("notification").await;
    assert_eq!(got["data"]["notification"]["title"], "first");
    publish_raw(channel, payload).await;
    lock.release().await;
    send("second").await;
    let next = b.next_event().await;
    assert_eq!(
        next["data"]["notification"]["title"], "second",
        "the repeat was dropped: {next}"
    );
}

#[tokio::test]
async fn a_gateway_whose_rooms_cannot_repair_reports_not_ready() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    a.join(&c, None).await;
    assert!(cl.gw1.ready().await);
    let Cluster { api, gw1, .. } = cl;
    api.stop().await;
    // A sequenced event two ahead of the head: a gap the API cannot fill.
    let env = chorus_shared::envelope::Envelope::new(
        Some(c.parse().unwrap()),
        Some(2),
        0,
        chorus_shared::protocol::ServerEvent::MembershipRevoked(
            chorus_shared::protocol::MembershipRevoked {
                community_id: c.parse().unwrap(),
            },
        ),
    );
    publish_raw(
        chorus_shared::envelope::community_channel(&c.parse().unwrap()),
        env.encode(),
    )
    .await;
    wait_until(|| async { !gw1.ready().await }).await;
    let body = reqwest::get(format!("{}/readyz", gw1.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "rooms cannot fetch missing events");
}
