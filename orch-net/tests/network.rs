//! orch-net against the real thing: CNI plugins from /usr/lib/cni, network namespaces,
//! netlink, nftables. Each host is a network namespace on a bridge (see `common`).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::{ask, connect, eventually, lease, mtu_of, serve_peer_address, Hosts, Node};
use orch_core::model::object::{NetworkMode, NodeNetwork, PortSpec, Protocol};
use orch_core::network::{Network, NetworkError};
use orch_net::{CniNetwork, NetConfig};

/// `ip -o link show dev` in the namespace `netns` (a path under /run/netns).
fn link_in(netns: &Path, dev: &str) -> String {
    let name = netns.file_name().unwrap().to_str().unwrap();
    common::ip(&["-n", name, "-o", "link", "show", dev])
}

/// Whether the `ip orch_net` table exists in `node`'s host namespace.
fn has_nft_table(node: &Node) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", node.host.display()))
        .args(["nft", "list", "table", "ip", "orch_net"])
        .output()
        .expect("run nsenter nft")
        .status
        .success()
}

fn replicas_reach_each_other(mode: NetworkMode) {
    if !orch_testkit::require(common::NEEDS) {
        return;
    }
    let hosts = Hosts::new(2);
    let a = Node::configured(&hosts, 0, mode);
    let b = Node::configured(&hosts, 1, mode);
    connect(&[&a, &b], mode);
    let ra = a.attach("default.client-aaaaa");
    let rb = b.attach("default.server-bbbbb");
    assert!(ra.ip.starts_with("10.124.0."), "{ra:?}");
    assert!(rb.ip.starts_with("10.124.1."), "{rb:?}");

    let addr: SocketAddr = format!("{}:8080", rb.ip).parse().unwrap();
    let server = serve_peer_address(&rb.netns, addr, 1);
    let seen = ask(&ra.netns, addr).expect("A's replica reaches B's replica");
    server.join().unwrap();
    assert_eq!(
        seen, ra.ip,
        "B sees A's replica's own address (no masquerade in the cluster)"
    );

    let underlay = common::uplink_mtu(&hosts, 0);
    let expected = match mode {
        NetworkMode::Vxlan => underlay - 50,
        NetworkMode::HostGw => underlay,
    };
    assert_eq!(
        mtu_of(&link_in(&ra.netns, "eth0")),
        expected,
        "the replica's veth MTU"
    );
    if mode == NetworkMode::Vxlan {
        assert_eq!(
            mtu_of(&a.ip(&["-o", "link", "show", "orch.vxlan"])),
            underlay - 50
        );
    }
    let description = a.net.describe();
    assert_eq!(
        description,
        format!(
            "{}, subnet 10.124.0.0/24, 1 peer, mtu {expected}",
            mode.as_str()
        )
    );
}

#[test]
fn replicas_on_two_hosts_reach_each_other_over_vxlan() {
    replicas_reach_each_other(NetworkMode::Vxlan);
}

#[test]
fn replicas_on_two_hosts_reach_each_other_over_host_gw() {
    replicas_reach_each_other(NetworkMode::HostGw);
}

#[test]
fn two_replicas_on_one_host_listen_on_the_same_port() {
    if !orch_testkit::require(common::NEEDS) {
        return;
    }
    let hosts = Hosts::new(1);
    let node = Node::configured(&hosts, 0, NetworkMode::Vxlan);
    let r1 = node.attach("default.web-11111");
    let r2 = node.attach("default.web-22222");
    assert_ne!(r1.ip, r2.ip);
    let a1: SocketAddr = format!("{}:8080", r1.ip).parse().unwrap();
    let a2: SocketAddr = format!("{}:8080", r2.ip).parse().unwrap();
    let s1 = serve_peer_address(&r1.netns, a1, 1);
    let s2 = serve_peer_address(&r2.netns, a2, 1);
    // Each from the other replica: same bridge, no masquerade.
    assert_eq!(ask(&r2.netns, a1).unwrap(), r2.ip);
    assert_eq!(ask(&r1.netns, a2).unwrap(), r1.ip);
    s1.join().unwrap();
    s2.join().unwrap();
}

