//! `orchd agent --join ADDR --token TOKEN`: a node of a cluster on another host. It joins
//! once (the token buys a certificate for its node name; the credentials are kept in
//! DATA_DIR/credentials, mode 0600), then runs the same node agent as `orchd server` against
//! the manager's store over mutual TLS, renewing its certificate before it expires. While
//! the manager is unreachable the replicas keep running and crashed ones are restarted.

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
    /// How often the node heartbeats.
    #[arg(long, value_parser = crate::server::parse_span, default_value = "1s")]
    heartbeat: Duration,
    #[command(flatten)]
    runtime: crate::runtime::RuntimeArgs,
}

/// Runs until SIGINT or SIGTERM (workloads keep running; the next start re-adopts them).
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(crate::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let (node, labels, taints) = args.node.parse()?;
    let runtime_names = args.runtime.names()?;
    let creds_dir = data_dir.join("credentials");
    let creds = match Credentials::load(&creds_dir)? {
        Some(c) => c,
        None => {
            let token = args.token.as_deref().context(
                "--token: this node has not joined yet; give the join token (`orchd token` on the manager)",
            )?;
            let c = cluster::join(&args.join, token, &node).await?;
            c.save(&creds_dir)?;
            eprintln!("orchd agent: joined {} as node {node}", args.join);
            c
        }
    };
    let store = Arc::new(cluster::remote_store(&args.join, &creds)?);
    let runtime = args.runtime.open(&runtime_names, &data_dir).await?;
    let scheduler: Arc<dyn orch_core::scheduler::Scheduler> =
        Arc::new(orch_sched::DefaultScheduler);
    let discovery_dir = data_dir.join("discovery");
    let mut engine = Engine::builder(store.clone(), scheduler)
        .discovery(Arc::new(orch_dns::FileDiscovery::new(&discovery_dir)))
        .agents_only()
        .start();
    let mut agent = host::agent_config(&node, labels, &discovery_dir);
    agent.taints = taints;
    agent.addresses = vec![args.advertise_address.clone()];
    agent.heartbeat = args.heartbeat;
    engine.add_agent(runtime, agent);
    let renewals = tokio::spawn(renew_loop(args.join.clone(), creds, creds_dir, store));
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
    engine.shutdown().await;
    Ok(())
}

/// Renews the certificate when two thirds of its life have passed; the store switches to the
/// new one for new requests while streams on the old connection carry on.
async fn renew_loop(
    addr: String,
    mut creds: Credentials,
    dir: PathBuf,
    store: Arc<orch_api::grpc::store::RemoteStore>,
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
        match cluster::renew(&addr, &creds).await {
            Ok(new) => {
                if let Err(e) = new.save(&dir) {
                    tracing::error!(error = %e, "agent: cannot save the renewed certificate");
                }
                match cluster::channel(&addr, &new) {
                    Ok(ch) => store.set_channel(ch),
                    Err(e) => tracing::error!(error = %e, "agent: renewed certificate unusable"),
                }
                tracing::info!("agent: certificate renewed");
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
