//! The layout invariants ARCHITECTURE.md states, checked on the source tree: inside each crate
//! the module import graph has no circles, the folders that must not look up don't
//! (`engine` never imports `kinds`, `report` or `cli`; `task` never imports `fl`, `methods` or
//! `fit`; ...), and no source file passes the size at which a file should be split.
//!
//! An import is a `crate::a::b` or `super::a` path outside comments and `#[cfg(test)]` code,
//! resolved to the longest module prefix that exists; a module's own children and its parent's
//! re-exports are the ordinary Rust module pattern and are not edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;
/// Module → the modules it imports.
type Graph = BTreeMap<ModPath, BTreeSet<ModPath>>;

/// Past this many lines a file holds more than one idea (DEVELOPERS guide: split past ~600).
const MAX_LINES: usize = 600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file that counts for imports: no comment lines, nothing from `#[cfg(test)]` on.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `crate::…` / `super::…` paths in `code`, as (is_super, segments).
fn paths(code: &str) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            let word_before =
                at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
            if word_before {
                continue;
            }
            let mut segs = Vec::new();
            let mut rest = &code[at + start.len()..];
            loop {
                let n = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if n == 0 {
                    break;
                }
                segs.push(rest[..n].to_string());
                match rest[n..].strip_prefix("::") {
                    Some(r) => rest = r,
                    None => break,
                }
            }
            if !segs.is_empty() {
                out.push((start == "super::", segs));
            }
        }
    }
    out
}

/// Module → modules it imports, for the crate whose sources are under `src`.
fn import_graph(src: &Path) -> (Graph, Vec<(PathBuf, usize)>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<ModPath, PathBuf> = files
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let mut graph = Graph::new();
    let mut sizes = Vec::new();
    for (m, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        sizes.push((file.clone(), text.lines().count()));
        let edges = graph.entry(m.clone()).or_default();
        for (is_super, segs) in paths(&code(&text)) {
            let mut path: ModPath = if is_super {
                m[..m.len().saturating_sub(1)].to_vec()
            } else {
                Vec::new()
            };
            path.extend(segs);
            let Some(target) = (1..=path.len())
                .rev()
                .map(|i| path[..i].to_vec())
                .find(|p| modules.contains_key(p))
            else {
                continue;
            };
            // A module's own descendants and ancestors are not import edges.
            if !target.starts_with(m) && !m.starts_with(&target) {
                edges.insert(target);
            }
        }
    }
    (graph, sizes)
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(graph: &Graph) -> Vec<Vec<ModPath>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on: BTreeSet<&'a ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a ModPath) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

const CRATES: [&str; 3] = ["datasets/src", "stages/src", "pipeline/src"];

#[test]
fn no_import_circles_inside_a_crate() {
    let mut found = Vec::new();
    for src in CRATES {
        let (graph, _) = import_graph(&root().join(src));
        for comp in circles(&graph) {
            let mods: BTreeSet<_> = comp.iter().collect();
            let edges: Vec<String> = comp
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| mods.contains(b))
                        .map(move |b| format!("{} -> {}", name(a), name(b)))
                })
                .collect();
            found.push(format!("{src}: {}", edges.join(", ")));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

/// (crate, folder, folders it must never import).
const NEVER: [(&str, &str, &[&str]); 7] = [
    (
        "pipeline/src",
        "engine",
        &["kinds", "report", "cli", "fetch"],
    ),
    (
        "pipeline/src",
        "fetch",
        &["engine", "kinds", "report", "cli"],
    ),
    ("pipeline/src", "report", &["kinds", "cli"]),
    ("pipeline/src", "kinds", &["cli"]),
    (
        "stages/src",
        "task",
        &["fl", "methods", "fit", "fedl2p", "psg"],
    ),
    ("stages/src", "model", &["task", "fl", "methods", "fit"]),
    ("stages/src", "fit", &["fl", "methods"]),
];

#[test]
fn lower_folders_never_import_higher_ones() {
    let mut found = Vec::new();
    for (src, folder, banned) in NEVER {
        let (graph, _) = import_graph(&root().join(src));
        for (m, targets) in &graph {
            if m.first().map(String::as_str) != Some(folder) {
                continue;
            }
            for t in targets {
                if banned.contains(&t.first().map(String::as_str).unwrap_or("")) {
                    found.push(format!("{src}: {} imports {}", name(m), name(t)));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn no_source_file_needs_splitting() {
    let mut found = Vec::new();
    for src in CRATES {
        let (_, sizes) = import_graph(&root().join(src));
        for (file, n) in sizes {
            if n > MAX_LINES {
                found.push(format!("{} has {n} lines", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "split these (one idea per file, ≤ {MAX_LINES} lines):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle_and_a_back_edge() {
    let g: Graph = [
        (vec!["a".into()], [vec!["b".to_string()]].into()),
        (vec!["b".into()], [vec!["a".to_string()]].into()),
        (vec!["c".into()], BTreeSet::new()),
    ]
    .into();
    assert_eq!(circles(&g).len(), 1);
    let p = paths("use crate::engine::store::Store;\nlet x = super::err(e); // crate::kinds");
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(code("use crate::a;\n// use crate::b;\n").contains("crate::a"));
    assert!(!code("use crate::a;\n// use crate::b;\n").contains("crate::b"));
}
