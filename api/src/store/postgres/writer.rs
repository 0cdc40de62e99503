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
//! statement of their own (`publishing.rs`). How long a writer lingers for
//! more posts is in `arrivals.rs`.

mod arrivals;
mod publishing;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use self::arrivals::Arrivals;
use self::publishing::{MARK_DELAY, Publishing};
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

/// Posts waiting for a writer; a full queue makes handlers wait (the
/// request deadline bounds that).
const QUEUE: usize = 4096;

/// How long a writer waits to open its session before failing the batch
/// with 503: the pool's acquire timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
pub(super) async fn connected<'s>(
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
