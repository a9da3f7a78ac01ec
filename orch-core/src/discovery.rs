//! The `Discovery` trait: where the endpoints controller publishes each service's ready
//! replicas (a DNS server, a proxy, files, another registry).
//!
//! Entries are names in a namespace: a service's, or a route's (the ready replicas its
//! selector picks, each endpoint port named by the route port and numbered by that endpoint's
//! target port; a route wins a name it shares with a service). So `service` below is a name
//! that may be either.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

/// One ready replica of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The replica's name.
    pub replica: String,
    /// The node it runs on.
    pub node: String,
    /// The address it is reached at.
    pub ip: String,
    /// Named ports.
    pub ports: Vec<EndpointPort>,
}

/// One named port of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPort {
    /// The template's port name.
    pub name: String,
    /// The port it is reached at.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: crate::model::object::Protocol,
}

impl Endpoint {
    /// The port named `name`.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.iter().find(|p| p.name == name).map(|p| p.port)
    }
}

/// Receives the full, current endpoint set of a service whenever it changes.
#[async_trait]
pub trait Discovery: Send + Sync {
    /// Replaces the endpoints of `namespace/service` (an empty list: none ready).
    async fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), DiscoveryError>;
    /// The service is gone.
    async fn remove_service(&self, namespace: &str, service: &str) -> Result<(), DiscoveryError>;
    /// Replaces the ports `namespace/service` publishes (`spec.publish`; empty: none).
    /// Called before the service's endpoints are first set and whenever they change;
    /// backends that do not proxy ignore it.
    async fn set_published(
        &self,
        namespace: &str,
        service: &str,
        published: Vec<Published>,
    ) -> Result<(), DiscoveryError> {
        let _ = (namespace, service, published);
        Ok(())
    }
    /// Sets (or, with `None`, removes) the virtual IP of `namespace/service`: DNS answers the
    /// service's name with it, and every node balances `ip:port` over the ready endpoints'
    /// same-named port in the kernel (its number may differ per endpoint: a route's port 80
    /// goes to each endpoint's target port). Called before the service's endpoints are first set
    /// and whenever it changes; a headless service has none. Backends that neither resolve
    /// nor balance ignore it.
    async fn set_virtual_ip(
        &self,
        namespace: &str,
        service: &str,
        vip: Option<VirtualIp>,
    ) -> Result<(), DiscoveryError> {
        let _ = (namespace, service, vip);
        Ok(())
    }
}

/// A service's virtual IP and the ports it serves there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VirtualIp {
    /// The address (from the service CIDR).
    pub ip: std::net::IpAddr,
    /// The ports: connections to `ip:port` go to an endpoint's port of the same name.
    pub ports: Vec<EndpointPort>,
}

/// A port a service publishes on every node (from `spec.publish`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Published {
    /// The port nodes listen on.
    pub port: u16,
    /// The endpoint port (by name) connections go to.
    pub target: String,
    /// How a replica is picked.
    pub balance: crate::model::object::Balance,
}

impl Published {
    /// What a service publishes.
    pub fn of(service: &crate::model::object::Service) -> Vec<Published> {
        service
            .spec
            .publish
            .iter()
            .filter_map(|p| {
                Some(Published {
                    port: p.port,
                    target: p.target(&service.spec.template)?.to_string(),
                    balance: p.balance,
                })
            })
            .collect()
    }
}

/// Publishes to several backends (files and DNS and the proxy, say); each gets every call,
/// and the first error is returned after all were tried.
#[derive(Clone, Default)]
pub struct Fanout(pub Vec<Arc<dyn Discovery>>);

#[async_trait]
impl Discovery for Fanout {
    async fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), DiscoveryError> {
        let mut first = Ok(());
        for d in &self.0 {
            let r = d.set_endpoints(namespace, service, endpoints.clone()).await;
            first = first.and(r);
        }
        first
    }
    async fn remove_service(&self, namespace: &str, service: &str) -> Result<(), DiscoveryError> {
        let mut first = Ok(());
        for d in &self.0 {
            first = first.and(d.remove_service(namespace, service).await);
        }
        first
    }
    async fn set_published(
        &self,
        namespace: &str,
        service: &str,
        published: Vec<Published>,
    ) -> Result<(), DiscoveryError> {
        let mut first = Ok(());
        for d in &self.0 {
            let r = d.set_published(namespace, service, published.clone()).await;
            first = first.and(r);
        }
        first
    }
    async fn set_virtual_ip(
        &self,
        namespace: &str,
        service: &str,
        vip: Option<VirtualIp>,
    ) -> Result<(), DiscoveryError> {
        let mut first = Ok(());
        for d in &self.0 {
            let r = d.set_virtual_ip(namespace, service, vip.clone()).await;
            first = first.and(r);
        }
        first
    }
}

