//! Routes: a stable name, virtual IP and port mapping over the replicas a label selector picks
//! in the route's namespace, whatever owns them (Kubernetes' Service).
//!
//! The pure part — which replicas a route selects ([`route_endpoints`]), where each route port
//! goes on each of them ([`target_port`]), what it publishes ([`route_virtual_ip`],
//! [`route_published`]), node-port allocation ([`allocate_node_ports`]) — is used by the
//! endpoints controller (every engine: the route's name in its `Discovery`) and by the route
//! status controller here (control plane: the only writer of `RouteStatus.endpoints`,
//! `nodePorts` and `message`; the network controller writes `virtualIp`).
//!
//! Cost: a replica change looks at the routes of its namespace (a range of the cache's
//! ordered map); a route's endpoints are computed from the replicas of its namespace (a range
//! too, the selector matched under the cache's read lock; a selector of `orch/service: NAME`
//! reads that service's replicas only), so a route costs O(replicas in its namespace) per
//! reconcile, never O(all replicas); bursts of changes coalesce in the work
//! queue (one reconcile per route at a time, keys deduplicated).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::discovery::{Endpoint, EndpointPort, Published, VirtualIp};
use crate::engine::cache::{Cache, Change};
use crate::engine::controller::{Action, Reconcile};
use crate::engine::ctx::Ctx;
use crate::model::object::{
    Balance, DesiredState, Kind, Object, ObjectKey, Phase, ProbePort, Replica, Route, RoutePort,
    SERVICE_LABEL,
};
use crate::store::{update_op, StoreError};

/// The lowest and highest node port a route may use (Kubernetes' default range).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The name a route port is known by in `Discovery` and in `RouteStatus.node_ports`: its name,
/// or its number when unnamed.
pub fn port_key(p: &RoutePort) -> String {
    if p.name.is_empty() {
        p.port.to_string()
    } else {
        p.name.clone()
    }
}

/// Where route port `p` goes on replica `r`: a number as is; a name resolved in that replica
/// (the port it reports under that name, else its template's fixed port of that name) —
/// `None` when it has no such port; default: the route's port.
pub fn target_port(p: &RoutePort, r: &Replica) -> Option<u16> {
    match &p.target_port {
        None => Some(p.port),
        Some(ProbePort::Number(n)) => Some(*n),
        Some(ProbePort::Name(name)) => r
            .status
            .ports
            .iter()
            .find(|b| b.name == *name)
            .map(|b| b.port)
            .or_else(|| {
                r.spec
                    .template
                    .ports
                    .iter()
                    .find(|t| t.name == *name)
                    .and_then(|t| t.port)
            }),
    }
}

/// Whether `route` selects replica `r` (same namespace, labels match its selector).
pub fn selects(route: &Route, r: &Replica) -> bool {
    r.metadata.namespace == route.metadata.namespace
        && route.spec.selector.matches(&r.metadata.labels)
}

/// The endpoints of `route` among `replicas`: those it selects that are Ready, meant to run
/// and have an address, each with one port per route port (named by [`port_key`], at its
/// [`target_port`]; a port the replica lacks is left out for that replica), sorted.
pub fn route_endpoints(route: &Route, replicas: &[Arc<Object>]) -> Vec<Endpoint> {
    let mut eps: Vec<Endpoint> = replicas
        .iter()
        .filter_map(|o| o.as_replica())
        .filter(|r| selects(route, r))
        .filter_map(|r| {
            let ports = route.spec.ports.iter().filter_map(|p| {
                Some(EndpointPort {
                    name: port_key(p),
                    port: target_port(p, r)?,
                    protocol: p.protocol,
                })
            });
            endpoint_of(r, ports.collect())
        })
        .collect();
    eps.sort();
    eps
}

/// Replica `r` as an endpoint with `ports`, when it is one: Ready, meant to run, bound, with
/// an address (its own, else its node's).
pub(crate) fn endpoint_of(r: &Replica, ports: Vec<EndpointPort>) -> Option<Endpoint> {
    if r.status.phase != Phase::Ready || r.spec.desired != DesiredState::Running {
        return None;
    }
    Some(Endpoint {
        replica: r.metadata.name.clone(),
        node: r.spec.node.clone()?,
        ip: r.status.reach_ip()?.to_string(),
        ports,
    })
}

