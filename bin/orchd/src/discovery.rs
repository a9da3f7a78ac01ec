//! Discovery on a node: the cluster DNS server, the service proxy and endpoint files, fed
//! together by the node's endpoints controller.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use orch_core::discovery::{Discovery, Fanout};
use orch_core::AgentConfig;
use orch_dns::dns::{DnsConfig, DnsServer};
use orch_dns::proxy::{ProxyConfig, ProxyMode, ServiceProxy};

/// Where the DNS server listens unless told otherwise: a loopback address of its own on port
/// 53, so containers' resolv.conf can name it.
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.153:53";

/// The discovery flags of `orchd up`, `server` and `agent`.
#[derive(Args, Clone, Debug)]
pub struct DiscoveryArgs {
    /// Where the cluster DNS server listens (UDP and TCP), or `off`. Containers' resolv.conf
    /// can only name a server on port 53; processes get `ORCH_DNS` with any port. If the
    /// default cannot be bound (not root, taken), orchd runs without DNS and says so.
    #[arg(long, default_value = DEFAULT_DNS_LISTEN)]
    pub dns_listen: String,
    /// The cluster domain: services are `SERVICE.NAMESPACE.DOMAIN`.
    #[arg(long, default_value = "orch.local")]
    pub dns_domain: String,
    /// Domains every cluster name is also answered under, comma-separated (`''`: none); the
    /// default makes Kubernetes' `NAME.NAMESPACE.svc.cluster.local` resolve. Workloads search
    /// them after the cluster domain.
    #[arg(long, default_value = "svc.cluster.local", value_delimiter = ',')]
    pub dns_alias_domains: Vec<String>,
    /// TTL of DNS answers, in seconds.
    #[arg(long, default_value_t = 5)]
    pub dns_ttl: u32,
    /// Forward names outside the cluster domain to this server (`HOST:PORT`); by default
    /// they are REFUSED (so a resolver moves on to its next nameserver).
    #[arg(long)]
    pub dns_forward: Option<SocketAddr>,
    /// Queries a second one client socket may make to the DNS server (0: no limit).
    #[arg(long, default_value_t = 50_000)]
    pub dns_client_qps: u32,
    /// The address published ports (`spec.publish`) are listened on (default: the node's
    /// address).
    #[arg(long)]
    pub proxy_address: Option<IpAddr>,
    /// Where published ports are balanced: `userspace` (every connection through orchd:
    /// round robin or least connections, a failed connect retried on another replica) or
    /// `nftables` (round-robin ports as kernel DNAT rules, as kube-proxy does: near direct
    /// throughput, but a refused connect is not retried; needs root and `nft`).
    #[arg(long, default_value = "userspace", value_parser = ["userspace", "nftables"])]
    pub proxy_mode: String,
}

/// What runs on a node for discovery.
pub struct NodeDiscovery {
    /// Everything below, as one [`Discovery`] for the engine.
    pub fanout: Arc<dyn Discovery>,
    /// The DNS server, when it runs.
    pub dns: Option<Arc<DnsServer>>,
    /// Why the DNS server does not run, when it was asked for and could not start.
    pub dns_error: Option<String>,
    /// The service proxy.
    pub proxy: Arc<ServiceProxy>,
    /// The domains the DNS server also answers under (workloads search them too).
    pub dns_alias_domains: Vec<String>,
}

