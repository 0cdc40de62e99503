//! Joins: replays meeting live traffic at the seam, the recovery window,
//! shared window fetches, joins cut short, rooms retired and recreated,
//! concurrent joins on two threads.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_replay_meets_live_traffic_at_the_seam_without_gap_or_repeat() {
    let mut f = Fixture::new(1000);
    let (b, mut rx_b) = f.conn("b", 256).await;
    f.join(&b, None).await.expect("b joined");
    for _ in 0..5 {
        f.post();
    }
    assert_eq!(seqs(&mut rx_b, 5).await, [1, 2, 3, 4, 5]);

    // a rejoins with lastSeq 2 and a queue of 2 frames; its window fetch
    // is slow, and live traffic moves the room on meanwhile.
    f.api.hold_backfill();
    let (a, mut rx_a) = f.conn("a", 2).await;
    let joining = {
        let (hub, api, community, a) = (f.hub.clone(), f.api.clone(), f.community, a.clone());
        tokio::spawn(async move { join(&hub, &api, community, &a, Some(2)).await })
    };
    let before = f.api.backfills();
    until(|| f.api.backfills() > before).await;
    for _ in 0..3 {
        f.post(); // 6, 7, 8
    }
    assert_eq!(seqs(&mut rx_b, 3).await, [6, 7, 8]);
    // 9 and 10 are committed but not yet published: the replay, reading
    // the API, runs ahead of the live room (paced by a's full queue).
    let late = [f.commit(), f.commit()];
    f.api.release_backfill();
    assert_eq!(seqs(&mut rx_a, 8).await, [3, 4, 5, 6, 7, 8, 9, 10]);
    let joined = joining.await.expect("task").expect("joined");
    assert_eq!(
        joined,
        Joined {
            head_seq: 10,
            recovered: true,
            missed: 8
        }
    );
    // Their live copies reach b but are not repeated to a.
    for p in &late {
        f.publish(p);
    }
    f.post();
    assert_eq!(seqs(&mut rx_b, 3).await, [9, 10, 11]);
    assert_eq!(
        seqs(&mut rx_a, 1).await,
        [11],
        "live after the seam, no repeat"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replay_beyond_the_window_is_not_recovered() {
    let mut f = Fixture::new(3);
    let (b, _rx_b) = f.conn("b", 64).await;
    f.join(&b, None).await.expect("b joined");
    for _ in 0..10 {
        f.post();
    }
    let (a, mut rx_a) = f.conn("a", 64).await;
    let joined = f.join(&a, Some(2)).await.expect("joined");
    assert_eq!((joined.recovered, joined.missed), (false, 8));
    f.post();
    assert_eq!(
        seqs(&mut rx_a, 1).await,
        [11],
        "live only, nothing replayed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_storm_shares_one_window_fetch() {
    let mut f = Fixture::new(1000);
    let (b, _rx_b) = f.conn("b", 64).await;
    f.join(&b, None).await.expect("b joined");
    for _ in 0..20 {
        f.post();
    }
    until(|| {
        f.hub
            .room(f.community)
            .is_some_and(|r| r.delivered_through() == 20)
    })
    .await;
    // Every joiner arrives while the first window fetch is in flight.
    f.api.hold_backfill();
    let before = f.api.backfills();
    let mut joins = Vec::new();
    let mut queues = Vec::new();
    for i in 0..30 {
        let (c, rx) = f.conn(&format!("u{i}"), 64).await;
        let (hub, api, community) = (f.hub.clone(), f.api.clone(), f.community);
        joins.push(tokio::spawn(async move {
            join(&hub, &api, community, &c, Some(i)).await
        }));
        queues.push((i, rx));
    }
    until(|| f.api.backfills() > before).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    f.api.release_backfill();
    for j in joins {
        j.await.expect("task").expect("joined");
    }
    assert_eq!(
        f.api.backfills() - before,
        1,
        "one window for thirty joiners"
    );
    for (i, mut rx) in queues {
        let want: Vec<i64> = (i + 1..=20).collect();
        assert_eq!(seqs(&mut rx, want.len()).await, want);
    }
}

#[tokio::test(start_paused = true)]
async fn later_joiners_continue_from_the_window_into_the_live_tail() {
    let mut f = Fixture::new(1000);
    let (b, _rx_b) = f.conn("b", 64).await;
    f.join(&b, None).await.expect("b joined");
    for _ in 0..20 {
        f.post();
    }
    until(|| f.delivered(20)).await;
    let before = f.api.backfills();
    let (u0, mut rx0) = f.conn("u0", 64).await;
    f.join(&u0, Some(0)).await.expect("joined");
    assert_eq!(f.api.backfills() - before, 1);
    // Live traffic moves the room past the window's end; later joiners
    // get the window, then what the room delivered since, and no fetch.
    for _ in 0..3 {
        f.post();
    }
    until(|| f.delivered(23)).await;
    let (u1, mut rx1) = f.conn("u1", 64).await;
    f.join(&u1, Some(5)).await.expect("joined");
    let (u2, mut rx2) = f.conn("u2", 64).await;
    f.join(&u2, Some(21)).await.expect("joined");
    assert_eq!(f.api.backfills() - before, 1, "one fetch for the three");
    f.post();
    assert_eq!(seqs(&mut rx0, 24).await, (1..=24).collect::<Vec<_>>());
    assert_eq!(seqs(&mut rx1, 19).await, (6..=24).collect::<Vec<_>>());
    assert_eq!(seqs(&mut rx2, 3).await, vec![22, 23, 24]);
    // Unused for the window's lifetime, the tail is dropped with the next
    // event: a later joiner fetches again.
    tokio::time::advance(Duration::from_secs(6)).await;
    f.post();
    until(|| f.delivered(25)).await;
    let (u3, mut rx3) = f.conn("u3", 64).await;
    f.join(&u3, Some(20)).await.expect("joined");
    assert_eq!(f.api.backfills() - before, 2);
    assert_eq!(seqs(&mut rx3, 5).await, vec![21, 22, 23, 24, 25]);
}

#[tokio::test(start_paused = true)]
async fn a_message_deleted_since_the_window_was_fetched_replays_only_as_its_deletion() {
    let mut f = Fixture::new(1000);
    let (b, _rx_b) = f.conn("b", 64).await;
    f.join(&b, None).await.expect("b joined");
    let posts: Vec<Publication> = (0..5).map(|_| f.post()).collect();
    until(|| f.delivered(5)).await;
    let (u0, mut rx0) = f.conn("u0", 64).await;
    f.join(&u0, Some(0)).await.expect("joined");
    // 3 is deleted (seq 6) and 7 posted, live: the cached window still
    // holds 3's creation, the room's tail its deletion.
    let third = match chorus_shared::envelope::Envelope::decode(&posts[2].payload)
        .expect("envelope")
        .event
    {
        ServerEvent::NewMessage(m) => m.message.id,
        other => panic!("expected new-message, got {other:?}"),
    };
    let deletion = f.api.delete(third).expect("deleted");
    f.publish(&deletion);
    f.post();
    until(|| f.delivered(7)).await;
    let before = f.api.backfills();
    let (u1, mut rx1) = f.conn("u1", 64).await;
    f.join(&u1, Some(1)).await.expect("joined");
    assert_eq!(f.api.backfills(), before, "window and tail, no fetch");
    // Contract: created and deleted since lastSeq, it comes only as its
    // deletion.
    assert_eq!(seqs(&mut rx1, 5).await, vec![2, 4, 5, 6, 7]);
    // One live all along got it as it happened.
    assert_eq!(seqs(&mut rx0, 7).await, (1..=7).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_join_cut_short_by_its_connection_closing_is_released() {
    let mut f = Fixture::new(1000);
    let (w, mut rx_w) = f.conn("w", 64).await;
    f.join(&w, None).await.expect("joined");
    for _ in 0..5 {
        f.post();
    }
    assert_eq!(seqs(&mut rx_w, 5).await, [1, 2, 3, 4, 5]);
    // a's replay stalls on its one-frame queue; its connection then closes
    // and the join is dropped mid-way, as the reader drops a command.
    let (a, _rx_a) = f.conn("a", 1).await;
    let joining = {
        let (hub, api, community, a) = (f.hub.clone(), f.api.clone(), f.community, a.clone());
        tokio::spawn(async move { join(&hub, &api, community, &a, Some(0)).await })
    };
    until(|| {
        f.hub
            .room(f.community)
            .is_some_and(|r| r.state().joining.contains(&a.id))
    })
    .await;
    joining.abort();
    let _ = joining.await;
    f.hub.disconnect(&a, &[f.community]).await;
    let room = f.hub.room(f.community).expect("w keeps the room");
    assert!(!room.state().users.contains_key("a"), "a left the room");
    assert!(room.state().joining.is_empty());
    use crate::backplane::Backplane;
    let online = f
        .backplane
        .presence_online(f.community)
        .await
        .expect("online");
    assert_eq!(online, ["w"], "a is not left online");
}

#[tokio::test(start_paused = true)]
async fn a_retired_room_is_recreated_with_its_subscription() {
    let mut f = Fixture::new(1000);
    let channel = community_channel(&f.community);
    let (a, mut rx) = f.conn("a", 64).await;
    f.join(&a, None).await.expect("joined");
    assert!(f.backplane.is_subscribed(&channel));

    // Leave (the room retires and queues its unsubscribe) and rejoin at
    // once: the successor's subscribe is ordered after the unsubscribe.
    assert!(f.hub.leave(f.community, &a).await);
    f.join(&a, None).await.expect("rejoined");
    assert!(f.backplane.is_subscribed(&channel));
    assert_eq!(f.bus.subscribers(&channel), 1);
    f.post();
    assert_eq!(seqs(&mut rx, 1).await, [1]);

    assert!(f.hub.leave(f.community, &a).await);
    until(|| !f.backplane.is_subscribed(&channel)).await;
    assert!(
        f.hub.room(f.community).is_none(),
        "an empty room is retired"
    );
}

/// Joins with and without `lastSeq` racing publications that are
/// reordered and lost, on two worker threads: every member sees a
/// contiguous run of seqs ending at the head, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_and_lossy_publications_give_every_member_a_contiguous_run() {
    const MESSAGES: i64 = 300;
    let mut f = Fixture::new(1000);
    let (b, mut rx_b) = f.conn("b", 1024).await;
    f.join(&b, None).await.expect("b joined");

    let joined_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let (api, bus, community) = (f.api.clone(), f.bus.clone(), f.community);
        let joined_count = joined_count.clone();
        tokio::spawn(async move {
            let mut held: Option<Publication> = None;
            for i in 1..=MESSAGES {
                let p = api.post(community, "owner", "hi");
                match i % 7 {
                    0 => {}              // lost
                    3 => held = Some(p), // published after the next one
                    _ => {
                        bus.publish(&p.channel, p.payload.clone());
                        if let Some(h) = held.take() {
                            bus.publish(&h.channel, h.payload);
                        }
                    }
                }
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            // The last one, once everyone has joined, reveals any trailing
            // loss and ends every member's run.
            while joined_count.load(std::sync::atomic::Ordering::SeqCst) < 16 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let p = api.post(community, "owner", "end");
            bus.publish(&p.channel, p.payload);
        })
    };
    let mut joiners = Vec::new();
    for i in 0..16i64 {
        let (c, mut rx) = f.conn(&format!("u{i}"), 1024).await;
        let (hub, api, community) = (f.hub.clone(), f.api.clone(), f.community);
        let joined_count = joined_count.clone();
        joiners.push(tokio::spawn(async move {
            let last_seq = (i % 2 == 0).then(|| (i * 7).min(api.head(community)));
            let joined = join(&hub, &api, community, &c, last_seq)
                .await
                .expect("joined");
            joined_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut got = Vec::new();
            while got.last() != Some(&(MESSAGES + 1)) {
                let e = next(&mut rx).await;
                if let Some(s) = seq_of(&e) {
                    got.push(s);
                }
            }
            (last_seq, joined, got)
        }));
    }
    publisher.await.expect("publisher");
    for j in joiners {
        let (last_seq, joined, got) = j.await.expect("joiner");
        let first = got[0];
        let want: Vec<i64> = (first..=MESSAGES + 1).collect();
        assert_eq!(got, want, "contiguous, each once (lastSeq {last_seq:?})");
        if let Some(l) = last_seq {
            assert_eq!(first, l + 1, "replay starts right after lastSeq");
            assert!(joined.recovered);
        }
    }
    let all = seqs(&mut rx_b, usize::try_from(MESSAGES + 1).expect("small")).await;
    assert_eq!(all, (1..=MESSAGES + 1).collect::<Vec<_>>());
}
