//! The service proxy: for each port a service publishes (`spec.publish`), the node listens
//! on its proxy address and forwards each TCP connection to one of the service's ready
//! replicas, round robin or to the one with the fewest open connections. A replica that
//! stops being ready leaves the candidates with the endpoints update, at once; a connect
//! that fails (or takes longer than the connect timeout) is retried on the next replica.
//! When the service stops publishing the port, or goes away, the listener closes.
//! Connections already forwarded carry on until either side closes.
//!
//! Virtual IPs ([`Discovery::set_virtual_ip`]) are always balanced in the kernel, whatever
//! the mode: for every port of a service's virtual IP, nftables DNAT rules in the proxy's
//! table (prerouting, for replicas' traffic through the bridge, and output, for this node's
//! own processes) send each new connection (or UDP flow) to the next ready endpoint's port of
//! the same name (`numgen inc`), at the endpoint's own address. The rules are rewritten in
//! one `nft` transaction whenever the endpoints or virtual IPs change; a port with no ready
//! endpoint rejects (a TCP reset, an ICMP port unreachable for UDP), as kube-proxy does,
//! instead of letting clients hang. Needs root and `nft`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::discovery::{Discovery, DiscoveryError, Endpoint, Published, VirtualIp};
use orch_core::model::object::{Balance, Protocol};
use tokio::net::{TcpListener, TcpStream};

/// How the proxy runs on a node.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The node's name (in error messages).
    pub node: String,
    /// The address published ports are listened on.
    pub address: IpAddr,
    /// How long a connect to a replica may take before the next one is tried.
    pub connect_timeout: Duration,
    /// Where connections are balanced.
    pub mode: ProxyMode,
}

impl ProxyConfig {
    /// Listens on `address` in user space; connects time out after a second.
    pub fn new(node: &str, address: IpAddr) -> ProxyConfig {
        ProxyConfig {
            node: node.into(),
            address,
            connect_timeout: Duration::from_secs(1),
            mode: ProxyMode::Userspace,
        }
    }
}

/// Where the proxy balances connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// Every connection goes through this process: round robin or least connections, and a
    /// failed connect is retried on the next replica. Costs a second TCP connection and two
    /// copies per byte.
    #[default]
    Userspace,
    /// Round-robin ports are balanced in the kernel, as kube-proxy does: nftables DNAT rules
    /// (`numgen inc` over the ready replicas) in a table of this process's own, rewritten in
    /// one transaction whenever the replicas change. Near direct throughput; a connect to a
    /// replica that died and is not yet marked unready fails instead of being retried.
    /// Least-connections ports, IPv6 and ports with no ready replica stay in user space.
    /// When a replica leaves, the kernel's tracked connections to it are deleted (with the
    /// `conntrack` tool, if installed), so a new connection reusing a closed one's source
    /// port is not sent to it. Needs root and `nft`.
    Nftables,
}

type Key = (String, String);

