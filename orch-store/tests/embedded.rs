//! EmbeddedStore beyond the conformance suite: durability across reopen, bounded history,
//! refusal of damaged files, and a printed latency measurement.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use orch_core::store::{KeyValue, Op, Revision, Store, StoreError, WatchBatch, WatchStream};
use orch_store::{EmbeddedOptions, EmbeddedStore};

fn create(key: &str, value: &str) -> Op {
    Op::Create {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn update(key: &str, value: &str, expected: Revision) -> Op {
    Op::Update {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        expected,
    }
}

/// Reads batches until one at `through` or later.
async fn collect(w: &mut WatchStream, through: Revision) -> Vec<WatchBatch> {
    let mut out: Vec<WatchBatch> = Vec::new();
    while out.last().is_none_or(|b| b.revision < through) {
        let next = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
        out.push(
            next.expect("watch stalled")
                .expect("watch ended")
                .expect("watch failed"),
        );
    }
    out
}

async fn snapshot(store: &dyn Store) -> (Vec<KeyValue>, Revision) {
    let (kvs, rev) = store.list("").await.unwrap();
    assert_eq!(rev, store.revision().await.unwrap());
    (kvs, rev)
}

/// Writes creates, updates and deletes; returns the final revision.
async fn write_some(store: &dyn Store) -> Revision {
    let r1 = store
        .txn(vec![
            create("/a/1", "one"),
            create("/a/2", "two"),
            create("/b/1", "b"),
        ])
        .await
        .unwrap();
    let r2 = store.txn(vec![update("/a/1", "one'", r1)]).await.unwrap();
    store
        .txn(vec![Op::Delete {
            key: "/a/2".into(),
            expected: Some(r1),
        }])
        .await
        .unwrap();
    store
        .txn(vec![create("/a/3", "three"), update("/a/1", "one''", r2)])
        .await
        .unwrap();
    store
        .txn(vec![
            Op::Delete {
                key: "/b/1".into(),
                expected: None,
            },
            create("/a/2", "two again"),
        ])
        .await
        .unwrap()
}

#[tokio::test]
async fn reopen_keeps_state_revision_and_watch_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    let last = write_some(&store).await;
    let before = snapshot(&store).await;
    let mut watch = store.watch("/", 0).await.unwrap();
    let history = collect(&mut watch, last).await;
    assert_eq!(history.len() as Revision, last);
    drop(store);
    let closed = watch
        .next()
        .await
        .expect("the watch ends with an error when the store closes");
    assert!(
        matches!(closed, Err(StoreError::Unavailable(_))),
        "{closed:?}"
    );

    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(snapshot(&store).await, before);
    assert_eq!(
        collect(&mut store.watch("/", 0).await.unwrap(), last).await,
        history,
        "history replays from disk"
    );
    let from_two = collect(&mut store.watch("/a/", 2).await.unwrap(), last).await;
    assert_eq!(from_two.first().map(|b| b.revision), Some(3));

    // Revisions continue where they stopped; the live watch follows.
    let mut live = store.watch("/a/", last).await.unwrap();
    let next = store.txn(vec![update("/a/3", "3", 4)]).await.unwrap();
    assert_eq!(next, last + 1);
    assert_eq!(collect(&mut live, next).await.len(), 1);
    let kv = store.get("/a/3").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (4, next));
}

#[tokio::test]
async fn compaction_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    let last = write_some(&store).await;
    store.compact(3).await.unwrap();
    assert!(matches!(
        store.watch("/", 2).await,
        Err(StoreError::Compacted {
            requested: 2,
            oldest: 3
        })
    ));
    drop(store);

    let store = EmbeddedStore::open(&path).unwrap();
    assert!(matches!(
        store.watch("/", 2).await,
        Err(StoreError::Compacted {
            requested: 2,
            oldest: 3
        })
    ));
    let rest = collect(&mut store.watch("/", 3).await.unwrap(), last).await;
    assert_eq!(rest.iter().map(|b| b.revision).collect::<Vec<_>>(), [4, 5]);
    // Compacting past the head stops at the head.
    store.compact(1_000).await.unwrap();
    assert!(matches!(
        store.watch("/", 4).await,
        Err(StoreError::Compacted { oldest: 5, .. })
    ));
    assert!(store.watch("/", 5).await.is_ok());
}

