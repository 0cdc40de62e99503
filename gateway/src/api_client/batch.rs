//! Join access checks, batched. A join waits for its check; while one
//! batch is in flight, the checks that arrive queue and go together as the
//! next one (`POST /internal/access`, up to
//! [`MAX_ACCESS_CHECKS`](chorus_shared::protocol::MAX_ACCESS_CHECKS)). A
//! lone join costs one round trip, as before; a reconnect storm's
//! thousands of joins cost the API and Postgres a few queries instead of
//! one each.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use chorus_shared::error::ErrorCode;
use chorus_shared::protocol::{AccessCheck, CommunityAccess, MAX_ACCESS_CHECKS};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::GatewayError;

type Answer = Result<CommunityAccess, GatewayError>;

/// A check waiting for its batch.
#[derive(Debug)]
pub(super) struct Waiting {
    pub check: AccessCheck,
    answer: oneshot::Sender<Answer>,
}

/// The queue of checks and whether a batch is being sent.
#[derive(Debug, Default)]
pub(super) struct AccessBatch {
    queue: Mutex<Vec<Waiting>>,
    sending: AtomicBool,
}

impl AccessBatch {
    /// Queues a check; returns its answer's receiver and whether the
    /// caller must start a sender (none is running).
    pub fn enqueue(&self, community: Uuid, user: &str) -> (oneshot::Receiver<Answer>, bool) {
        let (tx, rx) = oneshot::channel();
        self.lock().push(Waiting {
            check: AccessCheck {
                community_id: community,
                user_id: user.to_owned(),
            },
            answer: tx,
        });
        (rx, !self.sending.swap(true, Ordering::AcqRel))
    }

    /// The next batch to send; empty when the queue is drained, and then
    /// this sender is done (unless a check slipped in meanwhile, which it
    /// then takes).
    pub fn next(&self) -> Vec<Waiting> {
        loop {
            {
                let mut q = self.lock();
                if !q.is_empty() {
                    let n = q.len().min(MAX_ACCESS_CHECKS);
                    return q.drain(..n).collect();
                }
            }
            self.sending.store(false, Ordering::Release);
            // A check queued between the drain and the store saw a sender
            // running and started none: take it over unless another sender
            // started meanwhile.
            if self.lock().is_empty() || self.sending.swap(true, Ordering::AcqRel) {
                return Vec::new();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hands each waiting join its answer: `None` (no such community) is the
/// `not_found` the single check answers; a failed request fails them all.
pub(super) fn answer(
    batch: Vec<Waiting>,
    results: Result<Vec<Option<CommunityAccess>>, GatewayError>,
) {
    match results {
        Ok(results) if results.len() == batch.len() => {
            for (w, r) in batch.into_iter().zip(results) {
                let _ = w.answer.send(r.ok_or_else(|| GatewayError::Api {
                    code: ErrorCode::NotFound,
                    message: "community not found".into(),
                }));
            }
        }
        Ok(results) => {
            let e = format!(
                "api answered {} of {} access checks",
                results.len(),
                batch.len()
            );
            for w in batch {
                let _ = w.answer.send(Err(GatewayError::Unavailable(e.clone())));
            }
        }
        // The request as a whole failed: no join learns anything about its
        // own community (an API without the batch route answers 404, which
        // must not tell clients their communities do not exist).
        Err(e) => {
            let e = match e {
                GatewayError::Unavailable(m) => GatewayError::Unavailable(m),
                other => GatewayError::Unavailable(format!("access check failed: {other}")),
            };
            for w in batch {
                let _ = w.answer.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sender_at_a_time_and_nothing_left_behind() {
        let b = AccessBatch::default();
        let c = Uuid::nil();
        let (_r1, start1) = b.enqueue(c, "a");
        let (_r2, start2) = b.enqueue(c, "b");
        assert!(start1 && !start2, "the first check starts the sender");
        assert_eq!(b.next().len(), 2);
        let (_r3, start3) = b.enqueue(c, "c");
        assert!(!start3, "a sender is still running");
        assert_eq!(b.next().len(), 1, "the running sender takes the late check");
        assert!(b.next().is_empty(), "drained: the sender stops");
        let (_r4, start4) = b.enqueue(c, "d");
        assert!(start4, "after it stopped, the next check starts one");
    }

    #[tokio::test]
    async fn answers_go_back_in_order_and_failures_reach_everyone() {
        let b = AccessBatch::default();
        let c = Uuid::nil();
        let (r1, _) = b.enqueue(c, "a");
        let (r2, _) = b.enqueue(c, "b");
        let access = CommunityAccess {
            community_id: c,
            is_public: true,
            head_seq: 7,
            role: None,
        };
        answer(b.next(), Ok(vec![Some(access.clone()), None]));
        assert_eq!(r1.await.unwrap().unwrap(), access);
        assert!(matches!(
            r2.await.unwrap(),
            Err(GatewayError::Api {
                code: ErrorCode::NotFound,
                ..
            })
        ));
        let (r3, _) = b.enqueue(c, "c");
        answer(b.next(), Err(GatewayError::Unavailable("api busy".into())));
        assert!(matches!(
            r3.await.unwrap(),
            Err(GatewayError::Unavailable(_))
        ));
    }
}
