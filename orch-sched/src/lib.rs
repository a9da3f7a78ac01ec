//! orch-sched: the default scheduler. Pure and synchronous: same snapshot, same pending
//! replicas and same seed give the same plan. Filters (runtime, cordon, node selector,
//! max per node, host ports, cpu, memory, replica count) then a spread score
//! (fewest replicas of the same service, then least allocated), ties broken by the seed.
//!
//! Replicas with identical requirements form one equivalence class, so a pass over
//! many pending replicas filters each node once per class, not once per replica.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Lower is better: (replicas of the same service on the node, allocation ‰, tie-break).
type Score = (u32, u64, u64);

use orch_core::scheduler::{ClusterSnapshot, NodeInfo, PendingReplica, Plan, Scheduler};

/// Resources fit + spread across nodes.
#[derive(Clone, Debug, Default)]
pub struct DefaultScheduler;

/// Why a node was rejected, for the "0/N nodes: ..." message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    Runtime,
    Cordoned,
    Selector,
    MaxPerNode,
    Ports,
    Cpu,
    Memory,
    Full,
}

impl Cause {
    fn text(self) -> &'static str {
        match self {
            Cause::Runtime => "lack the needed runtime",
            Cause::Cordoned => "unschedulable (cordoned or unreachable)",
            Cause::Selector => "do not match the node selector",
            Cause::MaxPerNode => "already run max-per-node replicas of the service",
            Cause::Ports => "have the host port in use",
            Cause::Cpu => "insufficient cpu",
            Cause::Memory => "insufficient memory",
            Cause::Full => "have no room for more replicas",
        }
    }
}

fn filter(node: &NodeInfo, p: &PendingReplica) -> Result<(), Cause> {
    if !node.runtimes.contains(&p.runtime) {
        return Err(Cause::Runtime);
    }
    if !node.schedulable {
        return Err(Cause::Cordoned);
    }
    if !p
        .placement
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return Err(Cause::Selector);
    }
    if let Some(max) = p.placement.max_per_node {
        if node.per_service.get(&p.service).copied().unwrap_or(0) >= max {
            return Err(Cause::MaxPerNode);
        }
    }
    if p.ports.iter().any(|port| node.ports_used.contains(port)) {
        return Err(Cause::Ports);
    }
    if node.cpu_capacity > 0 && node.cpu_used + p.cpu > node.cpu_capacity {
        return Err(Cause::Cpu);
    }
    if node.memory_capacity > 0 && node.memory_used + p.memory > node.memory_capacity {
        return Err(Cause::Memory);
    }
    if node.max_replicas > 0 && node.replicas >= node.max_replicas {
        return Err(Cause::Full);
    }
    Ok(())
}

fn mix(seed: u64, i: usize) -> u64 {
    // splitmix64: a cheap, well-distributed tie-break.
    let mut z = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn allocated_permille(n: &NodeInfo) -> u64 {
    let cpu = (n.cpu_used * 1000).checked_div(n.cpu_capacity).unwrap_or(0);
    let mem = (n.memory_used * 1000)
        .checked_div(n.memory_capacity)
        .unwrap_or(0);
    cpu.max(mem)
}

/// The reason string for a replica no node fits.
fn reason(total: usize, causes: &BTreeMap<Cause, usize>) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|(c, n)| format!("{n} {}", c.text()))
        .collect();
    if total == 0 {
        "0/0 nodes: no nodes registered".into()
    } else {
        format!("0/{total} nodes are available: {}", parts.join(", "))
    }
}

impl Scheduler for DefaultScheduler {
    fn name(&self) -> &str {
        "default"
    }

