//! The `Discovery` trait: where the endpoints controller publishes each service's ready
//! replicas (a DNS server, a proxy, files, another registry).

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
    pub ports: Vec<(String, u16)>,
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
}

type EndpointMap = BTreeMap<(String, String), Vec<Endpoint>>;

/// Keeps endpoints in memory; readable with [`MemDiscovery::endpoints`].
#[derive(Clone, Default)]
pub struct MemDiscovery {
    map: Arc<Mutex<EndpointMap>>,
}

impl MemDiscovery {
    /// The current endpoints of a service.
    pub fn endpoints(&self, namespace: &str, service: &str) -> Vec<Endpoint> {
        let g = self.map.lock().unwrap_or_else(|p| p.into_inner());
        g.get(&(namespace.to_string(), service.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl Discovery for MemDiscovery {
    async fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), DiscoveryError> {
        let mut g = self.map.lock().unwrap_or_else(|p| p.into_inner());
        g.insert((namespace.to_string(), service.to_string()), endpoints);
        Ok(())
    }
    async fn remove_service(&self, namespace: &str, service: &str) -> Result<(), DiscoveryError> {
        let mut g = self.map.lock().unwrap_or_else(|p| p.into_inner());
        g.remove(&(namespace.to_string(), service.to_string()));
        Ok(())
    }
}
