//! The `Scheduler` trait: a pure function from a cluster snapshot and pending replicas to a
//! plan. No clock, no I/O, no async; the seed for tie-breaks is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::model::object::{Node, NodeCondition, Placement, Protocol, Replica, Taint};

/// One node as the scheduler sees it: what it has and what is already placed on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// CPU capacity in millicores (0: unknown, not limited).
    pub cpu_capacity: u64,
    /// Memory capacity in bytes (0: unknown, not limited).
    pub memory_capacity: u64,
    /// Most replicas the node takes (0: no limit).
    pub max_replicas: u32,
    /// Runtimes offered (`process`, `containerd`).
    pub runtimes: Vec<String>,
    /// Accepts new replicas (not cordoned, reporting).
    pub schedulable: bool,
    /// CPU already reserved by replicas on it.
    pub cpu_used: u64,
    /// Memory already reserved.
    pub memory_used: u64,
    /// Replicas on it.
    pub replicas: u32,
    /// Host ports taken (`(protocol, port)`; see [`Template::host_ports`](crate::model::object::Template::host_ports)).
    pub ports_used: BTreeSet<(Protocol, u16)>,
    /// Replicas per service (`namespace/service`) on it.
    pub per_service: HashMap<String, u32>,
    /// Taints of the node.
    pub taints: Vec<Taint>,
    /// The label sets of the replicas on it, with how many replicas carry each (for affinity
    /// and topology spread), ordered by namespace and labels.
    pub replica_labels: Vec<LabelCount>,
    /// Named local volumes the node holds.
    pub volumes: Vec<String>,
}

impl NodeInfo {
    /// What a node has, with nothing placed on it yet.
    pub fn of_node(n: &Node) -> NodeInfo {
        NodeInfo {
            name: n.metadata.name.clone(),
            labels: (*n.metadata.labels).clone(),
            cpu_capacity: n.status.capacity.cpu.map(|c| c.0).unwrap_or(0),
            memory_capacity: n.status.capacity.memory.map(|m| m.0).unwrap_or(0),
            max_replicas: n.status.max_replicas,
            runtimes: n.status.runtimes.clone(),
            schedulable: !n.spec.unschedulable && n.status.condition == NodeCondition::Ready,
            taints: n.spec.taints.clone(),
            volumes: n.status.volumes.clone(),
            ..NodeInfo::default()
        }
    }
}

/// How many replicas of one namespace on a node carry exactly these labels. The namespace
/// and labels are shared (every node that runs replicas of a service holds the same set), so
/// copying a snapshot copies pointers, not label maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelCount {
    /// The replicas' namespace.
    pub namespace: Arc<str>,
    /// Their labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// How many.
    pub count: u32,
}

/// Everything the scheduler may look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// Nodes in name order.
    pub nodes: Vec<NodeInfo>,
}

/// One replica waiting for a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingReplica {
    /// Store key of the replica.
    pub key: String,
    /// `namespace/service`.
    pub service: String,
    /// Reserved CPU in millicores.
    pub cpu: u64,
    /// Reserved memory in bytes.
    pub memory: u64,
    /// Host ports it needs ([`Template::host_ports`](crate::model::object::Template::host_ports)).
    pub ports: Vec<(Protocol, u16)>,
    /// The name a node must offer for it ([`offer_needed_by`](crate::runtime::offer_needed_by)).
    pub runtime: String,
    /// Placement rules (shared by the replicas of one service revision).
    pub placement: std::sync::Arc<Placement>,
    /// The replica's labels (the template's plus `orch/service`), which other replicas'
    /// affinity and spread rules select on (shared with the replica).
    pub labels: crate::model::object::Labels,
    /// Named local volumes it mounts: it goes where they are, once a node holds them.
    pub volumes: Vec<String>,
}

/// A decision for the pending replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Replica key → node name.
    pub bindings: Vec<(String, String)>,
    /// Replica key → why no node fits ("0/3 nodes: 2 insufficient memory, 1 cordoned").
    pub unschedulable: Vec<(String, String)>,
}

