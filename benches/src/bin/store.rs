//! Store harness: durable single writes/s, 16 concurrent writers, batched objects/s, reads/s
//! and watch delivery latency, beside the disk's own fdatasync rate measured in the same run.
//!
//! `cargo run --release -p orch-benches --bin store --features etcd` (the etcd column needs the
//! `etcd` binary and `protoc`; without the feature only orch's stores are measured).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use orch_core::store::{Op, Store};

/// The allocator orchd uses, so figures are those of the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn value(i: usize) -> Vec<u8> {
    format!("{{\"metadata\":{{\"name\":\"obj-{i}\"}},\"spec\":{{\"replicas\":3,\"template\":{{\"command\":[\"server\"]}}}}}}").into_bytes()
}

/// Durable writes/s one writer gets from the disk with nothing in between, two ways:
/// appending 256 bytes (the file grows, so each `fdatasync` also commits the size) and
/// writing 256 bytes sequentially into a preallocated file (data only: the physical limit).
fn fdatasync_rates(dir: &std::path::Path) -> (f64, f64) {
    let rate = |mut step: Box<dyn FnMut(usize) + '_>| {
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_secs(2) {
            step(n);
            n += 1;
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let mut f = std::fs::File::create(dir.join("append.bin")).unwrap();
    let append = rate(Box::new(|_| {
        f.write_all(&[0u8; 256]).unwrap();
        f.sync_data().unwrap();
    }));
    let g = std::fs::File::create(dir.join("prealloc.bin")).unwrap();
    let size = 64u64 << 20;
    g.write_all_at(&vec![0u8; size as usize], 0).unwrap();
    g.sync_all().unwrap();
    let prealloc = rate(Box::new(|n| {
        g.write_all_at(&[1u8; 256], (n as u64 * 256) % size)
            .unwrap();
        g.sync_data().unwrap();
    }));
    (append, prealloc)
}

async fn single(store: &dyn Store, n: usize) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        store
            .txn(vec![Op::Create {
                key: format!("/single/{i:08}"),
                value: value(i),
            }])
            .await
            .unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn concurrent(store: Arc<dyn Store>, writers: usize, each: usize) -> f64 {
    let t = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let s = store.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    s.txn(vec![Op::Create {
                        key: format!("/conc/{w:02}/{i:08}"),
                        value: value(i),
                    }])
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (writers * each) as f64 / t.elapsed().as_secs_f64()
}

async fn batched(store: &dyn Store, txns: usize, per: usize) -> f64 {
    let t = Instant::now();
    for b in 0..txns {
        let ops = (0..per)
            .map(|i| Op::Create {
                key: format!("/batch/{b:06}/{i:04}"),
                value: value(i),
            })
            .collect();
        store.txn(ops).await.unwrap();
    }
    (txns * per) as f64 / t.elapsed().as_secs_f64()
}

async fn reads(store: &dyn Store, keys: usize, n: usize) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        let k = format!("/single/{:08}", (i * 7919) % keys);
        assert!(store.get(&k).await.unwrap().is_some());
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn watch_latency(store: Arc<dyn Store>, n: usize) -> (f64, f64) {
    let rev = store.revision().await.unwrap();
    let mut w = store.watch("/watched/", rev).await.unwrap();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        store
            .txn(vec![Op::Create {
                key: format!("/watched/{i:08}"),
                value: value(i),
            }])
            .await
            .unwrap();
        let b = w.next().await.unwrap().unwrap();
        assert_eq!(b.events.len(), 1);
        lat.push(t.elapsed());
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(lat[n / 2]), ms(lat[n * 99 / 100]))
}

/// Runs every measurement; `reads` is how many gets to time (etcd's linearizable reads are
/// slow enough that 100,000 would take a minute). An embedded store is checkpointed before
/// the reads, so they read values from its file (through redb's page cache), not from the
/// write-ahead log's values still in memory.
async fn run(
    name: &str,
    store: Arc<dyn Store>,
    embedded: Option<orch_store::EmbeddedStore>,
    reads_n: usize,
    disk: f64,
) {
    let s = single(&*store, 2_000).await;
    let c = concurrent(store.clone(), 16, 500).await;
    let b = batched(&*store, 200, 100).await;
    if let Some(e) = embedded {
        // Compacting checkpoints first; history is not needed by the reads.
        e.compact(store.revision().await.unwrap()).await.unwrap();
    }
    let r = reads(&*store, 2_000, reads_n).await;
    let (p50, p99) = watch_latency(store, 1_000).await;
    let of_disk = 100.0 * s / disk;
    println!(
        "| {name} | {s:.0} ({of_disk:.0}%) | {c:.0} | {b:.0} | {r:.0} | {p50:.2} / {p99:.2} |"
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (append, prealloc) = fdatasync_rates(dir.path());
    let disk = append.max(prealloc);
    println!(
        "disk, one writer: {append:.0} fdatasync/s appending 256 B, {prealloc:.0}/s writing 256 B into a preallocated file; the higher ({disk:.0}/s) is the 100% below\n"
    );
    println!("| store | single durable writes/s (% of disk) | 16 writers, writes/s | batched (100/txn), objects/s | reads/s | watch delivery p50 / p99 ms |");
    println!("|---|---|---|---|---|---|");
    let embedded = orch_store::EmbeddedStore::open(&dir.path().join("bench.redb")).unwrap();
    run(
        "embedded (redb + write-ahead log)",
        Arc::new(embedded.clone()),
        Some(embedded),
        100_000,
        disk,
    )
    .await;
    #[cfg(feature = "etcd")]
    {
        let etcd = orch_store::local_etcd::LocalEtcd::start()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let store = orch_store::etcd::EtcdStore::connect(&[etcd.endpoint()], "/bench")
            .await
            .unwrap();
        let version = std::process::Command::new("etcd")
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        run(
            &format!("etcd ({version}, same disk)"),
            Arc::new(store),
            None,
            5_000,
            disk,
        )
        .await;
    }
    run(
        "in-memory (not durable, for scale)",
        Arc::new(orch_core::memstore::MemStore::new()),
        None,
        100_000,
        disk,
    )
    .await;
}
