//! Side by side: figures of the same scenarios from several runs' `--json`
//! files (Chorus first, then the peers), each as a value and as the ratio
//! of the first to it, in a Markdown table for `BENCHMARKS.md`.
//!
//! A label may name the same scenario in several files (rounds of the same
//! set, run alternating with the peers): its cell is then the median, with
//! the lowest and highest value beside it, and ratios are of medians. One
//! sitting moves a figure by 10-20 % on a small shared machine; the median
//! of alternating rounds is what a side-by-side claim should rest on.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use serde_json::Value;

use crate::outcome::fmt;

/// `(scenario, figure) → unit, the values of each run (one per round)`.
type Rows = BTreeMap<(String, String), (String, Vec<Vec<f64>>)>;

/// Reads `label=file[,file…]` runs and renders the table.
pub fn table(runs: &[String]) -> anyhow::Result<String> {
    let mut labels = Vec::new();
    let mut texts = Vec::new();
    for run in runs {
        let (label, files) = run
            .split_once('=')
            .with_context(|| format!("expected label=file.json[,file.json…], got {run:?}"))?;
        labels.push(label.to_owned());
        let mut these = Vec::new();
        for file in files.split(',') {
            let text = std::fs::read_to_string(file).with_context(|| format!("read {file}"))?;
            let v: Value = serde_json::from_str(&text).with_context(|| format!("parse {file}"))?;
            these.push(v);
        }
        texts.push(these);
    }
    Ok(render(&labels, &texts))
}

/// The table of `runs[i]`'s outcomes, labelled `labels[i]`.
fn render(labels: &[String], runs: &[Vec<Value>]) -> String {
    let mut rows: Rows = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for (i, files) in runs.iter().enumerate() {
        for v in files {
            for o in v["outcomes"].as_array().into_iter().flatten() {
                let scenario = o["scenario"].as_str().unwrap_or("?").to_owned();
                for f in o["figures"].as_array().into_iter().flatten() {
                    let key = (
                        scenario.clone(),
                        f["name"].as_str().unwrap_or("?").to_owned(),
                    );
                    let entry = rows.entry(key.clone()).or_insert_with(|| {
                        order.push(key.clone());
                        (
                            f["unit"].as_str().unwrap_or("").to_owned(),
                            vec![Vec::new(); runs.len()],
                        )
                    });
                    if let Some(x) = f["value"].as_f64() {
                        entry.1[i].push(x);
                    }
                }
            }
        }
    }
    let rounds = rows
        .values()
        .flat_map(|(_, values)| values.iter().map(Vec::len))
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    if rounds > 1 {
        let _ = writeln!(
            s,
            "Medians of up to {rounds} rounds, lowest and highest in brackets; ratios of medians.\n"
        );
    }
    let _ = write!(s, "| scenario | figure | unit |");
    for l in labels {
        let _ = write!(s, " {l} |");
    }
    for l in labels.iter().skip(1) {
        let _ = write!(s, " {} ÷ {l} |", labels[0]);
    }
    s.push('\n');
    s.push_str(&"| --- ".repeat(3 + labels.len() * 2 - 1));
    s.push_str("|\n");
    for key in order {
        let (unit, values) = &rows[&key];
        let _ = write!(
            s,
            "| {} | {} | {unit} |",
            key.0,
            key.1.trim_start_matches(['…', ' '])
        );
        for v in values {
            let _ = write!(s, " {} |", cell(v));
        }
        let medians: Vec<Option<f64>> = values.iter().map(|v| median(v)).collect();
        for m in medians.iter().skip(1) {
            let ratio = match (medians[0], m) {
                (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            };
            let _ = write!(s, " {ratio} |");
        }
        s.push('\n');
    }
    s
}

/// The median (the mean of the middle two for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One value as it is; several as the median and their range (unless
/// they all print alike).
fn cell(values: &[f64]) -> String {
    let Some(m) = median(values) else {
        return "–".into();
    };
    let lo = fmt(values.iter().copied().fold(f64::INFINITY, f64::min));
    let hi = fmt(values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    if lo == hi {
        return fmt(m);
    }
    format!("{} ({lo}–{hi})", fmt(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn outcome(scenario: &str, figures: &[(&str, f64)]) -> Value {
        json!({"outcomes": [{
            "scenario": scenario,
            "figures": figures
                .iter()
                .map(|(name, value)| json!({"name": name, "unit": "µs", "value": value}))
                .collect::<Vec<_>>(),
        }]})
    }

    fn labels() -> Vec<String> {
        vec!["chorus".into(), "peer".into()]
    }

    #[test]
    fn one_round_is_shown_as_it_is_with_its_ratio() {
        let t = render(
            &labels(),
            &[
                vec![outcome("small-rooms", &[("per delivery", 30.0)])],
                vec![outcome("small-rooms", &[("per delivery", 24.0)])],
            ],
        );
        assert!(!t.contains("Medians"), "{t}");
        assert!(
            t.contains("| small-rooms | per delivery | µs | 30.0 | 24.0 | 1.25 |"),
            "{t}"
        );
    }

    #[test]
    fn rounds_are_medians_with_their_range_and_ratios_of_medians() {
        let t = render(
            &labels(),
            &[
                vec![
                    outcome("small-rooms", &[("per delivery", 30.0), ("joined", 10.0)]),
                    outcome("small-rooms", &[("per delivery", 40.0), ("joined", 10.0)]),
                    outcome("small-rooms", &[("per delivery", 28.0), ("joined", 10.0)]),
                ],
                vec![
                    outcome("small-rooms", &[("per delivery", 24.0), ("joined", 10.0)]),
                    outcome("small-rooms", &[("per delivery", 26.0), ("joined", 10.0)]),
                ],
            ],
        );
        assert!(t.starts_with("Medians of up to 3 rounds"), "{t}");
        assert!(
            t.contains("| 30.0 (28.0–40.0) | 25.0 (24.0–26.0) | 1.20 |"),
            "{t}"
        );
        assert!(t.contains("| joined | µs | 10.0 | 10.0 | 1.00 |"), "{t}");
    }

    #[test]
    fn a_figure_missing_from_a_run_is_a_dash() {
        let t = render(
            &labels(),
            &[
                vec![outcome("idle", &[("memory", 6.0), ("joins", 5.0)])],
                vec![outcome("idle", &[("memory", 24.0)])],
            ],
        );
        assert!(
            t.contains("| idle | memory | µs | 6.00 | 24.0 | 0.25 |"),
            "{t}"
        );
        assert!(t.contains("| idle | joins | µs | 5.00 | – | – |"), "{t}");
    }

    #[test]
    fn a_range_that_prints_as_one_value_is_one_value() {
        assert_eq!(cell(&[716.9, 717.2]), "717");
        assert_eq!(cell(&[716.0, 718.0]), "717 (716–718)");
        assert_eq!(cell(&[]), "–");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
