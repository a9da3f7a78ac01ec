//! The shared cache (a reflector): one list + watch over the whole store keeps decoded
//! objects in memory with indexes by service and by node, and tells subscribers what changed.
//! After a compaction or a broken watch it lists again and tells subscribers to resync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::object::{Kind, Node, Object, Replica, Service};
use crate::store::{decode, Revision, Store, StoreError, WatchEvent};

/// What a subscriber hears.
#[derive(Clone, Debug)]
pub enum Change {
    /// An object was created, updated or deleted (`new` is `None`).
    Object {
        /// Its kind.
        kind: Kind,
        /// Its store key.
        key: Arc<str>,
        /// The previous version, if any.
        old: Option<Arc<Object>>,
        /// The new version, if not deleted.
        new: Option<Arc<Object>>,
    },
    /// The cache was (re)built from a fresh list: reconcile everything.
    Resync,
}

type Filter = Box<dyn Fn(&Change) -> bool + Send + Sync>;

#[derive(Default)]
struct State {
    objects: HashMap<Kind, BTreeMap<Arc<str>, Arc<Object>>>,
    by_service: HashMap<String, BTreeSet<Arc<str>>>,
    by_node: HashMap<String, BTreeSet<Arc<str>>>,
    synced: bool,
}

fn service_index(r: &Replica) -> String {
    format!("{}/{}", r.metadata.namespace, r.spec.service)
}

impl State {
    fn index(&mut self, key: &Arc<str>, obj: &Object, add: bool) {
        let Object::Replica(r) = obj else { return };
        let update = |map: &mut HashMap<String, BTreeSet<Arc<str>>>, idx: String| {
            if add {
                map.entry(idx).or_default().insert(key.clone());
            } else if let Some(set) = map.get_mut(&idx) {
                set.remove(key);
                if set.is_empty() {
                    map.remove(&idx);
                }
            }
        };
        update(&mut self.by_service, service_index(r));
        if let Some(n) = &r.spec.node {
            update(&mut self.by_node, n.clone());
        }
    }

    fn put(&mut self, kind: Kind, key: Arc<str>, obj: Arc<Object>) -> Option<Arc<Object>> {
        let old = self
            .objects
            .entry(kind)
            .or_default()
            .insert(key.clone(), obj.clone());
        if let Some(o) = &old {
            self.index(&key, o, false);
        }
        self.index(&key, &obj, true);
        old
    }

    fn remove(&mut self, kind: Kind, key: &str) -> Option<Arc<Object>> {
        let (k, old) = self.objects.get_mut(&kind)?.remove_entry(key)?;
        self.index(&k, &old, false);
        Some(old)
    }
}

/// Decoded objects kept current by a watch; cheap to query, shared by all controllers.
pub struct Cache {
    state: RwLock<State>,
    revision: watch::Sender<Revision>,
    subscribers: Mutex<Vec<(Filter, mpsc::UnboundedSender<Change>)>>,
    live_since: Mutex<Option<tokio::time::Instant>>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            state: RwLock::default(),
            revision: watch::channel(0).0,
            subscribers: Mutex::default(),
            live_since: Mutex::default(),
        }
    }
}

