//! One WebSocket connection: a reader task (this connection's commands, in
//! order) and a writer task (the only code that writes to the socket), tied
//! together by a [`ConnHandle`] whose close signal ends both.
//!
//! Everything sent to the client goes through a bounded queue. Live events
//! are pushed without waiting; if the queue is full the client is not
//! keeping up and is closed with 4009, so one slow reader never slows a
//! room down. A `join-community` replay instead waits for queue space,
//! which paces it by the client's own reading.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use chorus_shared::auth::AuthUser;
use chorus_shared::ids::parse_uuid;
use chorus_shared::protocol::{
    AckFrame, AckTag, DeleteMessage, JoinAck, JoinCommunity, LeaveCommunity, MessageData, Ready,
    Reconnect, SendMessage, ServerEvent, Typing, UserTyping,
};
use chorus_shared::ratelimit::TokenBucket;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Gateway;
use crate::codec::{Encoding, SharedFrame, decode_client};
use crate::config::{ABUSE_LIMIT, ABUSE_WINDOW, SLOW_CLOSE_TIMEOUT, TYPING_BURST, TYPING_RATE};
use crate::error::GatewayError;
use crate::hub::Frame;

/// Close codes of the contract.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const DRAINING: u16 = 1012;
    pub const RATE_LIMITED: u16 = 4008;
    pub const SLOW_CONSUMER: u16 = 4009;
}

/// One entry of a connection's outbound queue: a single pointer, so the
/// queue's first block (32 slots, allocated up front) stays small. A shared
/// event is encoded for this connection by its writer (at most once per
/// encoding per event, see `SharedFrame`); the rare connection-specific
/// frame (ready, acks, errors) arrives encoded.
pub type Outbound = Frame;
const _: () = assert!(size_of::<Outbound>() == size_of::<usize>());

/// `seen_ms` while the reader is running a command.
const BUSY: u64 = u64::MAX;

/// The hub's and the tasks' handle on a connection.
pub struct ConnHandle {
    pub id: u64,
    pub user_id: Arc<str>,
    pub name: Arc<str>,
    pub encoding: Encoding,
    tx: mpsc::Sender<Outbound>,
    close_code: AtomicU32,
    closing: Notify,
    /// When the connection opened; `seen_ms` counts from here.
    opened: tokio::time::Instant,
    /// When the token expires (leeway included): the writer closes with 1008.
    expires_at: tokio::time::Instant,
    /// When the client last sent a frame (pongs included), in milliseconds
    /// after `opened`, or [`BUSY`]. Written by the reader, read by the
    /// writer's timer.
    seen_ms: AtomicU64,
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
    /// Queues a connection-specific frame without waiting (see
    /// [`ConnHandle::push_event`]).
    pub fn push(&self, frame: Message) -> bool {
        self.send_now(Arc::new(SharedFrame::Encoded(frame)))
    }

    /// Queues a shared event without waiting. A full queue means a slow
    /// consumer: the connection is closed with 4009. False when not queued.
    pub fn push_event(&self, frame: &Frame) -> bool {
        self.send_now(frame.clone())
    }

    fn send_now(&self, out: Outbound) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.close(close::SLOW_CONSUMER) {
                    metrics::counter!("chorus_gateway_slow_consumer_closes_total").increment(1);
                    tracing::info!(conn = self.id, user = %self.user_id, "slow consumer: outbound queue full");
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a shared event, waiting for space (replays). False if the
    /// connection closed meanwhile.
    pub async fn push_event_wait(&self, frame: &Frame) -> bool {
        tokio::select! {
            r = self.tx.send(frame.clone()) => r.is_ok(),
            _ = self.closed() => false,
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
        won
    }

    fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::SeqCst) {
            0 => None,
            c => u16::try_from(c).ok(),
        }
    }

    /// Notes that the client just sent a frame (or that the reader is ready
    /// for its next one).
    fn saw_client(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(BUSY - 1);
        self.seen_ms.store(ms.min(BUSY - 1), Ordering::Relaxed);
    }

    /// Notes that the reader is running a command until the next
    /// [`ConnHandle::saw_client`].
    fn command_started(&self) {
        self.seen_ms.store(BUSY, Ordering::Relaxed);
    }

