//! Slow consumers: a client that stops reading is cut off (4009) without
//! holding up the others or a replay. The clients here read through a
//! tiny receive buffer, so the gateway's writes back up at once.

use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::*;
use crate::faults::GatewayProcess;

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_others_keep_receiving() {
    let mut opts = GwOpts::new(&env_url("REDIS_URL"));
    opts.outbound_queue = 8;
    let cl = Cluster::start_with(opts).await;
    let (alice, slow) = (uid("alice"), uid("slow"));
    let c = cl.community(&alice, &[&slow]).await;
    let mut fast = Client::connect(&cl.gw1.url, &token(&alice)).await;
    fast.join(&c, None).await;

    // The slow client: a tiny receive buffer, and it never reads.
    let join = json!({"type": "join-community", "ref": 1, "data": {"communityId": c}});
    let mut ws = stalling_client(&cl.gw1.url, &token(&slow), &join).await;
    // Reads up to the join's ack (after `ready`), then stops reading.
    loop {
        use futures_util::StreamExt;
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the wait")
            .expect("open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "ack" && v["ref"] == 1 {
                break;
            }
        }
    }

    let big = "x".repeat(3900);
    // More than the largest kernel send buffer (tcp_wmem max, 4 MiB here)
    // plus the queue, so the queue must overflow.
    let total = 1400;
    let poster = {
        let (http, url, t, c) = (
            cl.http.clone(),
            cl.api.url.clone(),
            token(&alice),
            c.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..total {
                let r = http
                    .post(format!("{url}/api/messages-realtime"))
                    .bearer_auth(&t)
                    .json(&json!({"communityId": c, "content": big}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        })
    };
    let seqs = fast.seqs_until(total).await;
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<i64>>(),
        "the reading client got everything"
    );
    poster.await.unwrap();

    let metrics = cl.gw1.metrics().await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("chorus_gateway_slow_consumer_closes_total") && !l.ends_with(" 0")
        ),
        "a slow-consumer close was recorded"
    );
    // The slow client's connection is gone: it reads what was buffered,
    // then a 4009 close frame or the dropped connection.
    let ended = read_to_end(&mut ws, |_| {}).await;
    assert!(
        ended.is_none() || ended == Some(4009),
        "closed with {ended:?}"
    );
}

/// A client that joins with `lastSeq` and then stops reading is cut off
/// with 4009 once its replay makes no progress for a second, instead of
/// holding the replay (and its window) forever.
#[tokio::test]
async fn a_replay_to_a_client_that_stopped_reading_ends_in_4009() {
    let cl = Cluster::start().await;
    let alice = uid("alice");
    let c = cl.community(&alice, &[]).await;
    let gp = GatewayProcess::start_with(
        &cl.api,
        &env_url("REDIS_URL"),
        &[
            ("CHORUS_WS_OUTBOUND_QUEUE", "8"),
            ("CHORUS_RECOVERY_WINDOW", "2000"),
        ],
    )
    .await;
    // More than the kernel's buffers can hold (4 MiB send buffer here).
    let big = "x".repeat(3900);
    for _ in 0..1600 {
        let r = cl
            .http
            .post(format!("{}/api/messages-realtime", cl.api.url))
            .bearer_auth(token(&alice))
            .json(&json!({"communityId": c, "content": big}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let join =
        json!({"type": "join-community", "ref": 1, "data": {"communityId": c, "lastSeq": 0}});
    let mut ws = stalling_client(&gp.url, &token(&alice), &join).await;
    // Not reading: the gateway gives up on this client.
    wait_until(|| async {
        gp.metric_opt("chorus_gateway_slow_consumer_closes_total")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    // Reading now yields what was buffered, then the end, never the ack.
    let ended = read_to_end(&mut ws, |v| {
        assert_ne!(v["type"], "ack", "the replay must not complete");
    })
    .await;
    assert!(matches!(ended, Some(4009) | None), "closed: {ended:?}");
}

/// A WebSocket client with a tiny receive buffer that has sent `first`
/// and will read only when the test says so.
async fn stalling_client(
    url: &str,
    token: &str,
    first: &serde_json::Value,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    use futures_util::SinkExt;
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr.parse().unwrap()).await.unwrap();
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        first.to_string().into(),
    ))
    .await
    .unwrap();
    ws
}

/// Reads a client's frames (each text frame through `check`) until the
/// connection ends; the close code, or `None` when it was just dropped.
async fn read_to_end(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    mut check: impl FnMut(&serde_json::Value),
) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(Message::Text(t))) => check(&serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the connection ends")
}