impl Cache {
    /// An empty cache; [`Cache::run`] fills it.
    pub fn new() -> Arc<Cache> {
        Arc::new(Cache::default())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to changes that pass `filter`. A `Resync` is always delivered.
    pub fn subscribe(
        &self,
        filter: impl Fn(&Change) -> bool + Send + Sync + 'static,
    ) -> mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.read().synced {
            let _ = tx.send(Change::Resync);
        }
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Box::new(filter), tx));
        rx
    }

    fn notify(&self, changes: Vec<Change>) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|(filter, tx)| {
            for c in &changes {
                if (matches!(c, Change::Resync) || filter(c)) && tx.send(c.clone()).is_err() {
                    return false;
                }
            }
            true
        });
    }

    /// The last store revision the cache reflects.
    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// Waits until the cache reflects at least `rev` (so a controller sees its own writes).
    pub async fn wait_for(&self, rev: Revision) {
        let mut rx = self.revision.subscribe();
        let _ = rx.wait_for(|r| *r >= rev).await;
    }

    /// Since when the cache has followed the store without interruption (its current watch
    /// started); `None` while the store is unreachable. Controllers that judge silence (node
    /// heartbeats) count only time the store was reachable.
    pub fn live_since(&self) -> Option<tokio::time::Instant> {
        *self.live_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_live(&self, live: bool) {
        let mut l = self.live_since.lock().unwrap_or_else(|p| p.into_inner());
        match (live, l.is_some()) {
            (true, false) => *l = Some(tokio::time::Instant::now()),
            (false, true) => *l = None,
            _ => {}
        }
    }

    /// Whether the first list has completed.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    /// One object.
    pub fn get(&self, kind: Kind, key: &str) -> Option<Arc<Object>> {
        self.read().objects.get(&kind)?.get(key).cloned()
    }

    /// Every object of a kind, in key order.
    pub fn list(&self, kind: Kind) -> Vec<Arc<Object>> {
        self.read()
            .objects
            .get(&kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A service by key.
    pub fn service(&self, key: &str) -> Option<Service> {
        match self.get(Kind::Service, key)?.as_ref() {
            Object::Service(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// A replica by key.
    pub fn replica(&self, key: &str) -> Option<Replica> {
        match self.get(Kind::Replica, key)?.as_ref() {
            Object::Replica(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// Every service.
    pub fn services(&self) -> Vec<Service> {
        self.list(Kind::Service)
            .iter()
            .filter_map(|o| {
                if let Object::Service(s) = o.as_ref() {
                    Some(s.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    /// Every node.
    pub fn nodes(&self) -> Vec<Node> {
        self.list(Kind::Node)
            .iter()
            .filter_map(|o| {
                if let Object::Node(n) = o.as_ref() {
                    Some(n.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    /// Every replica.
    pub fn replicas(&self) -> Vec<Replica> {
        self.list(Kind::Replica)
            .iter()
            .filter_map(|o| {
                if let Object::Replica(r) = o.as_ref() {
                    Some(r.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    fn replicas_in(&self, index: impl Fn(&State) -> Option<&BTreeSet<Arc<str>>>) -> Vec<Replica> {
        let g = self.read();
        let Some(keys) = index(&g) else {
            return Vec::new();
        };
        let Some(all) = g.objects.get(&Kind::Replica) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| match all.get(k).map(|o| o.as_ref()) {
                Some(Object::Replica(r)) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// Replicas of `namespace/service` as shared handles (no copies; for hot paths).
    pub fn replica_objects_of_service(&self, namespace: &str, service: &str) -> Vec<Arc<Object>> {
        let idx = format!("{namespace}/{service}");
        let g = self.read();
        let (Some(keys), Some(all)) = (g.by_service.get(&idx), g.objects.get(&Kind::Replica))
        else {
            return Vec::new();
        };
        keys.iter().filter_map(|k| all.get(k).cloned()).collect()
    }

    /// Replicas of `namespace/service`.
    pub fn replicas_of_service(&self, namespace: &str, service: &str) -> Vec<Replica> {
        let idx = format!("{namespace}/{service}");
        self.replicas_in(|s| s.by_service.get(&idx))
    }

    /// Replicas bound to `node`.
    pub fn replicas_on_node(&self, node: &str) -> Vec<Replica> {
        self.replicas_in(|s| s.by_node.get(node))
    }

    /// Keeps the cache current until `cancel` fires: list, then watch; on any watch error
    /// (compaction, store outage) lists again after a backoff and announces a resync.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !cancel.is_cancelled() {
            let rev = match self.relist(&*store).await {
                Ok(rev) => rev,
                Err(e) => {
                    self.set_live(false);
                    tracing::warn!(error = %e, "cache: list failed; retrying in {backoff:?}");
                    tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let mut stream = match store.watch("/", rev).await {
                Ok(s) => s,
                Err(e) => {
                    self.set_live(false);
                    tracing::warn!(error = %e, "cache: watch failed");
                    tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            self.set_live(true);
            loop {
                let next =
                    tokio::select! { _ = cancel.cancelled() => return, n = stream.next() => n };
                match next {
                    Some(Ok(batch)) => self.apply(batch.revision, batch.events),
                    Some(Err(e)) => {
                        if matches!(e, StoreError::Compacted { .. }) {
                            tracing::info!(error = %e, "cache: watch ended; listing again");
                        } else {
                            self.set_live(false);
                            tracing::warn!(error = %e, "cache: watch ended; listing again");
                        }
                        break;
                    }
                    None => {
                        tracing::info!("cache: watch closed; listing again");
                        break;
                    }
                }
            }
        }
    }

    async fn relist(&self, store: &dyn Store) -> Result<Revision, StoreError> {
        let (kvs, rev) = store.list("/").await?;
        let mut fresh = State {
            synced: true,
            ..State::default()
        };
        for kv in &kvs {
            let Some(kind) = Kind::of_key(&kv.key) else {
                continue;
            };
            if kind == Kind::Event {
                continue;
            }
            match decode(kv) {
                Ok(o) => {
                    fresh.put(kind, kv.key.as_str().into(), Arc::new(o));
                }
                Err(e) => tracing::error!(error = %e, "cache: skipping undecodable object"),
            }
        }
        *self.write() = fresh;
        self.revision.send_replace(rev);
        self.notify(vec![Change::Resync]);
        Ok(rev)
    }

    fn apply(&self, rev: Revision, events: Vec<WatchEvent>) {
        let mut changes = Vec::with_capacity(events.len());
        {
            let mut g = self.write();
            for ev in events {
                let Some(kind) = Kind::of_key(ev.key()) else {
                    continue;
                };
                if kind == Kind::Event {
                    continue;
                }
                match ev {
                    WatchEvent::Put(kv) => match decode(&kv) {
                        Ok(o) => {
                            let key: Arc<str> = kv.key.as_str().into();
                            let new = Arc::new(o);
                            let old = g.put(kind, key.clone(), new.clone());
                            changes.push(Change::Object {
                                kind,
                                key,
                                old,
                                new: Some(new),
                            });
                        }
                        Err(e) => tracing::error!(error = %e, "cache: skipping undecodable object"),
                    },
                    WatchEvent::Delete { prev, .. } => {
                        let old = g.remove(kind, &prev.key);
                        changes.push(Change::Object {
                            kind,
                            key: prev.key.as_str().into(),
                            old,
                            new: None,
                        });
                    }
                }
            }
        }
        self.revision.send_replace(rev);
        if !changes.is_empty() {
            self.notify(changes);
        }
    }
}

impl Change {
    /// The kind the change is about (`None` for a resync).
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Change::Object { kind, .. } => Some(*kind),
            Change::Resync => None,
        }
    }

    /// The replica versions involved (old and new), for filters.
    pub fn replicas(&self) -> impl Iterator<Item = &Replica> {
        let (old, new) = match self {
            Change::Object { old, new, .. } => (old.as_deref(), new.as_deref()),
            Change::Resync => (None, None),
        };
        [old, new].into_iter().flatten().filter_map(|o| {
            if let Object::Replica(r) = o {
                Some(r)
            } else {
                None
            }
        })
    }
}
