//! Convergence harness: time from apply to every replica ready.
//!
//! - 10,000 replicas (100 services × 100) on the fake runtime across 100 fake nodes, over the
//!   in-memory store and over the embedded (durable) store;
//!
//! `cargo run --release -p orch-benches --bin converge`

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_core::fake::FakeRuntime;
use orch_core::model::object::{Object, Phase};
use orch_core::store::Store;
use orch_core::{AgentConfig, Engine};

/// The allocator orchd uses, so figures are those of the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn services(count: usize, replicas: usize, command: &str) -> Vec<Object> {
    let mut y = String::new();
    for i in 0..count {
        y.push_str(&format!("---\napiVersion: orch/v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [{command}]\n    stopGracePeriod: 1s\n"));
    }
    orch_core::model::manifest::parse("bench", &y).expect("valid manifests")
}

fn ready_count(e: &Engine) -> usize {
    e.cache()
        .replicas()
        .iter()
        .filter(|r| r.status.phase == Phase::Ready)
        .count()
}

async fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not done after {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t.elapsed()
}

async fn fake_run(store: Arc<dyn Store>, label: &str) -> anyhow::Result<()> {
    let (nodes, svc, per) = (100, 100, 100);
    let mut e = Engine::builder(store.clone(), Arc::new(orch_sched::DefaultScheduler)).start();
    for i in 0..nodes {
        e.add_agent(
            Arc::new(FakeRuntime::default()),
            AgentConfig::new(&format!("node-{i}")),
        );
    }
    wait("nodes", Duration::from_secs(30), || {
        e.cache().nodes().len() == nodes
    })
    .await;
    let objs = services(svc, per, "server");
    let t = Instant::now();
    orch_core::engine::api::apply(&*store, objs, false).await?;
    wait("converge", Duration::from_secs(120), || {
        ready_count(&e) == svc * per
    })
    .await;
    let took = t.elapsed();
    println!(
        "| {} replicas, fake runtime, {nodes} nodes, {label} store | {:.3} s | {:.0} replicas/s |",
        svc * per,
        took.as_secs_f64(),
        (svc * per) as f64 / took.as_secs_f64()
    );
    e.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("| scenario | time | rate |\n|---|---|---|");
    fake_run(Arc::new(orch_core::memstore::MemStore::new()), "in-memory").await?;
    let dir = tempfile::tempdir()?;
    fake_run(
        Arc::new(orch_store::EmbeddedStore::open(
            &dir.path().join("state.redb"),
        )?),
        "embedded",
    )
    .await?;
    Ok(())
}
