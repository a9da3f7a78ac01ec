//! The plugins and the replacement scheduler, driven through orch's engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use custom_scheduler::{place, AvoidMaintenance, FirstFit, PreferLabel};
use orch_core::scheduler::Scheduler;
use orch_sched::Framework;

async fn per_node(scheduler: Arc<dyn Scheduler>, replicas: u32) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, node) in place(scheduler, replicas).await {
        *m.entry(node).or_default() += 1;
    }
    m
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
    let per_node = per_node(Arc::new(custom), 4).await;
    assert!(!per_node.contains_key("node-c"), "{per_node:?}");
    assert!(
        !per_node.contains_key("node-b"),
        "the hdd node was chosen: {per_node:?}"
    );
    assert_eq!(per_node.values().sum::<usize>(), 4);
}

#[tokio::test]
async fn the_default_scheduler_alone_uses_every_node() {
    let per_node = per_node(Arc::new(Framework::default_plugins()), 4).await;
    assert_eq!(per_node.len(), 4, "spread over all four: {per_node:?}");
}

#[tokio::test]
async fn a_whole_replacement_scheduler_runs_the_engine() {
    let per_node = per_node(Arc::new(FirstFit), 3).await;
    assert_eq!(per_node, BTreeMap::from([("node-a".to_string(), 3)]));
}
