//! A post writer's side of publication: after a committed batch, its
//! clean posts claimed, answered and handed to a task that publishes them
//! (`outbox::DirectPublish`); the marks of what was published, carried by
//! the next batch's call or, after [`MARK_DELAY`] without one, sent alone;
//! the outbox publisher woken for the rest.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::Notify;

use super::connected;
use crate::error::ApiError;
use crate::outbox::{DirectEvent, DirectPublish};

/// How long the marks of events the writers published themselves wait
/// for the next batch's statement before a writer sends them alone: from
/// about 10 posts a second the next batch comes sooner and the marks cost
/// nothing; at the end of a burst they cost one statement without a WAL
/// flush. Until marked, a later post of the same community takes the
/// publisher's path (correct, only slower), so the delay stays short.
pub(super) const MARK_DELAY: Duration = Duration::from_millis(100);

/// A writer's side of publication.
pub(super) struct Publishing {
    pub(super) wake: Arc<Notify>,
    pub(super) direct: Option<Arc<DirectPublish>>,
}

impl Publishing {
    /// After a committed batch: its marks are done; its clean posts are
    /// claimed (before `answer` tells anyone about them), then published
    /// by a task of their own (the writer goes on with the next batch);
    /// the publisher is woken for whatever is left (or given up on).
    pub(super) async fn committed(
        &self,
        marked: &[i64],
        direct: Vec<DirectEvent>,
        left: bool,
        answer: impl FnOnce(),
    ) {
        match &self.direct {
            Some(d) if !direct.is_empty() => {
                d.forget(marked);
                let claim = d.claim(&direct).await;
                answer();
                let (d, publisher) = (d.clone(), self.wake.clone());
                tokio::spawn(async move {
                    if !d.publish(claim, direct).await {
                        publisher.notify_one();
                    }
                });
            }
            Some(d) => {
                d.forget(marked);
                answer();
            }
            None => answer(),
        }
        if left {
            self.wake.notify_one();
        }
    }

    /// After a failed call: its marks did not happen. The ids go back to
    /// the publisher, which publishes those events again (at least once).
    pub(super) fn failed(&self, marked: &[i64]) {
        if let Some(d) = &self.direct
            && !marked.is_empty()
        {
            d.forget(marked);
            self.wake.notify_one();
        }
    }

    /// Marks what is pending in a statement of its own, committed without
    /// waiting for the WAL flush (a mark lost in a crash only publishes the
    /// event again). A mark deletes the row: nothing reads a published one.
    pub(super) async fn mark_alone(
        &self,
        options: &PgConnectOptions,
        session: &mut Option<PgConnection>,
    ) {
        let marked = self.take_marks();
        if marked.is_empty() {
            return;
        }
        let ids: Vec<String> = marked.iter().map(i64::to_string).collect();
        // Integers only, formatted here: a simple query can carry the
        // `set local` in the same round trip.
        // Rows another session is marking are skipped (see the function's
        // migration): waiting for them could deadlock.
        let sql = format!(
            "set local synchronous_commit = off; delete from outbox where id in (select id from outbox where id = any('{{{}}}'::bigint[]) and published_at is null for update skip locked)",
            ids.join(",")
        );
        let result = match connected(options, session).await {
            Ok(conn) => sqlx::Executor::execute(conn, sql.as_str())
                .await
                .map_err(ApiError::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => {
                if let Some(d) = &self.direct {
                    d.forget(&marked);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "marking published posts failed; they will be published again");
                *session = None;
                self.failed(&marked);
            }
        }
    }

    pub(super) fn marks_pending(&self) -> bool {
        self.direct.as_ref().is_some_and(|d| d.marks_pending())
    }

    /// Resolves when a publication leaves marks pending; never without
    /// direct publication.
    pub(super) async fn marks_ready(&self) {
        match &self.direct {
            Some(d) => d.marks_ready().await,
            None => std::future::pending().await,
        }
    }

    pub(super) fn take_marks(&self) -> Vec<i64> {
        self.direct
            .as_ref()
            .map(|d| d.take_marks())
            .unwrap_or_default()
    }
}
