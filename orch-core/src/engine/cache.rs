//! The shared cache (a reflector): one list + watch over the whole store keeps decoded
//! objects in memory with indexes by service and by node, and tells subscribers what changed.
//! After a compaction or a broken watch it lists again and tells subscribers to resync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::model::object::{
    DesiredState, Kind, Labels, Node, Object, Owner, Placement, Protocol, Replica, Service,
    Template,
};
use crate::scheduler::{ClusterSnapshot, LabelCount, NodeInfo};
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

/// A subscriber: hears each change as it is applied; `false` ends the subscription.
type Subscriber = Box<dyn FnMut(&Change) -> bool + Send>;

#[derive(Default)]
struct State {
    objects: HashMap<Kind, BTreeMap<Arc<str>, Arc<Object>>>,
    by_service: HashMap<String, BTreeSet<Arc<str>>>,
    by_node: HashMap<String, BTreeSet<Arc<str>>>,
    synced: bool,
    /// One template and placement per revision hash, shared by the replicas: at a million
    /// replicas a copy each would cost gigabytes.
    shared: HashMap<String, SharedRevision>,
    /// One copy of each distinct replica label map (by hash), shared by the replicas that
    /// carry it: the replicas of a service have equal labels, but services with equal
    /// templates share a revision hash and differ in their `orch/service` label.
    labels: HashMap<u64, Vec<Labels>>,
    /// Objects stored since `shared` was last pruned.
    since_prune: usize,
    /// What the replicas bound to each node use, kept as replicas come and go: the
    /// scheduler's snapshot is read from here instead of being rebuilt from every replica.
    placed: HashMap<String, Placed>,
    /// Replicas waiting for a node (unbound and meant to run), in key order.
    pending: BTreeSet<Arc<str>>,
    /// One shared copy of each (namespace, labels) set the nodes' summaries hold, by hash.
    label_sets: HashMap<u64, Vec<LabelSet>>,
}

/// What the replicas of one revision hash share (services with equal templates share one).
struct SharedRevision {
    template: Arc<Template>,
    placement: Arc<Placement>,
}

impl SharedRevision {
    /// Whether a replica other than those of `shared` still holds any of it.
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.template) > 1 || Arc::strong_count(&self.placement) > 1
    }
}

/// A namespace and a label set, shared between node summaries and snapshots.
type LabelSet = (Arc<str>, Arc<BTreeMap<String, String>>);

/// The replicas bound to one node, summed (see [`NodeInfo`](crate::scheduler::NodeInfo)).
#[derive(Default)]
struct Placed {
    cpu: u64,
    memory: u64,
    replicas: u32,
    ports: BTreeMap<(Protocol, u16), u32>,
    per_service: HashMap<String, u32>,
    label_sets: BTreeMap<LabelSet, u32>,
}

impl Placed {
    /// Adds (`add`) or takes away one replica's share; `set` is its shared label set.
    fn count(&mut self, r: &Replica, set: LabelSet, add: bool) {
        fn step<K: Ord>(map: &mut BTreeMap<K, u32>, key: K, add: bool) {
            if add {
                *map.entry(key).or_default() += 1;
            } else if let Some(c) = map.get_mut(&key) {
                *c -= 1;
                if *c == 0 {
                    map.remove(&key);
                }
            }
        }
        let t = &r.spec.template;
        let (cpu, memory) = (
            t.resources.cpu.map(|c| c.0).unwrap_or(0),
            t.resources.memory.map(|m| m.0).unwrap_or(0),
        );
        if add {
            self.cpu += cpu;
            self.memory += memory;
            self.replicas += 1;
        } else {
            self.cpu = self.cpu.saturating_sub(cpu);
            self.memory = self.memory.saturating_sub(memory);
            self.replicas = self.replicas.saturating_sub(1);
        }
        for port in t.host_ports() {
            step(&mut self.ports, port, add);
        }
        let service = service_index(r);
        if add {
            *self.per_service.entry(service).or_default() += 1;
        } else if let Some(c) = self.per_service.get_mut(&service) {
            *c -= 1;
            if *c == 0 {
                self.per_service.remove(&service);
            }
        }
        step(&mut self.label_sets, set, add);
    }

