//! What concerns users rather than sequences: presence across tabs and
//! gateways, typing, notifications.

use super::*;

#[tokio::test(start_paused = true)]
async fn presence_counts_users_not_tabs() {
    let mut f = Fixture::new(1000);
    let (watcher, mut rx) = f.conn("w", 64).await;
    f.join(&watcher, None).await.expect("joined");
    let (tab1, _rx1) = f.conn("a", 64).await;
    let (tab2, _rx2) = f.conn("a", 64).await;
    f.join(&tab1, None).await.expect("joined");
    f.join(&tab2, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "a"));
    // The second tab announced nothing, nor does closing one of two.
    assert!(f.hub.leave(f.community, &tab1).await);
    f.marker().await;
    assert_marker_next(&mut rx).await;
    // Closing the last tab (its close frame, then the end) announces the
    // leave at once: before a marker sent right after.
    tab2.client_closed(Some(1001));
    f.hub.disconnect(&tab2, &[f.community]).await;
    f.marker().await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "a"));
    assert_marker_next(&mut rx).await;
}

#[tokio::test(start_paused = true)]
async fn one_lost_connection_leaves_at_once() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (a, _rx_a) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "a"));
    // No close frame, and no other loss: the contract's leave, at once.
    f.hub.disconnect(&a, &[f.community]).await;
    f.marker().await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "a"));
    assert_marker_next(&mut rx).await;
}

#[tokio::test(start_paused = true)]
async fn connections_lost_many_at_once_are_held_for_the_grace() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 1024).await;
    f.join(&w, None).await.expect("joined");
    let limit = crate::config::DEFAULT_MASS_LOSS_PER_SECOND as usize;
    let mut lost = Vec::new();
    for i in 0..=limit + 1 {
        let (c, rx_c) = f.conn(&format!("u{i}"), 64).await;
        f.join(&c, None).await.expect("joined");
        assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(_)));
        lost.push((c, rx_c));
    }
    // All lost at the same moment (counted in this order): up to the rate
    // each leaves at once; past it, losses are held.
    futures_util::future::join_all(
        lost.iter()
            .map(|(c, _)| f.hub.disconnect(c, std::slice::from_ref(&f.community))),
    )
    .await;
    f.marker().await;
    let mut left = std::collections::HashSet::new();
    for _ in 0..limit {
        match next(&mut rx).await {
            ServerEvent::UserLeft(l) => assert!(left.insert(l.user_id)),
            other => panic!("expected a user-left, got {other:?}"),
        }
    }
    assert_eq!(left, (0..limit).map(|i| format!("u{i}")).collect());
    assert_marker_next(&mut rx).await;
    // The held ones leave when the grace ends, in the order they were lost.
    let at = tokio::time::Instant::now();
    for i in limit..=limit + 1 {
        assert!(
            matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == format!("u{i}"))
        );
    }
    assert!(at.elapsed() >= GRACE - Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn a_held_user_back_within_the_grace_is_announced_neither_gone_nor_back() {
    let mut f = Fixture::holding_losses();
    let (other, _other_bp) = second_gateway(&f, "gw-other");
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (a, _rx_a) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "a"));
    // Lost: still present, to the room and to everyone reading the
    // backplane.
    f.hub.disconnect(&a, &[f.community]).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["a", "w"]);
    // Back just before the grace ends, through another gateway.
    tokio::time::advance(GRACE - Duration::from_millis(10)).await;
    let (a2, _rx_a2) = conn_on(&f, &other, 901, "a").await;
    join(&other, &f.api, f.community, &a2, None)
        .await
        .expect("joined");
    // The grace ends: the held presence goes, a is still online elsewhere,
    // and neither the loss nor the return was announced. (A sleep, not an
    // advance: the clock moves on only once every task, the release
    // included, is idle.)
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["a", "w"]);
    // A goodbye from the new connection is a leave, announced at once.
    a2.client_closed(None);
    other.disconnect(&a2, &[f.community]).await;
    f.marker().await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "a"));
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["w"]);
}

#[tokio::test(start_paused = true)]
async fn a_return_takes_the_held_slot_over_so_its_leave_is_at_once() {
    let mut f = Fixture::holding_losses();
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (a, _rx_a) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "a"));
    f.hub.disconnect(&a, &[f.community]).await;
    // Back on the same gateway: the new connection takes the held slot.
    let (a2, _rx_a2) = f.conn("a", 64).await;
    f.join(&a2, None).await.expect("joined");
    f.marker().await;
    assert_marker_next(&mut rx).await;
    // Its leave is the user's: announced at once, not when the old
    // connection's grace ends.
    assert!(f.hub.leave(f.community, &a2).await);
    f.marker().await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "a"));
    assert_marker_next(&mut rx).await;
    // And the grace's end finds its slot taken: nothing more.
    tokio::time::sleep(GRACE).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["w"]);
}

