//! `orchd up`: like `docker compose up`. Applies every manifest in a folder on this machine
//! with the embedded defaults (in-memory store, process runtime, endpoint files), shows a
//! live table of services and replicas, and on Ctrl-C stops every workload cleanly.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use orch_api::handler::Backend;
use orch_api::render;
use orch_api::server::serve;
use orch_core::engine::Engine;
use orch_core::model::object::{Kind, Object};
use orch_core::runtime::Runtime;
use orch_core::store::{list_objects, Store};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::host;

/// Arguments of `orchd up`.
#[derive(Args)]
pub struct UpArgs {
    /// A manifest file or a folder of them (`*.yaml`, `*.yml`, `*.json`; orch or Kubernetes
    /// manifests), or a Compose file, or a folder holding one (`compose.yaml`, `compose.yml`,
    /// `docker-compose.yml`, `docker-compose.yaml`: that file is run).
    path: PathBuf,
    /// Refuse to start when a Kubernetes manifest or Compose file has any field orch does not
    /// honour.
    #[arg(long)]
    strict: bool,
    /// Keep runtime state and logs here (default: a temporary directory removed on exit).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The node name.
    #[arg(long, default_value = "local")]
    node: String,
    /// Refresh period of the table, in milliseconds.
    #[arg(long, default_value_t = 500)]
    refresh_ms: u64,
    #[command(flatten)]
    runtime: crate::runtime::RuntimeArgs,
    #[command(flatten)]
    discovery: crate::discovery::DiscoveryArgs,
    #[command(flatten)]
    cluster_network: crate::network::ClusterNetworkArgs,
    #[command(flatten)]
    replica_network: crate::network::ReplicaNetworkArgs,
}

