//! The conformance suite: the properties every [`Store`] must have (see `orch_core::store`),
//! runnable against any implementation from its own tests.
//!
//! Each property is an async fn that takes a **fresh, empty** store and panics with a message
//! naming the property when the store breaks it. [`run_all`] runs every property, each on its
//! own fresh store:
//!
//! ```no_run
//! # async fn example() {
//! use orch_core::memstore::MemStore;
//! orch_store::conformance::run_all(|| async { MemStore::new() }).await;
//! # }
//! ```
//!
//! Concurrent properties spawn tasks with `tokio::spawn`, so they need a tokio runtime (either
//! flavour). Watches are awaited with a deadline of [`WAIT`]; nothing sleeps.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use orch_core::store::{
    KeyValue, Op, Revision, Store, StoreError, WatchBatch, WatchEvent, WatchStream,
};

use crate::compact::Compact;

/// How long a property waits for an expected watch batch before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs every property of the suite, each on a store from `fresh` (which must be empty).
pub async fn run_all<S, F, Fut>(mut fresh: F)
where
    S: Store + Compact + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    create_if_absent(&fresh().await).await;
    get_reads_latest(&fresh().await).await;
    list_prefix(&fresh().await).await;
    list_consistent_under_writes(Arc::new(fresh().await), 200).await;
    update_cas(&fresh().await).await;
    check_fences(&fresh().await).await;
    delete_cas(&fresh().await).await;
    missing_key_not_found(&fresh().await).await;
    txn_all_or_nothing(&fresh().await).await;
    empty_txn(&fresh().await).await;
    watch_ordered_atomic(&fresh().await).await;
    watch_concurrent_writers(Arc::new(fresh().await), 4, 25).await;
    watch_resume(&fresh().await).await;
    let store = fresh().await;
    watch_compacted(&store, &store).await;
    lost_update(Arc::new(fresh().await), 4, 25).await;
}

/// A create of a missing key succeeds with the next revision; a second create of the same key
/// fails with [`StoreError::AlreadyExists`] and changes nothing.
pub async fn create_if_absent(store: &dyn Store) {
    const P: &str = "create_if_absent";
    let base = revision(store, P).await;
    let r1 = commit(store, vec![create("/conf/a", "1")], P).await;
    assert_eq!(
        r1,
        base + 1,
        "{P}: a committed txn must take the next revision"
    );
    let err = store
        .txn(vec![create("/conf/a", "2")])
        .await
        .expect_err("second create succeeded");
    match &err {
        StoreError::AlreadyExists { key } => {
            assert_eq!(key, "/conf/a", "{P}: error names the wrong key")
        }
        other => panic!("{P}: expected AlreadyExists, got {other:?}"),
    }
    assert!(
        !err.is_transient(),
        "{P}: AlreadyExists must not be transient"
    );
    assert_eq!(
        revision(store, P).await,
        r1,
        "{P}: a failed create moved the revision"
    );
    assert_kv(store, "/conf/a", "1", r1, r1, P).await;
}

/// `get` returns nothing for a missing key and the latest value with its revisions otherwise.
pub async fn get_reads_latest(store: &dyn Store) {
    const P: &str = "get_reads_latest";
    assert_eq!(
        get(store, "/conf/g", P).await,
        None,
        "{P}: a missing key was found"
    );
    let r1 = commit(store, vec![create("/conf/g", "v1")], P).await;
    assert_kv(store, "/conf/g", "v1", r1, r1, P).await;
    let r2 = commit(store, vec![update("/conf/g", "v2", r1)], P).await;
    assert_kv(store, "/conf/g", "v2", r1, r2, P).await;
    commit(
        store,
        vec![Op::Delete {
            key: "/conf/g".into(),
            expected: None,
        }],
        P,
    )
    .await;
    assert_eq!(
        get(store, "/conf/g", P).await,
        None,
        "{P}: a deleted key was found"
    );
    let r4 = commit(store, vec![create("/conf/g", "v3")], P).await;
    assert_kv(store, "/conf/g", "v3", r4, r4, P).await;
}

