//! What the API reads of the gateways' live state in Redis: presence (for
//! `GET /api/communities/{id}/presence`) and the gateway registry (for
//! `GET /api/socket-status`). Gateways write both; the layout and scripts
//! are in `chorus_shared::presence`.

use bytes::Bytes;
use chorus_shared::envelope::{Envelope, community_channel};
use chorus_shared::presence::{GATEWAY_IDS_KEY, SWEEP_SCRIPT, conns_key, gateway_key, users_key};
use chorus_shared::protocol::{GatewayStatus, ServerEvent, UserLeft};
use fred::prelude::{
    Client, HashesInterface, KeysInterface, LuaInterface, PubsubInterface, SetsInterface, Value,
};
use uuid::Uuid;

use crate::error::ApiError;

/// Reader of presence and registry data; shares the outbox's connection.
#[derive(Clone)]
pub struct LiveState {
    client: Client,
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
        LiveState { client }
    }

    /// Users online in a community. Entries of gateways that died are
    /// swept first (announcing `user-left` for users who thereby went
    /// offline), so a community no live gateway serves is still right.
    pub async fn online(&self, community: Uuid) -> Result<Vec<String>, ApiError> {
        let swept: Vec<Value> = self
            .client
            .eval(
                SWEEP_SCRIPT,
                vec![conns_key(&community), users_key(&community)],
                Vec::<String>::new(),
            )
            .await
            .map_err(unavailable)?;
        for user in swept.into_iter().skip(1).filter_map(|v| v.into_string()) {
            let env = Envelope::new(
                Some(community),
                None,
                chrono::Utc::now().timestamp_millis(),
                ServerEvent::UserLeft(UserLeft {
                    community_id: community,
                    user_id: user,
                }),
            );
            let _: Result<(), _> = self
                .client
                .publish(community_channel(&community), Bytes::from(env.encode()))
                .await;
        }
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
