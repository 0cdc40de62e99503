//! The writer task: the only code that writes to a connection's socket.
//!
//! It sends what the outbound queue holds, batching whatever is queued into
//! one flush; one timer serves the heartbeat ping, the token's expiry and
//! the idle timeout. When the handle's close signal fires it sends what is
//! still queued (not to a slow consumer), then the close frame, each
//! bounded in time, and drops the socket.
//!
//! A message longer than [`FRAGMENT_BYTES`] goes out as several frames
//! (RFC 6455 §5.4; the client still reads one message), because
//! tungstenite keeps its write buffer at the size of the largest frame it
//! has written, for the connection's whole life.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::SocketConfig;
use super::upgrade::WebSocket;
use crate::close;
use crate::codec::Encoding;
use crate::handle::{ConnHandle, Outbound, OutboundRx};

/// Most queued frames written before one flush: enough to amortize the
/// flush under load, small enough that a close is seen between batches.
const WRITE_BATCH: usize = 64;

/// How long one socket write may make no progress before the client counts
/// as a slow consumer (4009). Longer than the queue's one-second rule on
/// purpose: with any traffic the queue fills and closes the connection
/// first; this bounds the quiet case (a client that stopped reading in a
/// quiet room) without mistaking a moment of CPU starvation, when the
/// writer is not polled, for a stalled client.
const WRITE_STALL: Duration = Duration::from_secs(10);

/// Largest frame payload the writer sends; a longer message goes as
/// several frames. tungstenite's write buffer grows to the largest frame
/// written and never shrinks, so one join ack listing 500 online users
/// (~20 KiB) would pin that much to an idle connection for its life
/// (measured: 4.5 KiB more RSS per connection in rooms of 500). Deliveries
/// (a 100-character message is ~300 B) and acks in small rooms go whole;
/// a long message costs one more write per KiB, paid once per send.
const FRAGMENT_BYTES: usize = 1024;

/// How long the final frames and the close frame may take before the TCP
/// connection is dropped (contract: a slow consumer's 4009 is tried for
/// 1 s).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The writer task.
///
/// Not an `async fn`, whose arguments would be stored twice in the task.
/// The timer is set to whichever deadline comes first, and on firing each
/// is checked against the clock (the client may have spoken since).
/// Durations are read from the shared config when needed, not copied into
/// the task: every byte here is held by every idle connection.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice in the task"
)]
pub(super) fn write_loop(
    sink: SplitSink<WebSocket, Message>,
    mut rx: OutboundRx,
    handle: Arc<ConnHandle>,
    config: Arc<SocketConfig>,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut out = Out { sink, rest: None };
        let mut next_ping = on_ping_grid(
            tokio::time::Instant::now() + first_ping(config.heartbeat, handle.id),
            &config,
        );
        let timer = tokio::time::sleep_until(
            next_ping
                .min(handle.liveness.expires_at())
                .min(handle.liveness.last_seen() + config.idle_timeout),
        );
        // Registered once, not per frame: the close signal is watched by one
        // long-lived future.
        let closed = handle.closed();
        tokio::pin!(timer, closed);
        let code = loop {
            tokio::select! {
                biased;
                code = &mut closed => break code,
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if now >= handle.liveness.expires_at() {
                        break close_now(&handle, close::POLICY);
                    }
                    let idle_at = handle.liveness.last_seen() + config.idle_timeout;
                    if now >= idle_at {
                        break close_now(&handle, close::NORMAL);
                    }
                    if now >= next_ping {
                        // Like every write, a ping must not hold up a close
                        // when the client has stopped reading.
                        let ping = async {
                            bounded(out.sink.send(Message::Ping(bytes::Bytes::new())))
                                .await
                                .err()
                                .unwrap_or(Written::All)
                        };
                        // Boxed: an idle connection's task should not carry
                        // the space of a write in progress.
                        match Box::pin(guarded(ping, &handle, closed.as_mut())).await.then(&handle) {
                            Then::Continue => {}
                            Then::Close(code) => break code,
                            Then::Drop => return,
                        }
                        next_ping = on_ping_grid(now + config.heartbeat, &config);
                    }
                    timer.as_mut().reset(next_ping.min(handle.liveness.expires_at()).min(idle_at));
                }
                frame = rx.recv() => {
                    let Some(frame) = frame else { break close::NORMAL };
                    let batch = write_batch(&mut out, &mut rx, &handle, frame);
                    match Box::pin(guarded(batch, &handle, closed.as_mut())).await.then(&handle) {
                        Then::Continue => {}
                        Then::Close(code) => break code,
                        Then::Drop => return,
                    }
                }
            }
        };
        Box::pin(finish(&mut out, &mut rx, handle.encoding, code)).await;
    }
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
async fn guarded<W, C>(write: W, handle: &ConnHandle, closed: Pin<&mut C>) -> Step
where
    W: Future<Output = Written>,
    C: Future<Output = u16>,
{
    tokio::select! {
        biased;
        w = write => match w {
            Written::All => Step::Done,
            Written::Stalled => Step::Stalled,
            Written::Failed => Step::Failed,
        },
        code = closed => Step::Closed(code),
        () = tokio::time::sleep_until(handle.liveness.expires_at()) => Step::Expired,
    }
}