#[test]
fn set_peers_removes_a_gone_peers_route_neighbour_and_fdb_entry() {
    if !orch_testkit::require(common::NEEDS) {
        return;
    }
    let hosts = Hosts::new(3);
    let mode = NetworkMode::Vxlan;
    let a = Node::configured(&hosts, 0, mode);
    let b = Node::new(&hosts, 1);
    let c = Node::new(&hosts, 2);
    let peers = vec![a.peer(0, mode), b.peer(1, mode), c.peer(2, mode)];
    let p = peers.clone();
    a.run(|n| async move { n.set_peers(&p).await }).unwrap();
    // Again: idempotent.
    let p = peers.clone();
    a.run(|n| async move { n.set_peers(&p).await }).unwrap();
    let routes = a.ip(&["route", "show", "proto", "119"]);
    assert!(
        routes.contains("10.124.1.0/24 via 10.124.1.0 dev orch.vxlan onlink"),
        "{routes}"
    );
    assert!(
        routes.contains("10.124.2.0/24 via 10.124.2.0 dev orch.vxlan onlink"),
        "{routes}"
    );
    assert!(
        !routes.contains("10.124.0.0/24"),
        "its own subnet is ignored: {routes}"
    );
    let neigh = a.ip(&["neigh", "show", "dev", "orch.vxlan"]);
    assert!(
        neigh.contains("10.124.2.0 lladdr 0a:58:0a:7c:02:00 PERMANENT"),
        "{neigh}"
    );
    let fdb = Command::new("bridge")
        .args(["-n", &hosts.names[0], "fdb", "show", "dev", "orch.vxlan"])
        .output()
        .unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
    assert!(
        fdb.contains(&format!(
            "0a:58:0a:7c:02:00 dst {} self permanent",
            c.address
        )),
        "{fdb}"
    );
    assert_eq!(
        a.net.describe(),
        "vxlan, subnet 10.124.0.0/24, 2 peers, mtu 1450"
    );

    // c goes away.
    let p = peers[..2].to_vec();
    a.run(|n| async move { n.set_peers(&p).await }).unwrap();
    let routes = a.ip(&["route", "show", "proto", "119"]);
    assert!(routes.contains("10.124.1.0/24"), "{routes}");
    assert!(!routes.contains("10.124.2.0/24"), "{routes}");
    let neigh = a.ip(&["neigh", "show", "dev", "orch.vxlan"]);
    assert!(!neigh.contains("10.124.2.0"), "{neigh}");
    assert!(neigh.contains("10.124.1.0"), "{neigh}");
    let fdb = Command::new("bridge")
        .args(["-n", &hosts.names[0], "fdb", "show", "dev", "orch.vxlan"])
        .output()
        .unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
    assert!(!fdb.contains("0a:58:0a:7c:02:00"), "{fdb}");
    assert!(fdb.contains("0a:58:0a:7c:01:00"), "{fdb}");

    // Host-gw: a route per peer via its address, the stale ones (vxlan's) gone.
    let l = lease(0, NetworkMode::HostGw);
    a.run(|n| async move { n.configure(&l).await }).unwrap();
    let p = vec![
        b.peer(1, NetworkMode::HostGw),
        c.peer(2, NetworkMode::HostGw),
    ];
    a.run(|n| async move { n.set_peers(&p).await }).unwrap();
    let routes = a.ip(&["route", "show", "proto", "119"]);
    assert!(
        routes.contains(&format!("10.124.2.0/24 via {}", c.address)),
        "{routes}"
    );
    let p = vec![b.peer(1, NetworkMode::HostGw)];
    a.run(|n| async move { n.set_peers(&p).await }).unwrap();
    let routes = a.ip(&["route", "show", "proto", "119"]);
    assert!(!routes.contains("10.124.2.0/24"), "{routes}");
    assert!(
        routes.contains(&format!("10.124.1.0/24 via {}", b.address)),
        "{routes}"
    );
    assert!(
        !a.ip(&["-o", "link", "show"]).contains("orch.vxlan"),
        "host-gw has no vxlan device"
    );
}