#[tokio::test]
async fn history_and_log_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let options = EmbeddedOptions {
        history_events: 10,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(&path, options.clone()).unwrap();
    let mut last = 0;
    for i in 0..200 {
        last = store
            .txn(vec![create(&format!("/k/{i}"), "v")])
            .await
            .unwrap();
    }
    let check = |store: EmbeddedStore| async move {
        assert!(matches!(
            store.watch("/", last - 11).await,
            Err(StoreError::Compacted { .. })
        ));
        let kept = collect(&mut store.watch("/", last - 10).await.unwrap(), last).await;
        assert_eq!(kept.len(), 10);
        assert_eq!(store.list("/k/").await.unwrap().0.len(), 200);
    };
    check(store).await;

    // The file's log is trimmed along with the in-memory history (at most one commit late).
    let db = redb::Database::open(&path).unwrap();
    let log_len = {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let read = db.begin_read().unwrap();
        let log: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
        read.open_table(log).unwrap().len().unwrap()
    };
    assert!(log_len <= 11, "log holds {log_len} entries");
    drop(db);

    check(EmbeddedStore::open_with(&path, options).unwrap()).await;
}

#[tokio::test]
async fn damaged_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.redb");
    let store = EmbeddedStore::open(&good).unwrap();
    for i in 0..50 {
        store
            .txn(vec![create(&format!("/k/{i:03}"), &"x".repeat(200))])
            .await
            .unwrap();
    }
    let before = snapshot(&store).await;
    drop(store);
    let bytes = std::fs::read(&good).unwrap();
    let len = bytes.len();
    // The write-ahead log goes with its store file.
    let wal = std::fs::read(wal_of(&good)).unwrap();
    let with_wal = |path: &Path| std::fs::write(wal_of(path), &wal).unwrap();

    let garbage = |n: usize| (0..n).map(|i| (i * 7 + 13) as u8).collect::<Vec<u8>>();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated to half", bytes[..len / 2].to_vec()),
        ("truncated to one page", bytes[..4096.min(len)].to_vec()),
        (
            "not a database",
            b"apiVersion: v1\nkind: Service\n".to_vec(),
        ),
    ];
    let mut header = bytes.clone();
    header[..512].copy_from_slice(&garbage(512));
    cases.push(("garbage over the header", header));
    let mut everything = bytes.clone();
    everything[4096..].copy_from_slice(&garbage(len - 4096));
    cases.push(("garbage over every page", everything));

    for (what, content) in cases {
        let path = dir.path().join(format!("{}.redb", what.replace(' ', "-")));
        std::fs::write(&path, &content).unwrap();
        with_wal(&path);
        match EmbeddedStore::open(&path) {
            Ok(_) => panic!("{what}: a damaged file opened"),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains(&path.display().to_string()),
                    "{what}: {message:?} does not name the file"
                );
                assert!(
                    !e.is_transient(),
                    "{what}: a damaged file is not transient: {message}"
                );
            }
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            content,
            "{what}: a refused file was modified"
        );
    }

    // Damage inside the data pages is either detected or harmless; it never loses keys silently.
    for offset in (4096..len).step_by(4096) {
        let path = dir.path().join(format!("page-{offset}.redb"));
        let mut damaged = bytes.clone();
        let end = (offset + 4096).min(len);
        damaged[offset..end].copy_from_slice(&garbage(end - offset));
        std::fs::write(&path, &damaged).unwrap();
        with_wal(&path);
        match EmbeddedStore::open(&path) {
            Ok(store) => assert_eq!(
                snapshot(&store).await,
                before,
                "page at {offset} damaged but opened with other data"
            ),
            Err(e) => assert!(e.to_string().contains(&path.display().to_string()), "{e}"),
        }
    }
}

#[tokio::test]
async fn foreign_redb_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    let table: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("something");
    txn.open_table(table).unwrap().insert(1, 2).unwrap();
    txn.commit().unwrap();
    drop(db);
    let err = EmbeddedStore::open(&path)
        .err()
        .expect("a foreign file opened");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("not an orch store"), "{err}");
}

#[tokio::test]
async fn open_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("no/such/dir/store.redb");
    let err = EmbeddedStore::open(&missing_dir)
        .err()
        .expect("opened in a missing directory");
    assert!(
        err.to_string().contains(&missing_dir.display().to_string()),
        "{err}"
    );

    let path = dir.path().join("store.redb");
    let _store = EmbeddedStore::open(&path).unwrap();
    let err = EmbeddedStore::open(&path)
        .err()
        .expect("a second handle opened the same file");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

async fn sequential_writes(path: &Path, n: usize) -> Vec<Duration> {
    let store = EmbeddedStore::open(path).unwrap();
    let value = "v".repeat(512);
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        store
            .txn(vec![create(&format!("/bench/{i:06}"), &value)])
            .await
            .unwrap();
        latencies.push(start.elapsed());
    }
    latencies
}

