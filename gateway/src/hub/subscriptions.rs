//! Channel subscriptions, applied by one task in request order.
//!
//! A room subscribes its channel on its first local member and unsubscribes
//! on its last; a user channel likewise. Requests are queued (under the
//! lock that decided them) to a single task that applies them in order, so
//! the unsubscribe of a retired room can never overtake the subscribe of
//! its successor. What queued while the previous request was answered goes
//! together: consecutive subscribes as one request (one `SUBSCRIBE` of
//! many channels on one Redis), consecutive unsubscribes likewise. A lone
//! join still costs one round trip; thousands of joins at once (a room of
//! 500 filling, a reconnect storm) cost a few. The task also keeps which
//! channels are live, for an exact subscriptions gauge.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::Shared;
use tokio::sync::{mpsc, oneshot};

use crate::backplane::Backplane;
use crate::error::GatewayError;

/// Most channels one request carries: enough that a reconnect storm's
/// subscribes go in a few requests, few enough that Redis answers each in
/// well under a millisecond and a failed one fails few joins.
const MAX_CHANNELS_PER_REQUEST: usize = 256;

enum SubOp {
    Subscribe(String, oneshot::Sender<Result<(), GatewayError>>),
    Unsubscribe(String),
}

/// The queue of subscription changes; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Subscriptions {
    tx: mpsc::UnboundedSender<SubOp>,
}

/// The outcome of a queued subscribe, to await outside any lock; clones
/// share it (several connections may wait for one subscribe).
#[derive(Clone)]
pub(super) struct Pending(Shared<oneshot::Receiver<Result<(), GatewayError>>>);

impl Pending {
    pub async fn done(self) -> Result<(), GatewayError> {
        self.0
            .await
            .map_err(|_| GatewayError::Backplane("subscription task stopped".into()))?
    }

    /// Whether both wait for the same subscribe.
    pub fn same(&self, other: &Pending) -> bool {
        self.0.ptr_eq(&other.0)
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl std::fmt::Debug for SubOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubOp::Subscribe(c, _) => write!(f, "Subscribe({c})"),
            SubOp::Unsubscribe(c) => write!(f, "Unsubscribe({c})"),
        }
    }
}

impl Subscriptions {
    /// Starts the task applying requests to `backplane`. It ends when every
    /// handle is dropped. Unbounded: each request corresponds to a room or
    /// a user appearing or disappearing, bounded by the connections.
    pub fn start(backplane: Arc<dyn Backplane>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(backplane, rx));
        Subscriptions { tx }
    }

    /// Queues a subscribe; await the result with [`Pending::done`].
    pub fn subscribe(&self, channel: String) -> Pending {
        let (tx, rx) = oneshot::channel();
        // If the task is gone, the dropped sender reports it in `done`.
        let _ = self.tx.send(SubOp::Subscribe(channel, tx));
        Pending(rx.shared())
    }

    /// Queues an unsubscribe.
    pub fn unsubscribe(&self, channel: String) {
        let _ = self.tx.send(SubOp::Unsubscribe(channel));
    }
}

async fn run(backplane: Arc<dyn Backplane>, mut rx: mpsc::UnboundedReceiver<SubOp>) {
    let mut queued = Vec::with_capacity(MAX_CHANNELS_PER_REQUEST);
    let mut live = Live::default();
    while rx.recv_many(&mut queued, MAX_CHANNELS_PER_REQUEST).await > 0 {
        for group in groups(queued.drain(..)) {
            apply(&*backplane, group, &mut live).await;
        }
        metrics::gauge!("chorus_gateway_subscriptions").set(live.len() as f64);
    }
}

/// The channels whose subscribe succeeded and that were not unsubscribed
/// since: what the subscriptions gauge shows. A failed subscribe is
/// followed by an unsubscribe (the room or user retries, or goes), and a
/// room may subscribe again after a failure, so counting requests would
/// drift; this set does not. A backplane reconnect restores these same
/// channels (retrying until every one is back), so the set stands across
/// it. Kept by 64-bit hash, about 16 bytes a channel
/// (one per local user and one per room); a collision, about one in
/// 10^7 at a million channels, costs the gauge one.
#[derive(Default)]
struct Live {
    keys: RandomState,
    channels: HashSet<u64>,
}

impl Live {
    fn subscribed(&mut self, channel: &str) {
        self.channels.insert(self.keys.hash_one(channel));
    }

