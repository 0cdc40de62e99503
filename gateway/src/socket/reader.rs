//! The reader task: a connection's commands, one at a time, in order.
//!
//! It decodes each client frame, applies the per-connection rate limits
//! (commands, and a separate bucket for `typing`), answers `ping` itself and
//! hands every other command to the [`Session`]; the result becomes an
//! `ack` or an `error` frame. A client that keeps hitting the limits is
//! closed with 4008.

use std::sync::Arc;
use std::time::Duration;

use chorus_shared::protocol::{AckFrame, AckTag};
use chorus_shared::ratelimit::{Bucket, Limit};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::inbound::{Frame, FrameReader, ReadError};
use super::{Session, SocketConfig};
use crate::close;
use crate::codec::{Encoding, decode_client};
use crate::error::GatewayError;
use crate::handle::ConnHandle;

/// How long a closed connection is still read for the client's close
/// frame (the one that answers ours) before the socket is dropped. A socket
/// closed with unread bytes (that answer, or frames the client sent
/// meanwhile) makes the kernel send a reset, which throws away whatever of
/// the backlog and the close frame has not left yet: over a slow link a
/// drained client would see 1006 instead of its `reconnect` and 1012. As
/// long as the writer's close bound, so a client that never answers costs
/// at most that much more.
const LINGER: Duration = Duration::from_secs(1);

/// `typing` frames per connection: 5 a second, 10 at once (contract). A
/// separate bucket, so typing indicators never starve real commands.
const TYPING: Limit = Limit::new(5.0, 10);
/// Rate-limited frames within [`ABUSE_WINDOW`] after which a connection is
/// closed with 4008 (contract): a client that ignores `rate_limited`
/// errors this persistently is broken or hostile.
const ABUSE_LIMIT: u32 = 100;
const ABUSE_WINDOW: Duration = Duration::from_secs(5);

/// The reading half of a connection and its command state.
///
/// Every idle connection carries this in its task, so its clock is the
/// shared config's (`started`) and its buckets take 8 bytes each.
pub(super) struct Reader<S> {
    handle: Arc<ConnHandle>,
    session: S,
    config: Arc<SocketConfig>,
    commands: Bucket,
    typing: Bucket,
    /// Rate-limited frames since `limited_since`.
    limited: u32,
    limited_since: Duration,
}

impl<S: Session> Reader<S> {
    pub(super) fn new(handle: Arc<ConnHandle>, session: S, config: Arc<SocketConfig>) -> Self {
        Reader {
            handle,
            session,
            commands: Bucket::FULL,
            typing: Bucket::FULL,
            limited: 0,
            limited_since: config.started.elapsed(),
            config,
        }
    }

    /// The time on the buckets' clock.
    fn now(&self) -> Duration {
        self.config.started.elapsed()
    }

