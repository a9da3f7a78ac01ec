//! Embedding orch: run the engine inside your own tokio runtime with the in-memory store and
//! the process runtime, apply a service from code, and watch its replicas come up.
//!
//! `cargo run -p orch-example-embedded`

use std::sync::Arc;
use std::time::Duration;

use orch_core::memstore::MemStore;
use orch_core::model::object::{Object, Phase, Service, ServiceSpec, Template};
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
    let ticker = [
        "sh",
        "-c",
        "while true; do echo tick from $ORCH_REPLICA; sleep 1; done",
    ];
    let service = Service::new(
        "ticker",
        ServiceSpec::new(2, Template::with_command(ticker)),
    );
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
