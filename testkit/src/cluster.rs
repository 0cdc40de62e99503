//! A Redis Cluster owned by one test (`redis-server` processes started
//! and driven with `redis-cli`): what the backplane's cluster tests kill,
//! freeze and reshard.

use std::process::{Command, Stdio};

use crate::{OwnRedis, wait_until};

/// A Redis Cluster owned by one test: primaries with zero or one replica
/// each, `redis-server` processes on free loopback ports, created with
/// `redis-cli --cluster create`, every node killed on drop. The node
/// timeout is one second, so a killed primary's replica takes over within
/// a few; and the other shards keep serving while one is away
/// (`cluster-require-full-coverage no`, as a deployment that wants one
/// shard's outage to stay its own sets).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<OwnRedis>,
    dir: std::path::PathBuf,
}

/// The cluster's node timeout: how long a primary may be unreachable
/// before its replica is promoted.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each and waits
    /// until every node sees the cluster as ok.
    pub async fn start(primaries: usize, replicas: usize) -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("chorus-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            let port = free_cluster_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args([
                    "--cluster-node-timeout",
                    &CLUSTER_NODE_TIMEOUT_MS.to_string(),
                ])
                // A replica may always take over, however long it was cut
                // off: a test kills primaries on purpose.
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--cluster-require-full-coverage", "no"])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server on PATH");
            nodes.push(OwnRedis {
                port,
                child: Some(child),
            });
        }
        for n in &nodes {
            let port = n.port;
            wait_until(|| async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            })
            .await;
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_ok().await;
        cluster
    }

    /// `redis-cluster://` URL naming every node as a seed.
    pub fn url(&self) -> String {
        let mut nodes = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port));
        let first = nodes.next().unwrap();
        let rest: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
        format!("redis-cluster://{first}?{}", rest.join("&"))
    }

    /// Waits until every running node reports `cluster_state:ok` and
    /// every slot is served by a running primary.
    pub async fn wait_ok(&self) {
        wait_until(|| async {
            self.running().all(|port| {
                cli(port, &["cluster", "info"]).contains("cluster_state:ok")
                    && self.owner_of_all_slots(port)
            })
        })
        .await;
    }

    /// Whether every slot's owner, as node `port` sees it, is running.
    fn owner_of_all_slots(&self, port: u16) -> bool {
        let running: Vec<u16> = self.running().collect();
        let nodes = cli(port, &["cluster", "nodes"]);
        let mut slots = 0usize;
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let Some(p) = node_port(f[1]) else { continue };
            if !running.contains(&p) {
                return false;
            }
            for range in &f[8..] {
                slots += match range.split_once('-') {
                    Some((a, b)) => {
                        b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0)
                    }
                    None => 1,
                };
            }
        }
        slots == 16384
    }

    /// The ports of the nodes not killed.
    fn running(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    /// The port of the primary owning `key`'s slot (a channel is a key).
    pub fn primary_of(&self, key: &str) -> u16 {
        let port = self.running().next().unwrap();
        let slot: u16 = cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap();
        for line in cli(port, &["cluster", "nodes"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                    && (a..=b).contains(&slot)
                {
                    return node_port(f[1]).unwrap();
                }
            }
        }
        panic!("no primary owns slot {slot}");
    }

    /// Kills the node on `port` like a crash.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }

    /// Moves the slot of `key` (with its keys) from its primary to the
    /// primary on `to`, the way `redis-cli --cluster reshard` moves each
    /// slot: IMPORTING and MIGRATING, `MIGRATE` of the slot's keys, then
    /// the new owner announced to every node.
    pub fn move_slot_of(&self, key: &str, to: u16) {
        let from = self.primary_of(key);
        assert_ne!(from, to, "{key} is already on {to}");
        let slot = cli(from, &["cluster", "keyslot", key]).trim().to_owned();
        let id = |port: u16| cli(port, &["cluster", "myid"]).trim().to_owned();
        let (from_id, to_id) = (id(from), id(to));
        let ok = |port: u16, args: &[&str]| {
            let out = cli(port, args);
            assert!(
                out.trim() == "OK" || out.trim() == "NOKEY",
                "{args:?} on {port}: {out}"
            );
        };
        ok(to, &["cluster", "setslot", &slot, "importing", &from_id]);
        ok(from, &["cluster", "setslot", &slot, "migrating", &to_id]);
        loop {
            let keys = cli(from, &["cluster", "getkeysinslot", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &to_port, "", "0", "5000", "keys"];
            args.extend(keys);
            ok(from, &args);
        }
        ok(to, &["cluster", "setslot", &slot, "node", &to_id]);
        ok(from, &["cluster", "setslot", &slot, "node", &to_id]);
        for port in self.running().filter(|p| *p != from && *p != to) {
            // Replicas refuse SETSLOT; they learn it from their primary.
            let _ = cli(port, &["cluster", "setslot", &slot, "node", &to_id]);
        }
    }

    /// The ports of the primaries, as the first running node sees them.
    pub fn primaries(&self) -> Vec<u16> {
        let port = self.running().next().unwrap();
        cli(port, &["cluster", "nodes"])
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.len() >= 3 && f[2].contains("master") && !f[2].contains("fail"))
                    .then(|| node_port(f[1]))
                    .flatten()
            })
            .collect()
    }

    /// Freezes the node on `port` (SIGSTOP): connections stay open and
    /// nothing answers, like a stalled or partitioned host.
    pub fn pause(&self, port: u16) {
        self.signal(port, "-STOP");
    }

    /// Thaws a node frozen by [`RedisCluster::pause`].
    pub fn resume(&self, port: u16) {
        self.signal(port, "-CONT");
    }

    fn signal(&self, port: u16, signal: &str) {
        let n = self.nodes.iter().find(|n| n.port == port).unwrap();
        crate::signal(n.pid(), signal);
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port for a Redis Cluster node: its cluster bus listens 10,000
/// higher, so both must be free and the port at most 55535. Taken below
/// the kernel's ephemeral range (32768+), where nothing is handed out by
/// chance; the start varies with the process so parallel tests spread.
fn free_cluster_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 1000 * 12;
    loop {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        let p = 20_000 + u16::try_from(offset).unwrap_or(0);
        let free = |q: u16| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok();
        if free(p) && free(p + 10_000) {
            return p;
        }
    }
}

/// The port of a `cluster nodes` address (`127.0.0.1:7000@17000`).
fn node_port(addr: &str) -> Option<u16> {
    addr.split('@').next()?.rsplit_once(':')?.1.parse().ok()
}

/// `redis-cli -p port args...`'s output ("" when it fails).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
