//! Presence grace: connections that end because the gateway sent their
//! clients elsewhere (a drain's 1012), or that are lost many at once (a
//! network failure, a load balancer's restart, a reconnect storm), keep
//! their users present in their rooms for a grace period.
//!
//! Those clients come back within seconds. Releasing each user at once
//! would announce `user-left` to the room and, a moment later, `user-joined`
//! again: two broadcasts to every member, and two presence scripts, per
//! client, at the moment the gateways are busiest. Instead the user's slot
//! in the room is held for the grace: a connection of the same user that
//! joins meanwhile takes the slot over (on another gateway it finds the
//! presence entry still there), and nothing is announced. A user who does
//! not come back leaves when the grace ends.
//!
//! One lost connection on its own (fewer than the mass-loss rate in a
//! second) is released at once, as is a connection the client closed
//! itself (1000, 1001 or no code) and `leave-community`: the contract's
//! `user-left` follows the last connection's end.
//!
//! The releases wait in one FIFO queue (the grace is the same for all, so
//! deadlines come in order) served by one task, which ends with the hub or
//! when the gateway withdraws its presence on exit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::room::{Room, lock};
use super::{Hub, HubInner};
use crate::close;
use crate::handle::ConnHandle;

/// The window over which lost connections are counted to tell a mass loss
/// from a single client's.
const LOSS_WINDOW: Duration = Duration::from_secs(1);

/// Releases run concurrently at most this many at once when a grace ends
/// for many users together (a storm whose clients did not come back): each
/// is a Redis round trip, and a bounded number in flight keeps the
/// backplane's queue short for everyone else.
const RELEASE_CONCURRENCY: usize = 64;

/// What a lost connection holds past its end.
struct Held {
    due: Instant,
    user: Arc<str>,
    what: What,
}

enum What {
    /// The user's presence in a room; `id` is the hold's in the room's
    /// `held` slots.
    Presence { room: Arc<Room>, id: u64 },
    /// The user's channel subscription (a returning client would take it
    /// again at once: two Redis commands per client in a storm).
    Channel,
}

/// Connections lost in the current window, and until when losses are held
/// after the last window that passed the mass-loss rate.
#[derive(Default)]
struct Losses {
    window_start: Option<Instant>,
    count: u32,
    holding_until: Option<Instant>,
}

/// The queue of held presences; shared by the hub and its release task.
#[derive(Default)]
pub(super) struct Linger {
    queue: Mutex<VecDeque<Held>>,
    wake: Notify,
    stopped: AtomicBool,
    losses: Mutex<Losses>,
    next_id: AtomicU64,
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
                let mut rooms = Vec::with_capacity(due.len());
                for h in due {
                    match h.what {
                        What::Presence { room, id } => rooms.push((room, h.user, id)),
                        What::Channel => hub.release_channel(&h.user),
                    }
                }
                metrics::gauge!("chorus_gateway_presence_held").decrement(rooms.len() as f64);
                futures_util::stream::iter(rooms)
                    .for_each_concurrent(RELEASE_CONCURRENCY, |(room, user, id)| {
                        let hub = hub.clone();
                        async move { hub.release_held(&room, &user, id).await }
                    })
                    .await;
            }
        });
    }

    /// Whether `conn`, which ended without a goodbye, is held: the gateway
    /// closed it to send its client elsewhere (a drain), or it is one of
    /// many lost at once (more than `per_second` within a second; and any
    /// loss for a grace after such a second, while the clients come back).
    /// `per_second` 0 holds every loss.
    pub(super) fn holds(&self, conn: &ConnHandle, per_second: u32, grace: Duration) -> bool {
        if conn.close_code() == Some(close::DRAINING) {
            return true;
        }
        let now = Instant::now();
        let mut l = lock(&self.losses);
        if l.window_start
            .is_none_or(|s| now.duration_since(s) >= LOSS_WINDOW)
        {
            l.window_start = Some(now);
            l.count = 0;
        }
        l.count = l.count.saturating_add(1);
        if l.count > per_second {
            l.holding_until = Some(now + grace);
        }
        l.holding_until.is_some_and(|until| now < until)
    }

    /// A new hold's id; `None` once stopped (withdrawing: every entry of
    /// this gateway goes at once, and nothing is held any more).
    pub(super) fn reserve(&self) -> Option<u64> {
        (!self.stopped.load(Ordering::SeqCst)).then(|| self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Holds `user`'s presence in `room` for `grace` under hold `id` (its
    /// slot was counted in the room's `held` by the caller).
    pub(super) fn hold(&self, room: Arc<Room>, user: Arc<str>, id: u64, grace: Duration) {
        self.push(user, What::Presence { room, id }, grace);
        metrics::gauge!("chorus_gateway_presence_held").increment(1.0);
    }

    /// Holds `user`'s channel subscription for `grace`, released through
    /// [`Hub::release_channel`]; false once stopped.
    pub(super) fn hold_channel(&self, user: Arc<str>, grace: Duration) -> bool {
        if self.stopped.load(Ordering::SeqCst) {
            return false;
        }
        self.push(user, What::Channel, grace);
        true
    }

    fn push(&self, user: Arc<str>, what: What, grace: Duration) {
        let due = Instant::now() + grace;
        let first = {
            let mut q = lock(&self.queue);
            q.push_back(Held { due, user, what });
            q.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// Whether any presence is held (held channels alone do not count:
    /// nothing is announced when they go).
    pub(super) fn holding(&self) -> bool {
        lock(&self.queue)
            .iter()
            .any(|h| matches!(h.what, What::Presence { .. }))
    }

    /// Ends the release task and forgets what it held: the gateway is
    /// withdrawing all its presence entries at once, or the hub is gone.
    /// Held channels stay subscribed until the process exits (both happen
    /// only on the way out).
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let n = {
            let mut q = lock(&self.queue);
            let n = q
                .iter()
                .filter(|h| matches!(h.what, What::Presence { .. }))
                .count();
            q.clear();
            n
        };
        metrics::gauge!("chorus_gateway_presence_held").decrement(n as f64);
        self.wake.notify_one();
    }
}
