//! Node lifecycle: watches heartbeats, marks a node Unreachable after the grace period and
//! its replicas Lost after the replace timeout (so the replication controller replaces them).
//! Time is the controller's own monotonic clock: a node is judged by when *this* controller
//! last saw its heartbeat change, never by comparing machines' wall clocks. Silence counts
//! from the latest of that, the moment the cache's watch (re)connected (`Cache::live_since`)
//! and the moment this control plane started: after a failover the new leader gives every
//! node a full grace, so no live node is marked down by it, and a node that died meanwhile
//! is still judged (once, by the one control plane whose writes land).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;

use crate::engine::ctx::Ctx;
use crate::model::object::{DesiredState, Kind, NodeCondition, Object, Phase, Reason};
use crate::store::MAX_TXN_OPS;
use crate::store::{txn_chunked, update_op};

/// Runs the controller until cancelled.
pub(crate) async fn run(ctx: Arc<Ctx>, cancel: tokio_util::sync::CancellationToken) {
    let mut seen: HashMap<String, (Option<crate::model::quantity::Timestamp>, Instant)> =
        HashMap::new();
    let mut tick = tokio::time::interval(ctx.config.node_check);
    // A control plane that just started (a new leader) gives every node a full grace: it
    // cannot know how long a node was silent before it looked.
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        // Silence counts only while the store is reachable: when it was down, no node could
        // heartbeat, so every node gets a fresh grace period once it is back.
        let Some(live_since) = ctx.cache.live_since() else {
            continue;
        };
        let nodes = ctx.cache.nodes();
        let names: HashSet<&str> = nodes.iter().map(|n| n.metadata.name.as_str()).collect();
        seen.retain(|name, _| names.contains(name.as_str()));
        drop(names);
        let mut ops = Vec::new();
        for n in nodes {
            let entry = seen
                .entry(n.metadata.name.clone())
                .or_insert((n.status.heartbeat, now));
            if entry.0 != n.status.heartbeat {
                *entry = (n.status.heartbeat, now);
            }
            let silent = now.duration_since(entry.1.max(live_since).max(started));
            if silent >= ctx.config.node_grace && n.status.condition == NodeCondition::Ready {
                let mut n2 = n.clone();
                n2.status.condition = NodeCondition::Unreachable;
                ops.push(update_op(&Object::Node(n2)));
                ctx.recorder.with_source("node-lifecycle").warning(
                    Kind::Node,
                    "",
                    &n.metadata.name,
                    "NodeUnreachable",
                    format!("no heartbeat for {}s", silent.as_secs()),
                );
            }
            if silent >= ctx.config.node_lost_timeout {
                for r in ctx.cache.replicas_on_node(&n.metadata.name) {
                    // A service may ask to wait longer than the cluster's timeout.
                    let wait = r
                        .spec
                        .placement
                        .node_loss_timeout
                        .map_or(ctx.config.node_lost_timeout, |s| {
                            s.0.max(ctx.config.node_lost_timeout)
                        });
                    if silent >= wait
                        && r.status.phase != Phase::Lost
                        && r.spec.desired == DesiredState::Running
                    {
                        let mut r2 = r.clone();
                        r2.status.phase = Phase::Lost;
                        r2.status.reason = Reason::NodeLost;
                        r2.status.message = format!(
                            "node {} has not reported for {}s",
                            n.metadata.name,
                            silent.as_secs()
                        );
                        ops.push(update_op(&Object::Replica(r2)));
                    }
                }
            }
        }
        if !ops.is_empty() {
            match txn_chunked(&*ctx.store, ops, MAX_TXN_OPS).await {
                Ok(Some(rev)) => ctx.cache.wait_for(rev).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "node lifecycle: write failed; next tick retries")
                }
            }
        }
    }
}

/// Whether `node` can take new replicas of a service with `placement`: Ready, neither
/// cordoned nor draining, and admitted by the placement's selectors, affinity and taints.
/// (Resources and replica affinity are the scheduler's to judge.)
pub(crate) fn can_take(
    placement: &crate::model::object::Placement,
    node: &crate::model::object::Node,
) -> bool {
    node.status.condition == NodeCondition::Ready
        && !node.spec.unschedulable
        && !node.spec.draining
        && placement.admits(node)
}

/// The services with active replicas on `node` that no other node can take, as
/// `(namespace, service, replicas on node)`: what draining `node` could not move.
pub fn stranded_by_drain(
    node: &str,
    nodes: &[crate::model::object::Node],
    replicas: &[crate::model::object::Replica],
) -> Vec<(String, String, usize)> {
    let mut out: std::collections::BTreeMap<(String, String), (usize, bool)> = Default::default();
    for r in replicas {
        if r.spec.node.as_deref() != Some(node)
            || r.spec.desired != DesiredState::Running
            || r.spec.service.job().is_some()
        {
            continue;
        }
        let e = out
            .entry((r.metadata.namespace.clone(), r.spec.service.to_string()))
            .or_insert_with(|| {
                let placeable = nodes
                    .iter()
                    .any(|n| n.metadata.name != node && can_take(&r.spec.placement, n));
                (0, placeable)
            });
        e.0 += 1;
    }
    out.into_iter()
        .filter(|(_, (_, placeable))| !placeable)
        .map(|((ns, svc), (n, _))| (ns, svc, n))
        .collect()
}
