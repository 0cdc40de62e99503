//! Posts that publish themselves: the post writer publishes a committed
//! batch's clean events (nothing earlier on their channel unpublished; see
//! the migration `20261205000002_posts_publish_themselves.sql`) from
//! memory, right after the commit, instead of waking the publisher to read
//! them back, publish them and mark them. Whichever writer sends the next
//! batch marks them in that batch's statement. The outbox row stays the
//! guarantee: an event whose publication fails, or whose process dies
//! first, is found unpublished and published by the publisher.
//!
//! [`DirectPublish`] is what the writers and this process's publisher
//! share so the two paths neither repeat nor reorder each other's events:
//! - the ids a writer claimed (right after its commit, before it answers
//!   anyone) and has not marked yet, which the publisher leaves out of its
//!   reads (no repeats), and of those the ones waiting for a writer to
//!   mark them;
//! - a gate: a writer holds it shared from its claim until its publication
//!   is done, and the publisher takes it exclusively between its read and
//!   its publication, so a later event it publishes (one that was not
//!   clean because ours was not marked yet) goes out after ours;
//! - a count of given-up publications, changed together with the ids
//!   (under one lock): a pass that left out an id given up on since its
//!   read publishes nothing and reads again, with those rows back in.
//!
//! A writer does not wait for Redis: it hands the claim to a task of its
//! own and goes on with the next batch, so a slow Redis never holds up a
//! post. That task waits at most [`DIRECT_PUBLISH_TIMEOUT`]; what did not
//! go out by then is left to the publisher, like a refusal (if the
//! publication still goes out later, gateways drop it as a repeat). Two
//! such tasks never publish on the same channel at once: a later post of
//! the channel is not clean while the earlier one is unmarked.
//!
//! Another API replica's publisher does not know this process's ids: it
//! may publish an event of ours again (gateways drop repeats), never out of
//! order, since it reads in id order.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock};

use super::{OutboxSink, Publication};

/// Longest a writer's publication waits for Redis to accept the events. A
/// healthy Redis answers in well under a millisecond; while one is
/// stalled, the claimed events hold up the publisher's passes (which wait
/// for claims) at most this long, and only until their channels' events
/// wait unpublished, after which they take the publisher's path.
pub const DIRECT_PUBLISH_TIMEOUT: Duration = Duration::from_millis(100);

/// A committed event a writer publishes itself.
#[derive(Debug)]
pub struct DirectEvent {
    /// Its outbox row.
    pub id: i64,
    pub channel: String,
    pub payload: Vec<u8>,
    /// When its post was created, for the publish lag.
    pub created_at: DateTime<Utc>,
}

/// The state the post writers and the publisher of one process share.
pub struct DirectPublish {
    sink: Arc<dyn OutboxSink>,
    gate: Arc<RwLock<()>>,
    state: Mutex<State>,
    /// Told when published events start waiting to be marked.
    marks_ready: Notify,
}

#[derive(Default)]
struct State {
    /// Claimed by a writer (being published, or published), not marked.
    unmarked: HashSet<i64>,
    /// Published, waiting for a writer to mark them.
    to_mark: Vec<i64>,
    /// Publications given up on so far.
    given_up: u64,
}

/// A writer's claim on events it has committed and is about to publish:
/// the publisher leaves them out and waits for them until it is used.
#[derive(Debug)]
pub struct Claim {
    _gate: OwnedRwLockReadGuard<()>,
}

impl std::fmt::Debug for DirectPublish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectPublish")
            .field("unmarked", &self.state().unmarked.len())
            .finish_non_exhaustive()
    }
}

