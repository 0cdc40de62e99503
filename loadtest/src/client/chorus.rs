//! A Chorus client connection as the contract describes it: token in the
//! upgrade, `ready`, `join-community` (with `lastSeq` after a reconnect),
//! events checked against the per-community sequence, and recovery beyond
//! the replay window by paging the HTTP history, so a reconnect or a
//! killed gateway shows up as nothing lost or as a counted fault.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::life::{ConnError, Exit, Op, Session, lock};
use super::{
    CONNECT_TIMEOUT, ClientSpec, ConnState, Env, REQUEST_TIMEOUT, Shared, parse_content,
    parse_created_at, tcp,
};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Messages per history page when recovering (the contract's largest).
const HISTORY_PAGE: u32 = 100;

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageIn<'a> {
    #[serde(borrow)]
    community_id: Cow<'a, str>,
    seq: i64,
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(borrow)]
    created_at: Cow<'a, str>,
}

#[derive(Deserialize)]
struct NewMessage<'a> {
    #[serde(borrow)]
    message: MessageIn<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Deleted<'a> {
    #[serde(borrow)]
    community_id: Cow<'a, str>,
    seq: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinAck {
    head_seq: i64,
    recovered: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryPage {
    messages: Vec<HistoryMessage>,
    next_after: Option<i64>,
}

#[derive(Deserialize)]
struct HistoryMessage {
    seq: i64,
}

/// One socket's life on a Chorus gateway.
pub(super) async fn session(s: &mut Session<'_>) -> Result<Exit, ConnError> {
    let started = Instant::now();
    let url = s.url("/ws");
    let mut ws = timeout(CONNECT_TIMEOUT, connect(s.env, &url, &s.spec.token))
        .await
        .map_err(|_| ConnError::Timeout("connect"))??;
    s.connected(started);
    let (env, spec, state, shared) = (s.env, s.spec, s.state, s.shared);
    let mut next_ref = 1u64;
    for community in &spec.communities {
        let t = Instant::now();
        join(env, spec, &mut ws, community, next_ref, state, shared).await?;
        next_ref += 1;
        shared.stats().join.record(t.elapsed().as_micros() as u64);
    }
    s.joined();
    loop {
        tokio::select! {
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => return Err(ConnError::closed(c)),
                None => return Err(ConnError::Closed(None)),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                };
                // After the joins, answers are to `send-message`s.
                match on_frame(&text, state, shared, None)? {
                    Some((_, Some(_))) => {
                        shared.sends_acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((_, None)) => {
                        shared.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {}
                }
            }
            changed = s.control.changed() => match s.control_changed(changed) {
                Some(Exit::Quit) => {
                    let _ = ws.close(None).await;
                    return Ok(Exit::Quit);
                }
                // Dropped as a network failure would: no close frame.
                Some(Exit::Storm) => return Ok(Exit::Storm),
                None => {}
            },
            Some(op) = s.ops.recv() => {
                let frame = match op {
                    Op::Send { community, content } => {
                        next_ref += 1;
                        serde_json::json!({"type": "send-message", "ref": next_ref,
                            "data": {"communityId": community, "content": content}})
                    }
                    Op::Typing { community, on } => serde_json::json!({"type": "typing",
                        "data": {"communityId": community, "isTyping": on}}),
                };
                ws.send(Message::text(frame.to_string())).await?;
            }
        }
    }
}

async fn connect(env: &Env, url: &str, token: &str) -> Result<Ws, ConnError> {
    let stream = tcp(url, env.local_addr)
        .await
        .map_err(|e| ConnError::Connect(e.to_string()))?;
    let mut req = url.into_client_request()?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| ConnError::Connect(e.to_string()))?;
    req.headers_mut().insert("authorization", bearer);
    let (mut ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await?;
    // `ready` comes first.
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let f: Frame<'_> =
                    serde_json::from_str(&t).map_err(|e| ConnError::Protocol(e.to_string()))?;
                if f.kind == "ready" {
                    return Ok(ws);
                }
            }
            Some(Ok(Message::Close(c))) => return Err(ConnError::closed(c)),
            None => return Err(ConnError::Closed(None)),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Joins `community` (with `lastSeq` when this connection has seen it
/// before), counts what the replay delivers, and pages the HTTP history
/// when the gap was too large to replay.
async fn join(
    env: &Env,
    spec: &ClientSpec,
    ws: &mut Ws,
    community: &str,
    reference: u64,
    state: &Arc<Mutex<ConnState>>,
    shared: &Arc<Shared>,
) -> Result<(), ConnError> {
    let last = lock(state).rooms.get(community).map(|r| r.last_seq);
    let mut data = serde_json::json!({"communityId": community});
    if let Some(l) = last {
        data["lastSeq"] = l.into();
    }
    let frame = serde_json::json!({"type": "join-community", "ref": reference, "data": data});
    ws.send(Message::text(frame.to_string())).await?;
    // Until the ack says where this connection stands (the head, whether
    // the replay recovered), what arrives for the community is held.
    let mut held: Vec<i64> = Vec::new();
    let ack = timeout(REQUEST_TIMEOUT, async {
        loop {
            let text: Utf8Bytes = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(c))) => return Err(ConnError::closed(c)),
                None => return Err(ConnError::Closed(None)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            };
            if let Some(ack) = on_frame(&text, state, shared, Some((community, &mut held)))?
                && ack.0 == reference
            {
                return ack
                    .1
                    .map(|raw| raw.get().to_owned())
                    .ok_or_else(|| ConnError::Protocol(format!("join refused: {text}")));
            }
        }
    })
    .await
    .map_err(|_| ConnError::Timeout("join ack"))??;
    let ack: JoinAck =
        serde_json::from_str(&ack).map_err(|e| ConnError::Protocol(format!("join ack: {e}")))?;
    match last {
        // A first join starts at the head: what came before it is not ours.
        None => {
            lock(state)
                .rooms
                .entry(community.to_owned())
                .or_default()
                .last_seq = ack.head_seq;
            held.retain(|s| *s > ack.head_seq);
        }
        // Beyond the replay window: the client pages the history up to the
        // head, then what was held follows.
        Some(_) if !ack.recovered => {
            fill_from_history(env, spec, community, ack.head_seq, state).await?;
        }
        // A replay: the held events are it, in order.
        Some(_) => {}
    }
    let mut st = lock(state);
    let room = st.rooms.entry(community.to_owned()).or_default();
    let mut fresh = 0;
    for seq in held {
        if room.on_seq(seq) {
            fresh += 1;
            if last.is_some() && seq <= ack.head_seq {
                room.replayed += 1;
            }
        }
    }
    drop(st);
    shared.deliveries.fetch_add(fresh, Ordering::Relaxed);
    Ok(())
}

