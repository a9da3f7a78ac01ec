//! Several engines over one store with leader election: `StoreElector` over the in-memory
//! store, agents on the fake runtime, tokio's paused clock (leases, grace periods and
//! timeouts pass instantly and deterministically).
//!
//! Managers are engines with an elector and no agents; nodes are agent-only engines, one per
//! node, so a manager and a node can die apart. A manager is "killed" by shutting it down
//! with an elector whose resign does nothing (its renewals stop at once, as with SIGKILL, and
//! its lease must expire), or "frozen" by an elector that stops renewing and never reports
//! the loss (a deposed leader that has not noticed).

mod common;

use common::eventually;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use orch_core::engine::api;
use orch_core::fake::FakeRuntime;
use orch_core::leader::{Elector, Leadership, StoreElector, StoreElectorConfig, Term, LEADER_KEY};
use orch_core::memstore::MemStore;
use orch_core::model::manifest;
use orch_core::model::object::{DesiredState, Kind, NodeCondition, Object, Phase, Replica};
use orch_core::store::{KeyValue, Op, Revision, Store, StoreError, WatchEvent, WatchStream};
use orch_core::{AgentConfig, Engine, EngineConfig};
use orch_sched::DefaultScheduler;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(1);

fn service(name: &str, replicas: u32) -> Object {
    let y = format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [server]\n");
    manifest::parse("test.yaml", &y).unwrap().remove(0)
}

/// A `StoreElector` a test can freeze (it stops renewing and never reports the loss) and
/// kill (its resign does nothing).
struct TestElector {
    inner: StoreElector,
    frozen: tokio::sync::watch::Sender<bool>,
    resigns: AtomicBool,
}

impl TestElector {
    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

async fn frozen_now(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|f| *f).await;
}

#[async_trait]
impl Elector for TestElector {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn campaign(&self) -> Result<Term, StoreError> {
        let mut frozen = self.frozen.subscribe();
        tokio::select! {
            r = self.inner.campaign() => r,
            () = frozen_now(&mut frozen) => std::future::pending().await,
        }
    }
    async fn lost(&self, term: &Term) {
        let mut frozen = self.frozen.subscribe();
        tokio::select! {
            () = self.inner.lost(term) => {}
            // Frozen: the renewals stop (the inner future is dropped) and nobody is told.
            () = frozen_now(&mut frozen) => std::future::pending().await,
        }
    }
    async fn resign(&self, term: &Term) {
        if self.resigns.load(Ordering::SeqCst) {
            self.inner.resign(term).await
        }
    }
    async fn leader(&self) -> Result<Option<String>, StoreError> {
        self.inner.leader().await
    }
}

/// What a manager's store saw of one transaction.
#[derive(Clone, Debug)]
struct Txn {
    ops: Vec<Op>,
    result: Result<Revision, String>,
    fenced: bool,
}

/// A manager's view of the shared store that records every transaction it sends, and whose
/// watches can be held at the first batch that touches a replica (a cache that lags).
struct Spy {
    inner: Arc<MemStore>,
    log: Mutex<Vec<Txn>>,
    hold_replicas: tokio::sync::watch::Sender<bool>,
}

impl Spy {
    fn log(&self) -> Vec<Txn> {
        self.log.lock().unwrap().clone()
    }
}

#[async_trait]
impl Store for Spy {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.inner.list(prefix).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        let r = self.inner.txn(ops.clone()).await;
        self.log.lock().unwrap().push(Txn {
            ops,
            result: r.as_ref().map(|r| *r).map_err(|e| e.to_string()),
            fenced: matches!(r, Err(StoreError::Fenced { .. })),
        });
        r
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let hold = self.hold_replicas.subscribe();
        let stream = self.inner.watch(prefix, after).await?;
        Ok(stream
            .then(move |item| {
                let mut hold = hold.clone();
                async move {
                    let replicas = item
                        .as_ref()
                        .is_ok_and(|b| b.events.iter().any(|e| e.key().starts_with("/replicas/")));
                    if replicas {
                        let _ = hold.wait_for(|h| !*h).await;
                    }
                    item
                }
            })
            .boxed())
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
}

