//! A connection's outbound queue, inside its handle: a deque under a
//! mutex (held for a push or a pop, never across an `.await`), the
//! writer's waker, and a signal for replays waiting for space. tokio's
//! bounded channel costs every connection a cache-padded shared state and
//! a first block of 32 slots, about 800 bytes allocated up front; this one
//! adds about 100 bytes to the handle, and its deque grows only with what
//! is actually queued.
//!
//! A full queue counts against the client only while the client is the one
//! behind: while its writer waits on the socket (the kernel's buffers are
//! full, so the client is not reading). When the writer is merely waiting
//! for a CPU (the gateway is behind, say while a room of 500 fills up and
//! every join is announced to every member), live events may run into an
//! overdraft of [`OVERDRAFT`] times the capacity before the connection is
//! closed anyway: an overloaded gateway must not cut off clients that read
//! fine, whose reconnects would only add to its load.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use super::{ConnHandle, Outbound};
use crate::sync::lock;

/// Slots an emptied queue may keep. A burst (a replay, a room filling up)
/// grows the deque; once it is empty again, a deque larger than this is
/// freed, so an idle connection keeps 64 bytes at most, not a burst's
/// space. Eight: steady traffic (a frame or two waiting at a time) never
/// allocates per frame.
const KEPT_SLOTS: usize = 8;

/// How many times its capacity a queue may hold while its writer is not
/// waiting on the socket (see the module's docs). Four: a room of 500
/// filling up announces up to 499 joins at once, which the default 256
/// slots alone do not hold; the bound stays hard, at 8 KiB of slots per
/// connection by default (the frames are shared with every recipient).
const OVERDRAFT: usize = 4;

/// A connection's outbound queue (see the module's docs).
pub(super) struct Queue {
    state: Mutex<QueueState>,
    /// The writer, waiting for a frame.
    writer: AtomicWaker,
    /// Replays waiting for space.
    space: Notify,
}

struct QueueState {
    frames: VecDeque<Outbound>,
    capacity: usize,
    /// The writer is waiting on the socket: the client is not reading as
    /// fast as frames come.
    socket_full: bool,
    /// The writer is gone: nothing is queued any more.
    closed: bool,
}

/// Why a frame was not queued.
pub(super) enum Refused {
    /// The queue is full; the frame comes back.
    Full(Outbound),
    Closed,
}

impl Queue {
    pub(super) fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                frames: VecDeque::new(),
                capacity,
                socket_full: false,
                closed: false,
            }),
            writer: AtomicWaker::new(),
            space: Notify::new(),
        }
    }

    /// Queues `frame`, waiting for space as long as it takes; false once
    /// closed.
    pub(super) async fn push_waiting(&self, mut frame: Outbound) -> bool {
        loop {
            // Registered before the attempt: a pop between a full queue
            // and the wait still wakes it.
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.push_within(frame, |s| s.capacity) {
                Ok(()) => return true,
                Err(Refused::Closed) => return false,
                Err(Refused::Full(back)) => frame = back,
            }
            space.await;
        }
    }

    /// Queues a live event: within the capacity, or the overdraft while
    /// the socket takes what the writer sends.
    pub(super) fn push(&self, frame: Outbound) -> Result<(), Refused> {
        self.push_within(frame, |s| {
            if s.socket_full {
                s.capacity
            } else {
                s.capacity.saturating_mul(OVERDRAFT)
            }
        })
    }

    fn push_within(
        &self,
        frame: Outbound,
        limit: impl FnOnce(&QueueState) -> usize,
    ) -> Result<(), Refused> {
        let overdrawn = {
            let mut s = lock(&self.state);
            if s.closed {
                return Err(Refused::Closed);
            }
            let len = s.frames.len();
            if len >= limit(&s) {
                return Err(Refused::Full(frame));
            }
            s.frames.push_back(frame);
            len >= s.capacity
        };
        if overdrawn {
            metrics::counter!("chorus_gateway_queue_overdraft_total").increment(1);
        }
        self.writer.wake();
        Ok(())
    }

    /// The writer starts (true) or stops (false) waiting on the socket.
    pub(super) fn socket_full(&self, full: bool) {
        lock(&self.state).socket_full = full;
    }

    /// The next frame; or, with nothing queued, whether the queue is
    /// closed.
    fn pop(&self) -> Result<Outbound, bool> {
        let (frame, was_full) = {
            let mut s = lock(&self.state);
            // Replays wait while the queue holds its capacity or more: this
            // pop is the one that makes room for them.
            let was_full = s.frames.len() == s.capacity;
            let Some(frame) = s.frames.pop_front() else {
                return Err(s.closed);
            };
            if s.frames.is_empty() && s.frames.capacity() > KEPT_SLOTS {
                s.frames = VecDeque::new();
            }
            (frame, was_full)
        };
        if was_full {
            self.space.notify_waiters();
        }
        Ok(frame)
    }

    fn close(&self) {
        let dropped = {
            let mut s = lock(&self.state);
            s.closed = true;
            std::mem::take(&mut s.frames)
        };
        drop(dropped);
        self.space.notify_waiters();
    }
}

/// The writer's end of a connection's outbound queue. Dropping it (or
/// [`OutboundRx::close`]) closes the queue: later pushes are refused and
/// what was queued is dropped.
pub struct OutboundRx {
    handle: Arc<ConnHandle>,
}

/// Nothing is queued.
#[derive(Debug)]
pub struct Empty;

impl std::fmt::Debug for OutboundRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundRx")
            .field("conn", &self.handle.id)
            .finish()
    }
}

impl OutboundRx {
    pub(super) fn new(handle: Arc<ConnHandle>) -> Self {
        OutboundRx { handle }
    }

