//! Controller tests: the whole engine over the in-memory store and the fake runtime, with
//! tokio's paused clock (sleeps and backoffs advance instantly and deterministically).

mod common;

use common::{events_with, eventually, ready, replicas};

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use orch_core::engine::api;
use orch_core::fake::FakeRuntime;
use orch_core::memstore::MemStore;
use orch_core::model::manifest;
use orch_core::model::object::{
    DesiredState, Kind, Metadata, Node, NodeStatus, Object, Phase, Resources,
};
use orch_core::model::quantity::{Memory, Timestamp};
use orch_core::store::{create_op, KeyValue, Op, Revision, Store, StoreError, WatchStream};
use orch_core::{AgentConfig, Engine};
use orch_sched::DefaultScheduler;

fn service(name: &str, replicas: u32, extra: &str) -> Object {
    let y = format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [server]\n{extra}");
    manifest::parse("test.yaml", &y).unwrap().remove(0)
}

fn engine(store: Arc<MemStore>) -> Engine {
    Engine::builder(store, Arc::new(DefaultScheduler)).start()
}

/// The ready count in the service's status (written by the replication controller).
fn service_ready(e: &Engine, svc: &str) -> u32 {
    e.cache()
        .service(&format!("/services/default/{svc}"))
        .map_or(0, |s| s.status.ready_replicas)
}

