//! The folder graph of `src/` is a DAG: every `crate::x` reference in a file under module `y`
//! is an edge `y -> x`, and no chain of edges comes back. Also: model families are written on
//! the layer seam only, never on a backend.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/model/cpu/mod.rs` -> `model`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// Every `crate::name` in the text (comments included: a doc link is a dependency too).
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_form_a_dag() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &all {
        let Some(from) = module_of(&src, f) else {
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read");
        let entry = graph.entry(from.clone()).or_default();
        for to in references(&text) {
            if to != from {
                entry.insert(to);
            }
        }
    }
    assert!(graph.len() > 8, "modules found: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("folder cycle: {}\nedges: {graph:#?}", cycle.join(" -> "));
    }
    // The leaves stay leaves.
    for leaf in ["config", "priority", "metrics"] {
        assert!(
            graph.get(leaf).is_none_or(|e| e.is_empty()),
            "{leaf} must import nothing of the crate: {:?}",
            graph[leaf]
        );
    }
    assert!(
        !graph["model"].contains("config"),
        "model must not read the command line (convert in inference/start.rs)"
    );
}

#[test]
fn families_are_written_on_the_seam_not_on_a_backend() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model/families");
    let mut fam = Vec::new();
    files(&dir, &mut fam);
    let seam = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model");
    fam.push(seam.join("layers.rs"));
    fam.push(seam.join("heads.rs"));
    for f in fam {
        let text = std::fs::read_to_string(&f).expect("read");
        for backend in [
            "model::cpu",
            "model::reference",
            "model::cuda",
            "super::cpu",
            "super::reference",
        ] {
            assert!(!text.contains(backend), "{} uses {backend}", f.display());
        }
    }
}

#[test]
fn the_checker_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert!(find_cycle(&g).is_none());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        references("use crate::model::x; // crate::jobs"),
        ["jobs".to_string(), "model".to_string()].into()
    );
}
