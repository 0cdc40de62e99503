//! The hub driven through its seams, without Redis or the API: an
//! in-process backplane ([`MemoryBus`]) and API ([`MemoryApi`]) whose
//! commits return their publications, so each test decides what is
//! published, in which order, and what is lost. Paused time makes them
//! deterministic; one runs on a multi-threaded runtime where locking
//! matters. Absences are proven by order: a marker sent afterwards must be
//! the next frame. Kept as one file past 400 lines: one fixture, one
//! scenario per test.

use std::sync::Arc;
use std::time::Duration;

use chorus_shared::envelope::community_channel;
use chorus_shared::protocol::{ServerEvent, UserTyping};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Hub, HubConfig, Joined};
use crate::api_client::{MemoryApi, Publication};
use crate::backplane::{Backplane, MemoryBackplane, MemoryBus};
use crate::codec::Encoding;
use crate::error::GatewayError;
use crate::handle::{ConnHandle, Outbound};

/// Long enough for anything that is coming; with paused time a missing
/// frame fails at once instead of after this long.
const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    api: Arc<MemoryApi>,
    bus: Arc<MemoryBus>,
    backplane: Arc<MemoryBackplane>,
    hub: Hub,
    community: Uuid,
    next_conn: u64,
}

impl Fixture {
    fn new(recovery_window: i64) -> Self {
        let api = MemoryApi::new();
        let bus = MemoryBus::new();
        let backplane = MemoryBackplane::new(bus.clone(), "gw-test");
        let hub = Hub::new(
            backplane.clone(),
            api.clone(),
            HubConfig {
                recovery_window,
                presence_limit: 10_000,
            },
        );
        backplane.start(Arc::new(hub.clone()));
        let community = api.create_community("owner");
        Fixture {
            api,
            bus,
            backplane,
            hub,
            community,
            next_conn: 1,
        }
    }

    /// A registered connection of `user` (a member) with a queue of `queue`.
    async fn conn(
        &mut self,
        user: &str,
        queue: usize,
    ) -> (Arc<ConnHandle>, mpsc::Receiver<Outbound>) {
        self.api.add_member(self.community, user);
        let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
        let (c, rx) = ConnHandle::new(self.next_conn, user, user, Encoding::Json, queue, expiry);
        self.next_conn += 1;
        let slot = self.hub.reserve(user, 0).expect("no cap");
        self.hub
            .connect(&c, slot)
            .await
            .expect("user channel subscribed");
        (c, rx)
    }

    async fn join(
        &self,
        conn: &Arc<ConnHandle>,
        last_seq: Option<i64>,
    ) -> Result<Joined, GatewayError> {
        join(&self.hub, &self.api, self.community, conn, last_seq).await
    }

    /// Commits a message without publishing it.
    fn commit(&self) -> Publication {
        self.api.post(self.community, "owner", "hello")
    }

    fn publish(&self, p: &Publication) {
        self.bus.publish(&p.channel, p.payload.clone());
    }

    /// Commits and publishes a message.
    fn post(&self) -> Publication {
        let p = self.commit();
        self.publish(&p);
        p
    }

    /// Publishes an unsequenced marker, which no gap holds back.
    async fn marker(&self) {
        self.hub
            .publish_ephemeral(
                self.community,
                ServerEvent::UserTyping(UserTyping {
                    community_id: self.community,
                    user_id: "marker".into(),
                    name: "marker".into(),
                    is_typing: true,
                }),
            )
            .await;
    }
}

async fn join(
    hub: &Hub,
    api: &MemoryApi,
    community: Uuid,
    conn: &Arc<ConnHandle>,
    last_seq: Option<i64>,
) -> Result<Joined, GatewayError> {
    use crate::api_client::Api;
    let checked_at = hub.revocation_epoch();
    let access = api.access(community, &conn.user_id).await?;
    hub.join(community, access.head_seq, conn, last_seq, checked_at)
        .await
}

/// The next frame's event.
async fn next(rx: &mut mpsc::Receiver<Outbound>) -> ServerEvent {
    let frame = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a frame within the wait")
        .expect("queue open");
    frame.event().cloned().expect("a shared event")
}

