//! Runs the conformance suite against the in-memory store and the embedded store.

use std::sync::atomic::{AtomicUsize, Ordering};

use orch_core::memstore::MemStore;
use orch_store::conformance;
use orch_store::EmbeddedStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_conforms() {
    conformance::run_all(|| async { MemStore::new() }).await;
}

#[tokio::test(flavor = "current_thread")]
async fn memstore_conforms_on_one_thread() {
    conformance::run_all(|| async { MemStore::new() }).await;
}

/// Runs the suite on embedded stores, each in a fresh file of one temporary directory.
async fn embedded_suite() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let path = dir
            .path()
            .join(format!("store-{}.redb", n.fetch_add(1, Ordering::Relaxed)));
        async move { EmbeddedStore::open(&path).unwrap() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_conforms() {
    embedded_suite().await;
}

#[tokio::test(flavor = "current_thread")]
async fn embedded_conforms_on_one_thread() {
    embedded_suite().await;
}