/// How many of the bridge plugin's veths (`vethXXXX`) `node`'s host has.
fn cni_veths(node: &Node) -> usize {
    node.ip(&["-o", "link", "show", "type", "veth"])
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|n| n.starts_with("veth"))
        })
        .count()
}

/// The host-local lease files of `node` (one file per address under the network's dir).
fn lease_files(node: &Node) -> Vec<String> {
    let dir = node.state.path().join("network/cni/ipam/orch");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn detach_and_remove_all_leave_nothing() {
    if !orch_testkit::require(common::NEEDS) {
        return;
    }
    let hosts = Hosts::new(2);
    let mode = NetworkMode::Vxlan;
    let a = Node::configured(&hosts, 0, mode);
    let b = Node::configured(&hosts, 1, mode);
    connect(&[&a, &b], mode);
    let r1 = a.attach("default.one-11111");
    let r2 = a.attach("default.two-22222");
    assert_eq!(lease_files(&a).len(), 2);
    assert!(has_nft_table(&a));

    a.run(|n| async move { n.detach("default.one-11111").await })
        .unwrap();
    // Again, and one never attached: nothing to do.
    a.run(|n| async move { n.detach("default.one-11111").await })
        .unwrap();
    a.run(|n| async move { n.detach("default.never-00000").await })
        .unwrap();
    assert!(!r1.netns.exists());
    assert_eq!(lease_files(&a), vec![r2.ip.clone()]);
    eventually("one veth left", || cni_veths(&a) == 1);
    let left = a.run(|n| async move { n.attached().await }).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, "default.two-22222");

    // A replica whose namespace is already gone (removed behind the agent's back): detach
    // still releases its address and forgets it.
    let r3 = a.attach("default.three-33333");
    common::ip(&[
        "netns",
        "del",
        r3.netns.file_name().unwrap().to_str().unwrap(),
    ]);
    a.run(|n| async move { n.detach("default.three-33333").await })
        .unwrap();
    assert_eq!(lease_files(&a), vec![r2.ip.clone()]);

    a.run(|n| async move { n.remove_all().await }).unwrap();
    assert!(!r2.netns.exists());
    assert!(lease_files(&a).is_empty());
    eventually("no veth left", || cni_veths(&a) == 0);
    let links = a.ip(&["-o", "link", "show"]);
    assert!(
        !links.contains("orch0") && !links.contains("orch.vxlan"),
        "{links}"
    );
    assert_eq!(a.ip(&["route", "show", "proto", "119"]), "");
    assert!(!a.ip(&["route", "show"]).contains("10.125.0.0/16"));
    assert!(!has_nft_table(&a));
    assert!(a
        .run(|n| async move { n.attached().await })
        .unwrap()
        .is_empty());
}

#[test]
fn a_missing_plugin_or_plugin_dir_is_named() {
    if !orch_testkit::require(common::NEEDS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = NetConfig::new(
        "n1",
        "10.200.0.1".parse().unwrap(),
        dir.path().join("state"),
    );
    config.cni_bin_dir = dir.path().join("no-such-dir");
    let Err(NetworkError::Unavailable(e)) = CniNetwork::new(config.clone()) else {
        panic!("a missing plugin dir is refused");
    };
    assert!(e.contains("bridge, host-local, loopback"), "{e}");
    assert!(
        e.contains(&format!("{} does not exist", config.cni_bin_dir.display())),
        "{e}"
    );

    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for p in ["bridge", "host-local"] {
        std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), bin.join(p)).unwrap();
    }
    config.cni_bin_dir = bin.clone();
    let Err(NetworkError::Unavailable(e)) = CniNetwork::new(config) else {
        panic!("a missing plugin is refused");
    };
    assert!(e.contains("CNI plugin loopback missing"), "{e}");
    assert!(e.contains(&format!("not in {}", bin.display())), "{e}");
    assert!(!dir.path().join("state").exists(), "nothing was written");
}

