//! Scheduling through the engine: time from `apply` until every replica is bound to a node
//! and that binding is in the store (the engine's cache reflects the store), on fake nodes of
//! the Kubernetes scheduler benchmark's shape (scheduler_perf: 4 CPU / 32 GiB / 110 pods per
//! node, pods of 100m CPU / 500 MiB), spread over 10 zones (node label `zone`). Nodes are
//! registered objects with no agent, so nothing runs: this measures placement and its writes.
//!
//! ```text
//! cargo run --release -p orch-benches --bin schedule [-- SCENARIO [STORE]]
//!   SCENARIO: basic (5,000 nodes, 10,000 replicas), anti (5,000 nodes, 5,000 replicas with
//!             required anti-affinity to each other per node), spread (5,000 nodes, 10,000
//!             replicas, topology spread over 10 zones, maxSkew 1), c1m (10,000 nodes,
//!             1,000,000 replicas of 10m / 64 MiB in 100 services), ha (1,000 nodes, 100,000
//!             replicas of 10m / 64 MiB in 10 services), all (basic, anti, spread; the default)
//!   STORE:    memory, embedded or both (the default); etcd3 (build with --features etcd): three
//!             engines as three managers, each with its etcd store over a three-member etcd
//!             cluster of its own (LocalEtcdCluster) and an etcd Election — the one that leads
//!             schedules, all three caches follow every write
//! ```
//!
//! After an embedded run it also measures a restart on the same file: reopening the store, and
//! a fresh engine cache listing and decoding every object (what orchd does when it starts).

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_core::model::object::{Metadata, Node, NodeSpec, NodeStatus, Object, Resources};
use orch_core::model::quantity::{Cpu, Memory, Timestamp};
use orch_core::store::{create_op, txn_chunked, Store};
use orch_core::{Engine, EngineConfig};

/// The allocator orchd uses, so figures are those of the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One measured shape.
struct Scenario {
    name: &'static str,
    nodes: usize,
    replicas: usize,
    /// Replicas per service (the last service takes the rest).
    per_service: usize,
    /// Extra `spec` lines for every service.
    placement: &'static str,
    /// Per-replica resources.
    resources: &'static str,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "basic",
        nodes: 5_000,
        replicas: 10_000,
        per_service: 10_000,
        placement: "",
        resources: POD,
    },
    Scenario {
        name: "anti",
        nodes: 5_000,
        replicas: 5_000,
        per_service: 5_000,
        placement: "  placement:\n    antiAffinity:\n      required: [{labelSelector: {matchLabels: {app: bench}}, topologyKey: orch.dev/node}]\n",
        resources: POD,
    },
    Scenario {
        name: "spread",
        nodes: 5_000,
        replicas: 10_000,
        per_service: 10_000,
        placement: "  placement:\n    topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}]\n",
        resources: POD,
    },
    Scenario {
        name: "c1m",
        nodes: 10_000,
        replicas: 1_000_000,
        per_service: 10_000,
        placement: "",
        // 100 per node must fit (the pod shape above fits only 40 per node by cpu).
        resources: "{cpu: 10m, memory: 64Mi}",
    },
    Scenario {
        name: "ha",
        nodes: 1_000,
        replicas: 100_000,
        per_service: 10_000,
        placement: "",
        resources: "{cpu: 10m, memory: 64Mi}",
    },
];

/// The scheduler_perf pod.
const POD: &str = "{cpu: 100m, memory: 500Mi}";

/// Registers `n` fake nodes of the scheduler_perf shape, spread over 10 zones.
async fn register_nodes(store: &dyn Store, n: usize) -> anyhow::Result<()> {
    let ops = (0..n)
        .map(|i| {
            create_op(&Object::Node(Node {
                metadata: Metadata {
                    name: format!("node-{i:05}"),
                    uid: format!("uid-{i}"),
                    labels: [("zone".to_string(), format!("zone-{}", i % 10))].into(),
                    ..Metadata::default()
                },
                spec: NodeSpec::default(),
                status: NodeStatus {
                    capacity: Resources {
                        cpu: Some(Cpu(4_000)),
                        memory: Some(Memory(32 << 30)),
                    },
                    max_replicas: 110,
                    runtimes: vec!["process".into()],
                    heartbeat: Some(Timestamp::now()),
                    ..NodeStatus::default()
                },
            }))
        })
        .collect();
    txn_chunked(store, ops, 5_000).await?;
    Ok(())
}

