//! A room's sequence: reordered, repeated, lost and deleted events, gap
//! filling while live events arrive, backplane outages, an API that is away.

use super::*;

#[tokio::test(start_paused = true)]
async fn reordered_repeated_and_dropped_publications_arrive_in_order_once() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");

    let p: Vec<Publication> = (0..4).map(|_| f.commit()).collect();
    // 1, 3, 1 again, 2; 4 is lost; 5 reveals the loss.
    for i in [0, 2, 0, 1] {
        f.publish(&p[i]);
    }
    f.post();
    assert_eq!(seqs(&mut rx, 5).await, [1, 2, 3, 4, 5]);
    // Repeats of anything delivered are dropped: the next message is next.
    f.publish(&p[3]);
    f.publish(&p[1]);
    f.post();
    assert_eq!(seqs(&mut rx, 1).await, [6]);
}

#[tokio::test(start_paused = true)]
async fn a_gap_is_filled_while_live_events_keep_arriving() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    f.post();
    assert_eq!(seqs(&mut rx, 1).await, [1]);

    f.api.hold_backfill();
    let backfills = f.api.backfills();
    let _lost = f.commit();
    f.post(); // 3: reveals the gap at 2
    until(|| f.api.backfills() > backfills).await;
    f.post(); // 4 and 5 arrive while the gap is being filled
    f.post();
    // Held back behind the gap: the marker overtakes them.
    f.marker().await;
    assert_marker_next(&mut rx).await;

    f.api.release_backfill();
    assert_eq!(seqs(&mut rx, 4).await, [2, 3, 4, 5]);
    f.post();
    assert_eq!(seqs(&mut rx, 1).await, [6], "no repeat after the fill");
}

#[tokio::test(start_paused = true)]
async fn deleted_creations_are_skipped_not_waited_for() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    // 1 is created and deleted (2) while neither is published: the gap
    // fill learns only of the deletion and must not wait for 1.
    let created = f.commit();
    let message = match chorus_shared::envelope::Envelope::decode(&created.payload)
        .expect("envelope")
        .event
    {
        ServerEvent::NewMessage(m) => m.message.id,
        other => panic!("expected new-message, got {other:?}"),
    };
    let _deletion = f.api.delete(message).expect("deleted");
    f.post(); // 3
    assert_eq!(seqs(&mut rx, 2).await, [2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_lagging_subscription_resyncs_and_loses_nothing() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 4096).await;
    f.join(&a, None).await.expect("joined");
    // Published without yielding: the subscription's buffer overflows, as
    // a Redis subscriber falling behind does, and the room is reconciled.
    for _ in 0..3000 {
        f.post();
    }
    let want: Vec<i64> = (1..=3000).collect();
    assert_eq!(seqs(&mut rx, 3000).await, want);
}

#[tokio::test(start_paused = true)]
async fn what_was_published_during_a_backplane_outage_is_recovered_on_reconnect() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    f.post();
    assert_eq!(seqs(&mut rx, 1).await, [1]);
    f.backplane.disconnect();
    // Lost with the connection; nothing after them reveals the gap.
    for _ in 0..3 {
        f.post();
    }
    f.backplane.reconnect();
    assert_eq!(seqs(&mut rx, 3).await, [2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn a_gap_fill_retries_while_the_api_is_away() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    f.api.fail_backfills(3);
    let before = f.api.backfills();
    let _lost = f.commit();
    f.post();
    assert_eq!(seqs(&mut rx, 2).await, [1, 2]);
    assert_eq!(
        f.api.backfills() - before,
        4,
        "three failures, then success"
    );
}

#[tokio::test(start_paused = true)]
async fn a_room_holds_a_bounded_number_of_events_behind_a_gap() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 8192).await;
    f.join(&a, None).await.expect("joined");
    f.api.hold_backfill();
    let _lost = f.commit();
    for _ in 0..3000 {
        f.post();
        tokio::task::yield_now().await;
    }
    let room = f.hub.room(f.community).expect("room");
    {
        let st = room.state();
        assert!(
            st.pending.len() <= crate::hub::room::MAX_PENDING,
            "{}",
            st.pending.len()
        );
        assert_eq!(st.heard_through, 3001);
    }
    f.api.release_backfill();
    let want: Vec<i64> = (1..=3001).collect();
    assert_eq!(seqs(&mut rx, 3001).await, want, "the rest is fetched");
}

#[tokio::test(start_paused = true)]
async fn a_room_that_cannot_repair_makes_the_gateway_unready_until_it_can() {
    let mut f = Fixture::new(1000);
    let (a, mut rx) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    f.api.fail_backfills(u64::MAX);
    let _lost = f.commit();
    f.post();
    until(|| {
        f.hub
            .room(f.community)
            .is_some_and(|r| r.state().failing_since.is_some())
    })
    .await;
    assert!(!f.hub.is_repair_stalled(), "a blip is ridden out");
    tokio::time::sleep(crate::hub::gapfill::REPAIR_GRACE + Duration::from_secs(1)).await;
    assert!(f.hub.is_repair_stalled());
    f.api.fail_backfills(0);
    assert_eq!(seqs(&mut rx, 2).await, [1, 2]);
    assert!(!f.hub.is_repair_stalled(), "repaired");
}
