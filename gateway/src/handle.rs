//! [`ConnHandle`]: what everything above the socket knows of a connection.
//!
//! Rooms, the user registry and draining hold connections only through this
//! handle: who the connection is, a non-blocking push onto its bounded
//! outbound queue (`handle/queue.rs`), and a close signal. The socket
//! layer's reader and writer hold the same handle, so a close requested
//! anywhere (a full queue, a revoked token, a drain) ends both tasks. The
//! queue also holds the socket, so that a dispatcher can write what it
//! queued while the writer has nothing to do, without waking it
//! ([`ConnHandle::offer_event`], [`ConnHandle::flush`]). The handle knows
//! nothing of rooms, and rooms nothing of sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use chorus_shared::protocol::{Reconnect, ServerEvent};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::close;
use crate::codec::{Encoding, Frame, SharedFrame};
use crate::liveness::Liveness;

mod queue;

pub use queue::{Empty, OutboundRx, Pushed};
use queue::{Flushed, Queue, Refused};
pub(crate) use queue::{Next, Wake};

/// One entry of a connection's outbound queue: a single pointer. A shared
/// event is encoded for this connection by its writer (at most once per
/// encoding per event, see `SharedFrame`); the rare connection-specific
/// frame (ready, acks, errors) arrives encoded.
pub type Outbound = Frame;
const _: () = assert!(size_of::<Outbound>() == size_of::<usize>());

/// Bytes of a connection's own frames (acks, errors: a join ack carries
/// the online list) that may wait in its queue. The queue counts frames;
/// this bounds what one client that stops reading can make the gateway
/// hold for it alone, whatever the frames' sizes. Shared events are not
/// counted: their bytes are shared by every recipient.
pub const MAX_OWN_QUEUED_BYTES: usize = 1024 * 1024;

