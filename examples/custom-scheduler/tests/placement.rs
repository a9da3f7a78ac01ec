//! The plugins and the replacement scheduler, driven through orch's engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use custom_scheduler::{AvoidMaintenance, FirstFit, PreferLabel};
use orch_core::engine::{AgentConfig, Engine};
use orch_core::fake::FakeRuntime;
use orch_core::memstore::MemStore;
use orch_core::scheduler::Scheduler;
use orch_sched::Framework;

async fn place(scheduler: Arc<dyn Scheduler>, replicas: u32) -> BTreeMap<String, usize> {
    let store = Arc::new(MemStore::new());
    let mut engine = Engine::builder(store.clone(), scheduler).start();
    for (node, labels) in [
        ("node-a", &[("disk", "ssd")][..]),
        ("node-b", &[("disk", "hdd")][..]),
        ("node-c", &[("disk", "ssd"), ("maintenance", "true")][..]),
        ("node-d", &[("disk", "ssd")][..]),
    ] {
        let mut cfg = AgentConfig::new(node);
        cfg.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        engine.add_agent(Arc::new(FakeRuntime::default()), cfg);
    }
    while engine.cache().nodes().len() < 4 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let yaml = format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  template: {{command: [server]}}\n");
    let objects = orch_core::manifest::parse("web.yaml", &yaml).unwrap();
    orch_core::api::apply(&*store, objects, false)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let reps = engine.cache().replicas_of_service("default", "web");
        if reps.len() == replicas as usize && reps.iter().all(|r| r.spec.node.is_some()) {
            let mut per_node = BTreeMap::new();
            for r in reps {
                *per_node.entry(r.spec.node.unwrap()).or_default() += 1;
            }
            engine.shutdown().await;
            return per_node;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not placed: {reps:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn plugins_keep_off_maintenance_and_prefer_ssd() {
    let custom = Framework::default_plugins()
        .named("custom")
        .with_filter(AvoidMaintenance)
        .with_score(
            PreferLabel {
                key: "disk".into(),
                value: "ssd".into(),
            },
            10,
        );
    assert!(custom.filter_names().contains(&"AvoidMaintenance"));
    let per_node = place(Arc::new(custom), 4).await;
    assert!(!per_node.contains_key("node-c"), "{per_node:?}");
    assert!(
        !per_node.contains_key("node-b"),
        "the hdd node was chosen: {per_node:?}"
    );
    assert_eq!(per_node.values().sum::<usize>(), 4);
}

#[tokio::test]
async fn the_default_scheduler_alone_uses_every_node() {
    let per_node = place(Arc::new(Framework::default_plugins()), 4).await;
    assert_eq!(per_node.len(), 4, "spread over all four: {per_node:?}");
}

#[tokio::test]
async fn a_whole_replacement_scheduler_runs_the_engine() {
    let per_node = place(Arc::new(FirstFit), 3).await;
    assert_eq!(per_node, BTreeMap::from([("node-a".to_string(), 3)]));
}
