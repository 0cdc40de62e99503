//! Connecting, frames and their errors, encodings, limits.
//!
//! Kept in one file: each test walks one connection through the contract's
//! opening and frame rules, and they share the setup helpers below.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::*;

#[tokio::test]
async fn messages_cross_gateways_with_acks_and_errors() {
    let cl = Cluster::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let mut b = Client::connect(&cl.gw2.url, &token(&bob)).await;
    assert_eq!(a.ready["data"]["userId"], alice.as_str());
    assert!(a.ready["data"]["heartbeatMs"].as_u64().unwrap() > 0);
    assert_ne!(a.ready["data"]["gatewayId"], b.ready["data"]["gatewayId"]);

    let ack = a.join(&c, None).await;
    assert_eq!(ack["communityId"], c.as_str());
    assert_eq!(
        (
            ack["headSeq"].clone(),
            ack["recovered"].clone(),
            ack["missed"].clone()
        ),
        (json!(0), json!(true), json!(0))
    );
    assert!(ack["online"].as_array().unwrap().contains(&json!(alice)));
    b.join(&c, None).await;

    let sent = a
        .ok(
            "send-message",
            json!({"communityId": c, "content": " hello from gw1 "}),
        )
        .await;
    assert_eq!(sent["message"]["content"], "hello from gw1");
    assert_eq!(sent["message"]["seq"], 1);
    let got = b.event_of("new-message").await;
    assert_eq!(
        got["data"]["message"], sent["message"],
        "same message on the other gateway"
    );
    let own = a.event_of("new-message").await;
    assert_eq!(
        own["data"]["message"]["id"], sent["message"]["id"],
        "the sender's connections get it too"
    );

    // Deletion over the socket, by someone not allowed, then by the sender.
    let id = sent["message"]["id"].as_str().unwrap();
    let err = b.request("delete-message", json!({"messageId": id})).await;
    assert_eq!(
        (err["type"].clone(), err["error"]["code"].clone()),
        (json!("error"), json!("forbidden"))
    );
    a.ok("delete-message", json!({"messageId": id})).await;
    let d = b.event_of("message-deleted").await;
    assert_eq!(
        d["data"],
        json!({"communityId": c, "messageId": id, "seq": 2})
    );

    // API errors pass through.
    let err = a
        .request("send-message", json!({"communityId": c, "content": "   "}))
        .await;
    assert_eq!(err["error"]["code"], "bad_request");
    let outsider = uid("out");
    let mut o = Client::connect(&cl.gw1.url, &token(&outsider)).await;
    let err = o.request("join-community", json!({"communityId": c})).await;
    assert_eq!(err["error"]["code"], "forbidden");
    let err = o
        .request(
            "join-community",
            json!({"communityId": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(err["error"]["code"], "not_found");
    let mut m = Client::connect(&cl.gw2.url, &official(&uid("mod"))).await;
    m.join(&c, None).await;
    assert_eq!(
        b.event_of("user-joined").await["data"]["userId"],
        m.ready["data"]["userId"]
    );
    // Leaving stops delivery: a marker in another community of bob's,
    // posted afterwards, is the next thing he gets.
    let other = cl.community(&alice, &[&bob]).await;
    b.join(&other, None).await;
    b.ok("leave-community", json!({"communityId": c})).await;
    cl.post(&alice, &c, "after bob left").await;
    m.event_of("new-message").await;
    cl.post(&alice, &other, "marker").await;
    b.next_is_message("marker").await;
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    let cases: Vec<(Message, Option<u64>, &str)> = vec![
        (Message::Text("{not json".into()), None, "bad_request"),
        (Message::Text("[1,2]".into()), None, "bad_request"),
        (Message::Text(r#"{"type":"nope","ref":5}"#.into()), Some(5), "bad_request"),
        (Message::Text(r#"{"type":"join-community","ref":6,"data":{"communityId":12}}"#.into()), Some(6), "bad_request"),
        (Message::Text(r#"{"type":"join-community","ref":7,"data":{"communityId":"xyz"}}"#.into()), Some(7), "not_found"),
        (Message::Text(r#"{"type":"join-community","ref":8,"data":{}}"#.into()), Some(8), "bad_request"),
        (Message::Text(format!(r#"{{"type":"join-community","ref":9,"data":{{"communityId":"{c}","lastSeq":-1}}}}"#).into()), Some(9), "bad_request"),
        (Message::Text(r#"{"type":"typing","ref":10,"data":{"communityId":"00000000-0000-0000-0000-000000000000","isTyping":"yes"}}"#.into()), Some(10), "bad_request"),
        (Message::Text(r#"{"type":"delete-message","ref":11,"data":{"messageId":"nope"}}"#.into()), Some(11), "not_found"),
        (Message::Binary(vec![1, 2, 3].into()), None, "bad_request"),
    ];
    for (frame, r, code) in cases {
        a.send_raw(frame.clone()).await;
        let e = a.frame().await;
        assert_eq!(e["type"], "error", "{frame:?} -> {e}");
        assert_eq!(e["error"]["code"], code, "{frame:?} -> {e}");
        assert_eq!(e.get("ref").and_then(Value::as_u64), r, "{frame:?} -> {e}");
    }
    // Still usable: ping/pong and a join.
    let r = a.send("ping", json!({})).await;
    let pong = a.answer(r).await;
    assert_eq!(pong, json!({"type": "pong", "ref": r, "data": {}}));
    // A WebSocket ping is answered with its payload, after what was
    // queued before it (the command's answer, sent first, comes first).
    let r = a.send("ping", json!({})).await;
    assert_eq!(a.ws_ping(b"are you there").await, b"are you there");
    assert_eq!(
        a.frame().await["ref"],
        r,
        "the answer queued before the pong"
    );
    a.join(&c, Some(0)).await;
    // Frames far larger than the socket read buffer arrive whole: the
    // longest message content (4,000 characters, 3 bytes each in UTF-8).
    let long = "€".repeat(4000);
    let ack = a
        .ok("send-message", json!({"communityId": c, "content": long}))
        .await;
    assert_eq!(ack["message"]["content"], long.as_str());

    // A message over 64 KiB closes with 1009.
    a.send_raw(Message::Text("x".repeat(64 * 1024 + 1).into()))
        .await;
    let f = a.closed().await.expect("a close frame");
    assert_eq!(u16::from(f.code), 1009);
}

#[tokio::test]
async fn msgpack_end_to_end() {
    let cl = Cluster::start().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let c = cl.community(&alice, &[&bob]).await;
    let mut a = Client::connect_with(&cl.gw1.url, &token(&alice), Enc::Msgpack, None)
        .await
        .unwrap();
    let mut b = Client::connect(&cl.gw2.url, &token(&bob)).await;
    a.join(&c, None).await;
    b.join(&c, None).await;
    let sent = a
        .ok(
            "send-message",
            json!({"communityId": c, "content": "packed"}),
        )
        .await;
    let mine = a.event_of("new-message").await;
    let theirs = b.event_of("new-message").await;
    assert_eq!(mine, theirs, "the same map in both encodings");
    assert_eq!(mine["data"]["message"], sent["message"]);
    assert!(
        mine["data"]["message"]["id"].is_string(),
        "ids are strings in MessagePack too"
    );
}

#[tokio::test]
async fn upgrade_auth_query_token_and_origin() {
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    opts.allowed_origins = vec!["https://chat.example".into()];
    let cl = Cluster::start_with(opts).await;
    let alice = uid("alice");
    assert_eq!(
        Client::connect_with(&cl.gw1.url, "garbage", Enc::Json, None)
            .await
            .err(),
        Some(401)
    );
    let expired = {
        let mut c =
            chorus_shared::auth::claims_for(&alice, None, chorus_shared::auth::Role::Member, 0);
        c.exp = chorus_shared::auth::now_s() - 3600;
        chorus_shared::auth::mint_hs256(SECRET, &c).unwrap()
    };
    assert_eq!(
        Client::connect_with(&cl.gw1.url, &expired, Enc::Json, None)
            .await
            .err(),
        Some(401)
    );
    let req = format!("{}?token={}", cl.gw1.url, token(&alice))
        .into_client_request()
        .unwrap();
    let c = Client::open(req, false).await.expect("?token= works");
    assert_eq!(c.ready["data"]["userId"], alice.as_str());
    assert!(
        Client::connect_with(
            &cl.gw1.url,
            &token(&alice),
            Enc::Json,
            Some("https://chat.example")
        )
        .await
        .is_ok()
    );

    // A browser from another origin is closed with 1008.
    let mut req = cl.gw1.url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(&alice)).parse().unwrap(),
    );
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let code = loop {
        use futures_util::StreamExt;
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 1008);
}

#[tokio::test]
async fn pings_on_the_heartbeat_then_token_expiry_closes_with_1008() {
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    opts.leeway_s = 0;
    opts.heartbeat = Duration::from_millis(200);
    let cl = Cluster::start_with(opts).await;
    let mut c =
        chorus_shared::auth::claims_for(&uid("brief"), None, chorus_shared::auth::Role::Member, 2);
    c.exp = chorus_shared::auth::now_s() + 3;
    let t = chorus_shared::auth::mint_hs256(SECRET, &c).unwrap();
    let mut client = Client::connect(&cl.gw1.url, &t).await;
    assert_eq!(client.ready["data"]["heartbeatMs"], 200);
    // The connections' clock keeps both: pings keep coming, then 1008.
    let (pings, close) = client.pings_until_closed().await;
    // About ten are due in the 2-3 s before expiry; two show it repeats.
    assert!(pings >= 2, "{pings} pings at a 200 ms heartbeat");
    assert_eq!(u16::from(close.expect("close frame").code), 1008);
}

#[tokio::test]
async fn a_silent_client_is_closed_while_one_answering_pings_stays() {
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    opts.heartbeat = Duration::from_millis(100);
    opts.idle_timeout = Duration::from_millis(600);
    let cl = Cluster::start_with(opts).await;
    let mut silent = Client::connect(&cl.gw1.url, &token(&uid("silent"))).await;
    let mut live = Client::connect(&cl.gw1.url, &token(&uid("live"))).await;
    // `live` reads (so its WebSocket library answers pings) and sends
    // nothing else; `silent` neither reads nor writes.
    let pings = live.reads_pings_for(Duration::from_millis(2000)).await;
    assert!(pings >= 2, "{pings} pings at a 100 ms heartbeat");
    // Ended by the server (without the idle timeout this read would run
    // into the wait). Its close frame may be lost to a TCP reset: reading
    // late, the client answers queued pings after the server closed.
    let (_, close) = silent.pings_until_closed().await;
    if let Some(f) = close {
        assert_eq!(u16::from(f.code), 1000);
    }
    let pong = live.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

#[tokio::test]
async fn rate_limits_answer_then_close_4008() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    let mut a = Client::connect(&cl.gw1.url, &token(&alice)).await;
    a.join(&c, None).await;
    // Burst 40 (one token already spent on the join): then rate_limited.
    let mut limited = 0;
    for _ in 0..45 {
        let r = a
            .send(
                "leave-community",
                json!({"communityId": uuid::Uuid::new_v4()}),
            )
            .await;
        let ans = a.answer(r).await;
        if ans["type"] == "error" {
            assert_eq!(ans["error"]["code"], "rate_limited");
            limited += 1;
        }
    }
    assert!(limited >= 5, "{limited} limited");
    // Pings are free.
    let r = a.send("ping", json!({})).await;
    assert_eq!(a.answer(r).await["type"], "pong");
    // Typing without ref over its own limit gets nothing; flooding closes.
    for _ in 0..200 {
        a.send_raw(Message::Text(
            format!(r#"{{"type":"typing","data":{{"communityId":"{c}","isTyping":true}}}}"#).into(),
        ))
        .await;
    }
    let f = a.closed().await.expect("close frame");
    assert_eq!(u16::from(f.code), 4008);

    // Rate 0 disables every per-connection limit.
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    opts.command_rate = 0.0;
    let gw = start_gateway(&cl.api, opts).await;
    let mut b = Client::connect(&gw.url, &token(&alice)).await;
    for _ in 0..150 {
        let ans = b
            .request(
                "leave-community",
                json!({"communityId": uuid::Uuid::new_v4()}),
            )
            .await;
        assert_eq!(ans["type"], "ack");
    }
    let (s, _) = cl
        .call(Method::GET, "/api/socket-status", &token(&alice), None)
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn connections_per_user_are_capped_before_the_upgrade() {
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    opts.max_connections_per_user = 3;
    let cl = Cluster::start_with(opts).await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(Client::connect(&cl.gw1.url, &token(&alice)).await);
    }
    let refused = Client::connect_with(&cl.gw1.url, &token(&alice), Enc::Json, None).await;
    assert_eq!(refused.err(), Some(429), "a fourth connection is refused");
    // Other users are not affected, and a closed tab frees its slot.
    Client::connect(&cl.gw1.url, &token(&bob)).await;
    tabs.pop().unwrap().close().await;
    wait_until(|| async {
        Client::connect_with(&cl.gw1.url, &token(&alice), Enc::Json, None)
            .await
            .is_ok()
    })
    .await;
}

/// A request to `/ws` that is not a WebSocket upgrade is a 400
/// `bad_request`, even with a valid token; a wrong version is told the
/// one the gateway speaks.
#[tokio::test]
async fn a_plain_get_of_the_socket_path_is_a_bad_request() {
    let cl = Cluster::start().await;
    let url = cl.gw1.url.replacen("ws://", "http://", 1);
    let r = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token(&uid("alice")))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["sec-websocket-version"], "13");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let r = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token(&uid("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// One frame read off the wire by [`RawSocket`].
struct RawFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A WebSocket client that sees frames, not messages: the handshake and
/// framing written out by hand (RFC 6455), so a test can check how the
/// gateway cuts its messages.
struct RawSocket(TcpStream);

/// A masked client frame (a zero mask: valid, and readable).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 126);
    let mut f = vec![0x80 | opcode, 0x80 | len as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

impl RawSocket {
    async fn connect(ws_url: &str, token: &str) -> RawSocket {
        Self::connect_sending(ws_url, token, &[]).await
    }

    /// Connects, sending `early` (client frames) in the same write as the
    /// upgrade request.
    async fn connect_sending(ws_url: &str, token: &str, early: &[u8]) -> RawSocket {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = ws_url
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .to_owned();
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        s.write_all(&[req.as_bytes(), early].concat())
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // RFC 6455 §1.3's worked example of the accept key.
        let accept = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-accept")
                .then(|| value.trim())
        });
        assert_eq!(accept, Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        RawSocket(s)
    }

    /// Sends one text frame.
    async fn send_text(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let f = client_frame(0x1, text.as_bytes());
        self.0.write_all(&f).await.unwrap();
    }

    async fn frame(&mut self) -> RawFrame {
        use tokio::io::AsyncReadExt;
        let read = async {
            let b0 = self.0.read_u8().await.unwrap();
            let b1 = self.0.read_u8().await.unwrap();
            assert_eq!(b1 & 0x80, 0, "server frames are not masked");
            let len = match b1 & 0x7f {
                126 => u64::from(self.0.read_u16().await.unwrap()),
                127 => self.0.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mut payload = vec![0; usize::try_from(len).unwrap()];
            self.0.read_exact(&mut payload).await.unwrap();
            RawFrame {
                fin: b0 & 0x80 != 0,
                opcode: b0 & 0x0f,
                payload,
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a frame within 10 s")
    }

    /// The next data message, put together from its frames, and how many
    /// frames it came in (pings in between are skipped).
    async fn message(&mut self) -> (Value, Vec<RawFrame>) {
        let mut frames: Vec<RawFrame> = Vec::new();
        loop {
            let f = self.frame().await;
            if f.opcode == 0x9 {
                continue;
            }
            let fin = f.fin;
            frames.push(f);
            if fin {
                break;
            }
        }
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.payload.clone()).collect();
        (serde_json::from_slice(&bytes).unwrap(), frames)
    }
}

/// Frames a client sends in the same write as its upgrade request are
/// read (the server may have taken them in with the request), and a
/// WebSocket ping is answered with a pong carrying its payload, after the
/// frames queued before it.
#[tokio::test]
async fn early_frames_are_read_and_pings_answered_with_their_payload() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let early = [
        client_frame(0x1, br#"{"type":"ping","ref":7}"#),
        client_frame(0x9, b"are you there"),
    ]
    .concat();
    let mut raw = RawSocket::connect_sending(&cl.gw1.url, &token(&alice), &early).await;
    let (ready, _) = raw.message().await;
    assert_eq!(ready["type"], "ready");
    let (ack, _) = raw.message().await;
    assert_eq!(ack["ref"], 7, "{ack}");
    let pong = loop {
        let f = raw.frame().await;
        if f.opcode != 0x9 {
            break f;
        }
    };
    assert_eq!((pong.fin, pong.opcode), (true, 0xA));
    assert_eq!(pong.payload, b"are you there");
}

/// Messages reach the client whole, each in one final text frame, read
/// here by a frame parser of the test's own: a long one with a 16-bit
/// length, a short one with a 7-bit length.
#[tokio::test]
async fn long_and_short_messages_arrive_as_one_frame_each() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    let mut raw = RawSocket::connect(&cl.gw1.url, &token(&alice)).await;
    let (ready, frames) = raw.message().await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(frames.len(), 1);
    raw.send_text(
        &json!({"type": "join-community", "ref": 1, "data": {"communityId": c}}).to_string(),
    )
    .await;
    let (ack, _) = raw.message().await;
    assert_eq!(ack["ref"], 1, "{ack}");

    let long = "é".repeat(1500) + &"x".repeat(1000);
    cl.post(&alice, &c, &long).await;
    cl.post(&alice, &c, "short").await;
    let (got, frames) = raw.message().await;
    assert_eq!(got["data"]["message"]["content"], long.as_str());
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].opcode, 0x1, "a text frame");
    assert!(
        frames[0].payload.len() > 4_000,
        "{}",
        frames[0].payload.len()
    );
    let (next, frames) = raw.message().await;
    assert_eq!(next["data"]["message"]["content"], "short");
    assert_eq!(frames.len(), 1);
}
