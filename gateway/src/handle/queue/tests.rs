//! The queue's rules: bounds, the overdraft, replays waiting for space,
//! and whose turn it is to write.

use std::time::Duration;

use chorus_shared::protocol::ServerEvent;

use super::*;
use crate::close;
use crate::codec::{Encoding, Frame, SharedFrame};
use tokio_tungstenite::tungstenite::Message;

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
    let writer = tokio::spawn(async move { matches!(rx.wait().await, Wake::Next(_)) });
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

/// A handle whose queue writes to a real loopback socket, and the client's
/// end of it.
async fn on_socket(queue: usize) -> (Arc<ConnHandle>, OutboundRx, Arc<TcpStream>, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    let server = Arc::new(server);
    let (h, rx) = handle(queue);
    h.attach(server.clone());
    (h, rx, server, client)
}

fn typing_of(name: String) -> Frame {
    Arc::new(SharedFrame::new(ServerEvent::UserTyping(
        chorus_shared::protocol::UserTyping {
            community_id: uuid::Uuid::nil(),
            user_id: "u".into(),
            name,
            is_typing: true,
        },
    )))
}

/// Reads one unmasked server frame: its opcode byte and its payload.
async fn read_frame(client: &mut TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.expect("a header");
    let len = match head[1] {
        126 => {
            let mut n = [0u8; 2];
            client.read_exact(&mut n).await.expect("length");
            usize::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            client.read_exact(&mut n).await.expect("length");
            usize::try_from(u64::from_be_bytes(n)).expect("fits")
        }
        n => usize::from(n),
    };
    let mut payload = vec![0; len];
    client.read_exact(&mut payload).await.expect("a payload");
    (head[0], payload)
}

/// The text of `frame` as the connection's encoding writes it.
fn text_of(frame: &Frame) -> Vec<u8> {
    match frame.get(Encoding::Json) {
        Message::Text(t) => t.as_bytes().to_vec(),
        other => panic!("a text frame, got {other:?}"),
    }
}

/// A push that finds the writer with nothing to do claims its turn, and
/// the claimer's flush writes the frame and
/// whatever was queued behind it meanwhile, in order, then lets the turn
/// go, so the next push may claim it again.
#[tokio::test]
async fn a_claimer_writes_what_is_queued_in_order_and_lets_the_turn_go() {
    let (h, mut rx, _server, mut client) = on_socket(8).await;
    let (first, second) = (event(1), event(2));
    assert_eq!(h.offer_event(&first, true), Some(Pushed::Claimed));
    assert!(h.push_event(&second), "queued behind the claim");
    h.flush();
    for frame in [&first, &second] {
        assert_eq!(read_frame(&mut client).await, (0x81, text_of(frame)));
    }
    assert!(rx.try_next().is_none(), "nothing left for the writer");
    assert_eq!(h.offer_event(&event(3), true), Some(Pushed::Claimed));
    h.flush();
    assert_eq!(read_frame(&mut client).await.1, text_of(&event(3)));
    // Without `claim`, the writer is woken and takes the turn.
    assert_eq!(h.offer_event(&event(4), false), Some(Pushed::Queued));
    assert!(matches!(rx.try_next(), Some(Next::Frame(_))));
    assert_eq!(
        h.offer_event(&event(5), true),
        Some(Pushed::Queued),
        "the writer's turn"
    );
}

/// What the socket does not take at once goes to the writer: first the
/// rest of the frame the claimer began, then what was queued after it;
/// the client reads both whole.
#[tokio::test]
async fn what_the_socket_does_not_take_is_the_writers_rest_first() {
    let (h, mut rx, server, mut client) = on_socket(8).await;
    // A small send buffer, and far more than the buffers hold while
    // nobody reads.
    socket2::SockRef::from(&*server)
        .set_send_buffer_size(4096)
        .expect("sndbuf");
    let big = typing_of("x".repeat(8 << 20));
    assert_eq!(h.offer_event(&big, true), Some(Pushed::Claimed));
    h.flush();
    let after = event(9);
    assert_eq!(
        h.offer_event(&after, true),
        Some(Pushed::Queued),
        "the writer's turn now"
    );
    let Some(Next::Rest(mut rest)) = rx.try_next() else {
        panic!("the rest comes first");
    };
    let Some(Next::Frame(next)) = rx.try_next() else {
        panic!("then the queued frame");
    };
    let reader = tokio::spawn(async move {
        let a = read_frame(&mut client).await;
        let b = read_frame(&mut client).await;
        (a, b)
    });
    let mut tail = FrameBytes::new(next.get(Encoding::Json));
    for bytes in [&mut *rest, &mut tail] {
        while !bytes.try_write(&server).expect("written") {
            server.writable().await.expect("writable");
        }
    }
    let (a, b) = reader.await.expect("reader");
    assert_eq!(a, (0x81, text_of(&big)));
    assert_eq!(b, (0x81, text_of(&after)));
}