struct Manager {
    name: String,
    engine: Engine,
    elector: Arc<TestElector>,
    spy: Arc<Spy>,
}

impl Manager {
    fn leadership(&self) -> Leadership {
        self.engine.leadership().borrow().clone()
    }
    fn leading(&self) -> bool {
        self.leadership().leading
    }
    /// Shuts the manager down without resigning: its lease has to expire.
    async fn kill(self) {
        self.elector.resigns.store(false, Ordering::SeqCst);
        self.engine.shutdown().await;
    }
}

fn manager(store: &Arc<MemStore>, name: &str) -> Manager {
    let elector = Arc::new(TestElector {
        inner: StoreElector::new(
            store.clone(),
            name,
            StoreElectorConfig {
                key: LEADER_KEY.into(),
                ttl: TTL,
            },
        )
        .unwrap(),
        frozen: tokio::sync::watch::channel(false).0,
        resigns: AtomicBool::new(true),
    });
    let spy = Arc::new(Spy {
        inner: store.clone(),
        log: Mutex::new(Vec::new()),
        hold_replicas: tokio::sync::watch::channel(false).0,
    });
    let engine = Engine::builder(spy.clone(), Arc::new(DefaultScheduler))
        .elector(elector.clone())
        .start();
    Manager {
        name: name.into(),
        engine,
        elector,
        spy,
    }
}

/// A node: an agent-only engine with one agent on a fake runtime, over `store`.
fn node(store: Arc<dyn Store>, name: &str) -> (Engine, FakeRuntime) {
    let mut e = Engine::builder(store, Arc::new(DefaultScheduler))
        .agents_only()
        .start();
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new(name));
    (e, rt)
}

/// The replicas of `svc` in the store.
async fn stored_replicas(store: &MemStore, svc: &str) -> Vec<Replica> {
    let (objs, _) = orch_core::store::list_objects(store, Kind::Replica, Some("default"))
        .await
        .unwrap();
    objs.into_iter()
        .filter_map(|o| match o {
            Object::Replica(r) if r.spec.service.to_string() == svc => Some(r),
            _ => None,
        })
        .collect()
}

fn ready_in(rs: &[Replica]) -> usize {
    rs.iter().filter(|r| r.status.phase == Phase::Ready).count()
}

