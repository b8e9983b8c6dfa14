//! The folder graph of `src/` is a DAG: every `crate::x` reference in a file under module `y`
//! is an edge `y -> x`, and no chain of edges comes back. So is the file graph: a `crate::` or
//! `super::` path in a file is an edge to the file that defines the longest module prefix of
//! that path (re-exports and unit tests aside). Also: model families are written on the layer
//! seam only, never on a backend, neither `inference/` nor `model/` knows HTTP, and a file over
//! 500 lines (unit tests aside) says in its module doc why it is one concern.

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

/// A file's module path: `src/jobs/blob.rs` -> `[jobs, blob]`, `src/jobs/mod.rs` -> `[jobs]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut path: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if matches!(
        path.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        path.pop();
    }
    path
}

/// The text a file's edges come from: no unit tests (they may use anything), no re-exports.
fn code_of(text: &str) -> String {
    let text = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i]);
    text.lines()
        .filter(|l| {
            let l = l.trim_start();
            !(l.starts_with("pub use ") || l.starts_with("pub(crate) use "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path after `crate::` or `super::` (braces expanded), as segments from the crate root.
fn paths_in(text: &str, module: &[String]) -> Vec<Vec<String>> {
    fn ident(s: &[u8], i: &mut usize) -> Option<String> {
        let start = *i;
        while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
            *i += 1;
        }
        (*i > start).then(|| String::from_utf8_lossy(&s[start..*i]).to_string())
    }
    fn parse(s: &[u8], i: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        loop {
            if *i < s.len() && s[*i] == b'{' {
                *i += 1;
                while *i < s.len() && s[*i] != b'}' {
                    while *i < s.len() && matches!(s[*i], b' ' | b'\n' | b'\t' | b',') {
                        *i += 1;
                    }
                    if *i < s.len() && s[*i] != b'}' {
                        let before = *i;
                        parse(s, i, prefix.clone(), out);
                        if *i == before {
                            *i += 1;
                        }
                    }
                }
                *i += 1;
                out.push(prefix);
                return;
            }
            match ident(s, i) {
                Some(name) => {
                    prefix.push(name);
                    if s[*i..].starts_with(b"::") {
                        *i += 2;
                        continue;
                    }
                    out.push(prefix);
                    return;
                }
                None => {
                    out.push(prefix);
                    return;
                }
            }
        }
    }
    let s = text.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < s.len() {
        let rest = &text[at..];
        let Some(found) = rest
            .find("crate::")
            .into_iter()
            .chain(rest.find("super::"))
            .min()
        else {
            break;
        };
        let mut i = at + found;
        // Part of a longer word (`my_crate::`)?
        if i > 0 && (s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_') {
            at = i + 1;
            continue;
        }
        let base = if s[i..].starts_with(b"crate::") {
            i += "crate::".len();
            Vec::new()
        } else {
            let mut up = 0;
            while s[i..].starts_with(b"super::") {
                i += "super::".len();
                up += 1;
            }
            module[..module.len().saturating_sub(up)].to_vec()
        };
        parse(s, &mut i, base, &mut out);
        at = i.max(at + 1);
    }
    out
}

#[test]
fn source_files_form_a_dag() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let modules: BTreeSet<Vec<String>> = all.iter().map(|f| module_path(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &all {
        let from = module_path(&src, f);
        let text = code_of(&std::fs::read_to_string(f).expect("read"));
        let entry = graph.entry(from.join("::")).or_default();
        for path in paths_in(&text, &from) {
            let target = (1..=path.len())
                .rev()
                .map(|n| &path[..n])
                .find(|p| modules.contains(*p));
            if let Some(to) = target.filter(|to| *to != from.as_slice()) {
                entry.insert(to.join("::"));
            }
        }
    }
    assert!(graph.len() > 100, "files found: {}", graph.len());
    if let Some(cycle) = find_cycle(&graph) {
        panic!("file import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn inference_and_model_know_no_http() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for dir in ["inference", "model"] {
        let mut all = Vec::new();
        files(&root.join(dir), &mut all);
        for f in all {
            let text = std::fs::read_to_string(&f).expect("read");
            for http in ["axum::", "hyper::", "http::", "tonic::", "StatusCode"] {
                assert!(
                    !text.contains(http),
                    "{} uses {http}: HTTP belongs to server/",
                    f.display()
                );
            }
        }
    }
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
    let module = vec!["jobs".to_string(), "blob".to_string()];
    assert_eq!(
        paths_in(
            "use super::{lease::Fence, durable}; use crate::model::{Model, cpu::X};",
            &module
        ),
        vec![
            vec!["jobs", "lease", "Fence"],
            vec!["jobs", "durable"],
            vec!["jobs"],
            vec!["model", "Model"],
            vec!["model", "cpu", "X"],
            vec!["model"],
        ]
        .into_iter()
        .map(|p| p.into_iter().map(String::from).collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );
    assert_eq!(
        references("use crate::model::x; // crate::jobs"),
        ["jobs".to_string(), "model".to_string()].into()
    );
}

#[test]
fn a_long_file_says_why_it_is_one_concern() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut unexplained = Vec::new();
    for f in all {
        let text = std::fs::read_to_string(&f).expect("read");
        let code_lines = text
            .lines()
            .take_while(|l| !l.starts_with("#[cfg(test)]"))
            .count();
        let doc: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join(" ");
        if code_lines > 500 && !doc.contains("on purpose") {
            unexplained.push(format!("{} ({code_lines} lines)", f.display()));
        }
    }
    assert!(
        unexplained.is_empty(),
        "split these along their concerns, or say in the module doc why each is one \
         (\"... on purpose: ...\"): {unexplained:?}"
    );
}