/// `list(prefix)` returns exactly the keys starting with `prefix`, in key order (`/a/` does
/// not see `/ab/`), and the revision of the snapshot.
pub async fn list_prefix(store: &dyn Store) {
    const P: &str = "list_prefix";
    commit(store, vec![create("/ab/1", "x"), create("/a/2", "x")], P).await;
    commit(store, vec![create("/a", "x"), create("/b/1", "x")], P).await;
    commit(store, vec![create("/a/sub/x", "x"), create("/a/1", "x")], P).await;
    let last = commit(store, vec![create("/a/", "x")], P).await;
    let cases: &[(&str, &[&str])] = &[
        ("/a/", &["/a/", "/a/1", "/a/2", "/a/sub/x"]),
        ("/ab/", &["/ab/1"]),
        ("/a", &["/a", "/a/", "/a/1", "/a/2", "/a/sub/x", "/ab/1"]),
        ("/none/", &[]),
        (
            "",
            &["/a", "/a/", "/a/1", "/a/2", "/a/sub/x", "/ab/1", "/b/1"],
        ),
    ];
    for (prefix, want) in cases {
        let (kvs, rev) = store
            .list(prefix)
            .await
            .unwrap_or_else(|e| panic!("{P}: list {prefix}: {e}"));
        let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(&keys, want, "{P}: list {prefix:?}");
        assert_eq!(
            rev, last,
            "{P}: list {prefix:?} reported revision {rev}, the store is at {last}"
        );
    }
}

/// A `list` taken while a writer creates one key per transaction is a consistent snapshot: it
/// holds exactly the keys created up to its revision.
pub async fn list_consistent_under_writes(store: Arc<dyn Store>, writes: usize) {
    const P: &str = "list_consistent_under_writes";
    let base = revision(&*store, P).await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..writes {
                commit(&*store, vec![create(&format!("/cons/{i:06}"), "x")], P).await;
                tokio::task::yield_now().await;
            }
        })
    };
    let mut lists = 0usize;
    loop {
        let done = writer.is_finished();
        let (kvs, rev) = store
            .list("/cons/")
            .await
            .unwrap_or_else(|e| panic!("{P}: list: {e}"));
        let n = usize::try_from(rev - base).expect("revision delta fits usize");
        assert_eq!(
            kvs.len(),
            n,
            "{P}: a list at revision {rev} must hold the {n} keys written since {base}"
        );
        for (i, kv) in kvs.iter().enumerate() {
            assert_eq!(
                kv.key,
                format!("/cons/{i:06}"),
                "{P}: list at revision {rev} skipped a key"
            );
            assert!(
                kv.mod_revision <= rev,
                "{P}: list at revision {rev} holds {} from the future",
                kv.key
            );
        }
        lists += 1;
        if done {
            break;
        }
        tokio::task::yield_now().await;
    }
    writer
        .await
        .unwrap_or_else(|e| panic!("{P}: writer failed: {e}"));
    let (kvs, _) = store
        .list("/cons/")
        .await
        .unwrap_or_else(|e| panic!("{P}: list: {e}"));
    assert_eq!(kvs.len(), writes, "{P}: final list after {lists} lists");
}

/// An update with the key's current mod revision succeeds and keeps its create revision; one
/// with a stale revision fails with [`StoreError::Conflict`] naming both revisions.
pub async fn update_cas(store: &dyn Store) {
    const P: &str = "update_cas";
    let r1 = commit(store, vec![create("/conf/u", "v1")], P).await;
    let r2 = commit(store, vec![update("/conf/u", "v2", r1)], P).await;
    assert_kv(store, "/conf/u", "v2", r1, r2, P).await;
    let err = store
        .txn(vec![update("/conf/u", "v3", r1)])
        .await
        .expect_err("a stale update succeeded");
    expect_conflict(&err, "/conf/u", r1, r2, P);
    assert_eq!(
        revision(store, P).await,
        r2,
        "{P}: a failed update moved the revision"
    );
    assert_kv(store, "/conf/u", "v2", r1, r2, P).await;
    let r3 = commit(store, vec![update("/conf/u", "v3", r2)], P).await;
    assert_kv(store, "/conf/u", "v3", r1, r3, P).await;
}

