//! The scheduling framework: pre-filter, filter, score, select and reserve as plain traits,
//! assembled into a [`Framework`] that implements [`Scheduler`].
//!
//! A pass groups identical pending replicas into equivalence classes and places one class at
//! a time. For each class every plugin is asked once (pre-filter / pre-score) for a per-class
//! object; plugins with nothing to say for the class return `None` and cost nothing per node.
//! Feasible nodes sit in a max-heap keyed by their weighted score and a seeded tie-break.
//! After each placement the state is updated (reserve), the chosen node is re-evaluated, and
//! plugins report which other nodes their answers may have changed for ([`Invalidation`]):
//! nodes that can only have got worse are re-checked lazily when they reach the top of the
//! heap; nodes that may have got better are re-checked at once.

use std::borrow::Cow;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use orch_core::model::object::{Placement, Protocol};
use orch_core::scheduler::{ClusterSnapshot, PendingReplica, Plan, Scheduler};

use crate::state::{DomainId, NodeId, PassState, TopologyId};

/// The replicas of one equivalence class, as plugins see them.
#[derive(Clone, Copy, Debug)]
pub struct Class<'a> {
    /// A representative replica: every member has the same service, resources, ports,
    /// runtime, placement and labels.
    pub replica: &'a PendingReplica,
    /// The replicas' namespace.
    pub namespace: &'a str,
    /// How many replicas of the class are pending in this pass.
    pub size: usize,
}

/// Which nodes' answers a placement may have changed, besides the chosen node's (that one is
/// always re-evaluated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Nodes in `domain` may now be rejected or score lower, never better: re-checked lazily.
    Worse {
        /// The topology key.
        topology: TopologyId,
        /// The domain that changed.
        domain: DomainId,
    },
    /// Nodes in these domains may now pass or score higher: re-checked at once.
    Better {
        /// The topology key.
        topology: TopologyId,
        /// The domains that changed.
        domains: Vec<DomainId>,
    },
    /// Anything may have changed: every node is re-checked at once (slow; avoid).
    All,
}

