//! Membership revocations racing joins, and repaired after an outage.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_revocation_racing_a_join_refuses_the_join() {
    let mut f = Fixture::new(1000);
    let (b, _rx_b) = f.conn("b", 64).await;
    f.join(&b, None).await.expect("b joined");
    for _ in 0..3 {
        f.post();
    }
    until(|| {
        f.hub
            .room(f.community)
            .is_some_and(|r| r.delivered_through() == 3)
    })
    .await;

    let (a, mut rx_a) = f.conn("a", 64).await;
    f.api.hold_backfill();
    let before = f.api.backfills();
    let joining = {
        let (hub, api, community, a) = (f.hub.clone(), f.api.clone(), f.community, a.clone());
        tokio::spawn(async move { join(&hub, &api, community, &a, Some(0)).await })
    };
    // a is replaying (its window fetch is held) when its membership goes.
    until(|| f.api.backfills() > before).await;
    let revoked = f.api.remove_member(f.community, "a");
    f.publish(&revoked);
    until(|| {
        f.hub
            .room(f.community)
            .is_some_and(|r| r.state().revoked.contains(&a.id))
    })
    .await;
    f.api.release_backfill();
    let refused = joining.await.expect("task");
    assert!(
        matches!(refused, Err(GatewayError::Forbidden(_))),
        "{refused:?}"
    );
    // The join has ended: whatever its replay sent is queued by now, and
    // it sent nothing after the revocation.
    assert!(
        rx_a.try_recv().is_err(),
        "no replayed event after the revocation"
    );
    assert!(!f.hub.is_member(f.community, a.id));
    let room = f.hub.room(f.community).expect("b keeps the room");
    assert!(!room.state().users.contains_key("a"), "a left presence");
}

#[tokio::test(start_paused = true)]
async fn a_revocation_removes_a_live_member_and_tells_it() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    f.publish(&f.api.remove_member(f.community, "a"));
    assert!(matches!(
        next(&mut rx).await,
        ServerEvent::MembershipRevoked(_)
    ));
    assert!(!f.hub.is_member(f.community, a.id));
}

#[tokio::test(start_paused = true)]
async fn a_revocation_between_the_access_check_and_the_join_refuses_it() {
    use crate::api_client::Api;
    let mut f = Fixture::new(1000);
    let (a, _rx) = f.conn("a", 64).await;
    // The access check passes...
    let prepared = f.hub.prepare(f.community).await.expect("subscribed");
    let checked_at = f.hub.revocation_epoch();
    let access = f.api.access(f.community, "a").await.expect("access");
    assert!(access.role.is_some());
    // ...then the removal is heard, before the join reaches the room.
    f.publish(&f.api.remove_member(f.community, "a"));
    until(|| f.hub.revocation_epoch() > checked_at).await;
    let r = f
        .hub
        .join(
            f.community,
            access.head_seq,
            &a,
            None,
            checked_at,
            Some(&prepared),
        )
        .await;
    drop(prepared);
    assert!(matches!(r, Err(GatewayError::Forbidden(_))), "{r:?}");
    assert!(!f.hub.is_member(f.community, a.id));
    assert!(f.hub.room(f.community).is_none(), "nothing left behind");
}

#[tokio::test(start_paused = true)]
async fn a_revocation_lost_with_the_backplane_is_repaired_on_reconnect() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    let (b, mut rx_b) = f.conn("b", 64).await;
    f.join(&a, None).await.expect("joined");
    f.join(&b, None).await.expect("joined");
    f.backplane.disconnect();
    let _lost = f.api.remove_member(f.community, "a");
    f.backplane.reconnect();
    let revoked = loop {
        match next(&mut rx).await {
            ServerEvent::MembershipRevoked(r) => break r,
            ServerEvent::UserJoined(_) => {}
            other => panic!("expected membership-revoked, got {other:?}"),
        }
    };
    assert_eq!(revoked.community_id, f.community);
    assert!(!f.hub.is_member(f.community, a.id));
    // b stays: the next message reaches b, and a no more (a notification
    // sent to a afterwards is the next thing a gets).
    f.hub.subscribe_notifications(&a);
    f.post();
    assert_eq!(seqs(&mut rx_b, 1).await, [1]);
    f.publish(&notification("a", 0));
    assert_eq!(title(next(&mut rx).await), "n0");
}
