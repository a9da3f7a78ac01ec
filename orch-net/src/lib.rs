//! orch's replica networking on Linux, implementing [`orch_core::Network`]:
//!
//! - a network namespace per container replica, set up through CNI with the standard plugins
//!   (`bridge` + `host-local` IPAM over the node's subnet, `loopback`, `portmap` for host
//!   ports), from a conflist this crate writes, over the CNI env/stdin protocol;
//! - routes to every other node's subnet: a kernel VXLAN device with a static route,
//!   neighbour and FDB entry per peer (flannel's scheme), or host-gw routes, through netlink;
//! - masquerading of traffic that leaves the cluster CIDR (nftables, a table of its own).
//!
//! Every operation works in the network namespace of the thread that runs it (netlink sockets
//! are opened per operation, plugins and `nft` are children of that thread), which is how the
//! tests run several nodes in one process.

mod cni;
mod exec;
mod netlink;
mod netns;
mod network;
mod nft;
mod records;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use netlink::ROUTE_PROTOCOL;
pub use netns::NETNS_DIR;
pub use network::CniNetwork;
pub use nft::TABLE as NFT_TABLE;

/// How a node's replica networking is set up.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The node's name (in messages).
    pub node: String,
    /// Where this node keeps its network state (`DATA_DIR/network`): the conflist
    /// (`cni/orch.conflist`), host-local's leases (`cni/ipam`), the attachment records
    /// (`attachments/ID.json`). The namespaces themselves are under `/run/netns/`, named with a
    /// hash of this path.
    pub state_dir: PathBuf,
    /// Where the CNI plugins are (`/usr/lib/cni`).
    pub cni_bin_dir: PathBuf,
    /// The node's address between nodes (VXLAN underlay, host-gw next hop).
    pub address: Ipv4Addr,
    /// The bridge replicas attach to (`orch0`).
    pub bridge: String,
    /// The VXLAN device (`orch.vxlan`), its VNI and UDP port.
    pub vxlan_device: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port (4789).
    pub vxlan_port: u16,
}

impl NetConfig {
    /// Defaults for a node called `node` at `address` keeping state under `state_dir`.
    pub fn new(node: &str, address: Ipv4Addr, state_dir: PathBuf) -> NetConfig {
        NetConfig {
            node: node.into(),
            state_dir,
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            address,
            bridge: "orch0".into(),
            vxlan_device: "orch.vxlan".into(),
            vni: 1,
            vxlan_port: 4789,
        }
    }
}
