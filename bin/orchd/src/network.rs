//! Replica networking on the command line: the cluster's ranges (`--cluster-cidr`,
//! `--service-cidr`, `--node-subnet-size`, `--network-mode`, read by the manager) and whether
//! this node's containers get a network of their own (`--replica-network auto|on|off`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use ipnet::Ipv4Net;
use orch_core::engine::ClusterNetwork;
use orch_core::model::object::NetworkMode;
use orch_core::node::AgentNetwork;

/// The cluster's replica network ranges: flags of `orchd server`, `manager` and `up`.
#[derive(Args, Clone, Debug)]
pub struct ClusterNetworkArgs {
    /// Where node subnets come from: each node leases one `--node-subnet-size` block and its
    /// container replicas get addresses from it. It must hold none of the nodes' own addresses.
    #[arg(long, default_value = "10.244.0.0/16", value_parser = parse_cidr)]
    pub cluster_cidr: Ipv4Net,
    /// Where service virtual IPs come from; disjoint from --cluster-cidr.
    #[arg(long, default_value = "10.96.0.0/16", value_parser = parse_cidr)]
    pub service_cidr: Ipv4Net,
    /// The prefix length of each node's subnet (24: 253 replicas per node).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(1..=32))]
    pub node_subnet_size: u8,
    /// How nodes reach each other's subnets: `vxlan` (an overlay, works across routers) or
    /// `host-gw` (a route per node via its address; nodes must share one L2 segment).
    #[arg(long, value_enum, default_value = "vxlan")]
    pub network_mode: Mode,
}

/// `--network-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Kernel VXLAN, flannel's static scheme.
    Vxlan,
    /// Host-gateway routes.
    HostGw,
}

/// A CIDR flag: an IPv4 network address with a prefix (`10.244.0.0/16`).
fn parse_cidr(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        format!("{s:?} is not an IPv4 CIDR: expected ADDRESS/PREFIX like 10.244.0.0/16")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set: the network is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

impl ClusterNetworkArgs {
    /// The ranges, checked against each other and against this host's own addresses (a
    /// replica subnet holding one would hide it behind the bridge).
    pub fn cluster(&self) -> anyhow::Result<ClusterNetwork> {
        let net = ClusterNetwork {
            cluster_cidr: self.cluster_cidr,
            node_prefix: self.node_subnet_size,
            service_cidr: self.service_cidr,
            mode: match self.network_mode {
                Mode::Vxlan => NetworkMode::Vxlan,
                Mode::HostGw => NetworkMode::HostGw,
            },
        };
        net.validate().map_err(|e| {
            anyhow::anyhow!("--cluster-cidr/--service-cidr/--node-subnet-size: {e}")
        })?;
        for (dev, addr) in host_addresses() {
            for (flag, cidr) in [
                ("--cluster-cidr", net.cluster_cidr),
                ("--service-cidr", net.service_cidr),
            ] {
                if cidr.contains(&addr) {
                    anyhow::bail!(
                        "{flag} {cidr} contains this host's address {addr} (on {dev}): replicas' routes would hide it; choose a range that holds none of this host's addresses"
                    );
                }
            }
        }
        Ok(net)
    }
}

/// This host's IPv4 addresses with their devices (`ip -o -4 addr show`), leaving out the
/// devices replica networking makes itself (their addresses are inside the cluster CIDR by
/// design). Empty when `ip` cannot be run.
pub fn host_addresses() -> Vec<(String, Ipv4Addr)> {
    let own = NetDevices::default();
    let Ok(out) = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            let dev = f.next()?.trim_end_matches(':').to_string();
            let addr = f.skip_while(|w| *w != "inet").nth(1)?;
            let ip = addr.split('/').next()?.parse().ok()?;
            (!own.contains(&dev)).then_some((dev, ip))
        })
        .collect()
}

/// The device names orch-net creates on a node.
struct NetDevices(Vec<String>);

