//! The in-pass cluster state: a mutable copy of the snapshot that every placement updates
//! (reserve), plus the indexes plugins share: topology domains per key and counters of
//! replicas matching a selector per domain.

use std::collections::HashMap;

use orch_core::model::object::{LabelSelector, NODE_TOPOLOGY_KEY};
use orch_core::scheduler::{ClusterSnapshot, LabelCount, NodeInfo, PendingReplica};

/// Index of a node in the snapshot (nodes are in name order).
pub type NodeId = usize;

/// Index of a domain within one topology key.
pub type DomainId = u32;

/// A topology key interned by [`PassState::topology`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopologyId(usize);

/// A counter registered with [`PassState::counter`] or [`PassState::service_counter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterId(usize);

const NO_DOMAIN: u32 = u32::MAX;

/// The domains of one topology key: which domain each node is in, and each domain's nodes.
#[derive(Debug)]
struct Topology {
    key: String,
    domain_of: Vec<u32>,
    names: Vec<String>,
    members: Vec<Vec<NodeId>>,
}

/// Which replicas a counter counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Selects {
    /// Replicas of one service (`namespace/service`).
    Service(String),
    /// Replicas of a namespace whose labels match a selector.
    Labels(String, LabelSelector),
}

impl Selects {
    fn matches(
        &self,
        namespace: &str,
        service: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        match self {
            Selects::Service(s) => s == service,
            Selects::Labels(ns, sel) => ns == namespace && sel.matches(labels),
        }
    }
}

#[derive(Debug)]
struct Counter {
    selects: Selects,
    topology: TopologyId,
    counts: Vec<u32>,
    total: u64,
}

/// The cluster as the current pass sees it: the snapshot plus every placement made so far.
pub struct PassState {
    nodes: Vec<NodeInfo>,
    topologies: Vec<Topology>,
    topology_index: HashMap<String, TopologyId>,
    counters: Vec<Counter>,
    counter_index: HashMap<(Selects, TopologyId), CounterId>,
    /// For the class being placed: the counters its replicas increment.
    matching: Vec<CounterId>,
    /// Counters registered since `matching` was computed.
    matched_upto: usize,
    current: Option<CurrentClass>,
}

struct CurrentClass {
    namespace: String,
    service: String,
    labels: orch_core::model::object::Labels,
}

impl PassState {
    /// A state over a copy of `snapshot`.
    pub fn new(snapshot: &ClusterSnapshot) -> PassState {
        PassState {
            nodes: snapshot.nodes.clone(),
            topologies: Vec::new(),
            topology_index: HashMap::new(),
            counters: Vec::new(),
            counter_index: HashMap::new(),
            matching: Vec::new(),
            matched_upto: 0,
            current: None,
        }
    }

