//! No lost updates at the scale: 4 writers × 2,500 read-modify-write increments of one
//! object; the final value equals the number of successful writes and every stale write was
//! refused with a conflict.

use std::sync::Arc;

use orch_core::memstore::MemStore;
use orch_store::{conformance, EmbeddedStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_loses_no_update() {
    let conflicts = conformance::lost_update(Arc::new(MemStore::new()), 4, 2_500).await;
    println!("memstore: 10000 increments, {conflicts} stale writes refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_loses_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
    let conflicts = conformance::lost_update(Arc::new(store), 4, 2_500).await;
    println!("embedded: 10000 durable increments, {conflicts} stale writes refused");
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_loses_no_update() {
    if !orch_testkit::require(&["etcd"]) {
        return;
    }
    let etcd = orch_store::local_etcd::LocalEtcd::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let store = orch_store::etcd::EtcdStore::connect(&[etcd.endpoint()], "/lost")
        .await
        .unwrap();
    let conflicts = conformance::lost_update(Arc::new(store), 4, 2_500).await;
    println!("etcd: 10000 durable increments, {conflicts} stale writes refused");
}