    /// `info` (a node with nothing placed) with these replicas placed on it.
    fn fill(&self, info: &mut NodeInfo) {
        info.cpu_used = self.cpu;
        info.memory_used = self.memory;
        info.replicas = self.replicas;
        info.ports_used = self.ports.keys().copied().collect();
        info.per_service = self.per_service.clone();
        info.replica_labels = self
            .label_sets
            .iter()
            .map(|((namespace, labels), count)| LabelCount {
                namespace: namespace.clone(),
                labels: labels.clone(),
                count: *count,
            })
            .collect();
    }
}

/// How many stores between prunings of the shared revisions no replica uses any more.
const PRUNE_EVERY: usize = 16_384;

fn service_index(r: &Replica) -> String {
    format!("{}/{}", r.metadata.namespace, r.spec.service)
}

impl State {
    /// The shared copy of a namespace and label set.
    fn label_set(&mut self, ns: &str, labels: &Labels) -> LabelSet {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (ns, labels).hash(&mut h);
        let bucket = self.label_sets.entry(h.finish()).or_default();
        if let Some(set) = bucket.iter().find(|(n, l)| **n == *ns && **l == **labels) {
            return set.clone();
        }
        // A copy of its own, not the replicas' shared map: pruning drops a set no summary
        // uses, and a revision no replica uses, by their reference counts.
        let set: LabelSet = (ns.into(), Arc::new((**labels).clone()));
        bucket.push(set.clone());
        set
    }

    /// Makes a replica share its revision's template and placement (when equal; a differing
    /// copy under the same hash is kept as is) and its label map with the replicas already
    /// cached.
    fn share(&mut self, obj: &mut Object) {
        let Object::Replica(r) = obj else { return };
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY {
            self.since_prune = 0;
            self.shared.retain(|_, rev| rev.in_use());
            self.labels.retain(|_, maps| {
                maps.retain(|l| Arc::strong_count(l.shared()) > 1);
                !maps.is_empty()
            });
            self.label_sets.retain(|_, sets| {
                sets.retain(|(_, l)| Arc::strong_count(l) > 1);
                !sets.is_empty()
            });
        }
        match self.shared.get(&r.spec.template_hash) {
            Some(rev) => {
                if rev.template == r.spec.template {
                    r.spec.template = rev.template.clone();
                }
                if rev.placement == r.spec.placement {
                    r.spec.placement = rev.placement.clone();
                }
            }
            None => {
                self.shared.insert(
                    r.spec.template_hash.clone(),
                    SharedRevision {
                        template: r.spec.template.clone(),
                        placement: r.spec.placement.clone(),
                    },
                );
            }
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        r.metadata.labels.hash(&mut h);
        let maps = self.labels.entry(h.finish()).or_default();
        match maps.iter().find(|l| **l == r.metadata.labels) {
            Some(l) => r.metadata.labels = l.clone(),
            None => maps.push(r.metadata.labels.clone()),
        }
    }

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
            let set = self.label_set(&r.metadata.namespace, &r.metadata.labels);
            let placed = self.placed.entry(n.clone()).or_default();
            placed.count(r, set, add);
            if placed.replicas == 0 {
                self.placed.remove(n);
            }
        } else if r.spec.desired == DesiredState::Running {
            if add {
                self.pending.insert(key.clone());
            } else {
                self.pending.remove(key);
            }
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
    subscribers: Mutex<Vec<Subscriber>>,
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
    ///
    /// The changes queue in the channel until read, and a queued change holds both versions
    /// of an object: a reader that falls behind a million replica updates keeps a million
    /// replaced versions alive. Controllers that only turn changes into keys or flags use
    /// [`Cache::on_change`] instead.
    pub fn subscribe(
        &self,
        filter: impl Fn(&Change) -> bool + Send + Sync + 'static,
    ) -> mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.on_change(move |c| {
            if matches!(c, Change::Resync) || filter(c) {
                tx.send(c.clone()).is_ok()
            } else {
                !tx.is_closed()
            }
        });
        rx
    }

