//! A small replica network made of network namespaces, for virtual IP tests and the
//! discovery benchmark: a "node" namespace holding a bridge with the gateway address and a
//! route for the service CIDR through it (as orch-net configures a node), and "replica"
//! namespaces on veths to the bridge, each with its address and the gateway as default
//! route. Names carry the process id and a counter; everything is deleted on drop.
//! Also: running code inside a namespace (a thread of its own that enters it with `setns`;
//! sockets it creates stay in that namespace whatever thread uses them later).

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The replicas' subnet on the node's bridge (its first address is the gateway).
pub const SUBNET: [u8; 3] = [10, 250, 7];
/// The service CIDR routed through the bridge.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs `cmd args` and returns its output; panics with its stderr if it fails (test setup).
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace under /run/netns, deleted on drop.
pub struct Netns {
    /// Its name (`ip netns list`).
    pub name: String,
}

impl Netns {
    /// A new namespace named `odv<pid>-<n><role>`, with loopback up.
    pub fn new(role: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("odv{}-{n}{role}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// `ip netns exec NAME cmd args` (its output), for tools like `nft` and `sysctl`.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str(), cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a new thread inside this namespace and returns what it returns.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("the thread in the namespace panicked")
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// One replica: its namespace and address.
pub struct Replica {
    /// Its name (what its servers answer).
    pub name: String,
    /// Its namespace.
    pub ns: Netns,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

/// A node with `n` replicas on its bridge.
pub struct Lan {
    servers: Vec<Server>,
    /// The replicas (dropped before the node: their veths go with them).
    pub replicas: Vec<Replica>,
    /// The node's namespace, holding the bridge `br0` with the gateway address.
    pub node: Netns,
    /// The bridge's address: the replicas' default gateway.
    pub gateway: Ipv4Addr,
}

impl Lan {
    /// A node namespace with forwarding on, the bridge, the service CIDR route, the hairpin
    /// masquerade orch-net's table has (a replica reaching a virtual IP balanced to a
    /// replica on its own bridge), and `n` replicas `r0`, `r1`, ….
    pub fn new(n: usize) -> Lan {
        let node = Netns::new("n");
        let gateway = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1);
        let subnet = format!("{}.{}.{}.0/24", SUBNET[0], SUBNET[1], SUBNET[2]);
        node.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ip(&["addr", "add", &format!("{gateway}/24"), "dev", "br0"]);
        node.ip(&["link", "set", "br0", "up"]);
        node.ip(&[
            "route",
            "add",
            SERVICE_CIDR,
            "dev",
            "br0",
            "src",
            &gateway.to_string(),
        ]);
        node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        // Hairpin masquerade. With br_netfilter (bridge-nf-call-iptables=1), a reply
        // between two replicas on the bridge passes the node's connection tracking and is
        // un-NATed there, so only a replica reaching itself needs its source rewritten
        // (kube-proxy masquerades just that case). Without br_netfilter the reply would go
        // straight over the bridge, so every replica-to-replica rewrite is masqueraded.
        let br_netfilter = node
            .exec("cat", &["/proc/sys/net/bridge/bridge-nf-call-iptables"])
            .trim()
            == "1";
        let replica_ips: Vec<Ipv4Addr> = (0..n)
            .map(|i| Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 10 + i as u8))
            .collect();
        let rules: Vec<String> = if br_netfilter {
            replica_ips
                .iter()
                .map(|ip| format!("ct status dnat ip saddr {ip} ip daddr {ip} masquerade"))
                .collect()
        } else {
            vec![format!(
                "ct status dnat ip saddr {subnet} ip daddr {subnet} masquerade random"
            )]
        };
        let mut hairpin = "add table ip hairpin\nadd chain ip hairpin post { type nat hook postrouting priority 100 ; }\n".to_string();
        for r in rules {
            hairpin.push_str(&format!("add rule ip hairpin post {r}\n"));
        }
        let path = std::env::temp_dir().join(format!("{}.nft", node.name));
        std::fs::write(&path, hairpin).unwrap();
        node.exec("nft", &["-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        let mut replicas = Vec::new();
        for (i, ip) in replica_ips.into_iter().enumerate() {
            let ns = Netns::new(&format!("r{i}"));
            let veth = format!("v{i}");
            node.ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            node.ip(&["link", "set", &veth, "master", "br0", "up"]);
            // Hairpin (the CNI bridge plugin's `hairpinMode`): with br_netfilter loaded, a
            // replica's packet to a virtual IP balanced back to itself leaves through the
            // port it came in on.
            node.ip(&[
                "link",
                "set",
                &veth,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ]);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", &gateway.to_string()]);
            replicas.push(Replica {
                name: format!("r{i}"),
                ns,
                ip,
            });
        }
        Lan {
            servers: Vec::new(),
            replicas,
            node,
            gateway,
        }
    }

    /// In every replica, a TCP server on `port` that writes the replica's name and closes,
    /// and a UDP server on `port` that answers each datagram with the name.
    pub fn serve_names(&mut self, port: u16) {
        let all: Vec<(usize, u16)> = (0..self.replicas.len()).map(|i| (i, port)).collect();
        self.serve_names_on(&all);
    }

    /// Like [`Lan::serve_names`], replica `i` on its own `port` for each `(i, port)`.
    pub fn serve_names_on(&mut self, which: &[(usize, u16)]) {
        for &(i, port) in which {
            let r = &self.replicas[i];
            let name = r.name.clone();
            let (tcp, udp) = r.ns.run(move || {
                let addr = SocketAddr::from(([0, 0, 0, 0], port));
                let tcp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .and_then(|s| {
                        s.set_reuse_address(true)?;
                        s.bind(&addr.into())?;
                        s.listen(4096)?;
                        Ok(std::net::TcpListener::from(s))
                    })
                    .expect("tcp bind");
                let udp = std::net::UdpSocket::bind(("0.0.0.0", port)).expect("udp bind");
                (tcp, udp)
            });
            self.servers.push(Server::names(tcp, udp, name));
        }
    }
}

/// Server threads, stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    fn names(tcp: std::net::TcpListener, udp: std::net::UdpSocket, name: String) -> Server {
        use std::io::Write;
        let stop = Arc::new(AtomicBool::new(false));
        // Blocking accept and receive that wake every 50 ms (SO_RCVTIMEO), to see `stop`.
        socket2::SockRef::from(&tcp)
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (s1, s2, n1, n2) = (stop.clone(), stop.clone(), name.clone(), name);
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                if let Ok((mut c, _)) = tcp.accept() {
                    let _ = c.write_all(format!("{n1}\n").as_bytes());
                }
            }
        });
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(n2.as_bytes(), from);
                }
            }
        });
        Server {
            stop,
            threads: vec![t1, t2],
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects to `addr` (from the calling thread's namespace) and reads the first line.
pub fn hello(addr: SocketAddr) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

/// Sends one datagram to `addr` from a new socket and returns the answer.
pub fn hello_udp(addr: SocketAddr) -> std::io::Result<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.connect(addr)?;
    s.send(b"hi")?;
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
