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
    // Closing the last tab (the connection ends) announces the leave.
    f.hub.disconnect(&tab2, &[f.community]).await;
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "a"));
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

#[tokio::test(start_paused = true)]
async fn a_refresh_keeps_local_users_and_sweeps_a_dead_gateways() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    // z is online only through another gateway, which then dies.
    let dead = MemoryBackplane::new(f.bus.clone(), "gw-dead");
    let j = dead.presence_join(f.community, "z").await.expect("join");
    assert!(j.first);
    for _ in 0..6 {
        tokio::time::advance(crate::config::PRESENCE_REFRESH).await;
        f.hub.refresh_presence().await;
    }
    // Thirty seconds on: w stayed online through the refreshes, z expired
    // and was announced gone exactly once.
    assert!(matches!(next(&mut rx).await, ServerEvent::UserLeft(l) if l.user_id == "z"));
    f.marker().await;
    assert_marker_next(&mut rx).await;
    let online = f
        .backplane
        .presence_online(f.community)
        .await
        .expect("online");
    assert_eq!(online, ["w"]);
}

#[tokio::test(start_paused = true)]
async fn flipping_typing_states_cannot_go_faster_than_two_broadcasts_a_second() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (t, _rx_t) = f.conn("a", 64).await;
    f.join(&t, None).await.expect("joined");
    assert!(matches!(next(&mut rx).await, ServerEvent::UserJoined(_)));
    for i in 0..20 {
        f.hub
            .typing(f.community, &t, i % 2 == 0)
            .await
            .expect("member");
    }
    let states: Vec<bool> = [next(&mut rx).await, next(&mut rx).await]
        .into_iter()
        .map(|e| match e {
            ServerEvent::UserTyping(t) => t.is_typing,
            other => panic!("expected user-typing, got {other:?}"),
        })
        .collect();
    assert_eq!(states, [true, false]);
    f.marker().await;
    assert_marker_next(&mut rx).await;
}