/// One ready replica as the proxy sees it.
struct Backend {
    ip: IpAddr,
    endpoint: Endpoint,
    /// Connections open to it through this proxy (kept across endpoint updates).
    active: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Service {
    backends: RwLock<Arc<Vec<Backend>>>,
    /// Open connections per replica name, shared with the backends.
    active: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    next: AtomicUsize,
}

struct Listener {
    owner: Key,
    spec: Arc<RwLock<Published>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct State {
    services: HashMap<Key, Arc<Service>>,
    listeners: HashMap<u16, Listener>,
    vips: HashMap<Key, VirtualIp>,
}

/// The proxy of one node; a [`Discovery`] the endpoints controller feeds.
pub struct ServiceProxy {
    config: ProxyConfig,
    state: Mutex<State>,
    forwarded: Arc<AtomicUsize>,
    /// Serialises nftables updates, so they apply in order.
    nft_lock: tokio::sync::Mutex<()>,
    nft_table: String,
    /// The replicas the kernel rules send connections to.
    nft_backends: Mutex<std::collections::HashSet<(Protocol, SocketAddr)>>,
    /// Whether a virtual IP was ever set: then the table exists in any mode.
    vips_used: std::sync::atomic::AtomicBool,
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        if self.kernel() {
            nft::delete_table(&self.nft_table);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServiceProxy {
    /// A proxy that listens on `config.address`.
    pub fn new(config: ProxyConfig) -> ServiceProxy {
        let nft_table = nft::table_name(std::process::id());
        // In any mode: a node agent killed with SIGKILL leaves its table (virtual IPs are
        // kernel rules in every mode), and its successor may never set a virtual IP itself.
        nft::remove_stale_tables();
        ServiceProxy {
            config,
            state: Mutex::new(State::default()),
            forwarded: Arc::new(AtomicUsize::new(0)),
            nft_lock: tokio::sync::Mutex::new(()),
            nft_table,
            nft_backends: Mutex::default(),
            vips_used: Default::default(),
        }
    }

    /// Whether this proxy keeps rules in the kernel.
    fn kernel(&self) -> bool {
        self.config.mode == ProxyMode::Nftables || self.vips_used.load(Ordering::Relaxed)
    }

    /// Whether the kernel data path works here (root, `nft` installed).
    pub fn nftables_available() -> bool {
        nft::available()
    }

    /// The nftables table this proxy keeps its rules in (in [`ProxyMode::Nftables`]).
    pub fn nft_table(&self) -> &str {
        &self.nft_table
    }

    /// Rewrites this proxy's nftables rules from its current state, in one transaction.
    async fn sync_kernel(&self) -> Result<(), DiscoveryError> {
        if !self.kernel() {
            return Ok(());
        }
        let _order = self.nft_lock.lock().await;
        let rules: Vec<nft::Rule> = {
            let g = lock(&self.state);
            let published = (self.config.mode == ProxyMode::Nftables).then_some(&g.listeners);
            let published = published.into_iter().flatten().filter_map(|(port, l)| {
                let spec = l.spec.read().unwrap_or_else(|p| p.into_inner()).clone();
                if spec.balance != Balance::RoundRobin {
                    return None;
                }
                let svc = g.services.get(&l.owner)?;
                let backends = svc
                    .backends
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let to: Vec<SocketAddr> = backends
                    .iter()
                    .filter_map(|b| Some(SocketAddr::new(b.ip, b.endpoint.port(&spec.target)?)))
                    .collect();
                Some(nft::Rule {
                    listen: SocketAddr::new(self.config.address, *port),
                    protocol: Protocol::Tcp,
                    to,
                    virtual_ip: false,
                })
            });
            let virtual_ips = g.vips.iter().flat_map(|(key, vip)| {
                let backends = g
                    .services
                    .get(key)
                    .map(|s| s.backends.read().unwrap_or_else(|p| p.into_inner()).clone())
                    .unwrap_or_default();
                vip.ports.iter().map(move |p| nft::Rule {
                    listen: SocketAddr::new(vip.ip, p.port),
                    protocol: p.protocol,
                    to: backends
                        .iter()
                        .filter_map(|b| Some(SocketAddr::new(b.ip, b.endpoint.port(&p.name)?)))
                        .collect(),
                    virtual_ip: true,
                })
            });
            published.chain(virtual_ips).collect()
        };
        let script = nft::script(&self.nft_table, &rules);
        nft::apply(&script)
            .await
            .map_err(|e| DiscoveryError(format!("node {}: nftables: {e}", self.config.node)))?;
        // Connections the kernel tracked to replicas no longer in any rule: a closed one would
        // otherwise keep its rewrite for a new connection that reuses its source port.
        let now: std::collections::HashSet<(Protocol, SocketAddr)> = rules
            .iter()
            .flat_map(|r| r.to.iter().map(|b| (r.protocol, *b)))
            .collect();
        let gone: Vec<(Protocol, SocketAddr)> = {
            let mut last = lock(&self.nft_backends);
            let gone = last.difference(&now).copied().collect();
            *last = now;
            gone
        };
        for (protocol, b) in &gone {
            nft::forget_connections(*protocol, *b).await;
        }
        if !gone.is_empty() {
            // Connections already on their way when the rules changed can leave entries
            // after the first sweep; sweep once more when they have settled.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for (protocol, b) in gone {
                    nft::forget_connections(protocol, b).await;
                }
            });
        }
        Ok(())
    }

