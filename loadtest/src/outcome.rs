//! What a scenario found: named figures (with the target each is held to,
//! when there is one), the verdict of the delivery check, the cost of each
//! phase per server process, and latency over time. Printed as a table,
//! written as JSON, or rendered as an HTML page with inline SVG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::group::Report;
use crate::hist::Histogram;
use crate::procs::Delta;

/// A bound a figure is held to.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Option<Bound>,
}

impl Figure {
    /// The target as text (`≤ 9.00`), if there is one.
    pub fn bound_text(&self) -> Option<String> {
        self.target.map(|b| match b {
            Bound::AtMost(t) => format!("≤ {}", fmt(t)),
            Bound::AtLeast(t) => format!("≥ {}", fmt(t)),
        })
    }

    pub fn met(&self) -> Option<bool> {
        self.target.map(|b| match b {
            Bound::AtMost(t) => self.value <= t,
            Bound::AtLeast(t) => self.value >= t,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub cost: Delta,
    /// Events delivered to the clients during the phase.
    pub deliveries: u64,
}

/// One second of a run: delivery latency quantiles (µs).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t: u64,
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub target: String,
    pub figures: Vec<Figure>,
    pub verdict: Verdict,
    pub phases: Vec<Phase>,
    pub series: Vec<Point>,
    /// (quantile, µs) of delivery latency over the measured phase.
    pub percentiles: Vec<(f64, u64)>,
    pub warnings: Vec<String>,
    /// What the run did along the way (the faults of a chaos run).
    pub notes: Vec<String>,
}

/// The delivery check, without the raw histograms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub connections: u64,
    pub failed: u64,
    pub first_failure: Option<String>,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub replayed: u64,
    pub from_history: u64,
    pub reconnects: u64,
    /// Why sessions ended in an error and reconnected, by kind.
    pub reconnect_reasons: BTreeMap<String, u64>,
    pub post_errors: u64,
    pub first_post_error: Option<String>,
    /// `send-message`s answered with an error.
    pub send_errors: u64,
    /// Whether faults are failures (Chorus) or only reported (the peers
    /// promise no ordering or recovery).
    pub enforced: bool,
}

impl Verdict {
    pub fn from_report(
        r: &Report,
        post_errors: u64,
        first_post_error: Option<String>,
        enforced: bool,
    ) -> Self {
        Verdict {
            connections: r.connections,
            failed: r.failed,
            first_failure: r.first_failure.clone(),
            received: r.received,
            lost: r.lost,
            duplicates: r.duplicates,
            out_of_order: r.out_of_order,
            replayed: r.replayed,
            from_history: r.from_history,
            reconnects: r.reconnects,
            reconnect_reasons: r.reconnect_reasons.clone(),
            post_errors,
            first_post_error,
            send_errors: r.send_errors,
            enforced,
        }
    }

    pub fn clean(&self) -> bool {
        self.failed == 0
            && self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.post_errors == 0
            && self.send_errors == 0
    }
}

impl Outcome {
    /// The scenario passes when the delivery check is clean (where it is
    /// enforced). Targets are reported, not enforced: they are measured on
    /// shared machines.
    pub fn passed(&self) -> bool {
        !self.verdict.enforced || self.verdict.clean()
    }
}

/// Per-second points of a series of histograms.
pub fn points(series: &std::collections::BTreeMap<u64, Histogram>) -> Vec<Point> {
    let t0 = series.keys().next().copied().unwrap_or(0);
    series
        .iter()
        .map(|(t, h)| Point {
            t: t - t0,
            count: h.count(),
            p50: h.quantile(0.5),
            p99: h.quantile(0.99),
        })
        .collect()
}

/// Quantiles worth plotting.
pub fn percentiles(h: &Histogram) -> Vec<(f64, u64)> {
    [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0]
        .into_iter()
        .map(|q| (q, h.quantile(q)))
        .collect()
}

/// The summary table, as text.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        let _ = writeln!(s, "\n== {} ({}) ==", o.scenario, o.target);
        let _ = writeln!(s, "{:<58} {:>14}  {:<10} target", "figure", "value", "unit");
        for f in &o.figures {
            let target = match (f.bound_text(), f.met()) {
                (Some(b), Some(m)) => format!("{b} {}", if m { "met" } else { "MISSED" }),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "{:<58} {:>14}  {:<10} {}",
                f.name,
                fmt(f.value),
                f.unit,
                target
            );
        }
        let v = &o.verdict;
        let _ = writeln!(
            s,
            "delivery check: {} connections, {} received, {} lost, {} duplicated, {} out of order, {} failed, {} replayed, {} from history, {} reconnects, {} POST errors, {} send-message errors{}{}",
            v.connections,
            v.received,
            v.lost,
            v.duplicates,
            v.out_of_order,
            v.failed,
            v.replayed,
            v.from_history,
            v.reconnects,
            v.post_errors,
            v.send_errors,
            if v.enforced {
                ""
            } else {
                " (not enforced: the peer promises no order or recovery)"
            },
            if o.passed() { "  PASS" } else { "  FAIL" },
        );
        for (reason, n) in &v.reconnect_reasons {
            let _ = writeln!(s, "  reconnected {n} times after: {reason}");
        }
        if let Some(f) = &v.first_failure {
            let _ = writeln!(s, "  first connection failure: {f}");
        }
        if let Some(f) = &v.first_post_error {
            let _ = writeln!(s, "  first POST error: {f}");
        }
        for n in &o.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for w in &o.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
    }
    s
}

