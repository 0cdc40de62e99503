//! What a run needs before it connects: users with tokens, communities
//! and memberships (created through Chorus's own API, as a client would:
//! each room's first user creates it, the others join it), or, for the
//! peers, just community names (they check no membership).

use std::time::Duration;

use anyhow::{Context, bail};
use chorus_shared::auth::{Role, claims_for, mint_hs256};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Deserialize;

use crate::client::Proto;

/// Requests in flight while setting up: enough to make setup quick, few
/// enough to stay inside the API's connection pool without timeouts.
const SETUP_CONCURRENCY: usize = 32;
/// Tokens are valid this long: longer than any bounded run.
const TOKEN_TTL_S: u64 = 24 * 3600;
/// Retries of a request the API rate-limited (it says how long to wait).
const SETUP_RETRIES: u32 = 50;

/// A user of the run.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub token: String,
}

/// A community and its members (indices into [`World::users`]).
#[derive(Debug, Clone)]
pub struct Room {
    pub id: String,
    pub members: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct World {
    pub users: Vec<User>,
    pub rooms: Vec<Room>,
}

/// Mints a token for `sub` (HS256 with the servers' secret; the peers
/// read `sub` and `name` from the same claims).
pub fn token(secret: &str, sub: &str) -> anyhow::Result<String> {
    Ok(mint_hs256(
        secret,
        &claims_for(sub, Some(sub), Role::Member, TOKEN_TTL_S),
    )?)
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

/// `users` users in rooms of `room_size` (the last may be smaller), every
/// user in exactly one room. `run` keeps names apart between runs.
pub async fn world(
    proto: Proto,
    api: &str,
    secret: &str,
    run: &str,
    users: usize,
    room_size: usize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<World> {
    let room_size = room_size.max(1);
    let users: Vec<User> = (0..users)
        .map(|i| {
            let id = format!("lt{run}u{i}");
            Ok(User {
                token: token(secret, &id)?,
                id,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut rooms: Vec<Room> = (0..users.len().div_ceil(room_size))
        .map(|r| Room {
            id: format!("lt{run}c{r}"),
            members: (r * room_size..((r + 1) * room_size).min(users.len())).collect(),
        })
        .collect();
    if proto == Proto::Socketio {
        return Ok(World { users, rooms });
    }
    let http = reqwest::Client::new();
    bar.set_length((rooms.len() + users.len()) as u64);
    bar.set_message("creating communities");
    let ids: Vec<String> = stream::iter(rooms.iter().map(|room| {
        let (http, owner, name) = (&http, &users[room.members[0]], room.id.clone());
        async move {
            let body = serde_json::json!({"name": name, "isPublic": true});
            let c: Created = post(http, &format!("{api}/api/communities"), &owner.token, &body)
                .await?
                .json()
                .await?;
            bar.inc(1);
            anyhow::Ok(c.id)
        }
    }))
    .buffered(SETUP_CONCURRENCY)
    .try_collect()
    .await?;
    for (room, id) in rooms.iter_mut().zip(ids) {
        room.id = id;
    }
    bar.inc(rooms.len() as u64);
    bar.set_message("joining members");
    let joins = rooms.iter().flat_map(|room| {
        room.members
            .iter()
            .skip(1)
            .map(move |m| (room.id.clone(), *m))
    });
    stream::iter(joins.map(|(id, m)| {
        let (http, user) = (&http, &users[m]);
        async move {
            post(
                http,
                &format!("{api}/api/communities/{id}/join"),
                &user.token,
                &serde_json::json!({}),
            )
            .await?;
            bar.inc(1);
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(SETUP_CONCURRENCY)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(World { users, rooms })
}

/// POSTs with retries on 429 (after `Retry-After`) and 503.
async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<reqwest::Response> {
    for _ in 0..SETUP_RETRIES {
        let r = http
            .post(url)
            .bearer_auth(token)
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = r.status().as_u16();
        if status == 429 || status == 503 {
            let wait = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait.clamp(1, 5))).await;
            continue;
        }
        if !r.status().is_success() {
            bail!(
                "POST {url}: {status} {}",
                r.text().await.unwrap_or_default()
            );
        }
        return Ok(r);
    }
    bail!("POST {url}: still rate-limited after {SETUP_RETRIES} tries")
}

/// Head seq of every community the `owner`s belong to (Chorus), read from
/// `GET /api/communities` of each room's first member.
pub async fn heads(
    api: &str,
    world: &World,
) -> anyhow::Result<std::collections::HashMap<String, i64>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct C {
        id: String,
        head_seq: i64,
    }
    #[derive(Deserialize)]
    struct L {
        communities: Vec<C>,
    }
    let http = reqwest::Client::new();
    let lists: Vec<L> = stream::iter(world.rooms.iter().map(|room| {
        let (http, owner) = (&http, &world.users[room.members[0]]);
        async move {
            let r = http
                .get(format!("{api}/api/communities"))
                .bearer_auth(&owner.token)
                .timeout(Duration::from_secs(30))
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(r.json::<L>().await?)
        }
    }))
    .buffered(SETUP_CONCURRENCY)
    .try_collect()
    .await?;
    Ok(lists
        .into_iter()
        .flat_map(|l| l.communities)
        .map(|c| (c.id, c.head_seq))
        .collect())
}
