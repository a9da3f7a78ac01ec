//! The embedded store on a real full filesystem (a small tmpfs mounted for the test, so the
//! real disk is never filled): it refuses writes and says it is unavailable while the disk is
//! full, and recovers by itself once space is freed. Needs root (to mount); otherwise each test
//! says it skipped (or fails under `ORCH_TEST_REQUIRE_ALL=1`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use orch_core::store::{Op, Store, StoreError};
use orch_store::{EmbeddedOptions, EmbeddedStore};

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        if !orch_testkit::require(&["root", "mount"]) {
            return None;
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir }),
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
                orch_testkit::require_that("a tmpfs mount", Some(why));
                None
            }
            Err(e) => {
                orch_testkit::require_that("a tmpfs mount", Some(format!("cannot run mount: {e}")));
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with `filler`; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![7u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn create(key: &str, size: usize) -> Op {
    Op::Create {
        key: key.into(),
        value: vec![b'v'; size],
    }
}

/// Issue 17: after `No space left on device` every later commit failed with redb's
/// "Previous I/O error occurred" until the process restarted, while the store said it was
/// available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_store_unavailable_until_space_is_freed() {
    // The log fills up while checkpoints fail, then the checkpoint that makes room fails.
    fill_and_recover(EmbeddedOptions {
        wal_bytes: 256 << 10,
        checkpoint_commits: 4,
        ..EmbeddedOptions::default()
    })
    .await;
}

/// The same without a write-ahead log: the failing commit is redb's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_log_a_full_disk_makes_the_store_unavailable_until_space_is_freed() {
    fill_and_recover(EmbeddedOptions {
        wal_bytes: 0,
        ..EmbeddedOptions::default()
    })
    .await;
}

async fn fill_and_recover(options: EmbeddedOptions) {
    let Some(fs) = SmallFs::mount("4m") else {
        return;
    };
    let path = fs.path().join("state.redb");
    let store = EmbeddedStore::open_with(&path, options.clone()).unwrap();
    let mut acked = Vec::new();
    for i in 0..10 {
        let key = format!("/before/{i}");
        acked.push((
            key.clone(),
            store.txn(vec![create(&key, 1000)]).await.unwrap(),
        ));
    }
    let mut watch = store
        .watch("/", store.revision().await.unwrap())
        .await
        .unwrap();

    let filler = fs.fill();
    let mut failure = None;
    for i in 0..5_000 {
        let key = format!("/full/{i:05}");
        match store.txn(vec![create(&key, 8 << 10)]).await {
            Ok(rev) => acked.push((key, rev)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("a full disk took every write");
    assert!(matches!(failure, StoreError::Unavailable(_)), "{failure:?}");
    assert!(failure.to_string().contains("state.redb"), "{failure}");

    // Meanwhile the store says it is unavailable (what `orchctl info` asks), and watches
    // (what readiness follows) end with that error.
    let e = store
        .revision()
        .await
        .expect_err("revision while the disk is full");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("state.redb"), "{e}");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(_)) => continue, // the writes acknowledged before the failure
                other => break other.map(|r| r.map(|b| b.revision)),
            }
        }
    })
    .await
    .expect("an open watch kept going");
    assert!(
        matches!(ended, Some(Err(StoreError::Unavailable(_)))),
        "{ended:?}"
    );
    assert!(store.watch("/", 0).await.is_err());
    // Reads answer what was acknowledged, or (values already in the file, which redb
    // refuses to read after an I/O error until it is reopened) say the store is unavailable.
    for (key, _) in acked.iter().take(3) {
        match store.get(key).await {
            Ok(kv) => assert!(kv.is_some(), "{key}"),
            Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}"),
        }
    }

    // Space again: the store recovers by itself (no write needed to notice).
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let rev = loop {
        match store.revision().await {
            Ok(rev) => break rev,
            Err(e) if Instant::now() > deadline => panic!("still unavailable: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let last = acked.last().unwrap().1;
    assert!(rev >= last, "revision {rev} went back from {last}");
    let next = store.txn(vec![create("/after", 10)]).await.unwrap();
    assert_eq!(next, rev + 1);
    let mut watch = store.watch("/", rev).await.unwrap();
    let batch = watch.next().await.unwrap().unwrap();
    assert_eq!(batch.revision, next);
    let _ = failure;
    for (key, _) in &acked {
        assert!(store.get(key).await.unwrap().is_some(), "{key} lost");
    }
    drop((watch, store));
    let store = EmbeddedStore::open_with(&path, options).unwrap();
    for (key, _) in &acked {
        assert!(
            store.get(key).await.unwrap().is_some(),
            "{key} lost after reopen"
        );
    }
    assert!(store.get("/after").await.unwrap().is_some());
}

/// Issue 17: a data dir too small for the preallocated log could not start and left
/// `state.redb.wal.tmp` behind; say how much space the log needs, and clean up.
#[test]
fn a_filesystem_too_small_for_the_log_says_how_much_it_needs() {
    let Some(fs) = SmallFs::mount("3m") else {
        return;
    };
    let path = fs.path().join("state.redb");
    let e = EmbeddedStore::open(&path)
        .err()
        .expect("a 16 MiB log fitted in 3 MiB");
    let message = e.to_string();
    assert!(message.contains("state.redb.wal"), "{message}");
    assert!(message.contains("16777216 bytes (16 MiB)"), "{message}");
    let left: Vec<_> = std::fs::read_dir(fs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|n| n.ends_with(".tmp")),
        "left behind: {left:?}"
    );
}
