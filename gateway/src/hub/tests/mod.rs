//! The hub driven through its seams, without Redis or the API: an
//! in-process backplane ([`MemoryBus`]) and API ([`MemoryApi`]) whose
//! commits return their publications, so each test decides what is
//! published, in which order, and what is lost. Paused time makes them
//! deterministic; one runs on a multi-threaded runtime where locking
//! matters. Absences are proven by order: a marker sent afterwards must be
//! the next frame. This file holds the fixture; the scenarios are grouped
//! by concern in the files beside it.

mod grace;
mod joins;
mod membership;
mod ordering;
mod seam;
mod users;

pub(super) use std::sync::Arc;
pub(super) use std::time::Duration;

pub(super) use chorus_shared::envelope::community_channel;
pub(super) use chorus_shared::protocol::{ServerEvent, UserTyping};
pub(super) use uuid::Uuid;

pub(super) use crate::api_client::{MemoryApi, Publication};
pub(super) use crate::backplane::{Backplane, MemoryBackplane, MemoryBus};
pub(super) use crate::codec::Encoding;
pub(super) use crate::error::GatewayError;
pub(super) use crate::handle::{ConnHandle, OutboundRx};
pub(super) use crate::hub::{Hub, HubConfig, Joined};

/// Long enough for anything that is coming; with paused time a missing
/// frame fails at once instead of after this long.
pub(super) const WAIT: Duration = Duration::from_secs(30);

/// The presence grace of the hubs under test.
pub(super) const GRACE: Duration = Duration::from_secs(5);

pub(super) struct Fixture {
    pub(super) api: Arc<MemoryApi>,
    pub(super) bus: Arc<MemoryBus>,
    pub(super) backplane: Arc<MemoryBackplane>,
    pub(super) hub: Hub,
    pub(super) community: Uuid,
    pub(super) next_conn: u64,
}

impl Fixture {
    pub(super) fn new(recovery_window: i64) -> Self {
        Self::build(recovery_window, crate::config::DEFAULT_MASS_LOSS_PER_SECOND)
    }

    /// A fixture whose hub holds every lost connection's presence, as in a
    /// mass loss.
    pub(super) fn holding_losses() -> Self {
        Self::build(1000, 0)
    }

    fn build(recovery_window: i64, mass_loss_per_second: u32) -> Self {
        let api = MemoryApi::new();
        let bus = MemoryBus::new();
        let backplane = MemoryBackplane::new(bus.clone(), "gw-test");
        let hub = Hub::new(
            backplane.clone(),
            api.clone(),
            HubConfig {
                recovery_window,
                presence_limit: 10_000,
                presence_grace: GRACE,
                mass_loss_per_second,
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
    pub(super) async fn conn(&mut self, user: &str, queue: usize) -> (Arc<ConnHandle>, OutboundRx) {
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

    pub(super) async fn join(
        &self,
        conn: &Arc<ConnHandle>,
        last_seq: Option<i64>,
    ) -> Result<Joined, GatewayError> {
        join(&self.hub, &self.api, self.community, conn, last_seq).await
    }

    /// A connection of `user` (a member) with a queue of `queue`, joined.
    pub(super) async fn joined(
        &mut self,
        user: &str,
        queue: usize,
    ) -> (Arc<ConnHandle>, OutboundRx) {
        let (c, rx) = self.conn(user, queue).await;
        self.join(&c, None).await.expect("joined");
        (c, rx)
    }

    /// Whether the room has delivered exactly through `seq`.
    pub(super) fn delivered(&self, seq: i64) -> bool {
        self.hub
            .room(self.community)
            .is_some_and(|r| r.delivered_through() == seq)
    }

    /// Commits a message without publishing it.
    pub(super) fn commit(&self) -> Publication {
        self.api.post(self.community, "owner", "hello")
    }

    pub(super) fn publish(&self, p: &Publication) {
        self.bus.publish(&p.channel, p.payload.clone());
    }

    /// Commits and publishes a message.
    pub(super) fn post(&self) -> Publication {
        let p = self.commit();
        self.publish(&p);
        p
    }

    /// Publishes an unsequenced marker, which no gap holds back.
    pub(super) async fn marker(&self) {
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

pub(super) async fn join(
    hub: &Hub,
    api: &MemoryApi,
    community: Uuid,
    conn: &Arc<ConnHandle>,
    last_seq: Option<i64>,
) -> Result<Joined, GatewayError> {
    use crate::api_client::Api;
    let prepared = hub.prepare(community).await?;
    let checked_at = hub.revocation_epoch();
    let access = api.access(community, &conn.user_id).await?;
    hub.join(
        community,
        access.head_seq,
        conn,
        last_seq,
        checked_at,
        Some(&prepared),
    )
    .await
}

/// The next frame's event.
pub(super) async fn next(rx: &mut OutboundRx) -> ServerEvent {
    let next = tokio::time::timeout(WAIT, rx.wait())
        .await
        .expect("a frame within the wait");
    let crate::handle::Wake::Next(crate::handle::Next::Frame(frame)) = next else {
        panic!("a frame, and no socket, so no frame's rest")
    };
    frame.event().cloned().expect("a shared event")
}

pub(super) fn seq_of(e: &ServerEvent) -> Option<i64> {
    match e {
        ServerEvent::NewMessage(m) => Some(m.message.seq),
        ServerEvent::MessageDeleted(d) => Some(d.seq),
        _ => None,
    }
}

/// The seqs of the next `n` sequenced frames; presence frames in between
/// are skipped, anything else fails.
pub(super) async fn seqs(rx: &mut OutboundRx, n: usize) -> Vec<i64> {
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

pub(super) async fn assert_marker_next(rx: &mut OutboundRx) {
    match next(rx).await {
        ServerEvent::UserTyping(t) if t.user_id == "marker" => {}
        other => panic!("expected the marker next, got {other:?}"),
    }
}

/// Asserts that the next frame is `user-joined` of `user`.
pub(super) async fn assert_joined(rx: &mut OutboundRx, user: &str) {
    match next(rx).await {
        ServerEvent::UserJoined(j) if j.user_id == user => {}
        other => panic!("expected {user}'s user-joined, got {other:?}"),
    }
}

/// Asserts that the next frame is `user-left` of `user`.
pub(super) async fn assert_left(rx: &mut OutboundRx, user: &str) {
    match next(rx).await {
        ServerEvent::UserLeft(l) if l.user_id == user => {}
        other => panic!("expected {user}'s user-left, got {other:?}"),
    }
}

/// Yields until `cond` holds (bounded, so a broken test fails).
pub(super) async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

/// A notification for `user` as the outbox publishes it.
pub(super) fn notification(user: &str, n: u32) -> Publication {
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

pub(super) fn title(e: ServerEvent) -> String {
    match e {
        ServerEvent::Notification(n) => n.notification.title,
        other => panic!("expected a notification, got {other:?}"),
    }
}