impl Default for NetDevices {
    fn default() -> Self {
        let c = orch_net::NetConfig::new("", Ipv4Addr::UNSPECIFIED, PathBuf::new());
        NetDevices(vec![c.bridge, c.vxlan_device])
    }
}

impl NetDevices {
    fn contains(&self, dev: &str) -> bool {
        self.0.iter().any(|d| d == dev)
    }
}

/// The first address of this host that is not loopback (for a node with no
/// `--advertise-address`), else 127.0.0.1.
pub fn first_host_address() -> Ipv4Addr {
    host_addresses()
        .into_iter()
        .map(|(_, a)| a)
        .find(|a| !a.is_loopback())
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

/// `--replica-network` and where the CNI plugins are: flags of every command that runs a node.
#[derive(Args, Clone, Debug)]
pub struct ReplicaNetworkArgs {
    /// Whether container replicas get a network namespace and an IP of their own: `auto`
    /// (when this node can: root, the CNI plugins, nftables; otherwise the host network, said
    /// once on stderr), `on` (refuse to start when it cannot) or `off` (the host network, as
    /// process replicas always are).
    #[arg(long, value_enum, default_value = "auto")]
    pub replica_network: ReplicaNetwork,
    /// Where the CNI plugins (`bridge`, `host-local`, `loopback`, `portmap`) are.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
}

/// `--replica-network`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReplicaNetwork {
    /// Own network when available.
    Auto,
    /// Own network or refuse to start.
    On,
    /// Host network.
    Off,
}

/// What a node's replica networking came to at startup.
pub struct NodeNetworking {
    /// For the agent, when containers get their own network.
    pub network: Option<AgentNetwork>,
    /// One line for people: which network containers get, and why.
    pub summary: String,
}

impl ReplicaNetworkArgs {
    /// Sets up replica networking for node `node` at `address`, state in
    /// `DATA_DIR/network`; `runtimes` are the node's `--runtime` names (only containers join a
    /// network of their own).
    pub fn open(
        &self,
        node: &str,
        address: IpAddr,
        data_dir: &Path,
        runtimes: &[String],
    ) -> anyhow::Result<NodeNetworking> {
        let host = |why: String| NodeNetworking {
            network: None,
            summary: format!("replica network: host network ({why})"),
        };
        if self.replica_network == ReplicaNetwork::Off {
            return Ok(host("--replica-network off".into()));
        }
        if !runtimes.iter().any(|r| r == "containerd") {
            anyhow::ensure!(
                self.replica_network != ReplicaNetwork::On,
                "--replica-network on: only containers get a network of their own; give --runtime containerd (or process,containerd)"
            );
            return Ok(host(
                "no container runtime; process replicas use the host network".into(),
            ));
        }
        let address = match address {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => anyhow::bail!(
                "--replica-network: the node address {a} is IPv6; replica networking needs an IPv4 node address (--advertise-address)"
            ),
        };
        let mut config = orch_net::NetConfig::new(node, address, data_dir.join("network"));
        config.cni_bin_dir = self.cni_bin_dir.clone();
        match orch_net::CniNetwork::new(config) {
            Ok(net) => Ok(NodeNetworking {
                network: Some(AgentNetwork(Arc::new(net))),
                summary: format!(
                    "replica network: containers get their own IP (CNI plugins in {})",
                    self.cni_bin_dir.display()
                ),
            }),
            Err(e) if self.replica_network == ReplicaNetwork::On => {
                anyhow::bail!("--replica-network on: {e}")
            }
            Err(e) => Ok(host(format!(
                "{e}; --replica-network on makes this an error, off the choice"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!(
            parse_cidr("172.20.0.0/16").unwrap().to_string(),
            "172.20.0.0/16"
        );
        for (bad, says) in [
            ("10.244.0.0", "not an IPv4 CIDR"),
            ("nonsense", "like 10.244.0.0/16"),
            ("10.244.1.0/16", "the network is 10.244.0.0/16"),
            ("fd00::/8", "not an IPv4 CIDR"),
        ] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
