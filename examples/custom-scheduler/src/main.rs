//! Runs orch's engine with a customised scheduler through the library API: four fake nodes
//! (one in maintenance, two with SSDs), one service of four replicas; prints where they went.
//! Then the same with a whole replacement scheduler.
//!
//! `cargo run --manifest-path examples/custom-scheduler/Cargo.toml`

use std::sync::Arc;
use std::time::Duration;

use custom_scheduler::{AvoidMaintenance, FirstFit, PreferLabel};
use orch_core::engine::{AgentConfig, Engine};
use orch_core::fake::FakeRuntime;
use orch_core::memstore::MemStore;
use orch_core::scheduler::Scheduler;
use orch_sched::Framework;

/// Starts an engine with `scheduler` and four nodes, applies four replicas, returns
/// `(replica, node)` once all are placed.
pub async fn place_with(scheduler: Arc<dyn Scheduler>) -> Vec<(String, String)> {
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
    let yaml = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  replicas: 4\n  template: {command: [server]}\n";
    let objects = orch_core::manifest::parse("web.yaml", yaml).expect("valid manifest");
    orch_core::api::apply(&*store, objects, false)
        .await
        .expect("apply");
    let placed = loop {
        let replicas = engine.cache().replicas_of_service("default", "web");
        let placed: Vec<(String, String)> = replicas
            .iter()
            .filter_map(|r| Some((r.metadata.name.clone(), r.spec.node.clone()?)))
            .collect();
        if placed.len() == 4 {
            break placed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    engine.shutdown().await;
    placed
}

#[tokio::main]
async fn main() {
    // The default plugins plus ours: no replica in maintenance, SSD nodes preferred.
    let custom = Framework::default_plugins()
        .named("custom")
        .with_filter(AvoidMaintenance)
        .with_score(
            PreferLabel {
                key: "disk".into(),
                value: "ssd".into(),
            },
            10,
        );
    println!("scheduler {:?}", custom.name());
    for (replica, node) in place_with(Arc::new(custom)).await {
        println!("  {replica} -> {node}");
    }
    println!("scheduler \"first-fit\" (a whole replacement)");
    for (replica, node) in place_with(Arc::new(FirstFit)).await {
        println!("  {replica} -> {node}");
    }
}
