//! Cost attribution from `/proc`: CPU time and RSS of each server process
//! the run was told about (by role: gateway, api, redis, postgres, ...),
//! of the load tool itself and of the whole machine, sampled at the start
//! and end of each phase so a report can say "µs of gateway CPU per
//! delivery". Postgres forks a process per connection, so a role may
//! include a process's children (read afresh at every sample).

use std::collections::BTreeMap;
use std::fs;

use serde::{Deserialize, Serialize};

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 on every Linux
/// this runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// A process whose costs a report attributes to `role`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watched {
    pub role: String,
    pub pid: u32,
    /// Also count the process's children (Postgres backends).
    pub children: bool,
}

impl Watched {
    /// Parses `role=pid` or `role=pid+` (with children).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (role, pid) = s
            .split_once('=')
            .ok_or_else(|| format!("expected role=pid, got {s:?}"))?;
        let (pid, children) = match pid.strip_suffix('+') {
            Some(p) => (p, true),
            None => (pid, false),
        };
        let pid = pid.parse().map_err(|_| format!("not a pid: {pid:?}"))?;
        Ok(Watched {
            role: role.to_owned(),
            pid,
            children,
        })
    }
}

/// CPU seconds and resident memory of one role at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub cpu_s: f64,
    /// Of `cpu_s`, the time spent in the kernel (system time).
    #[serde(default)]
    pub sys_s: f64,
    pub rss_kib: u64,
    /// Processes found (0: the role's processes are gone).
    pub procs: u32,
}

/// One sample of every role, the tool's own processes and the machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub roles: BTreeMap<String, Usage>,
    /// Busy and total jiffies of the whole machine (`/proc/stat`).
    pub machine_busy: u64,
    pub machine_total: u64,
}

/// What happened between two samples. RSS sums the processes' resident
/// sets, so for Postgres (shared buffers mapped by every backend) it
/// overstates; only the gateways' RSS is used per connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    /// CPU seconds used per role.
    pub cpu_s: BTreeMap<String, f64>,
    /// Of those, seconds in the kernel: system calls and the work they set
    /// off (on loopback, the reader's wake-up too). User space lowers it
    /// only by making fewer calls.
    #[serde(default)]
    pub sys_s: BTreeMap<String, f64>,
    /// RSS at the end, and its change, per role (KiB).
    pub rss_kib: BTreeMap<String, u64>,
    pub rss_growth_kib: BTreeMap<String, i64>,
    /// Share of all cores that were busy, 0..1.
    pub machine_busy: f64,
}

impl Delta {
    pub fn cpu(&self, role: &str) -> f64 {
        self.cpu_s.get(role).copied().unwrap_or(0.0)
    }

    pub fn sys(&self, role: &str) -> f64 {
        self.sys_s.get(role).copied().unwrap_or(0.0)
    }
}

