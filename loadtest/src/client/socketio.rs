//! A Socket.IO v4 client (Engine.IO v4, WebSocket transport only), as the
//! peers in `../shared/peers` speak it: open packet, `40{token}`, events
//! with numbered acks, Engine.IO pings answered. Peers have no sequence
//! numbers, so deliveries are checked by the post number in the content.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::chorus::{ConnError, Op};
use super::{
    CONNECT_TIMEOUT, ClientSpec, ConnState, Control, Env, REQUEST_TIMEOUT, Shared, backoff,
    parse_content, parse_created_at, tcp,
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

/// One connection's life, as [`super::chorus::run`]: reconnects and
/// rejoins after a close or a storm (what was missed meanwhile is lost:
/// the peers cannot recover it, and verification counts it).
pub async fn run(
    env: Env,
    spec: ClientSpec,
    state: Arc<Mutex<ConnState>>,
    shared: Arc<Shared>,
    mut control: watch::Receiver<Control>,
    mut ops: mpsc::Receiver<Op>,
) {
    let mut gateway = spec.gateway;
    let mut attempt = 0u32;
    let mut storm = control.borrow().storm;
    loop {
        let r = session(
            &env,
            &spec,
            gateway,
            &state,
            &shared,
            &mut control,
            &mut ops,
            &mut storm,
        )
        .await;
        if std::mem::replace(&mut lock(&state).joined, false) {
            shared.joined.fetch_sub(1, Ordering::Relaxed);
        }
        match r {
            Ok(true) => return,
            Ok(false) => {
                lock(&state).stormed = true;
                attempt = 0;
            }
            Err(e) => {
                if control.borrow().quit {
                    return;
                }
                {
                    let mut st = lock(&state);
                    if st.rooms.is_empty() && attempt >= 3 {
                        st.failed = Some(e.to_string());
                        return;
                    }
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                gateway += 1;
            }
        }
        lock(&state).reconnects += 1;
    }
}

fn lock(state: &Mutex<ConnState>) -> std::sync::MutexGuard<'_, ConnState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ok(true): quit; Ok(false): storm.
#[allow(clippy::too_many_arguments)]
async fn session(
    env: &Env,
    spec: &ClientSpec,
    gateway: usize,
    state: &Arc<Mutex<ConnState>>,
    shared: &Arc<Shared>,
    control: &mut watch::Receiver<Control>,
    ops: &mut mpsc::Receiver<Op>,
    storm: &mut u64,
) -> Result<bool, ConnError> {
    let started = Instant::now();
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        env.ws_urls[gateway % env.ws_urls.len()].trim_end_matches('/')
    );
    let mut ws = timeout(CONNECT_TIMEOUT, connect(env, &url, &spec.token))
        .await
        .map_err(|_| ConnError::Timeout("connect"))??;
    shared
        .stats()
        .connect
        .record(started.elapsed().as_micros() as u64);
    for (i, community) in spec.communities.iter().enumerate() {
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
    let stormed = {
        let mut st = lock(state);
        st.joined = true;
        std::mem::take(&mut st.stormed)
    };
    shared.joined.fetch_add(1, Ordering::Relaxed);
    if stormed {
        shared.rejoined.fetch_add(1, Ordering::Relaxed);
    }
    loop {
        tokio::select! {
            text = next_text(&mut ws) => {
                let text = text?;
                on_frame(&mut ws, &text, state, shared).await?;
            }
            changed = control.changed() => {
                let c = *control.borrow();
                if changed.is_err() || c.quit {
                    let _ = ws.close(None).await;
                    return Ok(true);
                }
                if c.storm != *storm {
                    *storm = c.storm;
                    drop(ws);
                    return Ok(false);
                }
            }
            Some(op) = ops.recv() => {
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
            Some(Ok(Message::Close(_))) | None => return Err(ConnError::Closed),
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