/// An [`Op::Check`] lets a transaction apply only while its key exists with the given create
/// revision: updates of the key keep it holding, a delete and re-create (a new term) end it,
/// and a failed check applies nothing of its transaction and moves no revision.
pub async fn check_fences(store: &dyn Store) {
    const P: &str = "check_fences";
    let check = |created| Op::Check {
        key: "/conf/leader".into(),
        created,
    };
    let term = commit(store, vec![create("/conf/leader", "a")], P).await;
    let r = commit(store, vec![check(term), create("/conf/w1", "x")], P).await;
    let renewed = commit(store, vec![update("/conf/leader", "a2", term)], P).await;
    assert!(
        renewed > r,
        "{P}: the leader key's update took no new revision"
    );
    commit(store, vec![check(term), create("/conf/w2", "x")], P).await;
    commit(
        store,
        vec![Op::Delete {
            key: "/conf/leader".into(),
            expected: None,
        }],
        P,
    )
    .await;
    let next = commit(store, vec![create("/conf/leader", "b")], P).await;
    let before = revision(store, P).await;
    for (expected, actual) in [(term, next), (0, next)] {
        let err = store
            .txn(vec![check(expected), create("/conf/w3", "x")])
            .await
            .expect_err("a write of an ended term applied");
        match err {
            StoreError::Fenced {
                key,
                expected: e,
                actual: a,
            } => assert_eq!(
                (key.as_str(), e, a),
                ("/conf/leader", expected, actual),
                "{P}: the fence error names the wrong key or revisions"
            ),
            other => panic!("{P}: expected Fenced, got {other}"),
        }
    }
    assert!(
        get(store, "/conf/w3", P).await.is_none(),
        "{P}: a fenced write landed"
    );
    assert_eq!(
        revision(store, P).await,
        before,
        "{P}: a fenced txn moved the revision"
    );
    commit(
        store,
        vec![Op::Delete {
            key: "/conf/leader".into(),
            expected: None,
        }],
        P,
    )
    .await;
    let err = store
        .txn(vec![check(next), create("/conf/w4", "x")])
        .await
        .expect_err("a write with no leader key applied");
    assert!(
        matches!(err, StoreError::Fenced { actual: 0, .. }),
        "{P}: expected Fenced with actual 0, got {err}"
    );
}

/// A delete with a stale revision fails with [`StoreError::Conflict`]; with the current one,
/// or with none, it removes the key; a later create starts a new life (new create revision).
pub async fn delete_cas(store: &dyn Store) {
    const P: &str = "delete_cas";
    let r1 = commit(
        store,
        vec![create("/conf/d", "v1"), create("/conf/e", "v1")],
        P,
    )
    .await;
    let r2 = commit(store, vec![update("/conf/d", "v2", r1)], P).await;
    let err = store
        .txn(vec![Op::Delete {
            key: "/conf/d".into(),
            expected: Some(r1),
        }])
        .await
        .expect_err("stale delete");
    expect_conflict(&err, "/conf/d", r1, r2, P);
    assert_kv(store, "/conf/d", "v2", r1, r2, P).await;
    commit(
        store,
        vec![Op::Delete {
            key: "/conf/d".into(),
            expected: Some(r2),
        }],
        P,
    )
    .await;
    assert_eq!(
        get(store, "/conf/d", P).await,
        None,
        "{P}: a deleted key was found"
    );
    commit(
        store,
        vec![Op::Delete {
            key: "/conf/e".into(),
            expected: None,
        }],
        P,
    )
    .await;
    assert_eq!(
        get(store, "/conf/e", P).await,
        None,
        "{P}: a deleted key was found"
    );
    let r5 = commit(store, vec![create("/conf/d", "v3")], P).await;
    assert_kv(store, "/conf/d", "v3", r5, r5, P).await;
}

/// Updating or deleting a key that does not exist fails with [`StoreError::NotFound`].
pub async fn missing_key_not_found(store: &dyn Store) {
    const P: &str = "missing_key_not_found";
    let base = commit(store, vec![create("/conf/other", "x")], P).await;
    let attempts = [
        update("/conf/missing", "v", base),
        update("/conf/missing", "v", 0),
        Op::Delete {
            key: "/conf/missing".into(),
            expected: None,
        },
        Op::Delete {
            key: "/conf/missing".into(),
            expected: Some(base),
        },
    ];
    for op in attempts {
        match store.txn(vec![op.clone()]).await {
            Err(StoreError::NotFound { key }) => assert_eq!(key, "/conf/missing", "{P}: {op:?}"),
            other => panic!("{P}: {op:?} must fail with NotFound, got {other:?}"),
        }
    }
    assert_eq!(
        revision(store, P).await,
        base,
        "{P}: a failed txn moved the revision"
    );
}

