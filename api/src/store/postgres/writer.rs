//! The post writer: posts without mentions go through a queue to a few
//! writer tasks, each with its own Postgres session, which create whatever
//! is queued in one `chorus_post_messages_direct` call (see its
//! migrations): one round trip and one commit for a batch of concurrent
//! posts, instead of a pooled transaction of several round trips per post.
//! Under load the batches grow by themselves: whatever arrives while a
//! batch commits goes in the next one.
//!
//! After the commit a writer publishes the batch's clean posts itself
//! (`outbox::DirectPublish`); the next batch's call, by either writer,
//! marks them. Only the other posts wake the outbox publisher. With marks
//! pending and no batch within [`MARK_DELAY`], a writer marks them in a
//! statement of their own.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::ApiError;
use crate::outbox::{DirectEvent, DirectPublish};

/// Writer tasks, each with one session: two, so that a batch waiting on a
/// community lock (a slow-path write holding it) or on its commit does not
/// stop every other post, while batches stay large.
const WRITERS: usize = 2;

/// Most posts in one batch: enough to absorb thousands of posts a second
/// in a few batches per commit, few enough to keep a batch's transaction
/// (and the community locks it holds) short.
const MAX_BATCH: usize = 128;

/// Weight of the newest gap in the smoothed gap between posts (1/8: a
/// rate change shows within a dozen posts, one odd gap does not).
const GAP_SMOOTHING: f64 = 0.125;

/// Posts waiting for a writer; a full queue makes handlers wait (the
/// request deadline bounds that).
const QUEUE: usize = 4096;

/// How long a writer waits to open its session before failing the batch
/// with 503: the pool's acquire timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the marks of events the writers published themselves wait
/// for the next batch's statement before a writer sends them alone: from
/// about 10 posts a second the next batch comes sooner and the marks cost
/// nothing; at the end of a burst they cost one statement without a WAL
/// flush. Until marked, a later post of the same community takes the
/// publisher's path (correct, only slower), so the delay stays short.
const MARK_DELAY: Duration = Duration::from_millis(100);

/// A post ready for the database: what `chorus_post_messages_direct`
/// takes for it.
#[derive(Debug)]
pub(super) struct Post {
    pub id: Uuid,
    pub community_id: Uuid,
    pub sender_id: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
    pub channel: String,
    /// The envelope, and where its two placeholder seqs are.
    pub payload: Vec<u8>,
    pub payload_cuts: [(usize, usize); 2],
    /// The response JSON, and where its placeholder seq is.
    pub json: String,
    pub json_cut: (usize, usize),
    pub key: Option<(String, Vec<u8>)>,
}

/// The post back with its seq or outcome code, or the batch's error.
type Reply = oneshot::Sender<Result<(i64, Post), ApiError>>;

/// The queue's sending side. Cheap to clone; the writers stop when every
/// clone is gone.
#[derive(Debug, Clone)]
pub(super) struct PostWriter {
    queue: mpsc::Sender<(Post, Reply)>,
    arrivals: Arc<Arrivals>,
}

/// When posts arrive: the smoothed gap between them, which sets how long
/// a writer lingers for more. Updated without a lock; a lost update under
/// a race only skews the estimate by one sample.
#[derive(Debug)]
pub(super) struct Arrivals {
    /// The most a writer lingers (0: never).
    limit: Duration,
    start: std::time::Instant,
    /// Microseconds since `start` of the last post.
    last_us: std::sync::atomic::AtomicU64,
    /// Smoothed gap in microseconds, as `f64` bits.
    gap_us: std::sync::atomic::AtomicU64,
}

impl Arrivals {
    fn new(limit: Duration) -> Self {
        Arrivals {
            limit,
            start: std::time::Instant::now(),
            last_us: Default::default(),
            // Quiet at first: no linger until posts come close together.
            gap_us: (limit.as_micros() as f64 * 10.0 + 1.0).to_bits().into(),
        }
    }