/// Runs until Ctrl-C, then stops everything it started.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // A folder with a Compose file runs that file (as `docker compose up` there); otherwise
    // its manifests, orch's or Kubernetes' (converted as `orchctl apply -f` converts them).
    let path = match args.path.is_dir() {
        true => orch_api::files::compose_file_in(&args.path).unwrap_or(args.path.clone()),
        false => args.path.clone(),
    };
    let imported = orch_api::files::import(
        std::slice::from_ref(&path),
        &orch_api::files::ImportOptions {
            strict: args.strict,
            ..Default::default()
        },
    )
    .map_err(anyhow::Error::msg)?;
    let parsed = orch_core::model::manifest::parse_all_with_warnings(
        imported
            .manifests
            .iter()
            .map(|m| (m.source.as_str(), m.text.as_str())),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Fields a conversion does not honour, and fields orch sets itself (ignored), as
    // `orchctl apply` says them too.
    for w in imported.warnings.iter().chain(&parsed.warnings) {
        say(&format!("warning: {w}"));
    }
    if args.strict && !parsed.warnings.is_empty() {
        anyhow::bail!("--strict: {} fields not honoured", parsed.warnings.len());
    }
    let objects = parsed.objects;
    let temp = args.state_dir.is_none();
    let state_dir = args
        .state_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("orch-up-{}", std::process::id())));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let runtime_names = args.runtime.names()?;
    let cluster_network = args.cluster_network.cluster()?;
    let networking = args.replica_network.open(
        &args.node,
        crate::network::first_host_address().into(),
        &state_dir,
        &runtime_names,
    )?;
    let store: Arc<dyn Store> = Arc::new(orch_core::memstore::MemStore::new());
    let runtime: Arc<dyn Runtime> = args.runtime.open(&runtime_names, &state_dir, None).await?;
    let discovery_dir = state_dir.join("discovery");
    let scheduler: Arc<dyn orch_core::scheduler::Scheduler> =
        Arc::new(orch_sched::DefaultScheduler);
    let discovery = args
        .discovery
        .start(&args.node, [127, 0, 0, 1].into(), &discovery_dir)
        .await?;
    let mut engine = Engine::builder(store.clone(), scheduler.clone())
        .discovery(discovery.fanout.clone())
        .config(orch_core::engine::EngineConfig {
            // Without a replica network, no virtual IPs: DNS answers replicas' addresses.
            network: networking.network.is_some().then_some(cluster_network),
            ..Default::default()
        })
        .start();
    let mut agent = host::agent_config(&args.node, Default::default(), &discovery_dir);
    discovery.configure(&mut agent, &args.discovery.dns_domain);
    args.runtime.configure(&mut agent, &state_dir);
    if networking.network.is_some() {
        discovery.serve_on_gateway(engine.cache().clone(), &args.node);
    }
    agent.network = networking.network;
    engine.add_agent(runtime.clone(), agent);
    let socket = state_dir.join("orchd.sock");
    let cancel = CancellationToken::new();
    let backend = Arc::new(Backend {
        store: store.clone(),
        runtimes: HashMap::from([(args.node.clone(), runtime.clone())]),
        store_name: "memory".into(),
        scheduler,
        on_node_removed: None,
        nodes: None,
        port_check: Some(discovery.port_check()),
        managers: None,
        volumes: HashMap::from([(
            args.node.clone(),
            orch_core::node::VolumeLayout::in_data_dir(&state_dir),
        )]),
    });
    tokio::spawn(serve(socket.clone(), backend, cancel.clone()));
    let applied = orch_core::engine::api::apply(&*store, objects, false).await?;
    let max_grace = applied
        .iter()
        .filter_map(|a| {
            if let Object::Service(s) = &a.object {
                Some(s.spec.template.stop_grace())
            } else {
                None
            }
        })
        .max()
        .unwrap_or_default();
    let tty = std::io::stdout().is_terminal();
    let header = format!(
        "orch up {} — {} object(s); logs: orchctl --socket {} logs REPLICA; Ctrl-C stops everything\n{}\n{}",
        path.display(),
        applied.len(),
        socket.display(),
        discovery.dns_state(&args.discovery.dns_domain),
        networking.summary,
    );
    let mut out = Output::new(tty, header);
    let mut tick = tokio::time::interval(Duration::from_millis(args.refresh_ms.max(50)));
    let mut signals = StopSignals::new()?;
    let why = loop {
        tokio::select! {
            s = signals.recv() => break s.to_string(),
            _ = tick.tick() => {}
        }
        if let Err(e) = out.show(&engine, &*store, &*runtime).await {
            // A closed pipe (`| head`) or terminal: nobody reads any more, so stop cleanly
            // rather than leave the workloads running with nobody to stop them.
            break format!("standard output closed ({e})");
        }
    };
    say(&format!("\nstopping ({why}): deleting {} object(s) and waiting for their replicas to stop (Ctrl-C again to exit at once)", applied.len()));
    for o in applied.iter().map(|a| &a.object) {
        let md = o.metadata();
        let _ = orch_core::engine::api::delete(&*store, o.kind(), &md.namespace, &md.name).await;
    }
    let deadline = tokio::time::Instant::now() + max_grace + Duration::from_secs(5);
    let stopped = async {
        while !engine.cache().replicas().is_empty()
            || !runtime.list().await.map(|l| l.is_empty()).unwrap_or(true)
        {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    };
    let clean = tokio::select! {
        s = stopped => s,
        _ = signals.recv() => false,
    };
    cancel.cancel();
    engine.shutdown().await;
    if clean {
        say("stopped: every workload has exited");
        if temp {
            let _ = std::fs::remove_dir_all(&state_dir);
        }
        Ok(())
    } else {
        anyhow::bail!(
            "some workloads did not stop in time; their state is in {}",
            state_dir.display()
        )
    }
}

/// Writes a line to standard error, ignoring a closed one (nothing else could be told).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The signals that stop `orchd up` cleanly: Ctrl-C, a closed terminal, `kill`.
struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<StopSignals> {
        let on = |k| signal(k).context("cannot install a signal handler");
        Ok(StopSignals {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    /// Waits for the next one; its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "terminated",
            _ = self.hup.recv() => "hung up",
        }
    }
}

/// What `orchd up` shows: on a terminal a live table redrawn in place; anywhere else (a pipe,
/// a file) the header once, then a plain log: each new event, a service's ready count when it
/// changes, and what a starting replica waits for (image pulls).
struct Output {
    tty: bool,
    header: String,
    /// Events already shown (non-terminal), by name.
    seen: HashSet<String>,
    /// Each service's ready count as last shown (non-terminal).
    ready: HashMap<String, String>,
    /// What each starting replica waits for (an image pull) as last shown, and when
    /// (non-terminal: a line when it changes, at most one a second per replica).
    progress: HashMap<String, (String, std::time::Instant)>,
}

impl Output {
    fn new(tty: bool, header: String) -> Output {
        Output {
            tty,
            header,
            seen: HashSet::new(),
            ready: HashMap::new(),
            progress: HashMap::new(),
        }
    }

