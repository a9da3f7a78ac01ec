//! The default plugins.
//!
//! Filters, in order: [`NodeFit`] (runtime, cordon, max per node, host ports, cpu, memory,
//! replica count), [`NodeLabels`] (node selector and node affinity expressions),
//! [`TaintToleration`] (`NoSchedule` taints), [`InterReplicaAffinity`] (required affinity and
//! anti-affinity), [`TopologySpread`] (`DoNotSchedule` constraints).
//!
//! Scores, with weights: [`ResourceAllocation`] ×1 (least allocated for `spread`, most
//! allocated for `binpack`), [`ServiceSpread`] ×1 (fewer replicas of the same service on the
//! node; `spread` only), [`TaintPreference`] ×3 (`PreferNoSchedule` taints),
//! [`AffinityPreference`] ×2 (preferred affinity and anti-affinity), [`SpreadPreference`] ×2
//! (`ScheduleAnyway` constraints).

use std::borrow::Cow;

use orch_core::model::object::{
    LabelSelector, LabelSelectorRequirement, Protocol, SelectorOperator, Strategy, TaintEffect,
    Toleration, WhenUnsatisfiable, NODE_TOPOLOGY_KEY, SERVICE_LABEL,
};
use orch_core::scheduler::NodeInfo;

use crate::framework::{
    Class, ClassFilter, ClassScore, FilterPlugin, Framework, Invalidation, ScorePlugin,
};
use crate::state::{CounterId, DomainId, NodeId, PassState, TopologyId};

impl Framework {
    /// The default plugin set, named `default`: see [`crate::plugins`].
    pub fn default_plugins() -> Framework {
        register_defaults(Framework::empty("default"))
    }
}

/// Adds the default filters and scores to `f`.
pub fn register_defaults(f: Framework) -> Framework {
    f.with_filter(NodeFit)
        .with_filter(NodeLabels)
        .with_filter(LocalVolumes)
        .with_filter(TaintToleration)
        .with_filter(InterReplicaAffinity)
        .with_filter(TopologySpread)
        .with_score(ResourceAllocation, 1)
        .with_score(ServiceSpread, 1)
        .with_score(TaintPreference, 3)
        .with_score(AffinityPreference, 2)
        .with_score(SpreadPreference, 2)
}

/// Replicas that mount named local volumes go to the nodes that hold them, once any node
/// does (before that, any node; the first one to run the replica creates them).
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalVolumes;

struct LocalVolumesClass {
    volumes: Vec<String>,
}

impl FilterPlugin for LocalVolumes {
    fn name(&self) -> &str {
        "LocalVolumes"
    }
    fn pre_filter(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassFilter>> {
        // Only the volumes some node holds constrain the class.
        let held: Vec<String> = class
            .replica
            .volumes
            .iter()
            .filter(|v| state.nodes().iter().any(|n| n.volumes.contains(v)))
            .cloned()
            .collect();
        (!held.is_empty())
            .then(|| Box::new(LocalVolumesClass { volumes: held }) as Box<dyn ClassFilter>)
    }
}

impl ClassFilter for LocalVolumesClass {
    fn filter<'a>(&'a self, state: &'a PassState, node: NodeId) -> Result<(), Cow<'a, str>> {
        let n = state.node(node);
        match self.volumes.iter().find(|v| !n.volumes.contains(v)) {
            None => Ok(()),
            Some(v) => Err(format!("do not hold volume {v}").into()),
        }
    }
}

/// Names a selector for messages: `service db`, or `replicas matching app=db,tier In [a]`.
pub fn describe_selector(sel: &LabelSelector) -> String {
    if sel.match_expressions.is_empty() && sel.match_labels.len() == 1 {
        if let Some(s) = sel.match_labels.get(SERVICE_LABEL) {
            return format!("service {s}");
        }
    }
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    parts.extend(sel.match_expressions.iter().map(describe_requirement));
    if parts.is_empty() {
        "any replica".into()
    } else {
        format!("replicas matching {}", parts.join(","))
    }
}

fn describe_requirement(r: &LabelSelectorRequirement) -> String {
    match r.operator {
        SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
            format!("{} {:?}", r.key, r.operator)
        }
        _ => format!("{} {:?} [{}]", r.key, r.operator, r.values.join(" ")),
    }
}

// ---------------------------------------------------------------------------------------------
// NodeFit