impl DirectPublish {
    pub fn new(sink: Arc<dyn OutboxSink>) -> Arc<Self> {
        Arc::new(DirectPublish {
            sink,
            gate: Arc::new(RwLock::new(())),
            state: Mutex::new(State::default()),
            marks_ready: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims committed events, before anyone is told they exist: from now
    /// on the publisher leaves them out, and waits for the claim to be
    /// [published](DirectPublish::publish).
    pub async fn claim(&self, events: &[DirectEvent]) -> Claim {
        let gate = self.gate.clone().read_owned().await;
        self.state().unmarked.extend(events.iter().map(|e| e.id));
        Claim { _gate: gate }
    }

    /// Publishes the claimed events (each channel's in order); what Redis
    /// accepted waits for a writer to mark it. An event counts only when
    /// every earlier one of its channel in the batch was accepted too; the
    /// rest are given up on, left to the publisher, and the answer is false
    /// (the caller wakes the publisher).
    pub async fn publish(&self, claim: Claim, events: Vec<DirectEvent>) -> bool {
        let created: Vec<DateTime<Utc>> = events.iter().map(|e| e.created_at).collect();
        let (ids, batch): (Vec<i64>, Vec<(String, Vec<u8>)>) = events
            .into_iter()
            .map(|e| (e.id, (e.channel, e.payload)))
            .unzip();
        let accepted =
            match tokio::time::timeout(DIRECT_PUBLISH_TIMEOUT, self.sink.publish(&batch)).await {
                Ok(Publication::PerEntry(accepted)) => accepted,
                Ok(Publication::Away) | Err(_) => Vec::new(),
            };
        let mut refused: HashSet<&str> = HashSet::new();
        let mut published = Vec::with_capacity(ids.len());
        let mut given_up = Vec::new();
        let now = Utc::now();
        for (i, (id, (channel, _))) in ids.iter().zip(&batch).enumerate() {
            if accepted.get(i).copied().unwrap_or(false) && !refused.contains(channel.as_str()) {
                published.push(*id);
                let lag = created
                    .get(i)
                    .map(|c| (now - *c).to_std().unwrap_or_default());
                metrics::histogram!("chorus_outbox_publish_lag_seconds")
                    .record(lag.unwrap_or_default().as_secs_f64());
            } else {
                refused.insert(channel.as_str());
                given_up.push(*id);
            }
        }
        metrics::counter!("chorus_outbox_published_directly_total")
            .increment(published.len() as u64);
        {
            let mut state = self.state();
            if !given_up.is_empty() {
                // The count and the ids change together: a publisher whose
                // read left one of these out sees the count changed.
                state.given_up += 1;
                for id in &given_up {
                    state.unmarked.remove(id);
                }
            }
            state.to_mark.extend(published);
        }
        drop(claim);
        self.marks_ready.notify_one();
        given_up.is_empty()
    }

    /// Resolves when published events may have started waiting to be
    /// marked (for a writer that was waiting without a deadline).
    pub async fn marks_ready(&self) {
        self.marks_ready.notified().await;
    }

    /// Ids that are marked now, or given up on: the publisher may read
    /// them again.
    pub fn forget(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        let mut state = self.state();
        for id in ids {
            state.unmarked.remove(id);
        }
    }

    /// Whether published events wait to be marked.
    pub fn marks_pending(&self) -> bool {
        !self.state().to_mark.is_empty()
    }

    /// The published events to mark, for the writer that marks them (and
    /// then [`DirectPublish::forget`]s them, whether that worked or not).
    pub fn take_marks(&self) -> Vec<i64> {
        std::mem::take(&mut self.state().to_mark)
    }

    /// For the publisher, before its read: how many publications were
    /// given up on so far, and the ids to leave out.
    pub(super) fn before_read(&self) -> (u64, Vec<i64>) {
        let state = self.state();
        (state.given_up, state.unmarked.iter().copied().collect())
    }

    /// For the publisher, after its read: waits for the publications in
    /// flight, and says whether the read still holds (nothing was given up
    /// on since [`DirectPublish::before_read`], so every id it left out is
    /// in Redis).
    pub(super) async fn settle(&self, given_up: u64) -> bool {
        drop(self.gate.write().await);
        self.state().given_up == given_up
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;

    /// Accepts everything except one channel's entries.
    struct RefusingOne(&'static str);

    #[async_trait]
    impl OutboxSink for RefusingOne {
        async fn publish(&self, batch: &[(String, Vec<u8>)]) -> Publication {
            Publication::PerEntry(batch.iter().map(|(c, _)| c != self.0).collect())
        }
    }

    fn event(id: i64, channel: &str) -> DirectEvent {
        DirectEvent {
            id,
            channel: channel.to_owned(),
            payload: vec![id as u8],
            created_at: Utc::now(),
        }
    }

    /// Never answers: Redis stalled.
    struct Stalled;

    #[async_trait]
    impl OutboxSink for Stalled {
        async fn publish(&self, _: &[(String, Vec<u8>)]) -> Publication {
            std::future::pending().await
        }
    }

    async fn publish(d: &DirectPublish, events: Vec<DirectEvent>) -> bool {
        let claim = d.claim(&events).await;
        d.publish(claim, events).await
    }

    #[tokio::test]
    async fn a_refused_channel_is_left_to_the_publisher_from_its_first_refusal() {
        let d = DirectPublish::new(Arc::new(RefusingOne("b")));
        let events = vec![event(1, "a"), event(2, "b"), event(3, "a"), event(4, "b")];
        let claim = d.claim(&events).await;
        // A publisher reading now leaves all four out.
        let (given_up, mut skip) = d.before_read();
        skip.sort_unstable();
        assert_eq!(skip, vec![1, 2, 3, 4], "claimed: left out");
        assert!(!d.publish(claim, events).await);
        assert!(
            !d.settle(given_up).await,
            "a read that left out 2 and 4 does not hold once they are given up on"
        );
        let (given_up, mut skip) = d.before_read();
        skip.sort_unstable();
        assert_eq!(skip, vec![1, 3], "published, not marked yet: left out");
        assert!(d.settle(given_up).await, "a read after the refusal holds");
        assert_eq!(d.take_marks(), vec![1, 3]);
        assert!(!d.marks_pending(), "taken by one writer");
        d.forget(&[1, 3]);
        assert!(d.before_read().1.is_empty(), "marked: nothing left out");
    }

    #[tokio::test]
    async fn the_publisher_waits_for_claims_to_be_published() {
        let d = DirectPublish::new(Arc::new(RefusingOne("none")));
        let events = vec![event(1, "a")];
        let claim = d.claim(&events).await;
        let (given_up, _) = d.before_read();
        let settle = d.settle(given_up);
        tokio::pin!(settle);
        assert!(
            futures_util::FutureExt::now_or_never(settle.as_mut()).is_none(),
            "waits while a claim is not published"
        );
        assert!(d.publish(claim, events).await);
        assert!(settle.await);
        assert_eq!(d.take_marks(), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_redis_is_given_up_on_after_the_timeout() {
        let d = DirectPublish::new(Arc::new(Stalled));
        let (given_up, _) = d.before_read();
        assert!(!publish(&d, vec![event(1, "a")]).await);
        assert!(!d.marks_pending());
        assert!(d.before_read().1.is_empty(), "left to the publisher");
        assert!(!d.settle(given_up).await);
    }
}
