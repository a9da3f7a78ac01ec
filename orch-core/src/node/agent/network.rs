//! The agent's replica networking: configures the node's [`Network`](crate::Network) for the
//! lease the manager wrote into its node object (retrying with backoff), keeps the peers
//! (the other Ready nodes with a lease) in step with the cache, decides for each replica
//! whether it gets a network of its own, waits for the lease (at most the grace period) and
//! falls back to the host network saying why, and detaches what no workload needs.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::cache::Change;
use crate::model::object::{
    DesiredState, Kind, NodeCondition, NodeNetwork, NodeNetworkStatus, Object, Template,
};
use crate::network::{NetworkError, Peer};

use super::{id_of, Agent};

/// Longest wait between two tries of a failing `configure` or `set_peers`.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the agent knows of its node's networking.
#[derive(Default)]
pub(super) struct NetState {
    /// The lease `configure` last succeeded for.
    configured: Option<NodeNetwork>,
    /// Why containers use the host network, once they do (`host network: ...`).
    fallback: Option<String>,
    /// What the node's status says.
    status: NodeNetworkStatus,
}

impl NetState {
    /// Waiting for the lease of `node`.
    pub(super) fn new(node: &str) -> NetState {
        NetState {
            status: NodeNetworkStatus {
                ready: false,
                message: format!("waiting for the subnet of node {node}"),
            },
            ..NetState::default()
        }
    }
}

/// Where a replica's network comes from.
pub(super) enum NetPlan {
    /// The node's own network.
    Host,
    /// A network of its own in this lease.
    Own(NodeNetwork),
    /// Not yet known: the lease has not been configured and the grace period runs.
    Wait(String),
}

/// The gateway of `subnet`: its first host address (the bridge's), where replicas with their
/// own network reach the cluster DNS.
pub(super) fn gateway(subnet: &str) -> Option<Ipv4Addr> {
    let net: ipnet::Ipv4Net = subnet.parse().ok()?;
    net.hosts().next()
}

