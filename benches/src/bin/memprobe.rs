//! Where the memory of many replicas goes: bytes per replica decoded, in the in-memory store
//! and in the engine's cache (a diagnosis aid for the c1m memory target, not a benchmark).
//!
//! `cargo run --release -p orch-benches --bin memprobe [-- REPLICAS]`

use std::sync::Arc;
use std::time::Duration;

use orch_core::engine::cache::Cache;
use orch_core::engine::replication::new_replica;
use orch_core::model::object::{Kind, Object};
use orch_core::store::{create_op, txn_chunked, Store};

/// The allocator orchd uses, so figures are those of the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident memory now, in bytes.
fn rss() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        * 1024.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(200_000), |a| a.parse())?;
    let yaml = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: bench}\nspec:\n  replicas: 10\n  template:\n    command: [server]\n    labels: {app: bench}\n    resources: {cpu: 10m, memory: 64Mi}\n";
    let Object::Service(svc) = orch_core::model::manifest::parse("probe", yaml)?.remove(0) else {
        anyhow::bail!("not a service")
    };
    let one = Object::Replica(new_replica(&svc, &[])).encode();
    println!("one replica: {} bytes of JSON", one.len());
    let per = |before: f64| (rss() - before) / n as f64;

    let before = rss();
    let objects: Vec<Object> = (0..n)
        .map(|i| {
            let mut r = new_replica(&svc, &[]);
            r.metadata.name = format!("bench-{i}");
            Object::Replica(r)
        })
        .collect();
    println!("decoded Replica: {:.0} B each", per(before));

    let before = rss();
    let store = Arc::new(orch_core::memstore::MemStore::new());
    txn_chunked(&*store, objects.iter().map(create_op).collect(), 5_000).await?;
    println!(
        "in MemStore (with its watch history): {:.0} B each",
        per(before)
    );

    let before = rss();
    let cache = Cache::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let dyn_store: Arc<dyn Store> = store.clone();
    tokio::spawn(cache.clone().run(dyn_store, cancel.clone()));
    while cache.list(Kind::Replica).len() < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("in the engine cache: {:.0} B each", per(before));

    // Every replica updated once (as binding them does): what the replacement leaves behind.
    let before = rss();
    let (kvs, _) = store.list("/replicas/").await?;
    let updates = kvs
        .iter()
        .map(|kv| {
            let Ok(Object::Replica(mut r)) = Object::decode(&kv.value, kv.mod_revision) else {
                unreachable!("stored replicas decode")
            };
            r.spec.node = Some("node-1".into());
            orch_core::store::update_op(&Object::Replica(r))
        })
        .collect();
    drop(kvs);
    let rev = txn_chunked(&*store, updates, 5_000).await?.unwrap_or(0);
    cache.wait_for(rev).await;
    println!("after updating each once: {:.0} B more each", per(before));
    cancel.cancel();
    Ok(())
}
