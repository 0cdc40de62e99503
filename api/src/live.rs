//! What the API reads of the gateways' live state in Redis: presence (for
//! `GET /api/communities/{id}/presence`) and the gateway registry (for
//! `GET /api/socket-status`). Gateways write both; the layout and scripts
//! are in `chorus_shared::presence`.
//!
//! Presence is served from a per-community snapshot at most
//! [`PRESENCE_SNAPSHOT_TTL`] old: a popular community's presence costs one
//! `HKEYS` per second, however many clients ask, and concurrent askers of
//! an expired snapshot share one read. Reaping dead gateways' users is the
//! gateways' job; the API only reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_shared::presence::{GATEWAY_IDS_KEY, gateway_key, users_key};
use chorus_shared::protocol::GatewayStatus;
use fred::prelude::{Client, HashesInterface, KeysInterface, SetsInterface};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::ApiError;

/// Longest a presence answer may lag the gateways' state. Presence changes
/// reach clients live as `user-joined`/`user-left`; the HTTP list is for a
/// first look, where a second is invisible, and it caps the Redis work per
/// community at one read per second.
pub const PRESENCE_SNAPSHOT_TTL: Duration = Duration::from_secs(1);

/// Communities whose snapshot is kept: ~10k lists of online users is a
/// few MiB at most. When full, expired snapshots are dropped first and, if
/// that is not enough, all of them (they are at most a second old anyway).
pub const PRESENCE_SNAPSHOTS: usize = 10_000;

/// One community's online users as read at `taken`; filled once, by the
/// first asker, while later askers wait for it.
struct Snapshot {
    taken: Instant,
    online: OnceCell<Arc<Vec<String>>>,
}

impl Snapshot {
    fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.taken) < PRESENCE_SNAPSHOT_TTL
    }
}

/// Reader of presence and registry data; shares the outbox's connection.
#[derive(Clone)]
pub struct LiveState {
    client: Client,
    snapshots: Arc<Mutex<HashMap<Uuid, Arc<Snapshot>>>>,
}

impl std::fmt::Debug for LiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveState").finish_non_exhaustive()
    }
}

fn unavailable(e: fred::error::Error) -> ApiError {
    tracing::warn!(error = %e, "redis read failed");
    ApiError::Unavailable("live state is unavailable, retry shortly")
}

impl LiveState {
    pub fn new(client: Client) -> Self {
        LiveState {
            client,
            snapshots: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Users online in a community, sorted, as of at most
    /// [`PRESENCE_SNAPSHOT_TTL`] ago.
    pub async fn online(&self, community: Uuid) -> Result<Arc<Vec<String>>, ApiError> {
        let snapshot = self.snapshot(community, Instant::now());
        // A failed read leaves the cell empty: the next asker tries again.
        let online = snapshot
            .online
            .get_or_try_init(|| async { self.read_online(community).await.map(Arc::new) })
            .await?;
        Ok(online.clone())
    }

    /// The community's snapshot if fresh, else a new empty one in its place.
    fn snapshot(&self, community: Uuid, now: Instant) -> Arc<Snapshot> {
        let mut map = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(&community).filter(|s| s.fresh(now)) {
            return s.clone();
        }
        if map.len() >= PRESENCE_SNAPSHOTS && !map.contains_key(&community) {
            map.retain(|_, s| s.fresh(now));
            if map.len() >= PRESENCE_SNAPSHOTS {
                map.clear();
            }
        }
        let s = Arc::new(Snapshot {
            taken: now,
            online: OnceCell::new(),
        });
        map.insert(community, s.clone());
        s
    }

    /// Reads the online users from Redis: the community's users hash.
    /// Users of a gateway that died stay in it until a surviving gateway
    /// reaps them (within the heartbeat TTL plus one reaping interval,
    /// ~20 s, announcing `user-left`); with no gateway alive at all no one
    /// can be connected, and the first gateway to start reaps them.
    async fn read_online(&self, community: Uuid) -> Result<Vec<String>, ApiError> {
        let mut users: Vec<String> = self
            .client
            .hkeys(users_key(&community))
            .await
            .map_err(unavailable)?;
        users.sort();
        Ok(users)
    }

    /// Gateways whose report has not expired. Ids whose report expired are
    /// removed from the id set as they are found.
    pub async fn gateways(&self) -> Result<Vec<GatewayStatus>, ApiError> {
        let ids: Vec<String> = self
            .client
            .smembers(GATEWAY_IDS_KEY)
            .await
            .map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| gateway_key(id)).collect();
        let reports: Vec<Option<String>> = self.client.mget(keys).await.map_err(unavailable)?;
        let mut out = Vec::new();
        for (id, report) in ids.iter().zip(reports) {
            match report.and_then(|r| serde_json::from_str::<GatewayStatus>(&r).ok()) {
                Some(status) => out.push(status),
                None => {
                    let _: Result<(), _> = self.client.srem(GATEWAY_IDS_KEY, id.as_str()).await;
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
