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
/// Pause between tries of a failed POST.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Bound on one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// POSTs sent again after a failure (chaos runs).
    pub retries: u64,
    /// Post numbers that committed, per community, as a bitset (bit k):
    /// what a peer's clients must receive (Chorus is checked by seq).
    pub posts: HashMap<String, Vec<u64>>,
}

impl Posted {
    /// Adds a later phase's posts to these: counts added, histograms
    /// merged, committed post numbers united.
    pub fn absorb(&mut self, other: Posted) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.late += other.late;
        self.retries += other.retries;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency.merge(&other.latency);
        for (t, h) in &other.series {
            self.series.entry(*t).or_default().merge(h);
        }
        for (community, bits) in other.posts {
            let mine = self.posts.entry(community).or_default();
            if mine.len() < bits.len() {
                mine.resize(bits.len(), 0);
            }
            for (m, b) in mine.iter_mut().zip(bits) {
                *m |= b;
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Poster {
    http: reqwest::Client,
    api: String,
    content_len: usize,
    retry: bool,
    /// Next post number per room.
    next_k: Arc<Vec<AtomicU64>>,
}

impl Poster {
    /// `retry` applies to Chorus only: the peers ignore `Idempotency-Key`,
    /// so a retry there could post twice.
    pub fn new(
        proto: Proto,
        api: &str,
        content_len: usize,
        retry: bool,
        rooms: usize,
    ) -> anyhow::Result<Self> {
        Ok(Poster {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(MAX_IN_FLIGHT)
                .tcp_nodelay(true)
                .build()?,
            api: api.to_owned(),
            content_len,
            retry: retry && proto == Proto::Chorus,
            next_k: Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect()),
        })
    }

    /// Posts at `rate`/s for `seconds`, round-robin over the world's rooms,
    /// calling `tick` with the number sent so far.
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
                .timeout(POST_TIMEOUT)
                .json(&body);
            if self.retry {
                req = req.header("idempotency-key", &key);
            }
            let result = match req.send().await {
                Ok(r) if r.status().as_u16() == 201 => Ok(()),
                Ok(r) => Err(format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => {
                    let lat = now_us().saturating_sub(sent);
                    let mut o = lock(out);
                    o.ok += 1;
                    o.latency.record(lat);
                    o.series.entry(sent / 1_000_000).or_default().record(lat);
                    set_bit(o.posts.entry(community.to_owned()).or_default(), k);
                    return;
                }
                Err(_) if self.retry && started.elapsed() < RETRY_FOR => {
                    lock(out).retries += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
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

/// Sets bit `k` of a bitset.
pub fn set_bit(bits: &mut Vec<u64>, k: u64) {
    let (w, b) = ((k / 64) as usize, k % 64);
    if bits.len() <= w {
        bits.resize(w + 1, 0);
    }
    bits[w] |= 1 << b;
}

/// Bits set in `want` and not in `have`.
pub fn missing(want: &[u64], have: &[u64]) -> u64 {
    want.iter()
        .enumerate()
        .map(|(i, w)| u64::from((w & !have.get(i).copied().unwrap_or(0)).count_ones()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitsets_count_what_is_missing() {
        let (mut want, mut have) = (Vec::new(), Vec::new());
        for k in [1, 2, 3, 70, 200] {
            set_bit(&mut want, k);
        }
        for k in [2, 70, 999] {
            set_bit(&mut have, k);
        }
        assert_eq!(missing(&want, &have), 3);
        assert_eq!(missing(&have, &want), 1);
    }
}
