//! [`MemoryApi`]: an in-process API with the real sequencing rules.
//!
//! Each community has one gap-free sequence shared by creations and
//! deletions, as in Postgres; backfill leaves out creations of messages
//! deleted since, as the API does. A commit returns the [`Publication`]
//! the outbox would send, so a test decides whether it is published, in
//! which order, or dropped; with [`MemoryApi::publish_to`] commits made
//! through the [`Api`] trait are published at once, like a healthy outbox.
//! Backfill can be held to line races up deterministically.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use chorus_shared::envelope::{Envelope, community_channel, user_channel};
use chorus_shared::protocol::{
    CommunityAccess, EventsPage, MAX_EVENTS_PER_REQUEST, MemberRole, MembershipRevoked, Message,
    MessageData, MessageDeleted, SendMessage, Sender, SequencedEventBody, ServerEvent,
};
use tokio::sync::watch;
use uuid::Uuid;

use super::Api;
use crate::backplane::Backplane;
use crate::error::GatewayError;

/// An event as the outbox would publish it.
#[derive(Debug, Clone)]
pub struct Publication {
    pub channel: String,
    pub payload: Bytes,
    /// The event's seq, for sequenced community events.
    pub seq: Option<i64>,
}

enum Entry {
    Created(Message),
    Deleted(Uuid),
}

#[derive(Default)]
struct Community {
    head: i64,
    members: HashMap<String, MemberRole>,
    log: BTreeMap<i64, Entry>,
    deleted: HashSet<Uuid>,
}

#[derive(Default)]
struct State {
    communities: HashMap<Uuid, Community>,
    /// Token → (user id, name).
    tokens: HashMap<String, (String, String)>,
    /// Message id → community.
    messages: HashMap<Uuid, Uuid>,
}

/// An in-process API; cheap to share behind an `Arc`.
pub struct MemoryApi {
    state: Mutex<State>,
    /// Backfill requests wait while this is false.
    backfill_open: watch::Sender<bool>,
    backfills: AtomicU64,
    accesses: AtomicU64,
    /// Backfill requests still to fail (an API that is away).
    failures: AtomicU64,
    publisher: Mutex<Option<Arc<dyn Backplane>>>,
}

impl std::fmt::Debug for MemoryApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryApi")
            .field("backfills", &self.backfills())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryApi {
    fn default() -> Self {
        MemoryApi {
            state: Mutex::new(State::default()),
            backfill_open: watch::Sender::new(true),
            backfills: AtomicU64::new(0),
            accesses: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            publisher: Mutex::new(None),
        }
    }
}

fn envelope(community: Option<Uuid>, seq: Option<i64>, event: ServerEvent) -> Bytes {
    let ts = chrono::Utc::now().timestamp_millis();
    Bytes::from(Envelope::new(community, seq, ts, event).encode())
}

impl MemoryApi {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes every later commit made through the [`Api`] trait on
    /// `backplane` right after it, like a healthy outbox.
    pub fn publish_to(&self, backplane: Arc<dyn Backplane>) {
        *self.publisher.lock().unwrap_or_else(|p| p.into_inner()) = Some(backplane);
    }

    /// Creates a community owned by `owner`.
    pub fn create_community(&self, owner: &str) -> Uuid {
        let id = Uuid::now_v7();
        let mut c = Community::default();
        c.members.insert(owner.to_owned(), MemberRole::Owner);
        self.state().communities.insert(id, c);
        id
    }

    pub fn add_member(&self, community: Uuid, user: &str) {
        if let Some(c) = self.state().communities.get_mut(&community) {
            c.members
                .entry(user.to_owned())
                .or_insert(MemberRole::Member);
        }
    }

