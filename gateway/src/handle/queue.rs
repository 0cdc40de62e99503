//! A connection's outbound queue, inside its handle: a deque under a
//! mutex (held for a push or a pop, never across an `.await`), the
//! writer's waker, and a signal for replays waiting for space. Kept whole
//! past 450 lines: its bounds and whose turn it is to write share one
//! lock and one state, and are read together. tokio's
//! bounded channel costs every connection a cache-padded shared state and
//! a first block of 32 slots, about 800 bytes allocated up front; this one
//! adds about 120 bytes to the handle, and its deque grows only with what
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
//!
//! Whose turn it is to write ([`Turn`]): the socket has one writer at a
//! time, and frames go out in queue order. Mostly the writer task writes.
//! But waking it costs a task switch per frame, which in rooms of ten was
//! the largest cost left after the kernel's write. So while the writer has
//! nothing to do, the task that dispatches an event may *claim* the turn
//! with its push and write the queue itself, once it holds no room lock
//! (`hub/claims.rs`), with non-blocking writes only: whatever the socket
//! does not take at once (a frame's rest, the frames behind it) is left to
//! the writer, which is woken and waits on the socket as before. A claim
//! covers at most [`MAX_CLAIMED`] frames: a claimer writes no more before
//! handing the rest to the writer, and a claim not being written yet (its
//! claimer still holds the room's lock, say delivering a gap fill's
//! hundreds of events) yields to the writer once that many wait (or the
//! queue's capacity, if smaller), so the queue drains as it did before
//! claims. The writer takes a claim not being written whenever it runs
//! (for a ping, its close, or a frame it was woken for), and waits only
//! for a flush in progress: a few non-blocking writes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{ConnHandle, Outbound};
use crate::codec::Encoding;
use crate::codec::frame::FrameBytes;
use crate::sync::lock;

/// Slots an emptied queue may keep. A burst (a replay, a room filling up)
/// grows the deque; once it is empty again, a deque larger than this is
/// freed, so an idle connection keeps 64 bytes at most, not a burst's
/// space. Eight: steady traffic (a frame or two waiting at a time) never
/// allocates per frame.
const KEPT_SLOTS: usize = 8;

/// Most frames one claim covers (see the module's docs): what the writer
/// writes in one turn too, so a claimer's flush costs its task no more
/// than one of the writer's turns, and a long hold of a room's lock leaves
/// a claimed queue no fuller than a writer that is slow to be scheduled.
const MAX_CLAIMED: usize = 64;

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
    turn: Turn,
    /// The writer waits for a claimer to hand the turn back.
    writer_waits: bool,
    /// The unwritten end of a frame a claimer's write left: the writer
    /// sends it before anything else.
    rest: Option<Box<FrameBytes>>,
    /// The connection's socket, for a claimer's writes; none without a TCP
    /// socket (unit tests) and once the queue is closed.
    socket: Option<Arc<TcpStream>>,
}

/// Who may write to the socket (see the module's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Nobody writes: the writer or a claimer's flush found the queue
    /// empty, or the writer has been woken for what was queued since and
    /// not run yet. A push may claim the turn.
    Idle,
    /// The writer task: it writes, or has frames or a frame's rest to.
    Writer,
    /// A push claimed it; its caller will write the queue with
    /// [`Queue::flush`] once it holds no lock. Until the flush begins, the
    /// writer may take it back.
    Claimed,
    /// The claimer is writing: nobody else may.
    Flushing,
}

/// Why a frame was not queued.
pub(super) enum Refused {
    /// The queue is full; the frame comes back.
    Full(Outbound),
    Closed,
}

/// A queued frame, and whether its push claimed the turn to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The writer sends it (woken if it had nothing to do), or the flush
    /// of an earlier claim does.
    Queued,
    /// The caller writes it with `flush`, once it holds no lock.
    Claimed,
}

/// What the writer takes off the queue.
pub(crate) enum Next {
    Frame(Outbound),
    /// The end of a frame a claimer began: it goes first.
    Rest(Box<FrameBytes>),
}

/// What the writer is woken for, most urgent first.
pub(crate) enum Wake {
    /// The connection is closing with this code.
    Close(u16),
    /// A ping is due.
    Ping,
    Next(Next),
    /// The queue is closed: nothing more will come.
    Ended,
}

/// How a claimer's flush ended.
pub(super) enum Flushed {
    /// The queue is written, or left to the writer (the socket took only
    /// part).
    Done,
    /// The socket failed: the client is gone.
    Failed,
}

