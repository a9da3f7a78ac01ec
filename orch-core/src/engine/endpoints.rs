//! The endpoints controller: publishes each service's ready replicas to [`Discovery`]
//! whenever they change, and removes services that are gone.

use std::collections::HashMap;
use std::sync::Arc;

use crate::discovery::{Discovery, DiscoveryError, Endpoint, EndpointPort, Published};
use crate::engine::cache::Change;
use crate::engine::ctx::Ctx;
use crate::engine::queue::WorkQueue;
use crate::engine::replication::split_key;
use crate::model::object::{DesiredState, Kind, Object, Phase};

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
                    .map(|p| EndpointPort {
                        name: p.name.clone(),
                        port: p.port,
                        protocol: r
                            .spec
                            .template
                            .ports
                            .iter()
                            .find(|t| t.name == p.name)
                            .map(|t| t.protocol)
                            .unwrap_or_default(),
                    })
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
    // Changes become keys as the cache applies them (a queued change would hold both versions
    // of a replica alive); a resync is handed to the loop, which knows what was published.
    let resync = Arc::new(tokio::sync::Notify::new());
    {
        let (queue, resync, cancel) = (queue.clone(), resync.clone(), ctx.cancel.clone());
        ctx.cache.on_change(move |c| {
            match c {
                Change::Resync => resync.notify_one(),
                c if matches!(c.kind(), Some(Kind::Service | Kind::Replica)) => {
                    crate::engine::replication::keys_for(c)
                        .into_iter()
                        .for_each(|k| queue.add(k))
                }
                _ => {}
            }
            !cancel.is_cancelled()
        });
    }
    let mut published: HashMap<String, State> = HashMap::new();
    let enqueue_all = |queue: &WorkQueue<String>, published: &HashMap<String, State>| {
        for s in ctx.cache.services() {
            queue.add(Kind::Service.key(&s.metadata.namespace, &s.metadata.name));
        }
        for k in published.keys() {
            queue.add(k.clone());
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return,
            _ = resync.notified() => enqueue_all(&queue, &published),
            key = queue.next() => {
                let (ns, name) = split_key(&key);
                let service = ctx.cache.service(&key);
                let eps = endpoints_of(&ctx.cache.replica_objects_of_service(ns, name));
                let result = match service.as_ref() {
                    None if eps.is_empty() => match published.remove(&key) {
                        Some(_) => ctx.discovery.remove_service(ns, name).await,
                        None => Ok(()),
                    },
                    service => {
                        let ports = service.map(Published::of).unwrap_or_default();
                        let r = publish(&*ctx.discovery, &mut published, &key, ports, eps).await;
                        if let Err(e) = &r {
                            // Once per distinct failure: a port in use on this node, say.
                            let state = published.entry(key.clone()).or_default();
                            let m = e.to_string();
                            if state.last_error.as_deref() != Some(m.as_str()) {
                                ctx.recorder.with_source("endpoints").warning(
                                    Kind::Service, ns, name, "PublishFailed", &m,
                                );
                                state.last_error = Some(m);
                            }
                        } else if let Some(state) = published.get_mut(&key) {
                            state.last_error = None;
                        }
                        r
                    }
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

/// What was last published for one service.
#[derive(Default)]
struct State {
    ports: Option<Vec<Published>>,
    endpoints: Option<Vec<Endpoint>>,
    last_error: Option<String>,
}

/// Publishes what changed: the published ports first (so a proxy listens before it has
/// endpoints), then the endpoints, even when the ports failed (a port in use must not keep a
/// service out of DNS). Only what succeeded is remembered, so a failure retries; the first
/// error is returned.
async fn publish(
    discovery: &dyn Discovery,
    published: &mut HashMap<String, State>,
    key: &str,
    ports: Vec<Published>,
    eps: Vec<Endpoint>,
) -> Result<(), DiscoveryError> {
    let (ns, name) = split_key(key);
    let state = published.entry(key.to_string()).or_default();
    let mut result = Ok(());
    if state.ports.as_ref() != Some(&ports) {
        result = discovery.set_published(ns, name, ports.clone()).await;
        if result.is_ok() {
            state.ports = Some(ports);
        }
    }
    if state.endpoints.as_ref() != Some(&eps) {
        let r = discovery.set_endpoints(ns, name, eps.clone()).await;
        if r.is_ok() {
            state.endpoints = Some(eps);
        }
        result = result.and(r);
    }
    result
}
