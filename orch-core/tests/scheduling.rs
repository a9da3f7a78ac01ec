//! Placement rules through the whole engine (in-memory store, fake runtime agents, paused
//! clock): anti-affinity keeps replicas on distinct nodes; a `NoSchedule` taint keeps off what
//! does not tolerate it; an unschedulable service says why and is placed once a node fits.

mod common;

use common::eventually;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use orch_core::engine::api;
use orch_core::fake::FakeRuntime;
use orch_core::memstore::MemStore;
use orch_core::model::object::{EventType, Kind, Object, Phase, Taint, TaintEffect};
use orch_core::{AgentConfig, Engine};
use orch_sched::DefaultScheduler;

fn service(yaml_spec: &str) -> Object {
    let y =
        format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n{yaml_spec}");
    orch_core::model::manifest::parse("test.yaml", &y)
        .unwrap()
        .remove(0)
}

fn per_node(e: &Engine) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in e.cache().replicas_of_service("default", "web") {
        if let Some(n) = r.spec.node {
            *m.entry(n).or_default() += 1;
        }
    }
    m
}

fn agent(e: &mut Engine, name: &str, taint: bool) -> FakeRuntime {
    let rt = FakeRuntime::default();
    let mut cfg = AgentConfig::new(name);
    if taint {
        cfg.taints = vec![Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: TaintEffect::NoSchedule,
        }];
    }
    e.add_agent(Arc::new(rt.clone()), cfg);
    rt
}

#[tokio::test(start_paused = true)]
async fn anti_affinity_keeps_replicas_on_distinct_nodes_and_says_why_when_it_cannot() {
    let store = Arc::new(MemStore::new());
    let mut e = Engine::builder(store.clone(), Arc::new(DefaultScheduler)).start();
    for n in ["a", "b", "c"] {
        agent(&mut e, n, false);
    }
    eventually("3 nodes", || e.cache().nodes().len() == 3).await;
    let spec = "  replicas: 4\n  template: {command: [server], labels: {app: web}}\n  placement:\n    antiAffinity:\n      required: [{labelSelector: {matchLabels: {app: web}}, topologyKey: orch.dev/node}]\n";
    api::apply(&*store, vec![service(spec)], false)
        .await
        .unwrap();
    eventually("3 placed", || per_node(&e).values().sum::<usize>() == 3).await;
    assert!(per_node(&e).values().all(|c| *c == 1), "{:?}", per_node(&e));
    // The fourth has nowhere to go, and the service says why.
    eventually("the reason", || {
        e.cache()
            .service("/services/default/web")
            .is_some_and(|s| s.status.message.contains("0/3 nodes are available"))
    })
    .await;
    let svc = e.cache().service("/services/default/web").unwrap();
    assert!(
        svc.status.message.contains("anti-affinity"),
        "{}",
        svc.status.message
    );
    // A fourth node: the pending replica goes there, still one per node.
    agent(&mut e, "d", false);
    eventually("4 placed", || per_node(&e).values().sum::<usize>() == 4).await;
    assert_eq!(per_node(&e).len(), 4, "{:?}", per_node(&e));
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_no_schedule_taint_takes_only_what_tolerates_it() {
    let store = Arc::new(MemStore::new());
    let mut e = Engine::builder(store.clone(), Arc::new(DefaultScheduler)).start();
    let tainted = agent(&mut e, "db-node", true);
    let plain = agent(&mut e, "app-node", false);
    eventually("2 nodes", || e.cache().nodes().len() == 2).await;
    api::apply(
        &*store,
        vec![service("  replicas: 6\n  template: {command: [server]}\n")],
        false,
    )
    .await
    .unwrap();
    eventually("6 ready", || {
        e.cache()
            .replicas_of_service("default", "web")
            .iter()
            .filter(|r| r.status.phase == Phase::Ready)
            .count()
            == 6
    })
    .await;
    assert_eq!(
        tainted.running().len(),
        0,
        "the tainted node ran untolerating replicas"
    );
    assert_eq!(plain.running().len(), 6);
    // A service that tolerates the taint may use both nodes (spread puts some on each).
    let tolerant = service("  replicas: 6\n  template: {command: [server]}\n  placement:\n    tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]\n");
    api::apply(&*store, vec![tolerant], false).await.unwrap();
    eventually("rolled onto both nodes", || {
        let m = per_node(&e);
        m.get("db-node").copied().unwrap_or(0) > 0
            && e.cache()
                .replicas_of_service("default", "web")
                .iter()
                .filter(|r| r.status.phase == Phase::Ready)
                .count()
                == 6
    })
    .await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_unschedulable_service_reports_why_and_is_placed_when_a_fitting_node_joins() {
    let store = Arc::new(MemStore::new());
    let mut e = Engine::builder(store.clone(), Arc::new(DefaultScheduler)).start();
    agent(&mut e, "hdd-1", false);
    agent(&mut e, "hdd-2", false);
    eventually("2 nodes", || e.cache().nodes().len() == 2).await;
    let spec = "  replicas: 2\n  template: {command: [server]}\n  placement: {nodeSelector: {disk: ssd}}\n";
    api::apply(&*store, vec![service(spec)], false)
        .await
        .unwrap();
    eventually("the reason on the service", || {
        e.cache().service("/services/default/web").is_some_and(|s| {
            s.status.message == "0/2 nodes are available: 2 do not match the node selector"
                && s.status.pending_replicas == 2
        })
    })
    .await;
    // ... on the replicas and in a FailedScheduling event.
    let reps = e.cache().replicas_of_service("default", "web");
    assert!(
        reps.iter().all(|r| r.status.reason == "Unschedulable"),
        "{reps:?}"
    );
    // (The engine's cache skips events; read them from the store.)
    let mut found = false;
    for _ in 0..100 {
        let (events, _) = orch_core::store::list_objects(&*store, Kind::Event, None)
            .await
            .unwrap();
        found = events.iter().any(|o| match o {
            Object::Event(ev) => {
                ev.reason == "FailedScheduling"
                    && ev.type_ == EventType::Warning
                    && ev.message.contains("do not match the node selector")
            }
            _ => false,
        });
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "no FailedScheduling event");
    // A fitting node joins: both go there.
    let ssd = FakeRuntime::default();
    let mut cfg = AgentConfig::new("ssd-1");
    cfg.labels.insert("disk".into(), "ssd".into());
    e.add_agent(Arc::new(ssd.clone()), cfg);
    eventually("placed on the new node", || ssd.running().len() == 2).await;
    eventually("status clears", || {
        e.cache()
            .service("/services/default/web")
            .is_some_and(|s| s.status.message.is_empty() && s.status.pending_replicas == 0)
    })
    .await;
    e.shutdown().await;
}
