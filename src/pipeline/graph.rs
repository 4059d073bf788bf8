//! The stage graph: a petgraph DAG from each input to the stage that reads it.

use super::PipelineError;
use super::layers::Sources;
use super::parse::{RawStage, closest};
use crate::stages::env_name;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeSet, HashMap};

/// Checks inputs and acyclicity; returns stage indices in topological order (upstream first,
/// ties broken by declaration order so plans print in a stable order).
pub fn check(sources: &Sources, stages: &[RawStage]) -> Result<Vec<usize>, PipelineError> {
    let at = |offset: usize, message: String| sources.at(offset, message);
    check_env_names(stages).map_err(|(offset, message)| at(offset, message))?;
    let (graph, nodes) = input_graph(stages).map_err(|(offset, message)| at(offset, message))?;
    if let Err(cycle) = petgraph::algo::toposort(&graph, None) {
        let members = cycle_through(&graph, cycle.node_id());
        let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        let mut ring: Vec<&str> = members.iter().map(|&i| names[i]).collect();
        ring.push(names[members[0]]);
        let lines: Vec<String> = members
            .iter()
            .map(|&i| format!("`{}` at {}", names[i], sources.place(stages[i].span.start)))
            .collect();
        return Err(at(
            stages[members[0]].span.start,
            format!(
                "the stages form a cycle: {} ({}); remove one of these inputs",
                ring.join(" → "),
                lines.join(", ")
            ),
        ));
    }
    Ok(declaration_order(&graph, &nodes))
}

/// An error at a byte offset of the pipeline file.
type At = (usize, String);

/// Two stages whose names become the same `MVC_IN_` variable are an error.
fn check_env_names(stages: &[RawStage]) -> Result<(), At> {
    let mut env_names: HashMap<String, &str> = HashMap::new();
    for stage in stages {
        if let Some(other) = env_names.insert(env_name(&stage.name), &stage.name) {
            return Err((
                stage.span.start,
                format!(
                    "stages `{other}` and `{}` both become MVC_IN_{}; rename one",
                    stage.name,
                    env_name(&stage.name)
                ),
            ));
        }
    }
    Ok(())
}

/// The graph of inputs, an edge from each input to the stage that reads it; an input that
/// is not a stage (with the closest name), the stage itself, or listed twice is an error.
fn input_graph(stages: &[RawStage]) -> Result<(DiGraph<usize, ()>, Vec<NodeIndex>), At> {
    let mut index: HashMap<String, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    // A stage's sub-stages (`objects.select`) are read through the stage they belong to.
    for (i, stage) in stages.iter().enumerate() {
        for sub in stage.params.sub_stages() {
            index.insert(format!("{}.{sub}", stage.name), i);
        }
    }
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..stages.len()).map(|i| graph.add_node(i)).collect();
    for (i, stage) in stages.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for input in stage.params.inputs() {
            let name = input.get_ref().as_str();
            let offset = input.span().start;
            let Some(&upstream) = index.get(name) else {
                let mut msg = format!(
                    "stage `{}`: input `{name}` is not a stage of this pipeline (stages: {})",
                    stage.name,
                    names.join(", ")
                );
                if let Some(close) = closest(name, &names) {
                    msg.push_str(&format!("; did you mean `{close}`?"));
                }
                return Err((offset, msg));
            };
            if upstream == i {
                let msg = format!("stage `{}` lists itself as an input", stage.name);
                return Err((offset, msg));
            }
            if !seen.insert(name) {
                let msg = format!("stage `{}` lists input `{name}` twice", stage.name);
                return Err((offset, msg));
            }
            graph.add_edge(nodes[upstream], nodes[i], ());
        }
    }
    Ok((graph, nodes))
}

/// A topological order by Kahn's algorithm, always taking the earliest-declared ready stage
/// (so plans print in a stable order).
fn declaration_order(graph: &DiGraph<usize, ()>, nodes: &[NodeIndex]) -> Vec<usize> {
    let mut indegree: Vec<usize> = nodes
        .iter()
        .map(|n| graph.neighbors_directed(*n, Direction::Incoming).count())
        .collect();
    let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|i| indegree[*i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for next in graph.neighbors_directed(nodes[i], Direction::Outgoing) {
            let j = graph[next];
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.insert(j);
            }
        }
    }
    order
}

/// The stages of a cycle through `start`, in the order the inputs flow.
fn cycle_through(graph: &DiGraph<usize, ()>, start: NodeIndex) -> Vec<usize> {
    // Depth-first search for a path from `start` back to itself; `start` is known to lie on
    // a cycle. Neighbours are visited in declaration order so the message is stable.
    fn dfs(
        graph: &DiGraph<usize, ()>,
        at: NodeIndex,
        start: NodeIndex,
        path: &mut Vec<NodeIndex>,
        seen: &mut BTreeSet<NodeIndex>,
    ) -> bool {
        let mut next: Vec<NodeIndex> = graph.neighbors_directed(at, Direction::Outgoing).collect();
        next.sort();
        for n in next {
            if n == start {
                return true;
            }
            if seen.insert(n) {
                path.push(n);
                if dfs(graph, n, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start];
    let mut seen = BTreeSet::from([start]);
    dfs(graph, start, start, &mut path, &mut seen);
    // Start the ring at its earliest-declared stage.
    let members: Vec<usize> = path.iter().map(|n| graph[*n]).collect();
    let first = members
        .iter()
        .enumerate()
        .min_by_key(|(_, s)| **s)
        .map(|(i, _)| i)
        .unwrap_or(0);
    members[first..]
        .iter()
        .chain(&members[..first])
        .copied()
        .collect()
}