    /// Calls `f` with every change as the cache applies it (in order, on the cache's task,
    /// outside its lock; first with a `Resync` if the cache is already synced) until `f`
    /// returns `false`. Nothing queues, so a busy controller cannot hold replaced versions
    /// alive; in exchange `f` must be quick and must not block: it turns the change into
    /// work-queue keys or a flag. It may read the cache but not subscribe.
    pub fn on_change(&self, mut f: impl FnMut(&Change) -> bool + Send + 'static) {
        // Under the subscribers' lock, so no change slips between the resync and the first
        // change `f` hears.
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let synced = self.read().synced;
        if !synced || f(&Change::Resync) {
            subs.push(Box::new(f));
        }
    }

    fn notify(&self, changes: Vec<Change>) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain_mut(|f| changes.iter().all(&mut *f));
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

    /// The objects of a kind in namespace `ns` that `keep` accepts, in key order: a range of
    /// the kind's ordered map, so it costs the objects in that namespace, not all of them.
    pub fn list_in(
        &self,
        kind: Kind,
        ns: &str,
        keep: impl Fn(&Object) -> bool,
    ) -> Vec<Arc<Object>> {
        let prefix = kind.key(ns, "");
        let g = self.read();
        let Some(m) = g.objects.get(&kind) else {
            return Vec::new();
        };
        m.range::<str, _>((
            std::ops::Bound::Included(prefix.as_str()),
            std::ops::Bound::Unbounded,
        ))
        .take_while(|(k, _)| k.starts_with(prefix.as_str()))
        .filter(|(_, o)| keep(o))
        .map(|(_, o)| o.clone())
        .collect()
    }

