//! The frame reader: the parser alone on bytes fed in any cuts, and the
//! reader on real loopback sockets. Kept whole past 450 lines: every test
//! builds its input with the same client-frame encoder at the top.

use std::sync::Arc;

use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A client frame as a browser sends it: masked, with the shortest length
/// form.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw(u8::from(fin) << 7 | opcode, true, payload)
}

/// A frame with the first byte given and masking chosen.
fn raw(b0: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![b0];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Everything the parser makes of `bytes` fed whole: the frames, then the
/// error that stopped it, if any.
fn parse_all(max: usize, bytes: &[u8]) -> (Vec<Frame>, Option<ReadError>) {
    let mut p = Parser::new(max);
    p.feed(bytes);
    let mut frames = Vec::new();
    loop {
        match p.parse() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

fn text(s: &str) -> Frame {
    Frame::Text(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn messages_in_every_length_form() {
    for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
        let body = "é".repeat(len / 2) + &"x".repeat(len % 2);
        let mut bytes = frame(true, TEXT, body.as_bytes());
        bytes.extend(frame(true, BINARY, &vec![9; len]));
        let (frames, err) = parse_all(70_000, &bytes);
        assert!(err.is_none(), "{len}: {err:?}");
        assert_eq!(
            frames,
            vec![text(&body), Frame::Binary(Bytes::from(vec![9; len]))],
            "{len}"
        );
    }
}

/// A fragmented text, a multi-byte character cut between fragments and a
/// ping between them: the ping first, then the whole text.
#[test]
fn fragments_are_joined_and_control_frames_come_between() {
    let word = "héllo wörld".as_bytes();
    let mut bytes = frame(false, TEXT, &word[..2]);
    bytes.extend(frame(true, PING, b"p"));
    bytes.extend(frame(false, CONTINUATION, &word[2..7]));
    bytes.extend(frame(true, PONG, b""));
    bytes.extend(frame(true, CONTINUATION, &word[7..]));
    bytes.extend(frame(true, CLOSE, &[0x03, 0xe8, b'o', b'k']));
    let (frames, err) = parse_all(1024, &bytes);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        frames,
        vec![
            Frame::Ping(Bytes::from_static(b"p")),
            Frame::Pong,
            text("héllo wörld"),
            Frame::Close(Some(1000)),
        ]
    );
    let (frames, _) = parse_all(1024, &frame(true, CLOSE, b""));
    assert_eq!(frames, vec![Frame::Close(None)]);
    for code in [1001u16, 1011, 1014, 3000, 4999] {
        let (frames, err) = parse_all(1024, &frame(true, CLOSE, &code.to_be_bytes()));
        assert!(err.is_none(), "{code}: {err:?}");
        assert_eq!(frames, vec![Frame::Close(Some(code))]);
    }
}

/// What RFC 6455 forbids a client: each is refused, after the frames
/// before it.
#[test]
fn protocol_errors_are_refused() {
    let ok = frame(true, TEXT, b"fine");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not masked", raw(0x81, false, b"hi")),
        ("a reserved bit", raw(0xc1, true, b"hi")),
        ("opcode 3", frame(true, 0x3, b"hi")),
        ("opcode 11", frame(true, 0xb, b"hi")),
        ("a continuation first", frame(true, CONTINUATION, b"hi")),
        ("a fragmented ping", frame(false, PING, b"hi")),
        ("a ping of 126 bytes", frame(true, PING, &[0; 126])),
        ("a close of one byte", frame(true, CLOSE, &[3])),
        (
            "close code 1005",
            frame(true, CLOSE, &1005u16.to_be_bytes()),
        ),
        (
            "close code 1006",
            frame(true, CLOSE, &1006u16.to_be_bytes()),
        ),
        ("close code 999", frame(true, CLOSE, &999u16.to_be_bytes())),
        (
            "close code 2000",
            frame(true, CLOSE, &2000u16.to_be_bytes()),
        ),
        (
            "close code 5000",
            frame(true, CLOSE, &5000u16.to_be_bytes()),
        ),
        (
            "a new message inside a fragmented one",
            [frame(false, TEXT, b"a"), frame(true, BINARY, b"b")].concat(),
        ),
        (
            // Within the limit alone, not with what came before it: the
            // frame is out of place, not too long.
            "a new message over what the fragmented one has left",
            [
                frame(false, TEXT, &[b'a'; 600]),
                frame(true, TEXT, &[b'b'; 600]),
            ]
            .concat(),
        ),
    ];
    for (what, bad) in cases {
        let (frames, err) = parse_all(1024, &[ok.clone(), bad].concat());
        assert_eq!(frames, vec![text("fine")], "{what}");
        assert!(
            matches!(err, Some(ReadError::Protocol(_))),
            "{what}: {err:?}"
        );
    }
    for (what, bad) in [
        ("text", frame(true, TEXT, &[0xc3, 0x28])),
        (
            "fragments",
            [
                frame(false, TEXT, &[b'a', 0xe2]),
                frame(true, CONTINUATION, &[0x28, 0xa1]),
            ]
            .concat(),
        ),
        ("a close reason", frame(true, CLOSE, &[0x03, 0xe8, 0xff])),
    ] {
        let (_, err) = parse_all(1024, &bad);
        assert!(matches!(err, Some(ReadError::Utf8)), "{what}: {err:?}");
    }
}

/// The limit holds for a whole message, however it is cut, and is
/// enforced from the header alone: no payload need have been read.
#[test]
fn messages_over_the_limit_are_refused_from_their_header() {
    let (frames, err) = parse_all(100, &frame(true, BINARY, &[1; 100]));
    assert!(err.is_none() && frames.len() == 1, "exactly the limit");
    let header_only = &frame(true, BINARY, &[1; 101])[..6];
    assert!(matches!(
        parse_all(100, header_only).1,
        Some(ReadError::TooBig)
    ));
    let huge = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
    assert!(matches!(parse_all(100, &huge).1, Some(ReadError::TooBig)));
    let fragmented = [
        frame(false, TEXT, &[b'a'; 60]),
        frame(false, CONTINUATION, &[b'a'; 40]),
        frame(true, CONTINUATION, &[b'a'; 1])[..6].to_vec(),
    ]
    .concat();
    assert!(matches!(
        parse_all(100, &fragmented).1,
        Some(ReadError::TooBig)
    ));
}

/// The parser keeps no buffer once everything fed was taken as frames,
/// and only the unparsed rest while a frame is incomplete.
#[test]
fn no_buffer_is_kept_between_frames() {
    let bytes = [frame(true, TEXT, b"one"), frame(true, TEXT, b"two")].concat();
    let mut p = Parser::new(1024);
    p.feed(&bytes[..bytes.len() - 2]);
    assert_eq!(p.parse().ok().flatten(), Some(text("one")));
    assert_eq!(p.parse().ok().flatten(), None, "the second is incomplete");
    assert!(
        p.buf.len() - p.pos < 9,
        "only the second frame's start is kept"
    );
    p.feed(&bytes[bytes.len() - 2..]);
    assert_eq!(p.parse().ok().flatten(), Some(text("two")));
    assert_eq!(p.buf.capacity(), 0, "nothing kept");
    assert_eq!(p.pos, 0);
}

/// Reads as the socket's reader does (each read takes at most what
/// `prepare_read` allows): a long fragmented message and the start of the
/// next frame keep the buffer within the frame being read and one chunk,
/// and the message within the limit, whatever the reads.
#[test]
fn reads_keep_the_buffers_within_the_limit() {
    let max = 70_000;
    let bytes = [
        frame(false, BINARY, &[1; 40_000]),
        frame(true, PONG, b""),
        frame(true, CONTINUATION, &[2; 29_999]),
        frame(true, TEXT, b"next"),
    ]
    .concat();
    for tail in [1, 3, 9] {
        let mut p = Parser::new(max);
        let mut got = Vec::new();
        let mut at = 0;
        while at < bytes.len() - tail {
            let want = p.prepare_read();
            let n = want.min(bytes.len() - tail - at);
            p.buf.extend_from_slice(&bytes[at..at + n]);
            at += n;
            assert!(
                p.buf.capacity() <= 40_014 + 2 * READ_CHUNK,
                "{}",
                p.buf.capacity()
            );
            while let Some(f) = p.parse().ok().flatten() {
                got.push(f);
            }
            let partial = p.partial.as_ref().map_or(0, |m| m.bytes.capacity());
            assert!(partial <= max, "{partial}");
        }
        let whole = [vec![1; 40_000], vec![2; 29_999]].concat();
        assert_eq!(got, vec![Frame::Pong, Frame::Binary(Bytes::from(whole))]);
        p.prepare_read();
        assert!(
            p.buf.capacity() <= 14 + READ_CHUNK,
            "only the next frame's start"
        );
    }
}

/// A client's message: its frames and what the parser should make of it.
#[derive(Debug, Clone)]
enum Sent {
    Message {
        text: bool,
        body: String,
        cuts: Vec<usize>,
    },
    Ping(Vec<u8>),
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        (
            any::<bool>(),
            "[a-zé€😀 ]{0,300}",
            proptest::collection::vec(0usize..400, 0..4)
        )
            .prop_map(|(text, body, cuts)| Sent::Message { text, body, cuts }),
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Sent::Ping),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any messages, fragmented anywhere (inside a character too), with
    /// pings, fed in any cuts: the same messages, in order.
    #[test]
    fn any_messages_fed_in_any_cuts_come_out_whole(
        sends in proptest::collection::vec(sent(), 1..8),
        feeds in proptest::collection::vec(1usize..200, 1..50),
    ) {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for s in &sends {
            match s {
                Sent::Message { text, body, cuts } => {
                    let body = body.as_bytes();
                    let mut at: Vec<usize> = cuts
                        .iter()
                        .map(|c| c % (body.len() + 1))
                        .filter(|&c| c > 0 && c < body.len())
                        .collect();
                    at.sort_unstable();
                    at.dedup();
                    at.push(body.len());
                    let mut from = 0;
                    for (i, &c) in at.iter().enumerate() {
                        let op = if i > 0 { CONTINUATION } else if *text { TEXT } else { BINARY };
                        bytes.extend(frame(i == at.len() - 1, op, &body[from..c]));
                        from = c;
                    }
                    let b = Bytes::copy_from_slice(body);
                    want.push(if *text { Frame::Text(b) } else { Frame::Binary(b) });
                }
                Sent::Ping(p) => {
                    bytes.extend(frame(true, PING, p));
                    want.push(Frame::Ping(Bytes::copy_from_slice(p)));
                }
            }
        }
        let mut p = Parser::new(4096);
        let mut got = Vec::new();
        let mut at = 0;
        let mut feeds = feeds.iter().cycle();
        while at < bytes.len() {
            let n = (*feeds.next().unwrap_or(&1)).min(bytes.len() - at);
            p.feed(&bytes[at..at + n]);
            at += n;
            while let Some(f) = p.parse().map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(f);
            }
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(p.buf.capacity(), 0);
    }

    /// Any bytes at all: frames or an error, never a panic.
    #[test]
    fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_all(256, &bytes);
    }

    /// Valid frames with any bytes changed (headers, lengths, opcodes):
    /// frames or an error, never a panic, and never a message over the
    /// limit.
    #[test]
    fn changed_frames_parse_or_fail_cleanly(
        changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = [
            frame(false, TEXT, "héllo".as_bytes()),
            frame(true, PING, b"p"),
            frame(true, CONTINUATION, &[b'x'; 130]),
            frame(true, BINARY, &[7; 300]),
            frame(true, CLOSE, &[0x03, 0xe8]),
        ]
        .concat();
        for (at, b) in changes {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let (frames, _) = parse_all(256, &bytes);
        for f in frames {
            if let Frame::Text(b) | Frame::Binary(b) = f {
                prop_assert!(b.len() <= 256);
            }
        }
    }
}

/// A reader on the server's end of a loopback connection, with `early`
/// bytes as if they came with the request, and the client's end.
async fn pair(early: &[u8]) -> (FrameReader, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    let io = if early.is_empty() {
        ReadHalf::new(Arc::new(server))
    } else {
        ReadHalf::with_early(Arc::new(server), Bytes::copy_from_slice(early))
    };
    (FrameReader::new(io, 70_000), client)
}

/// Over a real socket: bytes that came with the request first, the rest
/// from the socket, a long message over several reads; the reader keeps
/// no buffer between messages, and after the client's close reads no more.
#[tokio::test]
async fn reads_frames_off_a_socket() {
    let first = frame(true, TEXT, b"early and late");
    let (mut reader, mut client) = pair(&first[..5]).await;
    client.write_all(&first[5..]).await.expect("write");
    let long = vec![7; 65_000];
    client
        .write_all(&frame(true, BINARY, &long))
        .await
        .expect("write");
    client
        .write_all(
            &[
                frame(true, CLOSE, &[0x0f, 0xa0]),
                frame(true, TEXT, b"after"),
            ]
            .concat(),
        )
        .await
        .expect("write");
    assert_eq!(
        reader.next().await.and_then(Result::ok),
        Some(text("early and late"))
    );
    assert_eq!(
        reader.next().await.and_then(Result::ok),
        Some(Frame::Binary(Bytes::from(long)))
    );
    assert_eq!(
        reader.next().await.and_then(Result::ok),
        Some(Frame::Close(Some(4000)))
    );
    assert!(reader.next().await.is_none(), "nothing after the close");
}

/// A read cut off in the middle of a frame (the reader's `select!` taking
/// another branch) loses nothing: the next call finishes the frame.
#[tokio::test]
async fn a_cancelled_read_loses_nothing() {
    let (mut reader, mut client) = pair(b"").await;
    let bytes = frame(true, TEXT, b"cut in two");
    client.write_all(&bytes[..8]).await.expect("write");
    // Wait, a call at a time, until the first part has been read.
    for _ in 0..1000 {
        let call = tokio::time::timeout(std::time::Duration::from_millis(5), reader.next());
        assert!(call.await.is_err(), "the frame is not complete");
        if !reader.parser.buf.is_empty() {
            break;
        }
    }
    assert_eq!(reader.parser.buf, bytes[..8], "the first part, read");
    client.write_all(&bytes[8..]).await.expect("write");
    assert_eq!(
        reader.next().await.and_then(Result::ok),
        Some(text("cut in two"))
    );
}

/// Between messages the reader holds no buffer; the stream's end is the
/// end of the frames.
#[tokio::test]
async fn an_idle_reader_holds_no_buffer() {
    let (mut reader, mut client) = pair(b"").await;
    client
        .write_all(&frame(true, TEXT, b"one"))
        .await
        .expect("write");
    assert_eq!(reader.next().await.and_then(Result::ok), Some(text("one")));
    assert_eq!(reader.parser.buf.capacity(), 0);
    drop(client);
    assert!(reader.next().await.is_none(), "the client's end");
}