    /// When the client last sent a frame (or the connection opened); now
    /// while the reader is running a command.
    fn last_seen(&self) -> tokio::time::Instant {
        match self.seen_ms.load(Ordering::Relaxed) {
            BUSY => tokio::time::Instant::now(),
            ms => self.opened + Duration::from_millis(ms),
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
}

#[cfg(test)]
impl ConnHandle {
    /// A handle with its queue's receiver, for unit tests of routing.
    pub(crate) fn for_test(
        id: u64,
        user: &str,
        queue: usize,
    ) -> (Arc<ConnHandle>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue);
        let handle = Arc::new(ConnHandle {
            id,
            user_id: Arc::from(user),
            name: Arc::from(user),
            encoding: Encoding::Json,
            tx,
            close_code: AtomicU32::new(0),
            closing: Notify::new(),
            opened: tokio::time::Instant::now(),
            expires_at: tokio::time::Instant::now() + Duration::from_secs(3600),
            seen_ms: AtomicU64::new(0),
        });
        (handle, rx)
    }

    pub(crate) fn close_code_for_test(&self) -> Option<u16> {
        self.close_code()
    }
}

/// Who a connection speaks for, as verified at the upgrade. Boxed: the
/// reader needs it only for commands, not while the connection idles.
pub struct Identity {
    pub user: AuthUser,
    /// The client's own token, forwarded when the API acts on its behalf.
    pub token: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Serves one upgraded connection until it ends.
///
/// Not an `async fn`: its arguments would stay in the task for the
/// connection's whole life. Setup runs in a boxed future that owns them and
/// hands back only what the live connection needs, so an idle connection's
/// task holds the reader's waiting state and little else.
pub fn serve(
    gw: Gateway,
    socket: WebSocket,
    me: Box<Identity>,
    encoding: Encoding,
    origin_ok: bool,
) -> impl Future<Output = ()> + Send {
    let setup = Box::pin(setup(gw, socket, me, encoding, origin_ok));
    async move {
        let Some((mut reader, stream, writer)) = setup.await else {
            return;
        };
        reader.run(stream).await;
        Box::pin(teardown(reader, writer)).await;
    }
}

/// Starts the writer, registers the connection and queues `ready`. `None`
/// when the connection was refused or closed during setup.
async fn setup(
    gw: Gateway,
    socket: WebSocket,
    me: Box<Identity>,
    encoding: Encoding,
    origin_ok: bool,
) -> Option<(Reader, SplitStream<WebSocket>, JoinHandle<()>)> {
    let settings = gw.settings();
    let (tx, rx) = mpsc::channel(settings.outbound_queue);
    let handle = Arc::new(ConnHandle {
        id: gw.hub().next_conn_id(),
        user_id: Arc::from(me.user.id.as_str()),
        name: Arc::from(me.user.name.as_str()),
        encoding,
        tx,
        close_code: AtomicU32::new(0),
        closing: Notify::new(),
        opened: tokio::time::Instant::now(),
        expires_at: expiry_instant(me.user.exp + gw.verifier().leeway_s()),
        seen_ms: AtomicU64::new(0),
    });
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(sink, rx, handle.clone(), gw.clone()));

    if !origin_ok {
        handle.close(close::POLICY);
        let _ = writer.await;
        return None;
    }
    if let Err(e) = gw.hub().connect(&handle).await {
        tracing::warn!(error = %e, "could not subscribe the user channel");
        handle.close(close::INTERNAL);
        gw.hub().disconnect(&handle, &[]).await;
        let _ = writer.await;
        return None;
    }
    let ready = ServerEvent::Ready(Ready {
        user_id: me.user.id.clone(),
        connection_id: format!("{}-{}", gw.hub().gateway_id(), handle.id),
        gateway_id: gw.hub().gateway_id().to_owned(),
        heartbeat_ms: u64::try_from(settings.heartbeat.as_millis()).unwrap_or(u64::MAX),
    });
    handle.push(encoding.encode(&ready));

