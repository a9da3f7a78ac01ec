//! Footprint harness: resident memory of a real `orchd server` process (embedded store, fake
//! runtime) idle with 100 services / 1,000 replicas. Needs the workspace's binaries built in
//! the same profile (`cargo build --release --bins`).
//!
//! `cargo run --release -p orch-benches --bin footprint`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orch_api::protocol::ManifestText;
use orch_api::Client;
use orch_core::model::object::{Kind, Object, Phase};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let orchd = exe_dir.join("orchd");
    anyhow::ensure!(
        orchd.exists(),
        "{} not found: run `cargo build --release --bins` first",
        orchd.display()
    );
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("orchd.sock");
    let mut child = Command::new(&orchd)
        .args(["server", "--runtime", "fake", "--node", "bench"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()?;
    let client = Client::new(&socket);
    let t = Instant::now();
    while client.info().await.is_err() {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(20), "orchd did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_empty = rss_kib(child.id());
    let mut y = String::new();
    for i in 0..100 {
        y.push_str(&format!("---\napiVersion: orch/v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n  replicas: 10\n  template:\n    command: [server]\n"));
    }
    let manifests = vec![ManifestText {
        source: "bench".into(),
        text: y,
    }];
    client.apply(manifests, false, None).await?;
    loop {
        let objects = client.list(Kind::Replica, None).await?.objects;
        let ready = objects
            .iter()
            .filter(|o| matches!(o, Object::Replica(r) if r.status.phase == Phase::Ready))
            .count();
        if ready == 1000 {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "only {ready}/1000 ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_idle = rss_kib(child.id());
    println!(
        "| orchd server idle, no objects | {:.1} MiB |",
        rss_empty as f64 / 1024.0
    );
    println!("| orchd server idle, 100 services / 1,000 replicas (fake runtime, embedded store) | {:.1} MiB |", rss_idle as f64 / 1024.0);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    Ok(())
}
