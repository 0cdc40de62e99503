//! Latency histograms in microseconds: log-linear buckets (exact below
//! 1,024 µs, then 512 buckets per power of two, under 0.2 % error), so any
//! number of samples costs a fixed few kilobytes, histograms from several
//! worker processes merge exactly, and they travel as sparse JSON.

use serde::{Deserialize, Serialize};

/// Values below this are their own bucket.
const LINEAR: u64 = 1024;
/// Buckets per power of two above [`LINEAR`].
const SUB: u64 = 512;
/// Largest recorded value (about 18 minutes); larger ones are clamped.
const MAX_US: u64 = 1 << 30;

fn index(v: u64) -> usize {
    let v = v.min(MAX_US);
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - u64::from(v.leading_zeros()) - 9; // v >> e is in 512..1024
    let m = v >> e;
    (LINEAR + (e - 1) * SUB + (m - SUB)) as usize
}

fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let e = (i - LINEAR) / SUB + 1;
    let m = (i - LINEAR) % SUB + SUB;
    m << e
}

/// A mergeable latency histogram (µs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        let i = index(us);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), in µs; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i).min(self.max);
            }
        }
        self.max
    }
}

/// Wire form: `[[bucket, count], ...]` plus max.
#[derive(Serialize, Deserialize)]
struct Sparse {
    buckets: Vec<(u32, u64)>,
    max: u64,
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Sparse {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            max: self.max,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sparse = Sparse::deserialize(d)?;
        let mut h = Histogram {
            max: sparse.max,
            ..Histogram::default()
        };
        for (i, c) in sparse.buckets {
            let i = (i as usize).min(index(MAX_US));
            if h.counts.len() <= i {
                h.counts.resize(i + 1, 0);
            }
            h.counts[i] += c;
            h.total += c;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..5_000_000u64).step_by(37) {
            let i = index(v);
            assert!(i >= last, "{v}");
            last = i;
            let lb = lower_bound(i);
            assert!(lb <= v, "{v} {lb}");
            assert!((v - lb) as f64 <= v as f64 * 0.002 + 1.0, "{v} {lb}");
        }
    }

    #[test]
    fn quantiles_merge_and_survive_the_wire() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in 1..=1000 {
            a.record(v);
            b.record(v + 1000);
        }
        a.merge(&b);
        assert_eq!(a.count(), 2000);
        assert_eq!(a.quantile(0.5), 1000);
        let p99 = a.quantile(0.99);
        assert!((1976..=1980).contains(&p99), "{p99}");
        assert_eq!(a.max(), 2000);
        let back: Histogram = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }
}
