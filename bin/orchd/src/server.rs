//! `orchd server`: the engine as a long-lived daemon over a durable store (embedded or etcd), with
//! the local agent on the process runtime and the API on a unix socket (mode 0600). Stopping
//! it leaves workloads running; the next start re-adopts them.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use orch_api::server::{serve, Backend};
use orch_core::engine::Engine;
use orch_core::runtime::Runtime;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::host;

/// Arguments of `orchd server`.
#[derive(Args)]
pub struct ServerArgs {
    /// Directory for the store, runtime state and logs (default $ORCH_DATA_DIR or ~/.local/share/orch).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// API socket (default DATA_DIR/orchd.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// Node labels, `key=value,...`.
    #[arg(long, default_value = "")]
    labels: String,
    /// Node taints, `key=value:NoSchedule,key:PreferNoSchedule,...`: only replicas that
    /// tolerate them are placed here (NoSchedule) or they avoid it (PreferNoSchedule).
    #[arg(long, default_value = "")]
    taints: String,
    /// Store: `embedded` (durable, in DATA_DIR), `memory` (lost on exit) or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (needs the `etcd` build feature).
    #[arg(long, default_value = "embedded")]
    store: String,
    #[command(flatten)]
    runtime: crate::runtime::RuntimeArgs,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(crate::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", data_dir.display()))?;
    let socket = args.socket.unwrap_or_else(|| data_dir.join("orchd.sock"));
    let node = args.node.unwrap_or_else(host::default_node_name);
    orch_core::validate::dns1123_label(&node)
        .map_err(|e| anyhow::anyhow!("--node: invalid value {node:?}: {e}"))?;
    let labels = host::parse_labels(&args.labels)?;
    let taints = host::parse_taints(&args.taints)?;
    let store_spec = crate::store::parse(&args.store)?;
    let runtime_names = args.runtime.names()?;
    let (store, store_name) = crate::store::open(&store_spec, &data_dir).await?;
    let runtime: Arc<dyn Runtime> = args.runtime.open(&runtime_names, &data_dir).await?;
    let discovery_dir = data_dir.join("discovery");
    let discovery = Arc::new(orch_dns::FileDiscovery::new(&discovery_dir));
    let scheduler: Arc<dyn orch_core::scheduler::Scheduler> =
        Arc::new(orch_sched::DefaultScheduler);
    let mut engine = Engine::builder(store.clone(), scheduler.clone())
        .discovery(discovery)
        .start();
    let runtime_dyn = runtime;
    let mut agent = host::agent_config(&node, labels, &discovery_dir);
    agent.taints = taints;
    engine.add_agent(runtime_dyn.clone(), agent);
    let info = runtime_dyn.info();
    if !info.limits_enforced {
        tracing::warn!("{}", info.limits_note);
    }
    let backend = Arc::new(Backend {
        store,
        runtimes: HashMap::from([(node.clone(), runtime_dyn)]),
        store_name,
        scheduler,
    });
    let cancel = CancellationToken::new();
    let api = tokio::spawn(serve(socket.clone(), backend, cancel.clone()));
    tracing::info!(socket = %socket.display(), data_dir = %data_dir.display(), node = %node, "orchd: serving");
    eprintln!(
        "orchd: serving on {} (node {node}, state in {})",
        socket.display(),
        data_dir.display()
    );
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = api => {
            r.context("api task")?.with_context(|| format!("cannot serve on {}", socket.display()))?;
        }
    }
    eprintln!("orchd: stopping (workloads keep running and are re-adopted on the next start)");
    cancel.cancel();
    engine.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
