//! The `Store` trait: a revisioned key/value store with compare-and-swap, all-or-nothing
//! transactions and watches that resume from a revision. The shape follows etcd v3 so that
//! an etcd-backed store is a thin mapping.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::model::object::{Kind, Object};

/// A store revision. Every committed transaction gets the next one; 0 means "nothing yet".
pub type Revision = u64;

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `/services/default/web`.
    pub key: String,
    /// The value bytes.
    pub value: Arc<[u8]>,
    /// Revision of the transaction that created the key.
    pub create_revision: Revision,
    /// Revision of the transaction that last wrote the key.
    pub mod_revision: Revision,
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create `key`; fails with [`StoreError::AlreadyExists`] if it exists.
    Create {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Replace `key` if its mod revision is still `expected`; fails with
    /// [`StoreError::Conflict`] otherwise, or [`StoreError::NotFound`] if it is gone.
    Update {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The mod revision the caller read.
        expected: Revision,
    },
    /// Delete `key`; with `expected`, only if its mod revision still matches.
    Delete {
        /// The key.
        key: String,
        /// The mod revision the caller read, or `None` to delete whatever is there.
        expected: Option<Revision>,
    },
    /// Writes nothing: the transaction applies only if `key` exists and was created at
    /// revision `created`; otherwise it fails with [`StoreError::Fenced`]. A leader's writes
    /// carry one on its leader key (see `orch_core::leader`), so a deposed leader's writes
    /// never land: a new term's key has another create revision.
    Check {
        /// The key.
        key: String,
        /// The create revision it must have.
        created: Revision,
    },
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Create { key, .. }
            | Op::Update { key, .. }
            | Op::Delete { key, .. }
            | Op::Check { key, .. } => key,
        }
    }
}

/// What a watch reports for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or updated.
    Put(KeyValue),
    /// The key was deleted at `revision`; `prev` is the last value.
    Delete {
        /// The deleted key's last value.
        prev: KeyValue,
        /// The revision of the delete.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { prev, .. } => &prev.key,
        }
    }
}

/// Every event of one committed transaction that matches a watch, delivered together.
/// A batch with no events is a progress notification: the store has reached `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// The transaction's revision.
    pub revision: Revision,
    /// Its events under the watched prefix, in operation order.
    pub events: Vec<WatchEvent>,
}

/// A stream of batches in revision order; an `Err` ends it.
pub type WatchStream = BoxStream<'static, Result<WatchBatch, StoreError>>;

/// Errors from a store. [`StoreError::is_transient`] says whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-swap saw another revision.
    #[error("conflict on {key}: expected revision {expected}, found {actual} (the object changed since it was read; read it again and retry)")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The revision the store holds (0 if none).
        actual: Revision,
    },
    /// A create found the key already there.
    #[error("{key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// An update or delete found no such key.
    #[error("{key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// An [`Op::Check`] failed: `key` is gone or was created at another revision — the term
    /// the write belonged to has ended.
    #[error("write fenced: {key} was created at revision {actual}, not {expected} (the leadership term this write belongs to has ended; another manager leads now)")]
    Fenced {
        /// The fence key.
        key: String,
        /// The create revision the write required.
        expected: Revision,
        /// The key's create revision now (0 if gone).
        actual: Revision,
    },
    /// A watch asked for history the store no longer has.
    #[error("revision {requested} has been compacted (oldest kept is {oldest}); list again and watch from the listed revision")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still watchable.
        oldest: Revision,
    },
    /// A request or value over a size limit.
    #[error("{what} is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The store cannot be reached right now; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A watcher fell too far behind and was dropped; watch again from its last revision.
    #[error("watch fell behind and was cancelled; watch again from the last revision seen")]
    WatchLagged,
    /// Stored bytes could not be decoded.
    #[error("corrupt value at {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Anything else.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether the same request may succeed if retried later (possibly after re-reading).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. }
                | StoreError::Unavailable(_)
                | StoreError::WatchLagged
                | StoreError::Compacted { .. }
        )
    }
}

