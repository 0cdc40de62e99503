//! The socket layer: one upgraded WebSocket served by a reader task and a
//! writer task, tied together by the connection's [`ConnHandle`].
//!
//! The writer ([`writer`]) drains the bounded outbound queue, pings, and
//! closes with the code the handle records. While it has nothing to do, a
//! task that dispatches an event may write to the socket in its place,
//! with non-blocking writes only, leaving whatever the socket does not
//! take at once to the writer (`handle/queue.rs`); one of the two writes
//! at a time. The reader ([`reader`]) takes the client's frames off the
//! socket ([`inbound`]), decodes them,
//! enforces the per-connection rate limits and answers `ping`; every other
//! command goes up to a [`Session`], the layer that knows about rooms. This
//! layer knows nothing of rooms, the API or the backplane.

mod clock;
mod frame;
mod inbound;
mod reader;
pub mod upgrade;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use chorus_shared::ratelimit::Limit;
use tokio::task::JoinHandle;

use crate::close;
use crate::error::GatewayError;
use crate::handle::{ConnHandle, OutboundRx};

pub use self::clock::Clock;
use self::inbound::FrameReader;
pub use self::reader::COMMANDS;
use self::reader::Reader;
use self::upgrade::WebSocket;

/// Per-connection settings of the socket layer, shared by every connection.
#[derive(Debug)]
pub struct SocketConfig {
    /// Commands per connection per second and burst; unlimited turns
    /// every per-connection limit off, `typing`'s too.
    pub commands: Limit,
    /// Most time between two server WebSocket pings (they fall due on the
    /// clock's steps, so a little less).
    pub heartbeat: Duration,
    /// When the gateway started: the origin of the clock's steps and of
    /// the rate limits' buckets.
    pub started: tokio::time::Instant,
    /// How long a silent client is kept.
    pub idle_timeout: Duration,
    /// The sockets being served.
    pub open: Arc<OpenSockets>,
    /// Every connection's pings, idle timeout and expiry; its task is
    /// [`Clock::run`].
    pub clock: Clock,
}

impl SocketConfig {
    /// Settings starting now, with a clock for `heartbeat`.
    pub fn new(
        commands: Limit,
        heartbeat: Duration,
        idle_timeout: Duration,
        open: Arc<OpenSockets>,
    ) -> Self {
        SocketConfig {
            commands,
            heartbeat,
            started: tokio::time::Instant::now(),
            idle_timeout,
            open,
            clock: Clock::new(heartbeat),
        }
    }
}

/// The sockets being served, from the upgrade until the socket is dropped
/// (after the close frame and the [`reader`]'s lingering read): each holds
/// a file descriptor, so the connection cap counts these, and the drain
/// waits for them, not only for the connections the hub still knows
/// (a connection leaves the hub before its close frame is sent).
#[derive(Debug, Default)]
pub struct OpenSockets {
    n: std::sync::atomic::AtomicUsize,
    none_left: tokio::sync::Notify,
}

impl OpenSockets {
    /// How many sockets are being served.
    pub fn count(&self) -> usize {
        self.n.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when no socket is left.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.none_left.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Counts a socket until the guard is dropped.
    fn open(self: &Arc<Self>) -> OpenSocket {
        self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenSocket(self.clone())
    }
}

/// One counted socket: dropped when its connection's task ends.
struct OpenSocket(Arc<OpenSockets>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// What a connection's commands are run by: the layer above the socket.
pub trait Session: Send + 'static {
    /// A command's ack data, written into the `ack` frame as it is.
    type Reply: serde::Serialize + Send;

    /// Runs one client command (any type but `ping`, which the reader
    /// answers itself). Its result becomes the `ack` data or the `error`
    /// frame for the command's `ref`.
    fn command(
        &mut self,
        conn: &Arc<ConnHandle>,
        kind: &str,
        data: serde_json::Value,
    ) -> impl Future<Output = Result<Self::Reply, GatewayError>> + Send;

    /// The connection has ended: releases what the session holds (rooms,
    /// registrations).
    fn end(self, conn: &Arc<ConnHandle>) -> impl Future<Output = ()> + Send;
}

/// Serves one upgraded connection until it ends.
///
/// `open` runs once the writer is started: it registers the connection
/// and queues its first frames, returning the session, or `None` after
/// closing the handle when the connection is refused.
///
/// Not an `async fn`: its arguments would stay in the task for the
/// connection's whole life. Setup runs in a boxed future that owns them and
/// hands back only what the live connection needs, so an idle connection's
/// task holds the reader's waiting state and little else.
pub fn serve<S, F>(
    socket: WebSocket,
    handle: Arc<ConnHandle>,
    rx: OutboundRx,
    config: Arc<SocketConfig>,
    open: F,
) -> impl Future<Output = ()> + Send
where
    S: Session,
    F: Future<Output = Option<S>> + Send + 'static,
{
    let counted = config.open.open();
    let setup = Box::pin(setup(socket, handle, rx, config, open));
    async move {
        let _counted = counted;
        let Some((mut reader, mut stream, writer)) = setup.await else {
            return;
        };
        reader.run(&mut stream).await;
        Box::pin(reader.teardown(writer, stream)).await;
    }
}

/// Starts the writer and opens the session. `None` when the connection was
/// refused or closed during setup.
async fn setup<S, F>(
    socket: WebSocket,
    handle: Arc<ConnHandle>,
    rx: OutboundRx,
    config: Arc<SocketConfig>,
    open: F,
) -> Option<(Reader<S>, FrameReader, JoinHandle<()>)>
where
    S: Session,
    F: Future<Output = Option<S>> + Send,
{
    let WebSocket { read, write } = socket;
    handle.attach(write.clone());
    config.clock.enrol(&config, &handle);
    let writer = tokio::spawn(writer::write_loop(
        upgrade::WriteHalf(write),
        rx,
        handle.clone(),
    ));
    let Some(session) = open.await else {
        // Refused: the session closed the handle with its code; make sure.
        handle.close(close::INTERNAL);
        let _ = writer.await;
        return None;
    };
    Some((Reader::new(handle, session, config), read, writer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count follows the guards, and waiting for none left ends with
    /// the last one, not before.
    #[tokio::test]
    async fn open_sockets_are_counted_until_their_guards_go() {
        let open = Arc::new(OpenSockets::default());
        let (a, b) = (open.open(), open.open());
        assert_eq!(open.count(), 2);
        let waiting = tokio::spawn({
            let open = open.clone();
            async move { open.all_closed().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one socket is still open");
        drop(b);
        waiting.await.expect("resolves once none is left");
        assert_eq!(open.count(), 0);
    }
}
