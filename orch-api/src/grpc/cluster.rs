//! Joining and serving: a manager serves the cluster protocol on one TCP port (mutual TLS;
//! only `Cluster/Join` is open to callers without a certificate), an agent joins with a
//! token and then reaches the manager's store with its own certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use orch_core::store::{Op, Store, StoreError, WatchEvent};
use tokio_util::sync::CancellationToken;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status};

use super::auth::{self, Identity};
pub use super::limits::Limits;
use super::pb;
pub use super::pki::Credentials;
use super::pki::{self, ClusterCa, JoinToken, PkiError};
use super::store::{Dialer, RemoteStore, StoreService};
use super::{MANAGER_NAME, MAX_MESSAGE};
use crate::managers::REVOKED_PREFIX;

/// How long node certificates are valid by default (Swarm's default too).
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);

/// A manager's cluster identity: its CA, the worker join token (re-read on every join, so a
/// rotation takes effect at once) and how long node certificates last.
pub struct Manager {
    dir: PathBuf,
    ca: ClusterCa,
    token_path: PathBuf,
    manager_token_path: PathBuf,
    cert_validity: Duration,
    /// Names that joined, in order (for tests and `orchd` logs).
    joined: Mutex<Vec<String>>,
    /// The manager's own certificate (`CN=manager`, for [`MANAGER_NAME`]), made on first use.
    own: std::sync::OnceLock<Credentials>,
    /// Removed nodes, whose certificates are refused (kept in `revoked`, a name a line, and
    /// with a shared store under [`REVOKED_PREFIX`]).
    revoked: Mutex<std::collections::BTreeSet<String>>,
    revoked_path: PathBuf,
    /// The store this manager shares with the others ([`Manager::share`]).
    shared: std::sync::OnceLock<Arc<dyn Store>>,
    /// Who admits other managers ([`Manager::admit_managers`]).
    admission: std::sync::OnceLock<Arc<dyn ManagerAdmission>>,
}

/// A manager asking to join (`Cluster/JoinManager`), its manager token checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoiningManager {
    /// Its name.
    pub name: String,
    /// Its cluster address (`HOST:PORT`).
    pub address: String,
    /// The peer URL of the etcd member it will run, if it will run one.
    pub etcd_peer_url: Option<String>,
}

/// The store a joining manager is to use, granted by the manager that admits it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoreGrant {
    /// The text of the keyring secrets are sealed with.
    pub secret_keys: String,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// The key prefix.
    pub store_prefix: String,
    /// The endpoints are the etcd orch runs: https, certificates from the cluster CA.
    pub etcd_tls: bool,
    /// The etcd member added for the joining manager: its id and the initial cluster
    /// (`NAME=PEER_URL,...`) to start it with.
    pub etcd_member: Option<(u64, String)>,
}

impl std::fmt::Debug for StoreGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreGrant")
            .field("secret_keys", &"<redacted>")
            .field("etcd_endpoints", &self.etcd_endpoints)
            .field("store_prefix", &self.store_prefix)
            .field("etcd_tls", &self.etcd_tls)
            .field("etcd_member", &self.etcd_member)
            .finish()
    }
}

/// Everything a manager that joined gets: the CA with its key, the tokens, the managers'
/// addresses and the store.
#[derive(Clone)]
pub struct ManagerGrant {
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// Its private key (PEM).
    pub ca_key_pem: String,
    /// The worker join token.
    pub worker_token: String,
    /// The manager token.
    pub manager_token: String,
    /// Every manager's cluster address.
    pub managers: Vec<String>,
    /// The store.
    pub store: StoreGrant,
}

impl std::fmt::Debug for ManagerGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerGrant")
            .field("managers", &self.managers)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// What a manager does to admit another (the daemon knows its store and its etcd): grant the
/// store, adding an etcd member when asked. An error refuses the join, saying why.
#[async_trait::async_trait]
pub trait ManagerAdmission: Send + Sync {
    /// Admits `joining`.
    async fn admit(&self, joining: &JoiningManager) -> Result<StoreGrant, String>;
}