#[tokio::test(start_paused = true)]
async fn replicas_converge_and_spread() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let (a, b) = (FakeRuntime::default(), FakeRuntime::default());
    e.add_agent(Arc::new(a.clone()), AgentConfig::new("node-a"));
    e.add_agent(Arc::new(b.clone()), AgentConfig::new("node-b"));
    api::apply(&*store, vec![service("web", 4, "")], false)
        .await
        .unwrap();
    eventually("4 ready", || ready(&e, "web") == 4).await;
    assert_eq!((a.running().len(), b.running().len()), (2, 2));
    eventually("status", || service_ready(&e, "web") == 4).await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn crash_restarts_immediately_then_backs_off() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    api::apply(&*store, vec![service("web", 1, "")], false)
        .await
        .unwrap();
    eventually("ready", || ready(&e, "web") == 1).await;
    let id = rt.running()[0].clone();
    let t0 = tokio::time::Instant::now();
    assert!(rt.crash(&id, Some(1), None));
    eventually("restarted once", || {
        replicas(&e, "web")[0].status.restarts == 1 && rt.running().len() == 1
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "first restart must be immediate, took {:?}",
        t0.elapsed()
    );
    // A second crash right away backs off one second.
    let t1 = tokio::time::Instant::now();
    assert!(rt.crash(&id, Some(1), None));
    eventually("back-off shown", || {
        replicas(&e, "web")[0].status.reason == "BackOff"
    })
    .await;
    eventually("restarted twice", || {
        replicas(&e, "web")[0].status.restarts == 2 && rt.running().len() == 1
    })
    .await;
    let waited = t1.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(1200),
        "second restart after ~1s, took {waited:?}"
    );
    // Third: two seconds.
    let t2 = tokio::time::Instant::now();
    assert!(rt.crash(&id, None, Some(9)));
    eventually("restarted thrice", || {
        replicas(&e, "web")[0].status.restarts == 3 && rt.running().len() == 1
    })
    .await;
    assert!(
        t2.elapsed() >= Duration::from_secs(2) && t2.elapsed() < Duration::from_millis(2200),
        "{:?}",
        t2.elapsed()
    );
    assert_eq!(
        replicas(&e, "web")[0]
            .status
            .last_exit
            .as_ref()
            .unwrap()
            .signal,
        Some(9)
    );
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn never_policy_leaves_exited_replicas() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    api::apply(
        &*store,
        vec![service("job", 1, "    restartPolicy: Never\n")],
        false,
    )
    .await
    .unwrap();
    eventually("ready", || ready(&e, "job") == 1).await;
    rt.crash(&rt.running()[0], Some(0), None);
    eventually("exited", || {
        replicas(&e, "job")
            .first()
            .is_some_and(|r| r.status.phase == Phase::Exited)
    })
    .await;
    // What is tested: nothing restarts it for 5 s (of the paused clock, so no real wait).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rt.start_count(), 1);
    assert_eq!(replicas(&e, "job").len(), 1);
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn scale_update_and_delete_converge() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    api::apply(&*store, vec![service("web", 3, "")], false)
        .await
        .unwrap();
    eventually("3 ready", || ready(&e, "web") == 3).await;
    api::scale(&*store, "default", "web", 5).await.unwrap();
    eventually("5 running", || {
        ready(&e, "web") == 5 && rt.running().len() == 5
    })
    .await;
    api::scale(&*store, "default", "web", 2).await.unwrap();
    eventually("2 running", || {
        replicas(&e, "web").len() == 2 && rt.running().len() == 2
    })
    .await;
    // Change the template: every replica is replaced, never fewer than 2 - 25% (rounded down: 2) ready... we sample.
    let old_hash = replicas(&e, "web")[0].spec.template_hash.clone();
    api::apply(
        &*store,
        vec![service("web", 2, "    env: [{name: COLOR, value: blue}]\n")],
        false,
    )
    .await
    .unwrap();
    eventually("rolled", || {
        let r = replicas(&e, "web");
        r.len() == 2
            && r.iter()
                .all(|r| r.spec.template_hash != old_hash && r.status.phase == Phase::Ready)
            && rt.running().len() == 2
    })
    .await;
    api::delete(&*store, Kind::Service, "default", "web")
        .await
        .unwrap();
    eventually("all gone", || {
        replicas(&e, "web").is_empty() && rt.running().is_empty()
    })
    .await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn rolling_update_keeps_availability() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    let upd = "  update: {maxSurge: 1, maxUnavailable: 0}\n";
    api::apply(&*store, vec![service("web", 4, upd)], false)
        .await
        .unwrap();
    eventually("4 ready", || ready(&e, "web") == 4).await;
    let y = format!("    env: [{{name: V, value: '2'}}]\n{upd}");
    api::apply(&*store, vec![service("web", 4, &y)], false)
        .await
        .unwrap();
    let hash = e
        .cache()
        .service("/services/default/web")
        .unwrap()
        .spec
        .revision_hash(&[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let reps = replicas(&e, "web");
        let ready_now = reps
            .iter()
            .filter(|r| r.status.phase == Phase::Ready && r.spec.desired == DesiredState::Running)
            .count();
        assert!(ready_now >= 4, "availability dropped to {ready_now}");
        assert!(
            reps.iter()
                .filter(|r| r.spec.desired == DesiredState::Running)
                .count()
                <= 5,
            "surge exceeded"
        );
        if reps.len() == 4
            && reps
                .iter()
                .all(|r| r.spec.template_hash == hash && r.status.phase == Phase::Ready)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "update did not finish"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn agent_restart_re_adopts_without_restarting() {
    let store = Arc::new(MemStore::new());
    let rt = FakeRuntime::default();
    let mut e = engine(store.clone());
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    api::apply(&*store, vec![service("web", 3, "")], false)
        .await
        .unwrap();
    eventually("3 ready", || ready(&e, "web") == 3).await;
    e.shutdown().await;
    let before = rt.start_count();
    let mut e2 = engine(store.clone());
    e2.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    eventually("synced", || e2.cache().synced()).await;
    // What is tested: 5 s (paused clock) after the restart nothing was started again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        rt.start_count(),
        before,
        "adoption must not restart anything"
    );
    assert_eq!(rt.running().len(), 3);
    assert_eq!(ready(&e2, "web"), 3);
    e2.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn orphans_are_stopped() {
    let store = Arc::new(MemStore::new());
    let rt = FakeRuntime::default();
    // A workload the runtime knows but no replica asks for.
    use orch_core::runtime::{Runtime, WorkloadSpec};
    let tmpl = match service("x", 1, "") {
        Object::Service(s) => s.spec.template,
        _ => unreachable!(),
    };
    rt.start(&WorkloadSpec {
        network: None,
        id: "default.ghost-abcde".into(),
        replica_uid: "u".into(),
        service: "ghost".into(),
        namespace: "default".into(),
        template: tmpl,
        template_hash: "h".into(),
        extra_env: vec![],
        dns: None,
        mounts: Vec::new(),
    })
    .await
    .unwrap();
    let mut e = engine(store.clone());
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    eventually("orphan stopped", || rt.running().is_empty()).await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn unschedulable_reports_why_then_places_when_a_node_fits() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let mut small = AgentConfig::new("small");
    small.capacity = Resources {
        cpu: None,
        memory: Some(Memory(64 << 20)),
    };
    e.add_agent(Arc::new(FakeRuntime::default()), small);
    api::apply(
        &*store,
        vec![service("big", 1, "    resources: {memory: 1Gi}\n")],
        false,
    )
    .await
    .unwrap();
    eventually("reason", || {
        replicas(&e, "big")
            .first()
            .is_some_and(|r| r.status.reason == "Unschedulable")
    })
    .await;
    assert_eq!(
        replicas(&e, "big")[0].status.message,
        "0/1 nodes are available: 1 insufficient memory"
    );
    let mut large = AgentConfig::new("large");
    large.capacity = Resources {
        cpu: None,
        memory: Some(Memory(4 << 30)),
    };
    e.add_agent(Arc::new(FakeRuntime::default()), large);
    eventually("placed", || {
        replicas(&e, "big").first().is_some_and(|r| {
            r.spec.node.as_deref() == Some("large") && r.status.phase == Phase::Ready
        })
    })
    .await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn replicas_of_a_silent_node_are_replaced() {
    let store = Arc::new(MemStore::new());
    // A node that registered once and then went silent (no agent runs it).
    let ghost = Node {
        metadata: Metadata {
            name: "ghost".into(),
            uid: "g".into(),
            ..Metadata::default()
        },
        spec: Default::default(),
        status: NodeStatus {
            runtimes: vec!["process".into()],
            heartbeat: Some(Timestamp::now()),
            ..NodeStatus::default()
        },
    };
    store
        .txn(vec![create_op(&Object::Node(ghost))])
        .await
        .unwrap();
    let mut e = engine(store.clone());
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("live"));
    api::apply(&*store, vec![service("web", 4, "")], false)
        .await
        .unwrap();
    eventually("2 ready on live", || ready(&e, "web") == 2).await;
    let t0 = tokio::time::Instant::now();
    eventually("4 ready on live", || {
        ready(&e, "web") == 4 && rt.running().len() == 4
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took <= Duration::from_secs(12),
        "replaced after {took:?}"
    );
    assert!(e.cache().nodes().iter().any(|n| n.metadata.name == "ghost"
        && n.status.condition == orch_core::model::object::NodeCondition::Unreachable));
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn endpoints_follow_readiness() {
    let store = Arc::new(MemStore::new());
    let discovery = orch_core::discovery::MemDiscovery::default();
    let mut e = Engine::builder(store.clone(), Arc::new(DefaultScheduler))
        .discovery(Arc::new(discovery.clone()))
        .start();
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    api::apply(
        &*store,
        vec![service("web", 2, "    ports: [{name: http}]\n")],
        false,
    )
    .await
    .unwrap();
    eventually("2 endpoints", || {
        discovery.endpoints("default", "web").len() == 2
    })
    .await;
    let eps = discovery.endpoints("default", "web");
    assert!(eps
        .iter()
        .all(|ep| ep.ip == "127.0.0.1" && ep.ports.len() == 1 && ep.ports[0].name == "http"));
    // A replica in restart back-off is not an endpoint.
    let id = rt.running()[0].clone();
    rt.crash(&id, Some(1), None);
    eventually("restarted", || rt.running().len() == 2).await;
    rt.crash(&id, Some(1), None);
    eventually("one endpoint during back-off", || {
        discovery.endpoints("default", "web").len() == 1
    })
    .await;
    eventually("two again", || {
        discovery.endpoints("default", "web").len() == 2
    })
    .await;
    // Deleting the service removes it from discovery.
    api::delete(&*store, Kind::Service, "default", "web")
        .await
        .unwrap();
    eventually("removed", || {
        discovery.endpoints("default", "web").is_empty() && rt.running().is_empty()
    })
    .await;
    e.shutdown().await;
}

/// A store that can be taken down: while down every call fails with `Unavailable` and open
/// watches end with it, as the etcd store does when etcd stops.
struct Flaky {
    inner: MemStore,
    down: tokio::sync::watch::Sender<bool>,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if *self.down.borrow() {
            Err(StoreError::Unavailable("test outage".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Store for Flaky {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.check()?;
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.check()?;
        self.inner.list(prefix).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.txn(ops).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.check()?;
        let inner = self.inner.watch(prefix, after).await?;
        let down = self.down.subscribe();
        let stream = futures::stream::unfold(Some((inner, down)), |state| async move {
            let (mut inner, mut down) = state?;
            let next = tokio::select! {
                r = down.wait_for(|d| *d) => r.is_ok().then_some(None),
                item = inner.next() => item.map(Some),
            };
            match next? {
                Some(item) => Some((item, Some((inner, down)))),
                None => Some((Err(StoreError::Unavailable("test outage".into())), None)),
            }
        });
        Ok(stream.boxed())
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.revision().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_longer_than_the_node_timeout_replaces_nothing() {
    let store = Arc::new(Flaky {
        inner: MemStore::new(),
        down: tokio::sync::watch::channel(false).0,
    });
    let mut e = Engine::builder(store.clone(), Arc::new(DefaultScheduler)).start();
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    api::apply(&*store, vec![service("web", 3, "")], false)
        .await
        .unwrap();
    eventually("3 ready", || ready(&e, "web") == 3).await;
    let before: Vec<String> = rt.running();

    // Down for 3x the 10 s node-lost timeout: nobody can heartbeat, so nobody is judged.
    store.down.send_replace(true);
    // The outage's length is what is tested (paused clock: no real wait).
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        rt.running(),
        before,
        "workloads keep running during the outage"
    );
    store.down.send_replace(false);

    // Back: the node heartbeats again within its fresh grace period; nothing is replaced
    // in the 20 s (paused clock) that follow.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        rt.running(),
        before,
        "nothing restarted or replaced after the outage"
    );
    let rs = replicas(&e, "web");
    assert_eq!(rs.len(), 3, "{rs:?}");
    assert!(rs.iter().all(|r| r.status.phase == Phase::Ready), "{rs:?}");
    assert!(e.cache().nodes().iter().all(|n| n.metadata.name == "node-a"
        && n.status.condition == orch_core::model::object::NodeCondition::Ready));
    // And the engine acts again.
    api::scale(&*store, "default", "web", 4).await.unwrap();
    eventually("4 ready after the outage", || ready(&e, "web") == 4).await;
    e.shutdown().await;
}

/// A stored template whose `restartBackoffMax` is under the floor (written before validation
/// refused it, or by a client that skipped it) still backs off: the agent clamps the cap to
/// 1s, so restarts come after 0, 1, 1, 1 s rather than in a busy loop.
#[tokio::test(start_paused = true)]
async fn a_stored_backoff_cap_under_the_floor_is_clamped_by_the_agent() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    api::apply(&*store, vec![service("web", 1, "")], false)
        .await
        .unwrap();
    eventually("ready", || ready(&e, "web") == 1).await;
    // Bypass validation: write a 0s cap straight into the stored service.
    let Some(Object::Service(mut svc)) =
        orch_core::store::get_object(&*store, Kind::Service, "default", "web")
            .await
            .unwrap()
    else {
        panic!("service web is stored");
    };
    svc.spec.template.restart_backoff_max = Some(orch_core::model::quantity::Span(Duration::ZERO));
    store
        .txn(vec![orch_core::store::update_op(&Object::Service(svc))])
        .await
        .unwrap();
    eventually("replaced by the 0s revision", || {
        let rs = replicas(&e, "web");
        rs.len() == 1
            && rs[0].status.phase == Phase::Ready
            && rs[0].spec.template.restart_backoff_max
                == Some(orch_core::model::quantity::Span(Duration::ZERO))
            && rt.running().len() == 1
    })
    .await;
    let id = rt.running()[0].clone();
    let mut delays = Vec::new();
    for n in 1..=4u32 {
        let t = tokio::time::Instant::now();
        assert!(rt.crash(&id, Some(1), None));
        eventually("restarted", || {
            replicas(&e, "web")[0].status.restarts == n && rt.running().len() == 1
        })
        .await;
        delays.push(t.elapsed().as_millis().div_ceil(100) as u64 / 10);
    }
    assert_eq!(delays, vec![0, 1, 1, 1], "seconds before each restart");
    e.shutdown().await;
}

/// The backoff curve with a service's own cap, on the paused clock: restarts after 0, 1, 2,
/// then 3, 3 s (the cap); a replica that keeps crashing shows CrashLoopBackOff; a run longer
/// than the stable period starts the curve again.
#[tokio::test(start_paused = true)]
async fn backoff_follows_the_services_cap_and_resets_after_a_stable_run() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    api::apply(
        &*store,
        vec![service("web", 1, "    restartBackoffMax: 3s\n")],
        false,
    )
    .await
    .unwrap();
    eventually("ready", || ready(&e, "web") == 1).await;
    let id = rt.running()[0].clone();
    let mut delays = Vec::new();
    for n in 1..=5u32 {
        let t = tokio::time::Instant::now();
        assert!(rt.crash(&id, Some(1), None));
        eventually("restarted", || {
            replicas(&e, "web")[0].status.restarts == n && rt.running().len() == 1
        })
        .await;
        delays.push(t.elapsed().as_millis().div_ceil(100) as u64 / 10);
    }
    assert_eq!(delays, vec![0, 1, 2, 3, 3], "seconds before each restart");
    // Crashing again: CrashLoopBackOff while it waits.
    assert!(rt.crash(&id, Some(1), None));
    eventually("crash loop shown", || {
        replicas(&e, "web")[0].status.reason == "CrashLoopBackOff"
    })
    .await;
    eventually("restarted", || {
        replicas(&e, "web")[0].status.restarts == 6 && rt.running().len() == 1
    })
    .await;
    // A run of 11 s (longer than the 10 s stable period): the next restart is immediate again.
    // The run's length is what is tested (paused clock: no real wait).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let t = tokio::time::Instant::now();
    assert!(rt.crash(&id, Some(1), None));
    eventually("restarted after a stable run", || {
        replicas(&e, "web")[0].status.restarts == 7 && rt.running().len() == 1
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    e.shutdown().await;
}

/// A replica that crashes as fast as it restarts (no restart delay at all) is never Ready and
/// not counted ready by its service; its status says it is crash-looping with the restart
/// count; its status writes are held to a few per second, not one store revision per restart;
/// once it stays up it is Ready again.
#[tokio::test(start_paused = true)]
async fn a_crash_loop_without_delay_is_never_ready_and_writes_little() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let rt = FakeRuntime::default();
    let mut cfg = AgentConfig::new("node-a");
    cfg.restart_backoff_base = Duration::ZERO;
    cfg.restart_backoff_max = Duration::ZERO;
    e.add_agent(Arc::new(rt.clone()), cfg);
    api::apply(&*store, vec![service("web", 1, "")], false)
        .await
        .unwrap();
    eventually("ready", || ready(&e, "web") == 1).await;
    let id = rt.running()[0].clone();
    let rev0 = store.revision().await.unwrap();
    let t0 = tokio::time::Instant::now();
    let (mut ready_seen, mut svc_ready_seen) = (0, 0);
    for i in 0..300 {
        eventually("running again", || rt.running().len() == 1).await;
        if i >= 3 {
            ready_seen += usize::from(ready(&e, "web") == 1);
            svc_ready_seen += usize::from(
                e.cache()
                    .service("/services/default/web")
                    .is_some_and(|s| s.status.ready_replicas == 1),
            );
        }
        assert!(rt.crash(&id, Some(1), None));
    }
    let took = t0.elapsed();
    let revs = store.revision().await.unwrap() - rev0;
    eprintln!("300 restarts in {took:?}: {revs} store revisions");
    assert_eq!(ready_seen, 0, "a crash-looping replica was seen Ready");
    assert_eq!(
        svc_ready_seen, 0,
        "the service counted a crash-looping replica ready"
    );
    // Held to a few writes a second (replica status, service status, events, heartbeats).
    let bound = 8 * (took.as_millis() as u64 / 1000 + 1) + 10;
    assert!(
        revs <= bound,
        "{revs} store revisions for 300 restarts in {took:?} (at most {bound})"
    );
    eventually("the status catches up", || {
        let r = &replicas(&e, "web")[0];
        r.status.restarts >= 300 && r.status.reason == "CrashLoopBackOff"
    })
    .await;
    let r = &replicas(&e, "web")[0];
    assert_ne!(r.status.phase, Phase::Ready, "{:?}", r.status);
    assert!(
        r.status.message.contains("restarts"),
        "{}",
        r.status.message
    );
    // It stops crashing: Ready once it has stayed up a moment.
    eventually("ready after it stays up", || ready(&e, "web") == 1).await;
    eventually("the service counts it", || service_ready(&e, "web") == 1).await;
    e.shutdown().await;
}

/// Draining the only node moves nothing, as there is nowhere to go: every replica stays ready
/// and no surplus replica is created. Once a second node joins, the drain proceeds at the
/// update pace (25%: at most 2 of 8 unavailable) and ends with all 8 there.
#[tokio::test(start_paused = true)]
async fn draining_the_only_node_keeps_every_replica_until_another_node_can_take_them() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    e.add_agent(Arc::new(FakeRuntime::default()), AgentConfig::new("node-a"));
    api::apply(&*store, vec![service("web", 8, "")], false)
        .await
        .unwrap();
    eventually("8 ready", || ready(&e, "web") == 8).await;
    api::node_op(&*store, "node-a", api::NodeOp::Drain)
        .await
        .unwrap();
    let active = |e: &Engine| {
        replicas(e, "web")
            .iter()
            .filter(|r| r.spec.desired == DesiredState::Running)
            .count()
    };
    let (mut lowest, mut most) = (8, 8);
    // What is tested: for 6 s (paused clock) nothing moves; sampled every 20 ms.
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lowest = lowest.min(ready(&e, "web"));
        most = most.max(active(&e));
    }
    assert_eq!(
        lowest, 8,
        "ready replicas fell to {lowest} with nowhere to go"
    );
    assert_eq!(
        most, 8,
        "{most} replicas for 8 desired with nowhere to place more"
    );
    let svc = e.cache().service("/services/default/web").unwrap();
    assert!(
        svc.status.message.contains("no other schedulable node"),
        "{:?}",
        svc.status.message
    );
    // Somewhere to go: the drain proceeds within max-unavailable.
    e.add_agent(Arc::new(FakeRuntime::default()), AgentConfig::new("node-b"));
    let t = tokio::time::Instant::now();
    loop {
        let rs = replicas(&e, "web");
        lowest = lowest.min(ready(&e, "web"));
        if rs.len() == 8
            && rs
                .iter()
                .all(|r| r.spec.node.as_deref() == Some("node-b") && r.status.phase == Phase::Ready)
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{rs:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        lowest >= 6,
        "ready replicas fell to {lowest} (max unavailable 2)"
    );
    e.shutdown().await;
}

/// Probes through the fake runtime's scripted results: a readiness probe that fails takes the
/// replica out of Ready (NotReady, with the error in its message and probe lines, one
/// Unhealthy warning) without a restart, and back once it passes; a liveness probe that fails
/// its threshold restarts the run.
#[tokio::test(start_paused = true)]
async fn probes_decide_readiness_and_a_failed_liveness_probe_restarts() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    api::apply(
        &*store,
        vec![
            service(
                "web",
                1,
                "    ports: [{name: http}]\n    readinessProbe: {httpGet: {path: /healthz, port: http}, period: 200ms, failureThreshold: 2}\n",
            ),
            service(
                "live",
                1,
                "    livenessProbe: {exec: {command: [check]}, period: 200ms, failureThreshold: 2}\n",
            ),
        ],
        false,
    )
    .await
    .unwrap();
    eventually("both ready", || {
        ready(&e, "web") == 1 && ready(&e, "live") == 1
    })
    .await;
    let web = replicas(&e, "web").remove(0);
    assert_eq!(web.status.probes, ["readiness: passing"]);
    let id = web.runtime_name();
    assert!(rt.probe_count(&id) >= 1);

    rt.set_probe_result(&id, Err("HTTP 503 from GET /healthz".into()));
    eventually("web not ready", || {
        replicas(&e, "web")[0].status.reason == "NotReady"
    })
    .await;
    let st = replicas(&e, "web").remove(0).status;
    assert_eq!(st.phase, Phase::Running);
    assert_eq!(
        st.message,
        "readiness probe failed: HTTP 503 from GET /healthz"
    );
    assert_eq!(
        st.probes,
        ["readiness: failing (2 consecutive, threshold 2): HTTP 503 from GET /healthz"]
    );
    rt.set_probe_result(&id, Ok(()));
    eventually("web ready again", || ready(&e, "web") == 1).await;
    assert_eq!(
        replicas(&e, "web")[0].status.restarts,
        0,
        "readiness never restarts"
    );
    assert_eq!(
        events_with(&store, "Unhealthy").await,
        ["readiness probe failed: HTTP 503 from GET /healthz"]
    );

    let live = replicas(&e, "live").remove(0);
    let (id, run) = (live.runtime_name(), live.status.runtime_id.clone());
    rt.set_probe_result(&id, Err("exec [\"check\"]: exit 1".into()));
    eventually("live restarted", || {
        replicas(&e, "live")[0].status.runtime_id != run
    })
    .await;
    rt.set_probe_result(&id, Ok(()));
    eventually("live ready again", || ready(&e, "live") == 1).await;
    assert_eq!(replicas(&e, "live")[0].status.restarts, 1);
    let unhealthy = events_with(&store, "Unhealthy").await;
    assert!(
        unhealthy
            .iter()
            .any(|m| m == "liveness probe failed: exec [\"check\"]: exit 1; restarting"),
        "{unhealthy:?}"
    );
}