/// Clock ticks of one process from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy)]
struct Stat {
    /// utime + stime.
    cpu: u64,
    /// stime.
    sys: u64,
    rss_pages: u64,
    ppid: u32,
    /// cutime + cstime and cstime: the CPU of its children that exited
    /// and were waited for.
    children_cpu: u64,
    children_sys: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the
    // last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15,
    // cutime 16, cstime 17, rss 24.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let cutime: u64 = f.get(13)?.parse().ok()?;
    let cstime: u64 = f.get(14)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some(Stat {
        cpu: utime + stime,
        sys: stime,
        rss_pages,
        ppid,
        children_cpu: cutime + cstime,
        children_sys: cstime,
    })
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

fn machine() -> (u64, u64) {
    let Ok(s) = fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = s.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Page size in KiB (4 KiB on x86_64 and the usual arm64 kernels).
const PAGE_KIB: u64 = 4;

/// Samples `watched` plus the given load-tool processes (role `client`).
pub fn sample(watched: &[Watched], clients: &[u32]) -> Sample {
    let mut roles: BTreeMap<String, Usage> = BTreeMap::new();
    let mut add = |role: &str, pid: u32, with_exited_children: bool| {
        if let Some(s) = stat(pid) {
            let u = roles.entry(role.to_owned()).or_default();
            // A role that counts its children also counts those that exited
            // (a Postgres backend whose client disconnected mid-phase).
            let (ticks, sys) = if with_exited_children {
                (s.cpu + s.children_cpu, s.sys + s.children_sys)
            } else {
                (s.cpu, s.sys)
            };
            u.cpu_s += ticks as f64 / TICKS_PER_SEC;
            u.sys_s += sys as f64 / TICKS_PER_SEC;
            u.rss_kib += s.rss_pages * PAGE_KIB;
            u.procs += 1;
        }
    };
    for w in watched {
        add(&w.role, w.pid, w.children);
        if w.children {
            for c in children_of(w.pid) {
                add(&w.role, c, false);
            }
        }
    }
    for pid in clients {
        add("client", *pid, false);
    }
    let (machine_busy, machine_total) = machine();
    Sample {
        roles,
        machine_busy,
        machine_total,
    }
}

/// The costs between `a` (earlier) and `b`.
pub fn delta(a: &Sample, b: &Sample) -> Delta {
    let mut d = Delta::default();
    for (role, end) in &b.roles {
        let start = a.roles.get(role).copied().unwrap_or_default();
        d.cpu_s
            .insert(role.clone(), (end.cpu_s - start.cpu_s).max(0.0));
        d.sys_s
            .insert(role.clone(), (end.sys_s - start.sys_s).max(0.0));
        d.rss_kib.insert(role.clone(), end.rss_kib);
        d.rss_growth_kib
            .insert(role.clone(), end.rss_kib as i64 - start.rss_kib as i64);
    }
    let total = b.machine_total.saturating_sub(a.machine_total);
    if total > 0 {
        d.machine_busy = b.machine_busy.saturating_sub(a.machine_busy) as f64 / total as f64;
    }
    d
}

/// CPU seconds this thread has used (`/proc/thread-self/stat`).
pub fn thread_cpu_s() -> f64 {
    fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 2..].to_owned();
            let f: Vec<&str> = rest.split(' ').collect();
            let u: u64 = f.get(11)?.parse().ok()?;
            let st: u64 = f.get(12)?.parse().ok()?;
            Some((u + st) as f64 / TICKS_PER_SEC)
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_roles() {
        let w = Watched::parse("postgres=12+").unwrap();
        assert_eq!((w.role.as_str(), w.pid, w.children), ("postgres", 12, true));
        assert!(Watched::parse("gateway").is_err());
        assert!(Watched::parse("gateway=x").is_err());
    }

    #[test]
    fn samples_this_process_and_sees_cpu_spent() {
        let me = std::process::id();
        let w = [Watched::parse(&format!("self={me}")).unwrap()];
        let a = sample(&w, &[]);
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let b = sample(&w, &[]);
        let d = delta(&a, &b);
        assert!(d.cpu("self") > 0.05, "{d:?}");
        // A busy loop in user space: the kernel's share is small.
        assert!(d.sys("self") < d.cpu("self") / 2.0, "{d:?}");
    }

    #[test]
    fn sees_kernel_time_spent_in_system_calls() {
        let me = std::process::id();
        let w = [Watched::parse(&format!("self={me}")).unwrap()];
        let a = sample(&w, &[]);
        // Until this thread has used 0.2 s of CPU (on a loaded machine it
        // gets less than its wall time): reading a /proc file, which this
        // loop does to know, is almost all kernel work.
        let start = thread_cpu_s();
        while thread_cpu_s() - start < 0.2 {}
        let b = sample(&w, &[]);
        let d = delta(&a, &b);
        assert!(d.sys("self") > 0.05, "{d:?}");
        assert!(d.sys("self") <= d.cpu("self") + 1e-9, "{d:?}");
        assert!(d.rss_kib["self"] > 0);
        assert!(b.roles["self"].procs == 1);
    }
}