    fn schedule(&self, snapshot: &ClusterSnapshot, pending: &[PendingReplica], seed: u64) -> Plan {
        let mut nodes = snapshot.nodes.clone();
        let mut plan = Plan::default();
        let tie: Vec<u64> = (0..nodes.len()).map(|i| mix(seed, i)).collect();
        // Equivalence classes: replicas with the same requirements, in first-seen order.
        let mut classes: Vec<(&PendingReplica, Vec<&PendingReplica>)> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for p in pending {
            let sig = format!(
                "{}|{}|{}|{:?}|{}|{:?}",
                p.service, p.cpu, p.memory, p.ports, p.runtime, p.placement
            );
            match index.get(&sig) {
                Some(&i) => classes[i].1.push(p),
                None => {
                    index.insert(sig, classes.len());
                    classes.push((p, vec![p]));
                }
            }
        }
        for (proto, members) in classes {
            let mut feasible: Vec<usize> = Vec::new();
            let mut causes: BTreeMap<Cause, usize> = BTreeMap::new();
            for (i, n) in nodes.iter().enumerate() {
                match filter(n, proto) {
                    Ok(()) => feasible.push(i),
                    Err(c) => *causes.entry(c).or_default() += 1,
                }
            }
            // Min-heap keyed by (same-service count, allocation, tie-break).
            let key = |n: &NodeInfo, i: usize| {
                (
                    n.per_service.get(&proto.service).copied().unwrap_or(0),
                    allocated_permille(n),
                    tie[i],
                )
            };
            let mut heap: BinaryHeap<Reverse<(Score, usize)>> = feasible
                .iter()
                .map(|&i| Reverse((key(&nodes[i], i), i)))
                .collect();
            for p in members {
                let mut placed = None;
                while let Some(Reverse((_, i))) = heap.pop() {
                    // Re-check: earlier placements of this class may have filled the node.
                    match filter(&nodes[i], p) {
                        Ok(()) => {
                            placed = Some(i);
                            break;
                        }
                        Err(c) => *causes.entry(c).or_default() += 1,
                    }
                }
                match placed {
                    Some(i) => {
                        let n = &mut nodes[i];
                        n.cpu_used += p.cpu;
                        n.memory_used += p.memory;
                        n.replicas += 1;
                        n.ports_used.extend(p.ports.iter().copied());
                        *n.per_service.entry(p.service.clone()).or_default() += 1;
                        plan.bindings.push((p.key.clone(), n.name.clone()));
                        if filter(&nodes[i], p).is_ok() {
                            heap.push(Reverse((key(&nodes[i], i), i)));
                        }
                    }
                    None => plan
                        .unschedulable
                        .push((p.key.clone(), reason(nodes.len(), &causes))),
                }
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::object::Placement;

    fn node(name: &str, cpu: u64, mem: u64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            cpu_capacity: cpu,
            memory_capacity: mem,
            runtimes: vec!["process".into()],
            schedulable: true,
            ..NodeInfo::default()
        }
    }

    fn rep(i: usize, cpu: u64, mem: u64) -> PendingReplica {
        PendingReplica {
            key: format!("/replicas/default/web-{i}"),
            service: "default/web".into(),
            cpu,
            memory: mem,
            ports: vec![],
            runtime: "process".into(),
            placement: Placement::default(),
        }
    }

    /// One helper, many cases: (nodes, replicas) → expected per-node counts and unschedulable count.
    fn check(
        nodes: Vec<NodeInfo>,
        pending: Vec<PendingReplica>,
        expect_counts: &[(&str, usize)],
        expect_unsched: usize,
    ) {
        let plan = DefaultScheduler.schedule(&ClusterSnapshot { nodes }, &pending, 7);
        for (n, c) in expect_counts {
            assert_eq!(
                plan.bindings.iter().filter(|(_, node)| node == n).count(),
                *c,
                "node {n}: {plan:?}"
            );
        }
        assert_eq!(plan.unschedulable.len(), expect_unsched, "{plan:?}");
    }

    #[test]
    fn spreads_and_fits() {
        check(
            vec![node("a", 0, 0), node("b", 0, 0), node("c", 0, 0)],
            (0..6).map(|i| rep(i, 0, 0)).collect(),
            &[("a", 2), ("b", 2), ("c", 2)],
            0,
        );
        check(
            vec![node("a", 1000, 0), node("b", 500, 0)],
            (0..4).map(|i| rep(i, 500, 0)).collect(),
            &[("a", 2), ("b", 1)],
            1,
        );
        check(
            vec![node("a", 0, 1 << 30)],
            vec![rep(0, 0, 2 << 30)],
            &[("a", 0)],
            1,
        );
    }

    #[test]
    fn explains_unschedulable() {
        let mut cordoned = node("c", 0, 0);
        cordoned.schedulable = false;
        let plan = DefaultScheduler.schedule(
            &ClusterSnapshot {
                nodes: vec![node("a", 0, 100), node("b", 0, 100), cordoned],
            },
            &[rep(0, 0, 1000)],
            1,
        );
        assert_eq!(plan.unschedulable[0].1, "0/3 nodes are available: 1 unschedulable (cordoned or unreachable), 2 insufficient memory");
    }

    #[test]
    fn same_input_same_plan() {
        let nodes: Vec<NodeInfo> = (0..20)
            .map(|i| node(&format!("n{i}"), 4000, 1 << 34))
            .collect();
        let pending: Vec<PendingReplica> = (0..100).map(|i| rep(i, 100, 1 << 20)).collect();
        let a = DefaultScheduler.schedule(
            &ClusterSnapshot {
                nodes: nodes.clone(),
            },
            &pending,
            42,
        );
        let b = DefaultScheduler.schedule(&ClusterSnapshot { nodes }, &pending, 42);
        assert_eq!(a, b);
    }
}
