//! Test nodes for orch-net: each host is a network namespace on a bridge in the root
//! namespace (`orch_testkit::hosts::Hosts`), and a node's [`CniNetwork`] runs on a thread that entered that namespace
//! (its netlink sockets, plugins and `nft` all live there). Shared by the tests and the
//! overlay benchmark (`benches/src/bin/overlay.rs` includes this file).
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use orch_core::model::object::{NetworkMode, NodeNetwork};
use orch_core::network::{Network, Peer};
use orch_net::{CniNetwork, NetConfig};

/// What these tests need.
pub const NEEDS: &[&str] = &["root", "ip", "nft", "/usr/lib/cni/bridge"];

pub use orch_testkit::hosts::{ip, Hosts};

/// Runs `f` on a new thread inside the network namespace at `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(netns).expect("open the netns file");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("the thread in the netns panicked")
    })
}

/// Runs the future `f` makes on a current-thread runtime inside the network namespace.
pub fn block_in<T: Send, F: Future<Output = T>>(netns: &Path, f: impl FnOnce() -> F + Send) -> T {
    in_netns(netns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

/// The MTU of host `i`'s link to the bridge.
pub fn uplink_mtu(hosts: &Hosts, i: usize) -> u32 {
    mtu_of(&ip(&[
        "-n",
        &hosts.names[i],
        "-o",
        "link",
        "show",
        &hosts.uplink(i),
    ]))
}

/// The `mtu N` of an `ip -o link show` line.
pub fn mtu_of(line: &str) -> u32 {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mtu" {
            return words.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        }
    }
    0
}

/// A node: a [`CniNetwork`] in a host's namespace, its state in a temporary directory. Drop
/// removes everything it set up.
pub struct Node {
    pub net: CniNetwork,
    pub host: PathBuf,
    pub address: Ipv4Addr,
    pub state: tempfile::TempDir,
}

/// The lease of node `i`: subnet `10.124.i.0/24` of `10.124.0.0/16`, services `10.125.0.0/16`.
pub fn lease(i: usize, mode: NetworkMode) -> NodeNetwork {
    NodeNetwork {
        subnet: format!("10.124.{i}.0/24"),
        cluster_cidr: "10.124.0.0/16".into(),
        service_cidr: "10.125.0.0/16".into(),
        mode,
    }
}

impl Node {
    /// A node on host `i` of `hosts` (not configured yet).
    pub fn new(hosts: &Hosts, i: usize) -> Node {
        let state = tempfile::tempdir().expect("tempdir");
        let address: Ipv4Addr = hosts.address(i).parse().expect("a host address");
        let config = NetConfig::new(&hosts.names[i], address, state.path().join("network"));
        Node {
            net: CniNetwork::new(config).expect("CniNetwork::new"),
            host: hosts.netns(i),
            address,
            state,
        }
    }

    /// A node on host `i`, configured with [`lease`]`(i, mode)`.
    pub fn configured(hosts: &Hosts, i: usize, mode: NetworkMode) -> Node {
        let node = Node::new(hosts, i);
        let l = lease(i, mode);
        node.run(|n| async move { n.configure(&l).await })
            .expect("configure");
        node
    }

    /// Runs the future `f` makes with this node's network, in its host's namespace.
    pub fn run<'a, T: Send, F: Future<Output = T> + 'a>(
        &'a self,
        f: impl FnOnce(&'a CniNetwork) -> F + Send,
    ) -> T {
        block_in(&self.host, || f(&self.net))
    }

    /// Attaches workload `id` (no ports), panicking on failure.
    pub fn attach(&self, id: &str) -> orch_core::runtime::WorkloadNetwork {
        self.run(|n| async move { n.attach(id, &[]).await })
            .unwrap_or_else(|e| panic!("attach {id}: {e}"))
    }

    /// This node as a peer of the others.
    pub fn peer(&self, i: usize, mode: NetworkMode) -> Peer {
        Peer {
            node: format!("node{i}"),
            address: self.address.into(),
            subnet: lease(i, mode).subnet,
        }
    }

    /// `ip -n HOST args` (the host's namespace by name).
    pub fn ip(&self, args: &[&str]) -> String {
        let name = self.host.file_name().unwrap().to_str().unwrap();
        let mut all = vec!["-n", name];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.run(|n| async move { n.remove_all().await });
    }
}

/// Configures nodes `nodes` (node i on host i) as each other's peers.
pub fn connect(nodes: &[&Node], mode: NetworkMode) {
    let peers: Vec<Peer> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| n.peer(i, mode))
        .collect();
    for node in nodes {
        let p = peers.clone();
        node.run(|n| async move { n.set_peers(&p).await })
            .expect("set_peers");
    }
}

/// Listens on `addr` inside `netns`; each of `connections` connections gets the address it
/// came from, then the listener ends. Returns once it listens.
pub fn serve_peer_address(
    netns: &Path,
    addr: SocketAddr,
    connections: usize,
) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let netns = netns.to_path_buf();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let listener = TcpListener::bind(addr).expect("bind in the replica's netns");
        tx.send(()).unwrap();
        for _ in 0..connections {
            let (mut s, peer) = listener.accept().expect("accept");
            let _ = s.write_all(peer.ip().to_string().as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the listener started");
    handle
}

/// Connects to `addr` from inside `netns` and returns what the server sent.
pub fn ask(netns: &Path, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(netns, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// Waits up to 5 s for `cond`.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}
