//! Property tests of the default scheduler on random small clusters and workloads:
//!
//! - it never overcommits cpu, memory, host ports or a node's replica limit;
//! - it never breaks a required rule: runtime, cordon, node selector, `NoSchedule` taints,
//!   required anti-affinity;
//! - a topology spread constraint (`DoNotSchedule`) keeps its skew within `maxSkew`;
//! - a replica is left pending only when brute force over every node, on the same instance
//!   with the plan's other placements, finds none that takes it;
//! - same input and seed, same plan.
//!
//! Instances are built from real objects (`Node`, manifests parsed from YAML, replicas made by
//! the replication controller's `new_replica`) through `ClusterSnapshot::build`, as the engine
//! builds them. The rules are re-implemented here, independently of the scheduler's plugins.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use orch_core::engine::replication::new_replica;
use orch_core::model::object::{
    Metadata, Node, NodeCondition, NodeSpec, NodeStatus, Object, Replica, Resources, Service,
    Taint, TaintEffect,
};
use orch_core::model::quantity::{Cpu, Memory};
use orch_core::scheduler::{ClusterSnapshot, PendingReplica, Plan, Scheduler};
use orch_sched::DefaultScheduler;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct NodeGen {
    cpu: u64,
    memory_mi: u64,
    max_replicas: u32,
    zone: u8,
    ssd: bool,
    tainted: bool,
    cordoned: bool,
}

#[derive(Clone, Debug)]
struct ServiceGen {
    replicas: u32,
    cpu: u64,
    memory_mi: u64,
    port: Option<u16>,
    ssd_only: bool,
    tolerates: bool,
    anti: Option<&'static str>,
    spread: bool,
    binpack: bool,
    /// Replicas of this service already running, on these node indexes.
    existing: Vec<usize>,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        prop_oneof![Just(0u64), 500u64..4000],
        prop_oneof![Just(0u64), 256u64..4096],
        0u32..5,
        0u8..3,
        any::<bool>(),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(cpu, memory_mi, max_replicas, zone, ssd, tainted, cordoned)| NodeGen {
                cpu,
                memory_mi,
                max_replicas,
                zone,
                ssd,
                tainted,
                cordoned,
            },
        )
}

fn service_gen(nodes: usize) -> impl Strategy<Value = ServiceGen> {
    (
        1u32..5,
        prop_oneof![Just(0u64), 1u64..1500],
        prop_oneof![Just(0u64), 4u64..1024],
        prop_oneof![3 => Just(None), 1 => Just(Some(80u16)), 1 => Just(Some(443u16))],
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.3),
        prop_oneof![2 => Just(None), 1 => Just(Some("orch.dev/node")), 1 => Just(Some("zone"))],
        prop::bool::weighted(0.3),
        any::<bool>(),
        prop::collection::vec(0..nodes, 0..3),
    )
        .prop_map(
            |(
                replicas,
                cpu,
                memory_mi,
                port,
                ssd_only,
                tolerates,
                anti,
                spread,
                binpack,
                existing,
            )| {
                ServiceGen {
                    replicas,
                    cpu,
                    memory_mi,
                    port,
                    ssd_only,
                    tolerates,
                    anti,
                    // Spread is checked on services without earlier replicas (so the skew
                    // held at the start).
                    spread: spread && existing.is_empty(),
                    binpack,
                    existing,
                }
            },
        )
}

fn instance() -> impl Strategy<Value = (Vec<NodeGen>, Vec<ServiceGen>, u64)> {
    prop::collection::vec(node_gen(), 1..7).prop_flat_map(|nodes| {
        let n = nodes.len();
        (
            Just(nodes),
            prop::collection::vec(service_gen(n), 1..4),
            any::<u64>(),
        )
    })
}