/// A filter stage plugin. `pre_filter` runs once per equivalence class.
pub trait FilterPlugin: Send + Sync {
    /// The plugin's name.
    fn name(&self) -> &str;
    /// Looks at the class once and returns its per-class filter, or `None` when the plugin
    /// has no rule for this class. May register topologies and counters in `state`.
    fn pre_filter(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassFilter>>;
}

/// A filter prepared for one class.
pub trait ClassFilter {
    /// `Ok` when `node` may take one more replica of the class, else why not, phrased to
    /// follow a node count ("insufficient memory").
    fn filter<'a>(&'a self, state: &'a PassState, node: NodeId) -> Result<(), Cow<'a, str>>;
    /// Reserve: one replica of the class was just placed on `node` (already recorded in
    /// `state`). Update any per-class bookkeeping and report which other nodes' answers may
    /// have changed. The default reports nothing: the answer depends on the node alone.
    fn reserve(&mut self, state: &PassState, node: NodeId, out: &mut Vec<Invalidation>) {
        let _ = (state, node, out);
    }
    /// Some topology whose domains alone decide this filter's answer (every node of a domain
    /// gets the same answer). The framework then keeps one heap per domain and opens or
    /// closes whole domains, which is much cheaper for topology spread. `None` by default.
    fn gate(&self) -> Option<TopologyId> {
        None
    }
}

/// A score stage plugin. `pre_score` runs once per equivalence class.
pub trait ScorePlugin: Send + Sync {
    /// The plugin's name.
    fn name(&self) -> &str;
    /// Looks at the class once and returns its per-class scorer, or `None` when the plugin
    /// has no preference for this class.
    fn pre_score(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassScore>>;
}

/// A scorer prepared for one class.
pub trait ClassScore {
    /// How much `node` suits one more replica of the class, from 0 (worst) to 100 (best);
    /// larger values are clamped to 100. The framework multiplies by the plugin's weight.
    fn score(&self, state: &PassState, node: NodeId) -> u32;
    /// Reserve: as [`ClassFilter::reserve`].
    fn reserve(&mut self, state: &PassState, node: NodeId, out: &mut Vec<Invalidation>) {
        let _ = (state, node, out);
    }
}

impl<T: FilterPlugin + ?Sized> FilterPlugin for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn pre_filter(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassFilter>> {
        (**self).pre_filter(class, state)
    }
}

impl<T: FilterPlugin + ?Sized> FilterPlugin for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn pre_filter(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassFilter>> {
        (**self).pre_filter(class, state)
    }
}

impl<T: ScorePlugin + ?Sized> ScorePlugin for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn pre_score(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassScore>> {
        (**self).pre_score(class, state)
    }
}

impl<T: ScorePlugin + ?Sized> ScorePlugin for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn pre_score(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassScore>> {
        (**self).pre_score(class, state)
    }
}

/// A scheduler assembled from filter and score plugins.
///
/// ```
/// use orch_sched::Framework;
/// let framework = Framework::default_plugins();
/// assert!(framework.filter_names().contains(&"NodeFit"));
/// ```
pub struct Framework {
    name: String,
    filters: Vec<Box<dyn FilterPlugin>>,
    scores: Vec<(Box<dyn ScorePlugin>, u32)>,
}

impl std::fmt::Debug for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framework")
            .field("name", &self.name)
            .field("filters", &self.filter_names())
            .field(
                "scores",
                &self
                    .scores
                    .iter()
                    .map(|(s, w)| (s.name(), *w))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Framework {
    /// A framework with no plugins at all (every node fits, all score the same), named `name`.
    pub fn empty(name: &str) -> Framework {
        Framework {
            name: name.to_string(),
            filters: Vec::new(),
            scores: Vec::new(),
        }
    }

    /// Renames the scheduler (the name appears in events).
    pub fn named(mut self, name: &str) -> Framework {
        self.name = name.to_string();
        self
    }

    /// Adds a filter after the ones already there.
    pub fn with_filter(mut self, filter: impl FilterPlugin + 'static) -> Framework {
        self.filters.push(Box::new(filter));
        self
    }

    /// Adds a score with a weight (its 0..=100 score is multiplied by `weight`).
    pub fn with_score(mut self, score: impl ScorePlugin + 'static, weight: u32) -> Framework {
        self.scores.push((Box::new(score), weight));
        self
    }

    /// Removes the plugins (filters and scores) called `name`.
    pub fn without(mut self, name: &str) -> Framework {
        self.filters.retain(|f| f.name() != name);
        self.scores.retain(|(s, _)| s.name() != name);
        self
    }

    /// The filters' names, in order.
    pub fn filter_names(&self) -> Vec<&str> {
        self.filters.iter().map(|f| f.name()).collect()
    }

    /// The scores' names and weights, in order.
    pub fn score_names(&self) -> Vec<(&str, u32)> {
        self.scores.iter().map(|(s, w)| (s.name(), *w)).collect()
    }
}

/// splitmix64: a cheap, well-distributed tie-break from the seed.
fn mix(seed: u64, i: usize) -> u64 {
    let mut z = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What makes replicas equivalent: everything the scheduler looks at except the key.
type ClassKey<'a> = (
    &'a str,
    u64,
    u64,
    &'a [(Protocol, u16)],
    &'a str,
    &'a Placement,
    &'a BTreeMap<String, String>,
    &'a [String],
);

fn class_key(p: &PendingReplica) -> ClassKey<'_> {
    (
        &p.service,
        p.cpu,
        p.memory,
        &p.ports,
        &p.runtime,
        &p.placement,
        &p.labels,
        &p.volumes,
    )
}

/// Groups pending replicas into equivalence classes, in first-seen order.
fn classes(pending: &[PendingReplica]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<ClassKey<'_>, usize> = HashMap::new();
    for (i, p) in pending.iter().enumerate() {
        match index.get(&class_key(p)) {
            Some(&c) => out[c].push(i),
            None => {
                index.insert(class_key(p), out.len());
                out.push(vec![i]);
            }
        }
    }
    out
}

/// Heap entry: (score, tie-break, node, generation, stamp). Max-heap on score then tie.
type Entry = (u64, u64, u32, u32, u64);

const NO_GROUP: u32 = u32::MAX;
/// Most domains a gating topology may have (one heap per domain).
const MAX_GATE_DOMAINS: usize = 256;

/// One class being placed.
struct Run<'t> {
    filters: Vec<Box<dyn ClassFilter>>,
    gate: Option<(usize, TopologyId)>,
    scores: Vec<(u64, Box<dyn ClassScore>)>,
    tie: &'t [u64],
    generation: Vec<u32>,
    epochs: Vec<(TopologyId, Vec<u32>)>,
    heaps: Vec<BinaryHeap<Entry>>,
    group_of: Vec<u32>,
    open: Vec<bool>,
    live: usize,
}

impl Run<'_> {
    fn eval(&self, state: &PassState, n: NodeId) -> Option<u64> {
        for (i, f) in self.filters.iter().enumerate() {
            if self.gate.is_some_and(|(g, _)| g == i) {
                continue;
            }
            if f.filter(state, n).is_err() {
                return None;
            }
        }
        let mut total = 0u64;
        for (w, s) in &self.scores {
            total += w * u64::from(s.score(state, n).min(100));
        }
        Some(total)
    }