    /// Removes a member; the `membership-revoked` event for their channel.
    pub fn remove_member(&self, community: Uuid, user: &str) -> Publication {
        if let Some(c) = self.state().communities.get_mut(&community) {
            c.members.remove(user);
        }
        let event = ServerEvent::MembershipRevoked(MembershipRevoked {
            community_id: community,
        });
        Publication {
            channel: user_channel(user),
            payload: envelope(Some(community), None, event),
            seq: None,
        }
    }

    /// Makes `token` stand for `user` in writes made on a user's behalf.
    pub fn add_token(&self, token: &str, user: &str, name: &str) {
        self.state()
            .tokens
            .insert(token.to_owned(), (user.to_owned(), name.to_owned()));
    }

    /// Commits a message at the next seq; its publication.
    pub fn post(&self, community: Uuid, sender: &str, content: &str) -> Publication {
        self.try_post(community, sender, sender, content)
            .map(|(_, p)| p)
            .unwrap_or_else(|e| panic!("posting in {community}: {e}"))
    }

    fn try_post(
        &self,
        community: Uuid,
        sender: &str,
        name: &str,
        content: &str,
    ) -> Result<(Message, Publication), GatewayError> {
        let mut st = self.state();
        let c = st
            .communities
            .get_mut(&community)
            .ok_or(GatewayError::NotFound("community"))?;
        if !c.members.contains_key(sender) {
            return Err(GatewayError::Forbidden(
                "only members can post in this community",
            ));
        }
        c.head += 1;
        let seq = c.head;
        let message = Message {
            id: Uuid::now_v7(),
            community_id: community,
            seq,
            sender: Sender {
                id: sender.to_owned(),
                name: name.to_owned(),
                avatar: None,
            },
            content: content.to_owned(),
            mentions: Vec::new(),
            created_at: chrono::Utc::now(),
        };
        c.log.insert(seq, Entry::Created(message.clone()));
        st.messages.insert(message.id, community);
        let event = ServerEvent::NewMessage(MessageData {
            message: message.clone(),
        });
        let publication = Publication {
            channel: community_channel(&community),
            payload: envelope(Some(community), Some(seq), event),
            seq: Some(seq),
        };
        Ok((message, publication))
    }

    /// Deletes a message at the next seq; its publication.
    pub fn delete(&self, message: Uuid) -> Result<Publication, GatewayError> {
        let mut st = self.state();
        let community = *st
            .messages
            .get(&message)
            .ok_or(GatewayError::NotFound("message"))?;
        let c = st
            .communities
            .get_mut(&community)
            .ok_or(GatewayError::NotFound("community"))?;
        if !c.deleted.insert(message) {
            return Err(GatewayError::NotFound("message"));
        }
        c.head += 1;
        let seq = c.head;
        c.log.insert(seq, Entry::Deleted(message));
        let event = ServerEvent::MessageDeleted(MessageDeleted {
            community_id: community,
            message_id: message,
            seq,
        });
        Ok(Publication {
            channel: community_channel(&community),
            payload: envelope(Some(community), Some(seq), event),
            seq: Some(seq),
        })
    }

    /// Who sent a message.
    fn sender_of(&self, message: Uuid) -> Option<String> {
        let st = self.state();
        let c = st.communities.get(st.messages.get(&message)?)?;
        c.log.values().find_map(|e| match e {
            Entry::Created(m) if m.id == message => Some(m.sender.id.clone()),
            _ => None,
        })
    }

    /// The community's head seq.
    pub fn head(&self, community: Uuid) -> i64 {
        self.state()
            .communities
            .get(&community)
            .map_or(0, |c| c.head)
    }

    /// Makes backfill requests wait until [`MemoryApi::release_backfill`].
    pub fn hold_backfill(&self) {
        self.backfill_open.send_replace(false);
    }

    pub fn release_backfill(&self) {
        self.backfill_open.send_replace(true);
    }

    /// Makes the next `n` backfill requests fail with `unavailable`.
    pub fn fail_backfills(&self, n: u64) {
        self.failures.store(n, Ordering::SeqCst);
    }

