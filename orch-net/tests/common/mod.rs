//! Test hosts for orch-net: each host is a network namespace on a bridge of its own in the
//! root namespace, and a node's [`CniNetwork`] runs on a thread that entered that namespace
//! (its netlink sockets, plugins and `nft` all live there). Shared by the tests and the
//! overlay benchmark (`benches/src/bin/overlay.rs` includes this file).
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use orch_core::model::object::{NetworkMode, NodeNetwork};
use orch_core::network::{Network, Peer};
use orch_net::{CniNetwork, NetConfig};

/// What these tests need.
pub const NEEDS: &[&str] = &["root", "ip", "nft", "/usr/lib/cni/bridge"];

/// Runs `ip args`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

/// Hosts on one bridge: `10.123.N.(i+1)/24` (N from the pid and a counter), the bridge `.254`.
pub struct Hosts {
    pub bridge: String,
    pub names: Vec<String>,
    prefix: String,
    subnet: String,
}

impl Hosts {
    /// Creates `n` hosts.
    pub fn new(n: usize) -> Hosts {
        static SETS: AtomicUsize = AtomicUsize::new(0);
        let set = SETS.fetch_add(1, Ordering::Relaxed) % 20;
        let id = std::process::id() % 10_000;
        let prefix = format!("on{id}s{set}");
        let bridge = format!("{prefix}br");
        let subnet = format!("10.123.{}", (id as usize * 20 + set) % 250);
        let hosts = Hosts {
            bridge: bridge.clone(),
            names: (0..n).map(|i| format!("{prefix}h{i}")).collect(),
            prefix: prefix.clone(),
            subnet: subnet.clone(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{subnet}.254/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for (i, ns) in hosts.names.iter().enumerate() {
            let (host_end, ns_end) = (format!("{prefix}v{i}"), format!("{prefix}p{i}"));
            ip(&["netns", "add", ns]);
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ]);
            ip(&["link", "set", &host_end, "master", &bridge, "up"]);
            ip(&["link", "set", &ns_end, "netns", ns]);
            let addr = format!("{}/24", hosts.address(i));
            ip(&["-n", ns, "addr", "add", &addr, "dev", &ns_end]);
            ip(&["-n", ns, "link", "set", &ns_end, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// Host `i`'s address.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        format!("{}.{}", self.subnet, i + 1).parse().unwrap()
    }

    /// Host `i`'s network namespace file.
    pub fn netns(&self, i: usize) -> PathBuf {
        Path::new("/run/netns").join(&self.names[i])
    }

    /// The MTU of host `i`'s link to the bridge.
    pub fn mtu(&self, i: usize) -> u32 {
        let out = ip(&[
            "-n",
            &self.names[i],
            "-o",
            "link",
            "show",
            &format!("{}p{i}", self.prefix),
        ]);
        mtu_of(&out)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (i, ns) in self.names.iter().enumerate() {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}v{i}", self.prefix)])
                .status();
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
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
        let config = NetConfig::new(
            &hosts.names[i],
            hosts.address(i),
            state.path().join("network"),
        );
        Node {
            net: CniNetwork::new(config).expect("CniNetwork::new"),
            host: hosts.netns(i),
            address: hosts.address(i),
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
