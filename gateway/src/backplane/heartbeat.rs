//! What a gateway tells Redis about itself, and learns about the others,
//! on its heartbeat: the registry report (`/api/socket-status`), the
//! presence incarnation's heartbeat, and which presence holders are dead,
//! all in one pipeline, so an idle gateway costs Redis one round trip per
//! [`Liveness::heartbeat`](crate::config::Liveness::heartbeat) and the
//! presence upkeep that follows needs no command of its own.
//!
//! On one Redis the pipeline also publishes to a channel of the gateway's
//! own: its subscriber hearing it every heartbeat is what keeps it from
//! being pinged (see `BACKPLANE_QUIET_BEFORE_PING`).
//!
//! Why one round trip: an idle Redis spends more on being woken up (an
//! `epoll` return, a read and a write per round trip) than on the commands
//! themselves. Separately, the report, the look for dead gateways
//! (`SMEMBERS` then one `EXISTS` per holder) and the registry sampling made
//! about five round trips a second for two gateways and an API, and Redis
//! idled above the peers'.
//!
//! The holders' keys checked are those listed at the previous heartbeat
//! (the list comes back in the same pipeline). When the list changed in
//! between, what the heartbeat found is incomplete and the upkeep looks for
//! itself, as it does when the last heartbeat is not recent: two round
//! trips, only after a gateway started or renewed its incarnation.

use std::collections::HashMap;

use chorus_shared::presence::{
    GATEWAY_IDS_KEY, HOLDERS_KEY, gateway_key, holder_key, reap_lock_key,
};
use chorus_shared::protocol::GatewayStatus;
use fred::prelude::*;
use tokio::time::Instant;

use super::Reaped;
use super::redis::{RedisBackplane, millis, redis_err};
use crate::config::{PRESENCE_REAP_LOCK, REGISTRY_TTL};
use crate::error::GatewayError;
use crate::sync::lock;

/// The presence holders as the last heartbeat saw them.
#[derive(Debug, Default)]
pub(super) struct Holders {
    /// Listed at the last heartbeat: the next one checks their keys.
    listed: Vec<String>,
    /// What the last heartbeat found, until the upkeep takes it.
    found: Option<Found>,
}

/// Holders listed but keyless (dead) at one heartbeat.
#[derive(Debug)]
struct Found {
    at: Instant,
    dead: Vec<String>,
}

impl RedisBackplane {
    /// The registry report and the presence heartbeat, with the look for
    /// dead holders: one pipeline.
    pub(super) async fn heartbeat(&self, status: &GatewayStatus) -> Result<(), GatewayError> {
        let json =
            serde_json::to_string(status).map_err(|e| GatewayError::Backplane(e.to_string()))?;
        let ttl = i64::try_from(REGISTRY_TTL.as_secs()).unwrap_or(15);
        let checked = lock(&self.holders).listed.clone();
        let p = self.cmd.pipeline();
        let _: () = p
            .set(
                gateway_key(&status.id),
                json,
                Some(Expiration::EX(ttl)),
                None,
                false,
            )
            .await
            .map_err(redis_err)?;
        let _: () = p
            .sadd(GATEWAY_IDS_KEY, status.id.as_str())
            .await
            .map_err(redis_err)?;
        // The heartbeat renews the incarnation's key only if it still
        // exists: a lapsed incarnation may be being reaped and must stay
        // dead.
        let heartbeat = self.incarnation.heartbeat();
        let sent = Instant::now();
        if let Some(name) = &heartbeat {
            let _: () = p
                .set(
                    holder_key(name),
                    self.incarnation.gateway_id(),
                    Some(Expiration::PX(millis(self.incarnation.liveness().ttl))),
                    Some(SetOptions::XX),
                    false,
                )
                .await
                .map_err(redis_err)?;
        }
        let _: () = p.smembers(HOLDERS_KEY).await.map_err(redis_err)?;
        for h in &checked {
            let _: () = p.exists(holder_key(h)).await.map_err(redis_err)?;
        }
        if !self.cluster {
            // Heard by our own subscriber: proof that it still delivers.
            let _: () = p
                .publish(&*self.health_channel, "")
                .await
                .map_err(redis_err)?;
        }
        let mut results = p.try_all::<Value>().await.into_iter();
        let report = [results.next(), results.next()];
        if let Some(name) = &heartbeat {
            match results.next() {
                Some(Ok(v)) if v.is_null() => {
                    tracing::warn!(incarnation = %name, "presence heartbeat lapsed; renewing");
                    self.incarnation.lapsed(name);
                }
                Some(Ok(_)) => self.incarnation.confirmed(name, sent),
                _ => {}
            }
        }
        self.note_holders(&checked, results);
        match report {
            [Some(Ok(_)), Some(Ok(_))] => Ok(()),
            [Some(Err(e)), _] | [_, Some(Err(e))] => Err(redis_err(e)),
            _ => Err(GatewayError::Backplane("no reply to the heartbeat".into())),
        }
    }