#[tokio::test(start_paused = true)]
async fn a_held_user_not_back_leaves_when_the_grace_ends() {
    let mut f = Fixture::holding_losses();
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (a, _rx_a) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "a"));
    let (b, _rx_b) = f.conn("b", 64).await;
    f.join(&b, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "b"));
    let lost = tokio::time::Instant::now();
    f.hub.disconnect(&a, &[f.community]).await;
    tokio::time::advance(GRACE / 2).await;
    f.hub.disconnect(&b, &[f.community]).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    // Each leaves when its own grace ends, in the order they were lost.
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "a"));
    assert!(lost.elapsed() >= GRACE);
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "b"));
    assert!(lost.elapsed() >= GRACE + GRACE / 2);
    assert_eq!(online(&f).await, ["w"]);
}

#[tokio::test(start_paused = true)]
async fn a_drained_connection_is_held_and_a_close_frame_answering_ours_is_no_goodbye() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    // A drain (1012) sends the client elsewhere: held even on its own, and
    // the close frame answering ours is no goodbye.
    let (c, _rx_c) = f.conn("c", 64).await;
    f.join(&c, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "c"));
    c.drain(500);
    c.client_closed(Some(1000));
    assert!(!c.said_goodbye());
    f.hub.disconnect(&c, &[f.community]).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "c"));
    // A client's own close with a code of its own (the SDK's 4000: it
    // gives this connection up for another) is no goodbye either.
    let (d, _rx_d) = f.conn("d", 64).await;
    d.client_closed(Some(4000));
    assert!(!d.said_goodbye());
    d.client_closed(Some(1001));
    assert!(d.said_goodbye());
}

#[tokio::test(start_paused = true)]
async fn typing_is_broadcast_once_a_second_per_state_however_many_tabs() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let mut tabs = Vec::new();
    for _ in 0..3 {
        let (t, rx_t) = f.conn("a", 64).await;
        f.join(&t, None).await.expect("joined");
        tabs.push((t, rx_t));
    }
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(_)));
    let typing = |e: ServerEvent| match e {
        ServerEvent::UserTyping(t) => (t.user_id, t.is_typing),
        other => panic!("expected user-typing, got {other:?}"),
    };
    for round in 0..5 {
        for (t, _) in &tabs {
            f.hub.typing(f.community, t, true).await.expect("member");
        }
        if round == 0 {
            assert_eq!(typing(next(&mut rx).await), ("a".into(), true));
        }
    }
    // Fifteen `true`s in the same second: one broadcast. A change of state
    // passes at once.
    f.hub
        .typing(f.community, &tabs[0].0, false)
        .await
        .expect("member");
    assert_eq!(typing(next(&mut rx).await), ("a".into(), false));
    f.marker().await;
    assert_marker_next(&mut rx).await;
    tokio::time::advance(Duration::from_millis(1001)).await;
    f.hub
        .typing(f.community, &tabs[1].0, false)
        .await
        .expect("member");
    assert_eq!(
        typing(next(&mut rx).await),
        ("a".into(), false),
        "a second later"
    );

    let (outsider, _rx_o) = f.conn("o", 4).await;
    assert!(matches!(
        f.hub.typing(f.community, &outsider, true).await,
        Err(GatewayError::Forbidden(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_republished_outbox_batch_of_notifications_is_delivered_once() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 2048).await;
    f.hub.subscribe_notifications(&a);
    let sent: Vec<Publication> = (0..600).map(|n| notification("a", n)).collect();
    for p in &sent {
        f.publish(p);
        tokio::task::yield_now().await;
    }
    for n in 0..600 {
        assert_eq!(title(next(&mut rx).await), format!("n{n}"));
    }
    // A failed batch of 500 goes out again: all repeats, all dropped.
    for p in &sent[100..] {
        f.publish(p);
        tokio::task::yield_now().await;
    }
    f.publish(&notification("a", 600));
    assert_eq!(
        title(next(&mut rx).await),
        "n600",
        "nothing repeated before it"
    );
}

/// A heartbeat report of `backplane`'s gateway, as its registry timer sends.
async fn beat(backplane: &MemoryBackplane) {
    let status = chorus_shared::protocol::GatewayStatus {
        id: "gw".into(),
        connections: 0,
        started_at: chrono::Utc::now(),
    };
    backplane.report(&status).await.expect("report");
}

/// A second gateway on the fixture's bus and API.
fn second_gateway(f: &Fixture, id: &str) -> (Hub, Arc<MemoryBackplane>) {
    let backplane = MemoryBackplane::new(f.bus.clone(), id);
    let hub = Hub::new(
        backplane.clone(),
        f.api.clone(),
        HubConfig {
            recovery_window: 1000,
            presence_limit: 10_000,
            presence_grace: GRACE,
            mass_loss_per_second: crate::config::DEFAULT_MASS_LOSS_PER_SECOND,
        },
    );
    backplane.start(Arc::new(hub.clone()));
    (hub, backplane)
}

/// A connection of `user` (a member) on another gateway's hub.
async fn conn_on(
    f: &Fixture,
    hub: &Hub,
    id: u64,
    user: &str,
) -> (Arc<ConnHandle>, mpsc::Receiver<Outbound>) {
    f.api.add_member(f.community, user);
    let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
    let (c, rx) = ConnHandle::new(id, user, user, Encoding::Json, 64, expiry);
    let slot = hub.reserve(user, 0).expect("no cap");
    hub.connect(&c, slot).await.expect("connected");
    (c, rx)
}

async fn online(f: &Fixture) -> Vec<String> {
    let mut online = f
        .backplane
        .presence_online(f.community)
        .await
        .expect("online");
    online.sort();
    online
}

#[tokio::test(start_paused = true)]
async fn a_dead_gateways_users_are_reaped_once_its_heartbeat_lapses() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (y, _rx_y) = f.conn("y", 64).await;
    f.join(&y, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "y"));
    // z is online only through another gateway, y through both; that
    // gateway then stops reporting (it died).
    let dead = MemoryBackplane::new(f.bus.clone(), "gw-dead");
    assert!(
        dead.presence_join(f.community, "z")
            .await
            .expect("join")
            .first
    );
    assert!(
        !dead
            .presence_join(f.community, "y")
            .await
            .expect("join")
            .first
    );
    let ttl = crate::config::DEFAULT_PRESENCE_LIVENESS_TTL;
    let step = crate::config::REGISTRY_INTERVAL;
    let mut waited = Duration::ZERO;
    while waited + step < ttl {
        tokio::time::advance(step).await;
        waited += step;
        beat(&f.backplane).await;
        f.hub.presence_upkeep().await;
    }
    // Alive until its heartbeat's TTL: nothing reaped yet.
    f.marker().await;
    assert_marker_next(&mut rx).await;
    tokio::time::advance(step).await;
    beat(&f.backplane).await;
    f.hub.presence_upkeep().await;
    // z went offline everywhere, announced once; y is still here.
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "z"));
    f.hub.presence_upkeep().await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["w", "y"]);
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_gateway_reaped_meanwhile_announces_its_users_again() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (other, _other_bp) = second_gateway(&f, "gw-other");
    let (a, _rx_a) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "a"));
    // Cut off longer than the TTL: another gateway reaps it, announcing a
    // gone (and w, whom w's own connection is not told about).
    f.backplane.lapse();
    other.presence_upkeep().await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "a"));
    assert!(online(&f).await.is_empty());
    // Back in touch: the heartbeat finds its key gone, and the upkeep puts
    // its users back under a new incarnation, announcing them.
    beat(&f.backplane).await;
    f.hub.presence_upkeep().await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "a"));
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["a", "w"]);
    // The new incarnation is alive: the other gateway reaps nothing more.
    other.presence_upkeep().await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
}

