//! `orchd server`: the engine as a long-lived daemon over a durable store (embedded or etcd), with
//! the local agent on the process runtime and the API on a unix socket (mode 0600). Stopping
//! it leaves workloads running; the next start re-adopts them.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use orch_api::handler::Backend;
use orch_api::server::serve_listener;
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
    #[command(flatten)]
    node: host::NodeArgs,
    /// Store: `embedded` (durable, in DATA_DIR), `memory` (lost on exit) or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (needs the `etcd` build feature; several
    /// managers may share one: the others --join the first). Default: embedded, or the etcd
    /// this manager runs or joined (--init-cluster, --join).
    #[arg(long)]
    store: Option<String>,
    #[command(flatten)]
    runtime: crate::runtime::RuntimeArgs,
    #[command(flatten)]
    discovery: crate::discovery::DiscoveryArgs,
    #[command(flatten)]
    cluster_network: crate::network::ClusterNetworkArgs,
    #[command(flatten)]
    replica_network: crate::network::ReplicaNetworkArgs,
    /// Serve the cluster protocol (gRPC over mutual TLS) for agents on other hosts at
    /// `HOST:PORT`; the CA and the join token live in DATA_DIR/cluster.
    #[arg(long)]
    listen: Option<String>,
    /// How long node certificates are valid (they renew when two thirds have passed).
    #[arg(long, value_parser = parse_span, default_value = "90d")]
    cert_validity: std::time::Duration,
    /// Serve `/metrics`, `/healthz` and `/readyz` over plain HTTP at `HOST:PORT`.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// A node that has not reported for this long is Unreachable (nothing is placed there).
    #[arg(long, value_parser = parse_span, default_value = "3s")]
    node_grace: std::time::Duration,
    /// A node that has not reported for this long has its replicas replaced elsewhere (a
    /// service's `placement.nodeLossTimeout` may ask for longer).
    #[arg(long, value_parser = parse_span, default_value = "10s")]
    node_replace_timeout: std::time::Duration,
    #[command(flatten)]
    ha: crate::ha::HaArgs,
    /// Run no local agent (`orchd manager`).
    #[arg(skip)]
    pub no_agent: bool,
}

/// Whether the engine leases subnets and virtual IPs: a manager does (its agents may give
/// containers networks of their own), and so does a server whose own agent does or that
/// agents join. A lone server with no replica network keeps replicas' addresses in DNS, as
/// without one: a virtual IP there would need nftables for nothing.
fn leases_network(
    manager: bool,
    listens: bool,
    own: Option<&crate::network::NodeNetworking>,
) -> bool {
    manager || listens || own.is_some_and(|n| n.network.is_some())
}