impl Manager {
    /// Loads or creates the CA and the worker token under `dir` (`ca.pem`, `ca.key`,
    /// `worker.token`, all mode 0600).
    pub fn open(dir: &Path, cert_validity: Duration) -> Result<Manager, PkiError> {
        let ca = ClusterCa::load_or_create(dir)?;
        let token_path = dir.join("worker.token");
        JoinToken::load_or_create(&token_path, &ca.digest())?;
        let manager_token_path = dir.join("manager.token");
        JoinToken::load_or_create(&manager_token_path, &ca.digest())?;
        let revoked_path = dir.join("revoked");
        let revoked = match std::fs::read_to_string(&revoked_path) {
            Ok(t) => t
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(source) => {
                return Err(PkiError::Io {
                    path: revoked_path,
                    source,
                })
            }
        };
        Ok(Manager {
            dir: dir.to_path_buf(),
            ca,
            token_path,
            manager_token_path,
            cert_validity,
            joined: Mutex::new(Vec::new()),
            own: std::sync::OnceLock::new(),
            revoked: Mutex::new(revoked),
            revoked_path,
            shared: std::sync::OnceLock::new(),
            admission: std::sync::OnceLock::new(),
        })
    }

    /// Writes what joining as a manager granted into `dir` (the cluster directory): the CA
    /// and its key, the tokens. Refuses a directory holding another cluster's CA.
    pub fn install(dir: &Path, grant: &ManagerGrant) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let cert_path = dir.join("ca.pem");
        if let Ok(existing) = std::fs::read_to_string(&cert_path) {
            let (old, new) = (pki::pem_to_der(&existing)?, pki::pem_to_der(&grant.ca_pem)?);
            if old != new {
                return Err(PkiError::Invalid(format!(
                    "{} holds the CA of another cluster (digest {}, the joined one's is {}); use another data directory",
                    cert_path.display(),
                    pki::digest(&old),
                    pki::digest(&new)
                )));
            }
        }
        for (token, what) in [
            (&grant.worker_token, "worker token"),
            (&grant.manager_token, "manager token"),
        ] {
            JoinToken::parse(token)
                .map_err(|e| PkiError::Invalid(format!("the granted {what}: {e}")))?;
        }
        pki::write_private(&dir.join("ca.key"), &grant.ca_key_pem)?;
        pki::write_private(&cert_path, &grant.ca_pem)?;
        pki::write_private(&dir.join("worker.token"), &grant.worker_token)?;
        pki::write_private(&dir.join("manager.token"), &grant.manager_token)
    }

    /// Shares this manager's revocations with the other managers of `store`: removed nodes
    /// are kept under [`REVOKED_PREFIX`] (the ones in this manager's file are copied there
    /// once), and this manager follows that prefix until `cancel`. Call once.
    pub fn share(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let _ = self.shared.set(store.clone());
        let m = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = m.follow_revocations(store) => {}
            }
        })
    }

    /// Lets managers join through this one (`Cluster/JoinManager`), admitted by `admission`.
    pub fn admit_managers(&self, admission: Arc<dyn ManagerAdmission>) {
        let _ = self.admission.set(admission);
    }

    async fn follow_revocations(&self, store: Arc<dyn Store>) {
        let marker = self.dir.join("revoked.shared");
        loop {
            if !marker.exists() {
                let local: Vec<String> = self
                    .revoked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                let mut copied = true;
                for name in local {
                    if let Err(e) = put_revoked(&*store, &name).await {
                        tracing::warn!(error = %e, "cluster: cannot share revoked nodes yet");
                        copied = false;
                        break;
                    }
                }
                if copied {
                    if let Err(e) = pki::write_private(&marker, "") {
                        tracing::warn!(error = %e, "cluster: cannot record that revocations are shared");
                    }
                }
            }
            if let Err(e) = self.follow_revocations_once(&*store).await {
                tracing::warn!(error = %e, "cluster: following revoked nodes; again in 1 s");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Lists the revoked nodes, then follows their changes until the watch fails.
    async fn follow_revocations_once(&self, store: &dyn Store) -> Result<(), StoreError> {
        let (kvs, rev) = store.list(REVOKED_PREFIX).await?;
        let names = kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(REVOKED_PREFIX))
            .map(str::to_string)
            .collect();
        self.replace_revoked(names);
        let mut watch = store.watch(REVOKED_PREFIX, rev).await?;
        while let Some(batch) = watch.next().await {
            let mut set = self
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for ev in batch?.events {
                match &ev {
                    WatchEvent::Put(kv) => {
                        if let Some(n) = kv.key.strip_prefix(REVOKED_PREFIX) {
                            set.insert(n.to_string());
                        }
                    }
                    WatchEvent::Delete { prev, .. } => {
                        if let Some(n) = prev.key.strip_prefix(REVOKED_PREFIX) {
                            set.remove(n);
                        }
                    }
                }
            }
            self.replace_revoked(set);
        }
        Err(StoreError::Unavailable(
            "the watch of revoked nodes ended".into(),
        ))
    }

    fn replace_revoked(&self, names: std::collections::BTreeSet<String>) {
        let mut set = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if *set != names {
            *set = names;
            self.save_revoked(&set);
        }
    }

    fn save_revoked(&self, set: &std::collections::BTreeSet<String>) {
        let text: String = set.iter().map(|n| format!("{n}\n")).collect();
        if let Err(e) = pki::write_private(&self.revoked_path, &text) {
            tracing::error!(error = %e, "cluster: cannot record revoked nodes");
        }
    }

    /// The managers' cluster addresses, from the shared store (none without one).
    async fn manager_addresses(&self) -> Vec<String> {
        match self.shared.get() {
            Some(store) => crate::managers::addresses(&**store, None)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cluster: cannot list the managers");
                    Vec::new()
                }),
            None => Vec::new(),
        }
    }

    /// Refuses node `name`'s certificates from now on (it was removed); joining again with a
    /// valid token lifts this.
    pub fn revoke(&self, name: &str) {
        self.set_revoked(name, true);
    }

    /// Whether node `name` was removed.
    pub fn is_revoked(&self, name: &str) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    fn set_revoked(&self, name: &str, revoked: bool) {
        let mut set = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if revoked {
            set.insert(name.to_string())
        } else {
            set.remove(name)
        };
        if changed {
            self.save_revoked(&set);
        }
        drop(set);
        // The other managers learn it from the shared store (written even when this
        // manager's own set had it already: another may not).
        if let Some(store) = self.shared.get().cloned() {
            let name = name.to_string();
            tokio::spawn(async move {
                let r = if revoked {
                    put_revoked(&*store, &name).await
                } else {
                    delete_revoked(&*store, &name).await
                };
                if let Err(e) = r {
                    tracing::error!(node = %name, error = %e, "cluster: cannot share a revocation");
                }
            });
        }
    }

    /// The current worker join token.
    pub fn worker_token(&self) -> Result<JoinToken, PkiError> {
        JoinToken::load_or_create(&self.token_path, &self.ca.digest())
    }

    /// Replaces the worker join token; the old one is refused from now on. Nodes that joined
    /// keep their certificates.
    pub fn rotate_worker_token(&self) -> Result<JoinToken, PkiError> {
        JoinToken::rotate(&self.token_path, &self.ca.digest())
    }

    /// The current manager join token: it admits administrators (`orchctl login`).
    pub fn manager_token(&self) -> Result<JoinToken, PkiError> {
        JoinToken::load_or_create(&self.manager_token_path, &self.ca.digest())
    }

    /// Replaces the manager join token; the old one is refused from now on.
    pub fn rotate_manager_token(&self) -> Result<JoinToken, PkiError> {
        JoinToken::rotate(&self.manager_token_path, &self.ca.digest())
    }

    /// Nodes that joined since this manager started.
    pub fn joined(&self) -> Vec<String> {
        self.joined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The manager's own credentials (`CN=manager`, valid a year from this start): it serves
    /// with them and dials agents with them.
    pub fn own_credentials(&self) -> Result<Credentials, PkiError> {
        if let Some(c) = self.own.get() {
            return Ok(c.clone());
        }
        let (cert, key) = self.ca.issue(
            "manager",
            &[MANAGER_NAME],
            Duration::from_secs(365 * 86_400),
        )?;
        let c = Credentials {
            ca_pem: self.ca.cert_pem().to_string(),
            cert_pem: cert,
            key_pem: key,
        };
        Ok(self.own.get_or_init(|| c).clone())
    }

    /// A certificate and key for etcd member `name` (`CN=etcd:NAME`), valid a year, naming
    /// `ips` (and `localhost`): it serves etcd's client and peer ports, and authenticates the
    /// member to its peers and orchd to the members.
    pub fn etcd_credentials(
        &self,
        name: &str,
        ips: &[std::net::IpAddr],
    ) -> Result<Credentials, PkiError> {
        let (cert, key) = self.ca.issue_for(
            &format!("etcd:{name}"),
            &["localhost"],
            ips,
            Duration::from_secs(365 * 86_400),
        )?;
        Ok(Credentials {
            ca_pem: self.ca.cert_pem().to_string(),
            cert_pem: cert,
            key_pem: key,
        })
    }

    /// The hex SHA-256 of the cluster CA certificate (what join tokens pin).
    pub fn ca_digest(&self) -> String {
        self.ca.digest()
    }

    /// An administrator's client certificate and key (`CN=admin:NAME`), valid for `valid`.
    pub fn admin_credentials(&self, name: &str, valid: Duration) -> Result<Credentials, PkiError> {
        let (cert, key) = self.ca.issue(&format!("admin:{name}"), &[], valid)?;
        Ok(Credentials {
            ca_pem: self.ca.cert_pem().to_string(),
            cert_pem: cert,
            key_pem: key,
        })
    }
}