    fn stamp(&self, state: &PassState, n: NodeId) -> u64 {
        let mut s = 0u64;
        for (t, e) in &self.epochs {
            if let Some(d) = state.domain(*t, n) {
                s += u64::from(e[d as usize]);
            }
        }
        s
    }

    fn refresh(&mut self, state: &PassState, n: NodeId) {
        self.generation[n] = self.generation[n].wrapping_add(1);
        let g = self.group_of[n];
        if g == NO_GROUP {
            return;
        }
        if let Some(score) = self.eval(state, n) {
            let entry = (
                score,
                self.tie[n],
                n as u32,
                self.generation[n],
                self.stamp(state, n),
            );
            self.heaps[g as usize].push(entry);
            self.live += 1;
        }
    }

    /// The valid top of one heap, re-checking stale entries on the way.
    fn top(&mut self, state: &PassState, g: usize) -> Option<Entry> {
        loop {
            let e = *self.heaps[g].peek()?;
            let n = e.2 as usize;
            if e.3 != self.generation[n] {
                self.heaps[g].pop();
                continue;
            }
            if e.4 != self.stamp(state, n) {
                self.heaps[g].pop();
                self.refresh(state, n);
                continue;
            }
            return Some(e);
        }
    }

    fn select(&mut self, state: &PassState) -> Option<NodeId> {
        let mut best: Option<(Entry, usize)> = None;
        for g in 0..self.heaps.len() {
            if !self.open[g] {
                continue;
            }
            if let Some(e) = self.top(state, g) {
                if best.is_none_or(|(b, _)| e > b) {
                    best = Some((e, g));
                }
            }
        }
        let (e, g) = best?;
        self.heaps[g].pop();
        Some(e.2 as usize)
    }

    fn set_open(&mut self, state: &PassState, t: TopologyId, d: DomainId) {
        let Some((gi, _)) = self.gate else { return };
        let first = state.domain_nodes(t, d).first().copied();
        self.open[d as usize] = first.is_some_and(|n| self.filters[gi].filter(state, n).is_ok());
    }

    fn compact(&mut self) {
        let total: usize = self.heaps.iter().map(BinaryHeap::len).sum();
        if total > 4 * self.generation.len() + 1024 {
            let generation = &self.generation;
            for h in &mut self.heaps {
                h.retain(|e| e.3 == generation[e.2 as usize]);
            }
        }
    }

    fn apply(&mut self, state: &PassState, inv: Invalidation, from_gate: bool) {
        let gate_topology = self.gate.map(|(_, t)| t);
        match inv {
            Invalidation::Worse { topology, domain } if from_gate => {
                if Some(topology) == gate_topology {
                    self.set_open(state, topology, domain);
                }
            }
            Invalidation::Better { topology, domains } if from_gate => {
                if Some(topology) == gate_topology {
                    for d in domains {
                        self.set_open(state, topology, d);
                    }
                }
            }
            Invalidation::All if from_gate => {
                if let Some(t) = gate_topology {
                    for d in 0..state.domain_count(t) {
                        self.set_open(state, t, d as DomainId);
                    }
                }
            }
            Invalidation::Worse { topology, domain } => {
                let idx = match self.epochs.iter().position(|(t, _)| *t == topology) {
                    Some(i) => i,
                    None => {
                        self.epochs
                            .push((topology, vec![0; state.domain_count(topology)]));
                        self.epochs.len() - 1
                    }
                };
                if let Some(e) = self.epochs[idx].1.get_mut(domain as usize) {
                    *e = e.wrapping_add(1);
                }
            }
            Invalidation::Better { topology, domains } => {
                for d in domains {
                    if (d as usize) < state.domain_count(topology) {
                        for &n in state.domain_nodes(topology, d) {
                            self.refresh(state, n);
                        }
                    }
                }
            }
            Invalidation::All => {
                for n in 0..self.generation.len() {
                    self.refresh(state, n);
                }
            }
        }
    }