/// The writer takes the turn (for a ping, its close) from a claim
/// not being written yet (its claimer may hold a room's lock for a while):
/// the claimer's flush then writes nothing, and the writer gets the claimed
/// frame, in order.
#[tokio::test]
async fn the_writer_takes_a_claim_back_until_it_is_written() {
    let (h, mut rx, _server, mut client) = on_socket(8).await;
    assert_eq!(h.offer_event(&event(1), true), Some(Pushed::Claimed));
    assert!(rx.take_turn().await.is_none(), "at once, with no rest");
    h.flush();
    assert_no_bytes(&mut client).await;
    let Some(Next::Frame(first)) = rx.try_next() else {
        panic!("the claimed frame is the writer's");
    };
    assert_eq!(text_of(&first), text_of(&event(1)));
    assert_eq!(h.offer_event(&event(2), true), Some(Pushed::Queued));
}

/// A claim covers at most `MAX_CLAIMED` frames, or the queue's capacity
/// if smaller: one that grows that long before its claimer writes it (a
/// long hold of the room's lock) goes to the writer, which is woken; the
/// flush then writes nothing.
#[tokio::test]
async fn a_claim_that_grows_too_long_before_its_flush_goes_to_the_writer() {
    for capacity in [1000, 8] {
        let (h, mut rx, _server, mut client) = on_socket(capacity).await;
        let bound = MAX_CLAIMED.min(capacity) as i64;
        assert_eq!(h.offer_event(&event(0), true), Some(Pushed::Claimed));
        for n in 1..bound {
            assert_eq!(h.offer_event(&event(n), true), Some(Pushed::Queued));
        }
        h.flush();
        assert_no_bytes(&mut client).await;
        for n in 0..bound {
            let Some(Next::Frame(f)) = rx.try_next() else {
                panic!("frame {n} is the writer's (capacity {capacity})");
            };
            assert_eq!(text_of(&f), text_of(&event(n)));
        }
        assert_eq!(h.close_code(), None, "capacity {capacity}");
    }
}

/// A claimer writes at most `MAX_CLAIMED` frames, then hands the rest of
/// the queue to the writer.
#[tokio::test]
async fn a_claimer_writes_at_most_its_bound_and_leaves_the_rest() {
    let (h, mut rx, _server, mut client) = on_socket(1000).await;
    assert_eq!(h.offer_event(&event(0), true), Some(Pushed::Claimed));
    // Queued while the claim is being written: past the claim's bound.
    let later: Vec<Frame> = (1..=MAX_CLAIMED as i64).map(event).collect();
    lock(&h.queue.state).frames.extend(later.iter().cloned());
    h.flush();
    for n in 0..MAX_CLAIMED as i64 {
        assert_eq!(read_frame(&mut client).await.1, text_of(&event(n)));
    }
    let Some(Next::Frame(f)) = rx.try_next() else {
        panic!("the last frame is the writer's");
    };
    assert_eq!(text_of(&f), text_of(&event(MAX_CLAIMED as i64)));
    assert!(rx.try_next().is_none());
}

/// Nothing has arrived on the client's end (the other side may still be
/// written to later).
async fn assert_no_bytes(client: &mut TcpStream) {
    tokio::task::yield_now().await;
    let mut buf = [0u8; 16];
    match client.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("nothing written, got {other:?}"),
    }
}

/// A claimer whose write fails (the socket's writing side is shut) closes
/// the connection, and leaves nothing for the writer to finish.
#[tokio::test]
async fn a_failed_claimed_write_closes_the_connection() {
    let (h, mut rx, server, _client) = on_socket(8).await;
    socket2::SockRef::from(&*server)
        .shutdown(std::net::Shutdown::Write)
        .expect("shut");
    assert_eq!(h.offer_event(&event(1), true), Some(Pushed::Claimed));
    h.flush();
    assert_eq!(h.close_code(), Some(close::NORMAL));
    assert!(rx.try_next().is_none(), "no rest, nothing queued");
}

/// A connection's own frames give their bytes back when a claimer takes
/// them off the queue, whether or not the socket took them whole: a
/// second frame of most of the byte bound still fits afterwards.
#[tokio::test]
async fn own_frames_a_claimer_takes_give_their_bytes_back() {
    let (h, _rx, server, _client) = on_socket(8).await;
    socket2::SockRef::from(&*server)
        .set_send_buffer_size(4096)
        .expect("sndbuf");
    let most = "x".repeat(super::super::MAX_OWN_QUEUED_BYTES * 3 / 4);
    assert_eq!(h.offer_event(&event(1), true), Some(Pushed::Claimed));
    assert!(h.push(Message::Text(most.clone().into())));
    h.flush();
    assert!(
        h.push(Message::Text(most.into())),
        "the first one's bytes are back"
    );
    assert_eq!(h.close_code(), None);
}