    /// The next frame, waiting for one; `None` once closed.
    pub async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        let queue = &self.handle.queue;
        if let Ok(frame) = queue.pop() {
            return Poll::Ready(Some(frame));
        }
        queue.writer.register(cx.waker());
        // Again after registering: a push in between woke nobody.
        match queue.pop() {
            Ok(frame) => Poll::Ready(Some(frame)),
            Err(true) => Poll::Ready(None),
            Err(false) => Poll::Pending,
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<Outbound, Empty> {
        self.handle.queue.pop().map_err(|_| Empty)
    }

    /// Closes the queue: what is still queued is dropped.
    pub fn close(&mut self) {
        self.handle.queue.close();
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        self.handle.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chorus_shared::protocol::ServerEvent;

    use super::*;
    use crate::close;
    use crate::codec::{Encoding, Frame, SharedFrame};

    fn handle(queue: usize) -> (Arc<ConnHandle>, OutboundRx) {
        let expiry = tokio::time::Instant::now() + Duration::from_secs(60);
        ConnHandle::new(1, "u", "U", Encoding::Json, queue, expiry)
    }

    fn event(n: i64) -> Frame {
        Arc::new(SharedFrame::new(ServerEvent::UserTyping(
            chorus_shared::protocol::UserTyping {
                community_id: uuid::Uuid::nil(),
                user_id: format!("u{n}"),
                name: String::new(),
                is_typing: true,
            },
        )))
    }

    #[tokio::test]
    async fn the_writer_is_woken_by_a_push() {
        let (h, mut rx) = handle(4);
        let writer = tokio::spawn(async move { rx.recv().await.is_some() });
        tokio::task::yield_now().await;
        assert!(h.push_event(&event(1)));
        let woken = tokio::time::timeout(Duration::from_secs(10), writer).await;
        assert!(woken.expect("woken").expect("writer"));
    }

    #[tokio::test]
    async fn a_replay_waiting_for_space_ends_when_the_writer_goes() {
        let (h, rx) = handle(1);
        assert!(h.push_event(&event(1)));
        let waiting = {
            let h = h.clone();
            tokio::spawn(async move { h.push_event_wait(&event(2)).await })
        };
        tokio::task::yield_now().await;
        drop(rx);
        let ended = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert!(!ended.expect("ended").expect("replay"), "not queued");
        assert_eq!(h.close_code(), None, "refused, not a slow consumer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_waiting_for_space_goes_on_when_the_writer_takes_a_frame() {
        let (h, mut rx) = handle(1);
        assert!(h.push_event(&event(1)));
        let waiting = {
            let h = h.clone();
            tokio::spawn(async move { h.push_event_wait(&event(2)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the queue is full");
        assert!(rx.try_recv().is_ok());
        assert!(
            waiting.await.expect("replay"),
            "queued once there was space"
        );
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        assert_eq!(h.close_code(), None);
    }

    #[tokio::test]
    async fn a_full_queue_is_a_slow_consumer_while_the_writer_waits_on_the_socket() {
        let (h, _rx) = handle(4);
        h.socket_full(true);
        for n in 0..4 {
            assert!(h.push_event(&event(n)));
        }
        assert_eq!(h.close_code(), None);
        assert!(!h.push_event(&event(4)));
        assert_eq!(h.close_code(), Some(close::SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn a_writer_behind_only_for_a_cpu_gets_the_overdraft_and_no_more() {
        let (h, mut rx) = handle(4);
        for n in 0..4 * OVERDRAFT {
            assert!(h.push_event(&event(n as i64)), "frame {n}");
        }
        assert_eq!(h.close_code(), None, "the client is not the one behind");
        // The socket stops taking frames: back to the capacity, which the
        // queue is already past.
        h.socket_full(true);
        assert!(rx.try_recv().is_ok());
        assert!(!h.push_event(&event(99)));
        assert_eq!(h.close_code(), Some(close::SLOW_CONSUMER));

        // And with the socket taking frames, the overdraft is the bound.
        let (h, _rx) = handle(4);
        for n in 0..4 * OVERDRAFT {
            assert!(h.push_event(&event(n as i64)));
        }
        assert!(!h.push_event(&event(99)));
        assert_eq!(h.close_code(), Some(close::SLOW_CONSUMER));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_waits_for_the_capacity_not_the_overdraft() {
        let (h, mut rx) = handle(2);
        for n in 0..3 {
            assert!(h.push_event(&event(n)), "live, into the overdraft");
        }
        let waiting = {
            let h = h.clone();
            tokio::spawn(async move { h.push_event_wait(&event(9)).await })
        };
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_ok());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "two queued: still at the capacity");
        assert!(rx.try_recv().is_ok());
        assert!(waiting.await.expect("replay"), "queued below the capacity");
        assert_eq!(h.close_code(), None);
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_quietly_and_lets_go_of_what_it_held() {
        let (h, rx) = handle(4);
        let frame = event(1);
        assert!(h.push_event(&frame));
        assert_eq!(Arc::strong_count(&frame), 2);
        drop(rx);
        assert_eq!(Arc::strong_count(&frame), 1, "dropped with the queue");
        assert!(!h.push_event(&frame));
        assert_eq!(h.close_code(), None, "refused, not a slow consumer");
    }

    #[tokio::test]
    async fn an_emptied_queue_gives_a_bursts_space_back() {
        let (h, mut rx) = handle(1000);
        for n in 0..500 {
            assert!(h.push_event(&event(n)));
        }
        assert!(lock(&h.queue.state).frames.capacity() >= 500);
        while rx.try_recv().is_ok() {}
        assert!(lock(&h.queue.state).frames.capacity() <= KEPT_SLOTS);
    }
}
