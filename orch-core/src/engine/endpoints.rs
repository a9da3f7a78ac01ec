//! The endpoints controller: publishes each service's ready replicas, and each route's
//! selected ready replicas, to [`Discovery`] whenever they change, and removes names that are
//! gone.
//!
//! Its keys are names in a namespace (kept as `Kind::Service` keys): `Discovery` knows one
//! entry per name. Where a route and a service share a name, the route wins: the name gets
//! the route's endpoints, virtual IP and node ports, and the service's own (replicas, virtual
//! IP, published ports) are not published under it while the route exists.

use std::collections::HashMap;
use std::sync::Arc;

use crate::discovery::{Discovery, DiscoveryError, Endpoint, EndpointPort, Published, VirtualIp};
use crate::engine::cache::Change;
use crate::engine::controller::{Action, Reconcile};
use crate::engine::ctx::Ctx;
use crate::engine::routes;
use crate::model::object::{Kind, Object, ObjectKey, Service};

/// The endpoints a set of replicas offers: ready, meant to run, with an address (the
/// replica's own, else its node's).
pub fn endpoints_of(replicas: &[Arc<Object>]) -> Vec<Endpoint> {
    let mut eps: Vec<Endpoint> = replicas
        .iter()
        .filter_map(|o| o.as_replica())
        .filter_map(|r| {
            let ports = r.status.ports.iter().map(|p| EndpointPort {
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
            });
            routes::endpoint_of(r, ports.collect())
        })
        .collect();
    eps.sort();
    eps
}

/// The virtual IP of `svc` ([`ServiceStatus::virtual_ip`](crate::model::object::ServiceStatus::virtual_ip),
/// leased by the network controller) with the template's fixed ports; `None` when it is
/// headless or has none.
pub fn virtual_ip_of(svc: &Service) -> Option<VirtualIp> {
    if svc.spec.headless {
        return None;
    }
    let ip = svc.status.virtual_ip.as_deref()?.parse().ok()?;
    let ports = svc
        .spec
        .template
        .ports
        .iter()
        .filter_map(|p| {
            Some(EndpointPort {
                name: p.name.clone(),
                port: p.port?,
                protocol: p.protocol,
            })
        })
        .collect();
    Some(VirtualIp { ip, ports })
}

/// The endpoints controller (see the module doc); it remembers what it last published for
/// each service.
#[derive(Default)]
pub(crate) struct Endpoints {
    published: tokio::sync::Mutex<HashMap<ObjectKey, State>>,
    /// The keys in `published`, readable without waiting (for a resync, which runs as the
    /// cache applies a change).
    known: std::sync::Mutex<std::collections::HashSet<ObjectKey>>,
}

#[async_trait::async_trait]
impl Reconcile for Endpoints {
    type Error = DiscoveryError;
    const NAME: &'static str = "endpoints";

    fn keys_for(&self, ctx: &Ctx, c: &Change) -> Vec<ObjectKey> {
        let mut keys = if matches!(c.kind(), Some(Kind::Service | Kind::Replica)) {
            crate::engine::replication::keys_for(c)
        } else {
            Vec::new()
        };
        if matches!(c.kind(), Some(Kind::Route | Kind::Replica)) {
            keys.extend(
                routes::route_keys_for(&ctx.cache, c)
                    .into_iter()
                    .map(name_key),
            );
        }
        keys
    }