fn services(s: &Scenario) -> Vec<Object> {
    let mut yaml = String::new();
    let mut left = s.replicas;
    let mut i = 0;
    while left > 0 {
        let n = left.min(s.per_service);
        yaml.push_str(&format!(
            "---\napiVersion: orch/v1\nkind: Service\nmetadata: {{name: bench-{i}}}\nspec:\n  replicas: {n}\n  template:\n    command: [server]\n    labels: {{app: bench}}\n    resources: {}\n{}",
            s.resources, s.placement
        ));
        left -= n;
        i += 1;
    }
    orch_core::model::manifest::parse("bench", &yaml).expect("valid manifests")
}

/// (replicas, bound) in the engine's cache, from its indexes.
fn bound(e: &Engine) -> (usize, usize) {
    e.cache().replica_counts()
}

fn bench_config() -> EngineConfig {
    EngineConfig {
        // Nobody heartbeats these nodes; they must not be judged during the run.
        node_grace: Duration::from_secs(3600),
        node_lost_timeout: Duration::from_secs(7200),
        ..EngineConfig::default()
    }
}

/// Applies the scenario's services; returns how long until all replicas are bound.
async fn run(store: Arc<dyn Store>, s: &Scenario) -> anyhow::Result<Duration> {
    register_nodes(&*store, s.nodes).await?;
    let e = Engine::builder(store.clone(), Arc::new(orch_sched::DefaultScheduler))
        .config(bench_config())
        .start();
    let took = converge(&e, &*store, s).await?;
    e.shutdown().await;
    Ok(took)
}

/// Three managers on a three-member etcd: each engine has its own store (over every member)
/// and its own etcd election; applies go through the first one's store, and the run ends when
/// the first engine's cache shows every replica bound (whichever engine leads).
#[cfg(feature = "etcd")]
async fn run_etcd3(s: &Scenario) -> anyhow::Result<Duration> {
    use orch_store::etcd::{Election, ElectionConfig, EtcdStore};
    let cluster = orch_store::local_etcd::LocalEtcdCluster::start(3)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut engines = Vec::new();
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for i in 0..3 {
        let store = EtcdStore::connect(&cluster.endpoints(), "/orch").await?;
        let election = Election::new(&store, &format!("m{i}"), ElectionConfig::default())?;
        let store: Arc<dyn Store> = Arc::new(store);
        let e = Engine::builder(store.clone(), Arc::new(orch_sched::DefaultScheduler))
            .config(bench_config())
            .elector(Arc::new(election))
            .start();
        engines.push(e);
        stores.push(store);
    }
    register_nodes(&*stores[0], s.nodes).await?;
    let took = converge(&engines[0], &*stores[0], s).await?;
    for e in engines {
        e.shutdown().await;
    }
    Ok(took)
}

#[cfg(not(feature = "etcd"))]
async fn run_etcd3(_: &Scenario) -> anyhow::Result<Duration> {
    anyhow::bail!("STORE etcd3 needs the etcd feature: cargo build --release -p orch-benches --features etcd --bin schedule")
}