/// Prints durable write latency (run with `--nocapture` to see it); asserts nothing about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_latency_printout() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1_000;
    let start = Instant::now();
    let mut latencies = sequential_writes(&dir.path().join("seq.redb"), n).await;
    let total = start.elapsed();
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!(
        "embedded store: {n} sequential durable writes in {total:?} (mean {:?}, p50 {:?}, p99 {:?}, max {:?})",
        total / n as u32,
        pct(50),
        pct(99),
        latencies[n - 1]
    );

    let store = Arc::new(EmbeddedStore::open(&dir.path().join("conc.redb")).unwrap());
    let (writers, each) = (16, 64);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    store
                        .txn(vec![create(&format!("/bench/{w}/{i}"), "v")])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total = start.elapsed();
    assert_eq!(
        store.revision().await.unwrap(),
        (writers * each) as Revision
    );
    println!(
        "embedded store: {} writes from {writers} concurrent writers in {total:?} ({:.0} txn/s, group commit)",
        writers * each,
        (writers * each) as f64 / total.as_secs_f64()
    );
}

#[tokio::test]
async fn oversized_transactions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        max_txn_bytes: 1_000,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(&dir.path().join("store.redb"), options).unwrap();
    let r1 = store
        .txn(vec![create("/a", &"x".repeat(900))])
        .await
        .unwrap();
    let err = store
        .txn(vec![
            create("/b", &"x".repeat(600)),
            create("/c", &"x".repeat(600)),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { limit: 1_000, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(store.revision().await.unwrap(), r1);
    assert!(store.get("/b").await.unwrap().is_none());
    // A delete's log entry carries the deleted value, so it counts too.
    let err = store
        .txn(vec![
            create("/d", &"x".repeat(100)),
            Op::Delete {
                key: "/a".into(),
                expected: None,
            },
        ])
        .await;
    assert!(matches!(err, Err(StoreError::TooLarge { .. })), "{err:?}");
    store
        .txn(vec![Op::Delete {
            key: "/a".into(),
            expected: None,
        }])
        .await
        .unwrap();
}

fn wal_of(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".wal");
    p.into()
}

#[tokio::test]
async fn checkpoints_and_a_full_log_keep_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.redb");
    // A log of 16 KiB and a checkpoint every 3 commits: both ways of starting over happen.
    let options = EmbeddedOptions {
        wal_bytes: 16 << 10,
        checkpoint_commits: 3,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(&path, options.clone()).unwrap();
    for i in 0..40 {
        let size = if i % 7 == 0 { 9_000 } else { 100 };
        store
            .txn(vec![create(&format!("/c/{i:03}"), &"v".repeat(size))])
            .await
            .unwrap();
    }
    let before = snapshot(&store).await;
    drop(store);
    assert_eq!(
        std::fs::metadata(wal_of(&path)).unwrap().len(),
        16 << 10,
        "the log never grows"
    );
    let store = EmbeddedStore::open_with(&path, options).unwrap();
    assert_eq!(snapshot(&store).await, before);
    assert_eq!(before.1, 40);
}

#[tokio::test]
async fn without_a_log_every_commit_syncs_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nolog.redb");
    let options = EmbeddedOptions {
        wal_bytes: 0,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(&path, options.clone()).unwrap();
    let rev = write_some(&store).await;
    let before = snapshot(&store).await;
    drop(store);
    assert!(!wal_of(&path).exists());
    let store = EmbeddedStore::open_with(&path, options).unwrap();
    assert_eq!(snapshot(&store).await, before);
    assert_eq!(store.revision().await.unwrap(), rev);
}

#[tokio::test]
async fn a_missing_or_damaged_log_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logged.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    write_some(&store).await;
    drop(store);
    let wal = wal_of(&path);
    let bytes = std::fs::read(&wal).unwrap();

    std::fs::remove_file(&wal).unwrap();
    let e = EmbeddedStore::open(&path)
        .err()
        .expect("opened without its log");
    let message = e.to_string();
    assert!(message.contains(&wal.display().to_string()), "{message}");
    assert!(message.contains("missing"), "{message}");
    assert!(!wal.exists(), "a refused open must not create the log");

    let mut damaged = bytes.clone();
    damaged[..8].copy_from_slice(b"garbage!");
    std::fs::write(&wal, &damaged).unwrap();
    let e = EmbeddedStore::open(&path)
        .err()
        .expect("opened with a damaged log");
    assert!(e.to_string().contains(&wal.display().to_string()), "{e}");
    assert_eq!(
        std::fs::read(&wal).unwrap(),
        damaged,
        "a refused log was modified"
    );

    std::fs::write(&wal, &bytes).unwrap();
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(
        store.get("/a/2").await.unwrap().unwrap().value.as_ref(),
        b"two again"
    );
}

