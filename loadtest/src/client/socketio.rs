//! A Socket.IO v4 client (Engine.IO v4, WebSocket transport only), as the
//! peers in `../shared/peers` speak it: open packet, `40{token}`, events
//! with numbered acks, Engine.IO pings answered. Peers have no sequence
//! numbers, so deliveries are checked by the post number in the content.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::life::{ConnError, Exit, Op, Session, lock};
use super::{
    CONNECT_TIMEOUT, ConnState, Env, REQUEST_TIMEOUT, Shared, parse_content, parse_created_at, tcp,
};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageIn<'a> {
    #[serde(borrow)]
    community_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    content: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    created_at: Option<std::borrow::Cow<'a, str>>,
}

/// One socket's life on a Socket.IO node. What is missed while it is
/// away is lost (the peers cannot recover it; verification counts it).
pub(super) async fn session(s: &mut Session<'_>) -> Result<Exit, ConnError> {
    let started = Instant::now();
    let url = s.url("/socket.io/?EIO=4&transport=websocket");
    let mut ws = timeout(CONNECT_TIMEOUT, connect(s.env, &url, &s.spec.token))
        .await
        .map_err(|_| ConnError::Timeout("connect"))??;
    s.connected(started);
    let (state, shared) = (s.state, s.shared);
    for (i, community) in s.spec.communities.iter().enumerate() {
        let t = Instant::now();
        let id = i + 1;
        let join = serde_json::json!(["join-community", {"communityId": community}]);
        ws.send(Message::text(format!("42{id}{join}"))).await?;
        let want = format!("43{id}[");
        timeout(REQUEST_TIMEOUT, async {
            loop {
                let text = next_text(&mut ws).await?;
                if text.starts_with(&want) {
                    if !text.contains("\"ok\":true") {
                        return Err(ConnError::Protocol(format!("join refused: {text}")));
                    }
                    return Ok(());
                }
                on_frame(&mut ws, &text, state, shared).await?;
            }
        })
        .await
        .map_err(|_| ConnError::Timeout("join ack"))??;
        lock(state).rooms.entry(community.clone()).or_default();
        shared.stats().join.record(t.elapsed().as_micros() as u64);
    }
    s.joined();
    loop {
        tokio::select! {
            text = next_text(&mut ws) => {
                let text = text?;
                on_frame(&mut ws, &text, state, shared).await?;
            }
            changed = s.control.changed() => match s.control_changed(changed) {
                Some(Exit::Quit) => {
                    let _ = ws.close(None).await;
                    return Ok(Exit::Quit);
                }
                Some(Exit::Storm) => return Ok(Exit::Storm),
                None => {}
            },
            Some(op) = s.ops.recv() => {
                if let Op::Typing { community, on } = op {
                    let ev = serde_json::json!(["typing", {"communityId": community, "isTyping": on}]);
                    ws.send(Message::text(format!("42{ev}"))).await?;
                }
            }
        }
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, ConnError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(c))) => return Err(ConnError::closed(c)),
            None => return Err(ConnError::Closed(None)),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

async fn connect(env: &Env, url: &str, token: &str) -> Result<Ws, ConnError> {
    let stream = tcp(url, env.local_addr)
        .await
        .map_err(|e| ConnError::Connect(e.to_string()))?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with("0{") {
        return Err(ConnError::Protocol(format!(
            "expected the open packet, got {open}"
        )));
    }
    let auth = serde_json::json!({ "token": token });
    ws.send(Message::text(format!("40{auth}"))).await?;
    loop {
        let t = next_text(&mut ws).await?;
        if t.starts_with("40") {
            return Ok(ws);
        }
        if t.starts_with("44") {
            return Err(ConnError::Protocol(format!("connection refused: {t}")));
        }
        if t == "2" {
            ws.send(Message::text("3")).await?;
        }
    }
}

async fn on_frame(
    ws: &mut Ws,
    text: &str,
    state: &Mutex<ConnState>,
    shared: &Shared,
) -> Result<(), ConnError> {
    if text == "2" {
        ws.send(Message::text("3")).await?;
        return Ok(());
    }
    let Some(body) = text.strip_prefix("42") else {
        return Ok(());
    };
    let (name, data): (&str, &RawValue) =
        serde_json::from_str(body).map_err(|e| ConnError::Protocol(e.to_string()))?;
    match name {
        "new-message" => {
            let m: MessageIn<'_> =
                serde_json::from_str(data.get()).map_err(|e| ConnError::Protocol(e.to_string()))?;
            let Some((sent, k)) = parse_content(&m.content) else {
                return Ok(());
            };
            let fresh = lock(state)
                .rooms
                .get_mut(m.community_id.as_ref())
                .is_some_and(|r| r.on_post(k));
            if fresh {
                shared.deliveries.fetch_add(1, Ordering::Relaxed);
                let created = m.created_at.as_deref().and_then(parse_created_at);
                shared.delivered(sent, created);
            }
        }
        "user-typing" => {
            shared.typing.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    Ok(())
}
