//! The scheduler loop: one pass takes every pending replica and the node snapshot, asks the
//! [`Scheduler`](crate::Scheduler) for a plan, and writes all bindings in one batched
//! compare-and-swap transaction. Unschedulable replicas get a reason and are retried whenever
//! a node or a replica changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::cache::Change;
use crate::engine::ctx::Ctx;
use crate::model::object::{DesiredState, Kind, Object, Phase, Reason, Replica};
use crate::scheduler::PendingReplica;
use crate::store::{txn_chunked, update_op, Op, StoreError, MAX_TXN_OPS};

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
    /// More replicas were pending than one pass takes ([`MAX_PASS_REPLICAS`]); run another.
    pub more: bool,
}

/// Most pending replicas one pass considers. A bounded pass keeps its memory bounded (the
/// bindings it writes, and the versions of replicas it replaces) and lets the first bindings
/// land while the rest are still being planned; the next pass starts at once.
pub const MAX_PASS_REPLICAS: usize = 50_000;

/// The pending replicas one pass takes, at most `limit`: first those never judged
/// unschedulable (new work), in key order, then the unschedulable ones from a position that
/// moves with `seed`, so a large backlog that cannot be placed cannot starve new replicas nor
/// keep the same ones at the back for ever.
fn take_pending<'a>(replicas: &[&'a Replica], limit: usize, seed: u64) -> Vec<&'a Replica> {
    let is_retry = |r: &Replica| r.status.reason == Reason::Unschedulable;
    let mut out: Vec<&Replica> = replicas
        .iter()
        .copied()
        .filter(|r| is_pending(r) && !is_retry(r))
        .take(limit)
        .collect();
    if out.len() < limit {
        let retries: Vec<&Replica> = replicas
            .iter()
            .copied()
            .filter(|r| is_pending(r) && is_retry(r))
            .collect();
        if !retries.is_empty() {
            let room = (limit - out.len()).min(retries.len());
            let start = (seed as usize).wrapping_mul(room) % retries.len();
            out.extend(retries.iter().cycle().skip(start).take(room).copied());
        }
    }
    out
}