/// The endpoints of `route` now, from the replicas of its namespace in the cache. A selector
/// naming one service (`orch/service: NAME`, as Compose aliases do) reads only that service's
/// replicas (the cache's index by service).
pub(crate) fn endpoints_in(cache: &Cache, route: &Route) -> Vec<Endpoint> {
    let ns = &route.metadata.namespace;
    let selects = |o: &Object| matches!(o, Object::Replica(r) if route.spec.selector.matches(&r.metadata.labels));
    let replicas = match route.spec.selector.match_labels.get(SERVICE_LABEL) {
        Some(service) => cache.replica_objects_of_service(ns, service),
        None => cache.list_in(Kind::Replica, ns, selects),
    };
    route_endpoints(route, &replicas)
}

/// The virtual IP of a route (leased by the network controller) with its ports; `None` when
/// headless or not leased.
pub fn route_virtual_ip(route: &Route) -> Option<VirtualIp> {
    if route.spec.headless {
        return None;
    }
    let ip = route.status.virtual_ip.as_deref()?.parse().ok()?;
    let ports = route
        .spec
        .ports
        .iter()
        .map(|p| EndpointPort {
            name: port_key(p),
            port: p.port,
            protocol: p.protocol,
        })
        .collect();
    Some(VirtualIp { ip, ports })
}

/// The ports every node publishes for a route with `nodePorts`: each port's node port as
/// allocated in its status (so every node agrees), to the endpoints' target ports.
pub fn route_published(route: &Route) -> Vec<Published> {
    if !route.spec.node_ports {
        return Vec::new();
    }
    route
        .spec
        .ports
        .iter()
        .filter_map(|p| {
            let key = port_key(p);
            Some(Published {
                port: *route.status.node_ports.get(&key)?,
                target: key,
                balance: Balance::RoundRobin,
            })
        })
        .collect()
}

/// The node ports of `route`'s ports given `taken` (every port held elsewhere, with who holds
/// it): a given `nodePort` when free; else the one its status already has, when still free;
/// else the lowest free one of [`NODE_PORTS`]. Returns what it gets and a message per port
/// that gets none.
pub fn allocate_node_ports(
    route: &Route,
    taken: &BTreeMap<u16, String>,
) -> (BTreeMap<String, u16>, Vec<String>) {
    let mut got = BTreeMap::new();
    let mut problems = Vec::new();
    if !route.spec.node_ports {
        return (got, problems);
    }
    let mut mine = std::collections::BTreeSet::new();
    // Given ports first, so an allocated one never takes a port another port of this route asks for.
    let (given, open): (Vec<&RoutePort>, Vec<&RoutePort>) =
        route.spec.ports.iter().partition(|p| p.node_port.is_some());
    for p in given {
        let (key, n) = (port_key(p), p.node_port.unwrap_or_default());
        match taken.get(&n) {
            Some(holder) => {
                problems.push(format!("node port {n} of port {key} is taken by {holder}"))
            }
            None if !mine.insert(n) => {
                problems.push(format!("node port {n} of port {key} is used twice"))
            }
            None => {
                got.insert(key, n);
            }
        }
    }
    for p in open {
        let key = port_key(p);
        let free = |n: &u16| !taken.contains_key(n) && !mine.contains(n);
        let pick = route
            .status
            .node_ports
            .get(&key)
            .copied()
            .filter(|n| NODE_PORTS.contains(n) && free(n))
            .or_else(|| NODE_PORTS.clone().find(free));
        match pick {
            Some(n) => {
                mine.insert(n);
                got.insert(key, n);
            }
            None => problems.push(format!(
                "no node port for port {key}: every port of {}-{} is taken",
                NODE_PORTS.start(),
                NODE_PORTS.end()
            )),
        }
    }
    (got, problems)
}

/// The node ports held by everything but `route`: other routes' allocated ports and services'
/// published ports, with who holds each.
fn taken_ports(cache: &Cache, route: &Route) -> BTreeMap<u16, String> {
    let me = (&route.metadata.namespace, &route.metadata.name);
    let mut taken = BTreeMap::new();
    for o in cache.list(Kind::Service) {
        if let Some(s) = o.as_service() {
            for p in &s.spec.publish {
                taken.insert(
                    p.port,
                    format!("service {}/{}", s.metadata.namespace, s.metadata.name),
                );
            }
        }
    }
    for o in cache.list(Kind::Route) {
        let Some(r) = o.as_route() else { continue };
        if (&r.metadata.namespace, &r.metadata.name) == me {
            continue;
        }
        for n in r.status.node_ports.values() {
            taken.insert(
                *n,
                format!("route {}/{}", r.metadata.namespace, r.metadata.name),
            );
        }
    }
    taken
}