impl auth::Revocations for Manager {
    fn is_revoked(&self, name: &str) -> bool {
        Manager::is_revoked(self, name)
    }
}

async fn put_revoked(store: &dyn Store, name: &str) -> Result<(), StoreError> {
    match store
        .txn(vec![Op::Create {
            key: format!("{REVOKED_PREFIX}{name}"),
            value: Vec::new(),
        }])
        .await
    {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn delete_revoked(store: &dyn Store, name: &str) -> Result<(), StoreError> {
    let key = format!("{REVOKED_PREFIX}{name}");
    let Some(kv) = store.get(&key).await? else {
        return Ok(());
    };
    match store
        .txn(vec![Op::Delete {
            key,
            expected: Some(kv.mod_revision),
        }])
        .await
    {
        Ok(_) | Err(StoreError::NotFound { .. }) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

struct ClusterService {
    manager: Arc<Manager>,
}

impl ClusterService {
    /// Checks `offered` against the current worker or manager token.
    fn check_token(&self, offered: &str, manager_token: bool) -> Result<(), Status> {
        let offered = JoinToken::parse(offered).map_err(Status::invalid_argument)?;
        let m = &self.manager;
        let current = if manager_token {
            m.manager_token()
        } else {
            m.worker_token()
        }
        .map_err(|e| Status::internal(e.to_string()))?;
        if offered.ca_digest != m.ca.digest() {
            return Err(Status::permission_denied(
                "the join token is for another cluster (its CA digest differs from this manager's)",
            ));
        }
        if !current.admits(&offered) {
            return Err(Status::permission_denied(if manager_token {
                "invalid manager token (administrators and managers join with the manager token, `orchd token --manager`; it may have been rotated)"
            } else {
                "invalid join token (it may have been rotated: ask a manager for the current one)"
            }));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let r = req.into_inner();
        self.check_token(&r.token, r.admin)?;
        let m = &self.manager;
        orch_core::model::validate::dns1123_label(&r.node)
            .map_err(|e| Status::invalid_argument(format!("node name {:?}: {e}", r.node)))?;
        if r.admin {
            let issued =
                m.ca.sign_csr(
                    &r.csr_pem,
                    &format!("admin:{}", r.node),
                    &[],
                    m.cert_validity,
                )
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            tracing::info!(admin = %r.node, "cluster: administrator logged in");
            return Ok(Response::new(pb::JoinResponse {
                certificate_pem: issued.certificate_pem,
                ca_pem: m.ca.cert_pem().to_string(),
                not_after: issued.not_after,
                managers: m.manager_addresses().await,
            }));
        }
        let dns = super::node::node_dns_name(&r.node);
        let issued =
            m.ca.sign_csr(
                &r.csr_pem,
                &auth::node_cn(&r.node),
                &[&dns],
                m.cert_validity,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        m.set_revoked(&r.node, false);
        m.joined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r.node.clone());
        tracing::info!(node = %r.node, "cluster: node joined");
        Ok(Response::new(pb::JoinResponse {
            certificate_pem: issued.certificate_pem,
            ca_pem: m.ca.cert_pem().to_string(),
            not_after: issued.not_after,
            managers: m.manager_addresses().await,
        }))
    }

    async fn renew(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let (cn, dns) = match auth::identity(&req)? {
            Identity::Node(n) if self.manager.is_revoked(&n) => {
                return Err(auth::removed(&n));
            }
            Identity::Node(n) => (auth::node_cn(&n), vec![super::node::node_dns_name(&n)]),
            Identity::Admin(n) if n == "manager" => (n, vec![MANAGER_NAME.to_string()]),
            Identity::Admin(n) => (format!("admin:{n}"), Vec::new()),
        };
        let dns: Vec<&str> = dns.iter().map(String::as_str).collect();
        let m = &self.manager;
        let issued =
            m.ca.sign_csr(&req.get_ref().csr_pem, &cn, &dns, m.cert_validity)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::JoinResponse {
            certificate_pem: issued.certificate_pem,
            ca_pem: m.ca.cert_pem().to_string(),
            not_after: issued.not_after,
            managers: m.manager_addresses().await,
        }))
    }

    async fn join_manager(
        &self,
        req: Request<pb::JoinManagerRequest>,
    ) -> Result<Response<pb::JoinManagerResponse>, Status> {
        let r = req.into_inner();
        self.check_token(&r.token, true)?;
        let m = &self.manager;
        orch_core::model::validate::dns1123_label(&r.name)
            .map_err(|e| Status::invalid_argument(format!("manager name {:?}: {e}", r.name)))?;
        if r.address
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(Status::invalid_argument(format!(
                "manager address {:?}: expected HOST:PORT (its --listen)",
                r.address
            )));
        }
        let Some(admission) = m.admission.get() else {
            return Err(Status::failed_precondition(
                "this manager admits no other managers: its store is not shared (start the first manager with --init-cluster, or every manager with --store etcd://...)",
            ));
        };
        if let Some(store) = m.shared.get() {
            let records = crate::managers::records(&**store)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            if let Some(same) = records.iter().find(|x| x.name == r.name) {
                return Err(Status::already_exists(format!(
                    "a manager named {} is running (at {}); give the new one another --name, or remove that one first (orchctl manager rm {})",
                    r.name, same.address, r.name
                )));
            }
        }
        let joining = JoiningManager {
            name: r.name.clone(),
            address: r.address.clone(),
            etcd_peer_url: (!r.etcd_peer_url.is_empty()).then_some(r.etcd_peer_url),
        };
        let grant = admission
            .admit(&joining)
            .await
            .map_err(Status::failed_precondition)?;
        let key_path = m.dir.join("ca.key");
        let ca_key_pem = std::fs::read_to_string(&key_path)
            .map_err(|e| Status::internal(format!("{}: {e}", key_path.display())))?;
        let token = |t: Result<JoinToken, PkiError>| {
            t.map(|t| t.to_string())
                .map_err(|e| Status::internal(e.to_string()))
        };
        tracing::info!(manager = %r.name, address = %r.address, etcd_member = ?grant.etcd_member.as_ref().map(|(id, _)| format!("{id:x}")), "cluster: manager joined");
        let (etcd_member_id, etcd_initial_cluster) = grant.etcd_member.unwrap_or_default();
        Ok(Response::new(pb::JoinManagerResponse {
            ca_pem: m.ca.cert_pem().to_string(),
            ca_key_pem,
            worker_token: token(m.worker_token())?,
            manager_token: token(m.manager_token())?,
            secret_keys: grant.secret_keys,
            etcd_endpoints: grant.etcd_endpoints,
            store_prefix: grant.store_prefix,
            etcd_tls: grant.etcd_tls,
            etcd_member_id,
            etcd_initial_cluster,
            managers: m.manager_addresses().await,
        }))
    }
}

/// Serves the cluster protocol on `listener` until `cancel`: the store to certified callers,
/// joining to token holders, and with `api` the administrators' API. The manager presents a certificate for [`MANAGER_NAME`] with the
/// CA after it, so a joining agent can check the CA against its token's digest.
pub async fn serve(
    listener: tokio::net::TcpListener,
    manager: Arc<Manager>,
    store: Arc<dyn Store>,
    api: Option<Arc<crate::handler::Backend>>,
    limits: Limits,
    cancel: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (cert, key) = manager.ca.issue(
        "manager",
        &[MANAGER_NAME],
        Duration::from_secs(365 * 86_400),
    )?;
    let chain = format!("{cert}{}", manager.ca.cert_pem());
    let tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(chain, key))
        .client_ca_root(Certificate::from_pem(manager.ca.cert_pem()))
        .client_auth_optional(true);
    let cluster = pb::cluster_server::ClusterServer::new(ClusterService {
        manager: manager.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Server::builder()
        .tls_config(tls)?
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .layer(limits.layer())
        .add_service(
            StoreService::new(store)
                .revocations(manager.clone())
                .server(),
        )
        .add_service(cluster)
        .add_optional_service(api.map(|b| super::api::ApiService::new(b).server()))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await?;
    Ok(())
}

/// Records the certificates a server presents, trusting none of them: used once, to read the
/// CA a manager sends so it can be checked against a join token's digest.
#[derive(Debug)]
struct Capture {
    chain: Mutex<Vec<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.to_vec()];
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = chain;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Errors of joining and connecting.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The manager could not be reached.
    #[error("cannot reach the manager at {addr}: {message}")]
    Unreachable {
        /// Its address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The manager's CA does not match the token: the wrong cluster, or someone in between.
    #[error("the manager at {addr} presents CA {found}, but the join token pins {expected}: refusing to trust it")]
    WrongCa {
        /// Its address.
        addr: String,
        /// The digest in the token.
        expected: String,
        /// The digest of what was presented.
        found: String,
    },
    /// The manager refused.
    #[error("the manager at {addr} refused to {what}: {message}")]
    Refused {
        /// Its address.
        addr: String,
        /// Join or renew.
        what: &'static str,
        /// Its reason.
        message: String,
    },
    /// A key, certificate or file problem.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the CA a manager presents and checks it against `digest`; the PEM on success.
pub async fn fetch_ca(addr: &str, digest: &str) -> Result<String, JoinError> {
    let unreachable = |m: String| JoinError::Unreachable {
        addr: addr.into(),
        message: m,
    };
    let capture = Arc::new(Capture {
        chain: Mutex::new(Vec::new()),
        provider: provider(),
    });
    let config = rustls::ClientConfig::builder_with_provider(capture.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| unreachable("no answer within 10 s".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(MANAGER_NAME)
        .map_err(|e| unreachable(e.to_string()))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| unreachable(format!("TLS handshake: {e}")))?;
    let chain = capture
        .chain
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let ca = chain.last().cloned().unwrap_or_default();
    let found = pki::digest(&ca);
    if found != digest {
        return Err(JoinError::WrongCa {
            addr: addr.into(),
            expected: digest.into(),
            found,
        });
    }
    let pem = x509_pem(&ca);
    Ok(pem)
}

fn x509_pem(der: &[u8]) -> String {
    use base64_encode as b64;
    let body = b64(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint, JoinError> {
    Channel::from_shared(format!("https://{addr}"))
        .map_err(|e| JoinError::Unreachable {
            addr: addr.into(),
            message: e.to_string(),
        })
        .map(|e| {
            // Pings every 500 ms, answered within a second: a manager that died with its
            // host or was cut off is noticed within 1.5 s (its watches end, calls fail), and
            // its callers fail over to another manager well within a new leader's node grace.
            e.connect_timeout(Duration::from_secs(2))
                .http2_keep_alive_interval(Duration::from_millis(500))
                .keep_alive_timeout(Duration::from_secs(1))
                .keep_alive_while_idle(true)
        })
}

/// A channel to the manager at `addr` with these credentials, verifying the manager against
/// the cluster CA. Lazy: it connects (and reconnects) when used.
pub fn channel(addr: &str, creds: &Credentials) -> Result<Channel, JoinError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .identity(TlsIdentity::from_pem(&creds.cert_pem, &creds.key_pem))
        .domain_name(MANAGER_NAME);
    let ep = endpoint(addr)?
        .tls_config(tls)
        .map_err(|e| JoinError::Unreachable {
            addr: addr.into(),
            message: e.to_string(),
        })?;
    Ok(ep.connect_lazy())
}

/// Joins the cluster whose manager listens at `addr` as node `node` with `token`: checks the
/// manager's CA against the token, sends a CSR for a new key, and returns the credentials.
pub async fn join(addr: &str, token: &str, node: &str) -> Result<Credentials, JoinError> {
    Ok(join_as(addr, token, node, false).await?.credentials)
}

/// Logs administrator `name` in with the manager token: credentials for `CN=admin:NAME`.
pub async fn login(addr: &str, token: &str, name: &str) -> Result<Credentials, JoinError> {
    Ok(join_as(addr, token, name, true).await?.credentials)
}

/// What joining gives: the credentials and every manager's address (the one dialled first).
#[derive(Clone, Debug)]
pub struct Joined {
    /// The credentials.
    pub credentials: Credentials,
    /// The managers' cluster addresses, `addr` first.
    pub managers: Vec<String>,
}

/// [`join`] (`admin` false) or [`login`] (`admin` true), with the managers' addresses.
pub async fn join_as(
    addr: &str,
    token: &str,
    node: &str,
    admin: bool,
) -> Result<Joined, JoinError> {
    let token = JoinToken::parse(token).map_err(|m| JoinError::Pki(PkiError::Invalid(m)))?;
    let ch = token_channel(addr, &token).await?;
    let ca_pem = ch.1;
    let ch = ch.0;
    let (key_pem, csr_pem) = pki::new_key_and_csr(&auth::node_cn(node))?;
    let r = pb::cluster_client::ClusterClient::new(ch)
        .join(pb::JoinRequest {
            token: token.to_string(),
            node: node.into(),
            csr_pem,
            admin,
        })
        .await
        .map_err(|s| JoinError::Refused {
            addr: addr.into(),
            what: "join",
            message: s.message().to_string(),
        })?
        .into_inner();
    Ok(Joined {
        credentials: Credentials {
            ca_pem,
            cert_pem: r.certificate_pem,
            key_pem,
        },
        managers: with_first(addr, r.managers),
    })
}

/// `first`, then the others of `managers`.
fn with_first(first: &str, managers: Vec<String>) -> Vec<String> {
    let mut out = vec![first.to_string()];
    out.extend(managers.into_iter().filter(|m| m != first));
    out
}

/// A channel to `addr` that trusts the CA the manager presents once it matches the token's
/// digest (no client certificate), and that CA.
async fn token_channel(addr: &str, token: &JoinToken) -> Result<(Channel, String), JoinError> {
    let ca_pem = fetch_ca(addr, &token.ca_digest).await?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(MANAGER_NAME);
    let unreachable = |e: tonic::transport::Error| JoinError::Unreachable {
        addr: addr.into(),
        message: e.to_string(),
    };
    let ch = endpoint(addr)?
        .tls_config(tls)
        .map_err(unreachable)?
        .connect()
        .await
        .map_err(unreachable)?;
    Ok((ch, ca_pem))
}

/// Joins the cluster at `addr` as another manager with the manager token: returns the CA
/// and its key, the tokens, the managers and the store to use (with an etcd member added
/// for `joining.etcd_peer_url`).
pub async fn join_manager(
    addr: &str,
    token: &str,
    joining: &JoiningManager,
) -> Result<ManagerGrant, JoinError> {
    let parsed = JoinToken::parse(token).map_err(|m| JoinError::Pki(PkiError::Invalid(m)))?;
    let (ch, ca_pem) = token_channel(addr, &parsed).await?;
    let r = pb::cluster_client::ClusterClient::new(ch)
        .join_manager(pb::JoinManagerRequest {
            token: parsed.to_string(),
            name: joining.name.clone(),
            address: joining.address.clone(),
            etcd_peer_url: joining.etcd_peer_url.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| JoinError::Refused {
            addr: addr.into(),
            what: "admit this manager",
            message: s.message().to_string(),
        })?
        .into_inner();
    if pki::pem_to_der(&r.ca_pem)? != pki::pem_to_der(&ca_pem)? {
        return Err(JoinError::Refused {
            addr: addr.into(),
            what: "admit this manager",
            message: "it granted a CA other than the one it presents".into(),
        });
    }
    Ok(ManagerGrant {
        ca_pem: r.ca_pem,
        ca_key_pem: r.ca_key_pem,
        worker_token: r.worker_token,
        manager_token: r.manager_token,
        managers: with_first(addr, r.managers),
        store: StoreGrant {
            secret_keys: r.secret_keys,
            etcd_endpoints: r.etcd_endpoints,
            store_prefix: r.store_prefix,
            etcd_tls: r.etcd_tls,
            etcd_member: (r.etcd_member_id != 0)
                .then_some((r.etcd_member_id, r.etcd_initial_cluster)),
        },
    })
}

/// Renews `creds` with the first of `addrs` that answers (any manager renews).
pub async fn renew_any(addrs: &[String], creds: &Credentials) -> Result<Credentials, JoinError> {
    let mut last = None;
    for addr in addrs {
        match renew(addr, creds).await {
            Ok(c) => return Ok(c),
            Err(e @ JoinError::Refused { .. }) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| JoinError::Unreachable {
        addr: String::new(),
        message: "no manager address known".into(),
    }))
}

/// Renews `creds` (a new key, the same identity) with the manager at `addr`.
pub async fn renew(addr: &str, creds: &Credentials) -> Result<Credentials, JoinError> {
    let cn = {
        let der = pki::pem_to_der(&creds.cert_pem)?;
        auth::common_name(&der).unwrap_or_default()
    };
    let (key_pem, csr_pem) = pki::new_key_and_csr(&cn)?;
    let r = pb::cluster_client::ClusterClient::new(channel(addr, creds)?)
        .renew(pb::JoinRequest {
            token: String::new(),
            node: String::new(),
            csr_pem,
            admin: false,
        })
        .await
        .map_err(|s| JoinError::Refused {
            addr: addr.into(),
            what: "renew the certificate",
            message: s.message().to_string(),
        })?
        .into_inner();
    Ok(Credentials {
        ca_pem: r.ca_pem,
        cert_pem: r.certificate_pem,
        key_pem,
    })
}

/// A [`RemoteStore`] on the manager at `addr` with `creds`.
pub fn remote_store(addr: &str, creds: &Credentials) -> Result<RemoteStore, JoinError> {
    remote_store_any(&[addr.to_string()], creds)
}

/// A [`RemoteStore`] on the managers at `addrs` (tried in this order) with `creds`.
pub fn remote_store_any(addrs: &[String], creds: &Credentials) -> Result<RemoteStore, JoinError> {
    RemoteStore::with_dialer(addrs, dialer(creds)).map_err(|message| JoinError::Unreachable {
        addr: addrs.join(","),
        message,
    })
}

/// Dials managers with `creds` (for [`RemoteStore::with_dialer`] and
/// [`RemoteStore::set_dialer`]).
pub fn dialer(creds: &Credentials) -> Dialer {
    let creds = creds.clone();
    Arc::new(move |addr: &str| channel(addr, &creds).map_err(|e| e.to_string()))
}

/// Binds the cluster port (`HOST:PORT`).
pub async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
