//! The stage graph (petgraph): topological order, cycle reporting and Graphviz output.

use std::collections::BTreeMap;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use super::spec::StageSpec;

fn graph(stages: &BTreeMap<String, StageSpec>) -> (DiGraph<&str, ()>, BTreeMap<&str, NodeIndex>) {
    let mut g = DiGraph::new();
    let idx: BTreeMap<&str, NodeIndex> = stages
        .keys()
        .map(|name| (name.as_str(), g.add_node(name.as_str())))
        .collect();
    for spec in stages.values() {
        for need in &spec.needs {
            if let (Some(&from), Some(&to)) = (idx.get(need.as_str()), idx.get(spec.name.as_str()))
            {
                g.add_edge(from, to, ());
            }
        }
    }
    (g, idx)
}

/// A cycle among the stages, as names with the first repeated at the end.
pub fn find_cycle(stages: &BTreeMap<String, StageSpec>) -> Option<Vec<String>> {
    let (g, _) = graph(stages);
    toposort(&g, None).err()?;
    let scc = tarjan_scc(&g)
        .into_iter()
        .find(|c| c.len() > 1 || g.contains_edge(c[0], c[0]))?;
    // Walk the cycle inside the component, starting at its alphabetically first stage.
    let members: std::collections::BTreeSet<NodeIndex> = scc.iter().copied().collect();
    let start = *scc.iter().min_by_key(|n| g[**n]).expect("non-empty");
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = g
            .neighbors(cur)
            .filter(|n| members.contains(n))
            .min_by_key(|n| g[*n])
            .expect("a strongly connected component has an edge inside");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<String> = path[pos..].iter().map(|n| g[*n].to_string()).collect();
            cycle.push(g[next].to_string());
            return Some(cycle);
        }
        path.push(next);
        cur = next;
    }
}

/// Stage names in dependency order (ties broken by name, so the order is stable).
pub fn topo_order(stages: &BTreeMap<String, StageSpec>) -> Vec<String> {
    let mut done: std::collections::BTreeSet<String> = Default::default();
    let mut order = Vec::with_capacity(stages.len());
    while order.len() < stages.len() {
        let next = stages
            .values()
            .find(|s| !done.contains(&s.name) && s.needs.iter().all(|n| done.contains(n)))
            .expect("manifest validation rejects cycles");
        done.insert(next.name.clone());
        order.push(next.name.clone());
    }
    order
}

/// Graphviz rendering of the stage graph, with instance counts where known.
pub fn to_dot(stages: &BTreeMap<String, StageSpec>, counts: &BTreeMap<String, String>) -> String {
    let mut out = String::from("digraph pipeline {\n  rankdir=LR;\n  node [shape=box];\n");
    for spec in stages.values() {
        let n = counts.get(&spec.name).cloned().unwrap_or_default();
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{}\\n{}\"];\n",
            spec.name, spec.name, spec.kind, n
        ));
    }
    for spec in stages.values() {
        for need in &spec.needs {
            out.push_str(&format!("  \"{need}\" -> \"{}\";\n", spec.name));
        }
    }
    out.push_str("}\n");
    out
}
