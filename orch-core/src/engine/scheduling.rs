//! The scheduler loop: one pass takes every pending replica and the node snapshot, asks the
//! [`Scheduler`](crate::Scheduler) for a plan, and writes all bindings in one batched
//! compare-and-swap transaction. Unschedulable replicas get a reason and are retried whenever
//! a node or a replica changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::cache::Change;
use crate::engine::Ctx;
use crate::object::{DesiredState, Kind, Object, Phase, Replica};
use crate::scheduler::{ClusterSnapshot, PendingReplica};
use crate::store::{txn_chunked, update_op, Op, StoreError};

/// Most operations written in one transaction.
pub const MAX_TXN_OPS: usize = 5_000;

fn is_pending(r: &Replica) -> bool {
    r.spec.node.is_none() && r.spec.desired == DesiredState::Running
}

/// Outcome of one pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassResult {
    /// Replicas bound.
    pub bound: usize,
    /// Replicas left pending.
    pub unschedulable: usize,
}

/// One scheduling pass over everything pending.
pub async fn pass(ctx: &Ctx, seed: u64) -> Result<PassResult, StoreError> {
    // Shared handles, not clones: at a million replicas a deep copy per pass costs gigabytes.
    let objects = ctx.cache.list(Kind::Replica);
    let replicas: Vec<&Replica> = objects.iter().filter_map(|o| o.as_replica()).collect();
    let pending: Vec<&Replica> = replicas.iter().copied().filter(|r| is_pending(r)).collect();
    if pending.is_empty() {
        return Ok(PassResult::default());
    }
    let nodes = ctx.cache.nodes();
    let snapshot = ClusterSnapshot::build(
        &nodes,
        replicas.iter().copied().filter(|r| r.spec.node.is_some()),
    );
    let keyed: BTreeMap<String, &Replica> = pending
        .iter()
        .map(|r| {
            (
                Kind::Replica.key(&r.metadata.namespace, &r.metadata.name),
                *r,
            )
        })
        .collect();
    let input: Vec<PendingReplica> = keyed
        .iter()
        .map(|(k, r)| PendingReplica::from_replica(r, k.clone()))
        .collect();
    let plan = ctx.scheduler.schedule(&snapshot, &input, seed);
    let mut ops: Vec<Op> = Vec::with_capacity(plan.bindings.len());
    let mut per_service: BTreeMap<(String, String), (usize, BTreeMap<String, usize>)> =
        BTreeMap::new();
    for (key, node) in &plan.bindings {
        let Some(r) = keyed.get(key) else { continue };
        let mut r = (*r).clone();
        r.spec.node = Some(node.clone());
        r.status.reason.clear();
        r.status.message = format!("scheduled to {node}");
        r.status.phase = Phase::Pending;
        let e = per_service
            .entry((r.metadata.namespace.clone(), r.spec.service.clone()))
            .or_default();
        e.0 += 1;
        *e.1.entry(node.clone()).or_default() += 1;
        ops.push(update_op(&Object::Replica(r)));
    }
    let mut unschedulable_services: BTreeMap<(String, String), String> = BTreeMap::new();
    for (key, reason) in &plan.unschedulable {
        let Some(r) = keyed.get(key) else { continue };
        if r.status.reason == "Unschedulable" && r.status.message == *reason {
            continue;
        }
        let mut r = (*r).clone();
        r.status.reason = "Unschedulable".into();
        r.status.message = reason.clone();
        unschedulable_services.insert(
            (r.metadata.namespace.clone(), r.spec.service.clone()),
            reason.clone(),
        );
        ops.push(update_op(&Object::Replica(r)));
    }
    let result = PassResult {
        bound: plan.bindings.len(),
        unschedulable: plan.unschedulable.len(),
    };
    // Let go of this pass's view before writing: while the writes land, the cache replaces
    // every bound replica, and holding the old versions here would double the engine's memory.
    drop((keyed, input, plan, snapshot, pending, replicas, nodes));
    drop(objects);
    let last = txn_chunked(&*ctx.store, ops, MAX_TXN_OPS).await?;
    let rec = ctx.recorder.with_source("scheduler");
    for ((ns, svc), (count, nodes)) in per_service {
        let spread = nodes
            .iter()
            .map(|(n, c)| format!("{n}: {c}"))
            .collect::<Vec<_>>()
            .join(", ");
        rec.normal(
            Kind::Service,
            &ns,
            &svc,
            "Scheduled",
            format!("placed {count} replica(s) ({spread})"),
        );
    }
    for ((ns, svc), reason) in unschedulable_services {
        rec.warning(Kind::Service, &ns, &svc, "FailedScheduling", reason);
    }
    if let Some(rev) = last {
        ctx.cache.wait_for(rev).await;
    }
    Ok(result)
}

fn relevant(c: &Change) -> bool {
    match c {
        Change::Resync => true,
        Change::Object {
            kind: Kind::Node, ..
        } => true,
        // New pending replicas, and anything that frees capacity (deletes, stops, moves).
        Change::Object {
            kind: Kind::Replica,
            old,
            new,
            ..
        } => match (old.as_deref(), new.as_deref()) {
            (_, Some(Object::Replica(r))) if is_pending(r) => true,
            (Some(Object::Replica(o)), Some(Object::Replica(n))) => {
                o.spec.node != n.spec.node || o.spec.desired != n.spec.desired
            }
            (Some(_), None) => true,
            _ => false,
        },
        _ => false,
    }
}

/// Runs the loop until cancelled.
pub async fn run(ctx: Arc<Ctx>) {
    // The loop only needs to know that something relevant happened, not what: a drain task
    // turns the stream of changes into a flag, so a long pass does not keep a queue of every
    // replica's old and new versions alive.
    let mut changes = ctx.cache.subscribe(relevant);
    let (dirty, mut dirty_rx) = tokio::sync::watch::channel(());
    let drain = tokio::spawn(async move {
        while changes.recv().await.is_some() {
            dirty.send_replace(());
        }
    });
    let mut seed = ctx.config.seed;
    let mut backoff = ctx.config.retry_base;
    let mut wait = ctx.config.resync;
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            c = dirty_rx.changed() => if c.is_err() { break },
            _ = tokio::time::sleep(wait) => {}
        }
        // Coalesce a burst of changes into one pass.
        tokio::time::sleep(Duration::from_millis(2)).await;
        dirty_rx.mark_unchanged();
        seed = seed.wrapping_add(1);
        match pass(&ctx, seed).await {
            Ok(_) => {
                backoff = ctx.config.retry_base;
                wait = ctx.config.resync;
            }
            Err(e) => {
                tracing::debug!(error = %e, "scheduler: pass failed; retrying in {backoff:?}");
                wait = backoff;
                backoff = (backoff * 2).min(ctx.config.retry_max);
            }
        }
    }
    drain.abort();
}