fn node(i: usize, g: &NodeGen) -> Node {
    let labels = BTreeMap::from([
        ("zone".to_string(), format!("z{}", g.zone)),
        (
            "disk".to_string(),
            if g.ssd { "ssd" } else { "hdd" }.to_string(),
        ),
    ]);
    Node {
        metadata: Metadata {
            name: format!("n{i}"),
            uid: format!("u{i}"),
            labels: labels.into(),
            ..Metadata::default()
        },
        spec: NodeSpec {
            unschedulable: g.cordoned,
            draining: false,
            network: None,
            taints: if g.tainted {
                vec![Taint {
                    key: "dedicated".into(),
                    value: "db".into(),
                    effect: TaintEffect::NoSchedule,
                }]
            } else {
                Vec::new()
            },
        },
        status: NodeStatus {
            capacity: Resources {
                cpu: (g.cpu > 0).then_some(Cpu(g.cpu)),
                memory: (g.memory_mi > 0).then_some(Memory(g.memory_mi << 20)),
            },
            max_replicas: g.max_replicas,
            runtimes: vec!["process".into()],
            condition: NodeCondition::Ready,
            ..NodeStatus::default()
        },
    }
}

fn service(i: usize, g: &ServiceGen) -> Service {
    let mut placement = String::new();
    if g.ssd_only {
        placement.push_str("    nodeSelector: {disk: ssd}\n");
    }
    if g.tolerates {
        placement.push_str(
            "    tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]\n",
        );
    }
    if let Some(key) = g.anti {
        placement.push_str(&format!(
            "    antiAffinity:\n      required: [{{labelSelector: {{matchLabels: {{app: s{i}}}}}, topologyKey: {key}}}]\n"
        ));
    }
    if g.spread {
        placement.push_str(
            "    topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}]\n",
        );
    }
    if g.binpack {
        placement.push_str("    strategy: binpack\n");
    }
    let ports = match g.port {
        Some(p) => format!("    ports: [{{name: p, port: {p}}}]\n"),
        None => String::new(),
    };
    let placement = if placement.is_empty() {
        placement
    } else {
        format!("  placement:\n{placement}")
    };
    let mut resources = Vec::new();
    if g.cpu > 0 {
        resources.push(format!("cpu: {}m", g.cpu));
    }
    if g.memory_mi > 0 {
        resources.push(format!("memory: {}Mi", g.memory_mi));
    }
    let yaml = format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  replicas: {}\n  template:\n    command: [x]\n    labels: {{app: s{i}}}\n    resources: {{{}}}\n{ports}{placement}",
        g.replicas,
        resources.join(", "),
    );
    match orch_core::model::manifest::parse("gen.yaml", &yaml) {
        Ok(mut objs) => match objs.remove(0) {
            Object::Service(s) => *s,
            other => panic!("not a service: {other:?}"),
        },
        Err(e) => panic!("generated manifest invalid: {e}\n{yaml}"),
    }
}

/// The generated instance as the engine hands it to the scheduler.
struct Built {
    nodes: Vec<Node>,
    bound: Vec<Replica>,
    pending: Vec<PendingReplica>,
    by_key: HashMap<String, Replica>,
    services: Vec<(Service, ServiceGen)>,
}

fn build(ng: &[NodeGen], sg: &[ServiceGen]) -> Built {
    let nodes: Vec<Node> = ng.iter().enumerate().map(|(i, g)| node(i, g)).collect();
    let mut built = Built {
        nodes,
        bound: Vec::new(),
        pending: Vec::new(),
        by_key: HashMap::new(),
        services: Vec::new(),
    };
    let mut k = 0;
    for (i, g) in sg.iter().enumerate() {
        let svc = service(i, g);
        for &n in &g.existing {
            let mut r = new_replica(&svc, &[]);
            r.metadata.name = format!("s{i}-old{k}");
            k += 1;
            r.spec.node = Some(format!("n{n}"));
            built.by_key.insert(r.metadata.name.clone(), r.clone());
            built.bound.push(r);
        }
        for _ in 0..g.replicas {
            let mut r = new_replica(&svc, &[]);
            r.metadata.name = format!("s{i}-new{k}");
            k += 1;
            built
                .pending
                .push(PendingReplica::from_replica(&r, r.metadata.name.clone()));
            built.by_key.insert(r.metadata.name.clone(), r);
        }
        built.services.push((svc, g.clone()));
    }
    built
}