/// The files of a store that acknowledged `n` writes (`/s/<i>` = `value-<i>`, one per
/// commit, all still in the write-ahead log) as a crash would leave them: the store is
/// still open when they are copied.
async fn crash_image(dir: &Path, name: &str, n: usize) -> (Vec<u8>, Vec<u8>) {
    let path = dir.join(name);
    let store = EmbeddedStore::open(&path).unwrap();
    for i in 0..n {
        store
            .txn(vec![create(
                &format!("/s/{i:02}"),
                &format!("value-{i:02}"),
            )])
            .await
            .unwrap();
    }
    let image = (
        std::fs::read(&path).unwrap(),
        std::fs::read(wal_of(&path)).unwrap(),
    );
    drop(store);
    image
}

/// Writes a crash image to `name` and opens it.
fn open_image(dir: &Path, name: &str, db: &[u8], wal: &[u8]) -> Result<EmbeddedStore, StoreError> {
    let path = dir.join(name);
    std::fs::write(&path, db).unwrap();
    std::fs::write(wal_of(&path), wal).unwrap();
    EmbeddedStore::open(&path)
}

/// Issue 17: the first bad record used to end the log, silently dropping every acknowledged
/// write after it (or all of them). Damage with acknowledged records after it is refused
/// naming the file and the offset; only a torn last write may be dropped.
#[tokio::test]
async fn a_damaged_log_is_refused_unless_only_its_last_write_is_torn() {
    let dir = tempfile::tempdir().unwrap();
    let (db, wal) = crash_image(dir.path(), "src.redb", 10).await;
    let store = open_image(dir.path(), "intact.redb", &db, &wal).unwrap();
    assert_eq!(
        (store.replayed_at_open(), snapshot(&store).await.0.len()),
        (10, 10)
    );
    drop(store);

    let value_at = |i: usize| {
        let needle = format!("value-{i:02}");
        wal.windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap()
    };
    for (what, at) in [
        ("first", value_at(0)),
        ("fifth", value_at(4)),
        ("ninth", value_at(8)),
    ] {
        let mut damaged = wal.clone();
        damaged[at] ^= 0x01;
        let name = format!("{what}.redb");
        let e = open_image(dir.path(), &name, &db, &damaged)
            .err()
            .unwrap_or_else(|| panic!("a log damaged in its {what} record opened"));
        let message = e.to_string();
        let wal_path = wal_of(&dir.path().join(&name));
        assert!(
            message.contains(&wal_path.display().to_string()),
            "{what}: {message}"
        );
        assert!(message.contains("offset"), "{what}: {message}");
        assert!(!e.is_transient(), "{what}: {message}");
    }

    // The last write torn by the crash: never acknowledged, dropped.
    let mut torn = wal.clone();
    torn[value_at(9)] ^= 0x01;
    let store = open_image(dir.path(), "torn.redb", &db, &torn).unwrap();
    let (kvs, rev) = snapshot(&store).await;
    assert_eq!((kvs.len(), rev), (9, 9));
    drop(store);

    // A truncated log is refused, even when what is left holds every record.
    for keep in [value_at(5), wal.len() / 2, wal.len() - 4096] {
        let e = open_image(dir.path(), "short.redb", &db, &wal[..keep])
            .err()
            .unwrap_or_else(|| panic!("a log truncated to {keep} bytes opened"));
        assert!(e.to_string().contains("short.redb.wal"), "{e}");
    }
}

/// Issue 17: another store's log beside a store whose revisions overlap was replayed into it.
#[tokio::test]
async fn another_stores_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (db_a, _) = crash_image(dir.path(), "a.redb", 3).await;
    let (_, wal_b) = crash_image(dir.path(), "b.redb", 6).await;
    let e = open_image(dir.path(), "mixed.redb", &db_a, &wal_b)
        .err()
        .expect("a store opened with another store's log");
    let message = e.to_string();
    assert!(message.contains("mixed.redb.wal"), "{message}");
    assert!(message.contains("another store"), "{message}");
    assert!(!e.is_transient(), "{message}");
    // Its own log still opens it.
    let (db_a, wal_a) = crash_image(dir.path(), "a2.redb", 3).await;
    let store = open_image(dir.path(), "mixed.redb", &db_a, &wal_a).unwrap();
    assert_eq!(snapshot(&store).await.1, 3);
}
