//! Property test: random sequences of creates, updates, deletes (with current or stale
//! revisions), fences (`Op::Check` on a key's current, a stale or no create revision, beside
//! writes) and multi-op transactions give the same results, error kinds, final keys,
//! revision and watch history on `EmbeddedStore`, `MemStore` and a simple model; the embedded
//! store gives them again after a reopen. A second embedded store checkpoints every other
//! commit, so its values are partly in memory and partly only in its file (read back by gets,
//! lists and deletes' events).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use orch_core::memstore::MemStore;
use orch_core::store::{KeyValue, Op, Revision, Store, StoreError, WatchBatch, WatchEvent};
use orch_store::{EmbeddedOptions, EmbeddedStore};
use proptest::prelude::*;

const KEYS: &[&str] = &["/a/0", "/a/1", "/a/2", "/ab/0", "/b/0"];

/// Which revision an operation claims to have read.
#[derive(Clone, Debug)]
enum Claim {
    /// The key's current mod revision.
    Current,
    /// A revision ahead of the current one by this much.
    Ahead(u64),
    /// Revision 0, before anything.
    Zero,
}

#[derive(Clone, Debug)]
enum AbstractOp {
    Create(usize, u8),
    Update(usize, u8, Claim),
    Delete(usize, Option<Claim>),
    /// A fence on the key's create revision (claimed as for the others).
    Check(usize, Claim),
}

fn claim() -> impl Strategy<Value = Claim> {
    prop_oneof![3 => Just(Claim::Current), 1 => (1u64..3).prop_map(Claim::Ahead), 1 => Just(Claim::Zero)]
}

fn abstract_op() -> impl Strategy<Value = AbstractOp> {
    let key = 0..KEYS.len();
    prop_oneof![
        (key.clone(), any::<u8>()).prop_map(|(k, v)| AbstractOp::Create(k, v)),
        (key.clone(), any::<u8>(), claim()).prop_map(|(k, v, c)| AbstractOp::Update(k, v, c)),
        (key, proptest::option::of(claim())).prop_map(|(k, c)| AbstractOp::Delete(k, c)),
    ]
}

fn check() -> impl Strategy<Value = AbstractOp> {
    (0..KEYS.len(), claim()).prop_map(|(k, c)| AbstractOp::Check(k, c))
}

/// One step: a transaction of zero or more operations (sometimes touching a key twice), with
/// fences put among them. Checks come only beside a write: a transaction of checks alone
/// writes nothing, and the stores differ on whether that takes a revision (MemStore and the
/// embedded store: yes, etcd: no).
fn step() -> impl Strategy<Value = Vec<AbstractOp>> {
    let writes = prop_oneof![3 => abstract_op().prop_map(|op| vec![op]), 2 => proptest::collection::vec(abstract_op(), 0..4)];
    (
        writes,
        proptest::collection::vec((check(), any::<prop::sample::Index>()), 0..3),
    )
        .prop_map(|(mut ops, checks)| {
            if ops.is_empty() {
                return ops;
            }
            for (check, at) in checks {
                let at = at.index(ops.len() + 1);
                ops.insert(at, check);
            }
            ops
        })
}

/// The comparable part of an error.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ErrKind {
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    AlreadyExists(String),
    NotFound(String),
    Fenced {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    Other,
}

fn kind(e: StoreError) -> ErrKind {
    match e {
        StoreError::Conflict {
            key,
            expected,
            actual,
        } => ErrKind::Conflict {
            key,
            expected,
            actual,
        },
        StoreError::AlreadyExists { key } => ErrKind::AlreadyExists(key),
        StoreError::NotFound { key } => ErrKind::NotFound(key),
        StoreError::Fenced {
            key,
            expected,
            actual,
        } => ErrKind::Fenced {
            key,
            expected,
            actual,
        },
        _ => ErrKind::Other,
    }
}

/// The model: keys with revisions, a revision counter and every committed batch.
#[derive(Default)]
struct Model {
    keys: BTreeMap<String, KeyValue>,
    revision: Revision,
    history: Vec<WatchBatch>,
}

impl Model {
    fn resolve(&self, ops: &[AbstractOp]) -> Vec<Op> {
        let claim = |current: Revision, c: &Claim| match c {
            Claim::Current => current,
            Claim::Ahead(d) => current + d,
            Claim::Zero => 0,
        };
        let created =
            |key: &str, c: &Claim| claim(self.keys.get(key).map_or(0, |kv| kv.create_revision), c);
        let claimed = |key: &str, c: &Claim| {
            let current = self.keys.get(key).map_or(0, |kv| kv.mod_revision);
            match c {
                Claim::Current => current,
                Claim::Ahead(d) => current + d,
                Claim::Zero => 0,
            }
        };
        ops.iter()
            .map(|op| match op {
                AbstractOp::Create(k, v) => Op::Create {
                    key: KEYS[*k].into(),
                    value: vec![*v],
                },
                AbstractOp::Update(k, v, c) => Op::Update {
                    key: KEYS[*k].into(),
                    value: vec![*v],
                    expected: claimed(KEYS[*k], c),
                },
                AbstractOp::Delete(k, c) => Op::Delete {
                    key: KEYS[*k].into(),
                    expected: c.as_ref().map(|c| claimed(KEYS[*k], c)),
                },
                AbstractOp::Check(k, c) => Op::Check {
                    key: KEYS[*k].into(),
                    created: created(KEYS[*k], c),
                },
            })
            .collect()
    }

