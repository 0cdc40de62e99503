//! What concerns users rather than sequences: presence across tabs and
//! gateways (the grace after a loss is in `grace`), typing, notifications.

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

/// A second tab that connects while the first tab's subscribe of the
/// user's channel is in flight waits for it; when it fails, both fail
/// (neither lives on without notifications and revocations), and the next
/// connection subscribes again.
#[tokio::test(start_paused = true)]
async fn a_tab_connecting_during_a_failing_subscribe_fails_with_it() {
    let f = Fixture::new(1000);
    let refused = f.backplane.refuse_subscribes();
    let tab = |id: u64| {
        let hub = f.hub.clone();
        let expiry = tokio::time::Instant::now() + WAIT;
        let (c, rx) = ConnHandle::new(id, "a", "a", Encoding::Json, 16, expiry);
        let slot = hub.reserve("a", 0).expect("no cap");
        let task = tokio::spawn(async move { hub.connect(&c, slot).await });
        (task, rx)
    };
    let (first, _rx1) = tab(1);
    tokio::task::yield_now().await;
    let (second, _rx2) = tab(2);
    tokio::task::yield_now().await;
    assert!(!second.is_finished(), "waits for the first tab's subscribe");
    refused.notify_one();
    assert!(first.await.expect("first").is_err());
    assert!(second.await.expect("second").is_err(), "fails with it");
    let channel = chorus_shared::envelope::user_channel("a");
    assert!(!f.backplane.is_subscribed(&channel));

    f.backplane.accept_subscribes();
    let (third, _rx3) = tab(3);
    third.await.expect("third").expect("subscribed again");
    assert!(f.backplane.is_subscribed(&channel));
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
pub(super) fn second_gateway(f: &Fixture, id: &str) -> (Hub, Arc<MemoryBackplane>) {
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
pub(super) async fn conn_on(
    f: &Fixture,
    hub: &Hub,
    id: u64,
    user: &str,
) -> (Arc<ConnHandle>, OutboundRx) {
    f.api.add_member(f.community, user);
    let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
    let (c, rx) = ConnHandle::new(id, user, user, Encoding::Json, 64, expiry);
    let slot = hub.reserve(user, 0).expect("no cap");
    hub.connect(&c, slot).await.expect("connected");
    (c, rx)
}

pub(super) async fn online(f: &Fixture) -> Vec<String> {
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
        dead.presence_join(f.community, "z", None)
            .await
            .expect("join")
            .first
    );
    assert!(
        !dead
            .presence_join(f.community, "y", None)
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

/// The in-process backplane announces a presence change as the scripts
/// do: only a first entry anywhere or a last one, and only while at most
/// the announcement's bound is online after it.
#[tokio::test(start_paused = true)]
async fn the_memory_backplane_announces_within_the_bound_as_the_scripts_do() {
    use crate::backplane::{Announce, Announced};
    let bus = MemoryBus::new();
    let (a, b) = (
        MemoryBackplane::new(bus.clone(), "gw-a"),
        MemoryBackplane::new(bus.clone(), "gw-b"),
    );
    let c = Uuid::new_v4();
    let bound = |max_online| Announce {
        envelope: bytes::Bytes::from_static(b"announced"),
        max_online,
    };
    let join = async |bp: &MemoryBackplane, user| {
        bp.presence_join(c, user, Some(&bound(1)))
            .await
            .expect("join")
            .announced
    };
    let leave = async |bp: &MemoryBackplane, user| {
        bp.presence_leave(c, user, Some(&bound(0)))
            .await
            .expect("leave")
            .announced
    };
    assert_eq!(join(&a, "u").await, Announced::Published, "1 online");
    assert_eq!(join(&b, "u").await, Announced::NotDue, "not first");
    assert_eq!(join(&a, "v").await, Announced::NotDue, "2 online");
    assert_eq!(leave(&a, "v").await, Announced::NotDue, "1 stays");
    assert_eq!(leave(&a, "u").await, Announced::NotDue, "not last");
    assert_eq!(leave(&b, "u").await, Announced::Published, "none stay");
    let none = a.presence_join(c, "w", None).await.expect("join");
    assert_eq!((none.first, none.announced), (true, Announced::NotDue));
}