/// A transaction with one failing operation applies none of them and takes no revision; a
/// successful one applies all of them at one revision.
pub async fn txn_all_or_nothing(store: &dyn Store) {
    const P: &str = "txn_all_or_nothing";
    let r1 = commit(store, vec![create("/t/x", "1"), create("/t/y", "1")], P).await;
    let failing: Vec<(&str, Vec<Op>)> = vec![
        (
            "create of an existing key",
            vec![create("/t/a", "1"), create("/t/x", "2")],
        ),
        (
            "stale update",
            vec![create("/t/b", "1"), update("/t/x", "2", r1 + 7)],
        ),
        (
            "delete of a missing key",
            vec![
                update("/t/x", "2", r1),
                Op::Delete {
                    key: "/t/missing".into(),
                    expected: None,
                },
            ],
        ),
        (
            "stale delete",
            vec![
                Op::Delete {
                    key: "/t/y".into(),
                    expected: Some(r1 + 1),
                },
                create("/t/c", "1"),
            ],
        ),
        (
            "a key touched twice",
            vec![create("/t/d", "1"), create("/t/d", "2")],
        ),
    ];
    for (what, ops) in failing {
        if let Ok(rev) = store.txn(ops).await {
            panic!("{P}: a txn with a {what} committed at revision {rev}");
        }
        assert_eq!(
            revision(store, P).await,
            r1,
            "{P}: a failed txn ({what}) moved the revision"
        );
        let (kvs, _) = store
            .list("/t/")
            .await
            .unwrap_or_else(|e| panic!("{P}: list: {e}"));
        let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            ["/t/x", "/t/y"],
            "{P}: a failed txn ({what}) left changes behind"
        );
        assert_kv(store, "/t/x", "1", r1, r1, P).await;
    }
    let ops = vec![
        create("/t/a", "1"),
        update("/t/x", "2", r1),
        Op::Delete {
            key: "/t/y".into(),
            expected: Some(r1),
        },
    ];
    let r2 = commit(store, ops, P).await;
    assert_eq!(r2, r1 + 1, "{P}: a txn takes exactly one revision");
    assert_kv(store, "/t/a", "1", r2, r2, P).await;
    assert_kv(store, "/t/x", "2", r1, r2, P).await;
    assert_eq!(
        get(store, "/t/y", P).await,
        None,
        "{P}: the txn's delete was not applied"
    );
}

/// An empty transaction succeeds, returns the current revision and produces no watch batch.
pub async fn empty_txn(store: &dyn Store) {
    const P: &str = "empty_txn";
    let base = revision(store, P).await;
    assert_eq!(
        store
            .txn(vec![])
            .await
            .unwrap_or_else(|e| panic!("{P}: {e}")),
        base,
        "{P}: on an empty store"
    );
    let r1 = commit(store, vec![create("/e/a", "1")], P).await;
    let mut w = watch(store, "/", r1, P).await;
    assert_eq!(
        store
            .txn(vec![])
            .await
            .unwrap_or_else(|e| panic!("{P}: {e}")),
        r1,
        "{P}: empty txn revision"
    );
    assert_eq!(
        revision(store, P).await,
        r1,
        "{P}: an empty txn moved the revision"
    );
    let r2 = commit(store, vec![create("/e/b", "1")], P).await;
    assert_eq!(r2, r1 + 1, "{P}: an empty txn took a revision");
    let got = collect(&mut w, r2, P).await;
    assert_eq!(
        revisions(&got),
        [r2],
        "{P}: an empty txn produced a watch batch"
    );
}

