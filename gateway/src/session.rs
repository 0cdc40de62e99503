//! A connection's session: the commands of the contract, on top of the
//! socket layer.
//!
//! The socket layer hands each command here with the connection's handle.
//! Joins check access with the API, then go through the hub (replay,
//! presence); writes are performed by the API with the user's own token, so
//! they follow exactly the rules and rate limits of HTTP; typing is
//! published on the community's channel. When the connection ends the
//! session leaves every community it joined.

use std::sync::Arc;

use chorus_shared::ids::parse_uuid;
use chorus_shared::protocol::{
    DeleteMessage, JoinCommunity, LeaveCommunity, MessageData, Ready, SendMessage, ServerEvent,
    Typing,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde::ser::SerializeSeq;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::close;
use crate::error::GatewayError;
use crate::handle::ConnHandle;
use crate::hub::UserSlot;
use crate::state::Gateway;

/// The client's own token, as verified at the upgrade: forwarded when the
/// API acts on the user's behalf (sending, deleting, the unread count).
/// Who the user is and whether they are an official is on the connection's
/// handle; the session keeps only this, boxed to its length, since every
/// idle connection carries it.
pub struct Token(Box<str>);

impl From<String> for Token {
    fn from(token: String) -> Self {
        Token(token.into_boxed_str())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// One connection's command state.
#[derive(Debug)]
pub struct Session {
    gw: Gateway,
    token: Token,
    /// The communities this connection joined. A list: a connection joins
    /// a few (at most `max_joins`), and an empty or one-entry list costs an
    /// idle connection far less than a hash set (a one-entry set allocates
    /// a table of four).
    joined: Vec<Uuid>,
}

impl Session {
    /// Registers the connection and queues `ready`; `None` (the handle
    /// closed with its code) when the connection is refused.
    pub async fn open(
        gw: Gateway,
        conn: Arc<ConnHandle>,
        token: Token,
        origin_ok: bool,
        slot: UserSlot,
    ) -> Option<Session> {
        if !origin_ok {
            conn.close(close::POLICY);
            return None;
        }
        if let Err(e) = gw.hub().connect(&conn, slot).await {
            tracing::warn!(error = %e, "could not subscribe the user channel");
            conn.close(close::INTERNAL);
            gw.hub().disconnect(&conn, &[]).await;
            return None;
        }
        conn.push_value(&ServerEvent::Ready(Ready {
            user_id: conn.user_id.to_string(),
            connection_id: format!("{}-{}", gw.id(), conn.id),
            gateway_id: gw.id().to_owned(),
            heartbeat_ms: u64::try_from(gw.socket_config().heartbeat.as_millis())
                .unwrap_or(u64::MAX),
        }));
        Some(Session {
            gw,
            token,
            joined: Vec::new(),
        })
    }

    async fn join(&mut self, conn: &Arc<ConnHandle>, data: Value) -> Result<Joined, GatewayError> {
        let req: JoinCommunity = parse(data)?;
        let community = community_id(&req.community_id)?;
        if req.last_seq.is_some_and(|s| s < 0) {
            return Err(GatewayError::BadRequest(
                "lastSeq must not be negative".into(),
            ));
        }
        if self.joined.contains(&community) {
            if self.gw.hub().is_member(community, conn.id) {
                // Already live here: nothing to check, replay or announce.
                let head = self.gw.hub().delivered_through(community).unwrap_or(0);
                return Ok(self.ack(conn, community, head, true, 0).await);
            }
            // Joined once, then revoked: it no longer counts.
            self.forget(community);
        }
        let max_joins = self.gw.admission().max_joins;
        if self.joined.len() >= max_joins {
            // Memberships revoked since no longer count.
            let hub = self.gw.hub().clone();
            self.joined.retain(|c| hub.is_member(*c, conn.id));
        }
        if self.joined.len() >= max_joins {
            return Err(GatewayError::BadRequest(format!(
                "at most {max_joins} communities per connection"
            )));
        }
        // The room's channel is subscribed before the check, so the check's
        // head is the seam: what follows it arrives live.
        let prepared = self.gw.hub().prepare(community).await?;
        let checked_at = self.gw.hub().revocation_epoch();
        let access = self.gw.api().access(community, &conn.user_id).await?;
        if access.role.is_none() && !conn.official {
            return Err(GatewayError::Forbidden("not a member of this community"));
        }
        // Recorded first: if the connection closes during the join (a
        // replay), `end` leaves the community and releases what the join
        // took.
        // Grown one at a time: joins are rare, and an idle connection
        // should not carry a doubled list's spare room.
        self.joined.reserve_exact(1);
        self.joined.push(community);
        let joined = match self
            .gw
            .hub()
            .join(
                community,
                access.head_seq,
                conn,
                req.last_seq,
                checked_at,
                Some(&prepared),
            )
            .await
        {
            Ok(j) => j,
            Err(e) => {
                self.forget(community);
                return Err(e);
            }
        };
        Ok(self
            .ack(
                conn,
                community,
                joined.head_seq,
                joined.recovered,
                joined.missed,
            )
            .await)
    }

    /// Drops `community` from the joined list.
    fn forget(&mut self, community: Uuid) {
        if let Some(i) = self.joined.iter().position(|c| *c == community) {
            self.joined.swap_remove(i);
        }
    }

    /// The join ack, with the community's online users.
    async fn ack(
        &self,
        conn: &ConnHandle,
        community: Uuid,
        head_seq: i64,
        recovered: bool,
        missed: i64,
    ) -> Joined {
        let listed = self.gw.hub().online(community).await;
        let me = (!listed.iter().any(|u| **u == *conn.user_id)).then(|| conn.user_id.to_string());
        Joined {
            community_id: community,
            head_seq,
            online: Online { listed, me },
            recovered,
            missed,
        }
    }

    async fn leave(&mut self, conn: &Arc<ConnHandle>, data: Value) -> Result<Value, GatewayError> {
        let req: LeaveCommunity = parse(data)?;
        let community = community_id(&req.community_id)?;
        self.forget(community);
        self.gw.hub().leave(community, conn).await;
        Ok(json!({}))
    }

    async fn send(&self, data: Value) -> Result<Value, GatewayError> {
        let req: SendMessage = parse(data)?;
        let message = self.gw.api().send_message(&self.token.0, &req).await?;
        to_value(&MessageData { message })
    }

    async fn delete(&self, data: Value) -> Result<Value, GatewayError> {
        let req: DeleteMessage = parse(data)?;
        let id = parse_uuid(&req.message_id).ok_or(GatewayError::NotFound("message"))?;
        self.gw.api().delete_message(&self.token.0, id).await?;
        Ok(json!({}))
    }

    async fn typing(&self, conn: &ConnHandle, data: Value) -> Result<Value, GatewayError> {
        let req: Typing = parse(data)?;
        let community = community_id(&req.community_id)?;
        self.gw.hub().typing(community, conn, req.is_typing).await?;
        Ok(json!({}))
    }

    async fn subscribe_notifications(&self, conn: &ConnHandle) -> Result<Value, GatewayError> {
        self.gw.hub().subscribe_notifications(conn);
        let unread = self.gw.api().unread_count(&self.token.0).await?;
        Ok(json!({ "unreadCount": unread }))
    }
}

impl crate::socket::Session for Session {
    type Reply = Reply;

    async fn command(
        &mut self,
        conn: &Arc<ConnHandle>,
        kind: &str,
        data: Value,
    ) -> Result<Reply, GatewayError> {
        let data = match kind {
            "join-community" => return self.join(conn, data).await.map(Reply::Joined),
            "leave-community" => self.leave(conn, data).await,
            "send-message" => self.send(data).await,
            "delete-message" => self.delete(data).await,
            "typing" => self.typing(conn, data).await,
            "subscribe-notifications" => self.subscribe_notifications(conn).await,
            other => Err(GatewayError::BadRequest(format!("unknown type {other:?}"))),
        };
        data.map(Reply::Data)
    }

    async fn end(self, conn: &Arc<ConnHandle>) {
        self.gw.hub().disconnect(conn, &self.joined).await;
    }
}

/// A command's ack data: a JSON value for most commands; a join's ack
/// typed, so that the room's shared online list is written straight into
/// the frame. Copied into a value first, the list (strings cloned, then
/// wrapped and dropped) took about a tenth of a gateway's CPU in a storm
/// of rejoins into rooms of 100.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Data(Value),
    Joined(Joined),
}

/// The contract's [`JoinAck`](chorus_shared::protocol::JoinAck), field for field (a test holds them to the
/// same wire form), with the online list shared with the room.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    community_id: Uuid,
    head_seq: i64,
    online: Online,
    recovered: bool,
    missed: i64,
}

/// The room's online list, and the joining user when it does not list
/// them yet (their own entry may still be on its way to Redis).
#[derive(Debug)]
struct Online {
    listed: Arc<Vec<String>>,
    me: Option<String>,
}

impl Serialize for Online {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.listed.len() + usize::from(self.me.is_some())))?;
        for user in self.listed.iter().chain(&self.me) {
            seq.serialize_element(user)?;
        }
        seq.end()
    }
}