/// The keys of the routes a change concerns: the route itself, or the routes of a changed
/// replica's namespace whose selector matches its old or new labels.
pub(crate) fn route_keys_for(cache: &Cache, change: &Change) -> Vec<ObjectKey> {
    match change {
        Change::Object {
            kind: Kind::Route,
            key,
            ..
        } => ObjectKey::parse(key).into_iter().collect(),
        Change::Object {
            kind: Kind::Replica,
            ..
        } => {
            let mut keys = Vec::new();
            let replicas: Vec<&Replica> = change.replicas().collect();
            let Some(ns) = replicas.first().map(|r| r.metadata.namespace.clone()) else {
                return keys;
            };
            for o in cache.list_in(Kind::Route, &ns, |o| {
                o.as_route()
                    .is_some_and(|route| replicas.iter().any(|r| selects(route, r)))
            }) {
                keys.push(ObjectKey::of(&o));
            }
            keys
        }
        _ => Vec::new(),
    }
}

/// The route status controller (see the module doc): keeps `RouteStatus.endpoints`,
/// `nodePorts` and `message`, writing only what changed, compare-and-swap. One worker: node
/// ports are allocated across routes one route at a time, each write seen by the cache
/// before the next.
#[derive(Default)]
pub(crate) struct RouteStatusController {
    /// The last warning recorded per route, so a lasting conflict is one event.
    warned: std::sync::Mutex<BTreeMap<ObjectKey, String>>,
}

#[async_trait::async_trait]
impl Reconcile for RouteStatusController {
    type Error = StoreError;
    const NAME: &'static str = "routes";

    fn keys_for(&self, ctx: &Ctx, c: &Change) -> Vec<ObjectKey> {
        let mut keys = route_keys_for(&ctx.cache, c);
        // A route gone frees its node ports: routes short of one may get it now.
        if let Change::Object {
            kind: Kind::Route,
            new: None,
            ..
        } = c
        {
            keys.extend(
                ctx.cache
                    .list(Kind::Route)
                    .iter()
                    .filter(|o| o.as_route().is_some_and(|r| r.spec.node_ports))
                    .map(|o| ObjectKey::of(o)),
            );
        }
        keys
    }

    fn all_keys(&self, ctx: &Ctx) -> Vec<ObjectKey> {
        ctx.cache
            .list(Kind::Route)
            .iter()
            .map(|o| ObjectKey::of(o))
            .collect()
    }

    async fn reconcile(&self, key: &ObjectKey, ctx: &Ctx) -> Result<Action, StoreError> {
        let Some(obj) = ctx.cache.get(Kind::Route, &key.store_key()) else {
            self.warned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            return Ok(Action::await_change());
        };
        let Some(route) = obj.as_route() else {
            return Ok(Action::await_change());
        };
        let endpoints = endpoints_in(&ctx.cache, route).len();
        let (node_ports, problems) = if route.spec.node_ports {
            allocate_node_ports(route, &taken_ports(&ctx.cache, route))
        } else {
            Default::default()
        };
        let message = if !problems.is_empty() {
            problems.join("; ")
        } else if endpoints == 0 {
            "no ready replica matches the selector".to_string()
        } else {
            String::new()
        };
        {
            let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
            if problems.is_empty() {
                warned.remove(key);
            } else if warned.get(key) != Some(&message) {
                ctx.recorder.with_source("routes").warning(
                    Kind::Route,
                    &key.namespace,
                    &key.name,
                    "NodePortTaken",
                    &message,
                );
                warned.insert(key.clone(), message.clone());
            }
        }
        let mut next = route.clone();
        next.status.endpoints = u32::try_from(endpoints).unwrap_or(u32::MAX);
        next.status.node_ports = node_ports;
        next.status.message = message;
        if next.status != route.status {
            let rev = ctx.store.txn(vec![update_op(&Object::from(next))]).await?;
            ctx.cache.wait_for(rev).await;
        }
        Ok(Action::await_change())
    }

