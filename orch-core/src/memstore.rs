//! An in-memory [`Store`] with revisions, compare-and-swap, transactions and watches,
//! and [`WatchHub`], the watch fan-out that durable stores reuse.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream_shim::UnboundedReceiverStream;

use crate::store::{
    KeyValue, Op, Revision, Store, StoreError, WatchBatch, WatchEvent, WatchStream,
};

/// Keeps recent history and fans committed batches out to watchers. Callers hold their own
/// lock around [`WatchHub::publish`] and [`WatchHub::watch`] so that a watch registered
/// between two commits sees neither a gap nor a duplicate.
pub struct WatchHub {
    history: VecDeque<(Revision, Arc<Vec<WatchEvent>>)>,
    history_events: usize,
    max_history_events: usize,
    /// History covers revisions after this one.
    compacted: Revision,
    watchers: Vec<Watcher>,
}

struct Watcher {
    prefix: String,
    /// Only revisions after this one are delivered.
    after: Revision,
    tx: mpsc::UnboundedSender<Result<WatchBatch, StoreError>>,
}

impl WatchHub {
    /// A hub whose history starts after `current` and keeps about `max_history_events` events.
    pub fn new(current: Revision, max_history_events: usize) -> WatchHub {
        WatchHub {
            history: VecDeque::new(),
            history_events: 0,
            max_history_events,
            compacted: current,
            watchers: Vec::new(),
        }
    }

    /// Records a committed transaction and sends it to matching watchers.
    pub fn publish(&mut self, revision: Revision, events: Vec<WatchEvent>) {
        let events = Arc::new(events);
        self.watchers.retain(|w| {
            let matching: Vec<WatchEvent> = events
                .iter()
                .filter(|e| e.key().starts_with(w.prefix.as_str()))
                .cloned()
                .collect();
            if matching.is_empty() || revision <= w.after {
                return !w.tx.is_closed();
            }
            w.tx.send(Ok(WatchBatch {
                revision,
                events: matching,
            }))
            .is_ok()
        });
        self.history_events += events.len();
        self.history.push_back((revision, events));
        while self.history_events > self.max_history_events && self.history.len() > 1 {
            if let Some((rev, evs)) = self.history.pop_front() {
                self.history_events -= evs.len();
                self.compacted = rev;
            }
        }
    }

    /// Drops history up to and including `revision`.
    pub fn compact(&mut self, revision: Revision) {
        while let Some((rev, evs)) = self.history.front() {
            if *rev > revision {
                break;
            }
            self.history_events -= evs.len();
            self.history.pop_front();
        }
        self.compacted = self.compacted.max(revision);
    }

    /// The oldest revision a watch may start after.
    pub fn compacted(&self) -> Revision {
        self.compacted
    }

    /// Registers a watch on `prefix` for every revision after `after`, replaying history.
    pub fn watch(
        &mut self,
        prefix: &str,
        after: Revision,
        current: Revision,
    ) -> Result<WatchStream, StoreError> {
        if after < self.compacted && after < current {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: self.compacted,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        for (rev, events) in self.history.iter().filter(|(rev, _)| *rev > after) {
            let matching: Vec<WatchEvent> = events
                .iter()
                .filter(|e| e.key().starts_with(prefix))
                .cloned()
                .collect();
            if !matching.is_empty() {
                let _ = tx.send(Ok(WatchBatch {
                    revision: *rev,
                    events: matching,
                }));
            }
        }
        self.watchers.push(Watcher {
            prefix: prefix.to_string(),
            after,
            tx,
        });
        Ok(UnboundedReceiverStream::new(rx).boxed())
    }

    /// Ends every watch with `err`-like errors (used when a store shuts down or fails).
    pub fn fail_all(&mut self, err: impl Fn() -> StoreError) {
        for w in self.watchers.drain(..) {
            let _ = w.tx.send(Err(err()));
        }
    }
}

/// Checks a transaction against the current keys and returns the resulting events, or the
/// first failing operation's error. Shared by every store that keeps its keys in a map.
pub fn plan_txn(
    ops: &[Op],
    revision: Revision,
    current: impl Fn(&str) -> Option<KeyValue>,
) -> Result<Vec<WatchEvent>, StoreError> {
    let mut seen = HashSet::new();
    let mut events = Vec::with_capacity(ops.len());
    for op in ops {
        if !seen.insert(op.key()) {
            return Err(StoreError::Other(
                format!("transaction touches {} twice", op.key()).into(),
            ));
        }
        let existing = current(op.key());
        match op {
            Op::Create { key, value } => {
                if existing.is_some() {
                    return Err(StoreError::AlreadyExists { key: key.clone() });
                }
                events.push(WatchEvent::Put(KeyValue {
                    key: key.clone(),
                    value: value.as_slice().into(),
                    create_revision: revision,
                    mod_revision: revision,
                }));
            }
            Op::Update {
                key,
                value,
                expected,
            } => {
                let Some(kv) = existing else {
                    return Err(StoreError::NotFound { key: key.clone() });
                };
                if kv.mod_revision != *expected {
                    return Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        actual: kv.mod_revision,
                    });
                }
                events.push(WatchEvent::Put(KeyValue {
                    key: key.clone(),
                    value: value.as_slice().into(),
                    create_revision: kv.create_revision,
                    mod_revision: revision,
                }));
            }
            Op::Delete { key, expected } => {
                let Some(kv) = existing else {
                    return Err(StoreError::NotFound { key: key.clone() });
                };
                if let Some(exp) = expected {
                    if kv.mod_revision != *exp {
                        return Err(StoreError::Conflict {
                            key: key.clone(),
                            expected: *exp,
                            actual: kv.mod_revision,
                        });
                    }
                }
                events.push(WatchEvent::Delete { prev: kv, revision });
            }
            Op::Check { key, created } => {
                let actual = existing.map_or(0, |kv| kv.create_revision);
                if actual != *created {
                    return Err(StoreError::Fenced {
                        key: key.clone(),
                        expected: *created,
                        actual,
                    });
                }
            }
        }
    }
    Ok(events)
}

