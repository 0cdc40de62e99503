//! The gateway's layering, checked: each top-level module may use only the
//! modules listed for it, all of them lower, so no import cycle can form
//! and the socket layer can never learn about rooms. A new dependency
//! between modules is a design decision: make it here, on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it may use, lowest layers first.
const ALLOWED: &[(&str, &[&str])] = &[
    ("sync", &[]),
    ("close", &[]),
    ("config", &[]),
    ("error", &[]),
    ("liveness", &[]),
    ("series", &[]),
    ("codec", &["error", "series"]),
    ("handle", &["close", "codec", "liveness", "sync"]),
    ("socket", &["close", "codec", "error", "handle", "sync"]),
    ("telemetry", &["close", "codec", "socket"]),
    ("backplane", &["config", "error", "sync"]),
    ("api_client", &["backplane", "error"]),
    (
        "hub",
        &[
            "api_client",
            "backplane",
            "close",
            "codec",
            "config",
            "error",
            "handle",
            "series",
            "sync",
        ],
    ),
    ("state", &["api_client", "backplane", "hub", "socket"]),
    (
        "session",
        &[
            "close", "codec", "error", "handle", "hub", "socket", "state",
        ],
    ),
    ("routes", &["codec", "handle", "session", "socket", "state"]),
];

/// The `crate::x` modules named in a file or directory.
fn uses(path: &Path, out: &mut BTreeSet<String>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("readable dir") {
            uses(&entry.expect("entry").path(), out);
        }
        return;
    }
    let text = std::fs::read_to_string(path).expect("readable file");
    for (i, _) in text.match_indices("crate::") {
        let name: String = text[i + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if matches!(stem, "lib" | "main" | "layers") {
            continue;
        }
        let may = allowed
            .get(stem)
            .unwrap_or_else(|| panic!("module `{stem}` has no place in ALLOWED"));
        seen.insert(stem.to_owned());
        let mut used = BTreeSet::new();
        uses(&path, &mut used);
        used.remove(stem);
        for u in &used {
            assert!(
                may.contains(&u.as_str()),
                "`{stem}` uses `crate::{u}`, which is not below it"
            );
        }
    }
    assert_eq!(seen.len(), ALLOWED.len(), "every layer exists");
}

#[test]
fn the_allowed_graph_points_down() {
    // Each module may use only modules listed before it.
    for (i, (module, may)) in ALLOWED.iter().enumerate() {
        for m in *may {
            let j = ALLOWED
                .iter()
                .position(|(n, _)| n == m)
                .unwrap_or_else(|| panic!("`{m}` is not a module"));
            assert!(j < i, "`{module}` may use `{m}`, which is not below it");
        }
    }
}