    /// Shows what changed; an error when standard output is closed.
    async fn show(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        runtime: &dyn Runtime,
    ) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.tty {
            let view = render_view(engine, store, runtime).await;
            write!(stdout, "\x1b[H\x1b[2J{}\n\n{view}", self.header)?;
            return stdout.flush();
        }
        if !self.header.is_empty() {
            writeln!(stdout, "{}", std::mem::take(&mut self.header))?;
        }
        let mut lines = Vec::new();
        if let Ok((events, _)) = list_objects(store, Kind::Event, None).await {
            let mut new: Vec<_> = events
                .into_iter()
                .filter_map(|o| match o {
                    Object::Event(e) if !self.seen.contains(&e.metadata.name) => Some(e),
                    _ => None,
                })
                .collect();
            new.sort_by_key(|e| e.timestamp);
            for e in new {
                self.seen.insert(e.metadata.name.clone());
                let kind = e.involved.kind.map(|k| k.as_str().to_ascii_lowercase());
                lines.push((
                    e.timestamp,
                    format!(
                        "{}  {:?}  {}  {}/{}  {}",
                        e.timestamp,
                        e.type_,
                        e.reason,
                        kind.unwrap_or_default(),
                        e.involved.name,
                        e.message
                    ),
                ));
            }
        }
        for s in engine.cache().services() {
            let ready = format!("{}/{} ready", s.status.ready_replicas, s.spec.replicas);
            let key = format!("{}/{}", s.metadata.namespace, s.metadata.name);
            if self.ready.get(&key) != Some(&ready) {
                let now = orch_core::model::quantity::Timestamp::now();
                lines.push((now, format!("{now}  service/{}  {ready}", s.metadata.name)));
                self.ready.insert(key, ready);
            }
        }
        let replicas = engine.cache().replicas();
        for r in &replicas {
            let Some(text) = runtime.progress(&r.runtime_name()) else {
                continue;
            };
            let name = &r.metadata.name;
            let due = match self.progress.get(name) {
                Some((last, at)) => *last != text && at.elapsed() >= Duration::from_secs(1),
                None => true,
            };
            if due {
                let now = orch_core::model::quantity::Timestamp::now();
                lines.push((now, format!("{now}  replica/{name}  {text}")));
                self.progress
                    .insert(name.clone(), (text, std::time::Instant::now()));
            }
        }
        self.progress
            .retain(|name, _| replicas.iter().any(|r| &r.metadata.name == name));
        lines.sort_by_key(|(t, _)| *t);
        for (_, l) in lines {
            writeln!(stdout, "{l}")?;
        }
        // A closed pipe shows on the next write; ask the pipe itself so that a reader that
        // went away while nothing happened is noticed too.
        stdout.flush()?;
        if stdout_closed() {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        Ok(())
    }
}

/// Whether standard output is a pipe or socket whose reader has gone.
fn stdout_closed() -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
        && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP)
}

async fn render_view(engine: &Engine, store: &dyn Store, runtime: &dyn Runtime) -> String {
    let services: Vec<Object> = engine
        .cache()
        .services()
        .into_iter()
        .map(Object::from)
        .collect();
    let mut replicas = engine.cache().replicas();
    replicas.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    // What starts under way wait for (image pulls), one line per replica.
    let waiting: Vec<String> = replicas
        .iter()
        .filter_map(|r| {
            let text = runtime.progress(&r.runtime_name())?;
            Some(format!("{}  {text}\n", r.metadata.name))
        })
        .collect();
    let replicas: Vec<Object> = replicas.into_iter().map(Object::Replica).collect();
    let mut out = String::new();
    out.push_str("SERVICES\n");
    out.push_str(&render::objects_table(&services, false));
    out.push_str("\nREPLICAS\n");
    out.push_str(&render::objects_table(&replicas, false));
    if !waiting.is_empty() {
        out.push_str("\nSTARTING\n");
        out.extend(waiting);
    }
    if let Ok((mut events, _)) = list_objects(store, Kind::Event, None).await {
        events.sort_by_key(|e| {
            if let Object::Event(e) = e {
                e.timestamp
            } else {
                Default::default()
            }
        });
        let recent: Vec<Object> = events
            .into_iter()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !recent.is_empty() {
            out.push_str("\nRECENT EVENTS\n");
            out.push_str(&render::objects_table(&recent, false));
        }
    }
    out
}
