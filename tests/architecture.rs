//! The crate map in ARCHITECTURE.md, as a test (in the spirit of rust-analyzer's `tidy`): it
//! reads `cargo metadata` and fails when a crate depends on one the architecture forbids.
//!
//! The rules, each a row of ARCHITECTURE.md's crate table:
//!
//! * `meterline-schemas` is pure contracts: no workspace crate, and no I/O crate anywhere in
//!   its dependency tree (normal dependencies, followed transitively).
//! * `meterline-client` is embedded in gateways: no workspace crate.
//! * `meterline-infra` (shared clients) may use `meterline-schemas` only.
//! * A component (ingest, aggregator, scorer, notifier) may use schemas and infra, never another
//!   component, and never the simulator, the benchmarks, the growth analytics or the binary.
//! * The simulator and the growth analytics may use components, never each other, the
//!   benchmarks or the binary (the binary depends on them).
//! * The console may use components and the growth analytics, never the simulator, the
//!   benchmarks or the binary (the binary serves it).
//! * Nothing depends on the benchmarks.
//!
//! Only normal (and build) dependencies count: a dev-dependency does not ship.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Crates that do I/O: none of them may appear under `meterline-schemas`.
const IO_CRATES: &[&str] = &[
    "sqlx",
    "reqwest",
    "tokio",
    "rdkafka",
    "redis",
    "clickhouse",
    "hyper",
    "axum",
];

const COMPONENTS: &[&str] = &[
    "meterline-ingest",
    "meterline-aggregator",
    "meterline-scorer",
    "meterline-notifier",
];

/// For each workspace crate, the workspace crates it may depend on (normal dependencies).
fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut m = BTreeMap::new();
    let set = |v: &[&'static str]| v.iter().copied().collect::<BTreeSet<_>>();
    m.insert("meterline-schemas", set(&[]));
    m.insert("meterline-client", set(&[]));
    m.insert("meterline-infra", set(&["meterline-schemas"]));
    for c in COMPONENTS {
        m.insert(*c, set(&["meterline-schemas", "meterline-infra"]));
    }
    let mut app = vec!["meterline-schemas", "meterline-infra", "meterline-client"];
    app.extend_from_slice(COMPONENTS);
    m.insert("meterline-sim", set(&app));
    m.insert("meterline-growth", set(&app));
    let mut console = app.clone();
    console.push("meterline-growth");
    m.insert("meterline-console", set(&console));
    let mut binary = app.clone();
    binary.extend_from_slice(&["meterline-sim", "meterline-growth", "meterline-console"]);
    m.insert("meterline", set(&binary));
    let mut bench = binary.clone();
    bench.push("meterline");
    m.insert("meterline-bench", set(&bench));
    m
}

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// A dependency edge that ships: normal or build, not dev-only.
fn ships(dep: &Value) -> bool {
    dep["dep_kinds"]
        .as_array()
        .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].as_str() != Some("dev")))
}

struct Graph {
    /// package id → name
    names: BTreeMap<String, String>,
    /// package id → ids of its shipped dependencies
    edges: BTreeMap<String, Vec<String>>,
    members: BTreeSet<String>,
}

fn graph() -> Graph {
    let meta = metadata();
    let names = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let edges = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| ships(d))
                .map(|d| d["pkg"].as_str().unwrap().to_string())
                .collect();
            (n["id"].as_str().unwrap().to_string(), deps)
        })
        .collect();
    let members = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    Graph {
        names,
        edges,
        members,
    }
}

impl Graph {
    fn id(&self, name: &str) -> &str {
        self.members
            .iter()
            .find(|id| self.names[*id] == name)
            .unwrap_or_else(|| panic!("{name} is not a workspace member"))
    }

    /// Every crate reachable from `name` through shipped dependencies, with the path to it.
    fn reachable(&self, name: &str) -> BTreeMap<String, Vec<String>> {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let start = self.id(name).to_string();
        let mut stack = vec![(start, vec![name.to_string()])];
        while let Some((id, path)) = stack.pop() {
            for dep in self.edges.get(&id).into_iter().flatten() {
                let dep_name = self.names[dep].clone();
                if seen.contains_key(&dep_name) {
                    continue;
                }
                let mut p = path.clone();
                p.push(dep_name.clone());
                seen.insert(dep_name, p.clone());
                stack.push((dep.clone(), p));
            }
        }
        seen
    }
}

#[test]
fn workspace_crates_depend_only_on_what_the_architecture_allows() {
    let g = graph();
    let allowed = allowed();
    let member_names: BTreeSet<&str> = g.members.iter().map(|id| g.names[id].as_str()).collect();
    let mut violations = Vec::new();
    for id in &g.members {
        let name = g.names[id].as_str();
        let Some(ok) = allowed.get(name) else {
            violations.push(format!(
                "{name} is not in the architecture's crate table (tests/architecture.rs)"
            ));
            continue;
        };
        for dep in g.edges.get(id).into_iter().flatten() {
            let dep = g.names[dep].as_str();
            if member_names.contains(dep) && !ok.contains(dep) {
                violations.push(format!("{name} depends on {dep}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies the architecture forbids (ARCHITECTURE.md, crate table):\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn schemas_has_no_io_crate_anywhere_below_it() {
    let g = graph();
    let below = g.reachable("meterline-schemas");
    let found: Vec<String> = IO_CRATES
        .iter()
        .filter_map(|c| below.get(*c).map(|path| path.join(" -> ")))
        .collect();
    assert!(
        found.is_empty(),
        "meterline-schemas must stay free of I/O, but it reaches:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn every_crate_in_the_table_is_a_workspace_member() {
    let g = graph();
    let members: BTreeSet<&str> = g.members.iter().map(|id| g.names[id].as_str()).collect();
    for name in allowed().keys() {
        assert!(
            members.contains(name),
            "{name} is in the rules but not in the workspace"
        );
    }
}