/// Polls the store (it is what counts) until `svc` has `n` Ready replicas.
async fn ready_replicas(store: &MemStore, svc: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rs = stored_replicas(store, svc).await;
        if ready_in(&rs) == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} ready replicas of {svc}: {rs:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The one manager that leads, waiting until exactly one does.
async fn the_leader(managers: &[&Manager]) -> usize {
    let mut found = None;
    eventually("exactly one leader", || {
        let leading: Vec<usize> = (0..managers.len())
            .filter(|i| managers[*i].leading())
            .collect();
        found = (leading.len() == 1).then(|| leading[0]);
        found.is_some()
    })
    .await;
    found.unwrap()
}

/// Every replica creation, deletion and stop written to the store after `after`, and every
/// node condition written, as seen by a watch (in store order).
#[derive(Default, Debug)]
struct History {
    created: Vec<String>,
    deleted: Vec<String>,
    stopped: Vec<String>,
    node_conditions: Vec<(String, NodeCondition)>,
    lost: Vec<String>,
}

fn record(store: &Arc<MemStore>, after: Revision) -> Arc<Mutex<History>> {
    let history = Arc::new(Mutex::new(History::default()));
    let (store, h) = (store.clone(), history.clone());
    tokio::spawn(async move {
        let mut w = store.watch("/", after).await.unwrap();
        while let Some(Ok(batch)) = w.next().await {
            let mut h = h.lock().unwrap();
            for e in batch.events {
                match e {
                    WatchEvent::Put(kv) if kv.key.starts_with("/replicas/") => {
                        let Ok(Object::Replica(r)) = orch_core::store::decode(&kv) else {
                            continue;
                        };
                        if kv.create_revision == kv.mod_revision {
                            h.created.push(r.metadata.name.clone());
                        }
                        if r.spec.desired == DesiredState::Stopped {
                            h.stopped.push(r.metadata.name.clone());
                        }
                        if r.status.phase == Phase::Lost {
                            h.lost.push(r.metadata.name.clone());
                        }
                    }
                    WatchEvent::Put(kv) if kv.key.starts_with("/nodes/") => {
                        if let Ok(Object::Node(n)) = orch_core::store::decode(&kv) {
                            h.node_conditions
                                .push((n.metadata.name.clone(), n.status.condition));
                        }
                    }
                    WatchEvent::Delete { prev, .. } if prev.key.starts_with("/replicas/") => {
                        h.deleted.push(prev.key.clone());
                    }
                    _ => {}
                }
            }
        }
    });
    history
}

fn set(v: Vec<String>) -> BTreeSet<String> {
    v.into_iter().collect()
}

#[tokio::test(start_paused = true)]
async fn of_three_engines_one_leads_and_only_it_runs_controllers() {
    let store = Arc::new(MemStore::new());
    let ms = [
        manager(&store, "m1"),
        manager(&store, "m2"),
        manager(&store, "m3"),
    ];
    let (na, _) = node(store.clone(), "node-a");
    let (nb, _) = node(store.clone(), "node-b");
    api::apply(&*store, vec![service("web", 3)], false)
        .await
        .unwrap();
    ready_replicas(&store, "web", 3).await;
    let refs: Vec<&Manager> = ms.iter().collect();
    let l = the_leader(&refs).await;
    let leader = &ms[l];
    // Standbys learn who leads within about a second.
    eventually("standbys know the leader", || {
        ms.iter()
            .all(|m| m.leadership().leader.as_deref() == Some(leader.name.as_str()))
    })
    .await;
    // Some time passes (paused clock): still one leader, the same.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(the_leader(&refs).await, l);
    let info = leader.leadership();
    let term = info.term.clone().unwrap();
    assert_eq!(term.holder, leader.name);
    assert_eq!(info.changes, 1);
    assert!(
        info.since.is_some() && info.first_reconcile.is_some(),
        "{info:?}"
    );
    assert!(info.first_reconcile >= info.since);
    for (i, m) in ms.iter().enumerate() {
        let text = m.engine.render_metrics();
        let log = m.spy.log();
        if i == l {
            assert!(text.contains("\norch_leader 1\n"), "{text}");
            assert!(text.contains("\norch_leader_changes_total 1\n"), "{text}");
            assert!(text.contains(&format!("\norch_leader_term {}\n", term.created)));
            assert!(!text.contains("\norch_leader_first_reconcile_seconds 0\n"));
            assert!(text.contains("controller=\"replication\",result=\"ok\""));
            // Every write the leader made carries its term's check (events, which record
            // what happened and change no state, go through the engine's one recorder
            // unfenced).
            let writes: Vec<&Txn> = log
                .iter()
                .filter(|t| !t.ops.iter().all(|op| op.key().starts_with("/events/")))
                .collect();
            assert!(!writes.is_empty());
            for t in writes {
                assert!(
                    t.ops.contains(&Op::Check {
                        key: LEADER_KEY.into(),
                        created: term.created
                    }),
                    "an unfenced write: {t:?}"
                );
            }
        } else {
            assert!(text.contains("\norch_leader 0\n"), "{text}");
            assert!(text.contains("\norch_leader_since_seconds 0\n"), "{text}");
            assert!(!text.contains("controller=\"replication\""), "{text}");
            assert!(log.is_empty(), "a standby wrote: {log:?}");
        }
    }
    for m in ms {
        m.engine.shutdown().await;
    }
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_clean_shutdown_resigns_and_a_standby_leads_at_once() {
    let store = Arc::new(MemStore::new());
    let mut ms = vec![manager(&store, "m1"), manager(&store, "m2")];
    let l = the_leader(&ms.iter().collect::<Vec<_>>()).await;
    let old = ms.remove(l);
    let before = old.leadership().term.unwrap();
    let t0 = Instant::now();
    old.engine.shutdown().await;
    let took_shutdown = t0.elapsed();
    eventually("the other leads", || ms[0].leading()).await;
    let took = t0.elapsed();
    assert!(
        took <= took_shutdown + Duration::from_millis(50),
        "led {took:?} after the shutdown began (the shutdown took {took_shutdown:?}): no TTL wait"
    );
    assert!(ms[0].leadership().term.unwrap().created > before.created);
    ms.remove(0).engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_killed_leader_is_succeeded_within_the_ttl_and_nothing_is_duplicated_or_stopped() {
    let store = Arc::new(MemStore::new());
    let mut ms = vec![
        manager(&store, "m1"),
        manager(&store, "m2"),
        manager(&store, "m3"),
    ];
    let (na, ra) = node(store.clone(), "node-a");
    let (nb, rb) = node(store.clone(), "node-b");
    api::apply(&*store, vec![service("web", 4)], false)
        .await
        .unwrap();
    ready_replicas(&store, "web", 4).await;
    let l = the_leader(&ms.iter().collect::<Vec<_>>()).await;
    let before = stored_replicas(&store, "web").await;
    let running_before: BTreeSet<String> = ra.running().into_iter().chain(rb.running()).collect();
    assert_eq!(running_before.len(), 4);
    let history = record(&store, store.revision().await.unwrap());

    // SIGKILL, as far as the store can tell: the renewals stop, nobody resigns.
    let old = ms.remove(l);
    let old_term = old.leadership().term.unwrap();
    let t0 = Instant::now();
    let killed = tokio::spawn(old.kill());
    // Meanwhile: a replica crashes (its agent restarts it), a replica object is deleted
    // (only a control plane brings it back) and a new service is applied.
    let crashed = ra.running()[0].clone();
    assert!(ra.crash(&crashed, Some(1), None));
    // Workload ids are NAMESPACE.NAME.
    let id = |r: &Replica| format!("default.{}", r.metadata.name);
    let deleted = before.iter().find(|r| id(r) != crashed).unwrap().clone();
    store
        .txn(vec![orch_core::store::delete_op(&Object::Replica(
            deleted.clone(),
        ))])
        .await
        .unwrap();
    api::apply(&*store, vec![service("api", 2)], false)
        .await
        .unwrap();

    let mut next = None;
    eventually("a successor leads", || {
        next = ms.iter().position(|m| m.leading());
        next.is_some()
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took <= TTL,
        "a successor led {took:?} after the kill (TTL {TTL:?})"
    );
    let next = &ms[next.unwrap()];
    eventually("the successor reconciled", || {
        next.leadership().first_reconcile.is_some()
    })
    .await;
    eprintln!(
        "figures: kill -> successor leads {took:?}, -> its first reconcile {:?} (TTL {TTL:?}, paused clock)",
        t0.elapsed()
    );
    let term = next.leadership().term.unwrap();
    assert!(term.created > old_term.created);
    ready_replicas(&store, "web", 4).await;
    ready_replicas(&store, "api", 2).await;
    let first = next.leadership().first_reconcile;
    assert!(first.is_some());
    killed.await.unwrap();

    // A while later (paused clock) nothing else happened.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = stored_replicas(&store, "web").await;
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(ready_in(&after), 4);
    assert_eq!(stored_replicas(&store, "api").await.len(), 2);
    let h = std::mem::take(&mut *history.lock().unwrap());
    // Created: the deleted replica's replacement and the two of api, once each.
    assert_eq!(h.created.len(), 3, "{h:?}");
    assert_eq!(
        h.deleted,
        vec![format!("/replicas/default/{}", deleted.metadata.name)]
    );
    assert!(h.stopped.is_empty(), "{h:?}");
    // Every workload that ran still runs (the crashed one restarted), except the deleted
    // replica's; with web's replacement and api's two, six.
    let running_after: BTreeSet<String> = ra.running().into_iter().chain(rb.running()).collect();
    assert_eq!(running_after.len(), 6, "{running_after:?}");
    let mut kept = running_before.clone();
    assert!(kept.remove(&id(&deleted)));
    assert!(
        kept.is_subset(&running_after),
        "{kept:?} ⊄ {running_after:?}"
    );
    assert!(running_after.contains(&crashed));
    let restarted = after.iter().find(|r| id(r) == crashed).unwrap();
    assert_eq!(restarted.status.restarts, 1, "{restarted:?}");
    // One leader from here on, the successor.
    assert_eq!(ms.iter().filter(|m| m.leading()).count(), 1);
    for m in ms {
        m.engine.shutdown().await;
    }
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leader_that_never_noticed_cannot_write() {
    let store = Arc::new(MemStore::new());
    let mut ms = vec![manager(&store, "m1"), manager(&store, "m2")];
    let (na, _) = node(store.clone(), "node-a");
    let (nb, _) = node(store.clone(), "node-b");
    api::apply(&*store, vec![service("web", 2)], false)
        .await
        .unwrap();
    ready_replicas(&store, "web", 2).await;
    let l = the_leader(&ms.iter().collect::<Vec<_>>()).await;
    let old = ms.remove(l);
    let old_term = old.leadership().term.unwrap();
    old.elector.freeze();
    let t0 = Instant::now();
    eventually("another leads", || ms[0].leading()).await;
    assert!(
        t0.elapsed() <= TTL + Duration::from_millis(20),
        "{:?}",
        t0.elapsed()
    );
    let new_term = ms[0].leadership().term.unwrap();
    // The old leader still believes it leads and runs its controllers.
    assert!(old.leading());
    assert_eq!(old.leadership().term.unwrap(), old_term);
    let from = old.spy.log().len();

    // Both control planes see new work; only the new one's writes land.
    api::scale(&*store, "default", "web", 4).await.unwrap();
    api::apply(&*store, vec![service("api", 3)], false)
        .await
        .unwrap();
    ready_replicas(&store, "web", 4).await;
    ready_replicas(&store, "api", 3).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let tried: Vec<Txn> = old.spy.log().split_off(from);
    assert!(
        tried.iter().any(|t| t.fenced),
        "the deposed leader tried to write: {tried:?}"
    );
    for t in &tried {
        assert!(
            t.fenced,
            "a write of the deposed leader that was not fenced: {t:?}"
        );
        assert!(t
            .result
            .as_ref()
            .unwrap_err()
            .contains("another manager leads now"));
    }
    // Landed writes of the old term all precede the new one.
    for t in old.spy.log() {
        if let Ok(rev) = t.result {
            assert!(rev < new_term.created, "{t:?} after {new_term:?}");
        }
    }
    assert_eq!(stored_replicas(&store, "web").await.len(), 4);
    assert_eq!(stored_replicas(&store, "api").await.len(), 3);
    // Shutting the deposed one down: its resign does not touch the successor's term.
    old.engine.shutdown().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ms[0].leading());
    assert_eq!(ms[0].leadership().term.unwrap(), new_term);
    assert_eq!(ms[0].leadership().changes, 1);
    for m in ms {
        m.engine.shutdown().await;
    }
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_reconciles_only_once_its_cache_holds_the_previous_terms_writes() {
    let store = Arc::new(MemStore::new());
    let m1 = manager(&store, "m1");
    eventually("m1 leads", || m1.leading()).await;
    let m2 = manager(&store, "m2");
    let (na, _) = node(store.clone(), "node-a");
    let (nb, _) = node(store.clone(), "node-b");
    api::apply(&*store, vec![service("web", 2)], false)
        .await
        .unwrap();
    ready_replicas(&store, "web", 2).await;
    // m2's cache sees the scale-up but not the replicas m1 creates for it.
    m2.spy.hold_replicas.send_replace(true);
    api::scale(&*store, "default", "web", 4).await.unwrap();
    ready_replicas(&store, "web", 4).await;
    eventually("m2 saw the scale-up", || {
        m2.engine
            .cache()
            .service("/services/default/web")
            .is_some_and(|s| s.spec.replicas == 4)
    })
    .await;
    assert_eq!(
        m2.engine
            .cache()
            .replicas_of_service("default", "web")
            .len(),
        2
    );
    let history = record(&store, store.revision().await.unwrap());
    m1.kill().await;
    // m2 wins the term but waits for its cache to reach it: a control plane on the stale
    // view would create two more replicas.
    let deadline = Instant::now() + Duration::from_secs(5);
    while m2.elector.leader().await.unwrap().as_deref() != Some("m2") {
        assert!(Instant::now() < deadline, "m2 never took the term");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stored_replicas(&store, "web").await.len(), 4);
    assert!(!m2.leading(), "{:?}", m2.leadership());
    m2.spy.hold_replicas.send_replace(false);
    eventually("m2 leads", || m2.leading()).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rs = stored_replicas(&store, "web").await;
    assert_eq!((rs.len(), ready_in(&rs)), (4, 4), "{rs:?}");
    let h = std::mem::take(&mut *history.lock().unwrap());
    assert!(h.created.is_empty() && h.deleted.is_empty(), "{h:?}");
    m2.engine.shutdown().await;
    na.shutdown().await;
    nb.shutdown().await;
}

/// The agents' path to the store: down while `down` is set (their manager died and they
/// have not reached another yet), so their heartbeats fail.
struct AgentLink {
    inner: Arc<MemStore>,
    down: tokio::sync::watch::Sender<bool>,
}

impl AgentLink {
    fn check(&self) -> Result<(), StoreError> {
        if *self.down.borrow() {
            Err(StoreError::Unavailable("the manager is gone".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for AgentLink {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.inner.list(prefix).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.txn(ops).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
}

#[tokio::test(start_paused = true)]
async fn no_node_is_marked_unreachable_across_a_failover() {
    let store = Arc::new(MemStore::new());
    let link = Arc::new(AgentLink {
        inner: store.clone(),
        down: tokio::sync::watch::channel(false).0,
    });
    let mut ms = vec![manager(&store, "m1"), manager(&store, "m2")];
    let nodes: Vec<(Engine, FakeRuntime)> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .map(|n| node(link.clone(), n))
        .collect();
    api::apply(&*store, vec![service("web", 6)], false)
        .await
        .unwrap();
    ready_replicas(&store, "web", 6).await;
    let l = the_leader(&ms.iter().collect::<Vec<_>>()).await;
    let history = record(&store, store.revision().await.unwrap());
    // The heartbeat period is 1 s and the grace 3 s: the agents are cut off for 2.5 s from
    // the kill, so their silence spans 3.5 s of wall time around a failover of about 1 s.
    let grace = EngineConfig::default().node_grace;
    assert_eq!(grace, Duration::from_secs(3));
    let old = ms.remove(l);
    link.down.send_replace(true);
    let killed = tokio::spawn(old.kill());
    let t0 = Instant::now();
    eventually("a successor leads", || ms[0].leading()).await;
    tokio::time::sleep_until(t0 + Duration::from_millis(2500)).await;
    link.down.send_replace(false);
    killed.await.unwrap();
    // Grace periods and the lost timeout (10 s) pass.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let h = std::mem::take(&mut *history.lock().unwrap());
    assert!(
        h.node_conditions
            .iter()
            .all(|(_, c)| *c == NodeCondition::Ready),
        "{:?}",
        h.node_conditions
    );
    assert!(h.lost.is_empty() && h.created.is_empty(), "{h:?}");
    let rs = stored_replicas(&store, "web").await;
    assert_eq!((rs.len(), ready_in(&rs)), (6, 6));
    for m in ms {
        m.engine.shutdown().await;
    }
    for (e, _) in nodes {
        e.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_killed_during_a_failover_is_replaced_exactly_once() {
    let store = Arc::new(MemStore::new());
    let mut ms = vec![
        manager(&store, "m1"),
        manager(&store, "m2"),
        manager(&store, "m3"),
    ];
    let mut nodes: BTreeMap<&str, (Engine, FakeRuntime)> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .map(|n| (n, node(store.clone(), n)))
        .collect();
    api::apply(&*store, vec![service("web", 6)], false)
        .await
        .unwrap();
    ready_replicas(&store, "web", 6).await;
    let l = the_leader(&ms.iter().collect::<Vec<_>>()).await;
    let on_c: BTreeSet<String> = stored_replicas(&store, "web")
        .await
        .into_iter()
        .filter(|r| r.spec.node.as_deref() == Some("node-c"))
        .map(|r| r.metadata.name)
        .collect();
    assert!(!on_c.is_empty(), "the scheduler spreads over three nodes");
    let history = record(&store, store.revision().await.unwrap());

    // The leader and node-c die together.
    let old = ms.remove(l);
    let t0 = Instant::now();
    let killed = tokio::spawn(old.kill());
    let (c, _) = nodes.remove("node-c").unwrap();
    let c_down = tokio::spawn(c.shutdown());
    eventually("a successor leads", || ms.iter().any(|m| m.leading())).await;
    killed.await.unwrap();
    c_down.await.unwrap();
    // node-c's replicas come back on a and b once the successor judged it lost.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rs = stored_replicas(&store, "web").await;
        let live = rs
            .iter()
            .filter(|r| r.spec.node.as_deref() != Some("node-c") && r.status.phase == Phase::Ready)
            .count();
        if live == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "{rs:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t0.elapsed();
    let cfg = EngineConfig::default();
    assert!(
        took >= cfg.node_lost_timeout
            && took <= TTL + cfg.node_lost_timeout + Duration::from_secs(2),
        "replaced {took:?} after the kill"
    );
    // A while later: each of node-c's replicas was replaced once, nothing else was created.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let h = std::mem::take(&mut *history.lock().unwrap());
    assert_eq!(set(h.lost.clone()), on_c, "{h:?}");
    assert_eq!(h.created.len(), on_c.len(), "{h:?}");
    assert!(h.stopped.iter().all(|s| on_c.contains(s)), "{h:?}");
    assert!(h
        .node_conditions
        .iter()
        .all(|(n, c)| *c == NodeCondition::Ready || *n == "node-c"));
    let rs = stored_replicas(&store, "web").await;
    let active: Vec<&Replica> = rs
        .iter()
        .filter(|r| r.spec.desired == DesiredState::Running && r.status.phase != Phase::Lost)
        .collect();
    assert_eq!(active.len(), 6, "{rs:?}");
    for m in ms {
        m.engine.shutdown().await;
    }
    for (_, (e, _)) in nodes {
        e.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_engine_without_an_elector_leads_while_its_control_plane_runs() {
    let store = Arc::new(MemStore::new());
    let mut e = Engine::builder(store.clone(), Arc::new(DefaultScheduler)).start();
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    api::apply(&*store, vec![service("web", 1)], false)
        .await
        .unwrap();
    ready_replicas(&store, "web", 1).await;
    let l = e.leadership().borrow().clone();
    assert!(l.leading && l.term.is_none() && l.leader.is_none(), "{l:?}");
    assert_eq!(l.changes, 1);
    assert!(l.first_reconcile.is_some());
    assert_eq!(
        *e.ctx().leadership().borrow(),
        l,
        "the engine's and the context's agree"
    );
    assert!(e.render_metrics().contains("\norch_leader 1\n"));
    e.stop_control_plane().await;
    let l = e.leadership().borrow().clone();
    assert!(!l.leading && l.first_reconcile.is_none(), "{l:?}");
    assert_eq!(l.changes, 2);
    assert!(e.render_metrics().contains("\norch_leader 0\n"));
    e.start_control_plane();
    api::scale(&*store, "default", "web", 2).await.unwrap();
    ready_replicas(&store, "web", 2).await;
    assert!(e.leadership().borrow().leading);
    e.shutdown().await;
}
