//! Store harness: durable single writes/s, 16 concurrent writers, batched objects/s, reads/s
//! and watch delivery latency, beside the disk's own fdatasync rate measured in the same run.
//!
//! `cargo run --release -p orch-benches --bin store`

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use orch_core::store::{Op, Store};

fn value(i: usize) -> Vec<u8> {
    format!("{{\"metadata\":{{\"name\":\"obj-{i}\"}},\"spec\":{{\"replicas\":3,\"template\":{{\"command\":[\"server\"]}}}}}}").into_bytes()
}

fn fdatasync_rate(dir: &std::path::Path) -> f64 {
    let mut f = std::fs::File::create(dir.join("sync.bin")).unwrap();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(2) {
        f.write_all(&[0u8; 256]).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
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

async fn run(name: &str, store: Arc<dyn Store>) {
    let s = single(&*store, 2_000).await;
    let c = concurrent(store.clone(), 16, 500).await;
    let b = batched(&*store, 200, 100).await;
    let r = reads(&*store, 2_000, 100_000).await;
    let (p50, p99) = watch_latency(store, 1_000).await;
    println!("| {name} | {s:.0} | {c:.0} | {b:.0} | {r:.0} | {p50:.2} / {p99:.2} |");
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!(
        "disk fdatasync (one writer, 256-byte appends): {:.0}/s\n",
        fdatasync_rate(dir.path())
    );
    println!("| store | single durable writes/s | 16 writers, writes/s | batched (100/txn), objects/s | reads/s | watch delivery p50 / p99 ms |");
    println!("|---|---|---|---|---|---|");
    let embedded = orch_store::EmbeddedStore::open(&dir.path().join("bench.redb")).unwrap();
    run("embedded (redb, fsync per commit)", Arc::new(embedded)).await;
    run(
        "in-memory (not durable, for scale)",
        Arc::new(orch_core::memstore::MemStore::new()),
    )
    .await;
}
