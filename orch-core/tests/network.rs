//! Replica networking in the engine and the agent: the network controller's subnet and
//! virtual IP leases, the agent's attachments, lease wait and host-network fallback, peers,
//! the scheduler's host ports and the endpoints' addresses. The whole engine over the
//! in-memory store, the fake runtime and the fake network, with tokio's paused clock.

mod common;

use common::{events_with, eventually, ready, replicas};

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use orch_core::discovery::{EndpointPort, VirtualIp};
use orch_core::engine::api::{self, NodeOp};
use orch_core::engine::ClusterNetwork;
use orch_core::model::manifest;
use orch_core::model::object::{
    Kind, Metadata, Node, NodeCondition, NodeSpec, NodeStatus, Object, Phase, Protocol, Reason,
};
use orch_core::model::quantity::Timestamp;
use orch_core::network::NetworkError;
use orch_core::node::AgentNetwork;
use orch_core::store::{create_op, Store};
use orch_core::{
    AgentConfig, Engine, EngineConfig, FakeNetwork, FakeRuntime, MemDiscovery, MemStore,
};
use orch_sched::DefaultScheduler;

fn config(net: ClusterNetwork) -> EngineConfig {
    EngineConfig {
        network: Some(net),
        ..EngineConfig::default()
    }
}

fn engine_with(store: Arc<MemStore>, cfg: EngineConfig) -> Engine {
    Engine::builder(store, Arc::new(DefaultScheduler))
        .config(cfg)
        .start()
}

fn engine(store: Arc<MemStore>) -> Engine {
    engine_with(store, config(ClusterNetwork::default()))
}

/// A service of containers listening on 8080 in their own network (`extra` adds to its spec).
fn containers(name: &str, replicas: u32, extra: &str) -> Object {
    let y = format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n{extra}  template:\n    image: busybox\n    ports: [{{name: http, port: 8080}}]\n");
    manifest::parse("test.yaml", &y).unwrap().remove(0)
}

/// A node object as an agent elsewhere would register it.
fn node(name: &str, address: &str) -> Object {
    Object::Node(Node {
        metadata: Metadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", Timestamp::now().0),
            ..Metadata::default()
        },
        spec: NodeSpec::default(),
        status: NodeStatus {
            addresses: vec![address.into()],
            condition: NodeCondition::Ready,
            heartbeat: Some(Timestamp::now()),
            ..NodeStatus::default()
        },
    })
}

async fn create(store: &MemStore, obj: Object) {
    store.txn(vec![create_op(&obj)]).await.unwrap();
}

fn lease(e: &Engine, node: &str) -> Option<String> {
    match e
        .cache()
        .get(Kind::Node, &Kind::Node.key("", node))
        .as_deref()
    {
        Some(Object::Node(n)) => n.spec.network.as_ref().map(|l| l.subnet.clone()),
        _ => None,
    }
}

fn vip(e: &Engine, svc: &str) -> Option<String> {
    e.cache()
        .service(&Kind::Service.key("default", svc))
        .and_then(|s| s.status.virtual_ip)
}