    fn record(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.start.elapsed().as_micros() as u64;
        let gap = now.saturating_sub(self.last_us.swap(now, Relaxed)) as f64;
        let old = f64::from_bits(self.gap_us.load(Relaxed));
        let new = old + GAP_SMOOTHING * (gap - old);
        self.gap_us.store(new.to_bits(), Relaxed);
    }

    /// How long to wait for more after a batch's first post: the expected
    /// gap, when more are expected within the limit.
    fn linger(&self) -> Duration {
        let gap = f64::from_bits(self.gap_us.load(std::sync::atomic::Ordering::Relaxed));
        if gap < self.limit.as_micros() as f64 {
            Duration::from_micros(gap as u64)
        } else {
            Duration::ZERO
        }
    }
}

impl PostWriter {
    /// Starts the writers; each opens its session on first use, publishes
    /// its batches' clean posts through `direct` (when given) and wakes the
    /// outbox publisher for the rest, once per committed batch.
    pub fn start(
        options: PgConnectOptions,
        wake_publisher: Arc<Notify>,
        direct: Option<Arc<DirectPublish>>,
        linger: Duration,
    ) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        let arrivals = Arc::new(Arrivals::new(linger));
        for _ in 0..WRITERS {
            tokio::spawn(run(
                options.clone(),
                jobs.clone(),
                Publishing {
                    wake: wake_publisher.clone(),
                    direct: direct.clone(),
                },
                arrivals.clone(),
            ));
        }
        PostWriter { queue, arrivals }
    }

    /// Creates `post` in the next batch; the seq, or the negative outcome
    /// code of `chorus_post_messages`, and the post.
    pub async fn write(&self, post: Post) -> Result<(i64, Post), ApiError> {
        let (reply, answer) = oneshot::channel();
        self.arrivals.record();
        self.queue
            .send((post, reply))
            .await
            .map_err(|_| ApiError::Unavailable("shutting down"))?;
        answer
            .await
            .map_err(|_| ApiError::Unavailable("shutting down"))?
    }
}

/// A writer's side of publication.
struct Publishing {
    wake: Arc<Notify>,
    direct: Option<Arc<DirectPublish>>,
}

