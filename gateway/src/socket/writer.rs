//! The writer task: it writes what a connection's outbound queue holds
//! when it is woken for it (deliveries in rooms of more than 32, acks,
//! pongs, replays, what the socket did not take from a dispatcher at once,
//! a claim past its bound), and every ping and close.
//!
//! While it has nothing to do, a dispatcher may claim its turn and write
//! in its place (`handle/queue.rs`); it takes the turn back for a ping or
//! its close. When pings are due, and when a connection is idle or its
//! token expired, is the connections' clock's ([`super::clock`]), which
//! wakes the writer through its queue. Once the connection is closing it
//! sends what is still queued (not to a slow consumer, nor to a client
//! that closed first), then the close frame, each bounded in time, and
//! shuts the socket's writing side.
//!
//! It frames messages itself ([`super::frame`]) on the shared TCP stream.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::frame::Out;
use crate::close;
use crate::codec::Encoding;
use crate::handle::{ConnHandle, Next, OutboundRx, Wake};

/// Most queued frames written in one turn of the writer's loop: enough to
/// take a burst in one wake-up, few enough that a close or a due ping is
/// seen between turns.
const WRITE_BATCH: usize = 64;

/// How long one socket write may make no progress before the client counts
/// as a slow consumer (4009). Longer than the queue's one-second rule on
/// purpose: with any traffic the queue fills and closes the connection
/// first; this bounds the quiet case (a client that stopped reading in a
/// quiet room) without mistaking a moment of CPU starvation, when the
/// writer is not polled, for a stalled client.
const WRITE_STALL: Duration = Duration::from_secs(10);

/// How long the final frames and the close frame may take before the TCP
/// connection is dropped (contract: a slow consumer's 4009 is tried for
/// 1 s).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The writer task.
///
/// Not an `async fn`, whose arguments would be stored twice in the task.
/// It waits on its queue alone: a frame, a close and a ping the clock
/// found due (`clock`) all wake it there, so an idle connection's writer
/// holds no timer and no close signal, only this and the queue's waker.
/// Writes are boxed, so that it does not carry their space either: about
/// 100 bytes of task, where a timer and a close signal of its own took
/// nearly 400.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice in the task"
)]
pub(super) fn write_loop<W: AsyncWrite + Unpin + Send>(
    io: W,
    mut rx: OutboundRx,
    handle: Arc<ConnHandle>,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut out = Out::new(io);
        let code = loop {
            let step = match rx.wait().await {
                Wake::Close(code) => break code,
                Wake::Ended => break close::NORMAL,
                Wake::Ping => Box::pin(guarded(ping(&mut out, &mut rx), &handle)).await,
                Wake::Next(next) => {
                    let batch = write_batch(&mut out, &mut rx, &handle, next);
                    Box::pin(guarded(batch, &handle)).await
                }
            };
            match step.then(&handle) {
                Then::Continue => {}
                Then::Close(code) => break code,
                Then::Drop => return,
            }
        };
        let send_queued = sends_queued(code, &handle);
        Box::pin(finish(
            &mut out,
            &mut rx,
            handle.encoding,
            code,
            send_queued,
        ))
        .await;
    }
}

/// Writes a ping, after the rest of a frame a dispatcher began. Like every
/// write, it must not hold up a close when the client has stopped reading.
async fn ping<W: AsyncWrite + Unpin>(out: &mut Out<W>, rx: &mut OutboundRx) -> Written {
    if let Some(rest) = rx.take_turn().await {
        out.rest = Some(rest);
    }
    bounded(out.send(Message::Ping(Bytes::new())))
        .await
        .err()
        .unwrap_or(Written::All)
}

/// Whether a close with `code` sends what is still queued first: not to a
/// slow consumer (it is not reading), nor to a client that sent its own
/// close (it would throw them away).
fn sends_queued(code: u16, handle: &ConnHandle) -> bool {
    code != close::SLOW_CONSUMER && !handle.peer_closed()
}

/// How a guarded write ended.
enum Step {
    Done,
    Closed(u16),
    Expired,
    Stalled,
    Failed,
}

/// What the writer does after a guarded write.
enum Then {
    Continue,
    /// Send the close frame with this code.
    Close(u16),
    /// The socket is gone: just stop.
    Drop,
}

impl Step {
    /// Records the outcome on the handle and says what comes next.
    fn then(self, handle: &ConnHandle) -> Then {
        match self {
            Step::Done => Then::Continue,
            Step::Closed(code) => Then::Close(code),
            Step::Expired => Then::Close(close_now(handle, close::POLICY)),
            Step::Stalled => {
                handle.slow_consumer();
                Then::Close(close::SLOW_CONSUMER)
            }
            Step::Failed => {
                handle.close(close::NORMAL);
                Then::Drop
            }
        }
    }
}