/// Pages `after=` the connection's position up to `head`, as a client
/// does after `recovered: false`. The cursor is the page's `nextAfter`,
/// so seqs history never returns (a deleted message's) cannot stall it;
/// anything up to `head` that history did not return counts as lost (the
/// load tool deletes nothing).
async fn fill_from_history(
    env: &Env,
    spec: &ClientSpec,
    community: &str,
    head: i64,
    state: &Arc<Mutex<ConnState>>,
) -> Result<(), ConnError> {
    let mut after = lock(state).rooms.get(community).map_or(0, |r| r.last_seq);
    while after < head {
        let url = format!(
            "{}/api/messages-realtime?communityId={community}&after={after}&limit={HISTORY_PAGE}",
            env.api_url
        );
        let page: HistoryPage = env
            .http
            .get(&url)
            .bearer_auth(&spec.token)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| ConnError::Protocol(format!("history: {e}")))?
            .json()
            .await
            .map_err(|e| ConnError::Protocol(format!("history: {e}")))?;
        {
            let mut st = lock(state);
            let room = st.rooms.entry(community.to_owned()).or_default();
            for m in page.messages.iter().filter(|m| m.seq <= head) {
                if room.on_seq(m.seq) {
                    room.from_history += 1;
                }
            }
        }
        match page.next_after {
            Some(next) if next > after => after = next,
            _ => break,
        }
    }
    let mut st = lock(state);
    let room = st.rooms.entry(community.to_owned()).or_default();
    if room.last_seq < head {
        room.gaps += (head - room.last_seq) as u64;
        room.last_seq = head;
    }
    Ok(())
}

/// Handles one server frame. Returns `(ref, Some(data) | None for an
/// error)` for answers. While a join waits for its ack, `hold` collects
/// that community's events.
fn on_frame<'a>(
    text: &'a str,
    state: &Mutex<ConnState>,
    shared: &Shared,
    hold: Option<(&str, &mut Vec<i64>)>,
) -> Result<Option<(u64, Option<&'a RawValue>)>, ConnError> {
    let f: Frame<'a> =
        serde_json::from_str(text).map_err(|e| ConnError::Protocol(e.to_string()))?;
    let data = f.data;
    match f.kind.as_ref() {
        "new-message" => {
            let m: NewMessage<'_> = parse(data)?;
            let mark = parse_content(&m.message.content)
                .map(|(sent, _)| (sent, parse_created_at(&m.message.created_at)));
            track(
                state,
                shared,
                &m.message.community_id,
                m.message.seq,
                hold,
                mark,
            );
        }
        "message-deleted" => {
            let d: Deleted<'_> = parse(data)?;
            track(state, shared, &d.community_id, d.seq, hold, None);
        }
        "user-typing" => {
            shared.typing.fetch_add(1, Ordering::Relaxed);
        }
        "ack" => return Ok(f.reference.map(|r| (r, data))),
        "error" => {
            if let Some(r) = f.reference {
                return Ok(Some((r, None)));
            }
        }
        "membership-revoked" => return Err(ConnError::Protocol("membership revoked".into())),
        _ => {}
    }
    Ok(None)
}

fn parse<'a, T: Deserialize<'a>>(data: Option<&'a RawValue>) -> Result<T, ConnError> {
    let raw = data.ok_or_else(|| ConnError::Protocol("event without data".into()))?;
    serde_json::from_str(raw.get()).map_err(|e| ConnError::Protocol(e.to_string()))
}

fn track(
    state: &Mutex<ConnState>,
    shared: &Shared,
    community: &str,
    seq: i64,
    hold: Option<(&str, &mut Vec<i64>)>,
    sent: Option<(u64, Option<u64>)>,
) {
    // The community being joined: held until its ack.
    if let Some((joining, held)) = hold
        && joining == community
    {
        held.push(seq);
        return;
    }
    let fresh = lock(state)
        .rooms
        .get_mut(community)
        // A community not joined (yet): its join places the connection.
        .is_some_and(|room| room.on_seq(seq));
    if fresh {
        shared.deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some((sent, created)) = sent {
            shared.delivered(sent, created);
        }
    }
}
