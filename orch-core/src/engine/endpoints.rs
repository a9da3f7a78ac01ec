//! The endpoints controller: publishes each service's ready replicas to [`Discovery`]
//! whenever they change, and removes services that are gone.

use std::collections::HashMap;
use std::sync::Arc;

use crate::discovery::Endpoint;
use crate::engine::cache::Change;
use crate::engine::queue::WorkQueue;
use crate::engine::replication::split_key;
use crate::engine::Ctx;
use crate::object::{DesiredState, Kind, Object, Phase};

/// The endpoints a set of replicas offers: ready, meant to run, with an address.
pub fn endpoints_of(replicas: &[Arc<Object>]) -> Vec<Endpoint> {
    let mut eps: Vec<Endpoint> = replicas
        .iter()
        .filter_map(|o| o.as_replica())
        .filter(|r| r.status.phase == Phase::Ready && r.spec.desired == DesiredState::Running)
        .filter_map(|r| {
            Some(Endpoint {
                replica: r.metadata.name.clone(),
                node: r.spec.node.clone()?,
                ip: r.status.host_ip.clone()?,
                ports: r
                    .status
                    .ports
                    .iter()
                    .map(|p| (p.name.clone(), p.port))
                    .collect(),
            })
        })
        .collect();
    eps.sort();
    eps
}

/// Runs the controller until cancelled.
pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::<String>::new(ctx.config.retry_base, ctx.config.retry_max);
    let mut changes = ctx
        .cache
        .subscribe(|c| matches!(c.kind(), Some(Kind::Service | Kind::Replica)));
    let mut published: HashMap<String, Vec<Endpoint>> = HashMap::new();
    let enqueue_all = |queue: &WorkQueue<String>, published: &HashMap<String, Vec<Endpoint>>| {
        for s in ctx.cache.services() {
            queue.add(Kind::Service.key(&s.metadata.namespace, &s.metadata.name));
        }
        for k in published.keys() {
            queue.add(k.clone());
        }
    };
    loop {
        // Changes first (biased): a queued change holds both versions of a replica, so a
        // backlog of them would keep replaced objects alive; turning them into keys is cheap.
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return,
            c = changes.recv() => match c {
                None => return,
                Some(Change::Resync) => enqueue_all(&queue, &published),
                Some(c) => crate::engine::replication::keys_for(&c).into_iter().for_each(|k| queue.add(k)),
            },
            key = queue.next() => {
                let (ns, name) = split_key(&key);
                let exists = ctx.cache.service(&key).is_some();
                let eps = endpoints_of(&ctx.cache.replica_objects_of_service(ns, name));
                let result = if !exists && eps.is_empty() {
                    if published.remove(&key).is_some() {
                        ctx.discovery.remove_service(ns, name).await
                    } else {
                        Ok(())
                    }
                } else if published.get(&key) != Some(&eps) {
                    let r = ctx.discovery.set_endpoints(ns, name, eps.clone()).await;
                    if r.is_ok() {
                        published.insert(key.clone(), eps);
                    }
                    r
                } else {
                    Ok(())
                };
                match result {
                    Ok(()) => queue.forget(&key),
                    Err(e) => {
                        tracing::warn!(service = %key, error = %e, "endpoints: publish failed");
                        queue.retry(key.clone());
                    }
                }
                queue.done(&key);
            }
        }
    }
}
