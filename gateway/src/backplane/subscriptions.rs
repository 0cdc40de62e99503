//! Keeping the Redis backplane's subscriptions whole: restoring them after
//! a reconnect (every channel, then every room reconciled) or after a
//! Redis Cluster slot moved (that slot's channels and rooms only), the
//! cluster's slot-map watch, and the per-shard pings that judge a
//! cluster's subscription live. The rest of the Redis backplane is in
//! `redis.rs`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fred::bytes_utils::Str;
use fred::prelude::*;
use fred::types::config::Options;
use fred::util::redis_keyslot;

use super::BackplaneSink;
use super::redis::RedisBackplane;
use crate::config::BACKPLANE_PING_TIMEOUT;

/// How often a gateway on Redis Cluster reads the slot map (one `CLUSTER
/// SLOTS`): the longest a migrated slot's rooms go unheard before they are
/// resubscribed and reconciled. A failover is seen sooner, by the broken
/// connection.
const CLUSTER_TOPOLOGY_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// First and longest wait before trying again when restoring
/// subscriptions failed (the shard may still be electing a new primary;
/// a Redis older than 7 never knows `SSUBSCRIBE`, and is not worth a
/// warning five times a second).
const RESUBSCRIBE_RETRY: std::time::Duration = std::time::Duration::from_millis(200);
const RESUBSCRIBE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Slot ranges of a Redis Cluster and the address of each one's primary.
pub(super) type SlotMap = Vec<(u16, u16, String)>;

impl RedisBackplane {
    /// Pings every primary of the cluster on the subscriber's own
    /// connections; answers how many answered and how many did not.
    pub(super) async fn ping_shards(&self) -> (usize, usize) {
        let primaries = self
            .sub
            .cached_cluster_state()
            .map(|s| s.unique_primary_nodes())
            .unwrap_or_default();
        metrics::counter!("chorus_gateway_backplane_pings_total").increment(primaries.len() as u64);
        let pings = primaries.into_iter().map(|server| {
            let node = self.sub.with_options(&Options {
                cluster_node: Some(server),
                timeout: Some(BACKPLANE_PING_TIMEOUT),
                ..Options::default()
            });
            async move { node.ping::<Value>(None).await.is_ok() }
        });
        let answers = futures_util::future::join_all(pings).await;
        let answered = answers.iter().filter(|ok| **ok).count();
        (answered, answers.len() - answered)
    }

