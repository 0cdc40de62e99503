//! Side by side: figures of the same scenarios from several runs' `--json`
//! files (Chorus first, then the peers), each as a value and as the ratio
//! of the first to it, in a Markdown table for `BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use serde_json::Value;

use crate::outcome::fmt;

/// `(scenario, figure) → unit, value per run`.
type Rows = BTreeMap<(String, String), (String, Vec<Option<f64>>)>;

/// Reads `label=file` runs and renders the table.
pub fn table(runs: &[String]) -> anyhow::Result<String> {
    let mut labels = Vec::new();
    let mut rows: Rows = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let (label, files) = run
            .split_once('=')
            .with_context(|| format!("expected label=file.json[,file.json…], got {run:?}"))?;
        labels.push(label.to_owned());
        for file in files.split(',') {
            let text = std::fs::read_to_string(file).with_context(|| format!("read {file}"))?;
            let v: Value = serde_json::from_str(&text).with_context(|| format!("parse {file}"))?;
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
                            vec![None; runs.len()],
                        )
                    });
                    entry.1[i] = f["value"].as_f64();
                }
            }
        }
    }
    let mut s = String::new();
    let _ = write!(s, "| scenario | figure | unit |");
    for l in &labels {
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
            let _ = write!(s, " {} |", v.map_or("–".into(), fmt));
        }
        for v in values.iter().skip(1) {
            let ratio = match (values[0], v) {
                (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            };
            let _ = write!(s, " {ratio} |");
        }
        s.push('\n');
    }
    Ok(s)
}