/// Places pending replicas on nodes.
pub trait Scheduler: Send + Sync {
    /// The scheduler's name, for events.
    fn name(&self) -> &str;
    /// Decides where each pending replica goes. Must be deterministic in its inputs.
    fn schedule(&self, snapshot: &ClusterSnapshot, pending: &[PendingReplica], seed: u64) -> Plan;
}

impl<T: Scheduler + ?Sized> Scheduler for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn schedule(&self, snapshot: &ClusterSnapshot, pending: &[PendingReplica], seed: u64) -> Plan {
        (**self).schedule(snapshot, pending, seed)
    }
}

impl PendingReplica {
    /// Describes a replica for the scheduler.
    pub fn from_replica(r: &Replica, key: String) -> PendingReplica {
        let t = &r.spec.template;
        PendingReplica {
            key,
            service: format!("{}/{}", r.metadata.namespace, r.spec.service),
            cpu: t.resources.cpu.map(|c| c.0).unwrap_or(0),
            memory: t.resources.memory.map(|m| m.0).unwrap_or(0),
            ports: t.host_ports().collect(),
            runtime: crate::runtime::offer_needed_by(t).to_string(),
            placement: r.spec.placement.clone(),
            labels: r.metadata.labels.clone(),
            volumes: t.volume_names(&r.metadata.name),
        }
    }
}

impl ClusterSnapshot {
    /// Builds a snapshot from nodes and the replicas bound to them.
    pub fn build<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        replicas: impl IntoIterator<Item = &'a Replica>,
    ) -> ClusterSnapshot {
        let mut infos: Vec<NodeInfo> = nodes.into_iter().map(NodeInfo::of_node).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos.dedup_by(|a, b| a.name == b.name);
        let by_name: HashMap<String, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        // Allocation-free per replica (only the first replica of a service or label set on a
        // node allocates), and no scan per replica: at a million replicas this loop runs on
        // every scheduling pass.
        let mut label_sets: HashMap<(usize, &str, &BTreeMap<String, String>), usize> =
            HashMap::new();
        type Shared = (Arc<str>, Arc<BTreeMap<String, String>>);
        let mut shared: HashMap<(&str, &BTreeMap<String, String>), Shared> = HashMap::new();
        let mut service = String::new();
        for r in replicas {
            let Some(node) = r.spec.node.as_deref() else {
                continue;
            };
            let Some(&i) = by_name.get(node) else {
                continue;
            };
            let info = &mut infos[i];
            let t = &r.spec.template;
            info.cpu_used += t.resources.cpu.map(|c| c.0).unwrap_or(0);
            info.memory_used += t.resources.memory.map(|m| m.0).unwrap_or(0);
            info.replicas += 1;
            info.ports_used.extend(t.host_ports());
            service.clear();
            service.push_str(&r.metadata.namespace);
            service.push('/');
            let _ = write!(service, "{}", r.spec.service);
            match info.per_service.get_mut(service.as_str()) {
                Some(c) => *c += 1,
                None => {
                    info.per_service.insert(service.clone(), 1);
                }
            }
            let ns = r.metadata.namespace.as_str();
            match label_sets.entry((i, ns, &r.metadata.labels)) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    info.replica_labels[*e.get()].count += 1
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(info.replica_labels.len());
                    let (namespace, labels) = shared
                        .entry((ns, &r.metadata.labels))
                        .or_insert_with(|| (ns.into(), r.metadata.labels.shared().clone()))
                        .clone();
                    info.replica_labels.push(LabelCount {
                        namespace,
                        labels,
                        count: 1,
                    });
                }
            }
        }
        for info in &mut infos {
            info.replica_labels
                .sort_by(|a, b| (&a.namespace, &a.labels).cmp(&(&b.namespace, &b.labels)));
        }
        ClusterSnapshot { nodes: infos }
    }
}