#[tokio::test(start_paused = true)]
async fn a_lapse_noticed_before_any_reaping_changes_no_ones_presence() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (a, _rx_a) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "a"));
    f.backplane.lapse();
    beat(&f.backplane).await;
    // Writes under the lapsed incarnation are refused: b's join is left to
    // the renewal, which adds it with the rest.
    let (b, _rx_b) = f.conn("b", 64).await;
    f.join(&b, None).await.expect("joined");
    // Its own upkeep renews first, then reaps the old incarnation: a and w
    // were never gone, b comes online once.
    f.hub.presence_upkeep().await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(j) if j.user_id == "b"));
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["a", "b", "w"]);
    // And leaving works under the new incarnation.
    f.hub.disconnect(&a, &[f.community]).await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "a"));
}

#[tokio::test(start_paused = true)]
async fn a_clean_exit_announces_its_users_gone_everywhere() {
    let mut f = Fixture::new(1000);
    let (other, other_bp) = second_gateway(&f, "gw-other");
    let (w, mut rx) = conn_on(&f, &other, 900, "w").await;
    join(&other, &f.api, f.community, &w, None)
        .await
        .expect("joined");
    let (a, _rx_a) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    let (b1, _rx_b1) = f.conn("b", 64).await;
    f.join(&b1, None).await.expect("joined");
    let (b2, _rx_b2) = conn_on(&f, &other, 901, "b").await;
    join(&other, &f.api, f.community, &b2, None)
        .await
        .expect("joined");
    for _ in 0..2 {
        assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(_)));
    }
    // The exit removes a and b's entries here: a is gone, b is still on
    // the other gateway.
    f.hub.withdraw_presence().await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "a"));
    f.marker().await;
    assert_marker_next(&mut rx).await;
    let mut online = other_bp.presence_online(f.community).await.expect("online");
    online.sort();
    assert_eq!(online, ["b", "w"]);
    // Nothing is left for a reaper.
    other.presence_upkeep().await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
}

#[tokio::test(start_paused = true)]
async fn every_change_of_typing_state_passes_and_only_repeats_coalesce() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (t, _rx_t) = f.conn("a", 64).await;
    f.join(&t, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(_)));
    // true, true, false, false, true, true, ...: each change once.
    for i in 0..20 {
        f.hub
            .typing(f.community, &t, i % 4 < 2)
            .await
            .expect("member");
    }
    let mut states = Vec::new();
    for _ in 0..10 {
        states.push(match next(&mut rx).await {
            ServerEvent::UserTyping(t) => t.is_typing,
            other => panic!("expected user-typing, got {other:?}"),
        });
    }
    assert_eq!(states, [true, false].repeat(5));
    f.marker().await;
    assert_marker_next(&mut rx).await;
}
