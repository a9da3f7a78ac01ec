//! Several managers (`orchd manager --init-cluster`, `--join ADDR --token T`, `--store
//! etcd://`): where the shared state is, the etcd member orch runs, the election, the
//! manager's record, and what other managers and `orchctl get managers` are told.
//!
//! - `--init-cluster`: this manager runs the first member of a new etcd cluster (crate::etcd).
//! - `--join ADDR --token MANAGER_TOKEN`: `Cluster/JoinManager` at ADDR gives the cluster CA
//!   with its key, the tokens, the secret keyring and the store; with orch-run etcd the
//!   serving manager adds a member for this one, which starts with
//!   `--initial-cluster-state existing`. Done once: what it gave is kept in
//!   DATA_DIR/cluster (`store.json` says which store), so a restart needs no manager up.
//! - With an etcd store (orch-run or `--store etcd://`) every manager campaigns for
//!   `/cluster/leader` (an `orch_store::etcd::Election` handed to the engine) and registers its
//!   `ManagerRecord` on the election's lease; the leader moves etcd's raft leadership off its
//!   own member, so one host's death never costs an etcd election and a lease at once.
//! - The embedded store: one manager, no election (it always leads).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use orch_api::grpc::cluster::Manager;
use orch_api::managers::ManagerRecord;
use orch_core::store::Store;
use serde::{Deserialize, Serialize};

use crate::store::StoreSpec;

/// The manager flags of `orchd manager` and `orchd server`.
#[derive(Args, Clone, Debug)]
pub struct HaArgs {
    /// This manager's name among the managers (a DNS-1123 label; default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Start a new cluster whose state lives in an etcd member this orchd runs and supervises
    /// (Debian's etcd; data in DATA_DIR/etcd, log DATA_DIR/etcd.log), on --listen's IP at
    /// --etcd-client-port and --etcd-peer-port, with TLS from the cluster CA. Other managers
    /// join it with --join.
    #[arg(long, conflicts_with = "join")]
    init_cluster: bool,
    /// Join the cluster of the manager at ADDR (its --listen) as another manager, with
    /// --token (the manager token, `orchd token --manager` there). Needed once: a restart
    /// uses what joining gave (in DATA_DIR/cluster).
    #[arg(long, value_name = "ADDR")]
    join: Option<String>,
    /// The manager token for --join.
    #[arg(long, requires = "join")]
    token: Option<String>,
    /// The client port of the etcd member this manager runs.
    #[arg(long, default_value_t = 2379)]
    etcd_client_port: u16,
    /// The peer port of the etcd member this manager runs.
    #[arg(long, default_value_t = 2380)]
    etcd_peer_port: u16,
    /// The leader lease: a leader that cannot renew it stops its control plane before it
    /// ends, and a standby takes over once it has (etcd grants at least its minimum: 1 s
    /// with the members orch runs, 2 s with a default etcd).
    #[arg(long, value_parser = crate::server::parse_span, default_value = "1s")]
    leader_lease: Duration,
}

/// What `store.json` in DATA_DIR/cluster says: the etcd store this manager uses, and the
/// member it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClusterStore {
    /// etcd client URLs (without a member of its own; with one, its own URL is used).
    #[serde(default)]
    endpoints: Vec<String>,
    /// The key prefix.
    prefix: String,
    /// Whether the endpoints need TLS from the cluster CA (the etcd orch runs).
    tls: bool,
    /// The member this manager runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    member: Option<OwnMember>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnMember {
    /// etcd's id for it (0 until known: the first member learns it once etcd runs).
    #[serde(default)]
    id: u64,
    ip: IpAddr,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    state: String,
}