    let now = Instant::now();
    let typing_rate = if settings.command_rate > 0.0 {
        TYPING_RATE
    } else {
        0.0
    };
    let reader = Reader {
        gw: gw.clone(),
        handle,
        me,
        joined: HashSet::new(),
        commands: TokenBucket::new(settings.command_rate, settings.command_burst, now),
        typing: TokenBucket::new(typing_rate, TYPING_BURST, now),
        limited: 0,
        limited_since: now,
    };
    Some((reader, stream, writer))
}

/// Leaves every joined community, unregisters, and waits for the writer to
/// send what is left and the close frame.
async fn teardown(mut reader: Reader, writer: JoinHandle<()>) {
    reader.handle.close(close::NORMAL);
    let joined: Vec<Uuid> = reader.joined.drain().collect();
    reader.gw.hub().disconnect(&reader.handle, &joined).await;
    let _ = writer.await;
}

fn expiry_instant(exp_s: u64) -> tokio::time::Instant {
    let now_s = chorus_shared::auth::now_s();
    tokio::time::Instant::now() + Duration::from_secs(exp_s.saturating_sub(now_s))
}

/// Sends a `reconnect` frame and closes with 1012 (draining).
pub fn drain(handle: &ConnHandle, after_ms: u64) {
    let frame = handle.encoding.encode(&ServerEvent::Reconnect(Reconnect {
        reason: "draining".into(),
        after_ms,
    }));
    handle.push(frame);
    handle.close(close::DRAINING);
}

/// The writer task: the only code that writes to the socket.
///
/// Not an `async fn`, whose arguments would be stored twice in the task.
/// One timer serves the heartbeat ping, the token's expiry and the idle
/// timeout: it is set to whichever comes first, and on firing each is
/// checked against the clock (the client may have spoken since).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice in the task"
)]
fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    handle: Arc<ConnHandle>,
    gw: Gateway,
) -> impl Future<Output = ()> + Send {
    async move {
        // Durations are read from the settings when needed, not copied into
        // the task: every byte here is held by every idle connection.
        let mut next_ping = tokio::time::Instant::now() + gw.settings().heartbeat;
        let timer = tokio::time::sleep_until(
            next_ping
                .min(handle.expires_at)
                .min(handle.last_seen() + gw.settings().idle_timeout),
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
                    if now >= handle.expires_at {
                        break close_now(&handle, close::POLICY);
                    }
                    let idle_at = handle.last_seen() + gw.settings().idle_timeout;
                    if now >= idle_at {
                        break close_now(&handle, close::NORMAL);
                    }
                    if now >= next_ping {
                        // Like every write, a ping must not hold up a close
                        // when the client has stopped reading.
                        let sent = tokio::select! {
                            r = sink.send(Message::Ping(bytes::Bytes::new())) => r.is_ok(),
                            code = &mut closed => break code,
                        };
                        if !sent {
                            handle.close(close::NORMAL);
                            return;
                        }
                        next_ping = now + gw.settings().heartbeat;
                    }
                    timer.as_mut().reset(next_ping.min(handle.expires_at).min(idle_at));
                }
                frame = rx.recv() => {
                    let Some(frame) = frame else { break close::NORMAL };
                    // A stuck socket must not hold up a close.
                    let wrote = tokio::select! {
                        r = write_batch(&mut sink, &mut rx, handle.encoding, frame) => r,
                        code = &mut closed => break code,
                    };
                    if !wrote {
                        handle.close(close::NORMAL);
                        return;
                    }
                }
            }
        };
        Box::pin(finish(&mut sink, &mut rx, handle.encoding, code)).await;
    }
}

/// Requests a close with `code` and returns the code that won.
fn close_now(handle: &ConnHandle, code: u16) -> u16 {
    handle.close(code);
    handle.close_code().unwrap_or(code)
}

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Writes `first` and whatever else is queued, then flushes once.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Outbound>,
    encoding: Encoding,
    first: Outbound,
) -> bool {
    if sink.feed(first.get(encoding)).await.is_err() {
        return false;
    }
    for _ in 1..WRITE_BATCH {
        let Ok(next) = rx.try_recv() else { break };
        if sink.feed(next.get(encoding)).await.is_err() {
            return false;
        }
    }
    sink.flush().await.is_ok()
}

/// Sends what is still queued (not for a slow consumer), then the close
/// frame, each bounded in time; then the socket is dropped.
async fn finish(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Outbound>,
    encoding: Encoding,
    code: u16,
) {
    let reason = match code {
        close::POLICY => "policy violation",
        close::TOO_BIG => "message too big",
        close::DRAINING => "gateway draining, reconnect",
        close::RATE_LIMITED => "rate limited",
        close::SLOW_CONSUMER => "slow consumer",
        close::INTERNAL => "internal error",
        _ => "",
    };
    let _ = tokio::time::timeout(SLOW_CLOSE_TIMEOUT, async {
        if code != close::SLOW_CONSUMER {
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m.get(encoding)).await.is_err() {
                    return;
                }
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    })
    .await;
    rx.close();
}