    /// Resubscribes the channels in `scope` (on Redis Cluster, each on the
    /// shard owning it now), then has their communities reconciled: every
    /// community after a reconnect (`None`), only the moved slots' after a
    /// slot move. Channels whose subscription fails are tried again with a
    /// growing wait while the connection is up (a shard may still be
    /// electing a primary); the others are reconciled meanwhile.
    pub(super) async fn restore(&self, sink: &dyn BackplaneSink, scope: Option<&HashSet<u16>>) {
        if self.cluster && scope.is_none() {
            // What the subscriptions are made against, read before them:
            // a move during the restore still shows as a change.
            *lock(&self.slot_map) = self.slot_map();
        }
        let mut todo = self.tracked(scope);
        let mut wait = RESUBSCRIBE_RETRY;
        let mut first = true;
        loop {
            let failed = self.resubscribe(&todo).await;
            if first && scope.is_none() {
                // Nothing could be subscribed after a reconnect: not live
                // (a single Redis is all or nothing). A moved slot that
                // fails to resubscribe is that slot's trouble, not the
                // gateway's.
                self.live.store(
                    todo.is_empty() || failed.len() < todo.len(),
                    Ordering::SeqCst,
                );
            }
            if first && scope.is_none() && failed.is_empty() {
                sink.on_resync();
            } else {
                let done: Vec<String> = todo
                    .iter()
                    .filter(|c| !failed.contains(*c))
                    .map(|c| c.to_string())
                    .collect();
                if !done.is_empty() {
                    sink.on_resync_channels(&done);
                }
            }
            if failed.is_empty() || !self.sub.is_connected() {
                // Done, or the next reconnect restores everything.
                return;
            }
            tracing::warn!(
                channels = failed.len(),
                "restoring backplane subscriptions failed; retrying"
            );
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RESUBSCRIBE_RETRY_MAX);
            todo = failed;
            first = false;
        }
    }

    /// The channels this gateway is subscribed to, or those of them in
    /// the given hash slots.
    fn tracked(&self, slots: Option<&HashSet<u16>>) -> Vec<Str> {
        if !self.cluster {
            return self.sub.tracked_channels().into_iter().collect();
        }
        self.sub
            .tracked_shard_channels()
            .into_iter()
            .filter(|c| slots.is_none_or(|s| s.contains(&redis_keyslot(c.as_bytes()))))
            .collect()
    }

    /// Subscribes again to `channels`: on Redis Cluster one `SSUBSCRIBE`
    /// per hash slot (a command's channels must share one), every slot
    /// tried; on one Redis one `SUBSCRIBE` for all, then a `PING`, whose
    /// answer says Redis applied it (fred answers `SUBSCRIBE` once sent),
    /// before the resync that follows reads what was missed. (fred's own
    /// `resubscribe_all` stops at the first failure and sends an empty
    /// `SUBSCRIBE` when there is nothing classic to restore, which Redis
    /// refuses.) Returns the channels that failed.
    async fn resubscribe(&self, channels: &[Str]) -> Vec<Str> {
        if channels.is_empty() {
            return Vec::new();
        }
        if !self.cluster {
            let applied = match self.sub.subscribe(channels.to_vec()).await {
                Ok(()) => self.sub.ping::<Value>(None).await.map(drop),
                Err(e) => Err(e),
            };
            return match applied {
                Ok(()) => Vec::new(),
                Err(e) => {
                    tracing::debug!(error = %e, "resubscribing failed");
                    channels.to_vec()
                }
            };
        }
        let mut by_slot: BTreeMap<u16, Vec<Str>> = BTreeMap::new();
        for c in channels {
            by_slot
                .entry(redis_keyslot(c.as_bytes()))
                .or_default()
                .push(c.clone());
        }
        let mut failed = Vec::new();
        for (_, group) in by_slot {
            if let Err(e) = self.sub.ssubscribe(group.clone()).await {
                tracing::debug!(error = %e, "resubscribing a slot failed");
                failed.extend(group);
            }
        }
        failed
    }

    /// The slot map fred routes by now (Redis Cluster only).
    fn slot_map(&self) -> Option<SlotMap> {
        let state = self.sub.cached_cluster_state()?;
        Some(
            state
                .slots()
                .iter()
                .map(|r| (r.start, r.end, r.primary.to_string()))
                .collect(),
        )
    }

    /// Redis Cluster only: reads the slot map every
    /// [`CLUSTER_TOPOLOGY_CHECK`] and, for the slots that changed owner,
    /// restores the subscriptions and reconciles their communities.
    pub(super) async fn watch_topology(&self, sink: Arc<dyn BackplaneSink>) {
        let mut tick = tokio::time::interval(CLUSTER_TOPOLOGY_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.sub.is_connected() {
                continue;
            }
            if let Err(e) = self.sub.sync_cluster().await {
                tracing::debug!(error = %e, "reading the cluster's slot map failed");
                continue;
            }
            let Some(now) = self.slot_map() else {
                continue;
            };
            let moved = {
                let mut known = lock(&self.slot_map);
                let moved = known.as_ref().map(|k| moved_slots(k, &now));
                *known = Some(now);
                moved.unwrap_or_default()
            };
            if !moved.is_empty() {
                metrics::counter!("chorus_gateway_backplane_topology_changes_total").increment(1);
                tracing::info!(
                    slots = moved.len(),
                    "redis cluster slots moved; resubscribing and reconciling their rooms"
                );
                self.restore(sink.as_ref(), Some(&moved)).await;
            }
        }
    }
}

/// The slots whose primary differs between two slot maps (a slot served
/// in one and not the other counts as moved).
fn moved_slots(before: &SlotMap, after: &SlotMap) -> HashSet<u16> {
    fn owners(map: &SlotMap) -> Vec<Option<&str>> {
        let mut owner = vec![None; usize::from(u16::MAX) + 1];
        for (start, end, primary) in map {
            for slot in *start..=*end {
                owner[usize::from(slot)] = Some(primary.as_str());
            }
        }
        owner.truncate(CLUSTER_SLOTS);
        owner
    }
    let (a, b) = (owners(before), owners(after));
    (0..CLUSTER_SLOTS)
        .filter(|&i| a[i] != b[i])
        .filter_map(|i| u16::try_from(i).ok())
        .collect()
}

/// Hash slots of a Redis Cluster.
const CLUSTER_SLOTS: usize = 16_384;

use crate::sync::lock;