    fn error_policy(&self, error: &StoreError, key: &ObjectKey, _: &Ctx) -> Action {
        tracing::debug!(%key, %error, "routes: status write failed; retrying");
        Action::Backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::object::{
        BoundPort, LabelSelector, Metadata, PortSpec, Protocol, ReplicaSpec, ReplicaStatus,
        RouteSpec, RouteStatus, Template,
    };

    fn replica(name: &str, labels: &[(&str, &str)], ports: &[(&str, u16)], ready: bool) -> Object {
        let template = Template {
            ports: ports
                .iter()
                .map(|(n, p)| PortSpec {
                    name: (*n).into(),
                    port: Some(*p),
                    host_port: None,
                    protocol: Protocol::Tcp,
                })
                .collect(),
            ..Template::default()
        };
        Object::Replica(Replica {
            metadata: Metadata {
                name: name.into(),
                namespace: "default".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>()
                    .into(),
                ..Metadata::default()
            },
            spec: ReplicaSpec {
                service: "svc".into(),
                template_hash: "h".into(),
                template: Arc::new(template),
                placement: Arc::default(),
                node: Some("n1".into()),
                desired: DesiredState::Running,
            },
            status: ReplicaStatus {
                phase: if ready { Phase::Ready } else { Phase::Running },
                ip: Some(format!("10.244.0.{}", name.len())),
                ports: ports
                    .iter()
                    .map(|(n, p)| BoundPort {
                        name: (*n).into(),
                        port: *p,
                    })
                    .collect(),
                ..ReplicaStatus::default()
            },
        })
    }

    fn route(selector: &[(&str, &str)], ports: Vec<RoutePort>) -> Route {
        Route {
            metadata: Metadata {
                name: "web".into(),
                namespace: "default".into(),
                ..Metadata::default()
            },
            spec: RouteSpec {
                selector: LabelSelector {
                    match_labels: selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    match_expressions: Vec::new(),
                },
                ports,
                headless: false,
                node_ports: false,
            },
            status: RouteStatus::default(),
        }
    }

    fn port(name: &str, port: u16, target: Option<ProbePort>) -> RoutePort {
        RoutePort {
            name: name.into(),
            port,
            target_port: target,
            protocol: Protocol::Tcp,
            node_port: None,
        }
    }

    #[test]
    fn a_route_selects_ready_replicas_by_labels_and_resolves_named_target_ports_per_replica() {
        let replicas: Vec<Arc<Object>> = [
            replica(
                "a",
                &[("app", "web"), ("tier", "x")],
                &[("http", 8080)],
                true,
            ),
            replica("bb", &[("app", "web")], &[("http", 9090)], true),
            replica("ccc", &[("app", "web")], &[("other", 1)], true),
            replica("dddd", &[("app", "web")], &[("http", 8080)], false),
            replica("eeeee", &[("app", "db")], &[("http", 8080)], true),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let r = route(
            &[("app", "web")],
            vec![
                port("http", 80, Some(ProbePort::Name("http".into()))),
                port("", 81, None),
                port("n", 82, Some(ProbePort::Number(7000))),
            ],
        );
        let eps = route_endpoints(&r, &replicas);
        let names: Vec<&str> = eps.iter().map(|e| e.replica.as_str()).collect();
        assert_eq!(names, ["a", "bb", "ccc"], "ready and selected only");
        assert_eq!(eps[0].port("http"), Some(8080));
        assert_eq!(
            eps[1].port("http"),
            Some(9090),
            "resolved in each replica's own ports"
        );
        assert_eq!(
            eps[2].port("http"),
            None,
            "a replica without the name lacks that port"
        );
        assert_eq!(
            eps[2].port("81"),
            Some(81),
            "default: the route's port, keyed by number"
        );
        assert_eq!(eps[0].port("n"), Some(7000));
        let vip = route_virtual_ip(&Route {
            status: RouteStatus {
                virtual_ip: Some("10.96.0.5".into()),
                ..RouteStatus::default()
            },
            ..r.clone()
        })
        .unwrap();
        assert_eq!(vip.ports[0].port, 80);
        assert_eq!(vip.ports[0].name, "http");
        // matchExpressions count too.
        let mut by_expr = r.clone();
        by_expr.spec.selector.match_expressions.push(
            crate::model::object::LabelSelectorRequirement {
                key: "tier".into(),
                operator: crate::model::object::SelectorOperator::Exists,
                values: vec![],
            },
        );
        let eps = route_endpoints(&by_expr, &replicas);
        assert_eq!(eps.len(), 1);
    }

    #[test]
    fn node_ports_are_given_kept_or_the_lowest_free_and_conflicts_are_named() {
        let mut r = route(
            &[("app", "web")],
            vec![port("a", 80, None), port("b", 81, None)],
        );
        r.spec.node_ports = true;
        r.spec.ports[1].node_port = Some(30000);
        let mut taken = BTreeMap::new();
        taken.insert(30001, "route default/other".to_string());
        let (got, problems) = allocate_node_ports(&r, &taken);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(got.get("b"), Some(&30000));
        assert_eq!(
            got.get("a"),
            Some(&30002),
            "the lowest free, past the given and taken"
        );
        // Kept across reconciles.
        r.status.node_ports = got.clone();
        assert_eq!(allocate_node_ports(&r, &BTreeMap::new()).0, got);
        taken.insert(30000, "service default/web".to_string());
        let (got, problems) = allocate_node_ports(&r, &taken);
        assert_eq!(got.get("b"), None);
        assert_eq!(
            problems,
            ["node port 30000 of port b is taken by service default/web"]
        );
    }
}
