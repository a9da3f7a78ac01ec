//! Shared by the engine test files (not every file uses every helper).
#![allow(dead_code)]

use std::time::Duration;

use orch_core::model::object::{Kind, Object, Phase, Replica};
use orch_core::{Engine, MemStore};

/// Polls `cond` every 10 ms (of tokio's clock, paused in these tests) until it holds; fails
/// after 120 s naming `what`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The replicas of service `svc` in the default namespace.
pub fn replicas(e: &Engine, svc: &str) -> Vec<Replica> {
    e.cache().replicas_of_service("default", svc)
}

/// How many of them are Ready.
pub fn ready(e: &Engine, svc: &str) -> usize {
    replicas(e, svc)
        .iter()
        .filter(|r| r.status.phase == Phase::Ready)
        .count()
}

/// The events with `reason` in the store (the engine's cache skips events).
pub async fn events_with(store: &MemStore, reason: &str) -> Vec<String> {
    let (events, _) = orch_core::store::list_objects(store, Kind::Event, None)
        .await
        .unwrap();
    events
        .into_iter()
        .filter_map(|o| match o {
            Object::Event(ev) if ev.reason == reason => Some(ev.message),
            _ => None,
        })
        .collect()
}
