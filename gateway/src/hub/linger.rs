//! Presence grace: a connection lost without the client's close frame
//! keeps its user present in its rooms for a grace period.
//!
//! Clients reconnect after a lost connection (a network change, a load
//! balancer's reset, a gateway's drain, a reconnect storm). Releasing the
//! user at once would announce `user-left` to the room and, a moment later,
//! `user-joined` again: two broadcasts to every member, and two presence
//! scripts, for a user who never went away. Instead the user's count in
//! the room is kept for the grace; a connection of the same user that
//! joins meanwhile (on any gateway: the presence entry stays too) finds
//! them present, and when the grace ends the release finds them still
//! online and announces nothing. A user who does not come back leaves when
//! the grace ends. A close frame from the client, or `leave-community`, is
//! the user leaving: released at once.
//!
//! The releases wait in one FIFO queue (the grace is the same for all, so
//! deadlines come in order) served by one task, which ends with the hub or
//! when the gateway withdraws its presence on exit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::room::{Room, lock};
use super::{Hub, HubInner};

/// Releases run concurrently at most this many at once when a grace ends
/// for many users together (a storm whose clients did not come back): each
/// is a Redis round trip, and a bounded number in flight keeps the
/// backplane's queue short for everyone else.
const RELEASE_CONCURRENCY: usize = 64;

/// A user's presence in a room, held past its last connection.
struct Held {
    due: Instant,
    room: Arc<Room>,
    user: Arc<str>,
}

/// The queue of held presences; shared by the hub and its release task.
#[derive(Default)]
pub(super) struct Linger {
    queue: Mutex<VecDeque<Held>>,
    wake: Notify,
    stopped: AtomicBool,
}

impl Linger {
    /// Starts the release task for `hub`; it holds the hub weakly and ends
    /// when the hub is dropped or [`Linger::stop`] is called.
    pub(super) fn start(hub: Weak<HubInner>, linger: Arc<Linger>) {
        tokio::spawn(async move {
            loop {
                let due = lock(&linger.queue).front().map(|h| h.due);
                match due {
                    Some(at) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(at) => {}
                            () = linger.wake.notified() => {}
                        }
                    }
                    None => linger.wake.notified().await,
                }
                if linger.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Some(inner) = hub.upgrade() else {
                    return;
                };
                let hub = Hub { inner };
                let now = Instant::now();
                let due: Vec<Held> = {
                    let mut q = lock(&linger.queue);
                    let n = q.iter().take_while(|h| h.due <= now).count();
                    q.drain(..n).collect()
                };
                metrics::gauge!("chorus_gateway_presence_held").decrement(due.len() as f64);
                futures_util::stream::iter(due)
                    .for_each_concurrent(RELEASE_CONCURRENCY, |h| {
                        let hub = hub.clone();
                        async move { hub.release_user(&h.room, &h.user).await }
                    })
                    .await;
            }
        });
    }

    /// Holds `user`'s presence in `room` for `grace`.
    pub(super) fn hold(&self, room: Arc<Room>, user: Arc<str>, grace: Duration) {
        let due = Instant::now() + grace;
        let first = {
            let mut q = lock(&self.queue);
            q.push_back(Held { due, room, user });
            q.len() == 1
        };
        metrics::gauge!("chorus_gateway_presence_held").increment(1.0);
        if first {
            self.wake.notify_one();
        }
    }

    /// Ends the release task and forgets what it held: the gateway is
    /// withdrawing all its presence entries at once.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let n = {
            let mut q = lock(&self.queue);
            let n = q.len();
            q.clear();
            n
        };
        metrics::gauge!("chorus_gateway_presence_held").decrement(n as f64);
        self.wake.notify_one();
    }
}
