//! Placement throughput of the default scheduler alone, in the shapes of the Kubernetes
//! scheduler_perf benchmark: nodes of 4 CPU / 32 GiB / 110 replicas, replicas of 100m / 500 MiB.
//!
//! - `basic/5000n_10000r`: one service, no rules.
//! - `anti_affinity/5000n_10000r`: 10 services of 1,000 replicas, each with required
//!   anti-affinity to its own service over `orch.dev/node`.
//! - `spread_zones/5000n_10000r`: 10 services of 1,000 replicas spread over 10 zones
//!   (`maxSkew: 1`, `DoNotSchedule`).
//! - `c1m/10000n_1000000r`: 10,000 nodes of 16 CPU / 64 GiB / 110 replicas (4 CPU nodes hold
//!   only 40 replicas of 100m), 1,000,000 replicas of 10 services.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use orch_core::model::object::{
    AffinityTerm, LabelSelector, Labels, Placement, ReplicaAffinity, TopologySpreadConstraint,
    WhenUnsatisfiable, NODE_TOPOLOGY_KEY, SERVICE_LABEL,
};
use orch_core::scheduler::{ClusterSnapshot, NodeInfo, PendingReplica, Scheduler};
use orch_sched::DefaultScheduler;

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

fn cluster(nodes: usize, cpu: u64, memory: u64) -> ClusterSnapshot {
    ClusterSnapshot {
        nodes: (0..nodes)
            .map(|i| NodeInfo {
                name: format!("node-{i:05}"),
                labels: [("zone".to_string(), format!("zone-{}", i % 10))].into(),
                cpu_capacity: cpu,
                memory_capacity: memory,
                max_replicas: 110,
                runtimes: vec!["process".into()],
                schedulable: true,
                ..NodeInfo::default()
            })
            .collect(),
    }
}

fn replicas(
    services: usize,
    per_service: usize,
    placement: impl Fn(&str) -> Placement,
) -> Vec<PendingReplica> {
    let mut out = Vec::with_capacity(services * per_service);
    for s in 0..services {
        let name = format!("svc-{s}");
        let labels: Labels = [(SERVICE_LABEL.to_string(), name.clone())].into();
        let placement = placement(&name);
        for r in 0..per_service {
            out.push(PendingReplica {
                key: format!("/replicas/default/{name}-{r}"),
                service: format!("default/{name}"),
                cpu: 100,
                memory: 500 * MI,
                ports: Vec::new(),
                runtime: "process".into(),
                placement: std::sync::Arc::new(placement.clone()),
                labels: labels.clone(),
                volumes: Vec::new(),
            });
        }
    }
    out
}

fn own_service(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: [(SERVICE_LABEL.to_string(), name.to_string())].into(),
        ..LabelSelector::default()
    }
}

fn anti_affinity(name: &str) -> Placement {
    Placement {
        anti_affinity: ReplicaAffinity {
            required: vec![AffinityTerm {
                label_selector: own_service(name),
                topology_key: NODE_TOPOLOGY_KEY.into(),
            }],
            preferred: Vec::new(),
        },
        ..Placement::default()
    }
}

fn zone_spread(_: &str) -> Placement {
    Placement {
        topology_spread_constraints: vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "zone".into(),
            when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
        }],
        ..Placement::default()
    }
}

fn run(
    c: &mut Criterion,
    group: &str,
    snap: &ClusterSnapshot,
    pending: &[PendingReplica],
    samples: usize,
) {
    let mut g = c.benchmark_group(group);
    g.sample_size(samples);
    g.throughput(Throughput::Elements(pending.len() as u64));
    g.bench_function(format!("{}n_{}r", snap.nodes.len(), pending.len()), |b| {
        b.iter_batched(
            || (),
            |_| {
                let plan = DefaultScheduler.schedule(snap, pending, 1);
                assert_eq!(
                    plan.bindings.len(),
                    pending.len(),
                    "{:?}",
                    plan.unschedulable.first()
                );
                plan
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn placement(c: &mut Criterion) {
    let snap = cluster(5000, 4000, 32 * GI);
    run(
        c,
        "basic",
        &snap,
        &replicas(1, 10_000, |_| Placement::default()),
        20,
    );
    run(
        c,
        "anti_affinity",
        &snap,
        &replicas(10, 1000, anti_affinity),
        20,
    );
    run(
        c,
        "spread_zones",
        &snap,
        &replicas(10, 1000, zone_spread),
        20,
    );
}

fn c1m(c: &mut Criterion) {
    let snap = cluster(10_000, 16_000, 64 * GI);
    run(
        c,
        "c1m",
        &snap,
        &replicas(10, 100_000, |_| Placement::default()),
        10,
    );
}

criterion_group!(benches, placement, c1m);
criterion_main!(benches);
