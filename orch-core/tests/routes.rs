//! Routes in the engine: endpoints picked by labels across services, named target ports
//! resolved per template, headless routes, a route sharing its name with a service, virtual
//! IP leases and node ports. The whole engine over the in-memory store, the fake runtime, the
//! fake network and the in-memory discovery, with tokio's paused clock.

mod common;

use common::{events_with, eventually};

use std::sync::Arc;
use std::time::Duration;

use orch_core::discovery::{Endpoint, Published};
use orch_core::engine::api;
use orch_core::engine::ClusterNetwork;
use orch_core::model::manifest;
use orch_core::model::object::{Balance, Kind, Object, Route};
use orch_core::node::AgentNetwork;
use orch_core::{
    AgentConfig, Engine, EngineConfig, FakeNetwork, FakeRuntime, MemDiscovery, MemStore,
};
use orch_sched::DefaultScheduler;

fn parse(y: &str) -> Object {
    manifest::parse("test.yaml", y).unwrap().remove(0)
}

/// A service of containers with template labels `labels` and ports `ports` (YAML flow).
fn service(name: &str, replicas: u32, labels: &str, ports: &str, extra: &str) -> Object {
    parse(&format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n{extra}  template:\n    image: busybox\n    labels: {labels}\n    ports: {ports}\n"
    ))
}