    fn txn(&mut self, ops: &[Op]) -> Result<Revision, ErrKind> {
        if ops.is_empty() {
            return Ok(self.revision);
        }
        let rev = self.revision + 1;
        let mut seen = HashSet::new();
        let mut events = Vec::new();
        for op in ops {
            // A fence passes when the key's create revision (0: no key) is the one claimed.
            if let Op::Check { key, created } = op {
                if !seen.insert(key.as_str()) {
                    return Err(ErrKind::Other);
                }
                let actual = self.keys.get(key).map_or(0, |kv| kv.create_revision);
                if actual != *created {
                    return Err(ErrKind::Fenced {
                        key: key.clone(),
                        expected: *created,
                        actual,
                    });
                }
                continue;
            }
            if !seen.insert(op.key()) {
                return Err(ErrKind::Other);
            }
            let existing = self.keys.get(op.key());
            let check = |expected: Revision| match existing {
                None => Err(ErrKind::NotFound(op.key().into())),
                Some(kv) if kv.mod_revision != expected => Err(ErrKind::Conflict {
                    key: op.key().into(),
                    expected,
                    actual: kv.mod_revision,
                }),
                Some(kv) => Ok(kv.clone()),
            };
            events.push(match op {
                Op::Check { .. } => unreachable!("checks are handled above"),
                Op::Create { key, value } => match existing {
                    Some(_) => return Err(ErrKind::AlreadyExists(key.clone())),
                    None => WatchEvent::Put(KeyValue {
                        key: key.clone(),
                        value: value.as_slice().into(),
                        create_revision: rev,
                        mod_revision: rev,
                    }),
                },
                Op::Update {
                    key,
                    value,
                    expected,
                } => {
                    let kv = check(*expected)?;
                    WatchEvent::Put(KeyValue {
                        key: key.clone(),
                        value: value.as_slice().into(),
                        create_revision: kv.create_revision,
                        mod_revision: rev,
                    })
                }
                Op::Delete { expected, .. } => {
                    let prev = match expected {
                        Some(e) => check(*e)?,
                        None => existing
                            .cloned()
                            .ok_or_else(|| ErrKind::NotFound(op.key().into()))?,
                    };
                    WatchEvent::Delete {
                        prev,
                        revision: rev,
                    }
                }
            });
        }
        for e in &events {
            match e {
                WatchEvent::Put(kv) => self.keys.insert(kv.key.clone(), kv.clone()),
                WatchEvent::Delete { prev, .. } => self.keys.remove(&prev.key),
            };
        }
        self.revision = rev;
        self.history.push(WatchBatch {
            revision: rev,
            events,
        });
        Ok(rev)
    }
}

async fn history(store: &dyn Store, through: Revision) -> Vec<WatchBatch> {
    let mut w = store.watch("", 0).await.unwrap();
    let mut out: Vec<WatchBatch> = Vec::new();
    while out.last().map_or(0, |b| b.revision) < through {
        let next = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
        out.push(
            next.expect("watch stalled")
                .expect("watch ended")
                .expect("watch failed"),
        );
    }
    out
}

async fn assert_same(name: &str, store: &dyn Store, model: &Model) {
    let (kvs, rev) = store.list("").await.unwrap();
    assert_eq!(rev, model.revision, "{name}: revision");
    assert_eq!(
        kvs,
        model.keys.values().cloned().collect::<Vec<_>>(),
        "{name}: keys"
    );
    assert_eq!(
        history(store, model.revision).await,
        model.history,
        "{name}: watch history"
    );
}

async fn run(steps: Vec<Vec<AbstractOp>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let embedded = EmbeddedStore::open(&path).unwrap();
    let checkpointing_path = dir.path().join("checkpointing.redb");
    let checkpointing = EmbeddedOptions {
        checkpoint_commits: 2,
        ..EmbeddedOptions::default()
    };
    let flushing = EmbeddedStore::open_with(&checkpointing_path, checkpointing.clone()).unwrap();
    let mem = MemStore::new();
    let mut model = Model::default();
    for step in &steps {
        let ops = model.resolve(step);
        let want = model.txn(&ops);
        let from_mem = mem.txn(ops.clone()).await.map_err(kind);
        let from_embedded = embedded.txn(ops.clone()).await.map_err(kind);
        let from_flushing = flushing.txn(ops.clone()).await.map_err(kind);
        assert_eq!(from_mem, want, "memstore: {ops:?}");
        assert_eq!(from_embedded, want, "embedded: {ops:?}");
        assert_eq!(from_flushing, want, "embedded, checkpointing: {ops:?}");
        for key in KEYS {
            assert_eq!(
                flushing.get(key).await.unwrap().as_ref(),
                model.keys.get(*key),
                "embedded, checkpointing: get {key}"
            );
        }
    }
    assert_same("memstore", &mem, &model).await;
    assert_same("embedded", &embedded, &model).await;
    assert_same("embedded, checkpointing", &flushing, &model).await;
    drop((embedded, flushing));
    assert_same(
        "embedded, checkpointing, after reopen",
        &EmbeddedStore::open_with(&checkpointing_path, checkpointing).unwrap(),
        &model,
    )
    .await;
    assert_same(
        "embedded after reopen",
        &EmbeddedStore::open(&path).unwrap(),
        &model,
    )
    .await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn stores_agree_with_the_model(steps in proptest::collection::vec(step(), 0..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(steps));
    }
}