/// Filter: the node offers the runtime, is schedulable, has room under `maxPerNode`, has the
/// host ports free (`PendingReplica::ports`: `hostPort`s, and fixed ports of replicas on
/// the host network — a container's own `port` is in its own network namespace), and has
/// enough cpu, memory and replica slots.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeFit;

struct NodeFitClass {
    runtime: String,
    cpu: u64,
    memory: u64,
    ports: Vec<(Protocol, u16)>,
    max_per_node: Option<(u32, CounterId)>,
}

impl FilterPlugin for NodeFit {
    fn name(&self) -> &str {
        "NodeFit"
    }
    fn pre_filter(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassFilter>> {
        let p = class.replica;
        let max_per_node = p.placement.max_per_node.map(|m| {
            let t = state.topology(NODE_TOPOLOGY_KEY);
            (m, state.service_counter(&p.service, t))
        });
        Some(Box::new(NodeFitClass {
            runtime: p.runtime.clone(),
            cpu: p.cpu,
            memory: p.memory,
            ports: p.ports.clone(),
            max_per_node,
        }))
    }
}

impl ClassFilter for NodeFitClass {
    fn filter<'a>(&'a self, state: &'a PassState, node: NodeId) -> Result<(), Cow<'a, str>> {
        let n = state.node(node);
        if !n.runtimes.contains(&self.runtime) {
            return Err("lack the needed runtime".into());
        }
        if !n.schedulable {
            return Err("unschedulable (cordoned or unreachable)".into());
        }
        if let Some((max, c)) = self.max_per_node {
            if state.count_at(c, node) >= max {
                return Err("already run max-per-node replicas of the service".into());
            }
        }
        if self.ports.iter().any(|p| n.ports_used.contains(p)) {
            return Err("have the host port in use".into());
        }
        if n.cpu_capacity > 0 && n.cpu_used.saturating_add(self.cpu) > n.cpu_capacity {
            return Err("insufficient cpu".into());
        }
        if n.memory_capacity > 0 && n.memory_used.saturating_add(self.memory) > n.memory_capacity {
            return Err("insufficient memory".into());
        }
        if n.max_replicas > 0 && n.replicas >= n.max_replicas {
            return Err("have no room for more replicas".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// NodeLabels

/// Filter: the node carries every `nodeSelector` label and satisfies every `nodeAffinity`
/// expression.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeLabels;

struct NodeLabelsClass {
    selector: Vec<(String, String)>,
    affinity: Vec<LabelSelectorRequirement>,
}

/// Whether `node` passes the class's node selector and node affinity.
pub fn node_labels_match(class: &Class<'_>, node: &NodeInfo) -> bool {
    let pl = &class.replica.placement;
    pl.node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
        && pl.node_affinity.iter().all(|r| r.matches(&node.labels))
}

impl FilterPlugin for NodeLabels {
    fn name(&self) -> &str {
        "NodeLabels"
    }
    fn pre_filter(&self, class: &Class<'_>, _: &mut PassState) -> Option<Box<dyn ClassFilter>> {
        let pl = &class.replica.placement;
        if pl.node_selector.is_empty() && pl.node_affinity.is_empty() {
            return None;
        }
        Some(Box::new(NodeLabelsClass {
            selector: pl
                .node_selector
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            affinity: pl.node_affinity.clone(),
        }))
    }
}

impl ClassFilter for NodeLabelsClass {
    fn filter<'a>(&'a self, state: &'a PassState, node: NodeId) -> Result<(), Cow<'a, str>> {
        let labels = &state.node(node).labels;
        if !self.selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return Err("do not match the node selector".into());
        }
        match self.affinity.iter().find(|r| !r.matches(labels)) {
            Some(r) => {
                Err(format!("do not match node affinity ({})", describe_requirement(r)).into())
            }
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Taints

/// Filter: every `NoSchedule` taint of the node is tolerated.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaintToleration;

struct TaintClass {
    tolerations: Vec<Toleration>,
}

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &str {
        "TaintToleration"
    }
    fn pre_filter(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassFilter>> {
        let any = state
            .nodes()
            .iter()
            .any(|n| n.taints.iter().any(|t| t.effect == TaintEffect::NoSchedule));
        any.then(|| {
            Box::new(TaintClass {
                tolerations: class.replica.placement.tolerations.clone(),
            }) as Box<dyn ClassFilter>
        })
    }
}

impl ClassFilter for TaintClass {
    fn filter<'a>(&'a self, state: &'a PassState, node: NodeId) -> Result<(), Cow<'a, str>> {
        let untolerated = state.node(node).taints.iter().find(|t| {
            t.effect == TaintEffect::NoSchedule && !self.tolerations.iter().any(|o| o.tolerates(t))
        });
        match untolerated {
            None => Ok(()),
            Some(t) if t.value.is_empty() => {
                Err(format!("have the untolerated taint {}:NoSchedule", t.key).into())
            }
            Some(t) => Err(format!(
                "have the untolerated taint {}={}:NoSchedule",
                t.key, t.value
            )
            .into()),
        }
    }
}

/// Score: fewer untolerated `PreferNoSchedule` taints is better.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaintPreference;

struct TaintPreferenceClass {
    tolerations: Vec<Toleration>,
}

impl ScorePlugin for TaintPreference {
    fn name(&self) -> &str {
        "TaintPreference"
    }
    fn pre_score(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassScore>> {
        let tolerations = &class.replica.placement.tolerations;
        let any = state.nodes().iter().any(|n| {
            n.taints.iter().any(|t| {
                t.effect == TaintEffect::PreferNoSchedule
                    && !tolerations.iter().any(|o| o.tolerates(t))
            })
        });
        any.then(|| {
            Box::new(TaintPreferenceClass {
                tolerations: tolerations.clone(),
            }) as Box<dyn ClassScore>
        })
    }
}

impl ClassScore for TaintPreferenceClass {
    fn score(&self, state: &PassState, node: NodeId) -> u32 {
        let k = state
            .node(node)
            .taints
            .iter()
            .filter(|t| {
                t.effect == TaintEffect::PreferNoSchedule
                    && !self.tolerations.iter().any(|o| o.tolerates(t))
            })
            .count() as u32;
        100 / (1 + k)
    }
}

// ---------------------------------------------------------------------------------------------
// Required affinity and anti-affinity

/// Filter: required affinity (some matching replica in the node's domain) and required
/// anti-affinity (no matching replica in the node's domain), in the replica's namespace.
///
/// As in Kubernetes, the first replica of a service whose affinity selects its own service
/// may go anywhere the topology key exists (nothing matches yet).
#[derive(Clone, Copy, Debug, Default)]
pub struct InterReplicaAffinity;

struct AffinityTermState {
    topology: TopologyId,
    counter: CounterId,
    anti: bool,
    self_match: bool,
    exempt: bool,
    reason: String,
    missing: String,
}

struct AffinityClass {
    terms: Vec<AffinityTermState>,
}

impl FilterPlugin for InterReplicaAffinity {
    fn name(&self) -> &str {
        "InterReplicaAffinity"
    }
    fn pre_filter(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassFilter>> {
        let pl = &class.replica.placement;
        if pl.affinity.required.is_empty() && pl.anti_affinity.required.is_empty() {
            return None;
        }
        let mut terms = Vec::new();
        let all = pl
            .affinity
            .required
            .iter()
            .map(|t| (false, t))
            .chain(pl.anti_affinity.required.iter().map(|t| (true, t)));
        for (anti, term) in all {
            let topology = state.topology(&term.topology_key);
            let counter = state.counter(class.namespace, &term.label_selector, topology);
            let self_match = term.label_selector.matches(&class.replica.labels);
            let desc = describe_selector(&term.label_selector);
            terms.push(AffinityTermState {
                topology,
                counter,
                anti,
                self_match,
                exempt: !anti && self_match && state.count_total(counter) == 0,
                reason: if anti {
                    format!("anti-affinity with {desc}")
                } else {
                    format!("affinity with {desc} unmet")
                },
                missing: format!("lack the topology label {}", term.topology_key),
            });
        }
        Some(Box::new(AffinityClass { terms }))
    }
}

impl ClassFilter for AffinityClass {
    fn filter<'a>(&'a self, state: &'a PassState, node: NodeId) -> Result<(), Cow<'a, str>> {
        for t in &self.terms {
            if t.anti {
                if state.count_at(t.counter, node) > 0 {
                    return Err(Cow::Borrowed(&t.reason));
                }
            } else {
                if state.domain(t.topology, node).is_none() {
                    return Err(Cow::Borrowed(&t.missing));
                }
                if !t.exempt && state.count_at(t.counter, node) == 0 {
                    return Err(Cow::Borrowed(&t.reason));
                }
            }
        }
        Ok(())
    }

    fn reserve(&mut self, state: &PassState, node: NodeId, out: &mut Vec<Invalidation>) {
        for t in &mut self.terms {
            if !t.self_match {
                continue;
            }
            let Some(d) = state.domain(t.topology, node) else {
                continue;
            };
            if t.anti {
                out.push(Invalidation::Worse {
                    topology: t.topology,
                    domain: d,
                });
            } else if t.exempt {
                t.exempt = false;
                out.push(Invalidation::All);
            } else if state.count(t.counter, d) == 1 {
                out.push(Invalidation::Better {
                    topology: t.topology,
                    domains: vec![d],
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Preferred affinity and anti-affinity

/// Score: preferred affinity terms raise, preferred anti-affinity terms lower the score of
/// nodes whose domain holds matching replicas (by weight, saturating with the count).
#[derive(Clone, Copy, Debug, Default)]
pub struct AffinityPreference;

struct PreferredTerm {
    topology: TopologyId,
    counter: CounterId,
    weight: u64,
    anti: bool,
    self_match: bool,
}

struct AffinityPreferenceClass {
    terms: Vec<PreferredTerm>,
    w_aff: u64,
    w_anti: u64,
}

impl ScorePlugin for AffinityPreference {
    fn name(&self) -> &str {
        "AffinityPreference"
    }
    fn pre_score(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassScore>> {
        let pl = &class.replica.placement;
        if pl.affinity.preferred.is_empty() && pl.anti_affinity.preferred.is_empty() {
            return None;
        }
        let mut terms = Vec::new();
        let (mut w_aff, mut w_anti) = (0, 0);
        let all = pl
            .affinity
            .preferred
            .iter()
            .map(|t| (false, t))
            .chain(pl.anti_affinity.preferred.iter().map(|t| (true, t)));
        for (anti, t) in all {
            let topology = state.topology(&t.topology_key);
            let counter = state.counter(class.namespace, &t.label_selector, topology);
            let weight = u64::from(t.weight.clamp(1, 100));
            if anti {
                w_anti += weight;
            } else {
                w_aff += weight;
            }
            terms.push(PreferredTerm {
                topology,
                counter,
                weight,
                anti,
                self_match: t.label_selector.matches(&class.replica.labels),
            });
        }
        Some(Box::new(AffinityPreferenceClass {
            terms,
            w_aff,
            w_anti,
        }))
    }
}

impl ClassScore for AffinityPreferenceClass {
    fn score(&self, state: &PassState, node: NodeId) -> u32 {
        // Each term contributes weight·c/(c+1) (in thousandths): 0 with no match, → weight.
        let mut plus = 0u64;
        let mut minus = 0u64;
        for t in &self.terms {
            let c = u64::from(state.count_at(t.counter, node));
            let v = t.weight * 1000 * c / (c + 1);
            if t.anti {
                minus += v;
            } else {
                plus += v;
            }
        }
        let range = (self.w_aff + self.w_anti) * 1000;
        if range == 0 {
            return 0;
        }
        // minus <= w_anti·1000, so this does not underflow.
        ((self.w_anti * 1000 + plus - minus) * 100 / range) as u32
    }

    fn reserve(&mut self, state: &PassState, node: NodeId, out: &mut Vec<Invalidation>) {
        for t in &self.terms {
            if !t.self_match {
                continue;
            }
            let Some(d) = state.domain(t.topology, node) else {
                continue;
            };
            out.push(if t.anti {
                Invalidation::Worse {
                    topology: t.topology,
                    domain: d,
                }
            } else {
                Invalidation::Better {
                    topology: t.topology,
                    domains: vec![d],
                }
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Topology spread

/// Filter: `DoNotSchedule` topology spread constraints. Placing on a node must keep
/// `count(domain) + 1 - min(count over eligible domains) <= maxSkew`, counting the service's
/// own replicas; eligible domains are those with a node that passes the node selector and
/// node affinity. Nodes without the topology label are rejected.
#[derive(Clone, Copy, Debug, Default)]
pub struct TopologySpread;

struct SpreadConstraint {
    topology: TopologyId,
    counter: CounterId,
    max_skew: u32,
    eligible: Vec<bool>,
    min: u32,
    at_min: u32,
    skew_reason: String,
    missing: String,
}

impl SpreadConstraint {
    fn recompute_min(&mut self, state: &PassState) {
        let counts = state.counts(self.counter);
        let min = counts
            .iter()
            .zip(&self.eligible)
            .filter(|(_, e)| **e)
            .map(|(c, _)| *c)
            .min()
            .unwrap_or(0);
        self.min = min;
        self.at_min = counts
            .iter()
            .zip(&self.eligible)
            .filter(|(c, e)| **e && **c == min)
            .count() as u32;
    }
}

struct SpreadClass {
    constraints: Vec<SpreadConstraint>,
}

/// Domains of `t` holding at least one node that passes the class's node labels rules.
fn eligible_domains(class: &Class<'_>, state: &PassState, t: TopologyId) -> Vec<bool> {
    let mut eligible = vec![false; state.domain_count(t)];
    for (i, n) in state.nodes().iter().enumerate() {
        if let Some(d) = state.domain(t, i) {
            if !eligible[d as usize] && node_labels_match(class, n) {
                eligible[d as usize] = true;
            }
        }
    }
    eligible
}

impl FilterPlugin for TopologySpread {
    fn name(&self) -> &str {
        "TopologySpread"
    }
    fn pre_filter(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassFilter>> {
        let mut constraints = Vec::new();
        for c in &class.replica.placement.topology_spread_constraints {
            if c.when_unsatisfiable != WhenUnsatisfiable::DoNotSchedule {
                continue;
            }
            let topology = state.topology(&c.topology_key);
            let counter = state.service_counter(&class.replica.service, topology);
            let mut sc = SpreadConstraint {
                topology,
                counter,
                max_skew: c.max_skew.max(1),
                eligible: eligible_domains(class, state, topology),
                min: 0,
                at_min: 0,
                skew_reason: format!(
                    "would exceed max skew {} over {}",
                    c.max_skew.max(1),
                    c.topology_key
                ),
                missing: format!("lack the topology label {}", c.topology_key),
            };
            sc.recompute_min(state);
            constraints.push(sc);
        }
        if constraints.is_empty() {
            return None;
        }
        Some(Box::new(SpreadClass { constraints }))
    }
}

impl ClassFilter for SpreadClass {
    fn filter<'a>(&'a self, state: &'a PassState, node: NodeId) -> Result<(), Cow<'a, str>> {
        for c in &self.constraints {
            let Some(d) = state.domain(c.topology, node) else {
                return Err(Cow::Borrowed(&c.missing));
            };
            let count = state.count(c.counter, d);
            if u64::from(count) + 1 > u64::from(c.min) + u64::from(c.max_skew) {
                return Err(Cow::Borrowed(&c.skew_reason));
            }
        }
        Ok(())
    }

    fn reserve(&mut self, state: &PassState, node: NodeId, out: &mut Vec<Invalidation>) {
        for c in &mut self.constraints {
            let Some(d) = state.domain(c.topology, node) else {
                continue;
            };
            out.push(Invalidation::Worse {
                topology: c.topology,
                domain: d,
            });
            if !c.eligible[d as usize] || state.count(c.counter, d) != c.min + 1 {
                continue;
            }
            c.at_min = c.at_min.saturating_sub(1);
            if c.at_min > 0 {
                continue;
            }
            c.recompute_min(state);
            // Domains that were one over the limit are now within it.
            let open_at = c.min + c.max_skew - 1;
            let domains: Vec<DomainId> = state
                .counts(c.counter)
                .iter()
                .enumerate()
                .filter(|(i, n)| c.eligible[*i] && **n == open_at)
                .map(|(i, _)| i as DomainId)
                .collect();
            if !domains.is_empty() {
                out.push(Invalidation::Better {
                    topology: c.topology,
                    domains,
                });
            }
        }
    }

    fn gate(&self) -> Option<TopologyId> {
        match self.constraints.as_slice() {
            [one] => Some(one.topology),
            _ => None,
        }
    }
}

/// Score: `ScheduleAnyway` topology spread constraints prefer domains holding fewer of the
/// service's replicas.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpreadPreference;

struct SoftSpread {
    topology: TopologyId,
    counter: CounterId,
    /// The count at which a domain scores 50: the expected replicas per domain.
    half: u64,
}

struct SpreadPreferenceClass {
    constraints: Vec<SoftSpread>,
}

impl ScorePlugin for SpreadPreference {
    fn name(&self) -> &str {
        "SpreadPreference"
    }
    fn pre_score(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassScore>> {
        let mut constraints = Vec::new();
        for c in &class.replica.placement.topology_spread_constraints {
            if c.when_unsatisfiable != WhenUnsatisfiable::ScheduleAnyway {
                continue;
            }
            let topology = state.topology(&c.topology_key);
            let counter = state.service_counter(&class.replica.service, topology);
            let domains = eligible_domains(class, state, topology)
                .iter()
                .filter(|e| **e)
                .count()
                .max(1) as u64;
            let half = ((state.count_total(counter) + class.size as u64) / domains).max(1);
            constraints.push(SoftSpread {
                topology,
                counter,
                half,
            });
        }
        if constraints.is_empty() {
            return None;
        }
        Some(Box::new(SpreadPreferenceClass { constraints }))
    }
}

impl ClassScore for SpreadPreferenceClass {
    fn score(&self, state: &PassState, node: NodeId) -> u32 {
        let mut sum = 0u64;
        for c in &self.constraints {
            if state.domain(c.topology, node).is_some() {
                let n = u64::from(state.count_at(c.counter, node));
                sum += 100 * c.half / (c.half + n);
            }
        }
        (sum / self.constraints.len() as u64) as u32
    }

    fn reserve(&mut self, state: &PassState, node: NodeId, out: &mut Vec<Invalidation>) {
        for c in &self.constraints {
            if let Some(d) = state.domain(c.topology, node) {
                out.push(Invalidation::Worse {
                    topology: c.topology,
                    domain: d,
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resource scores

/// Score: `spread` prefers the least allocated node, `binpack` the most allocated, by the
/// mean of cpu and memory use after placing (replica slots when neither is known, and at
/// least the slots for a replica that requests neither).
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceAllocation;

struct AllocationClass {
    cpu: u64,
    memory: u64,
    binpack: bool,
}

impl ScorePlugin for ResourceAllocation {
    fn name(&self) -> &str {
        "ResourceAllocation"
    }
    fn pre_score(&self, class: &Class<'_>, _: &mut PassState) -> Option<Box<dyn ClassScore>> {
        Some(Box::new(AllocationClass {
            cpu: class.replica.cpu,
            memory: class.replica.memory,
            binpack: class.replica.placement.strategy == Strategy::Binpack,
        }))
    }
}

/// Use after placing, in thousandths, or `None` when the capacity is unknown.
fn permille(used: u64, request: u64, capacity: u64) -> Option<u64> {
    if capacity == 0 {
        return None;
    }
    let v = (u128::from(used) + u128::from(request)) * 1000 / u128::from(capacity);
    Some(v.min(1000) as u64)
}

impl ClassScore for AllocationClass {
    fn score(&self, state: &PassState, node: NodeId) -> u32 {
        let n = state.node(node);
        let dims = [
            permille(n.cpu_used, self.cpu, n.cpu_capacity),
            permille(n.memory_used, self.memory, n.memory_capacity),
        ];
        let known: Vec<u64> = dims.iter().flatten().copied().collect();
        // Replica slots in use after placing, in percent rounded up, so one more replica on a
        // node always shows (floor would hide it below 1% of the slots).
        let slots = (u64::from(n.replicas) + 1) * 100;
        let slots = match u64::from(n.max_replicas) {
            0 => 0,
            max => slots.div_ceil(max).min(100),
        };
        let used = if known.is_empty() {
            slots
        } else {
            let resources = known.iter().sum::<u64>() / known.len() as u64 / 10;
            // A replica that requests nothing adds no cpu or memory: without the slots, every
            // such replica of a pass would go to the same (first-ranked) node. Kubernetes
            // scores such pods with a default request for the same reason.
            if self.cpu == 0 && self.memory == 0 {
                resources.max(slots)
            } else {
                resources
            }
        };
        let used = used as u32;
        if self.binpack {
            used
        } else {
            100 - used
        }
    }
}

/// Score (`spread` only): fewer replicas of the same service on the node is better.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceSpread;

struct ServiceSpreadClass {
    counter: CounterId,
}

impl ScorePlugin for ServiceSpread {
    fn name(&self) -> &str {
        "ServiceSpread"
    }
    fn pre_score(&self, class: &Class<'_>, state: &mut PassState) -> Option<Box<dyn ClassScore>> {
        if class.replica.placement.strategy == Strategy::Binpack {
            return None;
        }
        let t = state.topology(NODE_TOPOLOGY_KEY);
        let counter = state.service_counter(&class.replica.service, t);
        Some(Box::new(ServiceSpreadClass { counter }))
    }
}

impl ClassScore for ServiceSpreadClass {
    fn score(&self, state: &PassState, node: NodeId) -> u32 {
        100 / (1 + state.count_at(self.counter, node))
    }
}
