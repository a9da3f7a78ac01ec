//! Secrets sealed at rest in the embedded store: the bytes on disk (log and database) never
//! hold the plaintext; reads and watches see it; a rotated key re-seals everything.

use std::sync::Arc;

use futures::StreamExt;
use orch_core::store::{Op, Store, WatchEvent};
use orch_store::encrypted::{EncryptedStore, Keyring};
use orch_store::EmbeddedStore;

const PLAIN: &str = "correct-horse-battery-staple";

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            return files_contain(&p, needle);
        }
        std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
    })
}

#[tokio::test]
async fn secrets_are_sealed_on_disk_and_open_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("secret-keys");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&data.join("state.redb")).unwrap());
    let store = EncryptedStore::new(inner.clone(), Keyring::load_or_create(&keys).unwrap());
    let mut watch = store.watch("/secrets/", 0).await.unwrap();
    let value = format!("{{\"password\":\"{PLAIN}\"}}").into_bytes();
    store
        .txn(vec![
            Op::Create {
                key: "/secrets/default/db".into(),
                value: value.clone(),
            },
            Op::Create {
                key: "/configs/default/app".into(),
                value: b"{\"level\":\"debug\"}".to_vec(),
            },
        ])
        .await
        .unwrap();
    // Through the wrapper: the plaintext. Underneath: sealed; configs are not.
    let got = store.get("/secrets/default/db").await.unwrap().unwrap();
    assert_eq!(&*got.value, &value[..]);
    let raw = inner.get("/secrets/default/db").await.unwrap().unwrap();
    assert!(raw.value.starts_with(b"orch-sealed:v1:"));
    let raw_config = inner.get("/configs/default/app").await.unwrap().unwrap();
    assert_eq!(&*raw_config.value, b"{\"level\":\"debug\"}");
    let batch = watch.next().await.unwrap().unwrap();
    let WatchEvent::Put(kv) = &batch.events[0] else {
        panic!("{batch:?}")
    };
    assert_eq!(&*kv.value, &value[..]);
    assert!(
        !files_contain(&data, PLAIN.as_bytes()),
        "the plaintext is nowhere in the store's files"
    );
    assert!(
        files_contain(&data, b"debug"),
        "the check can see plain bytes"
    );

    // Rotation: a new primary key; resealing rewrites the secret under it.
    let new_id = Keyring::rotate(&keys).unwrap();
    let store = EncryptedStore::new(inner.clone(), Keyring::load(&keys).unwrap());
    assert_eq!(store.reseal().await.unwrap(), 1);
    let raw = inner.get("/secrets/default/db").await.unwrap().unwrap();
    assert_eq!(Keyring::sealed_with(&raw.value), Some(new_id.as_str()));
    assert_eq!(store.reseal().await.unwrap(), 0);
    assert_eq!(
        &*store
            .get("/secrets/default/db")
            .await
            .unwrap()
            .unwrap()
            .value,
        &value[..]
    );
    // Without the key: an error naming the key, not garbage.
    std::fs::write(&keys, format!("{new_id}x {}\n", "0".repeat(64))).unwrap();
    let wrong = EncryptedStore::new(inner, Keyring::load(&keys).unwrap());
    let e = wrong
        .get("/secrets/default/db")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/secrets/default/db") && e.contains("not in the keyring"),
        "{e}"
    );
}