fn parse<T: DeserializeOwned>(data: Value) -> Result<T, GatewayError> {
    serde_json::from_value(data).map_err(|e| GatewayError::BadRequest(format!("invalid data: {e}")))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, GatewayError> {
    serde_json::to_value(v).map_err(|e| GatewayError::Io(e.to_string()))
}

fn community_id(s: &str) -> Result<Uuid, GatewayError> {
    parse_uuid(s).ok_or(GatewayError::NotFound("community"))
}

#[cfg(test)]
mod tests {
    use chorus_shared::protocol::JoinAck;
    use serde::Deserialize;
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::codec::Encoding;

    #[test]
    fn a_join_reply_has_the_contracts_wire_form() {
        let listed = Arc::new(vec!["ann".to_owned(), "bob".to_owned()]);
        for me in [None, Some("cat".to_owned())] {
            let reply = Reply::Joined(Joined {
                community_id: Uuid::from_u128(7),
                head_seq: 42,
                online: Online {
                    listed: listed.clone(),
                    me: me.clone(),
                },
                recovered: true,
                missed: 3,
            });
            let want = JoinAck {
                community_id: Uuid::from_u128(7),
                head_seq: 42,
                online: listed.iter().cloned().chain(me).collect(),
                recovered: true,
                missed: 3,
            };
            let Message::Text(json) = Encoding::Json.encode(&reply) else {
                panic!("JSON is text");
            };
            assert_eq!(
                serde_json::from_str::<JoinAck>(&json).ok(),
                Some(want.clone())
            );
            let Message::Binary(packed) = Encoding::Msgpack.encode(&reply) else {
                panic!("MessagePack is binary");
            };
            let mut de = rmp_serde::Deserializer::from_read_ref(&packed[..]).with_human_readable();
            assert_eq!(JoinAck::deserialize(&mut de).ok(), Some(want));
        }
    }
}
