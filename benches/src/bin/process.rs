//! Real processes: time from apply to 100 replicas ready on the process runtime, and from
//! delete to every process gone; and crash-to-replacement for a replica killed with SIGKILL.
//!
//! `cargo run --release -p orch-benches --bin process`

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_core::model::object::{Kind, Phase};
use orch_core::runtime::Runtime;
use orch_core::store::Store;
use orch_core::{AgentConfig, Engine};

/// The allocator orchd uses, so figures are those of the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not done after {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t.elapsed()
}

fn ready(e: &Engine) -> usize {
    e.cache()
        .replicas()
        .iter()
        .filter(|r| r.status.phase == Phase::Ready)
        .count()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(orch_core::memstore::MemStore::new());
    let rt: Arc<dyn Runtime> = Arc::new(
        orch_runtime::ProcessRuntime::new(orch_runtime::ProcessConfig::new(dir.path().join("rt")))
            .await?,
    );
    let mut e = Engine::builder(store.clone(), Arc::new(orch_sched::DefaultScheduler)).start();
    e.add_agent(rt.clone(), AgentConfig::new("local"));
    wait("node", Duration::from_secs(10), || {
        e.cache().nodes().len() == 1
    })
    .await;
    let n = 100;
    let y = format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: sleepers}}\nspec:\n  replicas: {n}\n  template:\n    command: [sleep, '3600']\n    stopGracePeriod: 1s\n");
    let objs = orch_core::model::manifest::parse("bench", &y).expect("valid");
    println!("| scenario | figure |\n|---|---|");
    let t = Instant::now();
    orch_core::engine::api::apply(&*store, objs, false).await?;
    wait("converge", Duration::from_secs(60), || ready(&e) == n).await;
    println!(
        "| apply → {n} real processes ready | {:.3} s |",
        t.elapsed().as_secs_f64()
    );

    // Crash to replacement: SIGKILL one process, time until its replica runs a new one.
    // Each sample kills a replica that has not crashed before, so no restart backoff applies
    // (the first restart is immediate by design).
    // Running: the replacement process runs (the agent reports a new runtime id). Ready: it
    // is an endpoint again, which after a restart takes 0.5 s of uptime (a replica without a
    // readiness probe that just restarted may be crash looping; issue 17).
    let (mut samples, mut ready_samples) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let victim = e
            .cache()
            .replicas()
            .into_iter()
            .find(|r| r.status.phase == Phase::Ready && r.status.restarts == 0)
            .expect("a ready replica");
        let old = victim.status.runtime_id.clone();
        let pid: i32 = old.trim_start_matches("pid ").parse()?;
        let key = Kind::Replica.key(&victim.metadata.namespace, &victim.metadata.name);
        let t = Instant::now();
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        wait("replaced", Duration::from_secs(10), || {
            e.cache().replica(&key).is_some_and(|r| {
                matches!(r.status.phase, Phase::Running | Phase::Ready)
                    && r.status.runtime_id != old
            })
        })
        .await;
        samples.push(t.elapsed());
        wait("ready again", Duration::from_secs(10), || {
            e.cache()
                .replica(&key)
                .is_some_and(|r| r.status.phase == Phase::Ready && r.status.runtime_id != old)
        })
        .await;
        ready_samples.push(t.elapsed());
    }
    for (what, samples) in [("running", &mut samples), ("Ready", &mut ready_samples)] {
        samples.sort();
        println!(
            "| SIGKILL → replacement process {what} (5 samples, median / max) | {:.1} ms / {:.1} ms |",
            samples[2].as_secs_f64() * 1e3,
            samples[4].as_secs_f64() * 1e3
        );
    }

    let t = Instant::now();
    orch_core::engine::api::delete(&*store, Kind::Service, "default", "sleepers").await?;
    loop {
        if e.cache().replicas().is_empty() && rt.list().await?.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "| delete → all {n} processes stopped and removed | {:.3} s |",
        t.elapsed().as_secs_f64()
    );
    e.shutdown().await;
    Ok(())
}