impl Agent {
    fn net(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.net.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the node's status reports about its networking (`None`: the agent has none).
    pub(super) fn network_status(&self) -> Option<NodeNetworkStatus> {
        self.cfg.network.as_ref()?;
        Some(self.net().status.clone())
    }

    /// Whether a replica of `template` gets a network of its own, waits for one, or runs on
    /// the host network.
    pub(super) fn net_plan(&self, template: &Template) -> NetPlan {
        if self.cfg.network.is_none()
            || template.host_network
            || !self.runtime.joins_network(template)
        {
            return NetPlan::Host;
        }
        let g = self.net();
        match (&g.configured, &g.fallback) {
            (Some(lease), _) => NetPlan::Own(lease.clone()),
            (None, Some(_)) => NetPlan::Host,
            (None, None) => NetPlan::Wait(format!(
                "waiting for the subnet of node {} (up to {} before it starts on the host network): {}",
                self.cfg.node,
                humantime::format_duration(self.cfg.network_grace),
                g.status.message
            )),
        }
    }

    /// Detaches workload `id`'s network, if the agent has one (nothing to do is success).
    pub(super) async fn detach(&self, id: &str) {
        if let Some(n) = &self.cfg.network {
            if let Err(e) = n.0.detach(id).await {
                tracing::warn!(node = %self.cfg.node, workload = %id, error = %e, "agent: detach failed");
            }
        }
    }

    /// At start, after the runtime's workloads were listed: re-adopted workloads keep their
    /// attachment (and get their address back); attachments no workload and no replica bound
    /// here needs are detached.
    pub(super) async fn adopt_attachments(&self) {
        let Some(n) = &self.cfg.network else {
            return;
        };
        let attached = match n.0.attached().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(node = %self.cfg.node, error = %e, "agent: cannot list network attachments");
                return;
            }
        };
        let wanted: HashSet<String> = self
            .ctx
            .cache
            .replicas_on_node(&self.cfg.node)
            .iter()
            .filter(|r| r.spec.desired == DesiredState::Running)
            .map(id_of)
            .collect();
        let mut orphans = Vec::new();
        {
            let mut g = self.lock();
            for (id, wn) in attached {
                match g.workloads.get_mut(&id) {
                    Some(w) => {
                        w.ip.get_or_insert(wn.ip);
                    }
                    None if wanted.contains(&id) => {}
                    None => orphans.push(id),
                }
            }
        }
        for id in orphans {
            tracing::info!(node = %self.cfg.node, workload = %id, "agent: detaching an attachment no workload needs");
            self.detach(&id).await;
        }
    }

    fn set_status(&self, ready: bool, message: String) {
        let mut g = self.net();
        g.status = NodeNetworkStatus { ready, message };
    }

    /// The other nodes whose subnets this node must reach: Ready, with a lease and an
    /// address.
    fn peers(&self) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self
            .ctx
            .cache
            .list(Kind::Node)
            .iter()
            .filter_map(|o| match o.as_ref() {
                Object::Node(n)
                    if n.metadata.name != self.cfg.node
                        && n.status.condition == NodeCondition::Ready =>
                {
                    Some(Peer {
                        node: n.metadata.name.clone(),
                        address: n.status.addresses.first()?.parse::<IpAddr>().ok()?,
                        subnet: n.spec.network.as_ref()?.subnet.clone(),
                    })
                }
                _ => None,
            })
            .collect();
        peers.sort();
        peers
    }

    fn own_lease(&self) -> Option<NodeNetwork> {
        match self
            .ctx
            .cache
            .get(Kind::Node, &Kind::Node.key("", &self.cfg.node))
            .as_deref()
        {
            Some(Object::Node(n)) => n.spec.network.clone(),
            _ => None,
        }
    }

    /// Follows the node objects until the engine stops: configures the lease when it
    /// appears or changes, keeps the peers, and falls back to the host network when the
    /// lease does not come within the grace period or the node cannot do it.
    pub(super) async fn network_loop(self: Arc<Self>, started: Instant) {
        let Some(net) = self.cfg.network.clone() else {
            return;
        };
        let net = net.0;
        // A flag, not a queue of changes: every node heartbeats.
        let changed = Arc::new(tokio::sync::Notify::new());
        let weak = Arc::downgrade(&changed);
        self.ctx.cache.on_change(move |c| match weak.upgrade() {
            Some(n) => {
                if matches!(c, Change::Resync) || c.kind() == Some(Kind::Node) {
                    n.notify_one();
                }
                true
            }
            None => false,
        });
        let grace_at = started + self.cfg.network_grace;
        let mut tried: Option<NodeNetwork> = None;
        let mut configure_at: Option<Instant> = None;
        let mut configure_delay = Duration::from_millis(200);
        let mut peers_set: Option<Vec<Peer>> = None;
        let mut peers_at: Option<Instant> = None;
        let mut peers_delay = Duration::from_millis(200);
        loop {
            let now = Instant::now();
            // The lease.
            let lease = self.own_lease();
            let configured = self.net().configured.clone();
            if lease != configured && (lease != tried || configure_at.is_some_and(|t| t <= now)) {
                if lease != tried {
                    configure_delay = Duration::from_millis(200);
                }
                tried = lease.clone();
                configure_at = None;
                if let Some(l) = &lease {
                    match net.configure(l).await {
                        Ok(()) => {
                            {
                                let mut g = self.net();
                                g.configured = Some(l.clone());
                                g.fallback = None;
                            }
                            // A (re)configured network gets its peers again.
                            peers_set = None;
                            peers_at = None;
                            self.set_status(true, net.describe());
                            tracing::info!(node = %self.cfg.node, subnet = %l.subnet, "agent: replica network configured");
                            self.enqueue_all();
                        }
                        Err(e) => {
                            configure_at = Some(Instant::now() + configure_delay);
                            configure_delay = (configure_delay * 2).min(RETRY_MAX);
                            let unavailable = matches!(e, NetworkError::Unavailable(_));
                            tracing::warn!(node = %self.cfg.node, subnet = %l.subnet, error = %e, "agent: configuring the replica network failed");
                            if unavailable {
                                self.fall_back(format!("host network: {e}"));
                            } else {
                                self.set_status(
                                    false,
                                    format!(
                                        "configuring subnet {} failed (retrying): {e}",
                                        l.subnet
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            let waiting = {
                let g = self.net();
                g.configured.is_none() && g.fallback.is_none()
            };
            if waiting && Instant::now() >= grace_at {
                let why = match &lease {
                    None => format!(
                        "host network: no subnet leased to node {} within {} (does the manager run with a cluster network?)",
                        self.cfg.node,
                        humantime::format_duration(self.cfg.network_grace)
                    ),
                    Some(l) => format!(
                        "host network: subnet {} not configured within {}: {}",
                        l.subnet,
                        humantime::format_duration(self.cfg.network_grace),
                        self.net().status.message
                    ),
                };
                self.fall_back(why);
            }
            // The peers, once the lease is configured (their routes follow its mode).
            let peers = self.peers();
            let now = Instant::now();
            if self.net().configured.is_some()
                && peers_set.as_ref() != Some(&peers)
                && peers_at.is_none_or(|t| t <= now)
            {
                match net.set_peers(&peers).await {
                    Ok(()) => {
                        peers_set = Some(peers);
                        peers_at = None;
                        peers_delay = Duration::from_millis(200);
                        self.set_status(true, net.describe());
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.cfg.node, error = %e, "agent: setting the network's peers failed");
                        peers_at = Some(now + peers_delay);
                        peers_delay = (peers_delay * 2).min(RETRY_MAX);
                    }
                }
            }
            // Sleep until something changes or a retry or the grace period is due.
            let mut wake: Vec<Instant> = [configure_at, peers_at].into_iter().flatten().collect();
            if waiting {
                wake.push(grace_at);
            }
            let until = wake.into_iter().min();
            tokio::select! {
                _ = self.ctx.cancel.cancelled() => return,
                _ = changed.notified() => {}
                _ = sleep_until(until) => {}
            }
        }
    }

    /// Containers start on the host network from now on (until a lease is configured), and
    /// the node's status says why; replicas waiting for the lease start.
    fn fall_back(&self, why: String) {
        {
            let mut g = self.net();
            if g.fallback.as_deref() == Some(why.as_str()) {
                return;
            }
            g.fallback = Some(why.clone());
        }
        tracing::warn!(node = %self.cfg.node, "agent: containers use the {why}");
        self.set_status(false, why);
        self.enqueue_all();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
