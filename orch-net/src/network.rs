//! [`CniNetwork`]: [`orch_core::Network`] with CNI plugins, netlink and nftables.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use orch_core::model::object::{NetworkMode, NodeNetwork, PortSpec, Protocol};
use orch_core::network::{Network, NetworkError, Peer};
use orch_core::runtime::WorkloadNetwork;
use serde_json::{json, Value};

use crate::cni::{self, ConfList, Invocation};
use crate::netlink::{Neighbour, Netlink, Route, VxlanSpec, ROUTE_PROTOCOL};
use crate::records::{self, Record};
use crate::{netns, nft, NetConfig};

/// The VXLAN header overhead (outer IPv4 + UDP + VXLAN + inner Ethernet).
const VXLAN_OVERHEAD: u32 = 50;
/// The route protocol of the service-CIDR route on the bridge (`static`).
const STATIC: u8 = 4;
/// The plugins every attachment needs.
const REQUIRED_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];
/// Where `nft` is looked for.
const NFT_PATHS: [&str; 3] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"];

/// The node's lease, parsed, with what `configure` found.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lease {
    spec: NodeNetwork,
    subnet: Ipv4Net,
    cluster: Ipv4Net,
    gateway: Ipv4Addr,
    mtu: u32,
}

#[derive(Default)]
struct Current {
    lease: Option<Lease>,
    peers: usize,
}

/// A node's replica networking through CNI plugins (bridge, host-local, loopback, portmap),
/// a VXLAN device or host-gw routes (netlink) and an nftables table of its own.
///
/// Every operation works in the network namespace of the thread that runs it.
pub struct CniNetwork {
    config: NetConfig,
    prefix: String,
    nft: PathBuf,
    current: Mutex<Current>,
    /// Serialises configure, set_peers and remove_all.
    order: tokio::sync::Mutex<()>,
}

fn failed(e: String) -> NetworkError {
    NetworkError::Failed(e)
}