impl DiscoveryArgs {
    /// Starts the DNS server and the proxy for node `node` reached at `node_ip`, with the
    /// endpoint files in `files_dir`.
    pub async fn start(
        &self,
        node: &str,
        node_ip: IpAddr,
        files_dir: &Path,
    ) -> anyhow::Result<NodeDiscovery> {
        let mut dns_error = None;
        let dns = if self.dns_listen == "off" {
            None
        } else {
            let listen: SocketAddr = self.dns_listen.parse().with_context(|| {
                format!(
                    "--dns-listen {:?}: expected IP:PORT (like {DEFAULT_DNS_LISTEN}) or off",
                    self.dns_listen
                )
            })?;
            let mut cfg = DnsConfig::new(listen);
            cfg.domain = self.dns_domain.clone();
            cfg.alias_domains = self.alias_domains();
            cfg.ttl = self.dns_ttl;
            cfg.forward = self.dns_forward;
            cfg.client_qps = self.dns_client_qps;
            match DnsServer::start(cfg).await {
                Ok(s) => {
                    tracing::info!(addr = %s.local_addr(), domain = %self.dns_domain, "cluster DNS serving");
                    Some(Arc::new(s))
                }
                Err(e @ orch_dns::dns::DnsError::Bind { .. })
                    if self.dns_listen == DEFAULT_DNS_LISTEN =>
                {
                    eprintln!("orchd: {e}; running without cluster DNS (give --dns-listen IP:PORT, or --dns-listen off)");
                    dns_error = Some(e.to_string());
                    None
                }
                Err(e) => return Err(e).context("--dns-listen"),
            }
        };
        let mut proxy_config = ProxyConfig::new(node, self.proxy_address.unwrap_or(node_ip));
        proxy_config.mode = match self.proxy_mode.as_str() {
            "nftables" => {
                anyhow::ensure!(
                    ServiceProxy::nftables_available(),
                    "--proxy-mode nftables: `nft list tables` does not work here (it needs root and the nftables package)"
                );
                ProxyMode::Nftables
            }
            _ => ProxyMode::Userspace,
        };
        tracing::info!(mode = ?proxy_config.mode, address = %proxy_config.address, "service proxy");
        let proxy = Arc::new(ServiceProxy::new(proxy_config));
        let mut all: Vec<Arc<dyn Discovery>> = vec![
            Arc::new(orch_dns::FileDiscovery::new(files_dir)),
            proxy.clone(),
        ];
        if let Some(d) = &dns {
            all.push(d.clone());
        }
        let mut fanout: Arc<dyn Discovery> = Arc::new(Fanout(all));
        if !ServiceProxy::nftables_available() {
            // Virtual IPs are balanced only by nftables rules: without them a VIP in DNS
            // would lead nowhere from this node, so its DNS answers replica addresses.
            fanout = Arc::new(WithoutVirtualIps::new(fanout, node));
        }
        Ok(NodeDiscovery {
            fanout,
            dns,
            dns_error,
            proxy,
            dns_alias_domains: self.alias_domains(),
        })
    }

    /// The alias domains given, lower case, without empty ones.
    fn alias_domains(&self) -> Vec<String> {
        self.dns_alias_domains
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect()
    }
}

/// Discovery on a node that cannot balance virtual IPs (no root or no `nft`): services'
/// virtual IPs are kept from every backend, so the node's DNS answers their ready replicas'
/// addresses (as for a headless service) and the proxy never tries the kernel. Said once, on
/// the first virtual IP, instead of failing every endpoints update.
pub struct WithoutVirtualIps {
    inner: Arc<dyn Discovery>,
    node: String,
    said: std::sync::atomic::AtomicBool,
}

