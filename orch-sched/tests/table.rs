//! Data-driven placement scenarios: one `check(cluster, workload, expected)` helper and a
//! table of cases. Clusters are written one node per line, workloads as service manifests
//! (so the Kubernetes-shaped field names are exercised too), and the expected plan as one line
//! per service: `web: a=2 b=1 | pending 1: <reason>`.

use std::collections::BTreeMap;

use orch_core::engine::replication::new_replica;
use orch_core::model::manifest;
use orch_core::model::object::{Object, Taint, TaintEffect, SERVICE_LABEL};
use orch_core::scheduler::{ClusterSnapshot, LabelCount, NodeInfo, PendingReplica, Scheduler};
use orch_sched::DefaultScheduler;

const MI: u64 = 1 << 20;

/// Parses one node per line: `name [cpu=<millicores>] [mem=<MiB>] [max=<replicas>]
/// [used=<millicores>] [taint=key[=value]:Effect] [cordoned] [existing=<service>:<count>] [label=value ...]`.
fn cluster(text: &str) -> ClusterSnapshot {
    let mut nodes = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut words = line.split_whitespace();
        let mut n = NodeInfo {
            name: words.next().unwrap().to_string(),
            runtimes: vec!["process".into()],
            schedulable: true,
            ..NodeInfo::default()
        };
        for w in words {
            if w == "cordoned" {
                n.schedulable = false;
                continue;
            }
            let (k, v) = w.split_once('=').unwrap();
            match k {
                "cpu" => n.cpu_capacity = v.parse().unwrap(),
                "mem" => n.memory_capacity = v.parse::<u64>().unwrap() * MI,
                "max" => n.max_replicas = v.parse().unwrap(),
                "used" => n.cpu_used = v.parse().unwrap(),
                "taint" => {
                    let (kv, effect) = v.rsplit_once(':').unwrap();
                    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
                    n.taints.push(Taint {
                        key: key.into(),
                        value: value.into(),
                        effect: match effect {
                            "NoSchedule" => TaintEffect::NoSchedule,
                            _ => TaintEffect::PreferNoSchedule,
                        },
                    });
                }
                "existing" => {
                    let (svc, count) = v.split_once(':').unwrap();
                    let count: u32 = count.parse().unwrap();
                    n.replicas += count;
                    n.per_service.insert(format!("default/{svc}"), count);
                    n.replica_labels.push(LabelCount {
                        namespace: "default".into(),
                        labels: std::sync::Arc::new(
                            [(SERVICE_LABEL.to_string(), svc.to_string())].into(),
                        ),
                        count,
                    });
                }
                _ => {
                    n.labels.insert(k.into(), v.into());
                }
            }
        }
        nodes.push(n);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterSnapshot { nodes }
}

/// Pending replicas for every service of a manifest (each service's `replicas`, in order).
fn workload(yaml: &str) -> Vec<PendingReplica> {
    let objects = manifest::parse("table.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for o in objects {
        let Object::Service(svc) = o else { continue };
        for i in 0..svc.spec.replicas {
            let r = new_replica(&svc, &[]);
            let key = format!("/replicas/default/{}-{i}", svc.metadata.name);
            out.push(PendingReplica::from_replica(&r, key));
        }
    }
    out
}

/// `web: a=2 b=1 | pending 1: reason` per service, in order of first appearance.
fn summary(
    pending: &[PendingReplica],
    bindings: &[(String, String)],
    unsched: &[(String, String)],
) -> String {
    let svc_of: BTreeMap<&str, &str> = pending
        .iter()
        .map(|p| (p.key.as_str(), p.service.trim_start_matches("default/")))
        .collect();
    let mut order: Vec<&str> = Vec::new();
    for p in pending {
        let s = p.service.trim_start_matches("default/");
        if !order.contains(&s) {
            order.push(s);
        }
    }
    let mut lines = Vec::new();
    for s in order {
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, n) in bindings {
            if svc_of[k.as_str()] == s {
                *per_node.entry(n).or_default() += 1;
            }
        }
        let mut line = format!("{s}:");
        for (n, c) in &per_node {
            line.push_str(&format!(" {n}={c}"));
        }
        let failed: Vec<&String> = unsched
            .iter()
            .filter(|(k, _)| svc_of[k.as_str()] == s)
            .map(|(_, r)| r)
            .collect();
        if let Some(r) = failed.first() {
            line.push_str(&format!(" | pending {}: {r}", failed.len()));
        }
        lines.push(line);
    }
    lines.join("\n")
}

/// Schedules `services` on `nodes` and compares the summary with `expected`.
fn check(nodes: &str, services: &str, expected: &str) -> Result<(), String> {
    let snapshot = cluster(nodes);
    let pending = workload(services);
    let plan = DefaultScheduler.schedule(&snapshot, &pending, 7);
    let got = summary(&pending, &plan.bindings, &plan.unschedulable);
    let want: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if got == want.join("\n") {
        Ok(())
    } else {
        Err(format!("want: {}\n got: {got}", want.join("\n")))
    }
}

