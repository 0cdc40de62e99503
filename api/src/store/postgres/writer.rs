//! The post writer: posts without mentions go through a queue to a few
//! writer tasks, each with its own Postgres session, which create whatever
//! is queued in one `chorus_post_messages` call (see its migration): one
//! round trip and one commit for a batch of concurrent posts, instead of a
//! pooled transaction of several round trips per post. Under load the
//! batches grow by themselves: whatever arrives while a batch commits goes
//! in the next one.

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

/// A post ready for the database: what `chorus_post_messages` takes for it.
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
    /// Starts the writers; each opens its session on first use and wakes
    /// the outbox publisher once per committed batch.
    pub fn start(options: PgConnectOptions, wake_publisher: Arc<Notify>, linger: Duration) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        let arrivals = Arc::new(Arrivals::new(linger));
        for _ in 0..WRITERS {
            tokio::spawn(run(
                options.clone(),
                jobs.clone(),
                wake_publisher.clone(),
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

async fn run(
    options: PgConnectOptions,
    jobs: Arc<Mutex<mpsc::Receiver<(Post, Reply)>>>,
    wake_publisher: Arc<Notify>,
    arrivals: Arc<Arrivals>,
) {
    let mut session: Option<PgConnection> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut jobs = jobs.lock().await;
            if jobs.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            // Gather what arrives within the linger (the other writer is
            // committing meanwhile): each batch costs a round trip, a
            // commit and a publisher pass, whatever its size. No linger
            // when posts come further apart than the limit.
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
        let result = write_batch(&options, &mut session, &batch).await;
        if result.is_err() {
            // The session may be broken; the next batch opens another.
            session = None;
        }
        match result {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                wake_publisher.notify_one();
                for ((post, reply), outcome) in batch.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok((outcome, post)));
                }
            }
            Ok(outcomes) => {
                let e = format!("{} outcomes for {} posts", outcomes.len(), batch.len());
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(ApiError::Internal(e.clone())));
                }
            }
            Err(e) => {
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

async fn write_batch(
    options: &PgConnectOptions,
    session: &mut Option<PgConnection>,
    batch: &[(Post, Reply)],
) -> Result<Vec<i64>, ApiError> {
    let conn = match session {
        Some(c) => c,
        None => {
            let c = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
                .await
                .map_err(|_| ApiError::Unavailable("database unavailable"))??;
            session.insert(c)
        }
    };
    let posts = || batch.iter().map(|(p, _)| p);
    let outcomes: Vec<i64> = sqlx::query_scalar(
        "select chorus_post_messages($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
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
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lingers_only_while_posts_come_close_together() {
        let limit = Duration::from_millis(crate::config::DEFAULT_POST_LINGER_MS);
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