struct Inner {
    data: BTreeMap<String, KeyValue>,
    revision: Revision,
    hub: WatchHub,
}

/// A [`Store`] held in memory: fast, not durable. For tests, embedding and `orchd up`.
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    /// An empty store keeping about 100,000 events of watch history.
    pub fn new() -> MemStore {
        MemStore::with_history(100_000)
    }

    /// An empty store keeping about `events` events of watch history.
    pub fn with_history(events: usize) -> MemStore {
        MemStore {
            inner: Arc::new(Mutex::new(Inner {
                data: BTreeMap::new(),
                revision: 0,
                hub: WatchHub::new(0, events),
            })),
        }
    }

    /// Forgets watch history up to `revision`, capped at the current revision (a later watch
    /// from before it gets `Compacted`).
    pub fn compact(&self, revision: Revision) {
        let mut g = self.lock();
        let rev = revision.min(g.revision);
        g.hub.compact(rev);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.lock().data.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let g = self.lock();
        let kvs = g
            .data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((kvs, g.revision))
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        let mut g = self.lock();
        if ops.is_empty() {
            return Ok(g.revision);
        }
        let rev = g.revision + 1;
        let events = plan_txn(&ops, rev, |k| g.data.get(k).cloned())?;
        for e in &events {
            match e {
                WatchEvent::Put(kv) => {
                    g.data.insert(kv.key.clone(), kv.clone());
                }
                WatchEvent::Delete { prev, .. } => {
                    g.data.remove(&prev.key);
                }
            }
        }
        g.revision = rev;
        g.hub.publish(rev, events);
        Ok(rev)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let mut g = self.lock();
        let current = g.revision;
        g.hub.watch(prefix, after, current)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.lock().revision)
    }
}

/// A tiny adapter so the crate needs no `tokio-stream` dependency.
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc::UnboundedReceiver;

    /// Wraps an unbounded receiver as a `Stream`.
    pub struct UnboundedReceiverStream<T>(UnboundedReceiver<T>);

    impl<T> UnboundedReceiverStream<T> {
        pub fn new(rx: UnboundedReceiver<T>) -> Self {
            UnboundedReceiverStream(rx)
        }
    }

    impl<T> futures::Stream for UnboundedReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Create {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn cas_and_watch() {
        let s = MemStore::new();
        let r1 = s
            .txn(vec![put("/a/1", "x"), put("/a/2", "y")])
            .await
            .unwrap();
        assert_eq!(r1, 1);
        let err = s
            .txn(vec![Op::Update {
                key: "/a/1".into(),
                value: b"z".to_vec(),
                expected: 0,
            }])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        let mut w = s.watch("/a/", 0).await.unwrap();
        let b = w.next().await.unwrap().unwrap();
        assert_eq!((b.revision, b.events.len()), (1, 2));
        s.txn(vec![Op::Update {
            key: "/a/1".into(),
            value: b"z".to_vec(),
            expected: 1,
        }])
        .await
        .unwrap();
        let b = w.next().await.unwrap().unwrap();
        assert_eq!(b.revision, 2);
        s.compact(2);
        assert!(matches!(
            s.watch("/a/", 1).await.err(),
            Some(StoreError::Compacted { .. })
        ));
    }
}