impl WithoutVirtualIps {
    /// Wraps `inner` for node `node`.
    pub fn new(inner: Arc<dyn Discovery>, node: &str) -> WithoutVirtualIps {
        WithoutVirtualIps {
            inner,
            node: node.into(),
            said: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl Discovery for WithoutVirtualIps {
    async fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: Vec<orch_core::discovery::Endpoint>,
    ) -> Result<(), orch_core::discovery::DiscoveryError> {
        self.inner
            .set_endpoints(namespace, service, endpoints)
            .await
    }
    async fn remove_service(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<(), orch_core::discovery::DiscoveryError> {
        self.inner.remove_service(namespace, service).await
    }
    async fn set_published(
        &self,
        namespace: &str,
        service: &str,
        published: Vec<orch_core::discovery::Published>,
    ) -> Result<(), orch_core::discovery::DiscoveryError> {
        self.inner
            .set_published(namespace, service, published)
            .await
    }
    async fn set_virtual_ip(
        &self,
        namespace: &str,
        service: &str,
        vip: Option<orch_core::discovery::VirtualIp>,
    ) -> Result<(), orch_core::discovery::DiscoveryError> {
        if let Some(v) = vip {
            if !self.said.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(node = %self.node, service = %format!("{namespace}/{service}"), vip = %v.ip,
                    "virtual IPs are not balanced on this node: nftables does not work here (it needs root and the nftables package); its DNS answers services' replica addresses instead");
            }
        }
        Ok(())
    }
}

/// The gateway of `node`'s subnet once its network is ready.
fn ready_gateway(cache: &orch_core::engine::cache::Cache, node: &str) -> Option<IpAddr> {
    let n = cache
        .nodes()
        .into_iter()
        .find(|n| n.metadata.name == node)?;
    let ready = n.status.network.as_ref().is_some_and(|s| s.ready);
    let subnet: ipnet::Ipv4Net = n.spec.network.as_ref()?.subnet.parse().ok()?;
    ready.then(|| IpAddr::V4(subnet.hosts().next().unwrap_or(subnet.network())))
}

impl NodeDiscovery {
    /// One line on the cluster DNS: where it serves, or why it does not.
    pub fn dns_state(&self, domain: &str) -> String {
        match (&self.dns, &self.dns_error) {
            (Some(d), _) => format!("cluster DNS: {} ({domain})", d.local_addr()),
            (None, Some(e)) => format!(
                "cluster DNS: NOT RUNNING: {e} (give --dns-listen IP:PORT, or --dns-listen off)"
            ),
            (None, None) => "cluster DNS: off (--dns-listen off)".to_string(),
        }
    }

    /// Tells the node's agent where workloads resolve names.
    pub fn configure(&self, agent: &mut AgentConfig, domain: &str) {
        agent.dns = self.dns.as_ref().map(|d| d.local_addr());
        agent.dns_domain = domain.trim_end_matches('.').to_ascii_lowercase();
        agent.dns_alias_domains = self.dns_alias_domains.clone();
    }

    /// Makes the DNS server also listen on the node's replica gateway (the first address of
    /// its subnet), port 53, once the node's network is configured (`status.network.ready`
    /// in the node object): replicas in their own network namespaces have it as their
    /// nameserver. Follows the node object through `cache` for as long as the process runs;
    /// a new subnet gets a listener too.
    pub fn serve_on_gateway(&self, cache: Arc<orch_core::engine::cache::Cache>, node: &str) {
        let Some(dns) = self.dns.clone() else {
            return;
        };
        let changed = Arc::new(tokio::sync::Notify::new());
        cache.on_change({
            let changed = changed.clone();
            move |c| {
                if matches!(c.kind(), None | Some(orch_core::model::object::Kind::Node)) {
                    changed.notify_one();
                }
                true
            }
        });
        let node = node.to_string();
        tokio::spawn(async move {
            let mut serving = std::collections::HashSet::new();
            loop {
                if let Some(gw) = ready_gateway(&cache, &node) {
                    if !serving.contains(&gw) {
                        let addr = SocketAddr::new(gw, 53);
                        match dns.add_listener(addr) {
                            Ok(()) => {
                                tracing::info!(%addr, "cluster DNS serving replicas on the gateway");
                                serving.insert(gw);
                            }
                            Err(e) => {
                                tracing::warn!(%addr, error = %e, "cluster DNS cannot listen on the gateway; retrying");
                                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                                continue;
                            }
                        }
                    }
                }
                changed.notified().await;
            }
        });
    }

    /// The apply-time check that a published port is free on this node.
    pub fn port_check(&self) -> orch_api::handler::PortCheck {
        let proxy = self.proxy.clone();
        Arc::new(move |ns: &str, svc: &str, port: u16| proxy.check_port(ns, svc, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::discovery::{Endpoint, VirtualIp};
    use orch_core::MemDiscovery;

    #[tokio::test]
    async fn a_node_without_nftables_keeps_virtual_ips_from_its_backends() {
        let mem = MemDiscovery::default();
        let d = WithoutVirtualIps::new(Arc::new(mem.clone()), "n1");
        let vip = VirtualIp {
            ip: "10.96.0.7".parse().unwrap(),
            ports: Vec::new(),
        };
        d.set_virtual_ip("default", "web", Some(vip.clone()))
            .await
            .unwrap();
        d.set_virtual_ip("default", "web", Some(vip)).await.unwrap();
        assert_eq!(mem.virtual_ip("default", "web"), None);
        let ep = Endpoint {
            replica: "web-1".into(),
            node: "n1".into(),
            ip: "10.244.0.2".into(),
            ports: Vec::new(),
        };
        d.set_endpoints("default", "web", vec![ep.clone()])
            .await
            .unwrap();
        assert_eq!(mem.endpoints("default", "web"), vec![ep]);
    }
}