/// A watch from a revision replays every later transaction touching the prefix, in order, one
/// batch per transaction holding all (and only) its events under the prefix in operation
/// order, then continues live.
pub async fn watch_ordered_atomic(store: &dyn Store) {
    const P: &str = "watch_ordered_atomic";
    let base = revision(store, P).await;
    let ra = commit(store, vec![create("/a/1", "a1"), create("/x/1", "x1")], P).await;
    let rb = commit(store, vec![create("/ab/1", "ab"), create("/x/2", "x2")], P).await;
    let rc = commit(
        store,
        vec![
            update("/a/1", "a1'", ra),
            create("/a/2", "a2"),
            Op::Delete {
                key: "/x/1".into(),
                expected: None,
            },
        ],
        P,
    )
    .await;
    let rd = commit(
        store,
        vec![Op::Delete {
            key: "/a/1".into(),
            expected: Some(rc),
        }],
        P,
    )
    .await;
    let re = commit(
        store,
        vec![
            create("/a/5", "a5"),
            create("/a/3", "a3"),
            create("/a/4", "a4"),
        ],
        P,
    )
    .await;
    let kv = |key: &str, value: &str, c: Revision, m: Revision| KeyValue {
        key: key.into(),
        value: value.as_bytes().into(),
        create_revision: c,
        mod_revision: m,
    };
    let expected = vec![
        WatchBatch {
            revision: ra,
            events: vec![WatchEvent::Put(kv("/a/1", "a1", ra, ra))],
        },
        WatchBatch {
            revision: rc,
            events: vec![
                WatchEvent::Put(kv("/a/1", "a1'", ra, rc)),
                WatchEvent::Put(kv("/a/2", "a2", rc, rc)),
            ],
        },
        WatchBatch {
            revision: rd,
            events: vec![WatchEvent::Delete {
                prev: kv("/a/1", "a1'", ra, rc),
                revision: rd,
            }],
        },
        WatchBatch {
            revision: re,
            events: vec![
                WatchEvent::Put(kv("/a/5", "a5", re, re)),
                WatchEvent::Put(kv("/a/3", "a3", re, re)),
                WatchEvent::Put(kv("/a/4", "a4", re, re)),
            ],
        },
    ];
    let mut w = watch(store, "/a/", base, P).await;
    assert_eq!(
        collect(&mut w, re, P).await,
        expected,
        "{P}: replay from {base}"
    );
    assert_idle(&mut w, P);
    let mut from_a = watch(store, "/a/", ra, P).await;
    assert_eq!(
        collect(&mut from_a, re, P).await,
        expected[1..],
        "{P}: replay from {ra}"
    );

    let rf = commit(store, vec![create("/x/3", "x"), create("/a/6", "a6")], P).await;
    let live = vec![WatchBatch {
        revision: rf,
        events: vec![WatchEvent::Put(kv("/a/6", "a6", rf, rf))],
    }];
    assert_eq!(collect(&mut w, rf, P).await, live, "{P}: live batch");
    assert_eq!(
        collect(&mut from_a, rf, P).await,
        live,
        "{P}: live batch after a replay"
    );
    assert_idle(&mut w, P);
    let mut ab = watch(store, "/ab/", base, P).await;
    let got = collect(&mut ab, rb, P).await;
    assert_eq!(
        revisions(&got),
        [rb],
        "{P}: /ab/ must not see /a/ (or the reverse)"
    );
}

/// A watch open while several writers commit concurrently sees every transaction touching its
/// prefix exactly once, in revision order, and the same batches as a later replay.
pub async fn watch_concurrent_writers(store: Arc<dyn Store>, writers: usize, txns_each: usize) {
    const P: &str = "watch_concurrent_writers";
    let base = revision(&*store, P).await;
    let mut live = watch(&*store, "/cw/", base, P).await;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut revs = Vec::with_capacity(txns_each);
                for i in 0..txns_each {
                    let ops = vec![
                        create(&format!("/cw/{w}/{i}"), "v"),
                        create(&format!("/other/{w}/{i}"), "v"),
                    ];
                    revs.push(commit(&*store, ops, P).await);
                    if i % 2 == 0 {
                        // Also commit transactions outside the prefix.
                        commit(&*store, vec![create(&format!("/other/{w}/{i}/x"), "v")], P).await;
                    }
                    tokio::task::yield_now().await;
                }
                revs
            })
        })
        .collect();
    let mut touched = BTreeSet::new();
    for task in tasks {
        let revs = task
            .await
            .unwrap_or_else(|e| panic!("{P}: writer failed: {e}"));
        touched.extend(revs);
    }
    let want: Vec<Revision> = touched.iter().copied().collect();
    assert_eq!(
        want.len(),
        writers * txns_each,
        "{P}: two transactions got the same revision"
    );
    let last = *want.last().expect("at least one write");
    let got = collect(&mut live, last, P).await;
    assert_eq!(
        revisions(&got),
        want,
        "{P}: the live watch must see each transaction once, in order"
    );
    for b in &got {
        assert_eq!(
            b.events.len(),
            1,
            "{P}: batch {} must hold only its /cw/ event",
            b.revision
        );
        let WatchEvent::Put(kv) = &b.events[0] else {
            panic!("{P}: batch {} is not a put", b.revision)
        };
        assert!(
            kv.key.starts_with("/cw/"),
            "{P}: batch {} holds {}",
            b.revision,
            kv.key
        );
        assert_eq!(
            kv.mod_revision, b.revision,
            "{P}: event revision differs from its batch"
        );
    }
    assert_idle(&mut live, P);
    let mut replay = watch(&*store, "/cw/", base, P).await;
    assert_eq!(
        collect(&mut replay, last, P).await,
        got,
        "{P}: replay differs from the live watch"
    );
}

