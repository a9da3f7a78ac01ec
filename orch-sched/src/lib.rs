//! orch-sched: the scheduling framework and its default plugins. Pure and synchronous: same
//! snapshot, same pending replicas and same seed give the same plan; no clock, no I/O.
//!
//! - [`Framework`] runs the stages — pre-filter, filter, score (0..=100, weighted), select
//!   (highest score, ties broken by the seed), reserve — over a [`PassState`] that every
//!   placement updates, and implements [`Scheduler`]. Downstream crates add plugins:
//!   `Framework::default_plugins().with_filter(MyFilter).with_score(MyScore, 2)`.
//! - [`plugins`] holds the default set: resources fit, node selector and node affinity,
//!   taints and tolerations, required and preferred affinity / anti-affinity to other
//!   replicas, topology spread, and the `spread` / `binpack` strategies.
//! - Identical pending replicas form one equivalence class: plugins prepare once per class,
//!   nodes are filtered once per class, and later placements only re-check the nodes whose
//!   answers may have changed. Affinity and spread read per-domain counters kept up to date
//!   as replicas are placed.
//!
//! Unschedulable replicas get a reason that counts nodes per cause:
//! "0/12 nodes are available: 7 insufficient memory, 5 anti-affinity with service db".

#![forbid(unsafe_code)]

pub mod framework;
pub mod plugins;
pub mod state;

use std::sync::OnceLock;

pub use framework::{
    Class, ClassFilter, ClassScore, FilterPlugin, Framework, Invalidation, ScorePlugin,
};
pub use state::{CounterId, DomainId, NodeId, PassState, TopologyId};

use orch_core::scheduler::{ClusterSnapshot, PendingReplica, Plan, Scheduler};

/// The default scheduler: [`Framework::default_plugins`], as a unit value for
/// `Engine::builder(store, Arc::new(DefaultScheduler))`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultScheduler;

fn default_framework() -> &'static Framework {
    static DEFAULT: OnceLock<Framework> = OnceLock::new();
    DEFAULT.get_or_init(Framework::default_plugins)
}

impl Scheduler for DefaultScheduler {
    fn name(&self) -> &str {
        "default"
    }

    fn schedule(&self, snapshot: &ClusterSnapshot, pending: &[PendingReplica], seed: u64) -> Plan {
        default_framework().schedule(snapshot, pending, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::model::object::Placement;
    use orch_core::scheduler::NodeInfo;

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
            placement: Placement::default().into(),
            labels: [("orch/service".to_string(), "web".to_string())].into(),
            volumes: Vec::new(),
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
    fn replicas_follow_their_local_volumes() {
        let mut b = node("b", 0, 0);
        b.volumes = vec!["data".into()];
        let with = |v: &str| {
            (0..4)
                .map(|i| PendingReplica {
                    volumes: vec![v.to_string()],
                    ..rep(i, 0, 0)
                })
                .collect::<Vec<_>>()
        };
        // A node holds it: every replica goes there.
        check(
            vec![node("a", 0, 0), b.clone(), node("c", 0, 0)],
            with("data"),
            &[("a", 0), ("b", 4), ("c", 0)],
            0,
        );
        // Nobody holds it yet: spread as usual.
        check(
            vec![node("a", 0, 0), b.clone()],
            with("fresh"),
            &[("a", 2), ("b", 2)],
            0,
        );
        // The holder cannot take it (cordoned): pending, and the reason says so.
        b.schedulable = false;
        let plan = DefaultScheduler.schedule(
            &ClusterSnapshot {
                nodes: vec![node("a", 0, 0), b],
            },
            &with("data")[..1],
            7,
        );
        assert_eq!(plan.unschedulable.len(), 1, "{plan:?}");
        assert!(
            format!("{plan:?}").contains("do not hold volume data"),
            "{plan:?}"
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
        assert_eq!(
            plan.unschedulable[0].1,
            "0/3 nodes are available: 2 insufficient memory, 1 unschedulable (cordoned or unreachable)"
        );
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
