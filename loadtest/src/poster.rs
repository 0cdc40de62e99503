//! Open-loop HTTP posting at a fixed rate: `POST /api/messages-realtime`
//! (the same path on Chorus and on the peers), round-robin over the rooms,
//! each POST from one of its room's members. Records POST latency and, per
//! community, what committed (the highest seq for Chorus, the successful
//! post numbers for the peers). With `retry` a failed POST is retried with
//! the same `Idempotency-Key` until it commits, as a careful client does
//! through an outage, so nothing the tool counts as committed is unknown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::client::{Proto, content, now_us};
use crate::hist::Histogram;
use crate::setup::World;

/// Most POSTs in flight. Past it the poster waits (the run is then closed
/// loop and the report says how many sends were late).
const MAX_IN_FLIGHT: usize = 2_048;
/// Members of a room that take turns posting (spreads per-user rate
/// limits and mention-free authorship over several users).
const POSTERS_PER_ROOM: usize = 8;
/// A retried POST gives up after this long.
const RETRY_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Posted {
    pub latency: Histogram,
    /// Latency per wall-clock second.
    pub series: std::collections::BTreeMap<u64, Histogram>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Sends that started over 10 ms late because the in-flight bound was
    /// reached.
    pub late: u64,
    /// Highest committed seq per community (Chorus).
    pub heads: HashMap<String, i64>,
    /// Post numbers that committed per community (peers): 1..=n were
    /// assigned; the set lets verification skip failed ones.
    pub posts: HashMap<String, u64>,
}

#[derive(Deserialize)]
struct Created {
    seq: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Poster {
    http: reqwest::Client,
    api: String,
    proto: Proto,
    content_len: usize,
    retry: bool,
    /// Next post number per room.
    next_k: Arc<Vec<AtomicU64>>,
}

impl Poster {
    pub fn new(proto: Proto, api: &str, content_len: usize, retry: bool, rooms: usize) -> Self {
        Poster {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(MAX_IN_FLIGHT)
                .tcp_nodelay(true)
                .build()
                .unwrap_or_default(),
            api: api.to_owned(),
            proto,
            content_len,
            retry,
            next_k: Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    /// Posts at `rate`/s for `seconds` over `rooms` (indices into
    /// `world.rooms`; all when empty), calling `tick` with the number sent.
    pub async fn run(&self, world: &World, rate: f64, seconds: f64, tick: impl Fn(u64)) -> Posted {
        let out = Arc::new(Mutex::new(Posted::default()));
        let sem = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let start = Instant::now();
        let total = (rate * seconds).round() as u64;
        let rooms = world.rooms.len().max(1) as u64;
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            if at.elapsed() > Duration::from_millis(10) {
                lock(&out).late += 1;
            }
            let r = (i % rooms) as usize;
            let room = &world.rooms[r];
            let author =
                room.members[((i / rooms) as usize) % room.members.len().min(POSTERS_PER_ROOM)];
            let token = world.users[author].token.clone();
            let community = room.id.clone();
            let k = self.next_k[r].fetch_add(1, Ordering::Relaxed) + 1;
            let (me, out) = (self.clone(), out.clone());
            tokio::spawn(async move {
                me.one(&community, &token, k, &out).await;
                drop(permit);
            });
            if i % 64 == 0 {
                tick(i);
            }
        }
        // Everything sent has answered (or timed out) once every permit is
        // back.
        let _ = sem.acquire_many(MAX_IN_FLIGHT as u32).await;
        tick(total);
        std::mem::take(&mut *lock(&out))
    }

    async fn one(&self, community: &str, token: &str, k: u64, out: &Mutex<Posted>) {
        let sent = now_us();
        let body = serde_json::json!({
            "communityId": community,
            "content": content(sent, k, self.content_len),
        });
        let key = format!("lt-{community}-{k}");
        let started = Instant::now();
        loop {
            let mut req = self
                .http
                .post(format!("{}/api/messages-realtime", self.api))
                .bearer_auth(token)
                .timeout(Duration::from_secs(10))
                .json(&body);
            if self.retry {
                req = req.header("idempotency-key", &key);
            }
            let result = match req.send().await {
                Ok(r) if r.status().as_u16() == 201 => match r.json::<Created>().await {
                    Ok(c) => Ok(c.seq),
                    Err(e) => Err(e.to_string()),
                },
                Ok(r) => Err(format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(seq) => {
                    let lat = now_us().saturating_sub(sent);
                    let mut o = lock(out);
                    o.ok += 1;
                    o.latency.record(lat);
                    o.series.entry(sent / 1_000_000).or_default().record(lat);
                    match (self.proto, seq) {
                        (Proto::Chorus, Some(s)) => {
                            let h = o.heads.entry(community.to_owned()).or_default();
                            *h = (*h).max(s);
                        }
                        _ => {
                            let n = o.posts.entry(community.to_owned()).or_default();
                            *n = (*n).max(k);
                        }
                    }
                    return;
                }
                Err(e) if self.retry && started.elapsed() < RETRY_FOR => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    let mut o = lock(out);
                    o.errors += 1;
                    if o.first_error.is_none() {
                        o.first_error = Some(e);
                    }
                    return;
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