    fn unsubscribed(&mut self, channel: &str) {
        self.channels.remove(&self.keys.hash_one(channel));
    }

    fn len(&self) -> usize {
        self.channels.len()
    }
}

/// Requests of one kind, in queue order.
enum Group {
    Subscribe(Vec<String>, Vec<oneshot::Sender<Result<(), GatewayError>>>),
    Unsubscribe(Vec<String>),
}

/// `ops` as runs of consecutive requests of one kind.
fn groups(ops: impl Iterator<Item = SubOp>) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for op in ops {
        match (op, out.last_mut()) {
            (SubOp::Subscribe(ch, reply), Some(Group::Subscribe(chs, replies))) => {
                chs.push(ch);
                replies.push(reply);
            }
            (SubOp::Subscribe(ch, reply), _) => out.push(Group::Subscribe(vec![ch], vec![reply])),
            (SubOp::Unsubscribe(ch), Some(Group::Unsubscribe(chs))) => chs.push(ch),
            (SubOp::Unsubscribe(ch), _) => out.push(Group::Unsubscribe(vec![ch])),
        }
    }
    out
}

async fn apply(backplane: &dyn Backplane, group: Group, live: &mut Live) {
    match group {
        Group::Subscribe(channels, replies) => {
            let mut outcomes = backplane.subscribe_many(&channels).await.into_iter();
            for (channel, reply) in channels.iter().zip(replies) {
                let r = outcomes.next().unwrap_or_else(|| {
                    Err(GatewayError::Backplane("no outcome for a subscribe".into()))
                });
                if r.is_ok() {
                    live.subscribed(channel);
                }
                let _ = reply.send(r);
            }
        }
        Group::Unsubscribe(channels) => {
            for channel in &channels {
                live.unsubscribed(channel);
            }
            if let Err(e) = backplane.unsubscribe_many(&channels).await {
                tracing::warn!(channels = channels.len(), error = %e, "unsubscribe failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_channels_count_each_subscribed_channel_once() {
        let mut live = Live::default();
        // A failed subscribe is never added; its unsubscribe removes
        // nothing.
        live.unsubscribed("failed");
        live.subscribed("a");
        live.subscribed("b");
        // A room subscribing again after a failure, or twice in a race.
        live.subscribed("a");
        assert_eq!(live.len(), 2);
        live.unsubscribed("a");
        live.unsubscribed("a");
        assert_eq!(live.len(), 1);
        live.unsubscribed("b");
        assert_eq!(live.len(), 0);
    }

    fn sub(ch: &str) -> (SubOp, oneshot::Receiver<Result<(), GatewayError>>) {
        let (tx, rx) = oneshot::channel();
        (SubOp::Subscribe(ch.into(), tx), rx)
    }

    #[tokio::test]
    async fn consecutive_requests_of_a_kind_go_together_in_queue_order() {
        let (a, ra) = sub("a");
        let (b, rb) = sub("b");
        let (e, re) = sub("e");
        let ops = vec![
            a,
            b,
            SubOp::Unsubscribe("c".into()),
            SubOp::Unsubscribe("d".into()),
            e,
        ];
        let groups = groups(ops.into_iter());
        let shape: Vec<(bool, Vec<String>)> = groups
            .iter()
            .map(|g| match g {
                Group::Subscribe(chs, replies) => {
                    assert_eq!(chs.len(), replies.len(), "one answer per channel");
                    (true, chs.clone())
                }
                Group::Unsubscribe(chs) => (false, chs.clone()),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (true, vec!["a".to_owned(), "b".to_owned()]),
                (false, vec!["c".to_owned(), "d".to_owned()]),
                (true, vec!["e".to_owned()]),
            ]
        );
        // Each answer reaches its own requester: the replies kept the
        // channels' order.
        for (i, g) in groups.into_iter().enumerate() {
            if let Group::Subscribe(_, replies) = g {
                for reply in replies {
                    let r = if i == 0 {
                        Ok(())
                    } else {
                        Err(GatewayError::Backplane("refused".into()))
                    };
                    let _ = reply.send(r);
                }
            }
        }
        assert!(ra.await.expect("answered").is_ok());
        assert!(rb.await.expect("answered").is_ok());
        assert!(re.await.expect("answered").is_err());
    }
}