fn domain(n: &Node, key: &str) -> Option<String> {
    if key == "orch.dev/node" {
        Some(n.metadata.name.clone())
    } else {
        n.metadata.labels.get(key).cloned()
    }
}

/// Whether `r` may go on `node` given the replicas placed so far (with their nodes): every
/// hard rule, written out independently of the scheduler.
fn fits(r: &Replica, node: &Node, placed: &[(&Replica, &Node)], nodes: &[Node]) -> bool {
    let p = &r.spec.placement;
    if node.spec.unschedulable || !node.status.runtimes.iter().any(|x| x == "process") {
        return false;
    }
    let here: Vec<&Replica> = placed
        .iter()
        .filter(|(_, n)| n.metadata.name == node.metadata.name)
        .map(|(r, _)| *r)
        .collect();
    let cpu = |r: &Replica| r.spec.template.resources.cpu.map_or(0, |c| c.0);
    let mem = |r: &Replica| r.spec.template.resources.memory.map_or(0, |m| m.0);
    if let Some(cap) = node.status.capacity.cpu {
        if here.iter().map(|x| cpu(x)).sum::<u64>() + cpu(r) > cap.0 {
            return false;
        }
    }
    if let Some(cap) = node.status.capacity.memory {
        if here.iter().map(|x| mem(x)).sum::<u64>() + mem(r) > cap.0 {
            return false;
        }
    }
    if node.status.max_replicas > 0 && here.len() as u32 >= node.status.max_replicas {
        return false;
    }
    let ports = |r: &Replica| -> BTreeSet<u16> {
        r.spec
            .template
            .ports
            .iter()
            .filter_map(|p| p.port)
            .collect()
    };
    let used: BTreeSet<u16> = here.iter().flat_map(|x| ports(x)).collect();
    if ports(r).iter().any(|p| used.contains(p)) {
        return false;
    }
    if p.node_selector
        .iter()
        .any(|(k, v)| node.metadata.labels.get(k) != Some(v))
    {
        return false;
    }
    if node.spec.taints.iter().any(|taint| {
        taint.effect == TaintEffect::NoSchedule && !p.tolerations.iter().any(|o| o.tolerates(taint))
    }) {
        return false;
    }
    for term in &p.anti_affinity.required {
        let d = domain(node, &term.topology_key);
        if d.is_some()
            && placed.iter().any(|(x, n)| {
                x.metadata.namespace == r.metadata.namespace
                    && term.label_selector.matches(&x.metadata.labels)
                    && domain(n, &term.topology_key) == d
            })
        {
            return false;
        }
    }
    for c in &p.topology_spread_constraints {
        // Domains of nodes that pass the node selector; counts of the service's replicas.
        let mut counts: BTreeMap<String, u32> = nodes
            .iter()
            .filter(|n| {
                p.node_selector
                    .iter()
                    .all(|(k, v)| n.metadata.labels.get(k) == Some(v))
            })
            .filter_map(|n| domain(n, &c.topology_key))
            .map(|d| (d, 0))
            .collect();
        for (x, n) in placed {
            if x.spec.service == r.spec.service && x.metadata.namespace == r.metadata.namespace {
                if let Some(v) = domain(n, &c.topology_key).and_then(|d| counts.get_mut(&d)) {
                    *v += 1;
                }
            }
        }
        let min = counts.values().copied().min().unwrap_or(0);
        match domain(node, &c.topology_key).and_then(|d| counts.get(&d).copied()) {
            Some(here) if here < min + c.max_skew => {}
            _ => return false,
        }
    }
    true
}