    /// A service by key.
    pub fn service(&self, key: &str) -> Option<Service> {
        match self.get(Kind::Service, key)?.as_ref() {
            Object::Service(s) => Some((**s).clone()),
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

    /// The key of every service (without copying the services).
    pub(crate) fn service_keys(&self) -> Vec<crate::model::object::ObjectKey> {
        self.list(Kind::Service)
            .iter()
            .map(|o| {
                let m = o.metadata();
                crate::model::object::ObjectKey::new(Kind::Service, &m.namespace, &m.name)
            })
            .collect()
    }

    /// Every service.
    pub fn services(&self) -> Vec<Service> {
        self.list(Kind::Service)
            .iter()
            .filter_map(|o| {
                if let Object::Service(s) = o.as_ref() {
                    Some((**s).clone())
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

    /// How many replicas the cache holds, and how many of them are bound to a node (from the
    /// indexes: no copies, cheap to poll).
    pub fn replica_counts(&self) -> (usize, usize) {
        let g = self.read();
        let all = g.objects.get(&Kind::Replica).map_or(0, |m| m.len());
        let bound = g.by_node.values().map(|s| s.len()).sum();
        (all, bound)
    }

    /// The scheduler's view of the cluster: every node with what the replicas bound to it use.
    /// Kept current as objects change, so this costs a copy of the node summaries, not a walk
    /// over every replica. Equal to [`ClusterSnapshot::build`] over the cached nodes and
    /// bound replicas.
    pub fn snapshot(&self) -> ClusterSnapshot {
        Self::snapshot_of(&self.read())
    }

    /// The replicas waiting for a node (unbound, desired running; in key order, as shared
    /// handles) and the snapshot, read at one instant so that they agree; `None` when nothing
    /// is pending (then no snapshot is built).
    pub fn scheduling_view(&self) -> Option<(ClusterSnapshot, Vec<Arc<Object>>)> {
        let g = self.read();
        let all = g.objects.get(&Kind::Replica)?;
        let pending: Vec<Arc<Object>> = g
            .pending
            .iter()
            .filter_map(|k| all.get(k).cloned())
            .collect();
        if pending.is_empty() {
            return None;
        }
        Some((Self::snapshot_of(&g), pending))
    }

    fn snapshot_of(g: &State) -> ClusterSnapshot {
        let nodes = g
            .objects
            .get(&Kind::Node)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|o| match o.as_ref() {
                Object::Node(n) => {
                    let mut info = NodeInfo::of_node(n);
                    if let Some(p) = g.placed.get(&n.metadata.name) {
                        p.fill(&mut info);
                    }
                    Some(info)
                }
                _ => None,
            })
            .collect();
        ClusterSnapshot { nodes }
    }

    /// `(namespace, service)` of every service that has replicas in the cache (whether or not
    /// the service itself still exists).
    pub fn services_with_replicas(&self) -> Vec<(String, Owner)> {
        self.read()
            .by_service
            .keys()
            .filter_map(|k| k.split_once('/'))
            .map(|(ns, s)| (ns.to_string(), Owner::parse(s)))
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

    /// Names of the nodes being drained.
    pub fn draining_nodes(&self) -> std::collections::HashSet<String> {
        self.list(Kind::Node)
            .iter()
            .filter_map(|o| match o.as_ref() {
                Object::Node(n) if n.spec.draining => Some(n.metadata.name.clone()),
                _ => None,
            })
            .collect()
    }

    /// The replicas bound to `node`.
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
                Ok(mut o) => {
                    fresh.share(&mut o);
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
                        Ok(mut o) => {
                            g.share(&mut o);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::object::{
        Metadata, NodeSpec, NodeStatus, PortSpec, ReplicaSpec, ReplicaStatus, Resources,
    };
    use crate::model::quantity::{Cpu, Memory};
    use proptest::prelude::*;

    fn node(i: u8) -> Object {
        Object::Node(Node {
            metadata: Metadata {
                name: format!("n{i}"),
                labels: [("zone".to_string(), format!("z{}", i % 2))].into(),
                ..Metadata::default()
            },
            spec: NodeSpec::default(),
            status: NodeStatus {
                capacity: Resources {
                    cpu: Some(Cpu(4_000)),
                    memory: Some(Memory(1 << 30)),
                },
                ..NodeStatus::default()
            },
        })
    }

    /// Replica `i` of service `s % 3`, bound to node `n` (or pending), maybe with a fixed port.
    fn replica(i: u8, n: Option<u8>, running: bool, port: bool) -> Object {
        let svc = format!("s{}", i % 3);
        let mut template = Template {
            command: vec!["x".into()],
            resources: Resources {
                cpu: Some(Cpu(100 + u64::from(i % 4))),
                memory: Some(Memory(1 << 20)),
            },
            ..Template::default()
        };
        if port {
            template.ports.push(PortSpec {
                host_port: None,
                name: "p".into(),
                port: Some(8000 + u16::from(i % 2)),
                protocol: Protocol::default(),
            });
        }
        Object::Replica(Replica {
            metadata: Metadata {
                name: format!("r{i}"),
                namespace: ["a", "b"][usize::from(i % 2)].into(),
                labels: [("app".to_string(), svc.clone())].into(),
                ..Metadata::default()
            },
            spec: ReplicaSpec {
                service: svc.into(),
                template_hash: format!("h{}", i % 4),
                template: Arc::new(template),
                placement: Arc::default(),
                node: n.map(|n| format!("n{n}")),
                desired: if running {
                    DesiredState::Running
                } else {
                    DesiredState::Stopped
                },
            },
            status: ReplicaStatus::default(),
        })
    }

    #[test]
    fn list_in_is_one_namespace_only() {
        let cache = Cache::default();
        {
            let mut st = cache.state.write().unwrap();
            for (ns, i) in [("a", 0u8), ("ab", 1), ("a", 2), ("b", 3)] {
                let mut o = replica(i, None, true, false);
                o.metadata_mut().namespace = ns.into();
                st.put(Kind::Replica, o.key().into(), Arc::new(o));
            }
        }
        let names = |ns: &str| -> Vec<String> {
            cache
                .list_in(Kind::Replica, ns, |_| true)
                .iter()
                .map(|o| o.metadata().name.clone())
                .collect()
        };
        assert_eq!(names("a"), ["r0", "r2"], "not namespace ab");
        assert_eq!(names("ab"), ["r1"]);
        assert!(names("c").is_empty());
        assert!(cache.list_in(Kind::Route, "a", |_| true).is_empty());
    }

    #[test]
    fn replicas_share_templates_by_hash_and_label_maps_by_content() {
        let mut state = State::default();
        // r0 and r3 are of service s0, r1 of s1; r0, r1 and r4 have the same template hash
        // (services with equal templates) but s1's replicas carry other labels.
        let shared: Vec<Replica> = [0u8, 3, 1, 4]
            .into_iter()
            .map(|i| {
                let mut o = replica(i, None, true, false);
                if let Object::Replica(r) = &mut o {
                    r.spec.template_hash = "h".into();
                    r.spec.template = Arc::new(Template::default());
                }
                state.share(&mut o);
                o.as_replica().cloned().expect("a replica")
            })
            .collect();
        let [r0, r3, r1, r4] = &shared[..] else {
            unreachable!("four replicas")
        };
        assert!(r0.metadata.labels.shares(&r3.metadata.labels));
        assert!(!r0.metadata.labels.shares(&r1.metadata.labels));
        assert!(r1.metadata.labels.shares(&r4.metadata.labels));
        assert_eq!(
            r1.metadata.labels.get("app").map(String::as_str),
            Some("s1")
        );
        assert_eq!(
            r0.metadata.labels.get("app").map(String::as_str),
            Some("s0")
        );
        assert!(Arc::ptr_eq(&r0.spec.template, &r1.spec.template));
        // A change to one replica's labels copies them first (copy on write).
        let mut changed = r3.clone();
        changed.metadata.labels.insert("x".into(), "y".into());
        assert!(!r0.metadata.labels.contains_key("x"));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Put(Box<Object>),
        Delete(Kind, String),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..4).prop_map(|i| Step::Put(Box::new(node(i)))),
            (0u8..4).prop_map(|i| Step::Delete(Kind::Node, format!("n{i}"))),
            (
                0u8..12,
                proptest::option::of(0u8..5),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(i, n, run, port)| Step::Put(Box::new(replica(i, n, run, port)))),
            (0u8..12).prop_map(|i| Step::Delete(Kind::Replica, format!("r{i}"))),
        ]
    }

    proptest! {
        /// Whatever objects come and go, the snapshot and the pending list the cache keeps
        /// current equal what a rebuild from every cached object gives.
        #[test]
        fn kept_snapshot_equals_a_rebuild(steps in proptest::collection::vec(step(), 0..60)) {
            let mut st = State::default();
            let mut keys: HashMap<String, Arc<str>> = HashMap::new();
            for s in steps {
                match s {
                    Step::Put(o) => {
                        let mut o = *o;
                        let key: Arc<str> = o.key().into();
                        keys.insert(o.metadata().name.clone(), key.clone());
                        st.share(&mut o);
                        st.put(o.kind(), key, Arc::new(o));
                    }
                    Step::Delete(kind, name) => {
                        if let Some(k) = keys.get(&name).filter(|k| Kind::of_key(k) == Some(kind)) {
                            st.remove(kind, k);
                        }
                    }
                }
            }
            let nodes: Vec<Node> = st.objects.get(&Kind::Node).into_iter().flat_map(|m| m.values())
                .filter_map(|o| match o.as_ref() { Object::Node(n) => Some(n.clone()), _ => None })
                .collect();
            let replicas: Vec<&Replica> = st.objects.get(&Kind::Replica).into_iter()
                .flat_map(|m| m.values()).filter_map(|o| o.as_replica()).collect();
            let rebuilt = ClusterSnapshot::build(&nodes, replicas.iter().copied().filter(|r| r.spec.node.is_some()));
            prop_assert_eq!(Cache::snapshot_of(&st), rebuilt);
            let pending: Vec<String> = replicas.iter()
                .filter(|r| r.spec.node.is_none() && r.spec.desired == DesiredState::Running)
                .map(|r| r.metadata.name.clone()).collect();
            let kept: Vec<String> = st.pending.iter()
                .filter_map(|k| crate::model::object::ObjectKey::parse(k)).map(|k| k.name).collect();
            prop_assert_eq!(kept, pending);
        }
    }
}
