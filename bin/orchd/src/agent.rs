//! `orchd agent --join ADDR --token TOKEN`: a node of a cluster on another host. It joins
//! once (the token buys a certificate for its node name; the credentials are kept in
//! DATA_DIR/credentials, mode 0600), then runs the same node agent as `orchd server` against
//! the manager's store over mutual TLS, renewing its certificate before it expires. While
//! the manager is unreachable the replicas keep running and crashed ones are restarted.
//!
//! With several managers, the agent knows every one (joining lists them; it refreshes the
//! list from the store's `/cluster/managers/` every few seconds and keeps it in
//! DATA_DIR/credentials/managers) and its store fails over to the next when the one it uses
//! cannot be reached.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use orch_api::grpc::cluster::{self, Credentials};
use orch_core::engine::Engine;
use tokio::signal::unix::{signal, SignalKind};

use crate::host;

/// Arguments of `orchd agent`.
#[derive(Args)]
pub struct AgentArgs {
    /// The manager's cluster address (`HOST:PORT`, its `--listen`).
    #[arg(long)]
    join: String,
    /// The join token (`orchd token` on the manager); needed only for the first start.
    #[arg(long)]
    token: Option<String>,
    /// Directory for credentials, runtime state and logs (default $ORCH_DATA_DIR or
    /// ~/.local/share/orch).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    node: host::NodeArgs,
    /// The address replicas on this node are reached at.
    #[arg(long, default_value = "127.0.0.1")]
    advertise_address: String,
    /// Where this agent serves its manager (logs, exec and pull progress of its replicas),
    /// `HOST:PORT`; default the advertise address on a free port.
    #[arg(long)]
    listen: Option<String>,
    /// How often the node heartbeats.
    #[arg(long, value_parser = crate::server::parse_span, default_value = "1s")]
    heartbeat: Duration,
    #[command(flatten)]
    runtime: crate::runtime::RuntimeArgs,
    #[command(flatten)]
    discovery: crate::discovery::DiscoveryArgs,
    #[command(flatten)]
    replica_network: crate::network::ReplicaNetworkArgs,
}

/// Runs until SIGINT or SIGTERM (workloads keep running; the next start re-adopts them).
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(crate::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let (node, labels, taints) = args.node.parse()?;
    let runtime_names = args.runtime.names()?;
    let node_ip: std::net::IpAddr = args.advertise_address.parse().with_context(|| {
        format!(
            "--advertise-address {:?}: expected an IP address",
            args.advertise_address
        )
    })?;
    let networking = args
        .replica_network
        .open(&node, node_ip, &data_dir, &runtime_names)?;
    let creds_dir = data_dir.join("credentials");
    let creds = match Credentials::load(&creds_dir)? {
        Some(c) => c,
        None => {
            let token = args.token.as_deref().context(
                "--token: this node has not joined yet; give the join token (`orchd token` on the manager)",
            )?;
            let joined = cluster::join_as(&args.join, token, &node, false).await?;
            joined.credentials.save(&creds_dir)?;
            save_managers(&creds_dir, &joined.managers);
            eprintln!(
                "orchd agent: joined {} as node {node} (managers: {})",
                args.join,
                joined.managers.join(", ")
            );
            joined.credentials
        }
    };
    let managers = known_managers(&args.join, &creds_dir);
    let store = Arc::new(cluster::remote_store_any(&managers, &creds)?);
    let runtime = args
        .runtime
        .open(&runtime_names, &data_dir, Some(&args.advertise_address))
        .await?;
    let scheduler: Arc<dyn orch_core::scheduler::Scheduler> =
        Arc::new(orch_sched::DefaultScheduler);
    let discovery_dir = data_dir.join("discovery");
    let discovery = args.discovery.start(&node, node_ip, &discovery_dir).await?;
    let mut engine = Engine::builder(store.clone(), scheduler)
        .discovery(discovery.fanout.clone())
        .agents_only()
        .start();
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| format!("{}:0", args.advertise_address));
    let bound = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot listen"))?;
    let endpoint = bound.local_addr()?;
    let (creds_tx, creds_rx) = tokio::sync::watch::channel(creds.clone());
    let serving = tokio::spawn(serve_node(
        bound,
        creds_rx,
        runtime.clone(),
        Some(orch_core::node::VolumeLayout::in_data_dir(&data_dir)),
    ));
    let mut agent = host::agent_config(&node, labels, &discovery_dir);
    agent.taints = taints;
    discovery.configure(&mut agent, &args.discovery.dns_domain);
    args.runtime.configure(&mut agent, &data_dir);
    agent.addresses = vec![args.advertise_address.clone()];
    agent.heartbeat = args.heartbeat;
    agent.endpoint = endpoint.to_string();
    eprintln!("orchd agent: {}", networking.summary);
    if networking.network.is_some() {
        discovery.serve_on_gateway(engine.cache().clone(), &node);
    }
    agent.network = networking.network;
    engine.add_agent(runtime, agent);
    let refresh = tokio::spawn(refresh_managers(store.clone(), creds_dir.clone()));
    let renewals = tokio::spawn(renew_loop(creds, creds_dir, store, creds_tx));
    eprintln!(
        "orchd agent: node {node} serving replicas for {} (state in {})",
        args.join,
        data_dir.display()
    );
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!(
        "orchd agent: stopping (workloads keep running and are re-adopted on the next start)"
    );
    renewals.abort();
    refresh.abort();
    serving.abort();
    engine.shutdown().await;
    Ok(())
}