#[test]
fn an_exhausted_subnet_is_named_and_nothing_is_left_half_set_up() {
    if !orch_testkit::require(common::NEEDS) {
        return;
    }
    let hosts = Hosts::new(1);
    let node = Node::new(&hosts, 0);
    let tiny = NodeNetwork {
        subnet: "10.124.7.0/30".into(),
        ..lease(0, NetworkMode::Vxlan)
    };
    node.run(|n| async move { n.configure(&tiny).await })
        .unwrap();
    let first = node.attach("default.a-00001");
    assert_eq!(first.ip, "10.124.7.2");
    let err = node
        .run(|n| async move { n.attach("default.b-00002", &[]).await })
        .unwrap_err();
    let NetworkError::Exhausted(msg) = &err else {
        panic!("not Exhausted: {err:?}");
    };
    assert!(
        msg.contains("subnet 10.124.7.0/30 (1 address for replicas"),
        "{msg}"
    );
    let second =
        Path::new("/run/netns").join(format!("{}default.b-00002", node.net.netns_prefix()));
    assert!(!second.exists(), "no namespace left for the failed attach");
    let attached = node.run(|n| async move { n.attached().await }).unwrap();
    assert_eq!(attached.len(), 1, "{attached:?}");
    eventually("one veth", || cni_veths(&node) == 1);
}

#[test]
fn a_lease_covering_the_nodes_address_is_refused_and_nothing_is_set_up() {
    if !orch_testkit::require(common::NEEDS) {
        return;
    }
    let hosts = Hosts::new(1);
    let node = Node::new(&hosts, 0);
    // A /16 around the node's own address (10.2xx.N.1).
    let o = node.address.octets();
    let around = format!("{}.{}.0.0/16", o[0], o[1]);
    let bad = NodeNetwork {
        subnet: format!("{}.{}.251.0/24", o[0], o[1]),
        cluster_cidr: around.clone(),
        service_cidr: "10.125.0.0/16".into(),
        mode: NetworkMode::Vxlan,
    };
    let err = node
        .run(|n| async move { n.configure(&bad).await })
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, NetworkError::Unavailable(_)), "{err:?}");
    assert!(
        msg.contains(&format!("address {} ", node.address))
            && msg.contains(&format!("cluster CIDR {around}")),
        "{msg}"
    );
    let bad = NodeNetwork {
        service_cidr: around.clone(),
        ..lease(0, NetworkMode::Vxlan)
    };
    let msg = node
        .run(|n| async move { n.configure(&bad).await })
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&format!("service CIDR {around}")), "{msg}");
    let links = node.ip(&["-o", "link", "show"]);
    assert!(
        !links.contains("orch0") && !links.contains("orch.vxlan"),
        "{links}"
    );
    assert!(!has_nft_table(&node));
    assert!(!node.state.path().join("network/cni/orch.conflist").exists());
    assert_eq!(
        node.net.describe(),
        "not configured (node ".to_string() + &hosts.names[0] + ")"
    );
}