impl Publishing {
    /// After a committed batch: its marks are done; its clean posts are
    /// claimed (before `answer` tells anyone about them), then published
    /// by a task of their own (the writer goes on with the next batch);
    /// the publisher is woken for whatever is left (or given up on).
    async fn committed(
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
    fn failed(&self, marked: &[i64]) {
        if let Some(d) = &self.direct
            && !marked.is_empty()
        {
            d.forget(marked);
            self.wake.notify_one();
        }
    }

    /// Marks what is pending in a statement of its own, committed without
    /// waiting for the WAL flush (a mark lost in a crash only publishes the
    /// event again).
    async fn mark_alone(&self, options: &PgConnectOptions, session: &mut Option<PgConnection>) {
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
            "set local synchronous_commit = off; update outbox set published_at = now() where id in (select id from outbox where id = any('{{{}}}'::bigint[]) and published_at is null for update skip locked)",
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

    fn marks_pending(&self) -> bool {
        self.direct.as_ref().is_some_and(|d| d.marks_pending())
    }

    /// Resolves when a publication leaves marks pending; never without
    /// direct publication.
    async fn marks_ready(&self) {
        match &self.direct {
            Some(d) => d.marks_ready().await,
            None => std::future::pending().await,
        }
    }

    fn take_marks(&self) -> Vec<i64> {
        self.direct
            .as_ref()
            .map(|d| d.take_marks())
            .unwrap_or_default()
    }
}

async fn run(
    options: PgConnectOptions,
    jobs: Arc<Mutex<mpsc::Receiver<(Post, Reply)>>>,
    publishing: Publishing,
    arrivals: Arc<Arrivals>,
) {
    let mut session: Option<PgConnection> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let first = async {
                let mut jobs = jobs.lock().await;
                let n = jobs.recv_many(&mut batch, MAX_BATCH).await;
                (jobs, n)
            };
            let waited = if publishing.marks_pending() {
                tokio::time::timeout(MARK_DELAY, first).await
            } else {
                // Marks can become pending while we wait (a publication
                // finishing): then wait again, with the deadline.
                tokio::select! {
                    got = first => Ok(got),
                    () = publishing.marks_ready() => continue,
                }
            };
            let Ok((mut jobs, n)) = waited else {
                publishing.mark_alone(&options, &mut session).await;
                continue;
            };
            if n == 0 {
                drop(jobs);
                publishing.mark_alone(&options, &mut session).await;
                return;
            }
            // Gather what arrives within the linger (the other writer is
            // committing meanwhile): each batch costs a round trip and a
            // commit, whatever its size. No linger when posts come further
            // apart than the limit.
            let linger = arrivals.linger();
            if linger.is_zero() {
                // What is queued already, without a timer: the timer wheel
                // rounds a deadline up to its next millisecond, which would
                // hold every post about a millisecond for nothing.
                while batch.len() < MAX_BATCH {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            } else {
                let deadline = Instant::now() + linger;
                while batch.len() < MAX_BATCH {
                    let room = MAX_BATCH - batch.len();
                    let more = jobs.recv_many(&mut batch, room);
                    match tokio::time::timeout_at(deadline, more).await {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
            }
        }
        // Community order: every batch locks communities in the same
        // order; the sort is stable, so each community's posts keep
        // their arrival order.
        batch.sort_by_key(|(p, _): &(Post, Reply)| p.community_id);
        let marking = publishing.take_marks();
        let result = write_batch(&options, &mut session, &marking, &batch).await;
        if result.is_err() {
            // The session may be broken; the next batch opens another.
            session = None;
        }
        match result {
            Ok(out)
                if out.seqs.len() == batch.len()
                    && out.outbox_ids.len() == batch.len()
                    && out.clean.len() == batch.len() =>
            {
                let mut direct = Vec::new();
                let mut left = false;
                for (i, (post, _)) in batch.iter().enumerate() {
                    let seq = out.seqs[i];
                    if seq <= 0 {
                        continue;
                    }
                    if out.clean[i] && publishing.direct.is_some() {
                        direct.push(DirectEvent {
                            id: out.outbox_ids[i],
                            channel: post.channel.clone(),
                            payload: splice(&post.payload, &post.payload_cuts, seq),
                            created_at: post.created_at,
                        });
                    } else {
                        left = true;
                    }
                }
                let answer = || {
                    for ((post, reply), seq) in batch.drain(..).zip(&out.seqs) {
                        let _ = reply.send(Ok((*seq, post)));
                    }
                };
                publishing.committed(&marking, direct, left, answer).await;
            }
            Ok(out) => {
                publishing.failed(&marking);
                let e = format!("{} outcomes for {} posts", out.seqs.len(), batch.len());
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(ApiError::Internal(e.clone())));
                }
            }
            Err(e) => {
                publishing.failed(&marking);
                let unavailable = e.body().0 == StatusCode::SERVICE_UNAVAILABLE;
                let text = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(if unavailable {
                        ApiError::Unavailable("database unavailable")
                    } else {
                        ApiError::Internal(text.clone())
                    }));
                }
            }
        }
    }
}

/// The envelope with the real seq where `payload_cuts` are: what the
/// function does in SQL for the outbox row (0xcf and the seq's eight bytes,
/// big-endian).
pub(super) fn splice(encoded: &[u8], cuts: &[(usize, usize)], seq: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut from = 0;
    for &(start, end) in cuts {
        out.extend_from_slice(&encoded[from..start]);
        out.push(0xcf);
        out.extend_from_slice(&seq.to_be_bytes());
        from = end;
    }
    out.extend_from_slice(&encoded[from..]);
    out
}