    /// The address published ports are listened on.
    pub fn address(&self) -> IpAddr {
        self.config.address
    }

    /// The ports it listens on, with the service each belongs to.
    pub fn listening(&self) -> Vec<(u16, String, String)> {
        let g = lock(&self.state);
        let mut v: Vec<_> = g
            .listeners
            .iter()
            .map(|(p, l)| (*p, l.owner.0.clone(), l.owner.1.clone()))
            .collect();
        v.sort();
        v
    }

    /// Connections forwarded so far.
    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Whether `namespace/service` could publish `port` here: fine when it already does,
    /// refused when another service does, otherwise a trial bind says.
    pub fn check_port(&self, namespace: &str, service: &str, port: u16) -> Result<(), String> {
        {
            let g = lock(&self.state);
            if let Some(l) = g.listeners.get(&port) {
                if l.owner.0 == namespace && l.owner.1 == service {
                    return Ok(());
                }
                return Err(format!(
                    "port {port} is already published by service {}/{} on node {}",
                    l.owner.0, l.owner.1, self.config.node
                ));
            }
        }
        let addr = SocketAddr::new(self.config.address, port);
        std::net::TcpListener::bind(addr)
            .map(drop)
            .map_err(|e| self.bind_error(addr, e))
    }

    fn bind_error(&self, addr: SocketAddr, e: std::io::Error) -> String {
        let why = if e.kind() == std::io::ErrorKind::AddrInUse {
            "the port is already in use on the node".to_string()
        } else {
            e.to_string()
        };
        format!("node {}: cannot listen on {addr}: {why}", self.config.node)
    }

    fn service(&self, key: &Key) -> Arc<Service> {
        lock(&self.state)
            .services
            .entry(key.clone())
            .or_default()
            .clone()
    }
}

/// The order to try backends in for one connection.
fn candidates(
    svc: &Service,
    target: &str,
    balance: Balance,
) -> Vec<(SocketAddr, Arc<AtomicUsize>)> {
    let backends = svc
        .backends
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut list: Vec<(SocketAddr, Arc<AtomicUsize>)> = backends
        .iter()
        .filter_map(|b| {
            let port = b.endpoint.port(target)?;
            Some((SocketAddr::new(b.ip, port), b.active.clone()))
        })
        .collect();
    if list.is_empty() {
        return list;
    }
    let k = svc.next.fetch_add(1, Ordering::Relaxed) % list.len();
    list.rotate_left(k);
    if balance == Balance::LeastConnections {
        // Stable: among equals the rotation decides, so ties still spread.
        list.sort_by_key(|(_, active)| active.load(Ordering::Relaxed));
    }
    list
}

/// Decrements a backend's open-connection count when the connection ends.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn forward(
    mut client: TcpStream,
    svc: Arc<Service>,
    spec: Arc<RwLock<Published>>,
    connect_timeout: Duration,
    forwarded: Arc<AtomicUsize>,
) {
    let (target, balance) = {
        let p = spec.read().unwrap_or_else(|p| p.into_inner());
        (p.target.clone(), p.balance)
    };
    for (addr, active) in candidates(&svc, &target, balance) {
        active.fetch_add(1, Ordering::Relaxed);
        let open = Open(active);
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(mut upstream)) => {
                forwarded.fetch_add(1, Ordering::Relaxed);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                drop(open);
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "proxy: connect failed, trying the next replica")
            }
            Err(_) => tracing::debug!(%addr, "proxy: connect timed out, trying the next replica"),
        }
    }
    tracing::debug!(target = %target, "proxy: no ready replica accepted the connection");
}

