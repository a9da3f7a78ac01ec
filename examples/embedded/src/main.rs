//! Embedding orch: run the engine inside your own tokio runtime with the in-memory store and
//! the process runtime, apply a service from code, and watch its replicas come up.
//!
//! `cargo run -p orch-example-embedded`

use std::sync::Arc;
use std::time::Duration;

use orch_core::memstore::MemStore;
use orch_core::model::object::{Metadata, Object, Phase, Service, ServiceSpec, Template};
use orch_core::{AgentConfig, Engine};
use orch_runtime::{ProcessConfig, ProcessRuntime};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let state = std::env::temp_dir().join(format!("orch-embedded-{}", std::process::id()));
    let store = Arc::new(MemStore::new());
    let runtime = Arc::new(ProcessRuntime::new(ProcessConfig::new(state.join("runtime"))).await?);

    // The engine: controllers + one local node agent.
    let mut engine = Engine::builder(store.clone(), Arc::new(orch_sched::DefaultScheduler)).start();
    engine.add_agent(runtime, AgentConfig::new("local"));

    // A service built in code: two replicas of a shell loop.
    let service = Service {
        metadata: Metadata {
            name: "ticker".into(),
            namespace: "default".into(),
            ..Metadata::default()
        },
        spec: ServiceSpec {
            replicas: 2,
            template: Template {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "while true; do echo tick from $ORCH_REPLICA; sleep 1; done".into(),
                ],
                ..Template::default()
            },
            placement: Default::default(),
            update: Default::default(),
            mode: Default::default(),
            publish: Vec::new(),
        },
        status: Default::default(),
    };
    orch_core::engine::api::apply(&*store, vec![Object::from(service)], false).await?;

    // Watch the replicas until both are ready.
    loop {
        let replicas = engine.cache().replicas_of_service("default", "ticker");
        for r in &replicas {
            println!(
                "{:<14} {:<8} {}",
                r.metadata.name,
                r.status.phase.as_str(),
                r.status.runtime_id
            );
        }
        if replicas.len() == 2 && replicas.iter().all(|r| r.status.phase == Phase::Ready) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("both replicas ready; deleting the service");

    // Deleting the service stops its processes; then shut the engine down.
    orch_core::engine::api::delete(&*store, orch_core::Kind::Service, "default", "ticker").await?;
    while !engine.cache().replicas().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}