/// A watch can be resumed: watching again from the last revision seen delivers exactly the
/// rest, with no gap and no duplicate.
pub async fn watch_resume(store: &dyn Store) {
    const P: &str = "watch_resume";
    let base = revision(store, P).await;
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(commit(store, vec![create(&format!("/r/{i}"), "v")], P).await);
    }
    let mut first = watch(store, "/r/", base, P).await;
    let seen = collect(&mut first, revs[3], P).await;
    assert_eq!(revisions(&seen), revs[..4], "{P}: first watch");
    drop(first);
    let mut resumed = watch(store, "/r/", revs[3], P).await;
    let rest = collect(&mut resumed, revs[9], P).await;
    assert_eq!(revisions(&rest), revs[4..], "{P}: resumed watch");
    let next = commit(store, vec![create("/r/10", "v")], P).await;
    assert_eq!(
        revisions(&collect(&mut resumed, next, P).await),
        [next],
        "{P}: resumed watch goes live"
    );
    assert_idle(&mut resumed, P);
}

/// After compaction through revision `c`, a watch from before `c` fails with
/// [`StoreError::Compacted`]; a watch from `c` or later still works; keys are untouched.
pub async fn watch_compacted(store: &dyn Store, compact: &dyn Compact) {
    const P: &str = "watch_compacted";
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(commit(store, vec![create(&format!("/k/{i}"), "v")], P).await);
    }
    compact
        .compact(revs[2])
        .await
        .unwrap_or_else(|e| panic!("{P}: compact: {e}"));
    for after in [revs[0], revs[1]] {
        match store.watch("/k/", after).await {
            Err(StoreError::Compacted { requested, oldest }) => {
                assert_eq!(requested, after, "{P}: Compacted names the wrong request");
                assert!(
                    oldest >= revs[2] && oldest <= revs[4],
                    "{P}: oldest {oldest} after compacting {}",
                    revs[2]
                );
            }
            Err(e) => panic!("{P}: watch from {after} must fail with Compacted, got {e:?}"),
            Ok(_) => panic!(
                "{P}: watch from {after} succeeded after compacting through {}",
                revs[2]
            ),
        }
    }
    let mut w = watch(store, "/k/", revs[2], P).await;
    assert_eq!(
        revisions(&collect(&mut w, revs[4], P).await),
        revs[3..],
        "{P}: watch from the compaction point"
    );
    let (kvs, _) = store
        .list("/k/")
        .await
        .unwrap_or_else(|e| panic!("{P}: list: {e}"));
    assert_eq!(kvs.len(), 5, "{P}: compaction removed keys");
    let mut at_head = watch(store, "/k/", revs[4], P).await;
    let next = commit(store, vec![create("/k/5", "v")], P).await;
    assert_eq!(
        revisions(&collect(&mut at_head, next, P).await),
        [next],
        "{P}: watch from the head"
    );
}

/// `writers` tasks each add 1 to a counter `increments` times by read-modify-write, retrying
/// on [`StoreError::Conflict`]: no update is lost, so the counter ends at the number of
/// successful writes. Returns how many conflicts were retried.
pub async fn lost_update(store: Arc<dyn Store>, writers: usize, increments: usize) -> usize {
    const P: &str = "lost_update";
    const KEY: &str = "/counter";
    let base = commit(&*store, vec![create(KEY, "0")], P).await;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let (mut successes, mut conflicts) = (0usize, 0usize);
                while successes < increments {
                    let kv = get(&*store, KEY, P)
                        .await
                        .unwrap_or_else(|| panic!("{P}: the counter vanished"));
                    let n: u64 = std::str::from_utf8(&kv.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .expect("counter value");
                    // Let the other writers interleave between the read and the write.
                    tokio::task::yield_now().await;
                    match store
                        .txn(vec![update(KEY, &(n + 1).to_string(), kv.mod_revision)])
                        .await
                    {
                        Ok(_) => successes += 1,
                        Err(e @ StoreError::Conflict { .. }) => {
                            assert!(e.is_transient(), "{P}: Conflict must be transient");
                            conflicts += 1;
                        }
                        Err(e) => panic!("{P}: unexpected error: {e}"),
                    }
                }
                (successes, conflicts)
            })
        })
        .collect();
    let (mut successes, mut conflicts) = (0, 0);
    for task in tasks {
        let (s, c) = task
            .await
            .unwrap_or_else(|e| panic!("{P}: writer failed: {e}"));
        successes += s;
        conflicts += c;
    }
    let kv = get(&*store, KEY, P)
        .await
        .unwrap_or_else(|| panic!("{P}: the counter vanished"));
    assert_eq!(
        &*kv.value,
        successes.to_string().as_bytes(),
        "{P}: {successes} increments, {conflicts} conflicts"
    );
    assert_eq!(successes, writers * increments, "{P}: writer accounting");
    assert_eq!(
        kv.mod_revision,
        base + successes as Revision,
        "{P}: one revision per successful write"
    );
    conflicts
}

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