    fn all_keys(&self, ctx: &Ctx) -> Vec<ObjectKey> {
        let mut keys = ctx.cache.service_keys();
        keys.extend(
            ctx.cache
                .list(Kind::Route)
                .iter()
                .map(|o| name_key(ObjectKey::of(o))),
        );
        keys.extend(
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        keys
    }

    async fn reconcile(&self, key: &ObjectKey, ctx: &Ctx) -> Result<Action, DiscoveryError> {
        let (ns, name) = (key.namespace.as_str(), key.name.as_str());
        let route = ctx.cache.get(Kind::Route, &Kind::Route.key(ns, name));
        if let Some(route) = route.as_deref().and_then(Object::as_route) {
            let eps = routes::endpoints_in(&ctx.cache, route);
            let (ports, vip) = (
                routes::route_published(route),
                routes::route_virtual_ip(route),
            );
            let mut published = self.published.lock().await;
            let r = publish(&*ctx.discovery, &mut published, key, ports, vip, eps).await;
            self.after_publish(ctx, &mut published, key, Kind::Route, &r);
            return r.map(|()| Action::await_change());
        }
        let service = ctx.cache.service(&key.store_key());
        let eps = endpoints_of(&ctx.cache.replica_objects_of_service(ns, name));
        let mut published = self.published.lock().await;
        let result = match service.as_ref() {
            None if eps.is_empty() => match published.remove(key) {
                Some(state) => {
                    // Its virtual IP goes first, so no backend balances it to nothing.
                    let vip = match state.vip {
                        Some(Some(_)) => ctx.discovery.set_virtual_ip(ns, name, None).await,
                        _ => Ok(()),
                    };
                    let r = ctx.discovery.remove_service(ns, name).await;
                    vip.and(r)
                }
                None => Ok(()),
            },
            service => {
                let ports = service.map(Published::of).unwrap_or_default();
                let vip = service.and_then(virtual_ip_of);
                let r = publish(&*ctx.discovery, &mut published, key, ports, vip, eps).await;
                self.after_publish(ctx, &mut published, key, Kind::Service, &r);
                return r.map(|()| Action::await_change());
            }
        };
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = published.keys().cloned().collect();
        result.map(|()| Action::await_change())
    }

    fn error_policy(&self, error: &DiscoveryError, key: &ObjectKey, _: &Ctx) -> Action {
        tracing::warn!(service = %key, %error, "endpoints: publish failed");
        Action::Backoff
    }
}

/// The name slot a route's key publishes under (the endpoints controller's keys are names).
fn name_key(k: ObjectKey) -> ObjectKey {
    ObjectKey::new(Kind::Service, &k.namespace, &k.name)
}

impl Endpoints {
    /// Records a failed publish as a warning on `kind`'s object, once per distinct failure
    /// (a port in use on this node, say); forgets it after a success; refreshes `known`.
    fn after_publish(
        &self,
        ctx: &Ctx,
        published: &mut HashMap<ObjectKey, State>,
        key: &ObjectKey,
        kind: Kind,
        r: &Result<(), DiscoveryError>,
    ) {
        if let Err(e) = r {
            let state = published.entry(key.clone()).or_default();
            let m = e.to_string();
            if state.last_error.as_deref() != Some(m.as_str()) {
                ctx.recorder.with_source("endpoints").warning(
                    kind,
                    &key.namespace,
                    &key.name,
                    "PublishFailed",
                    &m,
                );
                state.last_error = Some(m);
            }
        } else if let Some(state) = published.get_mut(key) {
            state.last_error = None;
        }
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = published.keys().cloned().collect();
    }
}

/// What was last published for one service.
#[derive(Default)]
struct State {
    ports: Option<Vec<Published>>,
    vip: Option<Option<VirtualIp>>,
    endpoints: Option<Vec<Endpoint>>,
    last_error: Option<String>,
}

/// Publishes what changed: the published ports first (so a proxy listens before it has
/// endpoints), the virtual IP, then the endpoints, even when the ports failed (a port in use
/// must not keep a service out of DNS). Only what succeeded is remembered, so a failure retries; the first
/// error is returned.
async fn publish(
    discovery: &dyn Discovery,
    published: &mut HashMap<ObjectKey, State>,
    key: &ObjectKey,
    ports: Vec<Published>,
    vip: Option<VirtualIp>,
    eps: Vec<Endpoint>,
) -> Result<(), DiscoveryError> {
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    let state = published.entry(key.clone()).or_default();
    let mut result = Ok(());
    if state.ports.as_ref() != Some(&ports) {
        result = discovery.set_published(ns, name, ports.clone()).await;
        if result.is_ok() {
            state.ports = Some(ports);
        }
    }
    if state.vip.as_ref() != Some(&vip) {
        let r = discovery.set_virtual_ip(ns, name, vip.clone()).await;
        if r.is_ok() {
            state.vip = Some(vip);
        }
        result = result.and(r);
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