/// The events with `reason` once there is one (fails after 120 s of the paused clock).
async fn events_soon(store: &MemStore, reason: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let events = events_with(store, reason).await;
        if !events.is_empty() {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for a {reason} event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An agent for `name` running containers with a fake network; the cluster DNS is at
/// 127.0.0.53:53 on the host.
fn add_agent(e: &mut Engine, name: &str, rt: &FakeRuntime, net: &FakeNetwork) {
    let mut cfg = AgentConfig::new(name);
    cfg.network = Some(AgentNetwork(Arc::new(net.clone())));
    cfg.dns = Some("127.0.0.53:53".parse().unwrap());
    e.add_agent(Arc::new(rt.clone()), cfg);
}

/// A cluster with a network and one node, `node-a`, whose agent runs containers (a fake
/// runtime) with a fake network.
fn one_node() -> (Arc<MemStore>, Engine, FakeRuntime, FakeNetwork) {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let (rt, net) = (FakeRuntime::default().with_containers(), FakeNetwork::new());
    add_agent(&mut e, "node-a", &rt, &net);
    (store, e, rt, net)
}

#[tokio::test(start_paused = true)]
async fn subnets_are_unique_the_lowest_free_and_kept_across_an_engine_restart() {
    let store = Arc::new(MemStore::new());
    let e = engine(store.clone());
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        create(&store, node(n, &format!("192.168.0.{}", i + 1))).await;
    }
    eventually("three leases", || {
        ["a", "b", "c"].iter().all(|n| lease(&e, n).is_some())
    })
    .await;
    let leases: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| lease(&e, n).unwrap())
        .collect();
    let mut sorted = leases.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec!["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"],
        "unique, the lowest free"
    );
    let full = match e.cache().get(Kind::Node, "/nodes/a").as_deref() {
        Some(Object::Node(n)) => n.spec.network.clone().unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(full.cluster_cidr, "10.244.0.0/16");
    assert_eq!(full.service_cidr, "10.96.0.0/16");
    e.shutdown().await;
    // A new manager over the same store keeps every lease, and leases a new node the next.
    let e2 = engine(store.clone());
    eventually("synced", || e2.cache().synced()).await;
    create(&store, node("d", "192.168.0.4")).await;
    eventually("d leased", || lease(&e2, "d").is_some()).await;
    let again: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| lease(&e2, n).unwrap())
        .collect();
    assert_eq!(again, leases);
    assert_eq!(lease(&e2, "d").unwrap(), "10.244.3.0/24");
    e2.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_nodes_subnet_is_leased_again() {
    let store = Arc::new(MemStore::new());
    let e = engine(store.clone());
    create(&store, node("a", "192.168.0.1")).await;
    eventually("a", || lease(&e, "a").is_some()).await;
    create(&store, node("b", "192.168.0.2")).await;
    eventually("b", || lease(&e, "b").is_some()).await;
    assert_eq!(lease(&e, "a").unwrap(), "10.244.0.0/24");
    api::node_op(&*store, "a", NodeOp::Remove { force: true })
        .await
        .unwrap();
    eventually("a gone", || e.cache().get(Kind::Node, "/nodes/a").is_none()).await;
    create(&store, node("c", "192.168.0.3")).await;
    eventually("c", || lease(&e, "c").is_some()).await;
    assert_eq!(
        lease(&e, "c").unwrap(),
        "10.244.0.0/24",
        "a's subnet is free again"
    );
    assert_eq!(lease(&e, "b").unwrap(), "10.244.1.0/24");
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_node_with_an_address_inside_a_cidr_gets_no_subnet_and_an_event() {
    let store = Arc::new(MemStore::new());
    let e = engine(store.clone());
    create(&store, node("inside", "10.244.7.9")).await;
    create(&store, node("in-services", "10.96.0.20")).await;
    create(&store, node("fine", "192.168.0.1")).await;
    eventually("fine leased", || lease(&e, "fine").is_some()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lease(&e, "inside"), None);
    assert_eq!(lease(&e, "in-services"), None);
    let events = events_with(&store, "NetworkOverlap").await;
    assert!(
        events
            .iter()
            .any(|m| m.contains("10.244.7.9") && m.contains("cluster CIDR 10.244.0.0/16")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|m| m.contains("10.96.0.20") && m.contains("service CIDR 10.96.0.0/16")),
        "{events:?}"
    );
    // Heartbeats re-run the controller: still one event per node.
    assert_eq!(events.len(), 2, "{events:?}");
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_cluster_cidr_is_an_event_until_a_node_goes() {
    let store = Arc::new(MemStore::new());
    let net = ClusterNetwork {
        cluster_cidr: "10.244.0.0/23".parse().unwrap(),
        ..ClusterNetwork::default()
    };
    let e = engine_with(store.clone(), config(net));
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        create(&store, node(n, &format!("192.168.0.{}", i + 1))).await;
        let n = n.to_string();
        if i < 2 {
            eventually("leased", || lease(&e, &n).is_some()).await;
        }
    }
    let m = events_soon(&store, "ClusterCidrExhausted").await.remove(0);
    assert!(
        m.contains("10.244.0.0/23") && m.contains("2 /24 subnets"),
        "{m}"
    );
    assert_eq!(lease(&e, "c"), None);
    api::node_op(&*store, "a", NodeOp::Remove { force: true })
        .await
        .unwrap();
    eventually("c leased a's subnet", || {
        lease(&e, "c").as_deref() == Some("10.244.0.0/24")
    })
    .await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn virtual_ips_are_unique_over_many_services_created_at_once() {
    let store = Arc::new(MemStore::new());
    let e = engine(store.clone());
    let names: Vec<String> = (0..60).map(|i| format!("s{i}")).collect();
    let objects = names.iter().map(|n| containers(n, 0, "")).collect();
    api::apply(&*store, objects, false).await.unwrap();
    eventually("every service has a virtual IP", || {
        names.iter().all(|n| vip(&e, n).is_some())
    })
    .await;
    let vips: HashSet<Ipv4Addr> = names
        .iter()
        .map(|n| vip(&e, n).unwrap().parse().unwrap())
        .collect();
    assert_eq!(vips.len(), names.len(), "unique");
    let cidr: ipnet::Ipv4Net = "10.96.0.0/16".parse().unwrap();
    for v in &vips {
        assert!(cidr.contains(v) && *v != cidr.network() && *v != cidr.broadcast());
    }
    // The lowest free ones, skipping the network address.
    assert!(vips.contains(&"10.96.0.1".parse().unwrap()));
    assert!(vips.contains(&"10.96.0.60".parse().unwrap()));
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn virtual_ips_stay_through_churn_and_rollouts_none_when_headless_reused_after_delete() {
    let (store, e, rt, _net) = one_node();
    api::apply(&*store, vec![containers("web", 2, "")], false)
        .await
        .unwrap();
    eventually("2 ready and a virtual IP", || {
        ready(&e, "web") == 2 && vip(&e, "web").is_some()
    })
    .await;
    let first = vip(&e, "web").unwrap();
    // Replica churn: crashes and a scale.
    for id in rt.running() {
        rt.crash(&id, Some(1), None);
    }
    api::scale(&*store, "default", "web", 4).await.unwrap();
    eventually("4 ready", || ready(&e, "web") == 4).await;
    assert_eq!(vip(&e, "web").as_deref(), Some(first.as_str()));
    // A rollout.
    let rolled = containers("web", 4, "").to_owned();
    let mut rolled = rolled;
    if let Object::Service(s) = &mut rolled {
        s.spec.template.args = vec!["v2".into()];
    }
    api::apply(&*store, vec![rolled], false).await.unwrap();
    eventually("rolled out", || {
        let rs = replicas(&e, "web");
        rs.len() == 4
            && rs
                .iter()
                .all(|r| r.spec.template.args == ["v2"] && r.status.phase == Phase::Ready)
    })
    .await;
    assert_eq!(vip(&e, "web").as_deref(), Some(first.as_str()));
    // Headless: none, from the start or once it becomes so.
    api::apply(
        &*store,
        vec![containers("direct", 1, "  headless: true\n")],
        false,
    )
    .await
    .unwrap();
    eventually("direct ready", || ready(&e, "direct") == 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(vip(&e, "direct"), None);
    api::apply(&*store, vec![containers("other", 0, "")], false)
        .await
        .unwrap();
    eventually("other", || vip(&e, "other").is_some()).await;
    let other = vip(&e, "other").unwrap();
    assert_ne!(other, first);
    api::apply(
        &*store,
        vec![containers("other", 0, "  headless: true\n")],
        false,
    )
    .await
    .unwrap();
    eventually("other's VIP removed", || vip(&e, "other").is_none()).await;
    // Reused only once its holder is gone.
    api::apply(&*store, vec![containers("third", 0, "")], false)
        .await
        .unwrap();
    eventually("third", || vip(&e, "third").is_some()).await;
    assert_ne!(vip(&e, "third").unwrap(), first);
    api::delete(&*store, Kind::Service, "default", "web")
        .await
        .unwrap();
    eventually("web gone", || {
        e.cache().service("/services/default/web").is_none()
    })
    .await;
    api::apply(&*store, vec![containers("fourth", 0, "")], false)
        .await
        .unwrap();
    eventually("fourth", || vip(&e, "fourth").is_some()).await;
    assert_eq!(
        vip(&e, "fourth").unwrap(),
        first,
        "web's address is free again"
    );
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_agent_attaches_before_start_and_detaches_on_delete() {
    let (store, e, rt, net) = one_node();
    eventually("configured", || net.lease().is_some()).await;
    assert_eq!(net.lease().unwrap().subnet, "10.244.0.0/24");
    api::apply(&*store, vec![containers("web", 2, "")], false)
        .await
        .unwrap();
    eventually("2 ready", || ready(&e, "web") == 2).await;
    let attached = net.attachments();
    assert_eq!(attached.len(), 2);
    let mut ips = HashSet::new();
    for r in replicas(&e, "web") {
        let id = r.runtime_name();
        let a = &attached[&id];
        let spec = rt.spec_of(&id).unwrap();
        assert_eq!(
            spec.network.as_ref(),
            Some(a),
            "the runtime joins the namespace"
        );
        assert_eq!(r.status.ip.as_deref(), Some(a.ip.as_str()));
        assert_eq!(r.status.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            spec.dns.unwrap().server,
            "10.244.0.1:53".parse().unwrap(),
            "DNS at the gateway"
        );
        assert_eq!(net.ports_of(&id).unwrap(), r.spec.template.ports);
        assert!(a.ip.starts_with("10.244.0."));
        ips.insert(a.ip.clone());
    }
    assert_eq!(ips.len(), 2);
    // The node says it is ready.
    eventually("node network ready", || {
        e.cache().nodes()[0]
            .status
            .network
            .as_ref()
            .is_some_and(|n| n.ready && n.message.contains("10.244.0.0/24"))
    })
    .await;
    api::delete(&*store, Kind::Service, "default", "web")
        .await
        .unwrap();
    eventually("replicas gone", || replicas(&e, "web").is_empty()).await;
    eventually("detached", || net.attachments().is_empty()).await;
    assert!(rt.running().is_empty());
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn process_and_host_network_replicas_stay_on_the_host_network() {
    let (store, e, rt, net) = one_node();
    let y = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: proc}\nspec:\n  replicas: 1\n  template:\n    command: [server]\n";
    let process = manifest::parse("p.yaml", y).unwrap().remove(0);
    let mut host = containers("host", 1, "");
    if let Object::Service(s) = &mut host {
        s.spec.template.host_network = true;
        s.spec.template.ports[0].port = Some(9090);
    }
    api::apply(&*store, vec![process, host], false)
        .await
        .unwrap();
    eventually("both ready", || {
        ready(&e, "proc") == 1 && ready(&e, "host") == 1
    })
    .await;
    assert!(net.attachments().is_empty());
    for svc in ["proc", "host"] {
        let r = &replicas(&e, svc)[0];
        assert_eq!(r.status.ip, None);
        assert_eq!(rt.spec_of(&r.runtime_name()).unwrap().network, None);
        assert_eq!(
            rt.spec_of(&r.runtime_name()).unwrap().dns.unwrap().server,
            "127.0.0.53:53".parse().unwrap()
        );
    }
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_agent_restart_re_adopts_with_the_same_ip_and_detaches_orphan_attachments() {
    let store = Arc::new(MemStore::new());
    let (rt, net) = (FakeRuntime::default().with_containers(), FakeNetwork::new());
    let mut e = engine(store.clone());
    add_agent(&mut e, "node-a", &rt, &net);
    api::apply(&*store, vec![containers("web", 2, "")], false)
        .await
        .unwrap();
    eventually("2 ready", || ready(&e, "web") == 2).await;
    let before: Vec<(String, Option<String>)> = replicas(&e, "web")
        .iter()
        .map(|r| (r.status.runtime_id.clone(), r.status.ip.clone()))
        .collect();
    e.shutdown().await;
    // Left by a crash: an attachment whose workload is gone.
    net.insert_attachment("default.ghost-abcde", "10.244.0.200");
    let starts = rt.start_count();
    let mut e2 = engine(store.clone());
    add_agent(&mut e2, "node-a", &rt, &net);
    eventually("orphan detached", || {
        !net.attachments().contains_key("default.ghost-abcde")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rt.start_count(), starts, "adoption restarts nothing");
    assert_eq!(net.attachments().len(), 2);
    let after: Vec<(String, Option<String>)> = replicas(&e2, "web")
        .iter()
        .map(|r| (r.status.runtime_id.clone(), r.status.ip.clone()))
        .collect();
    assert_eq!(after, before, "same runs, same addresses");
    assert_eq!(ready(&e2, "web"), 2);
    e2.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn containers_wait_for_the_lease_then_start_on_the_host_network_saying_why() {
    let store = Arc::new(MemStore::new());
    // No cluster network: no lease ever comes.
    let mut e = engine_with(store.clone(), EngineConfig::default());
    let (rt, net) = (FakeRuntime::default().with_containers(), FakeNetwork::new());
    add_agent(&mut e, "node-a", &rt, &net);
    api::apply(&*store, vec![containers("web", 1, "")], false)
        .await
        .unwrap();
    eventually("waiting", || {
        replicas(&e, "web")
            .first()
            .is_some_and(|r| r.status.reason == Reason::NetworkNotReady)
    })
    .await;
    let r = &replicas(&e, "web")[0];
    assert_eq!(r.status.phase, Phase::Pending);
    assert!(
        r.status
            .message
            .contains("waiting for the subnet of node node-a"),
        "{}",
        r.status.message
    );
    assert!(rt.running().is_empty());
    eventually("started on the host network", || ready(&e, "web") == 1).await;
    let r = &replicas(&e, "web")[0];
    assert_eq!(r.status.ip, None);
    assert!(net.attachments().is_empty());
    eventually("node status says why", || {
        e.cache().nodes()[0]
            .status
            .network
            .as_ref()
            .is_some_and(|n| {
                !n.ready
                    && n.message
                        .starts_with("host network: no subnet leased to node node-a within 10s")
            })
    })
    .await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_network_falls_back_to_the_host_network_at_once() {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let (rt, net) = (FakeRuntime::default().with_containers(), FakeNetwork::new());
    net.fail_configure(Some(NetworkError::Unavailable(
        "no CNI plugin bridge in /usr/lib/cni".into(),
    )));
    add_agent(&mut e, "node-a", &rt, &net);
    api::apply(&*store, vec![containers("web", 1, "")], false)
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    eventually("ready", || ready(&e, "web") == 1).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(replicas(&e, "web")[0].status.ip, None);
    eventually("node status says why", || {
        e.cache().nodes()[0]
            .status
            .network
            .as_ref()
            .is_some_and(|n| n.message == "host network: no CNI plugin bridge in /usr/lib/cni")
    })
    .await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_subnet_fails_the_start_saying_so() {
    let (store, e, _rt, net) = one_node();
    eventually("configured", || net.lease().is_some()).await;
    net.fail_next_attach(NetworkError::Exhausted("no free address".into()));
    api::apply(&*store, vec![containers("web", 1, "")], false)
        .await
        .unwrap();
    eventually("start error", || {
        replicas(&e, "web").first().is_some_and(|r| {
            r.status
                .message
                .contains("subnet 10.244.0.0/24 of node node-a is full")
        })
    })
    .await;
    // The next try gets an address.
    eventually("ready", || ready(&e, "web") == 1).await;
    assert!(replicas(&e, "web")[0].status.ip.is_some());
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn peers_follow_nodes_joining_going_unreachable_and_being_removed() {
    let (store, e, _rt, net) = one_node();
    let names =
        |net: &FakeNetwork| -> Vec<String> { net.peers().into_iter().map(|p| p.node).collect() };
    create(&store, node("b", "192.168.0.2")).await;
    create(&store, node("c", "192.168.0.3")).await;
    eventually("b and c are peers", || names(&net) == ["b", "c"]).await;
    let b = net.peers().remove(0);
    assert_eq!(b.address.to_string(), "192.168.0.2");
    assert_eq!(Some(b.subnet), lease(&e, "b"));
    api::node_op(&*store, "b", NodeOp::Remove { force: true })
        .await
        .unwrap();
    eventually("b removed", || names(&net) == ["c"]).await;
    // c sends no heartbeats: the node lifecycle controller marks it Unreachable.
    eventually("c unreachable", || names(&net).is_empty()).await;
    create(&store, node("d", "192.168.0.4")).await;
    eventually("d joins", || names(&net) == ["d"]).await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn two_services_listening_on_8080_share_one_node() {
    let (store, e, _rt, _net) = one_node();
    api::apply(
        &*store,
        vec![containers("one", 1, ""), containers("two", 1, "")],
        false,
    )
    .await
    .unwrap();
    eventually("both ready", || {
        ready(&e, "one") == 1 && ready(&e, "two") == 1
    })
    .await;
    let (a, b) = (&replicas(&e, "one")[0], &replicas(&e, "two")[0]);
    assert_eq!(a.spec.node.as_deref(), Some("node-a"));
    assert_eq!(b.spec.node.as_deref(), Some("node-a"));
    assert_ne!(a.status.ip, b.status.ip);
    assert_eq!(a.status.ports[0].port, 8080);
    assert_eq!(b.status.ports[0].port, 8080);
    e.shutdown().await;
}

#[test]
fn host_ports_are_host_ports_and_the_fixed_ports_of_host_network_templates() {
    let t = |svc: Object| match svc {
        Object::Service(s) => s.spec.template,
        _ => unreachable!(),
    };
    let mut own = t(containers("web", 1, ""));
    assert_eq!(
        own.host_ports().count(),
        0,
        "its port is in its own namespace"
    );
    own.ports[0].host_port = Some(80);
    assert_eq!(own.host_ports().collect::<Vec<_>>(), [(Protocol::Tcp, 80)]);
    own.host_network = true;
    assert_eq!(
        own.host_ports().collect::<Vec<_>>(),
        [(Protocol::Tcp, 8080), (Protocol::Tcp, 80)]
    );
    let mut process = own.clone();
    process.image = None;
    process.host_network = false;
    process.ports[0].host_port = None;
    process.command = vec!["server".into()];
    assert_eq!(
        process.host_ports().collect::<Vec<_>>(),
        [(Protocol::Tcp, 8080)]
    );
}

#[tokio::test(start_paused = true)]
async fn endpoints_carry_replica_ips_and_the_virtual_ip_reaches_discovery() {
    let store = Arc::new(MemStore::new());
    let disc = MemDiscovery::default();
    let mut e = Engine::builder(store.clone(), Arc::new(DefaultScheduler))
        .config(config(ClusterNetwork::default()))
        .discovery(Arc::new(disc.clone()))
        .start();
    let (rt, net) = (FakeRuntime::default().with_containers(), FakeNetwork::new());
    add_agent(&mut e, "node-a", &rt, &net);
    api::apply(&*store, vec![containers("web", 2, "")], false)
        .await
        .unwrap();
    eventually("2 endpoints", || {
        disc.endpoints("default", "web").len() == 2
    })
    .await;
    let mut want: Vec<String> = replicas(&e, "web")
        .iter()
        .map(|r| r.status.ip.clone().unwrap())
        .collect();
    want.sort();
    let mut got: Vec<String> = disc
        .endpoints("default", "web")
        .into_iter()
        .map(|ep| ep.ip)
        .collect();
    got.sort();
    assert_eq!(got, want);
    assert!(got.iter().all(|ip| ip.starts_with("10.244.0.")));
    eventually("virtual IP set", || {
        disc.virtual_ip("default", "web").is_some()
    })
    .await;
    let v = vip(&e, "web").unwrap();
    assert_eq!(
        disc.virtual_ip("default", "web").unwrap(),
        VirtualIp {
            ip: v.parse().unwrap(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
        }
    );
    api::apply(
        &*store,
        vec![containers("web", 2, "  headless: true\n")],
        false,
    )
    .await
    .unwrap();
    eventually("virtual IP removed", || {
        disc.virtual_ip("default", "web").is_none()
    })
    .await;
    assert_eq!(disc.endpoints("default", "web").len(), 2);
    // Not headless again, then deleted: the virtual IP comes back, then goes with it.
    api::apply(&*store, vec![containers("web", 2, "")], false)
        .await
        .unwrap();
    eventually("virtual IP back", || {
        disc.virtual_ip("default", "web").is_some()
    })
    .await;
    api::delete(&*store, Kind::Service, "default", "web")
        .await
        .unwrap();
    eventually("service gone from discovery", || {
        disc.virtual_ip("default", "web").is_none() && disc.endpoints("default", "web").is_empty()
    })
    .await;
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_outside_a_changed_cluster_cidr_stays_with_a_warning() {
    let store = Arc::new(MemStore::new());
    let e = engine(store.clone());
    create(&store, node("a", "192.168.0.1")).await;
    eventually("a leased", || lease(&e, "a").is_some()).await;
    e.shutdown().await;
    // The manager comes back with another cluster CIDR: a's running replicas keep working.
    let moved = ClusterNetwork {
        cluster_cidr: "10.50.0.0/16".parse().unwrap(),
        ..ClusterNetwork::default()
    };
    let e2 = engine_with(store.clone(), config(moved));
    create(&store, node("b", "192.168.0.2")).await;
    eventually("b leased in the new CIDR", || {
        lease(&e2, "b").as_deref() == Some("10.50.0.0/24")
    })
    .await;
    assert_eq!(lease(&e2, "a").as_deref(), Some("10.244.0.0/24"));
    let events = events_soon(&store, "SubnetOutsideClusterCidr").await;
    assert!(
        events[0].contains("10.244.0.0/24") && events[0].contains("10.50.0.0/16"),
        "{events:?}"
    );
    e2.shutdown().await;
}
