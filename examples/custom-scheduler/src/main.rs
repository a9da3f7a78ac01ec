//! Runs orch's engine with a customised scheduler through the library API: four fake nodes
//! (one in maintenance, two more with SSDs), one service of four replicas; prints where they
//! went. Then the same with a whole replacement scheduler.
//!
//! `cargo run --manifest-path examples/custom-scheduler/Cargo.toml`

use std::sync::Arc;

use custom_scheduler::{place, AvoidMaintenance, FirstFit, PreferLabel};
use orch_core::scheduler::Scheduler;
use orch_sched::Framework;

#[tokio::main]
async fn main() {
    // The default plugins plus ours: no replica in maintenance, SSD nodes preferred.
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
    println!("scheduler {:?}", custom.name());
    for (replica, node) in place(Arc::new(custom), 4).await {
        println!("  {replica} -> {node}");
    }
    println!("scheduler \"first-fit\" (a whole replacement)");
    for (replica, node) in place(Arc::new(FirstFit), 4).await {
        println!("  {replica} -> {node}");
    }
}