fn check(ng: &[NodeGen], sg: &[ServiceGen], seed: u64) -> Result<(), TestCaseError> {
    let b = build(ng, sg);
    let snapshot = ClusterSnapshot::build(&b.nodes, &b.bound);
    let plan: Plan = DefaultScheduler.schedule(&snapshot, &b.pending, seed);
    prop_assert_eq!(
        &plan,
        &DefaultScheduler.schedule(&snapshot, &b.pending, seed),
        "same input and seed, another plan"
    );

    // Every pending replica is either bound or explained, exactly once.
    let decided: BTreeSet<&String> = plan
        .bindings
        .iter()
        .map(|(k, _)| k)
        .chain(plan.unschedulable.iter().map(|(k, _)| k))
        .collect();
    prop_assert_eq!(decided.len(), b.pending.len(), "{:?}", plan);
    prop_assert_eq!(
        plan.bindings.len() + plan.unschedulable.len(),
        b.pending.len()
    );

    let node_of = |name: &str| b.nodes.iter().find(|n| n.metadata.name == name).unwrap();
    // Replay the bindings in plan order: each must fit given those before it and the
    // replicas already there (so nothing is overcommitted at the end either).
    let mut placed: Vec<(&Replica, &Node)> = b
        .bound
        .iter()
        .map(|r| (r, node_of(r.spec.node.as_deref().unwrap())))
        .collect();
    let earlier = placed.len();
    for (key, node_name) in &plan.bindings {
        let r = &b.by_key[key];
        let n = node_of(node_name);
        prop_assert!(
            fits(r, n, &placed, &b.nodes),
            "{} placed on {} where it does not fit: {:?}",
            key,
            node_name,
            plan
        );
        placed.push((r, n));
    }
    // Anti-affinity holds in the final placement too, from both sides (the generated rules
    // select their own service, so they are symmetric). Replicas that were already running
    // are not judged among themselves: the generator may start them in breach.
    for (i, (r, n)) in placed.iter().enumerate().skip(earlier) {
        for term in &r.spec.placement.anti_affinity.required {
            let clash = placed.iter().enumerate().any(|(j, (x, m))| {
                j != i
                    && term.label_selector.matches(&x.metadata.labels)
                    && domain(n, &term.topology_key).is_some()
                    && domain(n, &term.topology_key) == domain(m, &term.topology_key)
            });
            prop_assert!(
                !clash,
                "{} shares a {} domain with a replica it must avoid: {:?}",
                r.metadata.name,
                term.topology_key,
                plan
            );
        }
    }
    // Spread: the final skew stays within maxSkew.
    for (svc, g) in &b.services {
        if !g.spread {
            continue;
        }
        let mut counts: BTreeMap<String, u32> = b
            .nodes
            .iter()
            .filter(|n| !g.ssd_only || n.metadata.labels["disk"] == "ssd")
            .map(|n| (n.metadata.labels["zone"].clone(), 0))
            .collect();
        for (r, n) in &placed {
            if r.spec.service.is_service(&svc.metadata.name) {
                *counts.entry(n.metadata.labels["zone"].clone()).or_default() += 1;
            }
        }
        if let (Some(max), Some(min)) = (counts.values().max(), counts.values().min()) {
            prop_assert!(
                max - min <= 1,
                "{}: zone counts {:?}",
                svc.metadata.name,
                counts
            );
        }
    }
    // Pending only when no node takes it, by brute force on the final placement.
    for (key, reason) in &plan.unschedulable {
        let r = &b.by_key[key];
        let takers: Vec<&str> = b
            .nodes
            .iter()
            .filter(|n| fits(r, n, &placed, &b.nodes))
            .map(|n| n.metadata.name.as_str())
            .collect();
        prop_assert!(
            takers.is_empty(),
            "{} left pending ({}) but {:?} take it: {:?}",
            key,
            reason,
            takers,
            plan
        );
        let prefix = format!("0/{} nodes are available: ", b.nodes.len());
        prop_assert!(reason.starts_with(&prefix), "{}", reason);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn placements_respect_every_rule((nodes, services, seed) in instance()) {
        check(&nodes, &services, seed)?;
    }
}