fn seq_of(e: &ServerEvent) -> Option<i64> {
    match e {
        ServerEvent::NewMessage(m) => Some(m.message.seq),
        ServerEvent::MessageDeleted(d) => Some(d.seq),
        _ => None,
    }
}

/// The seqs of the next `n` sequenced frames; presence frames in between
/// are skipped, anything else fails.
async fn seqs(rx: &mut mpsc::Receiver<Outbound>, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next(rx).await {
            ServerEvent::UserJoined(_) | ServerEvent::UserLeft(_) => {}
            e => out.push(
                seq_of(&e).unwrap_or_else(|| panic!("expected a sequenced event, got {e:?}")),
            ),
        }
    }
    out
}

async fn assert_marker_next(rx: &mut mpsc::Receiver<Outbound>) {
    match next(rx).await {
        ServerEvent::UserTyping(t) if t.user_id == "marker" => {}
        other => panic!("expected the marker next, got {other:?}"),
    }
}

/// Yields until `cond` holds (bounded, so a broken test fails).
async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

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
async fn a_replay_meets_live_traffic_at_the_seam_without_gap_or_repeat() {
    let mut f = Fixture::new(1000);
    let (b, mut rx_b) = f.conn("b", 256).await;
    f.join(&b, None).await.expect("b joined");
    for _ in 0..5 {
        f.post();
    }
    assert_eq!(seqs(&mut rx_b, 5).await, [1, 2, 3, 4, 5]);

    // a rejoins with lastSeq 2 and a queue of 2 frames: its replay stalls
    // on the full queue while live traffic moves the room on.
    let (a, mut rx_a) = f.conn("a", 2).await;
    let joining = {
        let (hub, api, community, a) = (f.hub.clone(), f.api.clone(), f.community, a.clone());
        tokio::spawn(async move { join(&hub, &api, community, &a, Some(2)).await })
    };
    until(|| rx_a.len() == 2).await;
    for _ in 0..3 {
        f.post(); // 6, 7, 8
    }
    assert_eq!(seqs(&mut rx_b, 3).await, [6, 7, 8]);
    // 9 and 10 are committed but not yet published: the replay, reading
    // the API, runs ahead of the live room.
    let late = [f.commit(), f.commit()];
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

    let (a, _rx_a) = f.conn("a", 64).await;
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

/// A notification for `user` as the outbox publishes it.
fn notification(user: &str, n: u32) -> Publication {
    use chorus_shared::envelope::{Envelope, user_channel};
    use chorus_shared::protocol::{Notification, NotificationData};
    let event = ServerEvent::Notification(NotificationData {
        notification: Notification {
            id: Uuid::now_v7(),
            user_id: user.into(),
            kind: "t".into(),
            title: format!("n{n}"),
            message: String::new(),
            data: serde_json::json!({}),
            read: false,
            created_at: chrono::Utc::now(),
        },
    });
    Publication {
        channel: user_channel(user),
        payload: bytes::Bytes::from(Envelope::new(None, None, 0, event).encode()),
        seq: None,
    }
}

fn title(e: ServerEvent) -> String {
    match e {
        ServerEvent::Notification(n) => n.notification.title,
        other => panic!("expected a notification, got {other:?}"),
    }
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
            st.pending.len() <= super::room::MAX_PENDING,
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
    tokio::time::sleep(super::gapfill::REPAIR_GRACE + Duration::from_secs(1)).await;
    assert!(f.hub.is_repair_stalled());
    f.api.fail_backfills(0);
    assert_eq!(seqs(&mut rx, 2).await, [1, 2]);
    assert!(!f.hub.is_repair_stalled(), "repaired");
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
async fn a_revocation_between_the_access_check_and_the_join_refuses_it() {
    use crate::api_client::Api;
    let mut f = Fixture::new(1000);
    let (a, _rx) = f.conn("a", 64).await;
    // The access check passes...
    let checked_at = f.hub.revocation_epoch();
    let access = f.api.access(f.community, "a").await.expect("access");
    assert!(access.role.is_some());
    // ...then the removal is heard, before the join reaches the room.
    f.publish(&f.api.remove_member(f.community, "a"));
    until(|| f.hub.revocation_epoch() > checked_at).await;
    let r = f
        .hub
        .join(f.community, access.head_seq, &a, None, checked_at)
        .await;
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