/// When a connection's first ping is due: somewhere between half the
/// heartbeat and all of it, then every heartbeat (each moved back onto the
/// ping grid, [`on_ping_grid`], so up to one step sooner). Connections made
/// together (a load test, a reconnect storm: 20,000 in 3 s) would
/// otherwise be pinged together at every heartbeat, each wave a burst of
/// writes and pong reads on top of live traffic (small-room load runs had
/// their worst seconds, 9-12 ms at p99, when the waves fell). Spread from the
/// connection id by Fibonacci hashing, so consecutive ids land evenly
/// apart without a random source; no ping comes later than `heartbeatMs`.
fn first_ping(heartbeat: Duration, conn_id: u64) -> Duration {
    let spread = conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    let fraction = spread as f64 / (1_u64 << 53) as f64;
    heartbeat / 2 + heartbeat.mul_f64(fraction / 2.0)
}

/// Coarsest step of the grid pings fall due on. A ping's timer firing
/// wakes the runtime from its sleep; pings due in the same step fire in one
/// timer-wheel turn and are written one after the other, in one wake-up,
/// instead of one wake-up each (at 10,000 connections, 400 a second). A
/// step's pings go out together: at 100,000 connections on one gateway,
/// about 400, a few milliseconds of writes.
const PING_GRID: Duration = Duration::from_millis(100);

/// `at`, moved back to the ping grid: the last multiple of the step since
/// the gateway started. Back, not forward, so that no ping comes later
/// than `heartbeatMs` after the one before; the step is at most an eighth
/// of the heartbeat (tests run with heartbeats of milliseconds), so a ping
/// is never due before the one it follows.
fn on_ping_grid(at: tokio::time::Instant, config: &SocketConfig) -> tokio::time::Instant {
    let step = PING_GRID.min(config.heartbeat / 8).as_nanos().max(1);
    let since = at.saturating_duration_since(config.started).as_nanos();
    let back = u64::try_from(since % step).unwrap_or(0);
    at - Duration::from_nanos(back)
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

/// Writes `first` and whatever else is queued, then flushes once. Each
/// frame is written straight to the socket (no write buffer), so each
/// write finishing is progress.
async fn write_batch<S: Sink<Message, Error = WsError> + Unpin>(
    out: &mut Out<S>,
    rx: &mut OutboundRx,
    handle: &ConnHandle,
    first: Outbound,
) -> Written {
    let encoding = handle.encoding;
    let r = async {
        let message = first.get(encoding);
        handle.dequeued(&first);
        bounded(on_socket(handle, out.feed(message))).await?;
        first.written();
        for _ in 1..WRITE_BATCH {
            let Ok(next) = rx.try_recv() else { break };
            let message = next.get(encoding);
            handle.dequeued(&next);
            bounded(on_socket(handle, out.feed(message))).await?;
            next.written();
        }
        bounded(on_socket(handle, out.sink.flush())).await
    }
    .await;
    r.err().unwrap_or(Written::All)
}

/// The socket's sink, and what is left of a message being sent in parts.
struct Out<S> {
    sink: S,
    /// The parts of a long message not yet handed to the sink. A write cut
    /// off between two parts (by a close or the token's expiry) leaves them
    /// here, and [`finish`] sends them before anything else: no other data
    /// frame may come between the parts of one message (RFC 6455 §5.4).
    /// Boxed: every idle connection carries this field.
    rest: Option<Box<Fragments>>,
}

impl<S: Sink<Message, Error = WsError> + Unpin> Out<S> {
    /// Writes one message, in frames of at most [`FRAGMENT_BYTES`].
    async fn feed(&mut self, message: Message) -> Result<(), WsError> {
        let (data, payload) = match message {
            Message::Text(t) if t.len() > FRAGMENT_BYTES => (Data::Text, Bytes::from(t)),
            Message::Binary(b) if b.len() > FRAGMENT_BYTES => (Data::Binary, b),
            whole => return self.sink.feed(whole).await,
        };
        self.rest = Some(Box::new(Fragments::new(data, payload)));
        self.feed_rest().await
    }

    /// Hands the sink the rest of a message being sent in parts. A part is
    /// taken only once the sink is ready for it and handed over at once, so
    /// a call cut off at any point loses none.
    async fn feed_rest(&mut self) -> Result<(), WsError> {
        while let Some(rest) = self.rest.as_mut() {
            std::future::poll_fn(|cx| self.sink.poll_ready_unpin(cx)).await?;
            let Some(frame) = rest.next() else {
                self.rest = None;
                continue;
            };
            if frame.header().is_final {
                self.rest = None;
            }
            self.sink.start_send_unpin(Message::Frame(frame))?;
        }
        Ok(())
    }
}

/// A long message as a first frame of its type, then continuation frames,
/// the last one final; each payload at most [`FRAGMENT_BYTES`] (slices of
/// the message, not copies). A text message may be cut inside a
/// character: only the whole message must be UTF-8.
#[derive(Debug)]
struct Fragments {
    opcode: OpCode,
    payload: Bytes,
}

impl Fragments {
    fn new(data: Data, payload: Bytes) -> Self {
        Fragments {
            opcode: OpCode::Data(data),
            payload,
        }
    }
}

impl Iterator for Fragments {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.payload.is_empty() {
            return None;
        }
        let chunk = self
            .payload
            .split_to(self.payload.len().min(FRAGMENT_BYTES));
        let frame = Frame::message(chunk, self.opcode, self.payload.is_empty());
        self.opcode = OpCode::Data(Data::Continue);
        Some(frame)
    }
}

