//! The `Network` trait: how a node gives container replicas a network of their own — a
//! network namespace with an address from the node's subnet — and reaches the other nodes'
//! subnets. The node agent is its only caller; `orch-net` implements it with CNI plugins,
//! netlink and nftables; a fake in memory serves the engine tests.

use std::net::IpAddr;

use async_trait::async_trait;

use crate::model::object::{NodeNetwork, PortSpec};
use crate::runtime::WorkloadNetwork;

/// Another node whose replica subnet this node must reach.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// The node's name.
    pub node: String,
    /// Its address on the network between nodes (the VXLAN underlay, the host-gw next hop).
    pub address: IpAddr,
    /// Its replica subnet (`10.244.3.0/24`).
    pub subnet: String,
}

/// Why a network operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// The node cannot do replica networking at all (not root, a plugin or tool missing, a
    /// lease that overlaps the node's own addresses): containers stay on the host network.
    #[error("{0}")]
    Unavailable(String),
    /// No address is left in the node's subnet.
    #[error("{0}")]
    Exhausted(String),
    /// Anything else (a plugin failed, netlink refused); retried.
    #[error("{0}")]
    Failed(String),
}

/// A node's replica networking. Every method is idempotent: the agent calls them again after
/// a restart or a failure, and they converge on what was asked.
#[async_trait]
pub trait Network: Send + Sync {
    /// Sets the node up for its lease (bridge, CNI configuration, overlay device,
    /// masquerading); called when the lease is first seen and whenever it changes. Until it
    /// succeeds, containers stay on the host network.
    async fn configure(&self, lease: &NodeNetwork) -> Result<(), NetworkError>;
    /// Gives workload `id` a network namespace with an address of the node's subnet, and
    /// maps the `host_port` of each of `ports` that has one to its `port` there (CNI's
    /// portmap); an existing attachment of `id` is returned as it is (re-adoption after a
    /// restart).
    async fn attach(&self, id: &str, ports: &[PortSpec]) -> Result<WorkloadNetwork, NetworkError>;
    /// Removes workload `id`'s namespace and releases its address; nothing to do is success.
    async fn detach(&self, id: &str) -> Result<(), NetworkError>;
    /// The workloads that have an attachment now, with it (for re-adoption and for removing
    /// attachments no workload needs).
    async fn attached(&self) -> Result<Vec<(String, WorkloadNetwork)>, NetworkError>;
    /// Makes every peer's subnet reachable (VXLAN or host-gw, per the lease's mode) and
    /// removes routes to subnets of nodes no longer in `peers`.
    async fn set_peers(&self, peers: &[Peer]) -> Result<(), NetworkError>;
    /// A one-line summary of what is set up (`vxlan, subnet 10.244.3.0/24, 2 peers`).
    fn describe(&self) -> String;
}