/// A connection as seen by rooms, the registry and the socket tasks.
pub struct ConnHandle {
    /// Unique within this gateway process.
    pub id: u64,
    pub user_id: Arc<str>,
    pub name: Arc<str>,
    pub encoding: Encoding,
    /// An official may be in any community without being a member.
    pub official: bool,
    queue: Queue,
    close_code: AtomicU32,
    /// The client closed the connection itself (its close frame came
    /// before any close of ours): the user left, rather than got lost.
    goodbye: AtomicBool,
    /// The client sent a close frame (with any code): what is still queued
    /// for it would be thrown away, so the writer answers with its close
    /// frame at once (RFC 6455 §5.5.1).
    peer_closed: AtomicBool,
    /// The connections' clock found a ping due: the writer sends one.
    ping: AtomicBool,
    closing: Notify,
    /// Bytes of this connection's own frames queued and not yet written.
    own_queued: AtomicUsize,
    /// The socket layer's clock (idle timeout, token expiry).
    pub(crate) liveness: Liveness,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl ConnHandle {
    /// A handle with an outbound queue of `queue` frames, and the queue's
    /// receiving end for the writer. The token expires at `expires_at`.
    pub fn new(
        id: u64,
        user_id: &str,
        name: &str,
        encoding: Encoding,
        queue: usize,
        expires_at: tokio::time::Instant,
    ) -> (Arc<ConnHandle>, OutboundRx) {
        Self::with_role(id, user_id, name, false, encoding, queue, expires_at)
    }

    /// [`ConnHandle::new`] for a user who may be an official.
    pub fn with_role(
        id: u64,
        user_id: &str,
        name: &str,
        official: bool,
        encoding: Encoding,
        queue: usize,
        expires_at: tokio::time::Instant,
    ) -> (Arc<ConnHandle>, OutboundRx) {
        let handle = Arc::new(ConnHandle {
            id,
            user_id: Arc::from(user_id),
            name: Arc::from(name),
            encoding,
            official,
            queue: Queue::new(queue.max(1)),
            close_code: AtomicU32::new(0),
            goodbye: AtomicBool::new(false),
            peer_closed: AtomicBool::new(false),
            ping: AtomicBool::new(false),
            closing: Notify::new(),
            own_queued: AtomicUsize::new(0),
            liveness: Liveness::new(expires_at),
        });
        let rx = OutboundRx::new(handle.clone());
        (handle, rx)
    }

    /// Queues a connection-specific frame without waiting (see
    /// [`ConnHandle::push_event`]).
    /// Past [`MAX_OWN_QUEUED_BYTES`] of such frames waiting, the client is
    /// a slow consumer.
    pub fn push(&self, frame: Message) -> bool {
        let size = frame_len(&frame);
        if self.own_queued.fetch_add(size, Ordering::SeqCst) + size > MAX_OWN_QUEUED_BYTES {
            self.own_queued.fetch_sub(size, Ordering::SeqCst);
            self.slow_consumer();
            return false;
        }
        if self
            .send_now(Arc::new(SharedFrame::Encoded(frame)), false)
            .is_some()
        {
            true
        } else {
            self.own_queued.fetch_sub(size, Ordering::SeqCst);
            false
        }
    }

    /// Notes that `frame`, taken off the queue, was written (or dropped).
    pub fn dequeued(&self, frame: &Outbound) {
        if let SharedFrame::Encoded(m) = &**frame {
            self.own_queued.fetch_sub(frame_len(m), Ordering::SeqCst);
        }
    }

    /// Queues `value` encoded for this connection, without waiting.
    pub fn push_value<T: serde::Serialize>(&self, value: &T) -> bool {
        self.push(self.encoding.encode(value))
    }

    /// Queues a shared event without waiting. A full queue means a slow
    /// consumer: the connection is closed with 4009 (a queue is full at its
    /// capacity while the writer waits on the socket, at an overdraft
    /// beyond it otherwise: see `handle/queue.rs`). False when not queued.
    pub fn push_event(&self, frame: &Frame) -> bool {
        self.send_now(frame.clone(), false).is_some()
    }

    /// [`ConnHandle::push_event`], which with `claim` may claim the
    /// writer's turn instead of waking it (when the writer has nothing to
    /// do): then the caller must [`ConnHandle::flush`], once it holds no
    /// lock. `None` when not queued.
    pub fn offer_event(&self, frame: &Frame, claim: bool) -> Option<Pushed> {
        self.send_now(frame.clone(), claim)
    }

    /// Writes what is queued, after a push that claimed the turn: what the
    /// socket takes at once, the rest left to the writer. A socket that
    /// fails closes the connection.
    pub fn flush(&self) {
        match self.queue.flush(self.encoding, |f, sent| {
            self.dequeued(f);
            if sent {
                f.written();
            }
        }) {
            Flushed::Done => {}
            Flushed::Failed => {
                self.close(close::NORMAL);
            }
        }
    }

    /// The socket, for [`ConnHandle::flush`]; until the writer closes the
    /// queue.
    pub fn attach(&self, socket: Arc<tokio::net::TcpStream>) {
        self.queue.attach(socket);
    }

    fn send_now(&self, out: Outbound, claim: bool) -> Option<Pushed> {
        match self.queue.push(out, claim) {
            Ok(pushed) => Some(pushed),
            Err(Refused::Full(_)) => {
                self.slow_consumer();
                None
            }
            Err(Refused::Closed) => None,
        }
    }

    /// Queues a shared event, waiting for space (replays are paced by the
    /// client's reading), but not longer than [`close::SLOW_CONSUMER_GRACE`]
    /// without progress: then the connection is closed with 4009. False
    /// when not queued.
    pub async fn push_event_wait(&self, frame: &Frame) -> bool {
        let send = self.queue.push_waiting(frame.clone());
        tokio::select! {
            r = tokio::time::timeout(close::SLOW_CONSUMER_GRACE, send) => match r {
                Ok(sent) => sent,
                Err(_) => {
                    self.slow_consumer();
                    false
                }
            },
            _ = self.closed() => false,
        }
    }

    /// The writer starts (true) or stops (false) waiting on the socket;
    /// only meanwhile does a full queue count against the client (see
    /// `handle/queue.rs`).
    pub fn socket_full(&self, full: bool) {
        self.queue.socket_full(full);
    }

    /// Whether the writer is waiting for the client to read (the kernel's
    /// buffers are full).
    pub fn writer_waits_on_socket(&self) -> bool {
        self.queue.socket_full_now()
    }

    /// Closes a connection that stopped keeping up with 4009.
    pub fn slow_consumer(&self) {
        if self.close(close::SLOW_CONSUMER) {
            metrics::counter!("chorus_gateway_slow_consumer_closes_total").increment(1);
            tracing::info!(conn = self.id, user = %self.user_id, "slow consumer");
        }
    }

    /// Asks both tasks to end with `code`; the first code wins. True if this
    /// call decided the code.
    pub fn close(&self, code: u16) -> bool {
        let won = self
            .close_code
            .compare_exchange(0, u32::from(code), Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        self.closing.notify_waiters();
        self.queue.wake_writer();
        won
    }

    /// A ping is due: the writer sends one when it next runs (woken for
    /// it if it has nothing to do).
    pub fn ping_due(&self) {
        self.ping.store(true, Ordering::SeqCst);
        self.queue.wake_writer();
    }

    /// Whether a ping is due, and it is now the writer's to send.
    pub(crate) fn take_ping(&self) -> bool {
        self.ping.swap(false, Ordering::SeqCst)
    }

    /// The client's close frame arrived, with `code`. It counts as a
    /// goodbye when it opened the closing handshake (not when it answered
    /// ours) with a code that means leaving: none, 1000 (normal) or 1001
    /// (going away, a closed tab). Other codes are a client giving up on
    /// this connection to make another (the SDK's 4000 after a missed
    /// heartbeat), not a user leaving.
    pub fn client_closed(&self, code: Option<u16>) {
        self.peer_closed.store(true, Ordering::SeqCst);
        if self.close_code().is_none() && matches!(code, None | Some(1000 | 1001)) {
            self.goodbye.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the client sent a close frame, with any code.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed.load(Ordering::SeqCst)
    }

    /// Whether the client ended the connection with its own close frame.
    pub fn said_goodbye(&self) -> bool {
        self.goodbye.load(Ordering::SeqCst)
    }

    /// The code the connection is closing with, once a close was requested.
    pub fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::SeqCst) {
            0 => None,
            c => u16::try_from(c).ok(),
        }
    }

    /// Resolves with the close code once a close was requested.
    pub async fn closed(&self) -> u16 {
        loop {
            let notified = self.closing.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(code) = self.close_code() {
                return code;
            }
            notified.await;
        }
    }

    /// Tells the client to reconnect after `after_ms` and closes with 1012.
    pub fn drain(&self, after_ms: u64) {
        self.push_value(&ServerEvent::Reconnect(Reconnect {
            reason: "draining".into(),
            after_ms,
        }));
        self.close(close::DRAINING);
    }
}

/// The payload size of a frame.
fn frame_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
        Message::Frame(f) => f.payload().len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn handle(queue: usize) -> (Arc<ConnHandle>, OutboundRx) {
        let expiry = tokio::time::Instant::now() + Duration::from_secs(60);
        ConnHandle::new(1, "u", "U", Encoding::Json, queue, expiry)
    }

