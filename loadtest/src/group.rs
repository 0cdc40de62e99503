//! A group: the connections one process holds, started at a bounded rate,
//! driven together (socket sends, typing, a reconnect storm) and verified
//! together against what the coordinator says was committed.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::client::life::Op;
use crate::client::{
    self, ClientSpec, ConnState, Control, Env, Proto, Shared, Stats, content, now_us,
};
use crate::poster::missing;

/// Connections started per batch, and batches per second: 2,000 new
/// connections a second keeps the accept queues and the API's join
/// requests flowing without a SYN flood on a small machine.
const START_BATCH: usize = 100;
const START_BATCH_EVERY: Duration = Duration::from_millis(50);
/// Outstanding operations per connection; more are dropped (the drive is
/// open-loop and a stuck connection must not grow memory).
const OPS_QUEUE: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSpec {
    pub proto: Proto,
    pub ws_urls: Vec<String>,
    pub api_url: String,
    pub local_addr: Option<IpAddr>,
    pub clients: Vec<ClientSpec>,
}

/// Socket traffic the group generates itself while the coordinator posts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Drive {
    /// `send-message` commands per second over the whole group.
    pub send_rate: f64,
    /// `typing` frames per second over the whole group.
    pub typing_rate: f64,
    pub seconds: f64,
    pub content_len: usize,
}

/// What was committed, per community: the head seq (Chorus) or the number
/// of posts numbered 1..=n (peers).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Expect {
    pub heads: HashMap<String, i64>,
    /// Committed post numbers per community, as a bitset.
    pub posts: HashMap<String, Vec<u64>>,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub started: u64,
    pub joined: u64,
    /// Joined again after a storm.
    pub rejoined: u64,
    pub failed: u64,
    pub deliveries: u64,
}

/// Verdict and measurements of a group (or, merged, of a whole run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub connections: u64,
    pub failed: u64,
    pub first_failure: Option<String>,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Committed events that never arrived (gaps included).
    pub lost: u64,
    pub from_history: u64,
    pub replayed: u64,
    pub reconnects: u64,
    /// Why sessions ended in an error and reconnected, by kind.
    #[serde(default)]
    pub reconnect_reasons: BTreeMap<String, u64>,
    pub typing: u64,
    /// `send-message` commands acked, refused, and not sent because the
    /// connection's operation queue was full.
    pub sends_acked: u64,
    pub send_errors: u64,
    pub ops_dropped: u64,
    pub stats: Stats,
}

impl Report {
    pub fn merge(&mut self, o: &Report) {
        self.connections += o.connections;
        self.failed += o.failed;
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&o.first_failure);
        }
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.lost += o.lost;
        self.from_history += o.from_history;
        self.replayed += o.replayed;
        self.reconnects += o.reconnects;
        for (k, n) in &o.reconnect_reasons {
            *self.reconnect_reasons.entry(k.clone()).or_default() += n;
        }
        self.typing += o.typing;
        self.sends_acked += o.sends_acked;
        self.send_errors += o.send_errors;
        self.ops_dropped += o.ops_dropped;
        self.stats.latency.merge(&o.stats.latency);
        self.stats.from_commit.merge(&o.stats.from_commit);
        self.stats.connect.merge(&o.stats.connect);
        self.stats.join.merge(&o.stats.join);
        for (s, h) in &o.stats.series {
            self.stats.series.entry(*s).or_default().merge(h);
        }
    }
}