/// `0a:58:` + the 4 bytes of the subnet's network address.
fn vxlan_mac(subnet: Ipv4Net) -> [u8; 6] {
    let o = subnet.network().octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

fn parse_net(field: &str, value: &str) -> Result<Ipv4Net, NetworkError> {
    value.parse::<Ipv4Net>().map(|n| n.trunc()).map_err(|_| {
        NetworkError::Unavailable(format!(
            "lease {field} {value:?} is not an IPv4 CIDR (like 10.244.3.0/24)"
        ))
    })
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl CniNetwork {
    /// Checks that this node can do replica networking (root, the CNI plugins bridge,
    /// host-local and loopback in `config.cni_bin_dir`, `nft`) and names what is missing.
    pub fn new(config: NetConfig) -> Result<CniNetwork, NetworkError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(NetworkError::Unavailable(format!(
                "node {}: replica networking needs root (running as uid {})",
                config.node,
                nix::unistd::geteuid()
            )));
        }
        let missing: Vec<&str> = REQUIRED_PLUGINS
            .into_iter()
            .filter(|p| cni::find_plugin(&config.cni_bin_dir, p).is_none())
            .collect();
        if !missing.is_empty() {
            let dir = config.cni_bin_dir.display();
            let where_ = match config.cni_bin_dir.is_dir() {
                true => format!("not in {dir}"),
                false => format!("the plugin directory {dir} does not exist"),
            };
            return Err(NetworkError::Unavailable(format!(
                "node {}: CNI plugin{} {} missing ({where_}; Debian: apt-get install containernetworking-plugins)",
                config.node,
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
            )));
        }
        let nft = NFT_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                NetworkError::Unavailable(format!(
                    "node {}: nft not found (looked in {}; Debian: apt-get install nftables)",
                    config.node,
                    NFT_PATHS.join(", ")
                ))
            })?;
        Ok(CniNetwork {
            prefix: netns::prefix(&config.state_dir),
            config,
            nft,
            current: Mutex::default(),
            order: tokio::sync::Mutex::new(()),
        })
    }

    /// The name prefix of this agent's network namespaces under `/run/netns/`.
    pub fn netns_prefix(&self) -> &str {
        &self.prefix
    }

    fn conflist_path(&self) -> PathBuf {
        self.config.state_dir.join("cni").join("orch.conflist")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.config.state_dir.join("cni").join("ipam")
    }

    fn netns_path(&self, id: &str) -> PathBuf {
        Path::new(netns::NETNS_DIR).join(format!("{}{id}", self.prefix))
    }

    fn lease(&self) -> Option<Lease> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lease
            .clone()
    }

    /// Parses and checks `spec` against the node's interface addresses; nothing is changed.
    async fn check_lease(
        &self,
        nl: &Netlink,
        spec: &NodeNetwork,
    ) -> Result<(Lease, u32), NetworkError> {
        let subnet = parse_net("subnet", &spec.subnet)?;
        let cluster = parse_net("clusterCidr", &spec.cluster_cidr)?;
        let service = parse_net("serviceCidr", &spec.service_cidr)?;
        if !cluster.contains(&subnet) {
            return Err(NetworkError::Unavailable(format!(
                "lease subnet {subnet} is not inside the cluster CIDR {cluster}"
            )));
        }
        if subnet.prefix_len() > 30 {
            return Err(NetworkError::Unavailable(format!(
                "lease subnet {subnet} is too small: at least a /30 (a gateway and one replica)"
            )));
        }
        if overlaps(cluster, service) {
            return Err(NetworkError::Unavailable(format!(
                "the cluster CIDR {cluster} and the service CIDR {service} overlap"
            )));
        }
        let mut own = Vec::new();
        for name in [&self.config.bridge, &self.config.vxlan_device] {
            if let Some(l) = nl.link(name).await.map_err(failed)? {
                own.push(l.index);
            }
        }
        let addresses = nl.addresses().await.map_err(failed)?;
        let names = nl.link_names().await.map_err(failed)?;
        let name_of = |index: u32| {
            names
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, n)| n.clone())
                .unwrap_or_else(|| format!("link {index}"))
        };
        for a in addresses.iter().filter(|a| !own.contains(&a.index)) {
            for (what, cidr) in [("cluster CIDR", cluster), ("service CIDR", service)] {
                if cidr.contains(&a.address) {
                    return Err(NetworkError::Unavailable(format!(
                        "node {}: its address {} (on {}) is inside the {what} {cidr}; the lease would cut the node off",
                        self.config.node,
                        a.address,
                        name_of(a.index)
                    )));
                }
            }
        }
        let underlay = addresses
            .iter()
            .find(|a| a.address == self.config.address)
            .ok_or_else(|| {
                NetworkError::Unavailable(format!(
                    "node {}: no interface holds the node's address {}",
                    self.config.node, self.config.address
                ))
            })?
            .index;
        let link = nl
            .link_by_index(underlay)
            .await
            .map_err(failed)?
            .ok_or_else(|| failed(format!("link {underlay} vanished")))?;
        let mtu = match spec.mode {
            NetworkMode::Vxlan => link.mtu.saturating_sub(VXLAN_OVERHEAD),
            NetworkMode::HostGw => link.mtu,
        };
        let gateway = subnet.hosts().next().unwrap_or(subnet.network());
        let lease = Lease {
            spec: spec.clone(),
            subnet,
            cluster,
            gateway,
            mtu,
        };
        Ok((lease, underlay))
    }

    /// Removes everything this network set up: every attachment (recorded or a leftover
    /// namespace of this agent's), the bridge, the VXLAN device, orch's routes, the nftables
    /// table and the CNI state. For uninstalling and for tests.
    pub async fn remove_all(&self) -> Result<(), NetworkError> {
        let _order = self.order.lock().await;
        let mut errors = Vec::new();
        for (id, _) in self.attached().await? {
            if let Err(e) = self.detach(&id).await {
                errors.push(e.to_string());
            }
        }
        let nl = Netlink::open().map_err(failed)?;
        for name in [&self.config.vxlan_device, &self.config.bridge] {
            if let Err(e) = nl.delete_link(name).await {
                errors.push(e);
            }
        }
        if let Err(e) = remove_orch_routes(&nl, &[]).await {
            errors.push(e);
        }
        if let Err(e) = nft::delete(&self.nft).await {
            errors.push(e);
        }
        for dir in [
            self.config.state_dir.join("cni"),
            records::dir(&self.config.state_dir),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("cannot remove {}: {e}", dir.display())),
            }
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Current::default();
        match errors.is_empty() {
            true => Ok(()),
            false => Err(failed(errors.join("; "))),
        }
    }

    /// Runs DEL for `record`'s chain in reverse order; the first failure is returned after
    /// every plugin ran.
    async fn delete_chain(&self, record: &Record) -> Result<(), String> {
        let inv = Invocation {
            bin_dir: &self.config.cni_bin_dir,
            command: "DEL",
            container: &record.id,
            netns: &record.netns,
            ifname: "eth0",
        };
        let mut first = None;
        for plugin in record.chain.iter().rev() {
            let conf = cni::netconf(plugin, record.result.as_ref(), &record.port_mappings);
            if let Err(e) = cni::invoke(&inv, &conf).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Runs loopback and the chain's ADD for `record`, returning the final result.
    async fn add_chain(&self, record: &Record) -> Result<Value, String> {
        let mut inv = Invocation {
            bin_dir: &self.config.cni_bin_dir,
            command: "ADD",
            container: &record.id,
            netns: &record.netns,
            ifname: "lo",
        };
        let lo = cni::netconf(&json!({ "type": "loopback" }), None, &Value::Null);
        cni::invoke(&inv, &lo).await?;
        inv.ifname = "eth0";
        let mut prev: Option<Value> = None;
        for plugin in &record.chain {
            let conf = cni::netconf(plugin, prev.as_ref(), &record.port_mappings);
            let result = cni::invoke(&inv, &conf).await?;
            if !result.is_null() {
                prev = Some(result);
            }
        }
        prev.ok_or_else(|| format!("the CNI chain for {} gave no result", record.id))
    }

    /// Undoes a failed or half-done attachment: DEL, the namespace, the record.
    async fn undo(&self, record: &Record) -> Result<(), String> {
        let del = self.delete_chain(record).await;
        netns::remove(&record.netns)?;
        del?;
        records::remove(&self.config.state_dir, &record.id)
    }

    fn exhausted(&self, lease: &Lease, message: &str) -> NetworkError {
        let hosts = (1u64 << (32 - lease.subnet.prefix_len())).saturating_sub(2);
        let free = hosts.saturating_sub(1);
        NetworkError::Exhausted(format!(
            "node {}: no address left in subnet {} ({free} address{} for replicas besides the gateway {}): {message}",
            self.config.node,
            lease.subnet,
            if free == 1 { "" } else { "es" },
            lease.gateway
        ))
    }
}

/// `portMappings` for portmap: each port with a `host_port`.
fn port_mappings(ports: &[PortSpec]) -> Result<Value, NetworkError> {
    let mut out = Vec::new();
    for p in ports {
        let Some(host) = p.host_port else { continue };
        let Some(port) = p.port else {
            return Err(failed(format!(
                "port {}: hostPort {host} needs a port to map to",
                p.name
            )));
        };
        let protocol = match p.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        out.push(json!({ "hostPort": host, "containerPort": port, "protocol": protocol }));
    }
    Ok(Value::Array(out))
}

/// Deletes the routes tagged with orch's protocol except `keep` (compared by destination and
/// gateway).
async fn remove_orch_routes(nl: &Netlink, keep: &[Route]) -> Result<(), String> {
    for r in nl.routes().await? {
        let kept = keep
            .iter()
            .any(|k| k.dst == r.dst && k.gateway == r.gateway);
        if r.protocol == ROUTE_PROTOCOL && !kept {
            nl.delete_route(&r).await?;
        }
    }
    Ok(())
}

#[async_trait]
impl Network for CniNetwork {
    async fn configure(&self, spec: &NodeNetwork) -> Result<(), NetworkError> {
        let _order = self.order.lock().await;
        let nl = Netlink::open().map_err(failed)?;
        let (lease, underlay) = self.check_lease(&nl, spec).await?;
        let previous = self.lease();
        // The bridge, holding the gateway address.
        let bridge = nl
            .ensure_bridge(&self.config.bridge, lease.mtu)
            .await
            .map_err(failed)?;
        let gw = Ipv4Net::new(lease.gateway, lease.subnet.prefix_len())
            .map_err(|e| failed(e.to_string()))?;
        nl.set_only_address(bridge, gw).await.map_err(failed)?;
        // The conflist.
        let ipam = self.ipam_dir();
        let list = ConfList {
            bridge: &self.config.bridge,
            subnet: lease.subnet,
            gateway: lease.gateway,
            mtu: lease.mtu,
            ipam_dir: &ipam,
        }
        .json();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| failed(e.to_string()))?;
        records::write_file(&self.conflist_path(), &bytes).map_err(failed)?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| failed(format!("cannot enable IPv4 forwarding: {e}")))?;
        // The overlay device.
        match lease.spec.mode {
            NetworkMode::Vxlan => {
                let spec = VxlanSpec {
                    name: self.config.vxlan_device.clone(),
                    vni: self.config.vni,
                    port: self.config.vxlan_port,
                    local: self.config.address,
                    underlay,
                    mac: vxlan_mac(lease.subnet),
                    mtu: lease.mtu,
                };
                let vx = nl.ensure_vxlan(&spec).await.map_err(failed)?;
                let addr =
                    Ipv4Net::new(lease.subnet.network(), 32).map_err(|e| failed(e.to_string()))?;
                nl.set_only_address(vx, addr).await.map_err(failed)?;
            }
            NetworkMode::HostGw => nl
                .delete_link(&self.config.vxlan_device)
                .await
                .map_err(failed)?,
        }
        // The service CIDR through the bridge, so host processes reach virtual IPs.
        let service = parse_net("serviceCidr", &spec.service_cidr)?;
        let service_route = Route {
            dst: service,
            gateway: None,
            oif: Some(bridge),
            onlink: false,
            protocol: STATIC,
            src: Some(lease.gateway),
        };
        for r in nl.routes().await.map_err(failed)? {
            if r.oif == Some(bridge) && r.protocol == STATIC && r.dst != service {
                nl.delete_route(&r).await.map_err(failed)?;
            }
        }
        nl.add_route(&service_route).await.map_err(failed)?;
        nft::apply(&self.nft, &nft::script(lease.cluster, lease.subnet))
            .await
            .map_err(failed)?;
        // A changed subnet or mode: the routes to peers were for the old one.
        let changed = previous
            .as_ref()
            .is_some_and(|p| p.subnet != lease.subnet || p.spec.mode != lease.spec.mode);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if changed {
            drop(current);
            remove_orch_routes(&nl, &[]).await.map_err(failed)?;
            current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            current.peers = 0;
        }
        current.lease = Some(lease);
        Ok(())
    }

    async fn attach(&self, id: &str, ports: &[PortSpec]) -> Result<WorkloadNetwork, NetworkError> {
        netns::check_id(id).map_err(failed)?;
        let state = &self.config.state_dir;
        if let Some(record) = records::read(state, id).map_err(failed)? {
            match (&record.ip, netns::is_mounted(&record.netns)) {
                (Some(ip), true) => {
                    return Ok(WorkloadNetwork {
                        netns: record.netns.clone(),
                        ip: ip.clone(),
                    })
                }
                // Half done (a crash mid-way) or its namespace gone: start again.
                _ => self.undo(&record).await.map_err(failed)?,
            }
        }
        let lease = self.lease().ok_or_else(|| {
            NetworkError::Unavailable(format!(
                "node {}: the network is not configured yet (no lease applied)",
                self.config.node
            ))
        })?;
        let mappings = port_mappings(ports)?;
        let list: Value = std::fs::read(self.conflist_path())
            .map_err(|e| format!("cannot read {}: {e}", self.conflist_path().display()))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(failed)?;
        let wants_ports = mappings.as_array().is_some_and(|m| !m.is_empty());
        let chain: Vec<Value> = list["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| cni::plugin_type(p) != "portmap" || wants_ports)
            .collect();
        for p in &chain {
            let kind = cni::plugin_type(p);
            if cni::find_plugin(&self.config.cni_bin_dir, kind).is_none() {
                return Err(NetworkError::Unavailable(format!(
                    "node {}: CNI plugin {kind} not found in {} (Debian: apt-get install containernetworking-plugins)",
                    self.config.node,
                    self.config.cni_bin_dir.display()
                )));
            }
        }
        let path = self.netns_path(id);
        // A namespace without a record is a leftover: replace it.
        netns::remove(&path).map_err(failed)?;
        let mut record = Record {
            id: id.to_string(),
            netns: path.clone(),
            chain,
            port_mappings: mappings,
            result: None,
            ip: None,
        };
        records::write(state, &record).map_err(failed)?;
        let added = match netns::create(&format!("{}{id}", self.prefix)).await {
            Ok(_) => self.add_chain(&record).await,
            Err(e) => Err(e),
        };
        let result = match added {
            Ok(r) => r,
            Err(e) => {
                if let Err(undo) = self.undo(&record).await {
                    tracing::warn!(id, error = %undo, "undoing a failed attachment");
                }
                return Err(match cni::is_exhausted(&e) {
                    true => self.exhausted(&lease, &e),
                    false => failed(e),
                });
            }
        };
        let Some(ip) = cni::result_ip(&result) else {
            let _ = self.undo(&record).await;
            return Err(failed(format!(
                "the CNI result for {id} has no IPv4 address: {result}"
            )));
        };
        record.result = Some(result);
        record.ip = Some(ip.clone());
        if let Err(e) = records::write(state, &record) {
            let _ = self.undo(&record).await;
            return Err(failed(e));
        }
        Ok(WorkloadNetwork { netns: path, ip })
    }

    async fn detach(&self, id: &str) -> Result<(), NetworkError> {
        netns::check_id(id).map_err(failed)?;
        match records::read(&self.config.state_dir, id).map_err(failed)? {
            Some(record) => self.undo(&record).await.map_err(failed),
            None => netns::remove(&self.netns_path(id)).map_err(failed),
        }
    }

    async fn attached(&self) -> Result<Vec<(String, WorkloadNetwork)>, NetworkError> {
        let state = &self.config.state_dir;
        let mut out = Vec::new();
        let recorded = records::ids(state);
        for id in &recorded {
            if let Some(r) = records::read(state, id).map_err(failed)? {
                out.push((
                    id.clone(),
                    WorkloadNetwork {
                        netns: r.netns,
                        ip: r.ip.unwrap_or_default(),
                    },
                ));
            }
        }
        for id in netns::list(&self.prefix) {
            if !recorded.contains(&id) {
                let netns = self.netns_path(&id);
                out.push((
                    id,
                    WorkloadNetwork {
                        netns,
                        ip: String::new(),
                    },
                ));
            }
        }
        Ok(out)
    }

    async fn set_peers(&self, peers: &[Peer]) -> Result<(), NetworkError> {
        let _order = self.order.lock().await;
        let lease = self.lease().ok_or_else(|| {
            NetworkError::Unavailable(format!(
                "node {}: the network is not configured yet (no lease applied)",
                self.config.node
            ))
        })?;
        let mut wanted = Vec::new();
        for p in peers {
            let subnet = p
                .subnet
                .parse::<Ipv4Net>()
                .map(|n| n.trunc())
                .map_err(|_| {
                    failed(format!(
                        "peer {}: subnet {:?} is not an IPv4 CIDR",
                        p.node, p.subnet
                    ))
                })?;
            let IpAddr::V4(address) = p.address else {
                return Err(failed(format!(
                    "peer {}: address {} is not IPv4",
                    p.node, p.address
                )));
            };
            if subnet != lease.subnet {
                wanted.push((subnet, address));
            }
        }
        let nl = Netlink::open().map_err(failed)?;
        let mut routes = Vec::new();
        match lease.spec.mode {
            NetworkMode::Vxlan => {
                let vx = nl
                    .link(&self.config.vxlan_device)
                    .await
                    .map_err(failed)?
                    .ok_or_else(|| {
                        failed(format!(
                            "the vxlan device {} is gone; configure again",
                            self.config.vxlan_device
                        ))
                    })?
                    .index;
                let (mut neighbours, mut fdb) = (Vec::new(), Vec::new());
                for (subnet, address) in &wanted {
                    let mac = vxlan_mac(*subnet);
                    neighbours.push(Neighbour::new(subnet.network(), mac));
                    fdb.push(Neighbour::new(*address, mac));
                    routes.push(Route {
                        dst: *subnet,
                        gateway: Some(subnet.network()),
                        oif: Some(vx),
                        onlink: true,
                        protocol: ROUTE_PROTOCOL,
                        src: None,
                    });
                }
                // Neighbour and FDB entries before the routes that use them.
                for (entries, is_fdb) in [(&neighbours, false), (&fdb, true)] {
                    for n in entries {
                        nl.add_neighbour(vx, n, is_fdb).await.map_err(failed)?;
                    }
                    for old in nl.neighbours(vx, is_fdb).await.map_err(failed)? {
                        let keep = entries
                            .iter()
                            .any(|n| n.mac == old.mac && (is_fdb || n.ip == old.ip));
                        if !keep {
                            nl.delete_neighbour(&old).await.map_err(failed)?;
                        }
                    }
                }
            }
            NetworkMode::HostGw => {
                for (subnet, address) in &wanted {
                    routes.push(Route {
                        dst: *subnet,
                        gateway: Some(*address),
                        oif: None,
                        onlink: false,
                        protocol: ROUTE_PROTOCOL,
                        src: None,
                    });
                }
            }
        }
        for r in &routes {
            nl.add_route(r).await.map_err(failed)?;
        }
        remove_orch_routes(&nl, &routes).await.map_err(failed)?;
        self.current.lock().unwrap_or_else(|e| e.into_inner()).peers = wanted.len();
        Ok(())
    }

    fn describe(&self) -> String {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &current.lease {
            None => format!("not configured (node {})", self.config.node),
            Some(l) => format!(
                "{}, subnet {}, {} peer{}, mtu {}",
                l.spec.mode.as_str(),
                l.subnet,
                current.peers,
                if current.peers == 1 { "" } else { "s" },
                l.mtu
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vxlan_mac_comes_from_the_subnet() {
        assert_eq!(
            vxlan_mac("10.244.3.0/24".parse().unwrap()),
            [0x0a, 0x58, 10, 244, 3, 0]
        );
    }

    #[test]
    fn host_ports_need_a_port() {
        let p = PortSpec {
            name: "http".into(),
            port: None,
            host_port: Some(8080),
            protocol: Protocol::Tcp,
        };
        assert!(port_mappings(std::slice::from_ref(&p))
            .unwrap_err()
            .to_string()
            .contains("hostPort 8080"));
        let p = PortSpec {
            port: Some(80),
            ..p
        };
        assert_eq!(
            port_mappings(&[p]).unwrap(),
            json!([{ "hostPort": 8080, "containerPort": 80, "protocol": "tcp" }])
        );
    }
}