async fn accept_loop(
    listener: TcpListener,
    svc: Arc<Service>,
    spec: Arc<RwLock<Published>>,
    connect_timeout: Duration,
    forwarded: Arc<AtomicUsize>,
) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let _ = client.set_nodelay(true);
                tokio::spawn(forward(
                    client,
                    svc.clone(),
                    spec.clone(),
                    connect_timeout,
                    forwarded.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(error = %e, "proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[async_trait]
impl Discovery for ServiceProxy {
    async fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), DiscoveryError> {
        let svc = self.service(&(namespace.into(), service.into()));
        {
            let mut active = lock(&svc.active);
            let backends: Vec<Backend> = endpoints
                .into_iter()
                .filter_map(|e| {
                    let ip = e.ip.parse().ok()?;
                    let count = active.entry(e.replica.clone()).or_default().clone();
                    Some(Backend {
                        ip,
                        endpoint: e,
                        active: count,
                    })
                })
                .collect();
            active.retain(|name, _| backends.iter().any(|b| &b.endpoint.replica == name));
            *svc.backends.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(backends);
        }
        self.sync_kernel().await
    }

    async fn remove_service(&self, namespace: &str, service: &str) -> Result<(), DiscoveryError> {
        let key = (namespace.to_string(), service.to_string());
        {
            let mut g = lock(&self.state);
            g.services.remove(&key);
            g.listeners.retain(|_, l| l.owner != key);
            g.vips.remove(&key);
        }
        self.sync_kernel().await
    }

    async fn set_virtual_ip(
        &self,
        namespace: &str,
        service: &str,
        vip: Option<VirtualIp>,
    ) -> Result<(), DiscoveryError> {
        if let Some(v) = &vip {
            if !self.vips_used.load(Ordering::Relaxed) {
                if !tokio::task::spawn_blocking(nft::available)
                    .await
                    .unwrap_or(false)
                {
                    return Err(DiscoveryError(format!(
                        "node {}: virtual IP {} of service {namespace}/{service}: virtual IPs are balanced by nftables rules, and `nft list tables` does not work here (it needs root, or CAP_NET_ADMIN, and the nft tool: package nftables)",
                        self.config.node, v.ip
                    )));
                }
                if self.config.mode != ProxyMode::Nftables {
                    nft::remove_stale_tables();
                }
                self.vips_used.store(true, Ordering::Relaxed);
            }
        }
        {
            let mut g = lock(&self.state);
            let key: Key = (namespace.into(), service.into());
            match vip {
                Some(v) => {
                    g.services.entry(key.clone()).or_default();
                    g.vips.insert(key, v);
                }
                None => {
                    if g.vips.remove(&key).is_none() {
                        return Ok(());
                    }
                }
            }
        }
        self.sync_kernel().await
    }

    async fn set_published(
        &self,
        namespace: &str,
        service: &str,
        published: Vec<Published>,
    ) -> Result<(), DiscoveryError> {
        let key: Key = (namespace.into(), service.into());
        let svc = self.service(&key);
        let errors = self.listen(&key, &svc, published);
        let synced = self.sync_kernel().await;
        if errors.is_empty() {
            synced
        } else {
            Err(DiscoveryError(format!(
                "publishing {namespace}/{service}: {}",
                errors.join("; ")
            )))
        }
    }
}

impl ServiceProxy {
    /// Opens the listeners `published` needs and closes the ones it no longer has; the
    /// ports that could not be opened, said.
    fn listen(&self, key: &Key, svc: &Arc<Service>, published: Vec<Published>) -> Vec<String> {
        let (namespace, service) = key;
        let mut g = lock(&self.state);
        g.listeners
            .retain(|port, l| l.owner != *key || published.iter().any(|p| p.port == *port));
        let mut errors = Vec::new();
        for p in published {
            match g.listeners.get(&p.port) {
                Some(l) if l.owner == *key => {
                    *l.spec.write().unwrap_or_else(|e| e.into_inner()) = p;
                    continue;
                }
                Some(l) => {
                    errors.push(format!(
                        "node {}: port {} is already published by service {}/{}",
                        self.config.node, p.port, l.owner.0, l.owner.1
                    ));
                    continue;
                }
                None => {}
            }
            let addr = SocketAddr::new(self.config.address, p.port);
            let listener = match crate::dns::tcp_listener(addr, 4096) {
                Ok(l) => l,
                Err(e) => {
                    errors.push(self.bind_error(addr, e));
                    continue;
                }
            };
            let port = p.port;
            let spec = Arc::new(RwLock::new(p));
            let task = tokio::spawn(accept_loop(
                listener,
                svc.clone(),
                spec.clone(),
                self.config.connect_timeout,
                self.forwarded.clone(),
            ));
            tracing::info!(%addr, service = %format!("{namespace}/{service}"), "proxy: listening");
            g.listeners.insert(
                port,
                Listener {
                    owner: key.clone(),
                    spec,
                    task,
                },
            );
        }
        errors
    }
}

/// The kernel data path: nftables DNAT rules in a table of the proxy's own.
mod nft {
    use std::net::{IpAddr, SocketAddr};
    use std::process::Stdio;

    use orch_core::model::object::Protocol;
    use tokio::io::AsyncWriteExt;

    const PREFIX: &str = "orch_proxy_";

    /// One published port or virtual IP port and the ready replicas its connections go to.
    pub struct Rule {
        pub listen: SocketAddr,
        pub protocol: Protocol,
        pub to: Vec<SocketAddr>,
        /// A virtual IP's port: with no replica it rejects (nothing else listens there),
        /// and what it rewrote keeps its source (replicas see the client's address).
        pub virtual_ip: bool,
    }

    fn proto(p: Protocol) -> &'static str {
        match p {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// `orch_proxy_PID`, and `orch_proxy_PID_N` for the process's further proxies (tests
    /// and benchmarks run several in one process, and every proxy with a virtual IP keeps a
    /// table).
    pub fn table_name(pid: u32) -> String {
        static PROXIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        match PROXIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            0 => format!("{PREFIX}{pid}"),
            n => format!("{PREFIX}{pid}_{n}"),
        }
    }

    pub fn available() -> bool {
        std::process::Command::new("nft")
            .args(["list", "tables"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The whole table, replaced in one transaction: a rule per published port with ready
    /// IPv4 replicas, and per virtual IP port, in the output hook (connections from this
    /// node) and prerouting (from others, and from replicas through the bridge).
    pub fn script(table: &str, rules: &[Rule]) -> String {
        let mut s = format!(
            "add table ip {table}\nflush table ip {table}\n\
             add chain ip {table} output {{ type nat hook output priority -100 ; policy accept ; }}\n\
             add chain ip {table} prerouting {{ type nat hook prerouting priority -100 ; policy accept ; }}\n\
             add chain ip {table} postrouting {{ type nat hook postrouting priority 100 ; policy accept ; }}\n"
        );
        for r in rules {
            let IpAddr::V4(listen) = r.listen.ip() else {
                continue;
            };
            let to: Vec<(usize, &SocketAddr)> =
                r.to.iter().filter(|b| b.is_ipv4()).enumerate().collect();
            let (l4, port) = (proto(r.protocol), r.listen.port());
            if to.is_empty() {
                if r.virtual_ip {
                    let reject = match r.protocol {
                        Protocol::Tcp => "reject with tcp reset",
                        Protocol::Udp => "reject",
                    };
                    for chain in ["output", "prerouting"] {
                        s.push_str(&format!(
                            "add rule ip {table} {chain} ip daddr {listen} {l4} dport {port} {reject}\n"
                        ));
                    }
                }
                continue;
            }
            let map = to
                .iter()
                .map(|(i, b)| format!("{i} : {} . {}", b.ip(), b.port()))
                .collect::<Vec<_>>()
                .join(", ");
            for chain in ["output", "prerouting"] {
                s.push_str(&format!(
                    "add rule ip {table} {chain} ip daddr {listen} {l4} dport {port} dnat to numgen inc mod {} map {{ {map} }}\n",
                    to.len()
                ));
            }
            if r.virtual_ip {
                continue;
            }
            // Masquerade (with a random source port) what this rule rewrote: replies from a
            // replica on another node come back through this node, and a new connection never
            // lands on the 4-tuple of an old one still in TIME_WAIT at the replica (its client
            // chose the port for the published address, not for the replica's).
            s.push_str(&format!(
                "add rule ip {table} postrouting ct status dnat ct original ip daddr {listen} meta l4proto tcp ct original proto-dst {} masquerade random\n",
                r.listen.port()
            ));
        }
        s
    }

    pub async fn apply(script: &str) -> Result<(), String> {
        let mut child = tokio::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| format!("nft: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Deletes the kernel's connection-tracking entries of connections to `backend`
    /// (`conntrack`, package conntrack; without it, nothing is deleted).
    pub async fn forget_connections(protocol: Protocol, backend: SocketAddr) {
        let IpAddr::V4(ip) = backend.ip() else {
            return;
        };
        let _ = tokio::process::Command::new("conntrack")
            .args(["-D", "-p", proto(protocol), "--reply-src"])
            .arg(ip.to_string())
            .arg("--reply-port-src")
            .arg(backend.port().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    pub fn delete_table(table: &str) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Tables of proxies whose process is gone (killed before it could delete its own).
    pub fn remove_stale_tables() {
        let Ok(out) = std::process::Command::new("nft")
            .args(["list", "tables", "ip"])
            .output()
        else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.trim().strip_prefix("table ip ") else {
                continue;
            };
            let Some(pid) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let pid = pid.split('_').next().unwrap_or(pid);
            if pid
                .parse::<u32>()
                .is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            {
                delete_table(name);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_script_balances_ipv4_replicas_and_masquerades_what_it_rewrote() {
            let rules = [
                Rule {
                    listen: "127.0.0.1:8080".parse().unwrap(),
                    protocol: Protocol::Tcp,
                    virtual_ip: false,
                    to: vec![
                        "127.0.0.1:4001".parse().unwrap(),
                        "10.9.0.2:4002".parse().unwrap(),
                        "[fd00::1]:4003".parse().unwrap(),
                    ],
                },
                Rule {
                    listen: "127.0.0.1:9090".parse().unwrap(),
                    protocol: Protocol::Tcp,
                    virtual_ip: false,
                    to: vec![],
                },
            ];
            let s = script("t", &rules);
            assert!(s.starts_with("add table ip t\nflush table ip t\n"), "{s}");
            assert!(s.contains("add rule ip t output ip daddr 127.0.0.1 tcp dport 8080 dnat to numgen inc mod 2 map { 0 : 127.0.0.1 . 4001, 1 : 10.9.0.2 . 4002 }"), "{s}");
            assert!(
                s.contains("add rule ip t prerouting ip daddr 127.0.0.1 tcp dport 8080"),
                "{s}"
            );
            assert!(s.contains("postrouting ct status dnat ct original ip daddr 127.0.0.1 meta l4proto tcp ct original proto-dst 8080 masquerade random"), "{s}");
            assert!(!s.contains("9090"), "no rule without replicas: {s}");
        }

        #[test]
        fn virtual_ips_balance_both_protocols_and_reject_without_replicas() {
            let vip = |port, protocol, to: &[&str]| Rule {
                listen: SocketAddr::new("10.96.0.10".parse().unwrap(), port),
                protocol,
                to: to.iter().map(|a| a.parse().unwrap()).collect(),
                virtual_ip: true,
            };
            let rules = [
                vip(53, Protocol::Udp, &["10.244.1.2:5353", "10.244.2.2:5353"]),
                vip(80, Protocol::Tcp, &["10.244.1.2:8080"]),
                vip(81, Protocol::Tcp, &[]),
                vip(82, Protocol::Udp, &[]),
            ];
            let s = script("t", &rules);
            for chain in ["output", "prerouting"] {
                assert!(s.contains(&format!("add rule ip t {chain} ip daddr 10.96.0.10 udp dport 53 dnat to numgen inc mod 2 map {{ 0 : 10.244.1.2 . 5353, 1 : 10.244.2.2 . 5353 }}")), "{s}");
                assert!(s.contains(&format!("add rule ip t {chain} ip daddr 10.96.0.10 tcp dport 80 dnat to numgen inc mod 1 map {{ 0 : 10.244.1.2 . 8080 }}")), "{s}");
                assert!(s.contains(&format!("add rule ip t {chain} ip daddr 10.96.0.10 tcp dport 81 reject with tcp reset\n")), "{s}");
                assert!(
                    s.contains(&format!(
                        "add rule ip t {chain} ip daddr 10.96.0.10 udp dport 82 reject\n"
                    )),
                    "{s}"
                );
            }
            assert!(
                !s.contains("masquerade"),
                "virtual IPs keep the client's address: {s}"
            );
        }
    }
}