/// A revisioned key/value store.
///
/// Semantics every implementation keeps (and `orch-store`'s conformance suite checks):
/// - every committed [`Store::txn`] takes the next revision, applies all its operations or none;
/// - `list` returns a consistent snapshot and the revision it was taken at;
/// - `watch(prefix, rev)` delivers every transaction after `rev` touching `prefix`, in order,
///   one batch per transaction, with no gaps or duplicates, or [`StoreError::Compacted`].
#[async_trait]
pub trait Store: Send + Sync {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Reads every key under `prefix` (in key order) and the revision of the snapshot.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;
    /// Applies `ops` atomically; returns the new revision.
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError>;
    /// Streams every change under `prefix` after revision `after`.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;
    /// The latest committed revision.
    async fn revision(&self) -> Result<Revision, StoreError>;
    /// Most operations one [`Store::txn`] accepts (etcd: 128 by default); larger
    /// transactions fail with [`StoreError::TooLarge`]. Writers that do not need one atomic
    /// transaction split their work with [`txn_chunked`].
    fn max_txn_ops(&self) -> usize {
        usize::MAX
    }
}

#[async_trait]
impl<T: Store + ?Sized> Store for Arc<T> {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        (**self).get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        (**self).list(prefix).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        (**self).txn(ops).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        (**self).watch(prefix, after).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        (**self).revision().await
    }
    fn max_txn_ops(&self) -> usize {
        (**self).max_txn_ops()
    }
}

#[async_trait]
impl<T: Store + ?Sized> Store for Box<T> {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        (**self).get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        (**self).list(prefix).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        (**self).txn(ops).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        (**self).watch(prefix, after).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        (**self).revision().await
    }
    fn max_txn_ops(&self) -> usize {
        (**self).max_txn_ops()
    }
}

/// Most operations the engine writes in one transaction (see [`txn_chunked`]).
pub const MAX_TXN_OPS: usize = 5_000;

/// Applies `ops` as consecutive transactions of at most `limit` operations and of at most
/// the store's [`Store::max_txn_ops`], in order; returns the revision of the last one (`None`
/// when `ops` is empty). Each chunk is atomic, the whole is not: for writers whose operations
/// are independent (status updates, bindings, events) and that re-read and retry on failure.
/// Stops at the first failing chunk; chunks before it stay applied.
pub async fn txn_chunked(
    store: &dyn Store,
    ops: Vec<Op>,
    limit: usize,
) -> Result<Option<Revision>, StoreError> {
    let size = limit.min(store.max_txn_ops()).max(1);
    let mut last = None;
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let chunk: Vec<Op> = ops.by_ref().take(size).collect();
        last = Some(store.txn(chunk).await?);
    }
    Ok(last)
}

/// Decodes a stored object, naming the key on failure.
pub fn decode(kv: &KeyValue) -> Result<Object, StoreError> {
    Object::decode(&kv.value, kv.mod_revision).map_err(|e| StoreError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}

/// Typed reads on top of any [`Store`].
pub async fn get_object(
    store: &dyn Store,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Option<Object>, StoreError> {
    match store.get(&kind.key(namespace, name)).await? {
        Some(kv) => decode(&kv).map(Some),
        None => Ok(None),
    }
}

/// Lists objects of `kind` (in `namespace`, or all namespaces when `None`).
pub async fn list_objects(
    store: &dyn Store,
    kind: Kind,
    namespace: Option<&str>,
) -> Result<(Vec<Object>, Revision), StoreError> {
    let prefix = match namespace {
        Some(ns) if kind.namespaced() => format!("{}{}/", kind.prefix(), ns),
        _ => kind.prefix(),
    };
    let (kvs, rev) = store.list(&prefix).await?;
    let objs = kvs.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    Ok((objs, rev))
}

/// An update of `obj` guarded by the revision it was read at.
pub fn update_op(obj: &Object) -> Op {
    Op::Update {
        key: obj.key(),
        value: obj.encode(),
        expected: obj.metadata().revision,
    }
}

/// A create of `obj`.
pub fn create_op(obj: &Object) -> Op {
    Op::Create {
        key: obj.key(),
        value: obj.encode(),
    }
}

/// A delete of `obj` guarded by the revision it was read at.
pub fn delete_op(obj: &Object) -> Op {
    Op::Delete {
        key: obj.key(),
        expected: Some(obj.metadata().revision),
    }
}
