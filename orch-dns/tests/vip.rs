//! Virtual IPs balanced in the kernel, for real: a node network namespace with a bridge and
//! three replica namespaces on it (see `common/netns.rs`), each replica serving its name over
//! TCP and UDP; the service proxy runs inside the node namespace (its `nft` and `conntrack`
//! children too). Needs root, `ip` and `nft` (skipped without them; a failure under
//! `ORCH_TEST_REQUIRE_ALL=1`).

#[path = "common/netns.rs"]
mod netns;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use netns::{hello, hello_udp, Lan};
use orch_core::discovery::{Discovery, Endpoint, EndpointPort, VirtualIp};
use orch_core::model::object::Protocol;
use orch_dns::proxy::{ProxyConfig, ServiceProxy};

const VIP: [u8; 4] = [10, 96, 0, 10];
const PORT: u16 = 8080;

fn port(name: &str, port: u16, protocol: Protocol) -> EndpointPort {
    EndpointPort {
        name: name.into(),
        port,
        protocol,
    }
}

fn endpoints(lan: &Lan, which: &[usize]) -> Vec<Endpoint> {
    which
        .iter()
        .map(|i| {
            let r = &lan.replicas[*i];
            Endpoint {
                replica: r.name.clone(),
                node: "n1".into(),
                ip: r.ip.to_string(),
                ports: vec![
                    port("http", PORT, Protocol::Tcp),
                    port("dns", PORT, Protocol::Udp),
                ],
            }
        })
        .collect()
}

fn vip() -> VirtualIp {
    VirtualIp {
        ip: IpAddr::from(VIP),
        ports: vec![
            port("http", 80, Protocol::Tcp),
            port("dns", 53, Protocol::Udp),
        ],
    }
}

fn tally(names: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for n in names {
        *seen.entry(n).or_default() += 1;
    }
    seen
}