/// A figure's value with as many decimals as its size warrants.
pub fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One line of a chart: label, colour, points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// An SVG line chart of `lines`, y in ms.
fn chart(title: &str, x_label: &str, lines: &[Line<'_>], log_x: bool) -> String {
    let (w, h, m) = (640.0, 260.0, 48.0);
    let xs = lines.iter().flat_map(|l| l.2.iter().map(|p| p.0));
    let ys = lines.iter().flat_map(|l| l.2.iter().map(|p| p.1));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let y1 = ys.fold(0.0f64, f64::max).max(0.001) * 1.1;
    if x0 > x1 {
        return String::new();
    }
    let span = (x1 - x0).max(1e-9);
    let px = |x: f64| m + (x - x0) / span * (w - 2.0 * m);
    let py = |y: f64| h - m - y / y1 * (h - 2.0 * m);
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-size='11'>\
         <line x1='{m}' y1='{}' x2='{}' y2='{}' stroke='#888'/><line x1='{m}' y1='{m}' x2='{m}' y2='{}' stroke='#888'/>",
        esc(title),
        h - m,
        w - m,
        h - m,
        h - m
    );
    for i in 0..=4 {
        let y = y1 * f64::from(i) / 4.0;
        let _ = write!(s, "<text x='4' y='{:.0}'>{} ms</text>", py(y) + 4.0, fmt(y));
    }
    let _ = write!(
        s,
        "<text x='{}' y='{}'>{}</text>",
        w / 2.0 - 30.0,
        h - 10.0,
        esc(x_label)
    );
    let _ = write!(
        s,
        "<text x='{m}' y='{}'>{}</text>",
        h - m + 14.0,
        if log_x { "p50".into() } else { fmt(x0) }
    );
    let _ = write!(
        s,
        "<text x='{}' y='{}'>{}</text>",
        w - m - 20.0,
        h - m + 14.0,
        if log_x { "max".into() } else { fmt(x1) }
    );
    for (i, (label, colour, pts)) in lines.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{}'/><text x='{}' y='{}' fill='{colour}'>{}</text>",
            path.join(" "),
            w - m - 80.0,
            m + 14.0 * i as f64,
            esc(label)
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// A self-contained HTML report (no scripts, no external files).
pub fn html(outcomes: &[Outcome], floor: Option<&crate::floor::Floor>) -> String {
    let mut s = String::from(
        "<!doctype html><meta charset='utf-8'><title>Chorus load test</title>\
         <style>body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}\
         .miss{color:#b00}.met{color:#070}</style><h1>Chorus load test</h1>",
    );
    if let Some(f) = floor {
        let _ = write!(
            s,
            "<p>Kernel floor: one un-batched {}-byte write on loopback costs {:.2} µs of CPU (the reader {:.2} µs).</p>",
            f.bytes, f.write_us, f.read_us
        );
    }
    for o in outcomes {
        let _ = write!(
            s,
            "<h2>{} — {}</h2><table><tr><th>figure</th><th>value</th><th>unit</th><th>target</th></tr>",
            esc(&o.scenario),
            esc(&o.target)
        );
        for f in &o.figures {
            let (t, class) = match (f.bound_text(), f.met()) {
                (Some(b), Some(m)) => (b, if m { "met" } else { "miss" }),
                _ => (String::new(), ""),
            };
            let _ = write!(
                s,
                "<tr><td>{}</td><td class='{class}'>{}</td><td>{}</td><td>{t}</td></tr>",
                esc(&f.name),
                fmt(f.value),
                f.unit
            );
        }
        s.push_str("</table>");
        let v = &o.verdict;
        let _ = write!(
            s,
            "<p>Delivery check ({}): {} connections, {} events received, {} lost, {} duplicated, {} out of order, {} connections failed, {} replayed, {} recovered from history, {} POST errors.</p>",
            if o.passed() { "pass" } else { "FAIL" },
            v.connections,
            v.received,
            v.lost,
            v.duplicates,
            v.out_of_order,
            v.failed,
            v.replayed,
            v.from_history,
            v.post_errors
        );
        if !o.series.is_empty() {
            let p50: Vec<(f64, f64)> = o
                .series
                .iter()
                .map(|p| (p.t as f64, p.p50 as f64 / 1000.0))
                .collect();
            let p99: Vec<(f64, f64)> = o
                .series
                .iter()
                .map(|p| (p.t as f64, p.p99 as f64 / 1000.0))
                .collect();
            s.push_str(&chart(
                "POST → delivery latency over time",
                "seconds",
                &[("p50", "#1f77b4", p50), ("p99", "#d62728", p99)],
                false,
            ));
        }
        if !o.percentiles.is_empty() {
            let pts: Vec<(f64, f64)> = o
                .percentiles
                .iter()
                .map(|(q, us)| (-(1.0 - q).max(1e-5).log10(), *us as f64 / 1000.0))
                .collect();
            s.push_str(&chart(
                "latency by percentile (x: 50, 90, 99, 99.9, … %)",
                "percentile (log scale)",
                &[("latency", "#2ca02c", pts)],
                true,
            ));
        }
        for w in &o.warnings {
            let _ = write!(s, "<p class='miss'>warning: {}</p>", esc(w));
        }
    }
    s
}