impl ClusterStore {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("cluster").join("store.json")
    }

    fn load(data_dir: &Path) -> anyhow::Result<Option<ClusterStore>> {
        let path = ClusterStore::path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{}: not a cluster store description", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = ClusterStore::path(data_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// This machine's host name as a manager name.
fn default_name() -> String {
    crate::host::default_node_name()
}

/// The IP of `--listen HOST:PORT`, which must name one (etcd advertises it to its peers,
/// agents reach the manager there).
fn listen_ip(listen: &str, why: &str) -> anyhow::Result<IpAddr> {
    let addr: std::net::SocketAddr = listen.parse().with_context(|| {
        format!(
            "--listen {listen:?}: {why} needs IP:PORT (this host's address, as others reach it)"
        )
    })?;
    anyhow::ensure!(
        !addr.ip().is_unspecified(),
        "--listen {listen}: {why} needs this host's own address, not {} (other managers and agents reach this one there)",
        addr.ip()
    );
    Ok(addr.ip())
}

/// What [`prepare`] found: the store, the cluster identity, and the parts that run beside the
/// engine.
pub struct Prepared {
    /// The store (secrets sealed).
    pub store: Arc<dyn Store>,
    /// Its description for `orchctl info`.
    pub store_name: String,
    /// This manager's name.
    pub name: String,
    /// The cluster identity (with --listen).
    pub manager: Option<Arc<Manager>>,
    lease: Duration,
    #[cfg(feature = "etcd")]
    etcd: Option<imp::EtcdParts>,
}

impl Prepared {
    /// The elector for the engine: an etcd election when the store is etcd.
    pub fn elector(&mut self) -> anyhow::Result<Option<Arc<dyn orch_core::leader::Elector>>> {
        #[cfg(feature = "etcd")]
        if let Some(e) = &mut self.etcd {
            return e.elector(&self.name, self.lease).map(Some);
        }
        let _ = self.lease;
        Ok(None)
    }
}

/// The parts of a manager that run beside its engine, stopped by [`Running::shutdown`].
pub struct Running {
    /// What the handler asks about the managers.
    pub access: Arc<dyn orch_api::managers::ManagerAccess>,
    #[cfg(feature = "etcd")]
    etcd: Option<imp::RunningEtcd>,
}

impl Running {
    /// After the engine has shut down (and resigned): gives up the lease (this manager's
    /// record goes at once) and stops the etcd member.
    pub async fn shutdown(self) {
        #[cfg(feature = "etcd")]
        if let Some(e) = self.etcd {
            e.shutdown().await;
        }
    }
}

/// The record this manager registers.
fn record(
    name: &str,
    address: &str,
    etcd: Option<orch_api::managers::EtcdMemberRef>,
) -> ManagerRecord {
    ManagerRecord {
        name: name.to_string(),
        address: address.to_string(),
        etcd,
        started: orch_core::model::quantity::Timestamp::now().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Checks the manager flags, joins a cluster (`--join`, the first time), starts the etcd
/// member this manager runs, and opens the store.
pub async fn prepare(
    args: &HaArgs,
    spec: &StoreSpec,
    store_given: bool,
    listen: Option<&str>,
    data_dir: &Path,
    cert_validity: Duration,
) -> anyhow::Result<Prepared> {
    let name = args.name.clone().unwrap_or_else(default_name);
    orch_core::model::validate::dns1123_label(&name)
        .map_err(|e| anyhow::anyhow!("--name: invalid value {name:?}: {e}"))?;
    if args.leader_lease.is_zero() {
        anyhow::bail!("--leader-lease: must be at least 1s (etcd counts leases in whole seconds)");
    }
    let wants = args.init_cluster || args.join.is_some();
    if wants && listen.is_none() {
        anyhow::bail!(
            "--{}: --listen IP:PORT is needed (other managers and agents reach this manager there)",
            if args.init_cluster {
                "init-cluster"
            } else {
                "join"
            }
        );
    }
    if args.init_cluster && store_given {
        anyhow::bail!(
            "--init-cluster runs an etcd member of its own: drop --store (or drop --init-cluster to use the etcd --store names)"
        );
    }
    if args.join.is_some() && matches!(spec, StoreSpec::Memory) {
        anyhow::bail!(
            "--join: managers share their state in etcd; --store memory cannot be shared"
        );
    }
    let manager = match listen {
        Some(_) => {
            let cluster_dir = data_dir.join("cluster");
            if let (Some(join), None) = (&args.join, ClusterStore::load(data_dir)?) {
                join_cluster(
                    args,
                    &name,
                    join,
                    spec,
                    listen.unwrap_or_default(),
                    data_dir,
                )
                .await?;
            }
            Some(Arc::new(
                Manager::open(&cluster_dir, cert_validity)
                    .with_context(|| format!("cluster CA in {}", cluster_dir.display()))?,
            ))
        }
        None => None,
    };
    if args.init_cluster && ClusterStore::load(data_dir)?.is_none() {
        let ip = listen_ip(listen.unwrap_or_default(), "--init-cluster")?;
        let peer = crate::etcd::MemberConfig {
            name: name.clone(),
            ip,
            client_port: args.etcd_client_port,
            peer_port: args.etcd_peer_port,
            data_dir: data_dir.to_path_buf(),
            initial_cluster: String::new(),
            state: String::new(),
            cluster_token: String::new(),
        }
        .peer_url();
        ClusterStore {
            endpoints: Vec::new(),
            prefix: "/orch".into(),
            tls: true,
            member: Some(OwnMember {
                id: 0,
                ip,
                client_port: args.etcd_client_port,
                peer_port: args.etcd_peer_port,
                initial_cluster: format!("{name}={peer}"),
                state: "new".into(),
            }),
        }
        .save(data_dir)?;
    }
    let state = ClusterStore::load(data_dir)?;
    open(args, name, spec, state, manager, data_dir).await
}

#[cfg(not(feature = "etcd"))]
async fn join_cluster(
    _: &HaArgs,
    _: &str,
    _: &str,
    _: &StoreSpec,
    _: &str,
    _: &Path,
) -> anyhow::Result<()> {
    anyhow::bail!(no_etcd("--join"))
}

#[cfg(not(feature = "etcd"))]
fn no_etcd(flag: &str) -> String {
    format!(
        "{flag}: this orchd was built without etcd support; several managers share their state in etcd: rebuild with `cargo build --release --features orchd/etcd` (needs protoc: apt-get install protobuf-compiler)"
    )
}

#[cfg(not(feature = "etcd"))]
async fn open(
    args: &HaArgs,
    name: String,
    spec: &StoreSpec,
    state: Option<ClusterStore>,
    manager: Option<Arc<Manager>>,
    data_dir: &Path,
) -> anyhow::Result<Prepared> {
    if args.init_cluster || state.is_some() {
        anyhow::bail!(no_etcd("--init-cluster"));
    }
    let (store, store_name) = crate::store::open(spec, data_dir).await?;
    Ok(Prepared {
        store,
        store_name,
        name,
        manager,
        lease: args.leader_lease,
    })
}

/// Starts what runs beside the engine: the record, revocations shared through the store,
/// admitting other managers, moving etcd leadership off this manager's member.
pub fn run(
    prepared: Prepared,
    engine: &orch_core::engine::Engine,
    listen: Option<String>,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Running> {
    #[cfg(feature = "etcd")]
    if let Some(parts) = prepared.etcd {
        return imp::run(
            parts,
            &prepared.name,
            prepared.store.clone(),
            prepared.manager,
            engine,
            listen,
            cancel,
        );
    }
    let _ = (engine, cancel);
    Ok(Running {
        access: Arc::new(Solo {
            own: record(&prepared.name, listen.as_deref().unwrap_or_default(), None),
        }),
        #[cfg(feature = "etcd")]
        etcd: None,
    })
}

/// The one manager of an embedded (or in-memory) store: it always leads, there is no etcd.
struct Solo {
    own: ManagerRecord,
}

#[async_trait::async_trait]
impl orch_api::managers::ManagerAccess for Solo {
    fn own(&self) -> ManagerRecord {
        self.own.clone()
    }
    async fn leader(&self) -> Option<String> {
        Some(self.own.name.clone())
    }
    async fn etcd(&self) -> Result<Option<orch_api::managers::EtcdView>, String> {
        Ok(None)
    }
    async fn remove_etcd_member(&self, _: u64) -> Result<(), String> {
        Err("this manager's store is not an etcd orch runs".into())
    }
}

#[cfg(feature = "etcd")]
async fn join_cluster(
    args: &HaArgs,
    name: &str,
    join: &str,
    spec: &StoreSpec,
    listen: &str,
    data_dir: &Path,
) -> anyhow::Result<()> {
    imp::join_cluster(args, name, join, spec, listen, data_dir).await
}

#[cfg(feature = "etcd")]
async fn open(
    args: &HaArgs,
    name: String,
    spec: &StoreSpec,
    state: Option<ClusterStore>,
    manager: Option<Arc<Manager>>,
    data_dir: &Path,
) -> anyhow::Result<Prepared> {
    imp::open(args, name, spec, state, manager, data_dir).await
}

#[cfg(feature = "etcd")]
mod imp {
    use super::*;
    use orch_api::grpc::cluster::{self, JoiningManager, ManagerAdmission, StoreGrant};
    use orch_api::managers::{EtcdMember, EtcdMemberRef, EtcdView, ManagerAccess};
    use orch_core::leader::{Elector, Leadership};
    use orch_store::etcd::{Election, ElectionConfig, EtcdAdmin, EtcdStore, EtcdTls};

    /// The etcd side of a manager: the store, its admin, the member it runs.
    pub(super) struct EtcdParts {
        store: EtcdStore,
        admin: Arc<EtcdAdmin>,
        /// The member this manager runs (orch-run etcd).
        member: Option<(crate::etcd::Supervised, u64)>,
        election: Option<Arc<Election>>,
        /// `--store etcd://` endpoints (an etcd orch does not run).
        external: Option<Vec<String>>,
        prefix: String,
        data_dir: PathBuf,
    }

    impl EtcdParts {
        pub(super) fn elector(
            &mut self,
            name: &str,
            lease: Duration,
        ) -> anyhow::Result<Arc<dyn Elector>> {
            let election = Arc::new(
                Election::new(
                    &self.store,
                    name,
                    ElectionConfig {
                        key: orch_api::managers::LEADER_KEY.into(),
                        ttl: lease,
                    },
                )
                .map_err(|e| anyhow::anyhow!("--leader-lease: {e}"))?,
            );
            self.election = Some(election.clone());
            Ok(election)
        }
    }

    pub(super) struct RunningEtcd {
        election: Option<Arc<Election>>,
        member: Option<crate::etcd::Supervised>,
    }

    impl RunningEtcd {
        pub(super) async fn shutdown(self) {
            if let Some(e) = &self.election {
                tokio::time::timeout(Duration::from_secs(3), e.close())
                    .await
                    .ok();
            }
            if let Some(m) = self.member {
                tokio::task::spawn_blocking(move || m.stop()).await.ok();
            }
        }
    }

    /// `--join` the first time: asks the manager at `join` to admit this one, and keeps what
    /// it grants (the CA, tokens, keyring, store) in DATA_DIR.
    pub(super) async fn join_cluster(
        args: &HaArgs,
        name: &str,
        join: &str,
        spec: &StoreSpec,
        listen: &str,
        data_dir: &Path,
    ) -> anyhow::Result<()> {
        let token = args.token.as_deref().context(
            "--join: --token MANAGER_TOKEN is needed to join (print it with `orchd token --manager` on a manager)",
        )?;
        let ip = listen_ip(listen, "--join")?;
        let external = match spec {
            StoreSpec::Etcd { endpoints, prefix } => Some((endpoints.clone(), prefix.clone())),
            _ => None,
        };
        let member = crate::etcd::MemberConfig {
            name: name.to_string(),
            ip,
            client_port: args.etcd_client_port,
            peer_port: args.etcd_peer_port,
            data_dir: data_dir.to_path_buf(),
            initial_cluster: String::new(),
            state: String::new(),
            cluster_token: String::new(),
        };
        let keys_path = data_dir.join(crate::store::SECRET_KEYS);
        let grant = cluster::join_manager(
            join,
            token,
            &JoiningManager {
                name: name.to_string(),
                address: listen.to_string(),
                etcd_peer_url: external.is_none().then(|| member.peer_url()),
            },
        )
        .await
        .with_context(|| format!("--join {join}"))?;
        if let Ok(existing) = std::fs::read_to_string(&keys_path) {
            anyhow::ensure!(
                existing == grant.store.secret_keys,
                "{}: this data directory has a secret keyring of its own; a joining manager uses the cluster's (start from an empty data directory)",
                keys_path.display()
            );
        }
        Manager::install(&data_dir.join("cluster"), &grant)?;
        crate::etcd::write_private(&keys_path, &grant.store.secret_keys)?;
        let state = match (grant.store.etcd_member.clone(), external) {
            (Some((id, initial_cluster)), _) => ClusterStore {
                endpoints: grant.store.etcd_endpoints.clone(),
                prefix: grant.store.store_prefix.clone(),
                tls: true,
                member: Some(OwnMember {
                    id,
                    ip,
                    client_port: args.etcd_client_port,
                    peer_port: args.etcd_peer_port,
                    initial_cluster,
                    state: "existing".into(),
                }),
            },
            (None, Some((endpoints, prefix))) => {
                anyhow::ensure!(
                    prefix == grant.store.store_prefix,
                    "--store: the cluster at {join} keeps its state under prefix {}, not {prefix}",
                    grant.store.store_prefix
                );
                ClusterStore {
                    endpoints,
                    prefix,
                    tls: false,
                    member: None,
                }
            }
            (None, None) => ClusterStore {
                endpoints: grant.store.etcd_endpoints.clone(),
                prefix: grant.store.store_prefix.clone(),
                tls: grant.store.etcd_tls,
                member: None,
            },
        };
        state.save(data_dir)?;
        eprintln!(
            "orchd: joined the cluster of {join} as manager {name}{}",
            match &state.member {
                Some(m) => format!(" (etcd member {:x})", m.id),
                None => String::new(),
            }
        );
        Ok(())
    }

    /// Opens the store: the etcd member this manager runs (started here), the etcd of
    /// `--store etcd://` or of `store.json`, or the embedded or in-memory store.
    pub(super) async fn open(
        args: &HaArgs,
        name: String,
        spec: &StoreSpec,
        state: Option<ClusterStore>,
        manager: Option<Arc<Manager>>,
        data_dir: &Path,
    ) -> anyhow::Result<Prepared> {
        let plain = |endpoints: &[String], prefix: &str| {
            (endpoints.to_vec(), prefix.to_string(), None::<EtcdTls>)
        };
        let (endpoints, prefix, tls, member, external) = match (&state, spec) {
            (
                Some(ClusterStore {
                    member: Some(m),
                    prefix,
                    ..
                }),
                _,
            ) => {
                let manager = manager.as_ref().context(
                    "this manager runs an etcd member (DATA_DIR/cluster/store.json): --listen IP:PORT is needed",
                )?;
                let creds =
                    manager.etcd_credentials(&name, &[m.ip, IpAddr::from([127, 0, 0, 1])])?;
                let config = crate::etcd::MemberConfig {
                    name: name.clone(),
                    ip: m.ip,
                    client_port: m.client_port,
                    peer_port: m.peer_port,
                    data_dir: data_dir.to_path_buf(),
                    initial_cluster: m.initial_cluster.clone(),
                    state: m.state.clone(),
                    cluster_token: format!("orch-{}", &manager.ca_digest()[..16]),
                };
                let url = config.client_url();
                let supervised = crate::etcd::supervise(config, &creds)?;
                let tls = EtcdTls {
                    ca_pem: creds.ca_pem,
                    cert_pem: creds.cert_pem,
                    key_pem: creds.key_pem,
                };
                (
                    vec![url],
                    prefix.clone(),
                    Some(tls),
                    Some((supervised, m.id)),
                    None,
                )
            }
            (Some(s), _) if s.tls => {
                let manager = manager.as_ref().context(
                    "this manager uses the cluster's etcd (DATA_DIR/cluster/store.json): --listen IP:PORT is needed",
                )?;
                let creds = manager.etcd_credentials(&name, &[])?;
                let tls = EtcdTls {
                    ca_pem: creds.ca_pem,
                    cert_pem: creds.cert_pem,
                    key_pem: creds.key_pem,
                };
                (s.endpoints.clone(), s.prefix.clone(), Some(tls), None, None)
            }
            (Some(s), _) => {
                let (e, p, t) = plain(&s.endpoints, &s.prefix);
                (e.clone(), p, t, None, Some(e))
            }
            (None, StoreSpec::Etcd { endpoints, prefix }) => {
                let (e, p, t) = plain(endpoints, prefix);
                (e.clone(), p, t, None, Some(e))
            }
            (None, _) => {
                let (store, store_name) = crate::store::open(spec, data_dir).await?;
                return Ok(Prepared {
                    store,
                    store_name,
                    name,
                    manager,
                    lease: args.leader_lease,
                    etcd: None,
                });
            }
        };
        let mut etcd = connect(
            &endpoints,
            &prefix,
            tls.clone(),
            member.as_ref().map(|(s, _)| s),
        )
        .await?;
        let mut endpoints = endpoints;
        if member.is_some() {
            // Its own member first, then every other: the store keeps to members that answer
            // with a leader, so this manager serves on while its own member is down.
            let mut all = endpoints.clone();
            let members = EtcdAdmin::new(&etcd).members().await.unwrap_or_default();
            for url in members.iter().flat_map(|m| m.client_urls.iter()) {
                if !all.contains(url) {
                    all.push(url.clone());
                }
            }
            if all.len() > endpoints.len() {
                match EtcdStore::connect_with(&all, &prefix, tls).await {
                    Ok(s) => {
                        etcd = s;
                        endpoints = all;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd: using this manager's own member only")
                    }
                }
            }
        }
        let admin = Arc::new(EtcdAdmin::new(&etcd));
        let member = match member {
            Some((supervised, 0)) => {
                // The first member learns its id once etcd runs.
                let id = admin
                    .members()
                    .await
                    .context("etcd members")?
                    .into_iter()
                    .find(|m| m.name == name)
                    .map(|m| m.id)
                    .context("the etcd member this manager runs is not among the members")?;
                if let Some(mut s) = state.clone() {
                    if let Some(m) = &mut s.member {
                        m.id = id;
                    }
                    s.save(data_dir)?;
                }
                Some((supervised, id))
            }
            other => other,
        };
        if let Some(m) = &manager {
            claim_prefix(&etcd, m).await?;
        }
        let store_name = format!(
            "etcd:{} (prefix {prefix}{})",
            endpoints.join(","),
            if member.is_some() {
                ", member run by this manager"
            } else {
                ""
            }
        );
        let (store, store_name) =
            crate::store::seal(Arc::new(etcd.clone()), &store_name, data_dir).await?;
        Ok(Prepared {
            store,
            store_name,
            name,
            manager,
            lease: args.leader_lease,
            etcd: Some(EtcdParts {
                store: etcd,
                admin,
                member,
                election: None,
                external,
                prefix,
                data_dir: data_dir.to_path_buf(),
            }),
        })
    }

    /// Connects to etcd, waiting for the member this manager runs to answer (as long as it
    /// takes: a restarted member waits for the others to form a quorum).
    async fn connect(
        endpoints: &[String],
        prefix: &str,
        tls: Option<EtcdTls>,
        member: Option<&crate::etcd::Supervised>,
    ) -> anyhow::Result<EtcdStore> {
        let Some(member) = member else {
            return EtcdStore::connect_with(endpoints, prefix, tls)
                .await
                .with_context(|| format!("cannot use etcd at {}", endpoints.join(",")));
        };
        let started = tokio::time::Instant::now();
        let mut said = started;
        loop {
            match EtcdStore::connect_with(endpoints, prefix, tls.clone()).await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    if said.elapsed() > Duration::from_secs(5) {
                        said = tokio::time::Instant::now();
                        tracing::warn!(
                            error = %e,
                            log = %member.config().log_path().display(),
                            "waiting for the etcd member this manager runs ({:?} so far)",
                            started.elapsed()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Marks the etcd prefix as this cluster's (`/cluster/ca` = the CA digest), refusing one
    /// another cluster uses: managers on one prefix must share a CA (`--join`).
    async fn claim_prefix(etcd: &EtcdStore, m: &Manager) -> anyhow::Result<()> {
        use orch_core::store::{Op, StoreError};
        const KEY: &str = "/cluster/ca";
        let digest = m.ca_digest();
        let r = etcd
            .txn(vec![Op::Create {
                key: KEY.into(),
                value: digest.clone().into_bytes(),
            }])
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(StoreError::AlreadyExists { .. }) => {
                let found = etcd
                    .get(KEY)
                    .await?
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                    .unwrap_or_default();
                anyhow::ensure!(
                    found == digest,
                    "etcd prefix {} belongs to another orch cluster (CA digest {found}, this manager's is {digest}): join it with --join ADDR --token MANAGER_TOKEN from an empty data directory, or use another prefix",
                    etcd.prefix()
                );
                Ok(())
            }
            Err(e) => Err(e).context("cannot mark the etcd prefix as this cluster's"),
        }
    }

    pub(super) fn run(
        parts: EtcdParts,
        name: &str,
        store: Arc<dyn Store>,
        manager: Option<Arc<Manager>>,
        engine: &orch_core::engine::Engine,
        listen: Option<String>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Running> {
        let EtcdParts {
            store: etcd,
            admin,
            member,
            election,
            external,
            prefix,
            data_dir,
        } = parts;
        let member_id = member.as_ref().map(|(_, id)| *id);
        let own = record(
            name,
            listen.as_deref().unwrap_or_default(),
            member.as_ref().map(|(s, id)| EtcdMemberRef {
                member_id: *id,
                peer_url: s.config().peer_url(),
                client_url: s.config().client_url(),
            }),
        );
        if let (Some(e), Some(_)) = (&election, &listen) {
            let (e, key, value) = (e.clone(), own.key(), own.encode());
            tokio::spawn(async move {
                if let Err(err) = e.register(&key, value).await {
                    tracing::warn!(error = %err, "cannot register this manager yet (it is put again with the next lease)");
                }
            });
        }
        if let Some(m) = &manager {
            m.share(store.clone(), cancel.clone());
            m.admit_managers(Arc::new(Admit {
                admin: member.is_some().then(|| admin.clone()),
                external,
                prefix,
                data_dir,
            }));
        }
        if let Some(id) = member_id {
            tokio::spawn(keep_raft_leadership_elsewhere(
                engine.leadership(),
                admin.clone(),
                id,
                cancel.clone(),
            ));
        }
        drop(etcd);
        let access = Arc::new(Access {
            own,
            leadership: engine.leadership(),
            admin: member.is_some().then(|| admin.clone()),
        });
        Ok(Running {
            access,
            etcd: Some(RunningEtcd {
                election,
                member: member.map(|(s, _)| s),
            }),
        })
    }

    /// While this manager leads, keeps etcd's raft leadership on another member: the leader
    /// host's death then costs one election (the lease), not an etcd election too.
    async fn keep_raft_leadership_elsewhere(
        mut leadership: tokio::sync::watch::Receiver<Leadership>,
        admin: Arc<EtcdAdmin>,
        own: u64,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let leading = leadership.borrow_and_update().leading;
            if leading {
                move_off(&admin, own).await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = leadership.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)), if leading => {}
            }
        }
    }

    async fn move_off(admin: &EtcdAdmin, own: u64) {
        match admin.leader_id().await {
            Ok(Some(leader)) if leader == own => {}
            _ => return,
        }
        let healthy: Vec<u64> = admin
            .health()
            .await
            .into_iter()
            .filter(|s| s.healthy() && s.member_id != own)
            .map(|s| s.member_id)
            .collect();
        let Some(&target) = healthy.first() else {
            return;
        };
        match admin.move_leader(target).await {
            Ok(()) => tracing::info!(
                from = %format!("{own:x}"),
                to = %format!("{target:x}"),
                "etcd: moved raft leadership off this manager's member (the leader's host dying costs one election, not two)"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "etcd: cannot move raft leadership off this manager's member")
            }
        }
    }

    /// What `orchctl get managers` and `manager rm` are answered from.
    struct Access {
        own: ManagerRecord,
        leadership: tokio::sync::watch::Receiver<Leadership>,
        /// The etcd orch runs (none for `--store etcd://`).
        admin: Option<Arc<EtcdAdmin>>,
    }

    #[async_trait::async_trait]
    impl ManagerAccess for Access {
        fn own(&self) -> ManagerRecord {
            self.own.clone()
        }

        async fn leader(&self) -> Option<String> {
            self.leadership.borrow().leader.clone()
        }

        async fn etcd(&self) -> Result<Option<EtcdView>, String> {
            let Some(admin) = &self.admin else {
                return Ok(None);
            };
            let members = admin.members().await.map_err(|e| e.to_string())?;
            let health = admin
                .health()
                .await
                .into_iter()
                .map(|s| {
                    let text = if s.healthy() {
                        "healthy".to_string()
                    } else if let Some(e) = &s.error {
                        format!("unhealthy: {e}")
                    } else if s.leader_id.is_none() {
                        "unhealthy: no leader (no quorum on its side)".to_string()
                    } else {
                        format!("unhealthy: {}", s.errors.join(", "))
                    };
                    (s.member_id, text)
                })
                .collect();
            Ok(Some(EtcdView {
                members: members
                    .into_iter()
                    .map(|m| EtcdMember {
                        id: m.id,
                        name: m.name,
                        peer_urls: m.peer_urls,
                        client_urls: m.client_urls,
                        is_leader: m.is_leader,
                    })
                    .collect(),
                health,
            }))
        }

        async fn remove_etcd_member(&self, id: u64) -> Result<(), String> {
            match &self.admin {
                Some(a) => a.remove_member(id).await.map_err(|e| e.to_string()),
                None => Err("this manager's store is not an etcd orch runs".into()),
            }
        }
    }

    /// Admits managers that join through this one.
    struct Admit {
        /// The etcd orch runs (a member is added for the joining manager).
        admin: Option<Arc<EtcdAdmin>>,
        /// Or the endpoints of `--store etcd://`.
        external: Option<Vec<String>>,
        prefix: String,
        data_dir: PathBuf,
    }

    #[async_trait::async_trait]
    impl ManagerAdmission for Admit {
        async fn admit(&self, joining: &JoiningManager) -> Result<StoreGrant, String> {
            let keys_path = self.data_dir.join(crate::store::SECRET_KEYS);
            let secret_keys = std::fs::read_to_string(&keys_path)
                .map_err(|e| format!("{}: {e}", keys_path.display()))?;
            let Some(admin) = &self.admin else {
                return Ok(StoreGrant {
                    secret_keys,
                    etcd_endpoints: self.external.clone().unwrap_or_default(),
                    store_prefix: self.prefix.clone(),
                    etcd_tls: false,
                    etcd_member: None,
                });
            };
            let members = admin.members().await.map_err(|e| e.to_string())?;
            let client_urls = |members: &[orch_store::etcd::Member]| -> Vec<String> {
                members
                    .iter()
                    .flat_map(|m| m.client_urls.iter().cloned())
                    .collect()
            };
            let Some(peer) = &joining.etcd_peer_url else {
                return Ok(StoreGrant {
                    secret_keys,
                    etcd_endpoints: client_urls(&members),
                    store_prefix: self.prefix.clone(),
                    etcd_tls: true,
                    etcd_member: None,
                });
            };
            if let Some(m) = members.iter().find(|m| m.name == joining.name) {
                return Err(format!(
                    "etcd member {} ({:x}) exists already: remove it first (orchctl manager rm {})",
                    m.name, m.id, m.name
                ));
            }
            let (id, members) = match members.iter().find(|m| m.peer_urls.contains(peer)) {
                // Added for an earlier attempt of this join that did not finish: reused.
                Some(m) if m.name.is_empty() => (m.id, members.clone()),
                Some(m) => {
                    return Err(format!(
                        "etcd peer URL {peer} is member {}'s ({:x}); give the new manager another address or --etcd-peer-port",
                        m.name, m.id
                    ))
                }
                None => admin
                    .add_member(std::slice::from_ref(peer))
                    .await
                    .map_err(|e| e.to_string())?,
            };
            Ok(StoreGrant {
                secret_keys,
                etcd_endpoints: client_urls(&members),
                store_prefix: self.prefix.clone(),
                etcd_tls: true,
                etcd_member: Some((
                    id,
                    orch_store::etcd::initial_cluster(&members, id, &joining.name),
                )),
            })
        }
    }
}