struct Reader {
    gw: Gateway,
    handle: Arc<ConnHandle>,
    me: Box<Identity>,
    joined: HashSet<Uuid>,
    commands: TokenBucket,
    typing: TokenBucket,
    limited: u32,
    limited_since: Instant,
}

impl Reader {
    /// Reads and handles the client's frames until the connection closes.
    /// The idle timeout is the writer's (its one timer), fed by
    /// [`ConnHandle::saw_client`]: no timer is armed per frame here.
    async fn run(&mut self, mut stream: SplitStream<WebSocket>) {
        let handle = self.handle.clone();
        let closed = handle.closed();
        tokio::pin!(closed);
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut closed => return,
                r = stream.next() => r,
            };
            let msg = match next {
                None => return,
                Some(Err(e)) => {
                    if is_too_big(&e) {
                        self.handle.close(close::TOO_BIG);
                    }
                    return;
                }
                Some(Ok(m)) => m,
            };
            self.handle.saw_client();
            let bytes = match (msg, self.handle.encoding) {
                (Message::Text(t), Encoding::Json) => bytes::Bytes::from(t),
                (Message::Binary(b), Encoding::Msgpack) => b,
                (Message::Text(_) | Message::Binary(_), enc) => {
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
                (Message::Close(_), _) => return,
                (Message::Ping(_) | Message::Pong(_), _) => continue,
            };
            // A command runs to completion unless the connection closes.
            // Boxed: a command's future (API calls, a replay) is large, and
            // an idle connection should not carry its space.
            // While it runs, the client's frames (pongs included) are not
            // read, so its silence proves nothing: no idle close meanwhile.
            self.handle.command_started();
            tokio::select! {
                biased;
                _ = &mut closed => return,
                () = Box::pin(self.frame(&bytes)) => {}
            }
            self.handle.saw_client();
        }
    }

    /// Takes a command token; false when limited.
    fn count_command(&mut self) -> bool {
        let ok = self.commands.try_take(Instant::now()).is_ok();
        if !ok {
            self.note_limited();
        }
        ok
    }

    fn note_limited(&mut self) {
        metrics::counter!("chorus_gateway_rate_limited_total").increment(1);
        if self.limited_since.elapsed() > ABUSE_WINDOW {
            self.limited_since = Instant::now();
            self.limited = 0;
        }
        self.limited += 1;
        if self.limited > ABUSE_LIMIT {
            self.handle.close(close::RATE_LIMITED);
        }
    }

    fn reply(&self, reference: Option<u64>, result: Result<serde_json::Value, GatewayError>) {
        let frame = match (result, reference) {
            (Ok(data), Some(r)) => self.handle.encoding.encode(&AckFrame {
                kind: AckTag::Ack,
                reference: r,
                data,
            }),
            (Ok(_), None) => return,
            (Err(e), r) => self.handle.encoding.encode(&e.frame(r)),
        };
        self.handle.push(frame);
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
        match raw.kind.as_str() {
            "ping" => {
                let pong = match r {
                    Some(r) => json!({"type": "pong", "ref": r, "data": {}}),
                    None => json!({"type": "pong", "data": {}}),
                };
                self.handle.push(self.handle.encoding.encode(&pong));
            }
            "typing" => {
                if self.typing.try_take(Instant::now()).is_err() {
                    self.note_limited();
                    if r.is_some() {
                        self.reply(r, Err(GatewayError::RateLimited));
                    }
                    return;
                }
                let result = self.typing_cmd(raw.data).await;
                self.reply(r, result);
            }
            kind => {
                if !self.count_command() {
                    self.reply(r, Err(GatewayError::RateLimited));
                    return;
                }
                let result = match kind {
                    "join-community" => self.join(raw.data).await,
                    "leave-community" => self.leave(raw.data).await,
                    "send-message" => self.send(raw.data).await,
                    "delete-message" => self.delete(raw.data).await,
                    "subscribe-notifications" => self.subscribe_notifications().await,
                    other => Err(GatewayError::BadRequest(format!("unknown type {other:?}"))),
                };
                self.reply(r, result);
            }
        }
    }

    async fn join(&mut self, data: serde_json::Value) -> Result<serde_json::Value, GatewayError> {
        let req: JoinCommunity = parse(data)?;
        let community = community_id(&req.community_id)?;
        if req.last_seq.is_some_and(|s| s < 0) {
            return Err(GatewayError::BadRequest(
                "lastSeq must not be negative".into(),
            ));
        }
        let access = self
            .gw
            .hub()
            .api()
            .access(community, &self.me.user.id)
            .await?;
        if access.role.is_none() && !self.me.user.is_official() {
            return Err(GatewayError::Forbidden("not a member of this community"));
        }
        let joined = self
            .gw
            .hub()
            .join(community, access.head_seq, &self.handle, req.last_seq)
            .await?;
        self.joined.insert(community);
        let mut online = self
            .gw
            .hub()
            .backplane()
            .presence_online(community)
            .await
            .unwrap_or_default();
        if !online.contains(&self.me.user.id) {
            online.push(self.me.user.id.clone());
        }
        to_value(&JoinAck {
            community_id: community,
            head_seq: joined.head_seq,
            online,
            recovered: joined.recovered,
            missed: joined.missed,
        })
    }

    async fn leave(&mut self, data: serde_json::Value) -> Result<serde_json::Value, GatewayError> {
        let req: LeaveCommunity = parse(data)?;
        let community = community_id(&req.community_id)?;
        self.joined.remove(&community);
        self.gw.hub().leave(community, &self.handle).await;
        Ok(json!({}))
    }

    async fn send(&mut self, data: serde_json::Value) -> Result<serde_json::Value, GatewayError> {
        let req: SendMessage = parse(data)?;
        let message = self
            .gw
            .hub()
            .api()
            .send_message(&self.me.token, &req)
            .await?;
        to_value(&MessageData { message })
    }

    async fn delete(&mut self, data: serde_json::Value) -> Result<serde_json::Value, GatewayError> {
        let req: DeleteMessage = parse(data)?;
        let id = parse_uuid(&req.message_id).ok_or(GatewayError::NotFound("message"))?;
        self.gw
            .hub()
            .api()
            .delete_message(&self.me.token, id)
            .await?;
        Ok(json!({}))
    }

    async fn typing_cmd(
        &mut self,
        data: serde_json::Value,
    ) -> Result<serde_json::Value, GatewayError> {
        let req: Typing = parse(data)?;
        let community = community_id(&req.community_id)?;
        if !self.gw.hub().is_member(community, self.handle.id) {
            return Err(GatewayError::Forbidden("join the community first"));
        }
        self.gw
            .hub()
            .publish_ephemeral(
                community,
                ServerEvent::UserTyping(UserTyping {
                    community_id: community,
                    user_id: self.me.user.id.clone(),
                    name: self.me.user.name.clone(),
                    is_typing: req.is_typing,
                }),
            )
            .await;
        Ok(json!({}))
    }

    async fn subscribe_notifications(&mut self) -> Result<serde_json::Value, GatewayError> {
        self.gw.hub().subscribe_notifications(&self.handle);
        let unread = self.gw.hub().api().unread_count(&self.me.token).await?;
        Ok(json!({ "unreadCount": unread }))
    }
}