/// A discovery backend failed; the endpoints controller retries with backoff.
#[derive(Debug, thiserror::Error)]
#[error("discovery: {0}")]
pub struct DiscoveryError(pub String);

#[async_trait]
impl<T: Discovery + ?Sized> Discovery for Arc<T> {
    async fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), DiscoveryError> {
        (**self).set_endpoints(namespace, service, endpoints).await
    }
    async fn remove_service(&self, namespace: &str, service: &str) -> Result<(), DiscoveryError> {
        (**self).remove_service(namespace, service).await
    }
    async fn set_published(
        &self,
        namespace: &str,
        service: &str,
        published: Vec<Published>,
    ) -> Result<(), DiscoveryError> {
        (**self).set_published(namespace, service, published).await
    }
    async fn set_virtual_ip(
        &self,
        namespace: &str,
        service: &str,
        vip: Option<VirtualIp>,
    ) -> Result<(), DiscoveryError> {
        (**self).set_virtual_ip(namespace, service, vip).await
    }
}

type EndpointMap = BTreeMap<(String, String), Vec<Endpoint>>;
type PublishedMap = BTreeMap<(String, String), Vec<Published>>;

/// Keeps endpoints, virtual IPs and published ports in memory; readable with
/// [`MemDiscovery::endpoints`], [`MemDiscovery::virtual_ip`] and [`MemDiscovery::published`].
#[derive(Clone, Default)]
pub struct MemDiscovery {
    map: Arc<Mutex<EndpointMap>>,
    vips: Arc<Mutex<BTreeMap<(String, String), VirtualIp>>>,
    published: Arc<Mutex<PublishedMap>>,
}

impl MemDiscovery {
    /// The current endpoints of a service.
    pub fn endpoints(&self, namespace: &str, service: &str) -> Vec<Endpoint> {
        get(&self.map, namespace, service).unwrap_or_default()
    }

    /// The ports a service (or route) publishes on every node now.
    pub fn published(&self, namespace: &str, service: &str) -> Vec<Published> {
        get(&self.published, namespace, service).unwrap_or_default()
    }

    /// The current virtual IP of a service.
    pub fn virtual_ip(&self, namespace: &str, service: &str) -> Option<VirtualIp> {
        get(&self.vips, namespace, service)
    }
}

type Keyed<T> = Mutex<BTreeMap<(String, String), T>>;

fn get<T: Clone>(m: &Keyed<T>, namespace: &str, service: &str) -> Option<T> {
    let g = m.lock().unwrap_or_else(|p| p.into_inner());
    g.get(&(namespace.to_string(), service.to_string()))
        .cloned()
}

/// Sets (`None`: removes) the value of `namespace/service`.
fn put<T>(m: &Keyed<T>, namespace: &str, service: &str, value: Option<T>) {
    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
    let key = (namespace.to_string(), service.to_string());
    match value {
        Some(v) => g.insert(key, v),
        None => g.remove(&key),
    };
}

#[async_trait]
impl Discovery for MemDiscovery {
    async fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), DiscoveryError> {
        put(&self.map, namespace, service, Some(endpoints));
        Ok(())
    }
    async fn remove_service(&self, namespace: &str, service: &str) -> Result<(), DiscoveryError> {
        put(&self.map, namespace, service, None);
        put(&self.vips, namespace, service, None);
        put(&self.published, namespace, service, None);
        Ok(())
    }
    async fn set_published(
        &self,
        namespace: &str,
        service: &str,
        published: Vec<Published>,
    ) -> Result<(), DiscoveryError> {
        let published = (!published.is_empty()).then_some(published);
        put(&self.published, namespace, service, published);
        Ok(())
    }
    async fn set_virtual_ip(
        &self,
        namespace: &str,
        service: &str,
        vip: Option<VirtualIp>,
    ) -> Result<(), DiscoveryError> {
        put(&self.vips, namespace, service, vip);
        Ok(())
    }
}