    /// "0/N nodes are available: 7 insufficient memory, 5 anti-affinity with service db".
    fn explain(&self, state: &PassState) -> String {
        let total = state.nodes().len();
        if total == 0 {
            return "0/0 nodes are available: no nodes registered".into();
        }
        let mut causes: BTreeMap<String, usize> = BTreeMap::new();
        let mut passed = 0;
        for n in 0..total {
            match self.filters.iter().find_map(|f| f.filter(state, n).err()) {
                Some(c) => *causes.entry(c.into_owned()).or_default() += 1,
                None => passed += 1,
            }
        }
        let mut parts: Vec<(usize, String)> = causes.into_iter().map(|(c, n)| (n, c)).collect();
        parts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut text: Vec<String> = parts.iter().map(|(n, c)| format!("{n} {c}")).collect();
        if passed > 0 {
            text.push(format!("{passed} passed the filters but were not chosen"));
        }
        format!("0/{total} nodes are available: {}", text.join(", "))
    }
}

impl Framework {
    fn run_class(
        &self,
        state: &mut PassState,
        pending: &[PendingReplica],
        members: &[usize],
        tie: &[u64],
        plan: &mut Plan,
    ) {
        let proto = &pending[members[0]];
        let namespace = proto
            .service
            .split_once('/')
            .map(|(ns, _)| ns)
            .unwrap_or("")
            .to_string();
        let class = Class {
            replica: proto,
            namespace: &namespace,
            size: members.len(),
        };
        state.begin_class(proto, &namespace);
        let filters: Vec<Box<dyn ClassFilter>> = self
            .filters
            .iter()
            .filter_map(|f| f.pre_filter(&class, state))
            .collect();
        let scores: Vec<(u64, Box<dyn ClassScore>)> = self
            .scores
            .iter()
            .filter(|(_, w)| *w > 0)
            .filter_map(|(s, w)| s.pre_score(&class, state).map(|c| (u64::from(*w), c)))
            .collect();
        let gate = filters.iter().enumerate().find_map(|(i, f)| {
            f.gate()
                .filter(|t| state.domain_count(*t) <= MAX_GATE_DOMAINS)
                .map(|t| (i, t))
        });
        let n = state.nodes().len();
        let (group_of, groups) = match gate {
            Some((_, t)) => (
                (0..n)
                    .map(|i| state.domain(t, i).unwrap_or(NO_GROUP))
                    .collect(),
                state.domain_count(t),
            ),
            None => (vec![0; n], 1),
        };
        let mut run = Run {
            filters,
            gate,
            scores,
            tie,
            generation: vec![0; n],
            epochs: Vec::new(),
            heaps: (0..groups).map(|_| BinaryHeap::new()).collect(),
            group_of,
            open: vec![true; groups],
            live: 0,
        };
        if let Some((_, t)) = gate {
            for d in 0..groups {
                run.set_open(state, t, d as DomainId);
            }
        }
        let mut initial: Vec<Vec<Entry>> = vec![Vec::new(); groups];
        for (i, &t) in tie.iter().enumerate().take(n) {
            let g = run.group_of[i];
            if g == NO_GROUP {
                continue;
            }
            if let Some(score) = run.eval(state, i) {
                initial[g as usize].push((score, t, i as u32, 0, 0));
            }
        }
        for (g, v) in initial.into_iter().enumerate() {
            run.heaps[g] = BinaryHeap::from(v);
        }
        let mut out = Vec::new();
        for (k, &m) in members.iter().enumerate() {
            let Some(node) = run.select(state) else {
                let reason = run.explain(state);
                for &rest in &members[k..] {
                    plan.unschedulable
                        .push((pending[rest].key.clone(), reason.clone()));
                }
                return;
            };
            state.reserve(proto, node);
            plan.bindings
                .push((pending[m].key.clone(), state.node(node).name.clone()));
            for i in 0..run.filters.len() {
                run.filters[i].reserve(state, node, &mut out);
                let from_gate = run.gate.is_some_and(|(g, _)| g == i);
                for inv in out.drain(..) {
                    run.apply(state, inv, from_gate);
                }
            }
            for i in 0..run.scores.len() {
                run.scores[i].1.reserve(state, node, &mut out);
                for inv in out.drain(..) {
                    run.apply(state, inv, false);
                }
            }
            run.refresh(state, node);
            run.compact();
        }
    }
}

impl Scheduler for Framework {
    fn name(&self) -> &str {
        &self.name
    }

    fn schedule(&self, snapshot: &ClusterSnapshot, pending: &[PendingReplica], seed: u64) -> Plan {
        let mut state = PassState::new(snapshot);
        let tie: Vec<u64> = (0..snapshot.nodes.len()).map(|i| mix(seed, i)).collect();
        let mut plan = Plan::default();
        for members in classes(pending) {
            self.run_class(&mut state, pending, &members, &tie, &mut plan);
        }
        plan
    }
}