fn parse<T: DeserializeOwned>(data: serde_json::Value) -> Result<T, GatewayError> {
    serde_json::from_value(data).map_err(|e| GatewayError::BadRequest(format!("invalid data: {e}")))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, GatewayError> {
    serde_json::to_value(v).map_err(|e| GatewayError::Io(e.to_string()))
}

fn community_id(s: &str) -> Result<Uuid, GatewayError> {
    parse_uuid(s).ok_or(GatewayError::NotFound("community"))
}

/// tungstenite reports an over-limit message as a capacity error ("Space
/// limit exceeded: Message too long"); axum only exposes it boxed.
fn is_too_big(e: &axum::Error) -> bool {
    e.to_string().contains("too long")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_running_command_holds_off_the_idle_timeout() {
        let (h, _rx) = ConnHandle::for_test(1, "u", 4);
        let idle = Duration::from_secs(60);
        h.saw_client();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            h.last_seen() + idle < tokio::time::Instant::now(),
            "silent: idle"
        );

        // A command that outlasts the idle timeout (its client's pongs are
        // not read meanwhile) does not make the connection idle...
        h.command_started();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(
            h.last_seen() + idle > tokio::time::Instant::now(),
            "busy: not idle"
        );
        // ...and silence counts again from its end.
        h.saw_client();
        let done = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(h.last_seen(), done);
    }
}