async fn commit(store: &dyn Store, ops: Vec<Op>, property: &str) -> Revision {
    let what = format!("{ops:?}");
    store
        .txn(ops)
        .await
        .unwrap_or_else(|e| panic!("{property}: txn {what} failed: {e}"))
}

async fn revision(store: &dyn Store, property: &str) -> Revision {
    store
        .revision()
        .await
        .unwrap_or_else(|e| panic!("{property}: revision: {e}"))
}

async fn get(store: &dyn Store, key: &str, property: &str) -> Option<KeyValue> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("{property}: get {key}: {e}"))
}

async fn assert_kv(
    store: &dyn Store,
    key: &str,
    value: &str,
    create: Revision,
    modified: Revision,
    property: &str,
) {
    let kv = get(store, key, property)
        .await
        .unwrap_or_else(|| panic!("{property}: {key} is missing"));
    let want = KeyValue {
        key: key.into(),
        value: value.as_bytes().into(),
        create_revision: create,
        mod_revision: modified,
    };
    assert_eq!(kv, want, "{property}: get {key}");
}

fn expect_conflict(
    err: &StoreError,
    key: &str,
    expected: Revision,
    actual: Revision,
    property: &str,
) {
    match err {
        StoreError::Conflict {
            key: k,
            expected: e,
            actual: a,
        } => {
            assert_eq!(
                (k.as_str(), *e, *a),
                (key, expected, actual),
                "{property}: conflict fields"
            );
        }
        other => panic!("{property}: expected a Conflict, got {other:?}"),
    }
    let message = err.to_string();
    for part in [key.to_string(), expected.to_string(), actual.to_string()] {
        assert!(
            message.contains(&part),
            "{property}: conflict message {message:?} does not say {part}"
        );
    }
    assert!(err.is_transient(), "{property}: Conflict must be transient");
}

async fn watch(store: &dyn Store, prefix: &str, after: Revision, property: &str) -> WatchStream {
    store
        .watch(prefix, after)
        .await
        .unwrap_or_else(|e| panic!("{property}: watch {prefix} after {after}: {e}"))
}

/// Reads batches until one at `through` or later, skipping progress notifications.
async fn collect(stream: &mut WatchStream, through: Revision, property: &str) -> Vec<WatchBatch> {
    let mut out: Vec<WatchBatch> = Vec::new();
    while out.last().is_none_or(|b| b.revision < through) {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(b))) if b.events.is_empty() => {}
            Ok(Some(Ok(b))) => out.push(b),
            Ok(Some(Err(e))) => panic!("{property}: watch failed after {:?}: {e}", revisions(&out)),
            Ok(None) => panic!(
                "{property}: watch ended after {:?}, before revision {through}",
                revisions(&out)
            ),
            Err(_) => panic!(
                "{property}: no batch within {WAIT:?} after {:?}; waiting for {through}",
                revisions(&out)
            ),
        }
    }
    out
}

/// Fails if a batch with events is already waiting on `stream`.
fn assert_idle(stream: &mut WatchStream, property: &str) {
    while let Some(item) = stream.next().now_or_never() {
        match item {
            Some(Ok(b)) if b.events.is_empty() => {}
            other => panic!("{property}: unexpected extra watch item {other:?}"),
        }
    }
}

fn revisions(batches: &[WatchBatch]) -> Vec<Revision> {
    batches.iter().map(|b| b.revision).collect()
}