#[test]
fn after_a_crash_the_attachment_is_returned_and_leftover_namespaces_reported() {
    if !orch_testkit::require(common::NEEDS) {
        return;
    }
    let hosts = Hosts::new(1);
    let node = Node::configured(&hosts, 0, NetworkMode::Vxlan);
    let before = node.attach("default.web-aaaaa");
    // A namespace of this agent's with no record (a crash between creating it and recording).
    let stray = format!("{}default.stray-zzzzz", node.net.netns_prefix());
    common::ip(&["netns", "add", &stray]);

    // The agent restarts: a new CniNetwork over the same state dir.
    let config = NetConfig::new(
        &hosts.names[0],
        node.address,
        node.state.path().join("network"),
    );
    let again = CniNetwork::new(config).unwrap();
    let (after, attached) = common::block_in(&node.host, || async {
        let after = again.attach("default.web-aaaaa", &[]).await.unwrap();
        (after, again.attached().await.unwrap())
    });
    assert_eq!(after, before);
    let ids: Vec<&str> = attached.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, vec!["default.web-aaaaa", "default.stray-zzzzz"]);
    assert_eq!(attached[1].1.ip, "");
    // The agent cleans the stray one.
    common::block_in(&node.host, || async {
        again.detach("default.stray-zzzzz").await
    })
    .unwrap();
    assert!(!Path::new("/run/netns").join(&stray).exists());
    // And still has its replica's lease file.
    assert_eq!(lease_files(&node), vec![before.ip.clone()]);
}

#[test]
fn a_changed_lease_replaces_the_old_addresses_and_routes() {
    if !orch_testkit::require(common::NEEDS) {
        return;
    }
    let hosts = Hosts::new(2);
    let mode = NetworkMode::Vxlan;
    let a = Node::configured(&hosts, 0, mode);
    let b = Node::new(&hosts, 1);
    let p = vec![b.peer(1, mode)];
    a.run(|n| async move { n.set_peers(&p).await }).unwrap();
    // Configure again with the same lease: nothing changes.
    let l = lease(0, mode);
    a.run(|n| async move { n.configure(&l).await }).unwrap();
    assert!(a
        .ip(&["route", "show", "proto", "119"])
        .contains("10.124.1.0/24"));

    let moved = NodeNetwork {
        subnet: "10.124.9.0/24".into(),
        service_cidr: "10.126.0.0/16".into(),
        ..lease(0, mode)
    };
    a.run(|n| async move { n.configure(&moved).await }).unwrap();
    let bridge = a.ip(&["-o", "-4", "addr", "show", "dev", "orch0"]);
    assert!(
        bridge.contains("10.124.9.1/24") && !bridge.contains("10.124.0.1"),
        "{bridge}"
    );
    let vx = a.ip(&["-o", "-4", "addr", "show", "dev", "orch.vxlan"]);
    assert!(
        vx.contains("10.124.9.0/32") && !vx.contains("10.124.0.0/32"),
        "{vx}"
    );
    assert!(a
        .ip(&["-o", "link", "show", "orch.vxlan"])
        .contains("0a:58:0a:7c:09:00"));
    let routes = a.ip(&["route", "show"]);
    assert!(routes.contains("10.126.0.0/16 dev orch0"), "{routes}");
    assert!(!routes.contains("10.125.0.0/16"), "{routes}");
    assert_eq!(
        a.ip(&["route", "show", "proto", "119"]),
        "",
        "peer routes were for the old lease"
    );
    let r = a.attach("default.web-99999");
    assert!(r.ip.starts_with("10.124.9."), "{r:?}");
}

#[test]
fn a_host_port_reaches_the_replica_through_portmap() {
    if !orch_testkit::require(&[common::NEEDS, &["iptables", "/usr/lib/cni/portmap"]].concat()) {
        return;
    }
    let hosts = Hosts::new(2);
    let a = Node::configured(&hosts, 0, NetworkMode::Vxlan);
    let ports = vec![PortSpec {
        name: "http".into(),
        port: Some(8080),
        host_port: Some(18080),
        protocol: Protocol::Tcp,
    }];
    let r = a
        .run(|n| async move { n.attach("default.web-ports", &ports).await })
        .unwrap();
    let server = serve_peer_address(&r.netns, format!("{}:8080", r.ip).parse().unwrap(), 1);
    let via_host: SocketAddr = format!("{}:18080", hosts.address(0)).parse().unwrap();
    let seen = ask(&hosts.netns(1), via_host).expect("host B reaches A's host port");
    server.join().unwrap();
    assert!(!seen.is_empty());
    a.run(|n| async move { n.detach("default.web-ports").await })
        .unwrap();
    assert!(lease_files(&a).is_empty());
}