    /// Reads and handles the client's frames until the connection closes.
    /// The idle timeout is the connections' clock's (`clock`), fed by the
    /// handle's liveness: no timer is armed per frame here.
    pub(super) async fn run(&mut self, stream: &mut FrameReader) {
        let handle = self.handle.clone();
        let closed = handle.closed();
        tokio::pin!(closed);
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut closed => return,
                r = stream.next() => r,
            };
            let frame = match next {
                None => return,
                Some(Err(e)) => {
                    if matches!(e, ReadError::TooBig) {
                        self.handle.close(close::TOO_BIG);
                    } else {
                        tracing::debug!(conn = handle.id, error = %e, "client frames unreadable");
                    }
                    return;
                }
                Some(Ok(f)) => f,
            };
            self.handle.liveness.saw_client();
            let bytes = match (frame, self.handle.encoding) {
                (Frame::Text(t), Encoding::Json) => t,
                (Frame::Binary(b), Encoding::Msgpack) => b,
                (Frame::Text(_) | Frame::Binary(_), enc) => {
                    self.count_command();
                    let want = if enc == Encoding::Json {
                        "JSON text"
                    } else {
                        "MessagePack binary"
                    };
                    self.reply(
                        None,
                        Err(GatewayError::BadRequest(format!(
                            "this connection speaks {want} frames"
                        ))),
                    );
                    continue;
                }
                (Frame::Close(code), _) => {
                    self.handle.client_closed(code);
                    return;
                }
                // Answered through the outbound queue, in order with what
                // is queued. A client that pings and does not read fills
                // its queue like any other slow consumer.
                (Frame::Ping(payload), _) => {
                    self.handle.push(Message::Pong(payload));
                    continue;
                }
                (Frame::Pong, _) => continue,
            };
            // A command runs to completion unless the connection closes.
            // Boxed: a command's future (API calls, a replay) is large, and
            // an idle connection should not carry its space.
            // While it runs, the client's frames (pongs included) are not
            // read, so its silence proves nothing: no idle close meanwhile.
            self.handle.liveness.command_started();
            // Each command runs in a `conn` span (connection id, user), so
            // its log lines say whose they are. Made per command, not held
            // for the connection's life: an idle connection carries none.
            let span = tracing::info_span!("conn", id = handle.id, user = %handle.user_id);
            tokio::select! {
                biased;
                _ = &mut closed => return,
                () = Box::pin(tracing::Instrument::instrument(self.frame(&bytes), span)) => {}
            }
            self.handle.liveness.saw_client();
        }
    }

    /// Ends the session (it leaves its rooms), waits for the writer to send
    /// what is left and the close frame, then reads until the client's
    /// close frame ([`linger`]).
    pub(super) async fn teardown(self, writer: JoinHandle<()>, stream: FrameReader) {
        self.handle.close(close::NORMAL);
        self.session.end(&self.handle).await;
        let _ = writer.await;
        let mut stream = stream;
        linger(&mut stream, self.handle.peer_closed()).await;
    }

    /// Takes a command token; false when limited.
    fn count_command(&mut self) -> bool {
        let now = self.now();
        let ok = self.commands.try_take(&self.config.commands, now).is_ok();
        if !ok {
            self.note_limited();
        }
        ok
    }

    fn note_limited(&mut self) {
        metrics::counter!("chorus_gateway_rate_limited_total").increment(1);
        let now = self.now();
        if now.saturating_sub(self.limited_since) > ABUSE_WINDOW {
            self.limited_since = now;
            self.limited = 0;
        }
        self.limited += 1;
        if self.limited > ABUSE_LIMIT {
            self.handle.close(close::RATE_LIMITED);
        }
    }

    fn reply(&self, reference: Option<u64>, result: Result<S::Reply, GatewayError>) {
        match (result, reference) {
            (Ok(data), Some(r)) => self.handle.push_value(&AckFrame {
                kind: AckTag::Ack,
                reference: r,
                data,
            }),
            (Ok(_), None) => return,
            (Err(e), r) => self.handle.push_value(&e.frame(r)),
        };
    }

    async fn frame(&mut self, bytes: &[u8]) {
        let raw = match decode_client(self.handle.encoding, bytes) {
            Ok(raw) => raw,
            Err(e) => {
                if self.count_command() {
                    self.reply(e.reference, Err(e.error));
                } else {
                    self.reply(e.reference, Err(GatewayError::RateLimited));
                }
                return;
            }
        };
        let r = raw.reference;
        metrics::counter!("chorus_gateway_frames_in_total", "type" => command_label(&raw.kind))
            .increment(1);
        match raw.kind.as_str() {
            "ping" => {
                let pong = match r {
                    Some(r) => json!({"type": "pong", "ref": r, "data": {}}),
                    None => json!({"type": "pong", "data": {}}),
                };
                self.handle.push_value(&pong);
            }
            "typing" => {
                // Off with the command limit (rate 0 turns every
                // per-connection limit off).
                let limit = if self.config.commands.is_unlimited() {
                    &Limit::UNLIMITED
                } else {
                    &TYPING
                };
                let now = self.now();
                if self.typing.try_take(limit, now).is_err() {
                    self.note_limited();
                    if r.is_some() {
                        self.reply(r, Err(GatewayError::RateLimited));
                    }
                    return;
                }
                let result = self.session.command(&self.handle, "typing", raw.data).await;
                self.reply(r, result);
            }
            kind => {
                if !self.count_command() {
                    self.reply(r, Err(GatewayError::RateLimited));
                    return;
                }
                let result = self.session.command(&self.handle, kind, raw.data).await;
                self.reply(r, result);
            }
        }
    }
}

