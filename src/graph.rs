//! The step DAG (petgraph).
//!
//! Edge direction: an edge `a → b` means "b depends on a" (a runs first).
//! Nodes are numbered in declaration order, and every order this module
//! returns breaks ties by declaration order, so plans are stable.
//!
//! A [`Dag`] can only be built from a graph without cycles: once you hold
//! one, topological order exists and is fixed.

use std::collections::BTreeSet;

use petgraph::Direction;
use petgraph::algo::kosaraju_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

/// A cycle, as step indices in order (the first is repeated implicitly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle(pub Vec<usize>);

/// A sealed, acyclic step graph.
#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<usize, ()>,
    order: Vec<usize>,
}

impl Dag {
    /// Builds the DAG of `n` steps from `deps[i]` = the steps step `i` depends
    /// on. Returns every cycle when there are some.
    pub fn build(n: usize, deps: &[BTreeSet<usize>]) -> Result<Dag, Vec<Cycle>> {
        let mut graph = DiGraph::<usize, ()>::with_capacity(n, n);
        let nodes: Vec<NodeIndex> = (0..n).map(|i| graph.add_node(i)).collect();
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                graph.add_edge(nodes[d], nodes[i], ());
            }
        }
        let cycles = find_cycles(&graph);
        if !cycles.is_empty() {
            return Err(cycles);
        }
        let order = stable_topological_order(&graph);
        Ok(Dag { graph, order })
    }

    /// Steps in an order where every step comes after its dependencies,
    /// ties broken by declaration order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Direct dependencies of a step, ascending.
    pub fn dependencies(&self, step: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .edges_directed(NodeIndex::new(step), Direction::Incoming)
            .map(|e| e.source().index())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Direct dependants of a step, ascending.
    pub fn dependants(&self, step: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .edges_directed(NodeIndex::new(step), Direction::Outgoing)
            .map(|e| e.target().index())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }
}

/// Kahn's algorithm with the ready set ordered by declaration index.
fn stable_topological_order(graph: &DiGraph<usize, ()>) -> Vec<usize> {
    let n = graph.node_count();
    let mut indegree: Vec<usize> = (0..n)
        .map(|i| {
            graph
                .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for next in graph.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
            let j = next.index();
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.insert(j);
            }
        }
    }
    order
}

/// One cycle per strongly connected component that has one, starting at its
/// first-declared step and following edges in declaration order.
fn find_cycles(graph: &DiGraph<usize, ()>) -> Vec<Cycle> {
    let mut cycles = Vec::new();
    // Kosaraju: iterative, so a 100,000-step chain does not overflow the
    // stack (petgraph's Tarjan recurses once per step of a path).
    for scc in kosaraju_scc(graph) {
        let members: BTreeSet<usize> = scc.iter().map(|n| n.index()).collect();
        let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let start = *members.first().unwrap_or(&0);
        cycles.push(Cycle(cycle_from(graph, start, &members)));
    }
    cycles.sort_by_key(|c| c.0.first().copied());
    cycles
}

/// A path inside an SCC from `start` back to `start`, as dependency order
/// reversed: "start depends on x, which depends on …". Depth-first search.
fn cycle_from(graph: &DiGraph<usize, ()>, start: usize, members: &BTreeSet<usize>) -> Vec<usize> {
    // Follow "depends on" edges (incoming), which reads naturally in errors.
    fn dfs(
        graph: &DiGraph<usize, ()>,
        at: usize,
        start: usize,
        members: &BTreeSet<usize>,
        path: &mut Vec<usize>,
        seen: &mut BTreeSet<usize>,
    ) -> bool {
        let mut next: Vec<usize> = graph
            .neighbors_directed(NodeIndex::new(at), Direction::Incoming)
            .map(|n| n.index())
            .filter(|j| members.contains(j))
            .collect();
        next.sort_unstable();
        for j in next {
            if j == start {
                return true;
            }
            if seen.insert(j) {
                path.push(j);
                if dfs(graph, j, start, members, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start];
    let mut seen = BTreeSet::from([start]);
    dfs(graph, start, start, members, &mut path, &mut seen);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(list: &[&[usize]]) -> Vec<BTreeSet<usize>> {
        list.iter().map(|d| d.iter().copied().collect()).collect()
    }

    #[test]
    fn order_is_topological_and_stable() {
        //   0 ──▶ 2
        //   1 ──▶ 2 ──▶ 3
        //   4 (independent, declared last)
        let dag = Dag::build(5, &deps(&[&[], &[], &[0, 1], &[2], &[]])).unwrap();
        assert_eq!(dag.order(), &[0, 1, 2, 3, 4]);
        assert_eq!(dag.dependencies(2), vec![0, 1]);
        assert_eq!(dag.dependants(2), vec![3]);
    }

    #[test]
    fn later_declared_dependency_runs_first() {
        // 0 depends on 1.
        let dag = Dag::build(2, &deps(&[&[1], &[]])).unwrap();
        assert_eq!(dag.order(), &[1, 0]);
    }

    #[test]
    fn cycles_are_named_in_dependency_order() {
        // 0 needs 2, 2 needs 1, 1 needs 0; 3 needs itself.
        let err = Dag::build(4, &deps(&[&[2], &[0], &[1], &[3]])).unwrap_err();
        assert_eq!(err, vec![Cycle(vec![0, 2, 1]), Cycle(vec![3])]);
    }
}