    /// Keeps what the heartbeat's replies say of the holders (see
    /// [`read_holders`]).
    fn note_holders(
        &self,
        checked: &[String],
        replies: impl Iterator<Item = Result<Value, Error>>,
    ) {
        let read = read_holders(checked, replies);
        let mut holders = lock(&self.holders);
        holders.found = None;
        if let Some((listed, dead)) = read {
            holders.listed = listed;
            holders.found = dead.map(|dead| Found {
                at: Instant::now(),
                dead,
            });
        }
    }

    /// Reaps the dead holders: those the last heartbeat found, when it is
    /// recent (two heartbeats), or else those a look of its own finds
    /// (`SMEMBERS`, then one `EXISTS` per holder). Each is taken under a
    /// lock, so one gateway reaps it.
    pub(super) async fn reap_dead(&self) -> Result<Vec<Reaped>, GatewayError> {
        let recent = 2 * self.incarnation.liveness().heartbeat();
        let found = lock(&self.holders)
            .found
            .take()
            .filter(|f| f.at.elapsed() <= recent);
        let dead = match found {
            Some(f) => f.dead,
            None => self.look_for_dead().await?,
        };
        let mut out = Vec::new();
        for h in &dead {
            let locked: Value = self
                .cmd
                .set(
                    reap_lock_key(h),
                    self.incarnation.gateway_id(),
                    Some(Expiration::PX(millis(PRESENCE_REAP_LOCK))),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(redis_err)?;
            if locked.is_null() {
                continue;
            }
            metrics::counter!("chorus_gateway_presence_reaps_total").increment(1);
            out.extend(self.reap(h).await?);
        }
        Ok(out)
    }

    /// Listed holders whose key is gone, read now.
    async fn look_for_dead(&self) -> Result<Vec<String>, GatewayError> {
        let holders: Vec<String> = self.cmd.smembers(HOLDERS_KEY).await.map_err(redis_err)?;
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        let p = self.cmd.pipeline();
        for h in &holders {
            let _: () = p.exists(holder_key(h)).await.map_err(redis_err)?;
        }
        let alive = p.try_all::<i64>().await;
        let mut dead = Vec::new();
        for (h, alive) in holders.iter().zip(alive) {
            if alive.map_err(redis_err)? == 0 {
                dead.push(h.clone());
            }
        }
        Ok(dead)
    }
}

/// Reads a heartbeat's `SMEMBERS` reply, then one `EXISTS` reply per holder
/// of `checked`: the holders listed now (`None` without that reply) and,
/// when each of them was checked and answered, those whose key is gone.
/// A holder listed since the last heartbeat leaves the dead unknown, for
/// the upkeep to look itself.
fn read_holders(
    checked: &[String],
    mut replies: impl Iterator<Item = Result<Value, Error>>,
) -> Option<(Vec<String>, Option<Vec<String>>)> {
    let listed = replies.next()?.ok()?.convert::<Vec<String>>().ok()?;
    let mut alive = HashMap::with_capacity(checked.len());
    let mut answered = true;
    for h in checked {
        match replies.next() {
            Some(Ok(v)) => {
                alive.insert(h.as_str(), v.as_i64().unwrap_or(1) != 0);
            }
            _ => answered = false,
        }
    }
    let complete = answered && listed.iter().all(|h| alive.contains_key(h.as_str()));
    let dead = complete.then(|| {
        listed
            .iter()
            .filter(|h| alive.get(h.as_str()) == Some(&false))
            .cloned()
            .collect()
    });
    Some((listed, dead))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn listed(v: &[&str]) -> Result<Value, Error> {
        Ok(Value::Array(v.iter().map(|s| Value::from(*s)).collect()))
    }

    fn exists(n: i64) -> Result<Value, Error> {
        Ok(Value::Integer(n))
    }

    #[test]
    fn a_listed_holder_whose_key_is_gone_is_dead() {
        let checked = names(&["a", "b", "c"]);
        let replies = vec![listed(&["a", "b"]), exists(1), exists(0), exists(0)];
        // "c" was reaped since: no longer listed, so not dead again.
        assert_eq!(
            read_holders(&checked, replies.into_iter()),
            Some((names(&["a", "b"]), Some(names(&["b"]))))
        );
    }

    #[test]
    fn a_holder_listed_since_the_last_heartbeat_leaves_the_dead_unknown() {
        let checked = names(&["a"]);
        let replies = vec![listed(&["a", "new"]), exists(1)];
        assert_eq!(
            read_holders(&checked, replies.into_iter()),
            Some((names(&["a", "new"]), None))
        );
        // The first heartbeat has checked nothing.
        let replies = vec![listed(&["a"])];
        assert_eq!(
            read_holders(&[], replies.into_iter()),
            Some((names(&["a"]), None))
        );
    }

    #[test]
    fn a_missing_or_failed_reply_finds_nothing() {
        let checked = names(&["a", "b"]);
        let failed = Err(Error::new(ErrorKind::Timeout, "slow"));
        let replies = vec![listed(&["a", "b"]), exists(0), failed];
        assert_eq!(
            read_holders(&checked, replies.into_iter()),
            Some((names(&["a", "b"]), None))
        );
        let replies = vec![listed(&["a", "b"]), exists(0)];
        assert_eq!(
            read_holders(&checked, replies.into_iter()),
            Some((names(&["a", "b"]), None))
        );
        assert_eq!(read_holders(&checked, Vec::new().into_iter()), None);
    }
}
