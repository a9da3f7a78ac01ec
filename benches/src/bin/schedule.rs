//! Scheduling through the engine: time from `apply` until every replica is bound to a node
//! and that binding is in the store (the engine's cache reflects the store), on fake nodes of
//! the Kubernetes scheduler benchmark's shape (scheduler_perf: 4 CPU / 32 GiB / 110 pods per
//! node, pods of 100m CPU / 500 MiB). Nodes are registered objects with no agent, so nothing
//! runs: this measures placement and its writes only.
//!
//! `cargo run --release -p orch-benches --bin schedule [-- NODES REPLICAS [memory|embedded]]`
//! (default: 5,000 nodes, 10,000 replicas, both stores).

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_core::engine::{Engine, EngineConfig};
use orch_core::object::{Metadata, Node, NodeSpec, NodeStatus, Object, Resources};
use orch_core::quantity::{Cpu, Memory, Timestamp};
use orch_core::store::{create_op, txn_chunked, Store};

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

fn service(name: &str, replicas: usize, extra: &str) -> Object {
    let y = format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [server]\n    resources: {{cpu: 100m, memory: 500Mi}}\n{extra}"
    );
    orch_core::manifest::parse("bench", &y)
        .expect("valid manifest")
        .remove(0)
}

/// Applies the service and returns how long until all its replicas are bound.
async fn run(
    store: Arc<dyn Store>,
    nodes: usize,
    replicas: usize,
    extra: &str,
) -> anyhow::Result<Duration> {
    register_nodes(&*store, nodes).await?;
    let config = EngineConfig {
        // Nobody heartbeats these nodes; they must not be judged during the run.
        node_grace: Duration::from_secs(3600),
        node_lost_timeout: Duration::from_secs(7200),
        ..EngineConfig::default()
    };
    let e = Engine::builder(store.clone(), Arc::new(orch_sched::DefaultScheduler))
        .config(config)
        .start();
    let t = Instant::now();
    while e.cache().nodes().len() < nodes {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "nodes not in the cache"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    orch_core::api::apply(&*store, vec![service("bench", replicas, extra)], false).await?;
    loop {
        let reps = e.cache().replicas_of_service("default", "bench");
        if reps.len() == replicas && reps.iter().all(|r| r.spec.node.is_some()) {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(300),
            "{} of {replicas} replicas bound after 300 s",
            reps.iter().filter(|r| r.spec.node.is_some()).count()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t.elapsed();
    e.shutdown().await;
    Ok(took)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nodes: usize = args.first().map_or(Ok(5_000), |a| a.parse())?;
    let replicas: usize = args.get(1).map_or(Ok(10_000), |a| a.parse())?;
    let which = args.get(2).map(String::as_str).unwrap_or("both");
    println!("| scenario | apply → all bound and stored | replicas/s |\n|---|---|---|");
    let report = |label: &str, took: Duration| {
        println!(
            "| {nodes} nodes, {replicas} replicas, basic, {label} | {:.3} s | {:.0} |",
            took.as_secs_f64(),
            replicas as f64 / took.as_secs_f64()
        )
    };
    if which != "embedded" {
        let took = run(
            Arc::new(orch_core::memstore::MemStore::new()),
            nodes,
            replicas,
            "",
        )
        .await?;
        report("in-memory store", took);
    }
    if which != "memory" {
        let dir = tempfile::tempdir()?;
        let store = orch_store::EmbeddedStore::open(&dir.path().join("state.redb"))?;
        let took = run(Arc::new(store), nodes, replicas, "").await?;
        report("embedded store (durable)", took);
    }
    Ok(())
}
