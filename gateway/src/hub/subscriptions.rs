//! Channel subscriptions, applied by one task in request order.
//!
//! A room subscribes its channel on its first local member and unsubscribes
//! on its last; a user channel likewise. Requests are queued (under the
//! lock that decided them) to a single task that applies them one at a
//! time, so the unsubscribe of a retired room can never overtake the
//! subscribe of its successor.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::Shared;
use tokio::sync::{mpsc, oneshot};

use crate::backplane::Backplane;
use crate::error::GatewayError;

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
    while let Some(op) = rx.recv().await {
        match op {
            SubOp::Subscribe(ch, reply) => {
                let r = backplane.subscribe(&ch).await;
                if r.is_ok() {
                    metrics::gauge!("chorus_gateway_subscriptions").increment(1.0);
                }
                let _ = reply.send(r);
            }
            SubOp::Unsubscribe(ch) => {
                metrics::gauge!("chorus_gateway_subscriptions").decrement(1.0);
                if let Err(e) = backplane.unsubscribe(&ch).await {
                    tracing::warn!(channel = %ch, error = %e, "unsubscribe failed");
                }
            }
        }
    }
}