    #[tokio::test]
    async fn a_full_queue_closes_with_4009_and_the_first_code_wins() {
        let (h, mut rx) = handle(1);
        h.socket_full(true);
        assert!(h.push(Message::Text("a".into())));
        assert!(!h.push(Message::Text("b".into())), "queue full");
        assert_eq!(h.close_code(), Some(close::SLOW_CONSUMER));
        assert!(
            !h.close(close::NORMAL),
            "a later close does not change the code"
        );
        assert_eq!(h.closed().await, close::SLOW_CONSUMER);
        assert!(rx.try_recv().is_ok());
    }

    #[tokio::test]
    async fn drain_queues_reconnect_then_closes_with_1012() {
        let (h, mut rx) = handle(4);
        h.drain(750);
        let frame = rx.try_recv().expect("reconnect queued");
        match frame.get(Encoding::Json) {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                assert_eq!(v["type"], "reconnect");
                assert_eq!(v["data"]["afterMs"], 750);
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
        assert_eq!(h.close_code(), Some(close::DRAINING));
    }

    #[tokio::test]
    async fn own_frames_are_bounded_in_bytes_not_only_in_count() {
        let (h, mut rx) = handle(256);
        let big = "x".repeat(300 * 1024);
        for _ in 0..3 {
            assert!(h.push(Message::Text(big.clone().into())));
        }
        assert!(!h.push(Message::Text(big.clone().into())), "past 1 MiB");
        assert_eq!(h.close_code(), Some(close::SLOW_CONSUMER));
        // Written frames give their bytes back.
        let (h, mut rx2) = handle(256);
        for _ in 0..10 {
            assert!(h.push(Message::Text(big.clone().into())));
            let f = rx2.try_recv().expect("queued");
            h.dequeued(&f);
        }
        assert_eq!(h.close_code(), None);
        assert!(rx.try_recv().is_ok());
    }
}
