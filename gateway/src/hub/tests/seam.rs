//! The seam of a room's first join: the channel subscribed before the
//! access check (`Hub::prepare`), events heard before the starting point,
//! a gap or a backplane loss among them, the fallback of a join checked
//! before its subscription, and rooms prepared that nobody joins.

use super::*;

/// Whether the room has heard of `seq`.
fn heard(f: &Fixture, seq: i64) -> bool {
    f.hub
        .room(f.community)
        .is_some_and(|r| r.state().heard_through >= seq)
}

/// The access check of a join: the head it read, and the revocation
/// epoch it was made after.
async fn check(f: &Fixture, user: &str) -> (i64, u64) {
    use crate::api_client::Api;
    let checked_at = f.hub.revocation_epoch();
    let access = f.api.access(f.community, user).await.expect("checked");
    (access.head_seq, checked_at)
}

/// A join as the session makes it, up to the join itself: the room
/// subscribed, then the access checked.
async fn prepared(f: &Fixture, user: &str) -> (crate::hub::Prepared, i64, u64) {
    let prepared = f.hub.prepare(f.community).await.expect("subscribed");
    let (head, checked_at) = check(f, user).await;
    (prepared, head, checked_at)
}

/// The join itself, after [`prepared`] (or a check made by hand).
async fn join_prepared(
    f: &Fixture,
    conn: &Arc<ConnHandle>,
    prepared: &crate::hub::Prepared,
    head: i64,
    checked_at: u64,
) -> Joined {
    f.hub
        .join(f.community, head, conn, None, checked_at, Some(prepared))
        .await
        .expect("joined")
}

#[tokio::test(start_paused = true)]
async fn a_first_joiner_checked_after_the_subscription_fetches_nothing_and_misses_nothing() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    let before = f.api.backfills();
    let prepared = f.hub.prepare(f.community).await.expect("subscribed");
    f.post(); // 1: heard before the starting point, at or below the head
    until(|| heard(&f, 1)).await;
    let (head, checked_at) = check(&f, "a").await;
    assert_eq!(head, 1);
    f.post(); // 2: committed after the check, heard before the join
    until(|| heard(&f, 2)).await;
    let joined = join_prepared(&f, &a, &prepared, head, checked_at).await;
    drop(prepared);
    assert_eq!(joined.head_seq, 2, "what came before the join is history");
    f.post();
    assert_eq!(seqs(&mut rx, 1).await, [3], "live from the ack's head on");
    assert_eq!(f.api.backfills(), before, "nothing fetched");
}

#[tokio::test(start_paused = true)]
async fn a_gap_among_the_events_heard_before_the_first_join_is_fetched() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    let before = f.api.backfills();
    let (prepared, head, checked_at) = prepared(&f, "a").await;
    let _lost = f.commit(); // 1, never published
    f.post(); // 2
    until(|| heard(&f, 2)).await;
    let joined = join_prepared(&f, &a, &prepared, head, checked_at).await;
    assert_eq!(joined.head_seq, 0);
    assert_eq!(seqs(&mut rx, 2).await, [1, 2]);
    assert!(f.api.backfills() > before, "the gap was fetched");
}

#[tokio::test(start_paused = true)]
async fn a_backplane_loss_before_the_first_join_is_fetched() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    let (prepared, head, checked_at) = prepared(&f, "a").await;
    f.backplane.disconnect();
    f.post(); // 1, lost with the connection; nothing after it shows a gap
    f.backplane.reconnect();
    until(|| {
        f.hub
            .room(f.community)
            .is_some_and(|r| r.state().lost_before_start)
    })
    .await;
    join_prepared(&f, &a, &prepared, head, checked_at).await;
    assert_eq!(seqs(&mut rx, 1).await, [1]);
}

#[tokio::test(start_paused = true)]
async fn a_join_checked_before_the_subscription_fetches_what_came_between() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    let channel = community_channel(&f.community);
    let (head, checked_at) = check(&f, "a").await;
    f.post(); // 1: published before anyone here subscribed
    assert!(!f.backplane.is_subscribed(&channel));
    f.hub
        .join(f.community, head, &a, None, checked_at, None)
        .await
        .expect("joined");
    assert_eq!(seqs(&mut rx, 1).await, [1], "fetched");
}

#[tokio::test(start_paused = true)]
async fn a_prepared_room_nobody_joins_is_retired() {
    let f = Fixture::new(1000);
    let channel = community_channel(&f.community);
    let prepared = f.hub.prepare(f.community).await.expect("subscribed");
    assert!(f.backplane.is_subscribed(&channel));
    drop(prepared);
    until(|| !f.backplane.is_subscribed(&channel)).await;
    assert!(f.hub.room(f.community).is_none(), "retired");
}

#[tokio::test(start_paused = true)]
async fn a_join_cancelled_while_its_subscribe_is_pending_leaves_nothing_subscribed() {
    let f = Fixture::new(1000);
    let channel = community_channel(&f.community);
    let slow = f.backplane.hold_subscribes();
    let preparing = {
        let (hub, community) = (f.hub.clone(), f.community);
        tokio::spawn(async move { hub.prepare(community).await.map(drop) })
    };
    // The join's subscribe is with Redis when its connection goes.
    until(|| f.hub.room(f.community).is_some()).await;
    preparing.abort();
    let _ = preparing.await;
    assert!(f.hub.room(f.community).is_none(), "retired");
    // Redis applies the subscribe after all; the retirement's unsubscribe
    // follows it.
    f.backplane.accept_subscribes();
    slow.notify_one();
    // Another room's subscribe, queued last, is applied after both.
    f.hub
        .prepare(Uuid::new_v4())
        .await
        .map(drop)
        .expect("subscribed");
    assert!(!f.backplane.is_subscribed(&channel));
}

/// Subscription changes queued while one is with Redis go together, in
/// queue order: a channel subscribed, unsubscribed and subscribed again
/// ends subscribed; one subscribed then unsubscribed ends not.
#[tokio::test(start_paused = true)]
async fn queued_subscription_changes_take_effect_in_queue_order() {
    let f = Fixture::new(1000);
    let slow = f.backplane.hold_subscribes();
    let subs = &f.hub.inner.subs;
    let first = subs.subscribe("a".into());
    tokio::task::yield_now().await;
    subs.unsubscribe("a".into());
    let again = subs.subscribe("a".into());
    let other = subs.subscribe("b".into());
    subs.unsubscribe("b".into());
    f.backplane.accept_subscribes();
    slow.notify_one();
    first.done().await.expect("subscribed");
    again.done().await.expect("subscribed again");
    other.done().await.expect("subscribed");
    // A marker channel, queued last, is applied after everything above.
    subs.subscribe("marker".into())
        .done()
        .await
        .expect("subscribed");
    assert!(f.backplane.is_subscribed("a"), "a: subscribed last");
    assert!(!f.backplane.is_subscribed("b"), "b: unsubscribed last");
}
