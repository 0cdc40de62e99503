//! The writer's bounds and its close, on in-memory pipes and real sockets.

use super::super::frame::testing::{client, close_frame};
use super::*;
use crate::codec::Encoding;

/// A write blocked on a client that stopped reading still ends at the
/// token's expiry (1008), not when the write gives up.
#[tokio::test(start_paused = true)]
async fn a_blocked_write_still_ends_at_the_tokens_expiry() {
    let expiry = tokio::time::Instant::now() + Duration::from_secs(3);
    let (handle, _rx) = ConnHandle::new(1, "u", "U", Encoding::Json, 4, expiry);
    let stuck = std::future::pending::<Written>();
    let step = guarded(stuck, &handle).await;
    assert!(matches!(step, Step::Expired));
    assert_eq!(tokio::time::Instant::now(), expiry);
}

/// A close requested elsewhere (a drain, a full queue) ends a blocked
/// write at once.
#[tokio::test(start_paused = true)]
async fn a_blocked_write_ends_when_the_connection_is_closed() {
    let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
    let (handle, _rx) = ConnHandle::new(1, "u", "U", Encoding::Json, 4, expiry);
    handle.close(close::DRAINING);
    let step = guarded(std::future::pending::<Written>(), &handle).await;
    assert!(matches!(step, Step::Closed(close::DRAINING)));
}

/// A close that cuts off a long frame (the client is not reading) still
/// sends the rest of it before anything else: the queued messages (not
/// to a slow consumer, nor after the client's own close) and the close
/// frame. Anything in between would be garbage to the client.
#[tokio::test]
async fn a_close_during_a_long_frame_finishes_it_first() {
    for (code, send_queued) in [
        (close::DRAINING, true),
        (close::SLOW_CONSUMER, false),
        (close::NORMAL, false),
    ] {
        // A pipe that holds 64 bytes: the frame fills it at once.
        let (server_io, client_io) = tokio::io::duplex(64);
        let mut out = Out::new(server_io);
        let long = "x".repeat(5_000);
        {
            let send = out.send(Message::Text(long.clone().into()));
            let mut send = std::pin::pin!(send);
            assert!(futures_util::poll!(send.as_mut()).is_pending());
        }
        assert!(out.rest.is_some(), "cut off half-way");

        let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
        let (handle, mut rx) = ConnHandle::new(1, "u", "U", Encoding::Json, 4, expiry);
        assert!(handle.push(Message::Text("after".into())));
        let reader = client(client_io);
        finish(&mut out, &mut rx, Encoding::Json, code, send_queued).await;
        let mut want = vec![Message::Text(long.into())];
        if send_queued {
            want.push(Message::Text("after".into()));
        }
        want.push(close_frame(code));
        assert_eq!(reader.await.expect("client"), want, "code {code}");
    }
}

/// What is queued goes before the close frame, except to a slow
/// consumer or after the client's own close frame (any code).
#[test]
fn the_queue_is_sent_before_a_close_unless_no_one_reads_it() {
    let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
    let (h, _rx) = ConnHandle::new(1, "u", "U", Encoding::Json, 4, expiry);
    assert!(sends_queued(close::DRAINING, &h));
    assert!(sends_queued(close::NORMAL, &h));
    assert!(!sends_queued(close::SLOW_CONSUMER, &h));
    h.client_closed(Some(4000));
    assert!(!sends_queued(close::NORMAL, &h));
    assert!(!sends_queued(close::DRAINING, &h));
}

/// A frame a dispatcher began, which the socket took only in part, is
/// finished by the running writer, woken for it, before the frame
/// queued behind it; the client reads both whole, then the close.
#[tokio::test]
async fn the_writer_finishes_what_a_dispatcher_began() {
    use chorus_shared::protocol::{ServerEvent, UserTyping};
    use futures_util::StreamExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use crate::codec::{Frame, SharedFrame};
    use crate::handle::Pushed;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    // A small send buffer, so the dispatcher's write is cut off (the
    // client's receive buffer is small too until it reads).
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .expect("sndbuf");
    let server = Arc::new(server);
    let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
    let (handle, rx) = ConnHandle::new(1, "u", "U", Encoding::Json, 8, expiry);
    handle.attach(server.clone());
    let writer = tokio::spawn(write_loop(
        super::super::upgrade::WriteHalf(server.clone()),
        rx,
        handle.clone(),
    ));
    tokio::task::yield_now().await;
    let typing = |name: String| -> Frame {
        Arc::new(SharedFrame::new(ServerEvent::UserTyping(UserTyping {
            community_id: uuid::Uuid::nil(),
            user_id: "u".into(),
            name,
            is_typing: true,
        })))
    };
    let (big, after) = (typing("x".repeat(1 << 20)), typing("after".into()));
    assert_eq!(handle.offer_event(&big, true), Some(Pushed::Claimed));
    assert!(handle.push_event(&after));
    handle.flush();

    let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    for want in [&big, &after] {
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("within the wait")
            .expect("open")
            .expect("a well-formed frame");
        assert!(got == want.get(Encoding::Json), "{} bytes read", got.len());
    }
    handle.close(close::DRAINING);
    let got = ws.next().await.expect("open").expect("a close frame");
    assert_eq!(got, close_frame(close::DRAINING));
    writer.await.expect("writer");
}

/// A socket operation that makes no progress counts as stalled after
/// the bound.
#[tokio::test(start_paused = true)]
async fn a_write_without_progress_is_a_stall() {
    let r = bounded(std::future::pending::<Result<(), ()>>()).await;
    assert!(matches!(r, Err(Written::Stalled)));
}

/// A writer with nothing to do is woken by a ping falling due and writes
/// it, then, woken again, a frame and the close: the clock's flag and a
/// close reach it through its queue alone.
#[tokio::test]
async fn a_parked_writer_sends_a_due_ping_then_a_frame_then_the_close() {
    use futures_util::StreamExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    let server = Arc::new(server);
    let expiry = tokio::time::Instant::now() + Duration::from_secs(3600);
    let (handle, rx) = ConnHandle::new(1, "u", "U", Encoding::Json, 8, expiry);
    handle.attach(server.clone());
    let writer = tokio::spawn(write_loop(
        super::super::upgrade::WriteHalf(server.clone()),
        rx,
        handle.clone(),
    ));
    let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let mut read = async || {
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("within the wait")
            .expect("open")
            .expect("a well-formed frame")
    };
    // Parked: it has run and found nothing to do.
    tokio::task::yield_now().await;
    handle.ping_due();
    assert_eq!(read().await, Message::Ping(Bytes::new()));
    assert!(handle.push(Message::Text("after".into())));
    assert_eq!(read().await, Message::Text("after".into()));
    handle.close(close::DRAINING);
    assert_eq!(read().await, close_frame(close::DRAINING));
    writer.await.expect("writer");
}