impl Queue {
    pub(super) fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                frames: VecDeque::new(),
                capacity,
                socket_full: false,
                closed: false,
                turn: Turn::Idle,
                writer_waits: false,
                rest: None,
                socket: None,
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
            match self.push_within(frame, |s| s.capacity, false) {
                Ok(_) => return true,
                Err(Refused::Closed) => return false,
                Err(Refused::Full(back)) => frame = back,
            }
            space.await;
        }
    }

    /// Queues a live event: within the capacity, or the overdraft while
    /// the socket takes what the writer sends. With `claim`, and nobody
    /// writing, the caller takes the turn and must [`Queue::flush`].
    pub(super) fn push(&self, frame: Outbound, claim: bool) -> Result<Pushed, Refused> {
        self.push_within(
            frame,
            |s| {
                if s.socket_full {
                    s.capacity
                } else {
                    s.capacity.saturating_mul(OVERDRAFT)
                }
            },
            claim,
        )
    }

    fn push_within(
        &self,
        frame: Outbound,
        limit: impl FnOnce(&QueueState) -> usize,
        claim: bool,
    ) -> Result<Pushed, Refused> {
        let (overdrawn, pushed, wake) = {
            let mut s = lock(&self.state);
            if s.closed {
                return Err(Refused::Closed);
            }
            let len = s.frames.len();
            if len >= limit(&s) {
                return Err(Refused::Full(frame));
            }
            s.frames.push_back(frame);
            let overdrawn = len >= s.capacity;
            match s.turn {
                Turn::Idle if claim && s.socket.is_some() => {
                    s.turn = Turn::Claimed;
                    (overdrawn, Pushed::Claimed, false)
                }
                // A claim that grew past its bound before being written
                // goes to the writer; its flush will find it gone.
                Turn::Claimed if len + 1 >= MAX_CLAIMED.min(s.capacity) => {
                    s.turn = Turn::Writer;
                    (overdrawn, Pushed::Queued, true)
                }
                // The claimer's flush takes this frame too.
                Turn::Claimed | Turn::Flushing => (overdrawn, Pushed::Queued, false),
                Turn::Idle | Turn::Writer => (overdrawn, Pushed::Queued, true),
            }
        };
        if overdrawn {
            metrics::counter!("chorus_gateway_queue_overdraft_total").increment(1);
        }
        if wake {
            self.writer.wake();
        }
        Ok(pushed)
    }

    /// The connection's socket, for claimers' writes, unless the queue is
    /// closed already.
    pub(super) fn attach(&self, socket: Arc<TcpStream>) {
        let mut s = lock(&self.state);
        if !s.closed {
            s.socket = Some(socket);
        }
    }

    /// A claimer writes what is queued, each frame with non-blocking
    /// writes, and gives the turn back: to nobody once the queue is empty;
    /// to the writer (woken) when the socket did not take everything at
    /// once, after [`MAX_CLAIMED`] frames, or when the writer waits for it.
    /// Nothing, if the writer took the claim back first. `taken` is told
    /// of each frame taken off the queue, and whether any of it went out.
    pub(super) fn flush(&self, encoding: Encoding, taken: impl Fn(&Outbound, bool)) -> Flushed {
        for n in 0..MAX_CLAIMED {
            let (frame, io, was_full) = {
                let mut s = lock(&self.state);
                if n == 0 {
                    if s.turn != Turn::Claimed {
                        return Flushed::Done;
                    }
                    s.turn = Turn::Flushing;
                }
                let (frame, was_full) = take_front(&mut s);
                let (frame, io) = match (frame, &s.socket) {
                    (Some(frame), Some(io)) => (frame, io.clone()),
                    (frame, _) => {
                        // Nothing left, or the queue closed meanwhile.
                        if let Some(frame) = frame {
                            s.frames.push_front(frame);
                        }
                        let wake = s.writer_waits || !s.frames.is_empty();
                        s.writer_waits = false;
                        s.turn = if wake { Turn::Writer } else { Turn::Idle };
                        drop(s);
                        if wake {
                            self.writer.wake();
                        }
                        return Flushed::Done;
                    }
                };
                (frame, io, was_full)
            };
            if was_full {
                self.space.notify_waiters();
            }
            let mut bytes = FrameBytes::new(frame.get(encoding));
            let done = bytes.try_write(&io);
            taken(&frame, done.is_ok());
            match done {
                Ok(true) => {}
                Ok(false) => {
                    self.hand_over(Some(bytes));
                    return Flushed::Done;
                }
                Err(_) => {
                    self.hand_over(None);
                    return Flushed::Failed;
                }
            }
        }
        // The claim's bound: the writer goes on with what is left, if any.
        let wake = {
            let mut s = lock(&self.state);
            let wake = s.writer_waits || !s.frames.is_empty();
            s.writer_waits = false;
            s.turn = if wake { Turn::Writer } else { Turn::Idle };
            wake
        };
        if wake {
            self.writer.wake();
        }
        Flushed::Done
    }

    /// A claimer gives the turn to the writer, with a frame's rest (which
    /// a closed queue does not keep).
    fn hand_over(&self, rest: Option<FrameBytes>) {
        {
            let mut s = lock(&self.state);
            if !s.closed {
                s.rest = rest.map(Box::new);
            }
            s.turn = Turn::Writer;
            s.writer_waits = false;
        }
        self.writer.wake();
    }

    /// Wakes the writer if it waits for its queue (a close, a ping due).
    pub(super) fn wake_writer(&self) {
        self.writer.wake();
    }

    /// The writer starts (true) or stops (false) waiting on the socket.
    pub(super) fn socket_full(&self, full: bool) {
        lock(&self.state).socket_full = full;
    }

    /// Whether the writer waits on the socket.
    pub(super) fn socket_full_now(&self) -> bool {
        lock(&self.state).socket_full
    }

    /// The next frame, without a change of turn; or, with nothing queued,
    /// whether the queue is closed.
    fn pop(&self) -> Result<Outbound, bool> {
        let (frame, was_full) = {
            let mut s = lock(&self.state);
            let (frame, was_full) = take_front(&mut s);
            let Some(frame) = frame else {
                return Err(s.closed);
            };
            (frame, was_full)
        };
        if was_full {
            self.space.notify_waiters();
        }
        Ok(frame)
    }

    /// The writer's next frame (a claimer's rest first), taking the turn
    /// (from a claim not being written, too); with nothing for it, the
    /// turn goes back to nobody and the result says whether the queue is
    /// closed. Nothing while a claimer writes.
    fn next(&self) -> Result<Next, bool> {
        let (frame, was_full) = {
            let mut s = lock(&self.state);
            if s.turn == Turn::Flushing {
                return Err(false);
            }
            if let Some(rest) = s.rest.take() {
                s.turn = Turn::Writer;
                return Ok(Next::Rest(rest));
            }
            let (frame, was_full) = take_front(&mut s);
            let Some(frame) = frame else {
                s.turn = Turn::Idle;
                return Err(s.closed);
            };
            s.turn = Turn::Writer;
            (frame, was_full)
        };
        if was_full {
            self.space.notify_waiters();
        }
        Ok(Next::Frame(frame))
    }

    /// The writer takes the turn, with a claimer's rest if there is one;
    /// pending while a claimer writes.
    fn take_turn(&self) -> Poll<Option<Box<FrameBytes>>> {
        let mut s = lock(&self.state);
        if s.turn == Turn::Flushing {
            s.writer_waits = true;
            return Poll::Pending;
        }
        s.turn = Turn::Writer;
        Poll::Ready(s.rest.take())
    }

    fn close(&self) {
        let dropped = {
            let mut s = lock(&self.state);
            s.closed = true;
            s.socket = None;
            s.rest = None;
            std::mem::take(&mut s.frames)
        };
        drop(dropped);
        self.space.notify_waiters();
    }
}

