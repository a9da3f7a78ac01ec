//! Runs the conformance suite and an outage test against [`EtcdStore`] on a real etcd, which
//! each test starts itself (the `etcd` binary must be installed: `apt-get install etcd-server`;
//! without it each test says it skipped, or fails under `ORCH_TEST_REQUIRE_ALL=1`).
//!
//! Run with `cargo test -p orch-store --features etcd --test etcd`.
#![cfg(feature = "etcd")]

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use orch_core::store::{Op, Store, StoreError};
use orch_store::conformance;
use orch_store::etcd::EtcdStore;
use orch_store::local_etcd::LocalEtcd;

/// A fresh etcd, or `None` (the test skips) when the `etcd` binary is missing.
async fn start() -> Option<LocalEtcd> {
    if !orch_testkit::require(&["etcd"]) {
        return None;
    }
    Some(LocalEtcd::start().await.unwrap_or_else(|e| panic!("{e}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_conforms() {
    let Some(etcd) = start().await else {
        return;
    };
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let prefix = format!("/conf-{}", n.fetch_add(1, Ordering::Relaxed));
        let endpoint = etcd.endpoint();
        async move {
            EtcdStore::connect(&[endpoint], &prefix)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn etcd_conforms_on_one_thread() {
    let Some(etcd) = start().await else {
        return;
    };
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let prefix = format!("/conf-{}", n.fetch_add(1, Ordering::Relaxed));
        let endpoint = etcd.endpoint();
        async move {
            EtcdStore::connect(&[endpoint], &prefix)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_down_then_back() {
    let Some(mut etcd) = start().await else {
        return;
    };
    let store = EtcdStore::connect(&[etcd.endpoint()], "/outage")
        .await
        .unwrap();
    let r1 = store
        .txn(vec![Op::Create {
            key: "/a".into(),
            value: b"1".to_vec(),
        }])
        .await
        .unwrap();
    let mut watch = store.watch("/", r1).await.unwrap();
    etcd.stop();
    match tokio::time::timeout(conformance::WAIT, watch.next()).await {
        Ok(Some(Err(StoreError::Unavailable(_)))) => {}
        other => panic!("watch when etcd goes away: expected Unavailable, got {other:?}"),
    }
    match store.get("/a").await {
        Err(e @ StoreError::Unavailable(_)) => assert!(e.is_transient()),
        other => panic!("get while etcd is down: expected Unavailable, got {other:?}"),
    }
    etcd.restart().await.unwrap();
    // A write first: no read has woken the store's connection since the restart.
    let r2 = store
        .txn(vec![Op::Update {
            key: "/a".into(),
            value: b"2".to_vec(),
            expected: r1,
        }])
        .await
        .unwrap();
    assert!(r2 > r1);
    let kv = store
        .get("/a")
        .await
        .unwrap()
        .expect("/a survives a restart");
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_frozen_then_back() {
    let Some(etcd) = start().await else {
        return;
    };
    let store = EtcdStore::connect(&[etcd.endpoint()], "/frozen")
        .await
        .unwrap();
    let r1 = store
        .txn(vec![Op::Create {
            key: "/a".into(),
            value: b"1".to_vec(),
        }])
        .await
        .unwrap();
    etcd.signal("STOP").unwrap();
    let got = store.get("/a").await;
    etcd.signal("CONT").unwrap();
    match got {
        Err(e @ StoreError::Unavailable(_)) => assert!(e.is_transient()),
        other => panic!("get while etcd is stopped: expected Unavailable, got {other:?}"),
    }
    let kv = store.get("/a").await.unwrap().expect("/a is still there");
    assert_eq!(kv.mod_revision, r1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_limits_and_duplicate_keys() {
    let Some(etcd) = start().await else {
        return;
    };
    let store = EtcdStore::connect(&[etcd.endpoint()], "/limits")
        .await
        .unwrap();
    let full: Vec<Op> = (0..128)
        .map(|i| Op::Create {
            key: format!("/full/{i}"),
            value: vec![],
        })
        .collect();
    let r = store.txn(full).await.expect("128 creates fit in one txn");
    let updates = (0..128)
        .map(|i| Op::Update {
            key: format!("/full/{i}"),
            value: b"x".to_vec(),
            expected: r,
        })
        .collect();
    store
        .txn(updates)
        .await
        .expect("128 updates fit in one txn");
    let deletes = (0..128)
        .map(|i| Op::Delete {
            key: format!("/full/{i}"),
            expected: Some(r + 1),
        })
        .collect();
    store
        .txn(deletes)
        .await
        .expect("128 guarded deletes fit in one txn");
    let ops = (0..129)
        .map(|i| Op::Create {
            key: format!("/k/{i}"),
            value: vec![],
        })
        .collect();
    match store.txn(ops).await {
        Err(StoreError::TooLarge { what, .. }) => assert!(what.contains("128"), "{what}"),
        other => panic!("129 ops: expected TooLarge, got {other:?}"),
    }
    let big = vec![Op::Create {
        key: "/big".into(),
        value: vec![0; 2 << 20],
    }];
    assert!(matches!(
        store.txn(big).await,
        Err(StoreError::TooLarge { .. })
    ));
    let dup = vec![
        Op::Create {
            key: "/d".into(),
            value: vec![],
        },
        Op::Delete {
            key: "/d".into(),
            expected: None,
        },
    ];
    assert!(matches!(store.txn(dup).await, Err(StoreError::Other(_))));
    assert_eq!(store.list("/").await.unwrap().0, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_future_revision_waits_for_it() {
    let Some(etcd) = start().await else {
        return;
    };
    let store = EtcdStore::connect(&[etcd.endpoint()], "/future")
        .await
        .unwrap();
    let now = store.revision().await.unwrap();
    let mut watch = store.watch("/", now + 1).await.unwrap();
    let mut revs = Vec::new();
    for i in 0..2 {
        let op = Op::Create {
            key: format!("/k/{i}"),
            value: vec![],
        };
        revs.push(store.txn(vec![op]).await.unwrap());
    }
    let batch = tokio::time::timeout(conformance::WAIT, watch.next())
        .await
        .expect("a batch within the deadline")
        .expect("the watch is open")
        .unwrap();
    assert_eq!(
        batch.revision, revs[1],
        "the watch skips revision {}",
        revs[0]
    );
}

/// Secrets sealed at rest in etcd too: etcdctl (the raw value) sees ciphertext, the wrapped
/// store the plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_in_etcd() {
    use orch_store::encrypted::{EncryptedStore, Keyring};
    let Some(etcd) = start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let inner: std::sync::Arc<dyn Store> = std::sync::Arc::new(
        EtcdStore::connect(&[etcd.endpoint()], "/sealed")
            .await
            .unwrap(),
    );
    let keys = Keyring::load_or_create(&dir.path().join("secret-keys")).unwrap();
    let store = EncryptedStore::new(inner, keys);
    let plain = b"{\"data\":{\"password\":\"etcd-s3cret\"}}".to_vec();
    store
        .txn(vec![Op::Create {
            key: "/secrets/default/db".into(),
            value: plain.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(
        &*store
            .get("/secrets/default/db")
            .await
            .unwrap()
            .unwrap()
            .value,
        &plain[..]
    );
    let out = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "get",
            "--prefix",
            "/sealed",
        ])
        .output()
        .expect("etcdctl (Debian package etcd-client)");
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(raw.contains("orch-sealed:v1:"), "{raw}");
    assert!(
        !raw.contains("etcd-s3cret"),
        "etcd holds the plaintext: {raw}"
    );
}