    /// Every node, in snapshot order, with the placements made so far in this pass.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> &NodeInfo {
        &self.nodes[id]
    }

    /// Interns a topology key: a node label (`zone`), or [`NODE_TOPOLOGY_KEY`] for the node
    /// itself. Nodes without the label are in no domain.
    pub fn topology(&mut self, key: &str) -> TopologyId {
        if let Some(&t) = self.topology_index.get(key) {
            return t;
        }
        let mut names: Vec<String> = Vec::new();
        let mut by_name: HashMap<&str, u32> = HashMap::new();
        let mut domain_of = Vec::with_capacity(self.nodes.len());
        let mut members: Vec<Vec<NodeId>> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let value = if key == NODE_TOPOLOGY_KEY {
                Some(n.name.as_str())
            } else {
                n.labels.get(key).map(String::as_str)
            };
            let d = match value {
                None => NO_DOMAIN,
                Some(v) => *by_name.entry(v).or_insert_with(|| {
                    names.push(v.to_string());
                    members.push(Vec::new());
                    (names.len() - 1) as u32
                }),
            };
            if d != NO_DOMAIN {
                members[d as usize].push(i);
            }
            domain_of.push(d);
        }
        let id = TopologyId(self.topologies.len());
        self.topologies.push(Topology {
            key: key.to_string(),
            domain_of,
            names,
            members,
        });
        self.topology_index.insert(key.to_string(), id);
        id
    }

    /// The key a topology was interned from.
    pub fn topology_key(&self, t: TopologyId) -> &str {
        &self.topologies[t.0].key
    }

    /// The domain `node` is in, if it carries the key.
    pub fn domain(&self, t: TopologyId, node: NodeId) -> Option<DomainId> {
        let d = self.topologies[t.0].domain_of[node];
        (d != NO_DOMAIN).then_some(d)
    }

    /// How many domains the key has.
    pub fn domain_count(&self, t: TopologyId) -> usize {
        self.topologies[t.0].names.len()
    }

    /// The label value naming a domain.
    pub fn domain_name(&self, t: TopologyId, d: DomainId) -> &str {
        &self.topologies[t.0].names[d as usize]
    }

    /// The nodes of a domain, in snapshot order.
    pub fn domain_nodes(&self, t: TopologyId, d: DomainId) -> &[NodeId] {
        &self.topologies[t.0].members[d as usize]
    }

    /// A counter of the replicas of `namespace` matching `selector`, per domain of `t`; kept
    /// up to date as the pass places replicas. Registering the same counter twice is cheap.
    pub fn counter(
        &mut self,
        namespace: &str,
        selector: &LabelSelector,
        t: TopologyId,
    ) -> CounterId {
        self.register(Selects::Labels(namespace.to_string(), selector.clone()), t)
    }

    /// A counter of the replicas of `service` (`namespace/service`) per domain of `t`.
    pub fn service_counter(&mut self, service: &str, t: TopologyId) -> CounterId {
        self.register(Selects::Service(service.to_string()), t)
    }

    fn register(&mut self, sel: Selects, t: TopologyId) -> CounterId {
        if let Some(&c) = self.counter_index.get(&(sel.clone(), t)) {
            return c;
        }
        let topo = &self.topologies[t.0];
        let mut counts = vec![0u32; topo.names.len()];
        let mut total = 0u64;
        for (i, n) in self.nodes.iter().enumerate() {
            let d = topo.domain_of[i];
            let c: u32 = match &sel {
                Selects::Service(s) => n.per_service.get(s).copied().unwrap_or(0),
                Selects::Labels(ns, selector) => n
                    .replica_labels
                    .iter()
                    .filter(|l: &&LabelCount| *l.namespace == **ns && selector.matches(&l.labels))
                    .map(|l| l.count)
                    .sum(),
            };
            total += u64::from(c);
            if d != NO_DOMAIN {
                counts[d as usize] = counts[d as usize].saturating_add(c);
            }
        }
        let id = CounterId(self.counters.len());
        self.counters.push(Counter {
            selects: sel.clone(),
            topology: t,
            counts,
            total,
        });
        self.counter_index.insert((sel, t), id);
        id
    }

    /// Replicas counted in domain `d`.
    pub fn count(&self, c: CounterId, d: DomainId) -> u32 {
        self.counters[c.0]
            .counts
            .get(d as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Replicas counted in the domain of `node` (0 when the node has no domain).
    pub fn count_at(&self, c: CounterId, node: NodeId) -> u32 {
        let ctr = &self.counters[c.0];
        match self.domain(ctr.topology, node) {
            Some(d) => ctr.counts[d as usize],
            None => 0,
        }
    }

    /// Replicas counted over the whole cluster (including nodes in no domain).
    pub fn count_total(&self, c: CounterId) -> u64 {
        self.counters[c.0].total
    }

    /// The counts per domain.
    pub fn counts(&self, c: CounterId) -> &[u32] {
        &self.counters[c.0].counts
    }

    /// Starts placing replicas like `proto`.
    pub(crate) fn begin_class(&mut self, proto: &PendingReplica, namespace: &str) {
        self.current = Some(CurrentClass {
            namespace: namespace.to_string(),
            service: proto.service.clone(),
            labels: proto.labels.clone(),
        });
        self.matching.clear();
        self.matched_upto = 0;
    }

    fn refresh_matching(&mut self) {
        if self.matched_upto == self.counters.len() {
            return;
        }
        let Some(cur) = &self.current else { return };
        for (i, c) in self.counters.iter().enumerate().skip(self.matched_upto) {
            if c.selects.matches(&cur.namespace, &cur.service, &cur.labels) {
                self.matching.push(CounterId(i));
            }
        }
        self.matched_upto = self.counters.len();
    }

    /// Records one replica like the current class's on `node`.
    pub(crate) fn reserve(&mut self, p: &PendingReplica, node: NodeId) {
        self.refresh_matching();
        let n = &mut self.nodes[node];
        n.cpu_used = n.cpu_used.saturating_add(p.cpu);
        n.memory_used = n.memory_used.saturating_add(p.memory);
        n.replicas = n.replicas.saturating_add(1);
        n.ports_used.extend(p.ports.iter().copied());
        match n.per_service.get_mut(&p.service) {
            Some(c) => *c += 1,
            None => {
                n.per_service.insert(p.service.clone(), 1);
            }
        }
        let ns = self
            .current
            .as_ref()
            .map(|c| c.namespace.as_str())
            .unwrap_or("");
        match n
            .replica_labels
            .iter_mut()
            .rev()
            .find(|l| *l.namespace == *ns && l.labels == *p.labels.shared())
        {
            Some(l) => l.count += 1,
            None => n.replica_labels.push(LabelCount {
                namespace: ns.into(),
                labels: p.labels.shared().clone(),
                count: 1,
            }),
        }
        for &c in &self.matching {
            let ctr = &mut self.counters[c.0];
            ctr.total += 1;
            let d = self.topologies[ctr.topology.0].domain_of[node];
            if d != NO_DOMAIN {
                ctr.counts[d as usize] += 1;
            }
        }
    }
}