    /// Access checks received so far.
    pub fn accesses(&self) -> u64 {
        self.accesses.load(Ordering::SeqCst)
    }

    /// Backfill requests received so far (held ones included).
    pub fn backfills(&self) -> u64 {
        self.backfills.load(Ordering::SeqCst)
    }

    fn user_of(&self, token: &str) -> Result<(String, String), GatewayError> {
        self.state()
            .tokens
            .get(token)
            .cloned()
            .ok_or(GatewayError::Api {
                code: chorus_shared::error::ErrorCode::Unauthorized,
                message: "unknown token".into(),
            })
    }

    async fn publish(&self, p: Publication) {
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(b) = publisher {
            // Like the outbox while Redis is away, a failed publish is
            // left to the gateways' gap filling.
            let _ = b.publish(&p.channel, p.payload).await;
        }
    }
}

#[async_trait]
impl Api for MemoryApi {
    async fn access(&self, community: Uuid, user: &str) -> Result<CommunityAccess, GatewayError> {
        self.accesses.fetch_add(1, Ordering::SeqCst);
        let st = self.state();
        let c = st
            .communities
            .get(&community)
            .ok_or(GatewayError::NotFound("community"))?;
        Ok(CommunityAccess {
            community_id: community,
            is_public: false,
            head_seq: c.head,
            role: c.members.get(user).copied(),
        })
    }

    async fn events(
        &self,
        community: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<EventsPage, GatewayError> {
        self.backfills.fetch_add(1, Ordering::SeqCst);
        if !(1..=MAX_EVENTS_PER_REQUEST).contains(&limit) {
            return Err(GatewayError::Api {
                code: chorus_shared::error::ErrorCode::BadRequest,
                message: format!("limit must be between 1 and {MAX_EVENTS_PER_REQUEST}"),
            });
        }
        let mut open = self.backfill_open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(GatewayError::Unavailable("api away (injected)".into()));
        }
        let st = self.state();
        let c = st
            .communities
            .get(&community)
            .ok_or(GatewayError::NotFound("community"))?;
        let limit = usize::try_from(limit).unwrap_or(0);
        let events = c
            .log
            .range(after.saturating_add(1)..)
            .filter_map(|(&seq, e)| match e {
                Entry::Created(m) if c.deleted.contains(&m.id) => None,
                Entry::Created(m) => Some(SequencedEventBody {
                    seq,
                    event: ServerEvent::NewMessage(MessageData { message: m.clone() }),
                }),
                Entry::Deleted(id) => Some(SequencedEventBody {
                    seq,
                    event: ServerEvent::MessageDeleted(MessageDeleted {
                        community_id: community,
                        message_id: *id,
                        seq,
                    }),
                }),
            })
            .take(limit)
            .collect();
        Ok(EventsPage {
            head_seq: c.head,
            events,
        })
    }

    async fn send_message(
        &self,
        user_token: &str,
        body: &SendMessage,
    ) -> Result<Message, GatewayError> {
        let (user, name) = self.user_of(user_token)?;
        let community = chorus_shared::ids::parse_uuid(&body.community_id)
            .ok_or(GatewayError::NotFound("community"))?;
        let (message, publication) = self.try_post(community, &user, &name, &body.content)?;
        self.publish(publication).await;
        Ok(message)
    }

    async fn delete_message(&self, user_token: &str, id: Uuid) -> Result<(), GatewayError> {
        let (user, _) = self.user_of(user_token)?;
        if self.sender_of(id).is_some_and(|s| s != user) {
            return Err(GatewayError::Forbidden(
                "only the sender or an official can delete this message",
            ));
        }
        let publication = self.delete(id)?;
        self.publish(publication).await;
        Ok(())
    }

    async fn unread_count(&self, user_token: &str) -> Result<i64, GatewayError> {
        self.user_of(user_token)?;
        Ok(0)
    }
}
