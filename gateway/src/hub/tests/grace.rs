//! The presence grace (`hub::linger`): which ends are held (a drain, a
//! mass loss) and which leave at once (one loss, a goodbye), a return
//! taking the held slot over, and the release when the grace ends.

use super::users::{conn_on, online, second_gateway};
use super::*;

#[tokio::test(start_paused = true)]
async fn one_lost_connection_leaves_at_once() {
    let mut f = Fixture::new(1000);
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (a, _rx_a) = f.joined("a", 64).await;
    assert_joined(&mut rx, "a").await;
    // No close frame, and no other loss: the contract's leave, at once.
    f.hub.disconnect(&a, &[f.community]).await;
    f.marker().await;
    assert_left(&mut rx, "a").await;
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
        let (c, rx_c) = f.joined(&format!("u{i}"), 64).await;
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
    let (a, _rx_a) = f.joined("a", 64).await;
    assert_joined(&mut rx, "a").await;
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
    assert_left(&mut rx, "a").await;
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["w"]);
}

#[tokio::test(start_paused = true)]
async fn a_return_takes_the_held_slot_over_so_its_leave_is_at_once() {
    let mut f = Fixture::holding_losses();
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (a, _rx_a) = f.joined("a", 64).await;
    assert_joined(&mut rx, "a").await;
    f.hub.disconnect(&a, &[f.community]).await;
    // Back on the same gateway: the new connection takes the held slot.
    let (a2, _rx_a2) = f.joined("a", 64).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    // The grace's end finds the slot taken over: a stays, unannounced.
    tokio::time::sleep(GRACE).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["a", "w"]);
    // Its leave is the user's: announced at once, not when the old
    // connection's grace ends.
    assert!(f.hub.leave(f.community, &a2).await);
    f.marker().await;
    assert_left(&mut rx, "a").await;
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
    let (a, _rx_a) = f.joined("a", 64).await;
    assert_joined(&mut rx, "a").await;
    let (b, _rx_b) = f.joined("b", 64).await;
    assert_joined(&mut rx, "b").await;
    let lost = tokio::time::Instant::now();
    f.hub.disconnect(&a, &[f.community]).await;
    tokio::time::advance(GRACE / 2).await;
    f.hub.disconnect(&b, &[f.community]).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    // Each leaves when its own grace ends, in the order they were lost.
    assert_left(&mut rx, "a").await;
    assert!(lost.elapsed() >= GRACE);
    assert_left(&mut rx, "b").await;
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
    let (c, _rx_c) = f.joined("c", 64).await;
    assert_joined(&mut rx, "c").await;
    c.drain(500);
    c.client_closed(Some(1000));
    assert!(!c.said_goodbye());
    f.hub.disconnect(&c, &[f.community]).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert_left(&mut rx, "c").await;
    // A client's own close with a code of its own (the SDK's 4000: it
    // gives this connection up for another) is no goodbye either.
    let (d, _rx_d) = f.conn("d", 64).await;
    d.client_closed(Some(4000));
    assert!(!d.said_goodbye());
    d.client_closed(Some(1001));
    assert!(d.said_goodbye());
}

#[tokio::test(start_paused = true)]
async fn each_hold_ends_at_its_own_deadline() {
    let mut f = Fixture::holding_losses();
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (a, _rx_a) = f.joined("a", 64).await;
    assert_joined(&mut rx, "a").await;
    let lost = tokio::time::Instant::now();
    f.hub.disconnect(&a, &[f.community]).await;
    // Back, taking the hold over, and lost again just before the first
    // grace ends: held anew, until its own deadline.
    let (a2, _rx_a2) = f.joined("a", 64).await;
    tokio::time::advance(GRACE - Duration::from_millis(100)).await;
    f.hub.disconnect(&a2, &[f.community]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["a", "w"]);
    assert_left(&mut rx, "a").await;
    assert!(lost.elapsed() >= 2 * GRACE - Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_held_users_channel_stays_subscribed_until_the_grace_ends() {
    use chorus_shared::envelope::user_channel;

    use super::{notification, title};
    let mut f = Fixture::holding_losses();
    let channel = user_channel("a");
    let (a, _rx_a) = f.joined("a", 64).await;
    assert!(f.backplane.is_subscribed(&channel));
    // Lost and held. Another user's first connection subscribes after
    // anything queued before it, so the check below is not too early.
    f.hub.disconnect(&a, &[f.community]).await;
    let (_b, _rx_b) = f.conn("b", 64).await;
    assert!(
        f.backplane.is_subscribed(&channel),
        "kept through the grace"
    );
    // Back: the channel is there already, and it reaches the return at
    // once, before and after the first grace ends.
    let (a2, mut rx_a2) = f.joined("a", 64).await;
    f.hub.subscribe_notifications(&a2);
    assert_eq!(f.bus.subscribers(&channel), 1);
    f.publish(&notification("a", 1));
    assert_eq!(title(next(&mut rx_a2).await), "n1");
    tokio::time::advance(GRACE + Duration::from_millis(10)).await;
    let (_c, _rx_c) = f.conn("c", 64).await;
    f.publish(&notification("a", 2));
    assert_eq!(title(next(&mut rx_a2).await), "n2");
    // Lost again: the channel goes when this grace ends.
    f.hub.disconnect(&a2, &[f.community]).await;
    tokio::time::advance(GRACE - Duration::from_millis(10)).await;
    let (_d, _rx_d) = f.conn("d", 64).await;
    assert!(f.backplane.is_subscribed(&channel));
    tokio::time::advance(Duration::from_millis(20)).await;
    until(|| !f.backplane.is_subscribed(&channel)).await;
}

#[tokio::test(start_paused = true)]
async fn a_held_user_whose_membership_is_revoked_leaves_at_once() {
    let mut f = Fixture::holding_losses();
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (a, _rx_a) = f.joined("a", 64).await;
    assert_joined(&mut rx, "a").await;
    f.hub.disconnect(&a, &[f.community]).await;
    // Held, and then removed from the community: not coming back, so it
    // leaves now, not when the grace ends.
    let at = tokio::time::Instant::now();
    f.publish(&f.api.remove_member(f.community, "a"));
    assert_left(&mut rx, "a").await;
    assert!(at.elapsed() < GRACE / 2, "left after {:?}", at.elapsed());
    assert_eq!(online(&f).await, ["w"]);
    // Let back in, and back within the grace: the old hold's end releases
    // nothing of the new connection's.
    let (_a2, _rx_a2) = f.joined("a", 64).await;
    assert_joined(&mut rx, "a").await;
    tokio::time::advance(GRACE + Duration::from_millis(10)).await;
    f.marker().await;
    assert_marker_next(&mut rx).await;
    assert_eq!(online(&f).await, ["a", "w"]);
}

#[tokio::test(start_paused = true)]
async fn a_held_tab_keeps_the_channel_when_the_users_other_tab_closes() {
    let mut f = Fixture::holding_losses();
    let (w, mut rx) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    let (a1, _rx_a1) = f.joined("a", 64).await;
    assert_joined(&mut rx, "a").await;
    let (a2, _rx_a2) = f.conn("a", 64).await;
    // One tab lost (held), then the other closed by the user.
    f.hub.disconnect(&a1, &[f.community]).await;
    a2.client_closed(Some(1000));
    f.hub.disconnect(&a2, &[]).await;
    // The channel still carries a revocation for the held presence.
    let at = tokio::time::Instant::now();
    f.publish(&f.api.remove_member(f.community, "a"));
    assert_left(&mut rx, "a").await;
    assert!(at.elapsed() < GRACE / 2, "left after {:?}", at.elapsed());
}