/// Finishes a message cut off in parts, sends what is still queued (not
/// for a slow consumer), then the close frame, bounded in time; then the
/// socket is dropped. A slow consumer's close may come between two parts
/// of a message: control frames may.
async fn finish<S: Sink<Message, Error = WsError> + Unpin>(
    out: &mut Out<S>,
    rx: &mut OutboundRx,
    encoding: Encoding,
    code: u16,
) {
    metrics::counter!("chorus_gateway_closes_total", "code" => close::label(code)).increment(1);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if code != close::SLOW_CONSUMER {
            if out.feed_rest().await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if out.feed(m.get(encoding)).await.is_err() {
                    return;
                }
            }
        }
        let _ = out
            .sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: close::reason(code).into(),
            })))
            .await;
    })
    .await;
    rx.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoding;

    #[test]
    fn first_pings_are_spread_over_the_second_half_of_the_heartbeat() {
        let heartbeat = Duration::from_secs(25);
        let mut tenths = [0_usize; 10];
        for id in 1..=1_000_u64 {
            let d = first_ping(heartbeat, id);
            assert!(d >= heartbeat / 2 && d <= heartbeat, "{d:?} for {id}");
            let tenth = ((d - heartbeat / 2).as_secs_f64() / 1.25) as usize;
            tenths[tenth.min(9)] += 1;
        }
        // Consecutive connections spread evenly: each tenth of the window
        // holds a tenth of them, give or take a few.
        assert!(tenths.iter().all(|n| (90..=110).contains(n)), "{tenths:?}");
    }

    #[test]
    fn pings_fall_due_on_the_grid_never_later() {
        let config = |heartbeat| SocketConfig {
            command_rate: 0.0,
            command_burst: 0,
            heartbeat,
            started: tokio::time::Instant::now(),
            idle_timeout: Duration::from_secs(60),
        };
        for (heartbeat, step) in [
            (Duration::from_secs(25), PING_GRID),
            (Duration::from_millis(80), Duration::from_millis(10)),
        ] {
            let c = config(heartbeat);
            let mut seen = std::collections::HashSet::new();
            for micros in (0..3_000_000_u64).step_by(7_919) {
                let at = c.started + Duration::from_micros(micros);
                let due = on_ping_grid(at, &c);
                assert!(due <= at && at - due < step, "{at:?} → {due:?}");
                assert_eq!((due - c.started).as_nanos() % step.as_nanos(), 0);
                seen.insert(due);
            }
            // Deadlines in one step share one instant: one timer-wheel turn.
            assert_eq!(seen.len() as u128, 3_000_000 / step.as_micros());
        }
    }

    /// A write blocked on a client that stopped reading still ends at the
    /// token's expiry (1008), not when the write gives up.
    #[tokio::test(start_paused = true)]
    async fn a_blocked_write_still_ends_at_the_tokens_expiry() {
        let expiry = tokio::time::Instant::now() + Duration::from_secs(3);
        let (handle, _rx) = ConnHandle::new(1, "u", "U", Encoding::Json, 4, expiry);
        let closed = handle.closed();
        tokio::pin!(closed);
        let stuck = std::future::pending::<Written>();
        let step = guarded(stuck, &handle, closed.as_mut()).await;
        assert!(matches!(step, Step::Expired));
        assert_eq!(tokio::time::Instant::now(), expiry);
    }

    /// A close requested elsewhere (a drain, a full queue) ends a blocked
    /// write at once.
    #[tokio::test(start_paused = true)]
    async fn a_blocked_write_ends_when_the_connection_is_closed() {
        let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
        let (handle, _rx) = ConnHandle::new(1, "u", "U", Encoding::Json, 4, expiry);
        let closed = handle.closed();
        tokio::pin!(closed);
        handle.close(close::DRAINING);
        let step = guarded(std::future::pending::<Written>(), &handle, closed.as_mut()).await;
        assert!(matches!(step, Step::Closed(close::DRAINING)));
    }

    /// A long message is cut into a typed first frame and continuation
    /// frames, the last one final, that put it back together byte for byte.
    #[test]
    fn a_long_message_goes_as_frames_of_at_most_the_bound() {
        let text: String = "héllo wörld ".repeat(300);
        let frames: Vec<Frame> = Fragments::new(Data::Text, Bytes::from(text.clone())).collect();
        assert_eq!(frames.len(), text.len().div_ceil(FRAGMENT_BYTES));
        let mut joined = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let h = f.header();
            let want = if i == 0 { Data::Text } else { Data::Continue };
            assert_eq!(h.opcode, OpCode::Data(want), "frame {i}");
            assert_eq!(h.is_final, i + 1 == frames.len(), "frame {i}");
            assert!(f.payload().len() <= FRAGMENT_BYTES);
            joined.extend_from_slice(f.payload());
        }
        assert_eq!(joined, text.as_bytes());
    }

    /// A close that cuts off a long message between two parts (the client
    /// is not reading) still sends the rest of it before the queued
    /// messages and the close frame: a new message in between would be a
    /// protocol error to the client.
    #[tokio::test]
    async fn a_close_during_a_long_message_finishes_it_first() {
        use futures_util::StreamExt;
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

        // A pipe that holds 64 bytes: the first part fills it.
        let (server_io, client_io) = tokio::io::duplex(64);
        let config = WebSocketConfig::default().write_buffer_size(0);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, Some(config)).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let (sink, _stream) = server.split();
        let mut out = Out { sink, rest: None };
        let long = "x".repeat(5 * FRAGMENT_BYTES);
        {
            let feed = out.feed(Message::Text(long.clone().into()));
            let mut feed = std::pin::pin!(feed);
            assert!(futures_util::poll!(feed.as_mut()).is_pending());
        }
        assert!(out.rest.is_some(), "cut off between two parts");

        let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
        let (handle, mut rx) = ConnHandle::new(1, "u", "U", Encoding::Json, 4, expiry);
        assert!(handle.push(Message::Text("after".into())));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = client.next().await {
                let m = m.map_err(|e| e.to_string());
                let end = !matches!(m, Ok(Message::Text(_)));
                got.push(m);
                if end {
                    break;
                }
            }
            got
        });
        finish(&mut out, &mut rx, Encoding::Json, close::DRAINING).await;
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], Ok(Message::Text(long.into())));
        assert_eq!(got[1], Ok(Message::Text("after".into())));
        assert!(
            matches!(&got[2], Ok(Message::Close(Some(f))) if u16::from(f.code) == close::DRAINING),
            "{:?}",
            got[2]
        );
    }

    /// A socket operation that makes no progress counts as stalled after
    /// the bound.
    #[tokio::test(start_paused = true)]
    async fn a_write_without_progress_is_a_stall() {
        let r = bounded(std::future::pending::<Result<(), ()>>()).await;
        assert!(matches!(r, Err(Written::Stalled)));
    }
}