/// The client command types of the contract, the metric labels of frames
/// in (anything else is `unknown`: clients never create labels).
pub const COMMANDS: &[&str] = &[
    "ping",
    "typing",
    "join-community",
    "leave-community",
    "send-message",
    "delete-message",
    "subscribe-notifications",
    "unknown",
];

fn command_label(kind: &str) -> &'static str {
    COMMANDS
        .iter()
        .find(|c| **c == kind)
        .copied()
        .unwrap_or("unknown")
}

/// Reads, and drops, what the client sends until its close frame, the end
/// of its stream, or [`LINGER`]; then the socket can close without a reset.
/// Nothing is read once the client's own close was (`peer_closed`): it
/// sends nothing after it, and waits for us to close. When the frames
/// could not be read on (a protocol error, a message too long), the rest
/// is read raw, to the client's end. True when it did not time out.
async fn linger(stream: &mut FrameReader, peer_closed: bool) -> bool {
    tokio::time::timeout(LINGER, async {
        if peer_closed {
            return;
        }
        loop {
            match stream.next().await {
                Some(Ok(Frame::Close(_))) => return,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        while matches!(stream.discard().await, Ok(n) if n > 0) {}
    })
    .await
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::upgrade::ReadHalf;
    use futures_util::SinkExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A server's reading side over real TCP (messages of at most 300
    /// bytes), and a client on the other end.
    async fn pair() -> (FrameReader, WebSocketStream<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let server = FrameReader::new(ReadHalf::new(Arc::new(server)), 300);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (server, client)
    }

    /// A [`pair`] whose client has sent a text of `len` bytes.
    async fn pair_after_text(len: usize) -> (FrameReader, WebSocketStream<TcpStream>) {
        let (server, mut client) = pair().await;
        client
            .send(Message::Text("x".repeat(len).into()))
            .await
            .expect("send");
        (server, client)
    }

    /// What the socket holds unread: none (`WouldBlock`), the end of the
    /// stream (`Ok(0)`), or bytes.
    fn unread(server: &FrameReader) -> std::io::Result<usize> {
        server.try_read(&mut [0; 64])
    }

    /// After our close, what the client sends, up to and including its
    /// close frame, is read: nothing is left unread for the socket's close
    /// to answer with a reset: the text before it too.
    #[tokio::test]
    async fn lingering_reads_up_to_the_clients_close() {
        let (mut server, mut client) = pair_after_text(200).await;
        client.send(Message::Close(None)).await.expect("close");
        assert!(
            linger(&mut server, false).await,
            "ended by the client's close"
        );
        let rest = unread(&server);
        assert!(
            matches!(&rest, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{rest:?}"
        );
    }

    /// When the frames cannot be read on (a message over the limit), the
    /// rest of the client's bytes are read raw, to its end.
    #[tokio::test]
    async fn after_a_protocol_error_the_rest_is_read_raw() {
        let (mut server, client) = pair_after_text(2_000).await;
        drop(client);
        assert!(
            matches!(server.next().await, Some(Err(ReadError::TooBig))),
            "over the limit"
        );
        assert!(
            linger(&mut server, false).await,
            "ended by the client's end"
        );
        assert!(matches!(unread(&server), Ok(0)), "nothing left but the end");
    }

    /// A client that never answers is given up on after the bound; one that
    /// closed first is not waited for at all.
    #[tokio::test(start_paused = true)]
    async fn lingering_gives_up_after_the_bound() {
        let (mut server, _client) = pair().await;
        let start = tokio::time::Instant::now();
        assert!(!linger(&mut server, false).await);
        assert_eq!(start.elapsed(), LINGER);
        assert!(linger(&mut server, true).await);
        assert_eq!(start.elapsed(), LINGER);
    }
}