/// The file that lists the managers, a cluster address a line.
const MANAGERS_FILE: &str = "managers";

/// The managers to reach: `--join`'s first, then those DATA_DIR/credentials/managers lists.
fn known_managers(join: &str, dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![join.to_string()];
    if let Ok(text) = std::fs::read_to_string(dir.join(MANAGERS_FILE)) {
        for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !out.iter().any(|a| a == l) {
                out.push(l.to_string());
            }
        }
    }
    out
}

fn save_managers(dir: &std::path::Path, managers: &[String]) {
    let text: String = managers.iter().map(|m| format!("{m}\n")).collect();
    let (path, tmp) = (dir.join(MANAGERS_FILE), dir.join("managers.tmp"));
    if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
        tracing::warn!(error = %e, path = %path.display(), "agent: cannot record the managers");
    }
}

/// Every few seconds, the managers registered in the store (the one in use first) become
/// the ones the store fails over along, and are kept in DATA_DIR/credentials/managers.
async fn refresh_managers(store: Arc<orch_api::grpc::store::RemoteStore>, dir: PathBuf) {
    let mut last = store.managers();
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let current = store.current();
        let listed = match orch_api::managers::addresses(
            &*store as &dyn orch_core::store::Store,
            Some(&current),
        )
        .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "agent: cannot list the managers now");
                continue;
            }
        };
        // One manager on its own store registers none: keep what is known.
        if listed.is_empty() || listed == last {
            continue;
        }
        match store.set_managers(&listed) {
            Ok(()) => {
                tracing::info!(managers = %listed.join(", "), "agent: managers");
                save_managers(&dir, &listed);
                last = listed;
            }
            Err(e) => tracing::warn!(error = %e, "agent: cannot use the managers listed"),
        }
    }
}

/// Renews the certificate (with any manager) when two thirds of its life have passed; the
/// store switches to the new one for new requests while streams on the old connection carry
/// on.
async fn renew_loop(
    mut creds: Credentials,
    dir: PathBuf,
    store: Arc<orch_api::grpc::store::RemoteStore>,
    serving: tokio::sync::watch::Sender<Credentials>,
) {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let not_after = creds.not_after().unwrap_or(now);
        let not_before = not_after - lifetime(&creds).unwrap_or(0);
        let due = not_before + (not_after - not_before) * 2 / 3;
        tokio::time::sleep(Duration::from_secs(due.saturating_sub(now).max(1) as u64)).await;
        match cluster::renew_any(&store.managers(), &creds).await {
            Ok(new) => {
                if let Err(e) = new.save(&dir) {
                    tracing::error!(error = %e, "agent: cannot save the renewed certificate");
                }
                if let Err(e) = store.set_dialer(cluster::dialer(&new)) {
                    tracing::error!(error = %e, "agent: renewed certificate unusable");
                }
                tracing::info!("agent: certificate renewed");
                serving.send_replace(new.clone());
                creds = new;
            }
            Err(e) => {
                tracing::warn!(error = %e, "agent: certificate renewal failed; retrying in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

/// The certificate's whole validity in seconds.
fn lifetime(creds: &Credentials) -> Option<i64> {
    let (nb, na) = creds.validity().ok()?;
    Some(na - nb)
}

/// Serves the node protocol to the manager, again with the new certificate after each
/// renewal (on the same address).
async fn serve_node(
    first: tokio::net::TcpListener,
    mut creds: tokio::sync::watch::Receiver<Credentials>,
    runtime: Arc<dyn orch_core::runtime::Runtime>,
    volumes: Option<orch_core::node::VolumeLayout>,
) {
    let addr = first.local_addr().ok();
    let mut listener = Some(first);
    loop {
        let current = creds.borrow_and_update().clone();
        let l = match listener.take() {
            Some(l) => l,
            None => match tokio::net::TcpListener::bind(addr.expect("bound before")).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "agent: cannot listen again after a renewal");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let server = orch_api::grpc::node::serve(
            l,
            &current,
            runtime.clone(),
            volumes.clone(),
            stop.clone(),
        );
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "agent: node service stopped");
                }
                return;
            }
            changed = creds.changed() => {
                stop.cancel();
                let _ = server.await;
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