/// Runs a socket write until it ends, the connection is asked to close, or
/// the token expires: a stuck socket must not hold up a close, nor outlive
/// the token.
///
/// Biased towards the write: almost every write completes on its first
/// poll, and then neither the close signal nor the expiry timer is polled,
/// so no timer is registered and removed per delivery (a timer-wheel
/// update per frame was measurable on the fan-out path).
async fn guarded<W>(write: W, handle: &ConnHandle) -> Step
where
    W: Future<Output = Written>,
{
    tokio::select! {
        biased;
        w = write => match w {
            Written::All => Step::Done,
            Written::Stalled => Step::Stalled,
            Written::Failed => Step::Failed,
        },
        code = handle.closed() => Step::Closed(code),
        () = tokio::time::sleep_until(handle.liveness.expires_at()) => Step::Expired,
    }
}

/// Requests a close with `code` and returns the code that won.
fn close_now(handle: &ConnHandle, code: u16) -> u16 {
    handle.close(code);
    handle.close_code().unwrap_or(code)
}

/// How a batch write ended.
enum Written {
    All,
    /// One write made no progress for [`WRITE_STALL`]: the client stopped
    /// reading.
    Stalled,
    /// The socket failed (the client is gone).
    Failed,
}

/// One socket operation, bounded by [`WRITE_STALL`].
async fn bounded<E>(op: impl Future<Output = Result<(), E>>) -> Result<(), Written> {
    match tokio::time::timeout(WRITE_STALL, op).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Written::Failed),
        Err(_) => Err(Written::Stalled),
    }
}

/// Runs one socket operation; while it waits on the socket (the client is
/// not reading as fast as frames come), the queue knows it, so that only
/// then does a full queue count against the client. Almost every write
/// completes on its first poll and touches nothing.
async fn on_socket<T>(handle: &ConnHandle, op: impl Future<Output = T>) -> T {
    let mut op = std::pin::pin!(op);
    if let Poll::Ready(done) = futures_util::poll!(op.as_mut()) {
        return done;
    }
    handle.socket_full(true);
    let done = op.await;
    handle.socket_full(false);
    done
}

/// Writes `first` and whatever else is queued (up to [`WRITE_BATCH`]),
/// each frame straight to the socket, so each write finishing is progress.
async fn write_batch<W: AsyncWrite + Unpin>(
    out: &mut Out<W>,
    rx: &mut OutboundRx,
    handle: &ConnHandle,
    first: Next,
) -> Written {
    let r = async {
        write_next(out, handle, first).await?;
        for _ in 1..WRITE_BATCH {
            let Some(next) = rx.try_next() else { break };
            write_next(out, handle, next).await?;
        }
        Ok(())
    }
    .await;
    r.err().unwrap_or(Written::All)
}

/// Writes one frame, or the rest of one a dispatcher began.
async fn write_next<W: AsyncWrite + Unpin>(
    out: &mut Out<W>,
    handle: &ConnHandle,
    next: Next,
) -> Result<(), Written> {
    match next {
        Next::Frame(frame) => {
            let message = frame.get(handle.encoding);
            handle.dequeued(&frame);
            bounded(on_socket(handle, out.send(message))).await?;
            frame.written();
        }
        Next::Rest(rest) => {
            out.rest = Some(rest);
            bounded(on_socket(handle, out.send_rest())).await?;
        }
    }
    Ok(())
}

/// Finishes a frame cut off half-way, sends what is still queued if
/// `send_queued`, then the close frame, bounded in time; then shuts the
/// socket's writing side.
async fn finish<W: AsyncWrite + Unpin>(
    out: &mut Out<W>,
    rx: &mut OutboundRx,
    encoding: Encoding,
    code: u16,
    send_queued: bool,
) {
    metrics::counter!("chorus_gateway_closes_total", "code" => close::label(code)).increment(1);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        // Held to the end: nothing a dispatcher writes may follow the close
        // frame. A frame a dispatcher began goes first: the writer's own
        // write was finished if it had the turn.
        if let Some(rest) = rx.take_turn().await {
            out.rest = Some(rest);
        }
        // Even for a slow consumer: a close frame in the middle of another
        // frame would be garbage to the client.
        out.send_rest().await?;
        if send_queued {
            while let Ok(m) = rx.try_recv() {
                out.send(m.get(encoding)).await?;
            }
        }
        out.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: close::reason(code).into(),
        })))
        .await?;
        out.io.shutdown().await
    })
    .await;
    rx.close();
}

#[cfg(test)]
mod tests;
