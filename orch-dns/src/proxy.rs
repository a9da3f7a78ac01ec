//! The service proxy: for each port a service publishes (`spec.publish`), the node listens
//! on its proxy address and forwards each TCP connection to one of the service's ready
//! replicas, round robin or to the one with the fewest open connections. A replica that
//! stops being ready leaves the candidates with the endpoints update, at once; a connect
//! that fails (or takes longer than the connect timeout) is retried on the next replica.
//! When the service stops publishing the port, or goes away, the listener closes.
//! Connections already forwarded carry on until either side closes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::discovery::{Discovery, DiscoveryError, Endpoint, Published};
use orch_core::object::Balance;
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
}

impl ProxyConfig {
    /// Listens on `address`; connects time out after a second.
    pub fn new(node: &str, address: IpAddr) -> ProxyConfig {
        ProxyConfig {
            node: node.into(),
            address,
            connect_timeout: Duration::from_secs(1),
        }
    }
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
}

/// The proxy of one node; a [`Discovery`] the endpoints controller feeds.
pub struct ServiceProxy {
    config: ProxyConfig,
    state: Mutex<State>,
    forwarded: Arc<AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServiceProxy {
    /// A proxy that listens on `config.address`.
    pub fn new(config: ProxyConfig) -> ServiceProxy {
        ServiceProxy {
            config,
            state: Mutex::new(State::default()),
            forwarded: Arc::new(AtomicUsize::new(0)),
        }
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
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut client,
                    &mut upstream,
                    64 * 1024,
                    64 * 1024,
                )
                .await;
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
        drop(active);
        *svc.backends.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(backends);
        Ok(())
    }

    async fn remove_service(&self, namespace: &str, service: &str) -> Result<(), DiscoveryError> {
        let key = (namespace.to_string(), service.to_string());
        let mut g = lock(&self.state);
        g.services.remove(&key);
        g.listeners.retain(|_, l| l.owner != key);
        Ok(())
    }

    async fn set_published(
        &self,
        namespace: &str,
        service: &str,
        published: Vec<Published>,
    ) -> Result<(), DiscoveryError> {
        let key: Key = (namespace.into(), service.into());
        let svc = self.service(&key);
        let mut g = lock(&self.state);
        g.listeners
            .retain(|port, l| l.owner != key || published.iter().any(|p| p.port == *port));
        let mut errors = Vec::new();
        for p in published {
            match g.listeners.get(&p.port) {
                Some(l) if l.owner == key => {
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
            let listener = match bind(addr) {
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
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DiscoveryError(format!(
                "publishing {namespace}/{service}: {}",
                errors.join("; ")
            )))
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}
