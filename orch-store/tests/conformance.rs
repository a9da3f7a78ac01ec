//! Runs the conformance suite against the in-memory store and the embedded store.

use std::sync::atomic::{AtomicUsize, Ordering};

use orch_core::memstore::MemStore;
use orch_store::conformance;
use orch_store::{EmbeddedOptions, EmbeddedStore};

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
    embedded_suite_with(EmbeddedOptions::default()).await;
}

async fn embedded_suite_with(options: EmbeddedOptions) {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let path = dir
            .path()
            .join(format!("store-{}.redb", n.fetch_add(1, Ordering::Relaxed)));
        let options = options.clone();
        async move { EmbeddedStore::open_with(&path, options).unwrap() }
    })
    .await;
}

/// A checkpoint after every commit: values leave memory at once, so reads, compares and
/// deletes' events go to the file while writers and checkpoints race with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_conforms_reading_values_from_the_file() {
    embedded_suite_with(EmbeddedOptions {
        checkpoint_commits: 1,
        ..EmbeddedOptions::default()
    })
    .await;
}

/// No write-ahead log: every commit goes straight into the file, before memory hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_conforms_without_a_log() {
    embedded_suite_with(EmbeddedOptions {
        wal_bytes: 0,
        ..EmbeddedOptions::default()
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