/// Enters the network namespace at `path` (this thread) and makes a runtime for it.
fn runtime_in(path: &str) -> tokio::runtime::Runtime {
    netns::enter(path);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn needs() -> bool {
    orch_testkit::require(&["root", "ip", "nft"])
}

#[test]
fn a_virtual_ip_balances_over_ready_replicas_from_the_node_and_from_replicas() {
    if !needs() {
        return;
    }
    let mut lan = Lan::new(3);
    lan.serve_names(PORT);
    let http = SocketAddr::from((VIP, 80));
    let dns = SocketAddr::from((VIP, 53));
    let r0 = &lan.replicas[0].ns;
    let r1 = &lan.replicas[1].ns;
    let node_path = format!("/run/netns/{}", lan.node.name);
    let eps_all = endpoints(&lan, &[0, 1, 2]);
    let eps_02 = endpoints(&lan, &[0, 2]);
    let gateway = lan.gateway;
    // The proxy and its runtime live on this thread, inside the node's namespace; clients
    // run on threads of their own in the node's or a replica's namespace.
    let (to_node, from_test) = std::sync::mpsc::channel::<Step>();
    let (to_test, answers) = std::sync::mpsc::channel::<String>();
    enum Step {
        Endpoints(Vec<Endpoint>),
        Vip(Option<VirtualIp>),
        Table,
        Stop,
    }
    let node = std::thread::spawn(move || {
        let rt = runtime_in(&node_path);
        // User-space mode: virtual IPs are in the kernel whatever the mode.
        let p = ServiceProxy::new(ProxyConfig::new("n1", gateway.into()));
        for step in from_test {
            let answer = match step {
                Step::Endpoints(eps) => {
                    let t = Instant::now();
                    rt.block_on(p.set_endpoints("default", "web", eps)).unwrap();
                    format!("{:?}", t.elapsed())
                }
                Step::Vip(v) => {
                    rt.block_on(p.set_virtual_ip("default", "web", v)).unwrap();
                    String::new()
                }
                Step::Table => {
                    let out = std::process::Command::new("nft")
                        .args(["list", "table", "ip", p.nft_table()])
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&out.stdout).into_owned()
                }
                Step::Stop => break,
            };
            to_test.send(answer).unwrap();
        }
        let table = p.nft_table().to_string();
        drop(p);
        let out = std::process::Command::new("nft")
            .args(["list", "table", "ip", &table])
            .output()
            .unwrap();
        to_test.send(format!("{}", out.status.success())).unwrap();
    });
    let ask = |s: Step| {
        to_node.send(s).unwrap();
        answers.recv().unwrap()
    };
    ask(Step::Vip(Some(vip())));
    let took = ask(Step::Endpoints(eps_all));
    eprintln!("endpoints set (3 ready) in {took}");
    let table = ask(Step::Table);
    assert!(
        table.contains("ip daddr 10.96.0.10 tcp dport 80 dnat ip to numgen inc mod 3"),
        "{table}"
    );
    assert!(
        table.contains("ip daddr 10.96.0.10 udp dport 53 dnat ip to numgen inc mod 3"),
        "{table}"
    );

    // From the node itself (the output hook): every replica, evenly.
    let seen = lan
        .node
        .run(move || tally((0..30).map(|_| hello(http).unwrap())));
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 10), "evenly: {seen:?}");
    // From a replica, through the bridge (prerouting), itself included (hairpin).
    let seen = r0.run(move || tally((0..30).map(|_| hello(http).unwrap())));
    assert_eq!(seen.len(), 3, "{seen:?}");
    // UDP: each new flow goes to the next replica.
    let seen = r1.run(move || tally((0..6).map(|_| hello_udp(dns).unwrap())));
    assert_eq!(seen.len(), 3, "{seen:?}");

    // r1 unready: the next connection after set_endpoints returns never reaches it.
    let took = ask(Step::Endpoints(eps_02));
    eprintln!("endpoints set (r1 unready) in {took}");
    let from_node = lan
        .node
        .run(move || tally((0..12).map(|_| hello(http).unwrap())));
    let from_r1 = r1.run(move || tally((0..12).map(|_| hello(http).unwrap())));
    let udp = r0.run(move || tally((0..6).map(|_| hello_udp(dns).unwrap())));
    for seen in [&from_node, &from_r1, &udp] {
        assert!(!seen.contains_key("r1"), "{seen:?}");
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    // No ready replica: refused at once (a TCP reset, an ICMP port unreachable), not a hang.
    // A replica sees "connection refused"; the node's own processes see the reject in their
    // output hook as EPERM from connect/send, at once too.
    ask(Step::Endpoints(vec![]));
    use std::io::ErrorKind::{ConnectionRefused, PermissionDenied};
    let refused = |r: std::io::Result<String>, t: Instant, kinds: &[std::io::ErrorKind]| {
        let e = r.expect_err("no replica: refused");
        assert!(kinds.contains(&e.kind()), "{e}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    };
    lan.node.run(move || {
        let t = Instant::now();
        refused(hello(http), t, &[ConnectionRefused, PermissionDenied]);
        let t = Instant::now();
        refused(hello_udp(dns), t, &[ConnectionRefused, PermissionDenied]);
    });
    r0.run(move || {
        let t = Instant::now();
        refused(hello(http), t, &[ConnectionRefused]);
        let t = Instant::now();
        refused(hello_udp(dns), t, &[ConnectionRefused]);
    });

    // Back with replicas, then the virtual IP goes: its rules go.
    ask(Step::Endpoints(endpoints(&lan, &[2])));
    assert_eq!(lan.node.run(move || hello(http).unwrap()), "r2");
    ask(Step::Vip(None));
    let table = ask(Step::Table);
    assert!(!table.contains("10.96.0.10"), "{table}");
    to_node.send(Step::Stop).unwrap();
    assert_eq!(
        answers.recv().unwrap(),
        "false",
        "the table is deleted with the proxy"
    );
    node.join().unwrap();
}

/// A route's virtual IP: port 80 goes to each endpoint's own target port (a named target port
/// resolves per template, so replicas of different services listen on different ports):
/// r0 on 8080, r1 on 9090, r2 without the port (left out of that port's balancing).
#[test]
fn a_route_virtual_ip_maps_port_80_to_each_endpoints_own_target_port() {
    if !needs() {
        return;
    }
    let mut lan = Lan::new(3);
    lan.serve_names_on(&[(0, 8080), (1, 9090), (2, 7070)]);
    let http = SocketAddr::from((VIP, 80));
    let node_path = format!("/run/netns/{}", lan.node.name);
    let eps: Vec<Endpoint> = [(0, Some(8080)), (1, Some(9090)), (2, None)]
        .into_iter()
        .map(|(i, p): (usize, Option<u16>)| {
            let r = &lan.replicas[i];
            Endpoint {
                replica: r.name.clone(),
                node: "n1".into(),
                ip: r.ip.to_string(),
                ports: p
                    .map(|p| port("http", p, Protocol::Tcp))
                    .into_iter()
                    .collect(),
            }
        })
        .collect();
    let gateway = lan.gateway;
    let (to_test, table) = std::sync::mpsc::channel::<String>();
    let (to_node, stop) = std::sync::mpsc::channel::<()>();
    let node = std::thread::spawn(move || {
        let rt = runtime_in(&node_path);
        let p = ServiceProxy::new(ProxyConfig::new("n1", gateway.into()));
        let vip = VirtualIp {
            ip: IpAddr::from(VIP),
            ports: vec![port("http", 80, Protocol::Tcp)],
        };
        rt.block_on(p.set_virtual_ip("default", "front", Some(vip)))
            .unwrap();
        rt.block_on(p.set_endpoints("default", "front", eps))
            .unwrap();
        let out = std::process::Command::new("nft")
            .args(["list", "table", "ip", p.nft_table()])
            .output()
            .unwrap();
        to_test
            .send(String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap();
        let _ = stop.recv();
        drop(p);
    });
    let table = table.recv().unwrap();
    assert!(
        table.contains("tcp dport 80 dnat ip to numgen inc mod 2"),
        "two endpoints have the port: {table}"
    );
    for (i, p) in [(0, 8080), (1, 9090)] {
        let want = format!("{} . {p}", lan.replicas[i].ip);
        assert!(table.contains(&want), "{want} in {table}");
    }
    // From the node and from a replica: both endpoints answer on their own port.
    let seen = lan
        .node
        .run(move || tally((0..10).map(|_| hello(http).unwrap())));
    assert_eq!(seen, HashMap::from([("r0".into(), 5), ("r1".into(), 5)]));
    let seen = lan.replicas[2]
        .ns
        .run(move || tally((0..10).map(|_| hello(http).unwrap())));
    assert_eq!(seen.len(), 2, "{seen:?}");
    to_node.send(()).unwrap();
    node.join().unwrap();
}