/// Waits for the nodes in `e`'s cache, applies the services, and returns how long until
/// every replica is bound.
async fn converge(e: &Engine, store: &dyn Store, s: &Scenario) -> anyhow::Result<Duration> {
    let t = Instant::now();
    while e.cache().nodes().len() < s.nodes {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "nodes not in the cache"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let objects = services(s);
    let t = Instant::now();
    orch_core::engine::api::apply(store, objects, false).await?;
    let poll = Duration::from_millis(if s.replicas > 100_000 { 200 } else { 2 });
    loop {
        let (all, done) = bound(e);
        if all == s.replicas && done == s.replicas {
            break;
        }
        if std::env::var_os("ORCH_BENCH_PROGRESS").is_some() {
            eprintln!(
                "{:?}: {all} replicas, {done} bound, resident {:.0} MiB",
                t.elapsed(),
                status_mib("VmRSS:")
            );
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "{done} of {} replicas bound after 600 s",
            s.replicas
        );
        tokio::time::sleep(poll).await;
    }
    let took = t.elapsed();
    if std::env::var_os("ORCH_BENCH_PROGRESS").is_some() {
        eprintln!(
            "converged: resident {:.0} MiB, peak {:.0} MiB",
            status_mib("VmRSS:"),
            peak_mib()
        );
    }
    Ok(took)
}

/// A memory figure of this process from /proc/self/status (`VmHWM`: peak, `VmRSS`: now), MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Peak resident memory of this process so far, in MiB.
fn peak_mib() -> f64 {
    status_mib("VmHWM:")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    let stores = args.get(1).map(String::as_str).unwrap_or("both");
    let chosen: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| which == s.name || (which == "all" && s.name != "c1m"))
        .collect();
    anyhow::ensure!(
        !chosen.is_empty(),
        "unknown scenario {which:?}: allowed basic, anti, spread, c1m, ha, all"
    );
    anyhow::ensure!(
        ["memory", "embedded", "both", "etcd3"].contains(&stores),
        "unknown store {stores:?}: allowed memory, embedded, both, etcd3"
    );
    println!("| scenario | nodes | replicas | store | apply → all bound and stored | replicas/s | peak RSS so far |\n|---|---|---|---|---|---|---|");
    for s in chosen {
        let mut runs: Vec<(&str, Arc<dyn Store>)> = Vec::new();
        let dir = tempfile::tempdir()?;
        if stores == "etcd3" {
            let took = run_etcd3(s).await?;
            println!(
                "| {} | {} | {} | etcd, 3 members, 3 managers | {:.3} s | {:.0} | {:.0} MiB |",
                s.name,
                s.nodes,
                s.replicas,
                took.as_secs_f64(),
                s.replicas as f64 / took.as_secs_f64(),
                peak_mib()
            );
            continue;
        }
        if stores != "embedded" {
            runs.push(("in-memory", Arc::new(orch_core::memstore::MemStore::new())));
        }
        if stores != "memory" {
            let store = orch_store::EmbeddedStore::open(&dir.path().join("state.redb"))?;
            runs.push(("embedded (durable)", Arc::new(store)));
        }
        for (label, store) in runs {
            let took = run(store, s).await?;
            println!(
                "| {} | {} | {} | {label} | {:.3} s | {:.0} | {:.0} MiB |",
                s.name,
                s.nodes,
                s.replicas,
                took.as_secs_f64(),
                s.replicas as f64 / took.as_secs_f64(),
                peak_mib()
            );
        }
        if stores != "memory" {
            let (open, synced) = restart(&dir.path().join("state.redb"), s.replicas).await?;
            println!(
                "restart of the embedded store: opened in {:.3} s; a fresh cache held all {} replicas {:.3} s later",
                open.as_secs_f64(),
                s.replicas,
                synced.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Reopens the store file a run left behind and fills a fresh engine cache from it: how long
/// the open takes, then how long until the cache holds every replica.
async fn restart(path: &std::path::Path, replicas: usize) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    // The last run's tasks may still be letting go of the file; only the open that succeeds
    // is timed.
    let (store, open) = loop {
        let (path, attempt) = (path.to_path_buf(), Instant::now());
        match tokio::task::spawn_blocking(move || orch_store::EmbeddedStore::open(&path)).await? {
            Ok(store) => break (store, attempt.elapsed()),
            Err(_) if t.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let t = Instant::now();
    let cache = orch_core::engine::cache::Cache::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cache.clone().run(Arc::new(store), cancel.clone()));
    while cache.replica_counts().0 < replicas {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(300),
            "the cache did not fill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let synced = t.elapsed();
    cancel.cancel();
    Ok((open, synced))
}