/// One scheduling pass over everything pending.
pub async fn pass(ctx: &Ctx, seed: u64) -> Result<PassResult, StoreError> {
    // Shared handles, not clones, and a snapshot the cache keeps current: at a million
    // replicas a deep copy or a walk over every replica per pass costs seconds and gigabytes.
    let Some((snapshot, objects)) = ctx.cache.scheduling_view() else {
        return Ok(PassResult::default());
    };
    let replicas: Vec<&Replica> = objects.iter().filter_map(|o| o.as_replica()).collect();
    let pending = take_pending(&replicas, MAX_PASS_REPLICAS, seed);
    let more = replicas.len() > pending.len();
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
            .entry((r.metadata.namespace.clone(), r.spec.service.to_string()))
            .or_default();
        e.0 += 1;
        *e.1.entry(node.clone()).or_default() += 1;
        ops.push(update_op(&Object::Replica(r)));
    }
    let mut unschedulable_services: BTreeMap<(String, String), String> = BTreeMap::new();
    for (key, reason) in &plan.unschedulable {
        let Some(r) = keyed.get(key) else { continue };
        if r.status.reason == Reason::Unschedulable && r.status.message == *reason {
            continue;
        }
        let mut r = (*r).clone();
        r.status.reason = Reason::Unschedulable;
        r.status.message = reason.clone();
        unschedulable_services.insert(
            (r.metadata.namespace.clone(), r.spec.service.to_string()),
            reason.clone(),
        );
        ops.push(update_op(&Object::Replica(r)));
    }
    let result = PassResult {
        bound: plan.bindings.len(),
        unschedulable: plan.unschedulable.len(),
        more,
    };
    tracing::debug!(
        considered = keyed.len(),
        bound = result.bound,
        unschedulable = result.unschedulable,
        more,
        "scheduler: pass planned"
    );
    // Let go of this pass's view before writing: while the writes land, the cache replaces
    // every bound replica, and holding the old versions here would double the engine's memory.
    drop((keyed, input, plan, snapshot, pending, replicas));
    drop(objects);
    let last = txn_chunked(&*ctx.store, ops, MAX_TXN_OPS).await?;
    let rec = ctx.recorder.with_source("scheduler");
    let uid = |ns: &str, svc: &str| {
        ctx.cache
            .get(Kind::Service, &Kind::Service.key(ns, svc))
            .map(|o| o.metadata().uid.clone())
            .unwrap_or_default()
    };
    for ((ns, svc), (count, nodes)) in per_service {
        let spread = nodes
            .iter()
            .map(|(n, c)| format!("{n}: {c}"))
            .collect::<Vec<_>>()
            .join(", ");
        rec.about(&uid(&ns, &svc)).normal(
            Kind::Service,
            &ns,
            &svc,
            "Scheduled",
            format!("placed {count} replica(s) ({spread})"),
        );
    }
    for ((ns, svc), reason) in unschedulable_services {
        rec.about(&uid(&ns, &svc))
            .warning(Kind::Service, &ns, &svc, "FailedScheduling", reason);
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
pub(crate) async fn run(ctx: Arc<Ctx>, cancel: tokio_util::sync::CancellationToken) {
    // The loop only needs to know that something relevant happened, not what: the cache
    // raises a flag as it applies each change, so a long pass does not keep a queue of every
    // replica's old and new versions alive.
    let (dirty, mut dirty_rx) = tokio::sync::watch::channel(());
    ctx.cache.on_change(move |c| {
        if relevant(c) {
            dirty.send_replace(());
        }
        !dirty.is_closed()
    });
    let mut seed = ctx.config.seed;
    let mut backoff = ctx.config.retry_base;
    let mut wait = ctx.config.resync;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            c = dirty_rx.changed() => if c.is_err() { break },
            _ = tokio::time::sleep(wait) => {}
        }
        // Coalesce a burst of changes into one pass.
        tokio::time::sleep(Duration::from_millis(2)).await;
        dirty_rx.mark_unchanged();
        seed = seed.wrapping_add(1);
        let started = std::time::Instant::now();
        let result = pass(&ctx, seed).await;
        ctx.metrics.pass(
            started.elapsed(),
            result.as_ref().map(|r| r.bound).unwrap_or(0),
        );
        match result {
            Ok(r) => {
                backoff = ctx.config.retry_base;
                wait = if r.more {
                    Duration::ZERO
                } else {
                    ctx.config.resync
                };
            }
            Err(e) => {
                tracing::debug!(error = %e, "scheduler: pass failed; retrying in {backoff:?}");
                wait = backoff;
                backoff = (backoff * 2).min(ctx.config.retry_max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str, unschedulable: bool) -> Replica {
        let mut r = Replica {
            metadata: crate::model::object::Metadata {
                name: name.into(),
                ..Default::default()
            },
            spec: crate::model::object::ReplicaSpec {
                service: "s".into(),
                template_hash: String::new(),
                template: Default::default(),
                placement: Default::default(),
                node: None,
                desired: DesiredState::Running,
            },
            status: Default::default(),
        };
        if unschedulable {
            r.status.reason = "Unschedulable".into();
        }
        r
    }

    fn names(rs: &[&Replica]) -> Vec<String> {
        rs.iter().map(|r| r.metadata.name.clone()).collect()
    }

    #[test]
    fn a_pass_takes_new_replicas_before_retries_and_rotates_the_retries() {
        let all: Vec<Replica> = (0..6)
            .map(|i| replica(&format!("r{i}"), i < 4))
            .chain([{
                let mut bound = replica("bound", false);
                bound.spec.node = Some("n".into());
                bound
            }])
            .collect();
        let refs: Vec<&Replica> = all.iter().collect();
        // New work first, even though the retries come first in key order.
        assert_eq!(names(&take_pending(&refs, 2, 0)), ["r4", "r5"]);
        // Room left goes to retries, from a position that moves with the seed.
        assert_eq!(names(&take_pending(&refs, 3, 0)), ["r4", "r5", "r0"]);
        assert_eq!(names(&take_pending(&refs, 3, 1)), ["r4", "r5", "r1"]);
        assert_eq!(names(&take_pending(&refs, 4, 1)), ["r4", "r5", "r2", "r3"]);
        // Never more than there are, never a bound replica.
        assert_eq!(take_pending(&refs, 100, 7).len(), 6);
    }
}