fn route(name: &str, spec: &str) -> Object {
    parse(&format!(
        "apiVersion: orch/v1\nkind: Route\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    ))
}

/// An engine with a cluster network, the in-memory discovery and one node whose agent runs
/// containers in their own (fake) network.
fn cluster() -> (Arc<MemStore>, Engine, MemDiscovery) {
    let store = Arc::new(MemStore::new());
    let disc = MemDiscovery::default();
    let mut e = Engine::builder(store.clone(), Arc::new(DefaultScheduler))
        .config(EngineConfig {
            network: Some(ClusterNetwork::default()),
            ..EngineConfig::default()
        })
        .discovery(Arc::new(disc.clone()))
        .start();
    let (rt, net) = (FakeRuntime::default().with_containers(), FakeNetwork::new());
    let mut cfg = AgentConfig::new("node-a");
    cfg.network = Some(AgentNetwork(Arc::new(net)));
    e.add_agent(Arc::new(rt), cfg);
    (store, e, disc)
}

fn stored_route(e: &Engine, name: &str) -> Option<Route> {
    e.cache()
        .get(Kind::Route, &Kind::Route.key("default", name))
        .and_then(|o| o.as_route().cloned())
}

/// `(replica's service, port "http")` of each endpoint, sorted.
fn ports(eps: &[Endpoint]) -> Vec<(String, Option<u16>)> {
    let mut v: Vec<(String, Option<u16>)> = eps
        .iter()
        .map(|e| {
            let svc = e.replica.rsplit_once('-').map_or("", |(s, _)| s);
            (svc.to_string(), e.port("http"))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn one_route_over_three_services_resolves_named_target_ports_per_template() {
    let (store, e, disc) = cluster();
    api::apply(
        &*store,
        vec![
            service("a", 1, "{app: shop}", "[{name: web, port: 8080}]", ""),
            service("b", 2, "{app: shop}", "[{name: web, port: 9090}]", ""),
            service("c", 1, "{app: shop}", "[{name: other, port: 7000}]", ""),
            service("d", 1, "{app: admin}", "[{name: web, port: 8080}]", ""),
            route(
                "shop",
                "  selector: {matchLabels: {app: shop}}\n  ports: [{name: http, port: 80, targetPort: web}]\n",
            ),
        ],
        false,
    )
    .await
    .unwrap();
    eventually("4 endpoints of the route", || {
        disc.endpoints("default", "shop").len() == 4
    })
    .await;
    let eps = disc.endpoints("default", "shop");
    assert_eq!(
        ports(&eps),
        [
            ("a".to_string(), Some(8080)),
            ("b".to_string(), Some(9090)),
            ("b".to_string(), Some(9090)),
            ("c".to_string(), None),
        ],
        "port 80 goes to each template's port named web; c has none"
    );
    assert!(eps.iter().all(|e| e.ip.starts_with("10.244.")), "{eps:?}");
    // The virtual IP: leased into the route's status, published with the route's port.
    eventually("the route's virtual IP in discovery", || {
        disc.virtual_ip("default", "shop").is_some()
    })
    .await;
    let vip = disc.virtual_ip("default", "shop").unwrap();
    let leased = stored_route(&e, "shop").unwrap().status.virtual_ip.unwrap();
    assert_eq!(vip.ip.to_string(), leased);
    assert_eq!(vip.ports.len(), 1);
    assert_eq!(
        (vip.ports[0].name.as_str(), vip.ports[0].port),
        ("http", 80)
    );
    // Its status counts the endpoints (the route status controller's one write).
    eventually("status.endpoints = 4", || {
        stored_route(&e, "shop")
            .is_some_and(|r| r.status.endpoints == 4 && r.status.message.is_empty())
    })
    .await;
    // Scaled down: the route follows within the reconcile.
    api::apply(
        &*store,
        vec![service(
            "b",
            0,
            "{app: shop}",
            "[{name: web, port: 9090}]",
            "",
        )],
        false,
    )
    .await
    .unwrap();
    eventually("2 endpoints after b scaled to 0", || {
        disc.endpoints("default", "shop").len() == 2
    })
    .await;
    eventually("status.endpoints = 2", || {
        stored_route(&e, "shop").is_some_and(|r| r.status.endpoints == 2)
    })
    .await;
    // Deleted: gone from discovery, its virtual IP released and leased again to the next.
    api::delete(&*store, Kind::Route, "default", "shop")
        .await
        .unwrap();
    eventually("route gone from discovery", || {
        disc.virtual_ip("default", "shop").is_none() && disc.endpoints("default", "shop").is_empty()
    })
    .await;
    api::apply(
        &*store,
        vec![route(
            "again",
            "  selector: {matchLabels: {app: admin}}\n  ports: [{port: 8080}]\n",
        )],
        false,
    )
    .await
    .unwrap();
    eventually("the released address is leased again", || {
        stored_route(&e, "again").and_then(|r| r.status.virtual_ip) == Some(leased.clone())
    })
    .await;
    eventually("the admin route's endpoint", || {
        disc.endpoints("default", "again").len() == 1
    })
    .await;
    assert_eq!(
        disc.endpoints("default", "again")[0].port("8080"),
        Some(8080)
    );
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_headless_route_has_no_virtual_ip_and_a_route_wins_a_shared_name() {
    let (store, e, disc) = cluster();
    // Service db (its own virtual IP) and a headless route db over other replicas.
    api::apply(
        &*store,
        vec![
            service("db", 1, "{app: db}", "[{name: pg, port: 5432}]", ""),
            service("db-real", 2, "{app: pg}", "[{name: pg, port: 5432}]", ""),
        ],
        false,
    )
    .await
    .unwrap();
    eventually("the service's own virtual IP and endpoint", || {
        disc.virtual_ip("default", "db").is_some() && disc.endpoints("default", "db").len() == 1
    })
    .await;
    api::apply(
        &*store,
        vec![route(
            "db",
            "  selector: {matchLabels: {app: pg}}\n  headless: true\n",
        )],
        false,
    )
    .await
    .unwrap();
    eventually(
        "the route's endpoints answer the name, no virtual IP",
        || {
            let eps = disc.endpoints("default", "db");
            eps.len() == 2
                && eps.iter().all(|e| e.replica.starts_with("db-real-"))
                && disc.virtual_ip("default", "db").is_none()
        },
    )
    .await;
    // An alias (as Compose's network aliases become): a headless route by orch/service.
    api::apply(
        &*store,
        vec![route(
            "postgres",
            "  selector: {matchLabels: {orch/service: db-real}}\n  headless: true\n",
        )],
        false,
    )
    .await
    .unwrap();
    eventually("the alias answers the service's replicas", || {
        let eps = disc.endpoints("default", "postgres");
        eps.len() == 2 && eps.iter().all(|e| e.replica.starts_with("db-real-"))
    })
    .await;
    // A headless route gets no lease.
    tokio::time::sleep(Duration::from_secs(2)).await; // a quiet window: no lease comes
    assert_eq!(stored_route(&e, "db").unwrap().status.virtual_ip, None);
    assert_eq!(stored_route(&e, "db").unwrap().status.endpoints, 2);
    // The route goes: the service's own endpoints and virtual IP come back.
    api::delete(&*store, Kind::Route, "default", "db")
        .await
        .unwrap();
    eventually("the service answers its name again", || {
        let eps = disc.endpoints("default", "db");
        eps.len() == 1
            && eps[0].replica.starts_with("db-")
            && disc.virtual_ip("default", "db").is_some()
    })
    .await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn node_ports_are_allocated_published_and_conflicts_are_said() {
    let (store, e, disc) = cluster();
    api::apply(
        &*store,
        vec![
            service("web", 1, "{app: web}", "[{name: http, port: 8080}]", ""),
            route(
                "first",
                "  selector: {matchLabels: {app: web}}\n  nodePorts: true\n  ports: [{port: 80, targetPort: 8080}]\n",
            ),
        ],
        false,
    )
    .await
    .unwrap();
    eventually("first gets the lowest node port", || {
        stored_route(&e, "first").is_some_and(|r| r.status.node_ports.get("80") == Some(&30000))
    })
    .await;
    eventually("published on the node", || {
        disc.published("default", "first")
            == vec![Published {
                port: 30000,
                target: "80".into(),
                balance: Balance::RoundRobin,
            }]
    })
    .await;
    assert_eq!(disc.endpoints("default", "first")[0].port("80"), Some(8080));
    api::apply(
        &*store,
        vec![
            route(
                "second",
                "  selector: {matchLabels: {app: web}}\n  nodePorts: true\n  ports: [{port: 80, nodePort: 30000}]\n",
            ),
            route(
                "third",
                "  selector: {matchLabels: {app: web}}\n  nodePorts: true\n  ports: [{name: http, port: 80}]\n",
            ),
        ],
        false,
    )
    .await
    .unwrap();
    eventually("third gets the next free one", || {
        stored_route(&e, "third").is_some_and(|r| r.status.node_ports.get("http") == Some(&30001))
    })
    .await;
    eventually("second says its port is taken", || {
        stored_route(&e, "second").is_some_and(|r| {
            r.status.node_ports.is_empty()
                && r.status.message == "node port 30000 of port 80 is taken by route default/first"
        })
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while events_with(&store, "NodePortTaken").await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no NodePortTaken event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(disc.published("default", "second").is_empty());
    // first goes: second gets the port it asks for.
    api::delete(&*store, Kind::Route, "default", "first")
        .await
        .unwrap();
    eventually("second holds 30000", || {
        stored_route(&e, "second").is_some_and(|r| {
            r.status.node_ports.get("80") == Some(&30000) && r.status.message.is_empty()
        })
    })
    .await;
    eventually("second published", || {
        disc.published("default", "second").len() == 1
    })
    .await;
    e.shutdown().await;
}