/// Takes the first frame, freeing a burst's space once the queue is empty;
/// and whether replays waited for this pop: they wait while the queue
/// holds its capacity or more.
fn take_front(s: &mut QueueState) -> (Option<Outbound>, bool) {
    let was_full = s.frames.len() == s.capacity;
    let frame = s.frames.pop_front();
    if s.frames.is_empty() && s.frames.capacity() > KEPT_SLOTS {
        s.frames = VecDeque::new();
    }
    let was_full = was_full && frame.is_some();
    (frame, was_full)
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

    /// What the writer does next: close, ping, or write the next frame
    /// (taking the turn to). Waits until there is one of those.
    pub(crate) async fn wait(&mut self) -> Wake {
        std::future::poll_fn(|cx| {
            if let Some(wake) = self.wake() {
                return Poll::Ready(wake);
            }
            self.handle.queue.writer.register(cx.waker());
            // Again after registering: what came in between woke nobody.
            self.wake().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    fn wake(&mut self) -> Option<Wake> {
        if let Some(code) = self.handle.close_code() {
            return Some(Wake::Close(code));
        }
        if self.handle.take_ping() {
            return Some(Wake::Ping);
        }
        match self.handle.queue.next() {
            Ok(next) => Some(Wake::Next(next)),
            Err(true) => Some(Wake::Ended),
            Err(false) => None,
        }
    }

    /// The writer's next frame if there is one, taking the turn to write
    /// it, as [`OutboundRx::wait`] does.
    pub(crate) fn try_next(&mut self) -> Option<Next> {
        self.handle.queue.next().ok()
    }

    /// The writer takes the turn to write (a ping, its close), with the
    /// rest of a frame a claimer began, which goes first.
    pub(crate) async fn take_turn(&mut self) -> Option<Box<FrameBytes>> {
        let queue = &self.handle.queue;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(rest) = queue.take_turn() {
                return Poll::Ready(rest);
            }
            queue.writer.register(cx.waker());
            // Again after registering: the claimer may have just finished.
            queue.take_turn()
        })
        .await
    }

    /// The next frame if one is queued, with no change of turn: for the
    /// writer's close, which holds the turn, and for tests.
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
mod tests;