/// A duration flag (`90d`, `1h`, `30s`).
pub fn parse_span(s: &str) -> Result<std::time::Duration, String> {
    orch_core::model::quantity::Span::parse(s).map(|s| s.0)
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(crate::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", data_dir.display()))?;
    let socket = args.socket.unwrap_or_else(|| data_dir.join("orchd.sock"));
    let (node, labels, taints) = args.node.parse()?;
    let store_spec = crate::store::parse(args.store.as_deref().unwrap_or("embedded"))?;
    let runtime_names = args.runtime.names()?;
    let cluster_network = args.cluster_network.cluster()?;
    if args.no_agent && args.listen.is_none() {
        anyhow::bail!("orchd manager: --listen HOST:PORT is needed (agents join there)");
    }
    let mut prepared = crate::ha::prepare(
        &args.ha,
        &store_spec,
        args.store.is_some(),
        args.listen.as_deref(),
        &data_dir,
        args.cert_validity,
    )
    .await?;
    let (store, store_name) = (prepared.store.clone(), prepared.store_name.clone());
    let networking = match args.no_agent {
        true => None,
        false => Some(args.replica_network.open(
            &node,
            crate::network::first_host_address().into(),
            &data_dir,
            &runtime_names,
        )?),
    };
    let runtime: Option<Arc<dyn Runtime>> = if args.no_agent {
        None
    } else {
        Some(args.runtime.open(&runtime_names, &data_dir, None).await?)
    };
    let discovery_dir = data_dir.join("discovery");
    let node_ip: std::net::IpAddr = [127, 0, 0, 1].into();
    // A manager without an agent is not a node: no DNS server, no proxy.
    let discovery = match args.no_agent {
        false => Some(args.discovery.start(&node, node_ip, &discovery_dir).await?),
        true => None,
    };
    let fanout: Arc<dyn orch_core::discovery::Discovery> = match &discovery {
        Some(d) => d.fanout.clone(),
        None => Arc::new(orch_dns::FileDiscovery::new(&discovery_dir)),
    };
    let scheduler: Arc<dyn orch_core::scheduler::Scheduler> =
        Arc::new(orch_sched::DefaultScheduler);
    anyhow::ensure!(
        args.node_replace_timeout >= args.node_grace,
        "--node-replace-timeout ({:?}) must not be shorter than --node-grace ({:?})",
        args.node_replace_timeout,
        args.node_grace
    );
    let mut builder = Engine::builder(store.clone(), scheduler.clone());
    let elector = prepared.elector()?;
    let elected = elector.is_some();
    if let Some(elector) = elector {
        builder = builder.elector(elector);
    }
    let mut engine = builder
        .discovery(fanout)
        .config(orch_core::engine::EngineConfig {
            node_grace: args.node_grace,
            node_lost_timeout: args.node_replace_timeout,
            network: leases_network(args.no_agent, args.listen.is_some(), networking.as_ref())
                .then_some(cluster_network),
            ..Default::default()
        })
        .start();
    let mut runtimes = HashMap::new();
    if let Some(runtime) = runtime {
        let mut agent = host::agent_config(&node, labels, &discovery_dir);
        agent.taints = taints;
        if let Some(d) = &discovery {
            d.configure(&mut agent, &args.discovery.dns_domain);
        }
        args.runtime.configure(&mut agent, &data_dir);
        if let Some(n) = networking {
            eprintln!("orchd: {}", n.summary);
            if let (Some(_), Some(d)) = (&n.network, &discovery) {
                d.serve_on_gateway(engine.cache().clone(), &node);
            }
            agent.network = n.network;
        }
        engine.add_agent(runtime.clone(), agent);
        let info = runtime.info();
        if !info.limits_enforced {
            tracing::warn!("{}", info.limits_note);
        }
        runtimes.insert(node.clone(), runtime);
    }
    let cancel = CancellationToken::new();
    let manager_name = prepared.name.clone();
    let cluster = match (&args.listen, prepared.manager.clone()) {
        (Some(listen), Some(manager)) => {
            let (listener, addr) = orch_api::grpc::cluster::bind(listen)
                .await
                .with_context(|| format!("--listen {listen}: cannot listen"))?;
            Some((manager, listener, addr))
        }
        _ => None,
    };
    let ha = crate::ha::run(prepared, &engine, args.listen.clone(), cancel.clone())?;
    if let Some(listen) = &args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("--metrics-listen {listen}: cannot listen"))?;
        tokio::spawn(crate::http::serve(
            listener,
            engine.ctx().clone(),
            crate::http::Role {
                manager: manager_name.clone(),
                elected,
            },
            cancel.clone(),
        ));
    }
    let backend = Arc::new(Backend {
        store: store.clone(),
        runtimes,
        store_name,
        scheduler,
        on_node_removed: cluster.as_ref().map(|(m, _, _)| {
            let m = m.clone();
            Arc::new(move |n: &str| m.revoke(n)) as orch_api::handler::NodeRemovedHook
        }),
        port_check: discovery.as_ref().map(|d| d.port_check()),
        managers: Some(ha.access.clone()),
        volumes: if args.no_agent {
            HashMap::new()
        } else {
            HashMap::from([(
                node.clone(),
                orch_core::node::VolumeLayout::in_data_dir(&data_dir),
            )])
        },
        nodes: match &cluster {
            Some((m, _, _)) => Some(Arc::new(orch_api::grpc::node::NodeDialer::new(
                store.clone(),
                m.own_credentials()?,
            )) as Arc<dyn orch_api::grpc::node::NodeAccess>),
            None => None,
        },
    });
    if let Some((manager, listener, addr)) = cluster {
        tokio::spawn({
            let (backend, cancel) = (backend.clone(), cancel.clone());
            async move {
                if let Err(e) = orch_api::grpc::cluster::serve(
                    listener,
                    manager,
                    store,
                    Some(backend),
                    Default::default(),
                    cancel,
                )
                .await
                {
                    tracing::error!(error = %e, "cluster protocol stopped");
                }
            }
        });
        tracing::info!(%addr, "orchd: cluster protocol listening");
        eprintln!(
            "orchd: agents join with `orchd agent --join {addr} --token \"$(orchd token --data-dir {})\"`",
            data_dir.display()
        );
    }
    // Bound before saying "serving": a path that is not a stale socket is refused here.
    let listener = orch_api::server::bind(&socket)
        .await
        .with_context(|| format!("--socket {}", socket.display()))?;
    let api = tokio::spawn(serve_listener(
        listener,
        socket.clone(),
        backend,
        cancel.clone(),
        Default::default(),
    ));
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
    ha.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