/// The writer's session, opened if it is not.
async fn connected<'s>(
    options: &PgConnectOptions,
    session: &'s mut Option<PgConnection>,
) -> Result<&'s mut PgConnection, ApiError> {
    match session {
        Some(c) => Ok(c),
        None => {
            let c = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
                .await
                .map_err(|_| ApiError::Unavailable("database unavailable"))??;
            Ok(session.insert(c))
        }
    }
}

/// What `chorus_post_messages_direct` answers: per post, its seq (or
/// refusal code), its outbox row and whether it may be published at once.
#[derive(sqlx::FromRow)]
struct Written {
    seqs: Vec<i64>,
    outbox_ids: Vec<i64>,
    clean: Vec<bool>,
}

async fn write_batch(
    options: &PgConnectOptions,
    session: &mut Option<PgConnection>,
    marking: &[i64],
    batch: &[(Post, Reply)],
) -> Result<Written, ApiError> {
    let conn = connected(options, session).await?;
    let posts = || batch.iter().map(|(p, _)| p);
    let written: Written = sqlx::query_as(
        "select seqs, outbox_ids, clean from chorus_post_messages_direct($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(marking)
    .bind(posts().map(|p| p.id).collect::<Vec<_>>())
    .bind(posts().map(|p| p.community_id).collect::<Vec<_>>())
    .bind(posts().map(|p| p.sender_id.as_str()).collect::<Vec<_>>())
    .bind(posts().map(|p| p.content.as_str()).collect::<Vec<_>>())
    .bind(posts().map(|p| p.created_at).collect::<Vec<_>>())
    .bind(posts().map(|p| p.channel.as_str()).collect::<Vec<_>>())
    .bind(
        posts()
            .map(|p| &p.payload[..p.payload_cuts[0].0])
            .collect::<Vec<_>>(),
    )
    .bind(
        posts()
            .map(|p| &p.payload[p.payload_cuts[0].1..p.payload_cuts[1].0])
            .collect::<Vec<_>>(),
    )
    .bind(
        posts()
            .map(|p| &p.payload[p.payload_cuts[1].1..])
            .collect::<Vec<_>>(),
    )
    .bind(
        posts()
            .map(|p| p.key.as_ref().map(|(k, _)| k.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        posts()
            .map(|p| p.key.as_ref().map(|(_, h)| h.as_slice()))
            .collect::<Vec<_>>(),
    )
    .bind(
        posts()
            .map(|p| p.key.as_ref().map(|_| &p.json[..p.json_cut.0]))
            .collect::<Vec<_>>(),
    )
    .bind(
        posts()
            .map(|p| p.key.as_ref().map(|_| &p.json[p.json_cut.1..]))
            .collect::<Vec<_>>(),
    )
    .fetch_one(conn)
    .await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lingers_only_while_posts_come_close_together() {
        let limit = Duration::from_millis(4);
        let a = Arrivals::new(limit);
        assert_eq!(a.linger(), Duration::ZERO, "quiet at first");
        for _ in 0..100 {
            a.record();
        }
        let busy = a.linger();
        assert!(busy < limit, "back-to-back posts: a short linger, {busy:?}");
        // Posts every 10 ms: no linger.
        a.gap_us
            .store((10_000f64).to_bits(), std::sync::atomic::Ordering::Relaxed);
        assert_eq!(a.linger(), Duration::ZERO);
        a.gap_us
            .store((2_000f64).to_bits(), std::sync::atomic::Ordering::Relaxed);
        assert_eq!(a.linger(), Duration::from_millis(2), "one expected gap");
    }

    #[test]
    fn a_zero_limit_never_lingers() {
        let a = Arrivals::new(Duration::ZERO);
        for _ in 0..100 {
            a.record();
        }
        assert_eq!(a.linger(), Duration::ZERO);
    }
}