fn svc(name: &str, replicas: u32, template_extra: &str, placement: &str) -> String {
    let mut s = format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [server]\n"
    );
    for l in template_extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str(&format!("    {l}\n"));
    }
    if !placement.trim().is_empty() {
        s.push_str("  placement:\n");
        for l in placement.lines().filter(|l| !l.trim().is_empty()) {
            s.push_str(&format!("    {l}\n"));
        }
    }
    s
}

fn docs(services: &[String]) -> String {
    services.join("---\n")
}

#[test]
fn scenarios() {
    let res = "resources: {cpu: 500m, memory: 512Mi}";
    // (what, nodes, services, expected)
    let table: Vec<(&str, &str, String, &str)> = vec![
        (
            "spread evenly over identical nodes",
            "a\nb\nc",
            svc("web", 6, "", ""),
            "web: a=2 b=2 c=2",
        ),
        (
            "cpu caps each node; the rest stays pending with a reason",
            "a cpu=1000\nb cpu=500",
            svc("web", 4, res, ""),
            "web: a=2 b=1 | pending 1: 0/2 nodes are available: 2 insufficient cpu",
        ),
        (
            "memory counted per cause",
            "a mem=256\nb mem=256\nc cordoned",
            svc("web", 1, res, ""),
            "web: | pending 1: 0/3 nodes are available: 2 insufficient memory, 1 unschedulable (cordoned or unreachable)",
        ),
        (
            "node selector",
            "a disk=ssd\nb disk=hdd\nc",
            svc("web", 2, "", "nodeSelector: {disk: ssd}"),
            "web: a=2",
        ),
        (
            "node affinity In / NotIn / Exists / Gt",
            "a zone=z1 gen=3\nb zone=z2 gen=5\nc zone=z3 gen=7\nd gen=9",
            svc(
                "web",
                3,
                "",
                "nodeAffinity:\n- {key: zone, operator: NotIn, values: [z3]}\n- {key: zone, operator: Exists}\n- {key: gen, operator: Gt, values: [\"4\"]}",
            ),
            "web: b=3",
        ),
        (
            "node affinity explains the failing expression",
            "a zone=z1\nb zone=z2",
            svc("web", 1, "", "nodeAffinity:\n- {key: zone, operator: In, values: [z9]}"),
            "web: | pending 1: 0/2 nodes are available: 2 do not match node affinity (zone In [z9])",
        ),
        (
            "NoSchedule taint repels replicas that do not tolerate it",
            "a taint=dedicated=gpu:NoSchedule\nb",
            svc("web", 3, "", ""),
            "web: b=3",
        ),
        (
            "a toleration lets replicas onto the tainted node",
            "a taint=dedicated=gpu:NoSchedule max=1\nb max=1",
            svc(
                "web",
                2,
                "",
                "tolerations:\n- {key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}",
            ),
            "web: a=1 b=1",
        ),
        (
            "only tainted nodes: pending, naming the taint",
            "a taint=dedicated=gpu:NoSchedule\nb taint=spot:NoSchedule",
            svc("web", 1, "", ""),
            "web: | pending 1: 0/2 nodes are available: 1 have the untolerated taint dedicated=gpu:NoSchedule, 1 have the untolerated taint spot:NoSchedule",
        ),
        (
            "PreferNoSchedule is avoided while other nodes fit",
            "a taint=spot:PreferNoSchedule\nb max=2",
            svc("web", 3, "", ""),
            "web: a=1 b=2",
        ),
        (
            "required anti-affinity on the node: one per node, the rest pending",
            "a\nb\nc",
            svc(
                "web",
                4,
                "",
                "antiAffinity:\n  required:\n  - labelSelector: {matchLabels: {orch/service: web}}\n    topologyKey: orch.dev/node",
            ),
            "web: a=1 b=1 c=1 | pending 1: 0/3 nodes are available: 3 anti-affinity with service web",
        ),
        (
            "anti-affinity with another service's existing replicas, counted per cause",
            "a existing=db:1 mem=1024\nb existing=db:1 mem=1024\nc mem=256\nd mem=512",
            svc(
                "web",
                2,
                res,
                "antiAffinity:\n  required:\n  - labelSelector: {matchLabels: {orch/service: db}}\n    topologyKey: orch.dev/node",
            ),
            "web: d=1 | pending 1: 0/4 nodes are available: 2 anti-affinity with service db, 2 insufficient memory",
        ),
        (
            "zone anti-affinity",
            "a zone=z1\nb zone=z1\nc zone=z2\nd zone=z2",
            svc(
                "web",
                3,
                "",
                "antiAffinity:\n  required:\n  - labelSelector: {matchLabels: {orch/service: web}}\n    topologyKey: zone",
            ),
            "web: b=1 d=1 | pending 1: 0/4 nodes are available: 4 anti-affinity with service web",
        ),
        (
            "required affinity to another service's zone",
            "a zone=z1 existing=db:1\nb zone=z1\nc zone=z2\nd zone=z2",
            svc(
                "web",
                4,
                "",
                "affinity:\n  required:\n  - labelSelector: {matchLabels: {orch/service: db}}\n    topologyKey: zone",
            ),
            "web: a=2 b=2",
        ),
        (
            "required affinity with nothing to match",
            "a zone=z1\nb",
            svc(
                "web",
                1,
                "",
                "affinity:\n  required:\n  - labelSelector: {matchLabels: {orch/service: db}}\n    topologyKey: zone",
            ),
            "web: | pending 1: 0/2 nodes are available: 1 affinity with service db unmet, 1 lack the topology label zone",
        ),
        (
            "self-affinity: the first replica picks a zone, the rest follow",
            "a zone=z1\nb zone=z2\nc zone=z2",
            svc(
                "web",
                4,
                "",
                "affinity:\n  required:\n  - labelSelector: {matchLabels: {orch/service: web}}\n    topologyKey: zone",
            ),
            "web: b=2 c=2",
        ),
        (
            "topology spread over zones with maxSkew 1",
            "a zone=z1\nb zone=z1\nc zone=z1\nd zone=z2\ne zone=z3",
            svc(
                "web",
                6,
                "",
                "topologySpreadConstraints:\n- {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}",
            ),
            // 2 per zone; z1's two land on different nodes (which two: the seed's tie-break).
            "web: b=1 c=1 d=2 e=2",
        ),
        (
            "topology spread blocks when a zone is full",
            "a zone=z1 max=1\nb zone=z2",
            svc(
                "web",
                4,
                "",
                "topologySpreadConstraints:\n- {maxSkew: 1, topologyKey: zone}",
            ),
            "web: a=1 b=2 | pending 1: 0/2 nodes are available: 1 have no room for more replicas, 1 would exceed max skew 1 over zone",
        ),
        (
            "ScheduleAnyway prefers the emptier zone but places anyway",
            "a zone=z1 existing=web:3\nb zone=z2 max=1",
            svc(
                "web",
                3,
                "",
                "topologySpreadConstraints:\n- {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway}",
            ),
            "web: a=2 b=1",
        ),
        (
            "binpack fills the fullest node first",
            "a cpu=3000\nb cpu=2000\nc cpu=2000 used=1000",
            svc("web", 3, res, "strategy: binpack"),
            "web: b=1 c=2",
        ),
        (
            "maxPerNode",
            "a\nb",
            svc("web", 5, "", "maxPerNode: 2"),
            "web: a=2 b=2 | pending 1: 0/2 nodes are available: 2 already run max-per-node replicas of the service",
        ),
        (
            "host ports",
            "a\nb",
            svc("web", 3, "ports: [{name: http, port: 8080}]", ""),
            "web: a=1 b=1 | pending 1: 0/2 nodes are available: 2 have the host port in use",
        ),
        (
            "no nodes",
            "",
            svc("web", 1, "", ""),
            "web: | pending 1: 0/0 nodes are available: no nodes registered",
        ),
    ];
    let mut failures = Vec::new();
    for (what, nodes, services, expected) in &table {
        if let Err(e) = check(nodes, services, expected) {
            failures.push(format!("{what}:\n{e}"));
        }
    }
    // Two services: the second sees the first's placements within the same pass.
    check(
        "a\nb\nc",
        &docs(&[
            svc("db", 2, "", ""),
            svc(
                "web",
                2,
                "",
                "antiAffinity:\n  required:\n  - labelSelector: {matchLabels: {orch/service: db}}\n    topologyKey: orch.dev/node",
            ),
        ]),
        "db: b=1 c=1\nweb: a=2",
    )
    .unwrap_or_else(|e| failures.push(format!("two services:\n{e}")));
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// Five one-replica services that request no cpu or memory, on two nodes that report both
/// (the voting app's shape): they spread over the nodes instead of all landing on the node the
/// pass ranked first (their requests add nothing, so only the replica slots tell nodes apart).
#[test]
fn services_requesting_nothing_spread_over_nodes_that_report_capacity() {
    let nodes = "a cpu=2000 mem=4096 max=110\nb cpu=2000 mem=4096 max=110";
    let services: Vec<String> = ["db", "redis", "vote", "result", "worker"]
        .iter()
        .map(|n| svc(n, 1, "", ""))
        .collect();
    for seed in 0..20 {
        let snapshot = cluster(nodes);
        let pending = workload(&docs(&services));
        let plan = DefaultScheduler.schedule(&snapshot, &pending, seed);
        assert_eq!(
            plan.bindings.len(),
            5,
            "seed {seed}: {:?}",
            plan.unschedulable
        );
        let on_a = plan.bindings.iter().filter(|(_, n)| n == "a").count();
        assert!(
            (2..=3).contains(&on_a),
            "seed {seed}: {on_a} of 5 on a: {:?}",
            plan.bindings
        );
    }
}