#[derive(Debug)]
pub struct Group {
    proto: Proto,
    shared: Arc<Shared>,
    states: Vec<Arc<Mutex<ConnState>>>,
    specs: Vec<ClientSpec>,
    ops: Vec<mpsc::Sender<Op>>,
    control: watch::Sender<Control>,
    tasks: Mutex<JoinSet<()>>,
    started: Arc<std::sync::atomic::AtomicU64>,
    ops_dropped: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Group {
    /// Starts every connection (in batches, in the background).
    pub fn start(spec: GroupSpec) -> Arc<Group> {
        let env = Env {
            proto: spec.proto,
            ws_urls: Arc::new(spec.ws_urls),
            api_url: Arc::new(spec.api_url),
            local_addr: spec.local_addr,
            http: reqwest::Client::new(),
        };
        let (control, rx) = watch::channel(Control::default());
        let shared = Arc::new(Shared::default());
        let mut states = Vec::new();
        let mut ops = Vec::new();
        let mut receivers = Vec::new();
        for _ in &spec.clients {
            states.push(Arc::new(Mutex::new(ConnState::default())));
            let (tx, orx) = mpsc::channel(OPS_QUEUE);
            ops.push(tx);
            receivers.push(orx);
        }
        let group = Arc::new(Group {
            proto: env.proto,
            shared: shared.clone(),
            states: states.clone(),
            specs: spec.clients.clone(),
            ops,
            control,
            tasks: Mutex::new(JoinSet::new()),
            started: Arc::default(),
            ops_dropped: Default::default(),
        });
        let g = group.clone();
        tokio::spawn(async move {
            let mut work = spec
                .clients
                .into_iter()
                .zip(states)
                .zip(receivers)
                .enumerate();
            loop {
                let mut n = 0;
                for (_, ((c, st), orx)) in work.by_ref().take(START_BATCH) {
                    let (env, shared, rx) = (env.clone(), shared.clone(), rx.clone());
                    lock(&g.tasks).spawn(client::life::run(env, c, st, shared, rx, orx));
                    n += 1;
                }
                g.started.fetch_add(n, Ordering::Relaxed);
                if n < START_BATCH as u64 || rx.borrow().quit {
                    return;
                }
                tokio::time::sleep(START_BATCH_EVERY).await;
            }
        });
        group
    }

    pub fn progress(&self) -> Progress {
        Progress {
            started: self.started.load(Ordering::Relaxed),
            joined: self.shared.joined.load(Ordering::Relaxed),
            rejoined: self.shared.rejoined.load(Ordering::Relaxed),
            failed: self
                .states
                .iter()
                .filter(|s| lock(s).failed.is_some())
                .count() as u64,
            deliveries: self.shared.deliveries.load(Ordering::Relaxed),
        }
    }

    /// Every connection drops (no close frame) and rejoins with `lastSeq`.
    pub fn storm(&self) {
        self.control.send_modify(|c| c.storm += 1);
    }

    /// Generates socket traffic for `d.seconds`, open-loop.
    pub async fn drive(&self, d: Drive) {
        let n = self.ops.len();
        if n == 0 || d.seconds <= 0.0 {
            return;
        }
        let start = Instant::now();
        let tick = Duration::from_millis(10);
        let (mut sends, mut typings) = (0f64, 0f64);
        let mut i = 0usize;
        let mut on = true;
        while start.elapsed().as_secs_f64() < d.seconds {
            let t = start.elapsed().as_secs_f64();
            while sends < d.send_rate * t {
                sends += 1.0;
                i = (i + 7919) % n;
                if self.proto == Proto::Chorus
                    && let Some(c) = self.specs[i].communities.first()
                {
                    let op = Op::Send {
                        community: c.clone(),
                        content: content(now_us(), 0, d.content_len),
                    };
                    if self.ops[i].try_send(op).is_err() {
                        self.ops_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            while typings < d.typing_rate * t {
                typings += 1.0;
                i = (i + 104_729) % n;
                on = !on;
                if let Some(c) = self.specs[i].communities.first() {
                    let op = Op::Typing {
                        community: c.clone(),
                        on,
                    };
                    if self.ops[i].try_send(op).is_err() {
                        self.ops_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// Waits until every connection reached what was committed (or the
    /// timeout), then reports.
    pub async fn verify(&self, expect: &Expect) -> Report {
        let deadline = Instant::now() + Duration::from_millis(expect.timeout_ms);
        loop {
            let behind = self.states.iter().zip(&self.specs).any(|(st, spec)| {
                let st = lock(st);
                st.failed.is_none()
                    && spec.communities.iter().any(|c| {
                        let room = st.rooms.get(c);
                        match self.proto {
                            Proto::Chorus => {
                                let head = expect.heads.get(c).copied().unwrap_or(0);
                                room.is_none_or(|r| r.last_seq < head)
                            }
                            Proto::Socketio => {
                                let want = expect.posts.get(c).map_or(&[][..], Vec::as_slice);
                                room.is_none_or(|r| missing(want, &r.seen) > 0)
                            }
                        }
                    })
            });
            if !behind || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.report(expect)
    }

    fn report(&self, expect: &Expect) -> Report {
        let mut r = Report {
            connections: self.states.len() as u64,
            typing: self.shared.typing.load(Ordering::Relaxed),
            sends_acked: self.shared.sends_acked.load(Ordering::Relaxed),
            send_errors: self.shared.send_errors.load(Ordering::Relaxed),
            ops_dropped: self.ops_dropped.load(Ordering::Relaxed),
            reconnect_reasons: self.shared.reconnect_reasons(),
            stats: self.shared.stats().clone(),
            ..Report::default()
        };
        for (st, spec) in self.states.iter().zip(&self.specs) {
            let st = lock(st);
            if let Some(f) = &st.failed {
                r.failed += 1;
                if r.first_failure.is_none() {
                    r.first_failure = Some(f.clone());
                }
                continue;
            }
            r.reconnects += st.reconnects;
            for c in &spec.communities {
                let Some(room) = st.rooms.get(c) else {
                    r.failed += 1;
                    continue;
                };
                r.received += room.received;
                r.duplicates += room.duplicates;
                r.out_of_order += room.out_of_order;
                r.from_history += room.from_history;
                r.replayed += room.replayed;
                r.lost += room.gaps;
                match self.proto {
                    Proto::Chorus => {
                        let head = expect.heads.get(c).copied().unwrap_or(0);
                        r.lost += (head - room.last_seq).max(0) as u64;
                    }
                    Proto::Socketio => {
                        let want = expect.posts.get(c).map_or(&[][..], Vec::as_slice);
                        r.lost += missing(want, &room.seen);
                    }
                }
            }
        }
        r
    }

    /// Closes every connection and waits for the tasks.
    pub async fn quit(&self) {
        self.control.send_modify(|c| c.quit = true);
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }
}
