//! Scheduling plugins and a whole scheduler written outside orch, against its public API.
//!
//! - [`AvoidMaintenance`], a filter: nodes labelled `maintenance=true` take no new replicas.
//! - [`PreferLabel`], a score: nodes carrying a label (for example `disk=ssd`) score 100, others 0.
//! - [`FirstFit`], a whole [`Scheduler`]: each replica goes to the first node, in name order,
//!   that runs its runtime and has room — no plugins at all.
//! - [`place`]: runs orch's engine with any of them on four fake nodes.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use orch_core::fake::FakeRuntime;
use orch_core::memstore::MemStore;
use orch_core::model::object::{Service, ServiceSpec, Template};
use orch_core::scheduler::{ClusterSnapshot, PendingReplica, Plan, Scheduler};
use orch_core::{AgentConfig, Engine};
use orch_sched::{Class, ClassFilter, ClassScore, FilterPlugin, NodeId, PassState, ScorePlugin};

/// Filter plugin: refuses nodes labelled `maintenance=true`.
pub struct AvoidMaintenance;

impl FilterPlugin for AvoidMaintenance {
    fn name(&self) -> &str {
        "AvoidMaintenance"
    }
    fn pre_filter(&self, _: &Class<'_>, _: &mut PassState) -> Option<Box<dyn ClassFilter>> {
        Some(Box::new(AvoidMaintenance))
    }
}

impl ClassFilter for AvoidMaintenance {
    fn filter<'a>(&'a self, state: &'a PassState, node: NodeId) -> Result<(), Cow<'a, str>> {
        match state
            .node(node)
            .labels
            .get("maintenance")
            .map(String::as_str)
        {
            // Phrased to follow a node count: "0/4 nodes are available: 1 in maintenance, ...".
            Some("true") => Err("in maintenance".into()),
            _ => Ok(()),
        }
    }
}

/// Score plugin: nodes carrying `key=value` score 100, the others 0.
pub struct PreferLabel {
    /// Label key.
    pub key: String,
    /// Label value.
    pub value: String,
}

impl ScorePlugin for PreferLabel {
    fn name(&self) -> &str {
        "PreferLabel"
    }
    fn pre_score(&self, _: &Class<'_>, _: &mut PassState) -> Option<Box<dyn ClassScore>> {
        Some(Box::new(PreferLabel {
            key: self.key.clone(),
            value: self.value.clone(),
        }))
    }
}

impl ClassScore for PreferLabel {
    fn score(&self, state: &PassState, node: NodeId) -> u32 {
        match state.node(node).labels.get(&self.key) {
            Some(v) if *v == self.value => 100,
            _ => 0,
        }
    }
}

/// A whole scheduler: first fit in node-name order.
pub struct FirstFit;

impl Scheduler for FirstFit {
    fn name(&self) -> &str {
        "first-fit"
    }

    fn schedule(&self, snapshot: &ClusterSnapshot, pending: &[PendingReplica], _seed: u64) -> Plan {
        let mut nodes = snapshot.nodes.clone();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut plan = Plan::default();
        for p in pending {
            let fits = |n: &orch_core::scheduler::NodeInfo| {
                n.schedulable
                    && n.runtimes.contains(&p.runtime)
                    && (n.cpu_capacity == 0 || n.cpu_used + p.cpu <= n.cpu_capacity)
                    && (n.memory_capacity == 0 || n.memory_used + p.memory <= n.memory_capacity)
                    && (n.max_replicas == 0 || n.replicas < n.max_replicas)
            };
            match nodes.iter_mut().find(|n| fits(n)) {
                Some(n) => {
                    n.cpu_used += p.cpu;
                    n.memory_used += p.memory;
                    n.replicas += 1;
                    plan.bindings.push((p.key.clone(), n.name.clone()));
                }
                None => plan.unschedulable.push((
                    p.key.clone(),
                    format!(
                        "0/{} nodes are available: none fits (first-fit)",
                        nodes.len()
                    ),
                )),
            }
        }
        plan
    }
}

/// Runs orch's engine with `scheduler` on four fake nodes (`node-a` ssd, `node-b` hdd,
/// `node-c` ssd in maintenance, `node-d` ssd), applies a service of `replicas` replicas and
/// returns `(replica, node)` once every one is placed.
pub async fn place(scheduler: Arc<dyn Scheduler>, replicas: u32) -> Vec<(String, String)> {
    let store = Arc::new(MemStore::new());
    let mut engine = Engine::builder(store.clone(), scheduler).start();
    for (node, labels) in [
        ("node-a", "disk=ssd"),
        ("node-b", "disk=hdd"),
        ("node-c", "disk=ssd,maintenance=true"),
        ("node-d", "disk=ssd"),
    ] {
        let mut cfg = AgentConfig::new(node);
        for kv in labels.split(',') {
            let (k, v) = kv.split_once('=').expect("key=value");
            cfg.labels.insert(k.into(), v.into());
        }
        engine.add_agent(Arc::new(FakeRuntime::default()), cfg);
    }
    while engine.cache().nodes().len() < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let spec = ServiceSpec::new(replicas, Template::with_command(["server"]));
    orch_core::engine::api::apply(&*store, vec![Service::new("web", spec).into()], false)
        .await
        .expect("apply");
    let placed = loop {
        let placed: Vec<(String, String)> = engine
            .cache()
            .replicas_of_service("default", "web")
            .into_iter()
            .filter_map(|r| Some((r.metadata.name, r.spec.node?)))
            .collect();
        if placed.len() == replicas as usize {
            break placed;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    engine.shutdown().await;
    placed
}
